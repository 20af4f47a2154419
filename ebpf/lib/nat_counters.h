/* Indexes of nat_counters (per-CPU __u64), mirrored by bpf_structs.NatCounter. STABLE numbers. */
#ifndef DOCKLINE_NAT_COUNTERS_H
#define DOCKLINE_NAT_COUNTERS_H

#define NAT_C_CT_HIT          0   /* packet of a tracked flow, translated */
#define NAT_C_CT_NEW          1   /* a new flow got both conntrack entries */
#define NAT_C_CT_TWIN_REPAIR  2   /* a flow re-created its evicted other half */
#define NAT_C_PORT_RETRY      3   /* a source-port candidate was taken: tried another */
#define NAT_C_PORT_FAIL       4   /* no free source port within NAT_PORT_RETRIES: flow dropped */
#define NAT_C_ICMP_ERROR      5   /* ICMP error about a translated flow, translated */
#define NAT_C_SOCK_XLATE      6   /* socket-layer translation (connect4/sendmsg4) */
#define NAT_C_SOCK_REVERSE    7   /* socket-layer reverse translation (getpeername4/recvmsg4) */
#define NAT_C_STEPS_EXCEEDED  8   /* rule evaluation stopped at MAX_NAT_STEPS (a compiler bug) */
#define NAT_C_FRAG_XLATE      9   /* non-first fragment translated by its datagram's ports */
#define NAT_C_FRAG_UNKNOWN    10  /* non-first fragment whose first fragment was not seen */
#define NAT_C_TTL_EXCEEDED    11  /* TTL <= 1: left to the stack untranslated */
#define NAT_C_CT_RESTART      12  /* SYN on a closed flow's tuple: entries replaced */

#define NR_NAT_COUNTERS       16

#endif

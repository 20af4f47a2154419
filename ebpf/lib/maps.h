/* Every map, pinned under PIN_DIR (which carries the layout version, because bcc reuses a
 * pinned map without checking its key and value sizes). Definitions only, no logic. */
#ifndef DOCKLINE_MAPS_H
#define DOCKLINE_MAPS_H

#include "consts.h"
#include "structs.h"
#include "nat_counters.h"
#include "drop_reasons.h"

/* host-side veth ifindex -> what that endpoint may send as (anti-spoofing, its network) */
BPF_TABLE_PINNED("hash", __u32, struct endpoint_info, endpoints_by_ifindex, MAX_ENDPOINTS,
		 PIN_DIR "/endpoints_by_ifindex");
/* endpoint IPv4 -> where to deliver it (same-network fast path, isolation check) */
BPF_TABLE_PINNED("hash", __be32, struct ip_endpoint, endpoints_by_ip, MAX_ENDPOINTS,
		 PIN_DIR "/endpoints_by_ip");

/* Macvlan endpoints, keyed by the ifindex of their own interface inside their netns (a macvlan
 * sub-interface has no host-side end): what tc_guard_endpoint checks their frames against. The
 * index is allocated in the host netns when the agent creates the interface and kept when it is
 * moved into the endpoint's netns, so it is unique among the agent's interfaces. */
BPF_TABLE_PINNED("hash", __u32, struct endpoint_info, guarded_endpoints, MAX_ENDPOINTS,
		 PIN_DIR "/guarded_endpoints");
/* container subnets of this host; the uplink drops packets claiming to come from them */
BPF_TABLE_PINNED7("lpm_trie", struct subnet_key, __u8, local_subnets, MAX_LOCAL_SUBNETS,
		  PIN_DIR "/local_subnets", BPF_F_NO_PREALLOC);
/* packets and bytes per verdict code (drop_reasons.h), per CPU */
BPF_TABLE_PINNED("percpu_array", __u32, struct counter, verdicts, NR_VERDICTS, PIN_DIR "/verdicts");
/* per-endpoint counters, per CPU */
BPF_TABLE_PINNED("percpu_hash", __u32, struct endpoint_stats, endpoint_stats, MAX_ENDPOINTS,
		 PIN_DIR "/endpoint_stats");

/* network number -> bridge, gateway address and MAC (routing into a network after NAT) */
BPF_TABLE_PINNED("hash", __u32, struct net_info, net_info, MAX_NETWORKS, PIN_DIR "/net_info");

/* ---- NAT and conntrack */
/* both halves of every translated flow (struct ct_key -> struct ct_entry, see structs.h) */
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_entry, ct, MAX_CT, PIN_DIR "/ct");
/* [0]: host-wide NAT settings and the live rule generation */
BPF_TABLE_PINNED("array", __u32, struct nat_config, nat_config, 1, PIN_DIR "/nat_config");
/* compiled rule instructions, two generations of MAX_NAT_RULES (swapped by nat_config) */
BPF_TABLE_PINNED("array", __u32, struct nat_rule, nat_rules, 2 * MAX_NAT_RULES, PIN_DIR "/nat_rules");
/* classifier shapes, two generations of MAX_NAT_SHAPES, and the classifier keys of both */
BPF_TABLE_PINNED("array", __u32, struct nat_shape, nat_shapes, 2 * MAX_NAT_SHAPES, PIN_DIR "/nat_shapes");
BPF_TABLE_PINNED7("hash", struct nat_cls_key, __u32, nat_cls, MAX_NAT_CLS, PIN_DIR "/nat_cls",
		  BPF_F_NO_PREALLOC);
/* simple DNAT rules by (table, proto, daddr, dport): constant cost however many there are */
BPF_TABLE_PINNED7("hash", struct nat_exact_key, struct nat_exact_val, nat_exact, MAX_NAT_EXACT,
		  PIN_DIR "/nat_exact", BPF_F_NO_PREALLOC);
/* ifindex -> the address MASQUERADE uses when leaving by it, REDIRECT when arriving by it */
BPF_TABLE_PINNED("hash", __u32, __be32, nat_ifaddr, MAX_NAT_IFADDRS, PIN_DIR "/nat_ifaddr");
/* the host's "local" routing table (addrtype LOCAL), as an LPM trie */
BPF_TABLE_PINNED7("lpm_trie", struct subnet_key, __u8, local_addrs, MAX_LOCAL_ADDRS,
		  PIN_DIR "/local_addrs", BPF_F_NO_PREALLOC);
/* the main routing table's prefixes -> the source address the kernel gives a connection to
 * them (control/netlink/source_choice.py): the socket layer binds an OUTPUT-DNATed socket to it */
BPF_TABLE_PINNED7("lpm_trie", struct subnet_key, __be32, route_src, MAX_ROUTE_SRC,
		  PIN_DIR "/route_src", BPF_F_NO_PREALLOC);
/* the source prefixes of the POSTROUTING rules that could translate host-local traffic
 * (control/nat/reach.py loopback_sources; 0.0.0.0/0 when any source could be): tc_loopback
 * starts tracking only flows with an address among them */
BPF_TABLE_PINNED7("lpm_trie", struct subnet_key, __u8, loopback_srcs, MAX_LOOPBACK_SRCS,
		  PIN_DIR "/loopback_srcs", BPF_F_NO_PREALLOC);
/* ports of fragmented datagrams, from their first fragment */
BPF_TABLE_PINNED("lru_hash", struct frag_key, struct frag_ports, frag_ports, MAX_FRAGS,
		 PIN_DIR "/frag_ports");
/* socket cookie -> what the socket layer translated (reverse lookups for getpeername/recvmsg) */
BPF_TABLE_PINNED("lru_hash", __u64, struct sock_xlate, sock_xlate, MAX_SOCK_XLATE, PIN_DIR "/sock_xlate");
/* NAT event counters by NAT_C_* (nat_counters.h), per CPU */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, nat_counters, NR_NAT_COUNTERS, PIN_DIR "/nat_counters");

#endif

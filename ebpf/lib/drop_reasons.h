/* Verdict and drop-reason codes: indexes of the verdict counters and the values the Python
 * mirror (control/datapath/bpf_structs.py: Verdict) names. STABLE: never renumber or reuse a
 * code; retire one by marking it unused. Codes below DROP_BASE are not drops. */
#ifndef DOCKLINE_DROP_REASONS_H
#define DOCKLINE_DROP_REASONS_H

#define VERDICT_REDIRECT_PEER   0   /* unicast handed straight into the peer endpoint's netns */
#define VERDICT_PASS            1   /* continues into the host (bridge, gateway, NAT, egress) */
#define VERDICT_PASS_ARP        2   /* checked ARP, continues to the bridge */
#define VERDICT_PASS_OTHER      3   /* non-IPv4/ARP ethertype (IPv6 ND, LLDP...), to the bridge */
#define VERDICT_XDP_PASS        4   /* uplink: not ours to judge */
#define VERDICT_NAT_REDIRECT    5   /* translated (conntrack), then redirected to its next hop */
#define VERDICT_NAT_PASS        6   /* translated, then continued into the stack (local, no route) */
#define VERDICT_UPLINK_PASS     7   /* uplink TC: not a translated flow, continues */
#define VERDICT_XDP_NAT_REDIRECT 8  /* uplink XDP: translated, redirected into its endpoint */
#define VERDICT_LOOPBACK_PASS   9   /* lo TC: host-local traffic, continues (translated or not) */

#define DROP_BASE               16
#define DROP_UNKNOWN_ENDPOINT   16  /* program on a device the control plane does not know */
#define DROP_MALFORMED          17  /* truncated or inconsistent L2/L3 header */
#define DROP_SPOOFED_MAC        18  /* source MAC is not the endpoint's */
#define DROP_SPOOFED_IP         19  /* source IPv4 is not the endpoint's */
#define DROP_SPOOFED_ARP        20  /* ARP sender MAC/IP is not the endpoint's */
#define DROP_ISOLATION          21  /* destination endpoint is on another network */
#define DROP_VLAN               22  /* 802.1Q/802.1ad tagged frame from an endpoint */
#define DROP_UPLINK_SPOOFED     23  /* uplink: source address inside one of our container subnets */
#define DROP_UPLINK_MALFORMED   24  /* uplink: IPv4 header that cannot be right */
#define DROP_NAT_NO_PORT        25  /* no free source port for a new translated flow */
#define DROP_NAT_NO_ADDR        26  /* MASQUERADE/REDIRECT on an interface with no IPv4 address */

#define NR_VERDICTS             32  /* size of the verdict counter array */

#endif

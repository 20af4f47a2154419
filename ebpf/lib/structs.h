/* Every map key and value, defined once. Byte order per field: "be" = network order, else host.
 * control/datapath/bpf_structs.py mirrors these with ctypes; tests/ebpf/test_layout.py compares
 * the mirror with what bcc compiled from layout_check.c. */
#ifndef DOCKLINE_STRUCTS_H
#define DOCKLINE_STRUCTS_H

/* Value of endpoints_by_ifindex; key: __u32 ifindex of the host-side veth (host order). */
struct endpoint_info {
	__u8  mac[6];     /* the MAC the control plane assigned */
	__u16 flags;      /* EP_F_* (host order) */
	__be32 ip;        /* the IPv4 address the control plane assigned (network order) */
	__u32 net_id;     /* network number, shared by every endpoint of one network (host order) */
};

/* Value of endpoints_by_ip; key: __be32 IPv4 address (network order). */
struct ip_endpoint {
	__u32 ifindex;    /* host-side veth: bpf_redirect_peer() target (host order) */
	__u32 net_id;     /* network number (host order) */
	__u8  mac[6];     /* the endpoint's MAC */
	__u16 flags;      /* EP_F_* (host order) */
};

#define EP_F_NONE     0
#define EP_F_INTERNAL 1   /* its network is internal: no NAT, nothing beyond its subnet */

/* Value of net_info; key: __u32 net_id (host order). What a routed packet into the network needs. */
struct net_info {
	__u32  bridge_ifindex;  /* the network's bridge: the logical -i/-o of its endpoints (host order) */
	__be32 gateway;         /* the bridge address (network order): MASQUERADE/REDIRECT source */
	__u8   gw_mac[6];       /* the bridge MAC: source MAC of packets routed into the network */
	__u16  flags;           /* NET_F_* */
};

/* net_info.flags */
#define NET_F_BRIDGED_NAT 0x0001  /* some nat rule could translate frames between two endpoints of
                                   * this bridge (bridge-netfilter semantics): the endpoint program
                                   * judges their new flows too (control/nat/reach.py decides) */
#define NET_F_KERNEL_FWD  0x0002  /* the kernel forwards between this network's endpoints (the
				     * kernel forwarding engine with eBPF NAT): frames NAT leaves
				     * alone go to the bridge, no fast path and no isolation drop */

/* Key of local_subnets (LPM trie): prefixlen then the address (network order). */
struct subnet_key {
	__u32  prefixlen;
	__be32 addr;
};

/* One counter pair; per-CPU values are summed by the control plane. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

/* Value of endpoint_stats, key: __u32 host-side ifindex. */
struct endpoint_stats {
	struct counter redirected;   /* sent straight to a peer endpoint */
	struct counter passed;       /* continued into the host */
	struct counter dropped;      /* any DROP_* */
};

/* ---- conntrack (lib/ct.h). A translated flow has two entries, written and removed together:
 *   ORIG  key = the first packet's tuple as it arrived       -> to = that tuple after translation
 *   REPLY key = reverse(to) (what the answer looks like)      -> to = reverse(ORIG key)
 * so each entry names its twin: twin key = reverse(entry.to). Every field is network order except
 * where marked. ICMP echo: the identifier is the "port": sport in requests, dport in replies. */
struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8   proto;     /* IPPROTO_TCP, IPPROTO_UDP or IPPROTO_ICMP */
	__u8   pad[3];    /* always 0: part of the hashed key */
};

struct ct_entry {
	__be32 to_saddr;          /* the packet after translation */
	__be32 to_daddr;
	__be16 to_sport;
	__be16 to_dport;
	__u8   dir;               /* CT_DIR_* */
	__u8   state;             /* CT_ST_* (kept equal in both entries) */
	__u8   flags;             /* CT_F_* */
	__u8   kind;              /* CT_K_* bits: which translations the flow has */
	__u64  expires_ns;        /* CLOCK_MONOTONIC ns (bpf_ktime_get_ns), host order */
	__u64  twin_checked_ns;   /* last time this entry made sure its twin exists (host order) */
	__u64  packets;           /* this direction (host order) */
	__u64  bytes;
};

#define CT_DIR_ORIG  0
#define CT_DIR_REPLY 1

#define CT_ST_NEW         1   /* TCP: SYN seen, no answer yet; UDP/ICMP: no answer yet */
#define CT_ST_ESTABLISHED 2   /* an answer was seen */
#define CT_ST_FIN         3   /* TCP: a FIN was seen */
#define CT_ST_CLOSED      4   /* TCP: RST seen */

#define CT_F_LOOSE 1          /* created from a mid-stream TCP packet (no SYN seen) */

#define CT_K_DNAT 1           /* destination translated (DNAT, REDIRECT) */
#define CT_K_SNAT 2           /* source translated (SNAT, MASQUERADE, port remap) */
#define CT_K_LOCAL 4          /* translated to a local address: the reply leaves via the uplink egress */

/* Value of nat_config[0]: host-wide NAT settings (host order unless marked). */
struct nat_config {
	__u64 netns_cookie;       /* the host netns: socket-layer programs act only on its sockets */
	__u16 port_min;           /* MASQUERADE / remap source ports, inclusive */
	__u16 port_max;
	__u32 generation;         /* which half of nat_rules is live: 0 or 1 */
	__u32 entry[4];           /* first instruction of PREROUTING, INPUT (unused), OUTPUT, POSTROUTING,
	                           * relative to the live half */
};

/* ---- compiled NAT rules (control/nat/compiler.py). An array of instructions, visited from a
 * hook's entry: if the instruction matches, "op" decides; otherwise go to "on_miss". Only
 * forward gotos exist (user chains are inlined), so an evaluation visits each at most once.
 * pcs, shape slots and exact-table ids are absolute (the writer adds the generation's base). */
struct nat_rule {
	__be32 src;               /* -s: (saddr & src_mask) == src */
	__be32 src_mask;
	__be32 dst;               /* -d */
	__be32 dst_mask;
	__u16  sport_min;         /* --sport range (host order); 0..65535 = any */
	__u16  sport_max;
	__u16  dport_min;         /* --dport range (host order) */
	__u16  dport_max;
	__u32  iif;               /* -i: ifindex, 0 = any (host order) */
	__u32  oif;               /* -o: ifindex, 0 = any */
	__u8   proto;             /* -p: IPPROTO_*, 0 = any */
	__u8   op;                /* NAT_OP_* */
	__u16  neg;               /* NAT_NEG_* bits: negated conditions */
	__u32  on_match;          /* next instruction when it matches and op is NAT_OP_GOTO */
	__u32  on_miss;           /* next instruction when it does not match */
	__be32 to_addr;           /* DNAT/SNAT address */
	__u16  to_port_min;       /* DNAT/SNAT/MASQUERADE/REDIRECT ports (host order), 0 = keep */
	__u16  to_port_max;
	__u32  table;             /* NAT_OP_LOOKUP: the exact-match table id; NAT_OP_CLASSIFY: the
	                           * classifier's first slot in nat_shapes; a rule of a classifier:
	                           * the next candidate rule with its key, 0 = none (host order) */
	__u32  shapes;            /* NAT_OP_CLASSIFY: how many nat_shapes slots it has */
	__be32 to_addr_max;       /* DNAT/SNAT A-B: the last address (== to_addr for one address) */
	__u16  to_port_base;      /* P-Q/BASE: the shift base (host order), with NAT_TO_SHIFT */
	__u16  to_flags;          /* NAT_TO_* */
};

#define NAT_TO_ADDR  1        /* the target names an address (range); else the address is kept */
#define NAT_TO_SHIFT 2        /* the ports are a shifted map: P + (port - BASE) mod (Q - P + 1) */

#define NAT_OP_GOTO       0   /* matched: continue at on_match (a jump into an inlined chain) */
#define NAT_OP_ACCEPT     1   /* stop: no translation (ACCEPT, RETURN from a builtin chain, policy) */
#define NAT_OP_DNAT       2
#define NAT_OP_SNAT       3
#define NAT_OP_MASQUERADE 4
#define NAT_OP_REDIRECT   5
#define NAT_OP_LOOKUP     6   /* consult nat_exact with this table id; a hit is a DNAT, a miss goes
                               * on at on_miss (at most NAT_MAX_LOOKUPS per evaluation) */
#define NAT_OP_CLASSIFY   7   /* tuple-space search of the rules that follow it (a classifier):
                               * continue at the first of them that matches, else at on_miss.
                               * Counts as a lookup, like NAT_OP_LOOKUP. Carries no conditions. */

/* One shape of a classifier (nat_shapes): which fields its rules match exactly or by prefix.
 * A packet's key for the shape is its fields ANDed with these masks; nat_cls maps that key to
 * the first rule of the shape with it. A classifier's shapes are in order of first_pc, so a
 * search stops at the first shape whose first_pc is past the best match so far. */
struct nat_shape {
	__be32 src_mask;
	__be32 dst_mask;
	__u16  sport_mask;        /* 0 or 0xffff (host order, like the ports of nat_match_pkt) */
	__u16  dport_mask;
	__u32  iif_mask;          /* 0 or ~0 */
	__u32  oif_mask;
	__u8   proto_mask;        /* 0 or 0xff */
	__u8   local_mask;        /* bit 0: src is local, bit 1: dst is local (-m addrtype) */
	__u16  last;              /* 1: the classifier's last shape (the search stops after it) */
	__u32  first_pc;          /* the lowest pc of the shape's rules */
};

/* Key of nat_cls: a shape's slot and a packet's fields under its masks. Value: the pc (__u32)
 * of the first rule of that shape with this key; the rule's own conditions are checked again
 * at that pc (a key is a necessary condition: negations and port ranges stay in the rule). */
struct nat_cls_key {
	__u32  shape;             /* slot in nat_shapes (host order) */
	__be32 saddr;
	__be32 daddr;
	__u16  sport;             /* host order */
	__u16  dport;
	__u32  iif;
	__u32  oif;
	__u8   proto;
	__u8   local;
	__u16  pad;
};

#define NAT_NEG_SRC      0x01
#define NAT_NEG_DST      0x02
#define NAT_NEG_SPORT    0x04
#define NAT_NEG_DPORT    0x08
#define NAT_NEG_IIF      0x10
#define NAT_NEG_OIF      0x20
#define NAT_NEG_PROTO    0x40
#define NAT_SRC_LOCAL    0x100  /* -m addrtype --src-type LOCAL */
#define NAT_NEG_SRC_LOCAL 0x200
#define NAT_DST_LOCAL    0x400  /* -m addrtype --dst-type LOCAL */
#define NAT_NEG_DST_LOCAL 0x800
#define NAT_PORTS_REQUIRED 0x1000 /* port conditions present: only TCP/UDP can match */

/* Key/value of nat_exact: one simple DNAT rule (-p, --dport, optional -d and [!] -i). */
struct nat_exact_key {
	__u32  table;             /* host order */
	__be32 daddr;             /* 0 = any destination */
	__be16 dport;
	__u8   proto;
	__u8   pad;
};

struct nat_exact_val {
	__be32 to_addr;
	__be16 to_port;           /* 0 = keep */
	__u8   iif_neg;           /* 1: the rule says ! -i */
	__u8   pad;
	__u32  iif;               /* 0 = any (host order) */
};

/* Table id 0 of nat_exact (never a compiled table: generations start at 1) holds the targets of
 * the control plane's published ports, key (0, container address, container port, proto), value
 * unused: a container reaching one of them at its own address is masqueraded to its gateway.
 * These are the per-port rules Docker writes, "-s C -d C -p P --dport CPORT -j MASQUERADE",
 * which match whatever DNAT led there. */
#define NAT_HAIRPIN_TABLE 0

/* Key of frag_ports: one fragmented datagram; value: its ports, read from the first fragment. */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8   proto;
	__u8   pad;
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

/* Value of sock_xlate, key: __u64 socket cookie. What connect4/sendmsg4 rewrote, so that
 * getpeername4/recvmsg4 can show the application the address it asked for. */
struct sock_xlate {
	__be32 orig_addr;
	__be32 nat_addr;
	__be16 orig_port;
	__be16 nat_port;
	__be32 want_saddr;  /* 0, or the source iptables would have kept: a translated socket already
	                     * bound to a port (not an address) gets the kernel's pick for the new
	                     * destination (127.0.0.1, the bridge's address), and the TC program
	                     * where the flow leaves gives it this source instead */
	__be32 sock_saddr;  /* 0, or the address getsockname() reports (the source iptables would
	                     * have given the socket: want_saddr, or 127.0.0.1 for a DNAT of loopback,
	                     * whose packets leave from the kernel's pick as masquerade would make them) */
};

#endif

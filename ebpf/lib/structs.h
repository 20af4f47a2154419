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

#define EP_F_NONE 0

/* Key of published_ports: a published container service (replies from it may cross networks,
 * because the host DNATed the connection to it). */
struct published_key {
	__be32 ip;        /* container address (network order) */
	__be16 port;      /* container port (network order) */
	__u8   proto;     /* IPPROTO_TCP or IPPROTO_UDP */
	__u8   pad;       /* always 0: part of the hashed key */
};

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

#endif

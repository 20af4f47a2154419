/* The packet side of NAT, for TC and XDP (ctx.h): reading a packet's tuple, and rewriting
 * addresses, ports and TTL with incremental checksum updates (RFC 1624; at TC via the kernel
 * helpers, which also handle CHECKSUM_PARTIAL and GSO packets). No maps here.
 *
 * Byte order: every address and port in struct ct_key / struct nat_pkt is network order, as on
 * the wire. Offsets are from the start of the frame (the Ethernet header). */
#ifndef DOCKLINE_NAT_PACKET_H
#define DOCKLINE_NAT_PACKET_H

#include <uapi/linux/icmp.h>
#include "common.h"
#include "ctx.h"
#include "structs.h"

#define IP_OFF         ETH_HLEN
#define IP_CSUM_OFF    (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_TTL_OFF     (ETH_HLEN + offsetof(struct iphdr, ttl))
#define IP_SRC_OFF     (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF     (ETH_HLEN + offsetof(struct iphdr, daddr))

enum nat_parse_result {
	NP_OK = 0,          /* a TCP, UDP or ICMP echo packet with a tuple in p->key */
	NP_ICMP_ERROR,      /* an ICMP error: p->inner_* describe the packet it quotes */
	NP_NOT_IPV4,        /* not IPv4 over Ethernet */
	NP_UNTRACKED,       /* IPv4 we do not translate (other protocols, other ICMP types) */
	NP_MALFORMED,
};

struct nat_pkt {
	struct ct_key key;   /* the tuple as it arrived (ICMP echo: id in sport for requests, dport
	                      * for replies) */
	__u32 l4off;         /* offset of the L4 header */
	__u32 len;           /* the frame's length */
	__be16 frag_id;      /* IPv4 id (fragments) */
	__u8  tcp_flags;     /* TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
	__u8  has_l4;        /* 0 for a non-first fragment: ports come from frag_ports */
	__u8  first_frag;    /* 1 for the first fragment of a fragmented datagram */
	__u8  ttl;
	__u8  icmp_type;
	/* ICMP errors only: the quoted packet */
	__u8  inner_ihl;
	__u32 inner_off;     /* offset of the quoted IPv4 header */
	__u32 inner_l4off;   /* offset of the quoted L4 header */
	struct ct_key inner; /* the quoted packet's tuple (same conventions as key) */
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Fill the (sport, dport) pair of a tuple from an L4 header at l4 (TCP/UDP ports, ICMP echo id).
 * Returns 0 if the protocol or ICMP type is not one we track. */
static __always_inline int l4_tuple(void *l4, void *end, __u8 proto, struct ct_key *k, __u8 *flags,
				    __u8 *icmp_type)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		__be16 *ports = l4;
		if ((void *)(ports + 2) > end)
			return -1;
		k->sport = ports[0];
		k->dport = ports[1];
		if (proto == IPPROTO_TCP) {
			struct tcphdr *th = l4;
			if ((void *)(th + 1) > end)
				return -1;
			*flags = ((__u8 *)th)[13];
		}
		return 1;
	}
	if (proto == IPPROTO_ICMP) {
		struct icmphdr *ic = l4;
		if ((void *)(ic + 1) > end)
			return -1;
		*icmp_type = ic->type;
		if (ic->type == ICMP_ECHO) {
			k->sport = ic->un.echo.id;
			k->dport = 0;
			return 1;
		}
		if (ic->type == ICMP_ECHOREPLY) {
			k->sport = 0;
			k->dport = ic->un.echo.id;
			return 1;
		}
		return 0;
	}
	return 0;
}

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

static __always_inline enum nat_parse_result nat_parse(dl_ctx *ctx, struct nat_pkt *p)
{
	void *data = ctx_data(ctx);
	void *end = ctx_data_end(ctx);
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 hlen;
	int r;

	if ((void *)(eth + 1) > end)
		return NP_MALFORMED;
	if (eth->h_proto != ETH_P_IP_BE)
		return NP_NOT_IPV4;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return NP_MALFORMED;
	hlen = ip->ihl * 4;
	if ((void *)ip + hlen > end || bpf_ntohs(ip->tot_len) < hlen)
		return NP_MALFORMED;
	p->key.saddr = ip->saddr;
	p->key.daddr = ip->daddr;
	p->key.proto = ip->protocol;
	p->l4off = ETH_HLEN + hlen;
	p->len = ctx_len(ctx);
	p->ttl = ip->ttl;
	p->frag_id = ip->id;
	p->has_l4 = 1;
	if (ip->frag_off & bpf_htons(0x1fff)) {          /* offset != 0: no L4 header here */
		p->has_l4 = 0;
		if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_ICMP)
			return NP_UNTRACKED;   /* ICMP: a large echo's later fragments follow its id */
		return NP_OK;
	}
	if (ip->frag_off & bpf_htons(0x2000))            /* MF: first of several */
		p->first_frag = 1;
	r = l4_tuple((void *)ip + hlen, end, ip->protocol, &p->key, &p->tcp_flags, &p->icmp_type);
	if (r < 0)
		return NP_MALFORMED;
	if (r > 0)
		return NP_OK;
	if (ip->protocol != IPPROTO_ICMP || !icmp_is_error(p->icmp_type) || p->first_frag)
		return NP_UNTRACKED;

	/* ICMP error: 8 bytes of ICMP header, then the quoted IPv4 header and >= 8 bytes of it */
	{
		struct iphdr *in = (void *)ip + hlen + sizeof(struct icmphdr);
		__u32 ihlen;
		__u8 f = 0, t = 0;

		if ((void *)(in + 1) > end || in->version != 4 || in->ihl < 5)
			return NP_UNTRACKED;
		ihlen = in->ihl * 4;
		if ((void *)in + ihlen > end)
			return NP_UNTRACKED;
		if (in->frag_off & bpf_htons(0x1fff))
			return NP_UNTRACKED;
		p->inner.saddr = in->saddr;
		p->inner.daddr = in->daddr;
		p->inner.proto = in->protocol;
		p->inner_ihl = in->ihl;
		p->inner_off = p->l4off + sizeof(struct icmphdr);
		p->inner_l4off = p->inner_off + ihlen;
		if (in->protocol == IPPROTO_TCP) {
			/* the quote may hold only 8 bytes of TCP (RFC 792): the ports are enough */
			__be16 *ports = (void *)in + ihlen;
			if ((void *)(ports + 2) > end)
				return NP_UNTRACKED;
			p->inner.sport = ports[0];
			p->inner.dport = ports[1];
		} else if (l4_tuple((void *)in + ihlen, end, in->protocol, &p->inner, &f, &t) <= 0) {
			return NP_UNTRACKED;
		}
		return NP_ICMP_ERROR;
	}
}

/* The tuple a packet in the opposite direction carries. */
static __always_inline void ct_key_reverse(struct ct_key *out, __be32 saddr, __be32 daddr,
					   __be16 sport, __be16 dport, __u8 proto)
{
	out->saddr = daddr;
	out->daddr = saddr;
	out->sport = dport;
	out->dport = sport;
	out->proto = proto;
	out->pad[0] = out->pad[1] = out->pad[2] = 0;
}

/* Offset of the L4 checksum a change of this packet's addresses/ports must update, 0 if none. */
static __always_inline __u32 l4_csum_off(dl_ctx *ctx, __u8 proto, __u32 l4off, __u64 *flags)
{
	__u16 check = 0;

	if (proto == IPPROTO_TCP)
		return l4off + offsetof(struct tcphdr, check);
	if (proto == IPPROTO_UDP) {
		/* a zero UDP checksum means "none" and must stay zero (MANGLED_0 keeps it off 0) */
		if (ctx_load(ctx, l4off + offsetof(struct udphdr, check), &check, 2) < 0 || !check)
			return 0;
		*flags |= BPF_F_MARK_MANGLED_0;
		return l4off + offsetof(struct udphdr, check);
	}
	if (proto == IPPROTO_ICMP)
		return l4off + offsetof(struct icmphdr, checksum);
	return 0;
}

/* Rewrite an address at addr_off whose IPv4 header checksum is at ip_csum_off; the L4 checksum at
 * csum_off (if any) gets the pseudo-header update unless the protocol is ICMP. */
static __always_inline int rewrite_addr(dl_ctx *ctx, __u32 addr_off, __u32 ip_csum_off,
					__u32 csum_off, __u64 l4flags, int pseudo, __be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (csum_off && pseudo &&
	    ctx_l4_csum_replace(ctx, csum_off, from, to, l4flags | BPF_F_PSEUDO_HDR | sizeof(to)) < 0)
		return -1;
	if (ctx_l3_csum_replace(ctx, ip_csum_off, from, to, sizeof(to)) < 0)
		return -1;
	return ctx_store(ctx, addr_off, &to, sizeof(to));
}

static __always_inline int rewrite_port(dl_ctx *ctx, __u32 port_off, __u32 csum_off,
					__u64 l4flags, __be16 from, __be16 to)
{
	if (from == to)
		return 0;
	if (csum_off && ctx_l4_csum_replace(ctx, csum_off, from, to, l4flags | sizeof(to)) < 0)
		return -1;
	return ctx_store(ctx, port_off, &to, sizeof(to));
}

/* Make the packet (tuple p->key) carry tuple "to". Returns < 0 if a helper failed. */
static __always_inline int nat_rewrite(dl_ctx *ctx, const struct nat_pkt *p,
				       __be32 to_saddr, __be32 to_daddr, __be16 to_sport, __be16 to_dport)
{
	__u8 proto = p->key.proto;
	__u64 l4flags = 0;
	__u32 csum_off = p->has_l4 ? l4_csum_off(ctx, proto, p->l4off, &l4flags) : 0;
	int pseudo = proto != IPPROTO_ICMP;

	if (rewrite_addr(ctx, IP_SRC_OFF, IP_CSUM_OFF, csum_off, l4flags, pseudo, p->key.saddr, to_saddr) < 0 ||
	    rewrite_addr(ctx, IP_DST_OFF, IP_CSUM_OFF, csum_off, l4flags, pseudo, p->key.daddr, to_daddr) < 0)
		return -1;
	if (!p->has_l4)
		return 0;
	if (proto == IPPROTO_ICMP) {
		/* the echo id: in sport for requests, in dport for replies (the other one is 0) */
		__u32 id_off = p->l4off + offsetof(struct icmphdr, un.echo.id);
		if (p->icmp_type == ICMP_ECHO)
			return rewrite_port(ctx, id_off, csum_off, 0, p->key.sport, to_sport);
		return rewrite_port(ctx, id_off, csum_off, 0, p->key.dport, to_dport);
	}
	if (rewrite_port(ctx, p->l4off, csum_off, l4flags, p->key.sport, to_sport) < 0)
		return -1;
	return rewrite_port(ctx, p->l4off + 2, csum_off, l4flags, p->key.dport, to_dport);
}

/* Decrement the TTL of a packet we route ourselves (the stack would have). */
static __always_inline int ttl_decrement(dl_ctx *ctx)
{
	__u16 old = 0, new;

	if (ctx_load(ctx, IP_TTL_OFF, &old, 2) < 0)
		return -1;
	new = old;
	((__u8 *)&new)[0] -= 1;                 /* the first byte of the (ttl, protocol) word */
	if (ctx_l3_csum_replace(ctx, IP_CSUM_OFF, old, new, 2) < 0)
		return -1;
	return ctx_store(ctx, IP_TTL_OFF, &new, 2);
}

/* Change a 16- or 32-bit value inside an ICMP error's payload: the value, and the ICMP checksum
 * (which covers the payload, no pseudo header). */
static __always_inline int icmp_payload_store(dl_ctx *ctx, __u32 icmp_csum_off, __u32 off,
					      __u32 from, __u32 to, __u32 size)
{
	if (from == to)
		return 0;
	if (ctx_l4_csum_replace(ctx, icmp_csum_off, from, to, size) < 0)
		return -1;
	return ctx_store(ctx, off, &to, size);
}

/* Translate an ICMP error: the quoted packet becomes (qs, qd, qsp, qdp); the outer destination
 * becomes od, the outer source os. Quoted checksums (IPv4 header; UDP/TCP/ICMP when the quote
 * holds them) are updated, and every change is folded into the outer ICMP checksum. */
static __always_inline int nat_rewrite_icmp_error(dl_ctx *ctx, const struct nat_pkt *p,
						  __be32 qs, __be32 qd, __be16 qsp, __be16 qdp,
						  __be32 os, __be32 od)
{
	__u32 icmp_csum = p->l4off + offsetof(struct icmphdr, checksum);
	__u32 in_csum = p->inner_off + offsetof(struct iphdr, check);
	__u32 q_l4csum = 0, q_port_off = p->inner_l4off, q_port2_off = p->inner_l4off + 2;
	__u16 old_in_csum = 0, new_in_csum = 0, old_q_l4 = 0, new_q_l4 = 0;
	__u8 proto = p->inner.proto;
	int q_pseudo = proto != IPPROTO_ICMP;
	__u64 q_flags = 0;

	/* is the quoted L4 checksum inside the quote? */
	if (proto == IPPROTO_TCP)
		q_l4csum = p->inner_l4off + offsetof(struct tcphdr, check);
	else if (proto == IPPROTO_UDP)
		q_l4csum = p->inner_l4off + offsetof(struct udphdr, check);
	else
		q_l4csum = p->inner_l4off + offsetof(struct icmphdr, checksum);
	if (q_l4csum + 2 > p->len || ctx_load(ctx, q_l4csum, &old_q_l4, 2) < 0)
		q_l4csum = 0;
	if (proto == IPPROTO_UDP && !old_q_l4)
		q_l4csum = 0;
	if (proto == IPPROTO_UDP)
		q_flags = BPF_F_MARK_MANGLED_0;
	if (ctx_load(ctx, in_csum, &old_in_csum, 2) < 0)
		return -1;

	/* quoted addresses: quoted IP checksum, quoted L4 pseudo header, outer ICMP checksum. The
	 * quoted L4 checksum is plain data of this packet, so it is updated without BPF_F_PSEUDO_HDR
	 * (that flag is about this packet's own pseudo header and checksum offload state). */
	if (qs != p->inner.saddr) {
		if (q_l4csum && q_pseudo &&
		    ctx_l4_csum_replace(ctx, q_l4csum, p->inner.saddr, qs, q_flags | 4) < 0)
			return -1;
		if (ctx_l3_csum_replace(ctx, in_csum, p->inner.saddr, qs, 4) < 0 ||
		    icmp_payload_store(ctx, icmp_csum, p->inner_off + offsetof(struct iphdr, saddr),
				       p->inner.saddr, qs, 4) < 0)
			return -1;
	}
	if (qd != p->inner.daddr) {
		if (q_l4csum && q_pseudo &&
		    ctx_l4_csum_replace(ctx, q_l4csum, p->inner.daddr, qd, q_flags | 4) < 0)
			return -1;
		if (ctx_l3_csum_replace(ctx, in_csum, p->inner.daddr, qd, 4) < 0 ||
		    icmp_payload_store(ctx, icmp_csum, p->inner_off + offsetof(struct iphdr, daddr),
				       p->inner.daddr, qd, 4) < 0)
			return -1;
	}
	/* quoted ports (ICMP echo: the id, held in sport of a request / dport of a reply) */
	if (proto == IPPROTO_ICMP) {
		__be16 from = p->inner.sport ? p->inner.sport : p->inner.dport;
		__be16 to = p->inner.sport ? qsp : qdp;
		q_port_off = p->inner_l4off + offsetof(struct icmphdr, un.echo.id);
		if (from != to) {
			if (q_l4csum && ctx_l4_csum_replace(ctx, q_l4csum, from, to, 2) < 0)
				return -1;
			if (icmp_payload_store(ctx, icmp_csum, q_port_off, from, to, 2) < 0)
				return -1;
		}
	} else {
		if (qsp != p->inner.sport) {
			if (q_l4csum && ctx_l4_csum_replace(ctx, q_l4csum, p->inner.sport, qsp, q_flags | 2) < 0)
				return -1;
			if (icmp_payload_store(ctx, icmp_csum, q_port_off, p->inner.sport, qsp, 2) < 0)
				return -1;
		}
		if (qdp != p->inner.dport) {
			if (q_l4csum && ctx_l4_csum_replace(ctx, q_l4csum, p->inner.dport, qdp, q_flags | 2) < 0)
				return -1;
			if (icmp_payload_store(ctx, icmp_csum, q_port2_off, p->inner.dport, qdp, 2) < 0)
				return -1;
		}
	}
	/* the quoted checksums changed too: fold their change into the outer ICMP checksum */
	if (ctx_load(ctx, in_csum, &new_in_csum, 2) < 0)
		return -1;
	if (new_in_csum != old_in_csum &&
	    ctx_l4_csum_replace(ctx, icmp_csum, old_in_csum, new_in_csum, 2) < 0)
		return -1;
	if (q_l4csum) {
		if (ctx_load(ctx, q_l4csum, &new_q_l4, 2) < 0)
			return -1;
		if (new_q_l4 != old_q_l4 && ctx_l4_csum_replace(ctx, icmp_csum, old_q_l4, new_q_l4, 2) < 0)
			return -1;
	}
	/* outer header: ICMP has no pseudo header, only the IPv4 checksum changes */
	if (rewrite_addr(ctx, IP_SRC_OFF, IP_CSUM_OFF, 0, 0, 0, p->key.saddr, os) < 0 ||
	    rewrite_addr(ctx, IP_DST_OFF, IP_CSUM_OFF, 0, 0, 0, p->key.daddr, od) < 0)
		return -1;
	return 0;
}

#endif

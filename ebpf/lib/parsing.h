/* Read-only header parsing with one bounds-check idiom: every header is checked against
 * data_end before it is read. Returns NULL when the packet is too short. */
#ifndef DOCKLINE_PARSING_H
#define DOCKLINE_PARSING_H

#include "common.h"

struct hdr_cursor {
	void *pos;
};

struct arp_eth_ipv4 {              /* ARP body for Ethernet/IPv4 (RFC 826), after struct arphdr */
	unsigned char sha[ETH_ALEN];
	__be32 sip;
	unsigned char tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

static __always_inline struct ethhdr *parse_eth(struct hdr_cursor *c, void *end)
{
	struct ethhdr *eth = c->pos;

	if ((void *)(eth + 1) > end)
		return NULL;
	c->pos = eth + 1;
	return eth;
}

/* IPv4 header with a sane IHL (>= 5, inside the packet) and total length (>= IHL*4). */
static __always_inline struct iphdr *parse_ipv4(struct hdr_cursor *c, void *end)
{
	struct iphdr *ip = c->pos;
	__u32 hlen;

	if ((void *)(ip + 1) > end)
		return NULL;
	if (ip->version != 4 || ip->ihl < 5)
		return NULL;
	hlen = ip->ihl * 4;
	if (c->pos + hlen > end)
		return NULL;
	if (bpf_ntohs(ip->tot_len) < hlen)
		return NULL;
	c->pos += hlen;
	return ip;
}

static __always_inline int ipv4_is_fragment(const struct iphdr *ip)
{
	return ip->frag_off & bpf_htons(0x3fff);   /* MF set or a non-zero offset */
}

/* Source port of a TCP/UDP header at the cursor, 0 if absent or truncated (network order). */
static __always_inline __be16 l4_source_port(struct hdr_cursor *c, void *end, __u8 proto)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = c->pos;
		if ((void *)(th + 1) > end)
			return 0;
		return th->source;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = c->pos;
		if ((void *)(uh + 1) > end)
			return 0;
		return uh->source;
	}
	return 0;
}

static __always_inline struct arp_eth_ipv4 *parse_arp_ipv4(struct hdr_cursor *c, void *end)
{
	struct arphdr *arp = c->pos;
	struct arp_eth_ipv4 *body;

	if ((void *)(arp + 1) > end)
		return NULL;
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return NULL;
	body = (void *)(arp + 1);
	if ((void *)(body + 1) > end)
		return NULL;
	c->pos = body + 1;
	return body;
}

#endif

/* TC ingress of an endpoint's host-side veth, i.e. every frame the endpoint sends.
 *
 *   1. Anti-spoofing: the source MAC, the IPv4 source and the ARP sender must be the ones the
 *      control plane assigned to this veth (endpoints_by_ifindex).
 *   2. Isolation: an IPv4 destination that is an endpoint of another network is dropped, except
 *      replies from a published service (the host may have DNATed that connection, so they
 *      always take the host path; see published_ports).
 *   3. Fast path: IPv4 unicast to an endpoint of the same network, addressed to its MAC, goes
 *      straight into that endpoint's namespace with bpf_redirect_peer (no bridge, no backlog).
 *   4. Everything else (ARP, broadcast, the gateway, the host, egress, IPv4 fragments)
 *      continues to the bridge and the host stack.
 * One exit counts the verdict.
 */
#include "lib/common.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/parsing.h"

/* Counting lives here, not in lib/: bcc rewrites map method calls only in the main file. */
static __always_inline void count(__u32 ifindex, __u32 code, __u32 len)
{
	struct endpoint_stats zero = {}, *s;
	struct counter *c = verdicts.lookup(&code);

	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
	s = endpoint_stats.lookup_or_try_init(&ifindex, &zero);
	if (!s)
		return;
	if (code == VERDICT_REDIRECT_PEER)
		c = &s->redirected;
	else if (code >= DROP_BASE)
		c = &s->dropped;
	else
		c = &s->passed;
	c->packets += 1;
	c->bytes += len;
}

static __always_inline __u32 endpoint_verdict(struct __sk_buff *skb, __u32 *target)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct hdr_cursor c = { .pos = data };
	struct published_key pk = {};
	struct endpoint_info *self;
	struct ip_endpoint *dst;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 ifindex = skb->ifindex;

	self = endpoints_by_ifindex.lookup(&ifindex);
	if (!self)
		return DROP_UNKNOWN_ENDPOINT;
	eth = parse_eth(&c, end);
	if (!eth)
		return DROP_MALFORMED;
	if (!mac_equal(eth->h_source, self->mac))
		return DROP_SPOOFED_MAC;

	if (eth->h_proto == ETH_P_ARP_BE) {
		struct arp_eth_ipv4 *arp = parse_arp_ipv4(&c, end);
		if (!arp)
			return DROP_MALFORMED;
		if (!mac_equal(arp->sha, self->mac) || arp->sip != self->ip)
			return DROP_SPOOFED_ARP;
		return VERDICT_PASS_ARP;
	}
	if (eth->h_proto == ETH_P_8021Q_BE || eth->h_proto == ETH_P_8021AD_BE)
		return DROP_VLAN;
	if (eth->h_proto != ETH_P_IP_BE)
		return VERDICT_PASS_OTHER;

	ip = parse_ipv4(&c, end);
	if (!ip)
		return DROP_MALFORMED;
	if (ip->saddr != self->ip)
		return DROP_SPOOFED_IP;
	dst = endpoints_by_ip.lookup(&ip->daddr);
	if (!dst)
		return VERDICT_PASS;
	/* A fragment carries no (or no trustworthy) ports, so the program cannot tell whether it
	 * belongs to a DNATed flow: it takes the host path, where defragmentation, conntrack and
	 * the kernel's isolation rules judge it. */
	if (ipv4_is_fragment(ip))
		return VERDICT_PASS;
	/* A reply from a published service may belong to a connection the host DNATed (from
	 * another network, or a hairpin from this one): only the host's conntrack can translate
	 * it back, so it goes through the bridge and the stack. Until eBPF NAT tracks
	 * connections itself, this is the one exception to both isolation and the fast path. */
	pk.ip = ip->saddr;
	pk.proto = ip->protocol;
	pk.port = l4_source_port(&c, end, ip->protocol);
	if (pk.port && published_ports.lookup(&pk))
		return VERDICT_PASS;
	if (dst->net_id != self->net_id)
		return DROP_ISOLATION;
	if (!mac_equal(eth->h_dest, dst->mac))
		return VERDICT_PASS;   /* e.g. sent to the gateway MAC: let the host route it */
	*target = dst->ifindex;
	return VERDICT_REDIRECT_PEER;
}

int tc_from_endpoint(struct __sk_buff *skb)
{
	__u32 target = 0;
	__u32 code = endpoint_verdict(skb, &target);
	int action;

	count(skb->ifindex, code, skb->len);
	if (code >= DROP_BASE)
		action = TC_ACT_SHOT;
	else if (code == VERDICT_REDIRECT_PEER)
		action = bpf_redirect_peer(target, 0);
	else
		action = TC_ACT_OK;
	return action;
}

/* Endpoint verdicts shared by tc_from_endpoint and the NAT stages that finish its packets:
 * counting per endpoint, and forwarding of what NAT left alone. Uses maps (spliced). */
#ifndef DOCKLINE_ENDPOINT_H
#define DOCKLINE_ENDPOINT_H

#include "common.h"
#include "drop_reasons.h"
#include "maps.h"
#include "parsing.h"

static __always_inline void count_verdict(__u32 code, __u32 len)
{
	struct counter *c = verdicts.lookup(&code);

	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
}

static __always_inline void count_endpoint(__u32 ifindex, __u32 code, __u32 len)
{
	struct endpoint_stats zero = {}, *s;
	struct counter *c;

	count_verdict(code, len);
	s = endpoint_stats.lookup_or_try_init(&ifindex, &zero);
	if (!s)
		return;
	if (code == VERDICT_REDIRECT_PEER || code == VERDICT_NAT_REDIRECT)
		c = &s->redirected;
	else if (code >= DROP_BASE)
		c = &s->dropped;
	else
		c = &s->passed;
	c->packets += 1;
	c->bytes += len;
}

/* Steps 3-5, for a packet NAT left alone. */
static __always_inline __u32 endpoint_forwarding(struct __sk_buff *skb, struct endpoint_info *self,
						 __u32 *target)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct hdr_cursor c = { .pos = data };
	struct ip_endpoint *dst;
	struct ethhdr *eth;
	struct iphdr *ip;

	eth = parse_eth(&c, end);
	if (!eth)
		return DROP_MALFORMED;
	ip = parse_ipv4(&c, end);
	if (!ip)
		return DROP_MALFORMED;
	dst = endpoints_by_ip.lookup(&ip->daddr);
	if (!dst)
		return VERDICT_PASS;
	/* A fragment NAT did not claim takes the host path, where the kernel's rules judge it. */
	if (ipv4_is_fragment(ip))
		return VERDICT_PASS;
	if (dst->net_id != self->net_id)
		return DROP_ISOLATION;
	if (!mac_equal(eth->h_dest, dst->mac))
		return VERDICT_PASS;   /* e.g. sent to the gateway MAC: let the host route it */
	*target = dst->ifindex;
	return VERDICT_REDIRECT_PEER;
}

/* Does the kernel forward this endpoint's network (NET_F_KERNEL_FWD)? Then steps 3-4 are the
 * bridge's and iptables' job. */
static __always_inline int kernel_forwards(const struct endpoint_info *self)
{
	__u32 net = self->net_id;
	struct net_info *ni = net_info.lookup(&net);

	return ni && (ni->flags & NET_F_KERNEL_FWD);
}

/* Steps 3-5 and the one exit: count the verdict and act on it. */
/* The endpoint's forwarding decision for a frame judged ``code`` so far (VERDICT_PASS: where
 * the kernel does not forward for it, endpoint_forwarding decides; *target: its redirect). */
static __always_inline __u32 endpoint_decide(struct __sk_buff *skb, struct endpoint_info *self, __u32 code,
					     __u32 *target)
{
	if (code == VERDICT_PASS && self && !kernel_forwards(self))
		code = endpoint_forwarding(skb, self, target);
	return code;
}

/* Count ``code`` for the endpoint and carry it out. */
static __always_inline int endpoint_act(struct __sk_buff *skb, __u32 code, __u32 target)
{
	count_endpoint(skb->ifindex, code, skb->len);
	if (code >= DROP_BASE)
		return TC_ACT_SHOT;
	if (code == VERDICT_REDIRECT_PEER)
		return bpf_redirect_peer(target, 0);
	return TC_ACT_OK;
}

static __always_inline int endpoint_finish(struct __sk_buff *skb, struct endpoint_info *self, __u32 code)
{
	__u32 target = 0;

	code = endpoint_decide(skb, self, code, &target);
	return endpoint_act(skb, code, target);
}

#endif

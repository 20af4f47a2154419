/* Native XDP on the host's uplink ingress, before the stack allocates an skb:
 *   1. early drops: IPv4 packets whose source claims to be inside one of this host's container
 *      subnets (local_subnets) cannot come from outside (spoofed); IPv4 headers that cannot be
 *      right (IHL < 5, beyond the packet, total length < header);
 *   2. NAT (lib/nat.h, compiled for XDP): a packet of a tracked flow whose translated destination
 *      is an endpoint (the client side of a published port, the replies of masqueraded flows) is
 *      translated and redirected into that endpoint; a new connection is judged by the same
 *      compiled PREROUTING rules (tail calls into xdp_nat.c) and, if it is DNATed to an endpoint,
 *      gets its conntrack entries and goes in the same way.
 * Everything else passes untouched to tc_uplink_ingress, which does the rest of NAT (local
 * destinations, forwarding routes, ICMP errors, fragments). One exit counts the verdict.
 */
#define DL_XDP 1
#include "lib/common.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/parsing.h"
#include "lib/nat.h"
#include "lib/endpoint.h"

static __always_inline __u32 uplink_verdict(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct hdr_cursor c = { .pos = data };
	struct subnet_key key = {};
	struct ethhdr *eth;
	struct iphdr *ip;

	eth = parse_eth(&c, end);
	if (!eth || eth->h_proto != ETH_P_IP_BE)
		return VERDICT_XDP_PASS;
	ip = parse_ipv4(&c, end);
	if (!ip)
		return DROP_UPLINK_MALFORMED;
	key.prefixlen = 32;
	key.addr = ip->saddr;
	if (local_subnets.lookup(&key))
		return DROP_UPLINK_SPOOFED;
	return VERDICT_XDP_PASS;
}

int xdp_uplink(struct xdp_md *ctx)
{
	__u32 code = uplink_verdict(ctx), len = ctx->data_end - ctx->data, ifindex = ctx->ingress_ifindex;
	int action = XDP_PASS;

	if (code >= DROP_BASE) {
		action = XDP_DROP;
	} else {
		action = nat_ingress(ctx, ifindex, NAT_NEW_ROUTED, NAT_ORIGIN_UPLINK, 0, &code);
		if (action == NAT_DECLINE)
			action = XDP_PASS;
	}
	count_verdict(code, len);
	return action;
}

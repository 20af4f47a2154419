/* Native XDP on the host's uplink: early drops before the stack allocates an skb.
 *   - IPv4 packets whose source claims to be inside one of this host's container subnets
 *     (local_subnets) cannot come from outside: dropped as spoofed.
 *   - IPv4 headers that cannot be right (IHL < 5, beyond the packet, total length < header).
 * Everything else passes. One exit counts the verdict.
 */
#include "lib/common.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/parsing.h"

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
	__u32 code = uplink_verdict(ctx);
	struct counter *c = verdicts.lookup(&code);

	if (c) {
		c->packets += 1;
		c->bytes += ctx->data_end - ctx->data;
	}
	return code >= DROP_BASE ? XDP_DROP : XDP_PASS;
}

/* The stages of a new flow's NAT at TC (lib/nat_stages.h), tail-called (nat_tail) from
 * tc_from_endpoint, tc_uplink_ingress and tc_uplink_egress after a conntrack miss.
 * See lib/nat_stages.h for what each stage does.
 */
#include "lib/common.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/nat.h"
#include "lib/endpoint.h"
#include "lib/nat_stages.h"

int tc_nat_eval(struct __sk_buff *skb)
{
	return nat_stage_eval(skb);
}

int tc_nat_route(struct __sk_buff *skb)
{
	return nat_stage_route(skb);
}

int tc_nat_commit(struct __sk_buff *skb)
{
	return nat_stage_commit(skb);
}

int tc_nat_classify(struct __sk_buff *skb)
{
	return nat_stage_classify(skb);
}

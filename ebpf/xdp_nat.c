/* The stages of a new flow's NAT at XDP (lib/nat_stages.h), tail-called (nat_tail_xdp) from
 * xdp_uplink after a conntrack miss. Same rules, same conntrack, same code as the TC stages
 * (tc_nat.c); a flow XDP cannot finish itself is passed on untouched to tc_uplink_ingress.
 */
#define DL_XDP 1
#include "lib/common.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/nat.h"
#include "lib/endpoint.h"
#include "lib/nat_stages.h"

int xdp_nat_eval(struct xdp_md *ctx)
{
	return nat_stage_eval(ctx);
}

int xdp_nat_route(struct xdp_md *ctx)
{
	return nat_stage_route(ctx);
}

int xdp_nat_commit(struct xdp_md *ctx)
{
	return nat_stage_commit(ctx);
}

int xdp_nat_classify(struct xdp_md *ctx)
{
	return nat_stage_classify(ctx);
}

/* A deliberate per-packet cost for proving the regression gate works (bench/faults.py): attached
 * as an extra cls_bpf filter before the datapath's own, it burns BURN_ITERS helper calls and
 * returns TC_ACT_UNSPEC so the next filter (or the stack) handles the packet unchanged. */
#include <uapi/linux/pkt_cls.h>

#ifndef BURN_ITERS
#define BURN_ITERS 100
#endif

int tc_burn(struct __sk_buff *skb)
{
	__u32 acc = 0;

	for (int i = 0; i < BURN_ITERS; i++)
		acc += bpf_get_prandom_u32();
	skb->cb[0] = acc;	/* keep the loop from being optimised away */
	return TC_ACT_UNSPEC;
}

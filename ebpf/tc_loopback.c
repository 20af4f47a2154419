/* TC egress of the host's loopback device: NAT for traffic that never leaves the host (both
 * ends are host addresses). iptables applies POSTROUTING (-o lo) to it; dockline attaches this
 * program only while some POSTROUTING rule could match such traffic (control/nat/reach.py), and
 * judges only the flows with an address those rules' sources cover (loopback_srcs: Docker's
 * "-s <subnet>" masquerade covers the gateway, never 127.0.0.1).
 * Both directions of a host-local flow leave by lo, so this one hook sees all of it:
 *   - a packet of a tracked flow is translated and continues (into the stack, by lo);
 *   - a new flow the host starts is judged by POSTROUTING (tail-called stages, oif = lo;
 *     MASQUERADE uses the address nat_ifaddr holds for lo, the one the kernel would pick) and is
 *     tracked, translated or not, so that its replies are never judged.
 * The OUTPUT chain of these flows is done at the socket layer (cgroup_sock.c), as for all host
 * traffic. One exit counts the verdict.
 */
#include "lib/common.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/nat.h"
#include "lib/endpoint.h"

/* May a rule translate this packet's flow, in either direction: is one of its addresses among
 * the rules' source prefixes (loopback_srcs)? If not, a new flow is not judged nor tracked (a
 * tracked one is still translated). Non-IPv4 and short packets say yes: nat_egress sorts them. */
static __always_inline int loopback_may_matter(struct __sk_buff *skb)
{
	struct subnet_key k = { .prefixlen = 32 };
	__be32 addrs[2];
	__be16 proto;

	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0 || proto != ETH_P_IP_BE ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 12, addrs, sizeof(addrs)) < 0)
		return 1;
	k.addr = addrs[0];
	if (loopback_srcs.lookup(&k))
		return 1;
	k.addr = addrs[1];
	return loopback_srcs.lookup(&k) != NULL;
}

int tc_loopback(struct __sk_buff *skb)
{
	__u32 code = VERDICT_LOOPBACK_PASS, len = skb->len;
	int action = nat_egress(skb, loopback_may_matter(skb) ? NAT_ORIGIN_LOOPBACK : 0, 0, 0, &code);

	if (action == NAT_DECLINE)
		action = TC_ACT_OK;
	count_verdict(code, len);
	return action;
}

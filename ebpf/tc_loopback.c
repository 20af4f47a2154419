/* TC egress of the host's loopback device: NAT for traffic that never leaves the host (both
 * ends are host addresses). iptables applies POSTROUTING (-o lo) to it; dockline attaches this
 * program only while some POSTROUTING rule could match such traffic (control/nat/reach.py).
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

int tc_loopback(struct __sk_buff *skb)
{
	__u32 code = VERDICT_LOOPBACK_PASS, len = skb->len;
	int action = nat_egress(skb, NAT_ORIGIN_LOOPBACK, 0, 0, &code);

	if (action == NAT_DECLINE)
		action = TC_ACT_OK;
	count_verdict(code, len);
	return action;
}

/* TC on the host's uplink (the interface towards the outside world).
 *
 *   tc_uplink_ingress: NAT for what arrives from outside (lib/nat.h): replies of masqueraded
 *     flows go straight back into their endpoint; new connections to published ports are
 *     judged by PREROUTING (-i is the uplink), DNATed and redirected into the endpoint.
 *   tc_uplink_egress: translations of tracked flows whose packets the host itself sends (the
 *     replies of REDIRECTed connections); the host's own new flows go through POSTROUTING
 *     (SNAT/MASQUERADE rules for host traffic) and are tracked either way, so that their replies
 *     are never mistaken for new connections to a published port.
 * Everything else continues untouched. One exit per program counts the verdict.
 */
#include "lib/common.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/nat.h"
#include "lib/endpoint.h"

int tc_uplink_ingress(struct __sk_buff *skb)
{
	__u32 code = VERDICT_UPLINK_PASS, len = skb->len;
	int action = nat_ingress(skb, skb->ifindex, NAT_NEW_ROUTED, NAT_ORIGIN_UPLINK, 0, &code);

	if (action == NAT_DECLINE)
		action = TC_ACT_OK;
	count_verdict(code, len);
	return action;
}

int tc_uplink_egress(struct __sk_buff *skb)
{
	__u32 code = VERDICT_UPLINK_PASS, len = skb->len;
	int action = nat_egress(skb, NAT_ORIGIN_LOCAL_OUT, 0, 0, &code);

	if (action == NAT_DECLINE)
		action = TC_ACT_OK;
	count_verdict(code, len);
	return action;
}

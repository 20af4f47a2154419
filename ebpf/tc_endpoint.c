/* TC ingress of an endpoint's host-side veth, i.e. every frame the endpoint sends.
 *
 *   1. Anti-spoofing: the source MAC, the IPv4 source and the ARP sender must be the ones the
 *      control plane assigned to this veth (endpoints_by_ifindex).
 *   2. NAT (lib/nat.h), except for endpoints of internal networks: a packet of a translated flow
 *      (a reply from a published port, masqueraded egress, hairpin) is translated and sent on;
 *      a routed packet (to the gateway MAC) of a new flow is judged by the NAT rules, and so is a
 *      frame to another endpoint of the same bridge where some rule could translate it
 *      (NET_F_BRIDGED_NAT: Docker hosts run br_netfilter, so iptables sees bridged IPv4 too).
 *   3. Isolation: an IPv4 destination that is an endpoint of another network is dropped.
 *   4. Fast path: IPv4 unicast to an endpoint of the same network, addressed to its MAC, goes
 *      straight into that endpoint's namespace with bpf_redirect_peer (no bridge, no backlog).
 *   5. Everything else (ARP, broadcast, the gateway, the host, IPv4 fragments) continues to the
 *      bridge and the host stack.
 * One exit counts the verdict.
 */
#include "lib/common.h"
#include "lib/drop_reasons.h"
#include "lib/maps.h"
#include "lib/parsing.h"
#include "lib/nat.h"
#include "lib/endpoint.h"

/* Step 1. Returns VERDICT_PASS for an IPv4 packet that may go on to NAT and forwarding. */
static __always_inline __u32 endpoint_checks(struct __sk_buff *skb, struct endpoint_info *self)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct hdr_cursor c = { .pos = data };
	struct ethhdr *eth;
	struct iphdr *ip;

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
	return VERDICT_PASS;
}

/* Is the frame an IPv4 unicast to another endpoint of the sender's network, at its MAC (a frame
 * the bridge would forward, not route)? */
static __always_inline int to_peer(struct __sk_buff *skb, const struct endpoint_info *self)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct hdr_cursor c = { .pos = data };
	struct ip_endpoint *dst;
	struct ethhdr *eth = parse_eth(&c, end);
	struct iphdr *ip;

	if (!eth)
		return 0;
	ip = parse_ipv4(&c, end);
	if (!ip)
		return 0;
	dst = endpoints_by_ip.lookup(&ip->daddr);
	return dst && dst->net_id == self->net_id && mac_equal(eth->h_dest, dst->mac);
}

/* Is the frame addressed to the gateway (routed), as opposed to a peer on the same L2? */
static __always_inline int to_gateway(struct __sk_buff *skb, const struct net_info *ni)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return 0;
	return mac_equal(eth->h_dest, ni->gw_mac);
}

int tc_from_endpoint(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, code;
	struct endpoint_info *self = endpoints_by_ifindex.lookup(&ifindex);
	int action;

	if (!self)
		return endpoint_finish(skb, NULL, DROP_UNKNOWN_ENDPOINT);
	code = endpoint_checks(skb, self);
	if (code == VERDICT_PASS && !(self->flags & EP_F_INTERNAL)) {
		__u32 net = self->net_id;
		struct net_info *ni = net_info.lookup(&net);
		if (ni) {
			int new_flows = to_gateway(skb, ni) ? NAT_NEW_ROUTED :
					(ni->flags & NET_F_BRIDGED_NAT) && to_peer(skb, self) ? NAT_NEW_BRIDGED :
					NAT_NEW_NONE;
			action = nat_ingress(skb, ni->bridge_ifindex, new_flows, NAT_ORIGIN_ENDPOINT, net, &code);
			if (action != NAT_DECLINE) {
				count_endpoint(ifindex, code, skb->len);
				return action;
			}
			code = VERDICT_PASS;
		}
	}
	return endpoint_finish(skb, self, code);
}

/* TC egress of the endpoint's host-side veth: what the host stack sends into the endpoint.
 * Translations of tracked flows (the host's replies to a REDIRECT or a DNAT to a host address
 * that came from this endpoint), and POSTROUTING (-o the bridge) for a new flow the host starts
 * from another of its addresses than the network's gateway: a socket the OUTPUT DNAT of a host
 * address bound to that address, as iptables keeps it (Docker's "-o bridge --src-type LOCAL
 * -j MASQUERADE" then applies as it does there). Everything else passes untouched and
 * uncounted. Frames that bpf_redirect_peer delivers never pass here. */
int tc_to_endpoint(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, code = VERDICT_PASS;
	struct endpoint_info *self = endpoints_by_ifindex.lookup(&ifindex);
	struct net_info *ni = NULL;
	__u32 bridge = 0;
	__be32 gateway = 0;
	int action;

	if (self && !(self->flags & EP_F_INTERNAL)) {
		__u32 net = self->net_id;
		ni = net_info.lookup(&net);
	}
	if (ni) {
		bridge = ni->bridge_ifindex;
		gateway = ni->gateway;
	}
	action = nat_egress(skb, ni ? NAT_ORIGIN_LOCAL_OUT : 0, bridge, gateway, &code);

	if (action == NAT_DECLINE)
		return TC_ACT_OK;
	count_verdict(code, skb->len);
	return action;
}

/* TC egress of a macvlan endpoint's own interface, inside its netns: every frame it sends (the
 * macvlan driver switches frames between sub-interfaces of one parent without passing any
 * host-side hook, so this is the only place to judge them). Step 1 only, anti-spoofing against
 * guarded_endpoints, and the verdict counted by reason; no NAT (the frames leave by the parent,
 * not through the host stack) and no forwarding decision (the macvlan driver's). */
int tc_guard_endpoint(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, code;
	struct endpoint_info *self = guarded_endpoints.lookup(&ifindex);

	code = self ? endpoint_checks(skb, self) : DROP_UNKNOWN_ENDPOINT;
	if (code < DROP_BASE)
		code = VERDICT_PASS;
	count_verdict(code, skb->len);
	return code >= DROP_BASE ? TC_ACT_SHOT : TC_ACT_OK;
}

/* NAT at a TC or XDP hook (ctx.h): conntrack hits are translated and sent on; a new flow is
 * judged by the compiled PREROUTING rules, routed, judged by POSTROUTING, and gets both
 * conntrack halves (the stages: nat_stages.h). Uses maps (spliced into the entry file by the
 * loader).
 *
 * Hooks and what they see (control/datapath/ebpf.py attaches them):
 *   tc_from_endpoint   the endpoint's frames; -i is its network's bridge (as with iptables)
 *   tc_to_endpoint     what the host sends into an endpoint: translations of tracked flows only
 *   tc_uplink_ingress  frames from outside; -i is the uplink
 *   xdp_uplink         the same frames before TC, where native XDP runs: only what it can send
 *                      into an endpoint itself (nat_hook_takes), the rest passes untouched
 *   tc_uplink_egress   frames leaving by the uplink: translations of tracked flows whose reply
 *                      the host itself sends (REDIRECT, DNAT to a local address), POSTROUTING
 *                      for the host's own new flows
 *   tc_loopback        lo's egress: the host's flows to itself (POSTROUTING -o lo)
 * Translated packets that have a route are sent on by the program (bpf_redirect_peer into an
 * endpoint, bpf_redirect/bpf_redirect_neigh out of the uplink, XDP_REDIRECT at XDP), so
 * netfilter never sees half a flow; local destinations continue into the stack. */
#ifndef DOCKLINE_NAT_H
#define DOCKLINE_NAT_H

#include "common.h"
#include "drop_reasons.h"
#include "maps.h"
#include "nat_packet.h"
#include "nat_rules.h"
#include "ct.h"

/* bcc 0.26 declares a 3-argument bpf_redirect_neigh; the kernel's takes 4 */
static long (*dl_redirect_neigh)(__u32 ifindex, void *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

#define NAT_DECLINE (-1)   /* not a translated flow: the caller's own logic applies */

enum nat_route_kind {
	ROUTE_STACK = 0,    /* local, unreachable or unknown: the stack decides */
	ROUTE_ENDPOINT,     /* one of our endpoints: bpf_redirect_peer into its netns */
	ROUTE_FIB,          /* a forwarding route with a resolved neighbour */
	ROUTE_NEIGH,        /* a forwarding route, neighbour to resolve: bpf_redirect_neigh */
};

struct nat_route {
	__u32 kind;
	__u32 ifindex;      /* where to redirect */
	__u32 oif;          /* the out-interface POSTROUTING sees (an endpoint's bridge) */
	__u32 net_id;       /* ROUTE_ENDPOINT: the endpoint's network */
	__u8  dmac[6];
	__u8  smac[6];
	__u8  set_smac;
};

static __always_inline void nat_route(dl_ctx *ctx, __be32 saddr, __be32 daddr, struct nat_route *r)
{
	struct ip_endpoint *ep = endpoints_by_ip.lookup(&daddr);
	struct bpf_fib_lookup f = {};
	int rc;

	if (ep) {
		struct net_info *ni = net_info.lookup(&ep->net_id);
		r->kind = ROUTE_ENDPOINT;
		r->ifindex = ep->ifindex;
		r->net_id = ep->net_id;
		__builtin_memcpy(r->dmac, ep->mac, 6);
		if (ni) {
			r->oif = ni->bridge_ifindex;
			__builtin_memcpy(r->smac, ni->gw_mac, 6);
			r->set_smac = 1;
		}
		return;
	}
#ifdef DL_XDP
	return;         /* XDP sends only into endpoints (nat_hook_takes): no route lookup */
#endif
	f.family = 2;   /* AF_INET */
	f.ipv4_src = saddr;
	f.ipv4_dst = daddr;
	f.ifindex = ctx_ifindex(ctx);
	rc = bpf_fib_lookup(ctx, &f, sizeof(f), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		r->kind = ROUTE_FIB;
		r->ifindex = r->oif = f.ifindex;
		__builtin_memcpy(r->dmac, f.dmac, 6);
		__builtin_memcpy(r->smac, f.smac, 6);
		r->set_smac = 1;
	} else if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		r->kind = ROUTE_NEIGH;
		r->ifindex = r->oif = f.ifindex;
	}
}

/* May this hook translate a packet whose route is r? TC takes every route. XDP takes only
 * packets it sends into an endpoint itself (XDP_REDIRECT into the host-side veth lands in the
 * container end's NAPI ring, which the control plane enables with GRO); anything else is left
 * untouched to the TC program behind it, which translates it. A packet is never translated
 * twice: TC would not find the translated tuple in conntrack and would judge it as new. */
static __always_inline int nat_hook_takes(const struct nat_route *r)
{
#ifdef DL_XDP
	return r->kind == ROUTE_ENDPOINT;
#else
	return 1;
#endif
}

/* Send a translated packet on its route; sets *code. */
static __always_inline int nat_forward(dl_ctx *ctx, const struct nat_route *r, __u32 *code)
{
	if (r->kind == ROUTE_STACK) {
		*code = VERDICT_NAT_PASS;
		return CTX_ACT_OK;
	}
	if (ttl_decrement(ctx) < 0) {
		*code = DROP_MALFORMED;
		return CTX_ACT_SHOT;
	}
#ifdef DL_XDP
	*code = VERDICT_XDP_NAT_REDIRECT;
#else
	*code = VERDICT_NAT_REDIRECT;
	if (r->kind == ROUTE_NEIGH)
		return dl_redirect_neigh(r->ifindex, 0, 0, 0);
#endif
	if (ctx_store(ctx, 0, (void *)r->dmac, 6) < 0 ||
	    (r->set_smac && ctx_store(ctx, 6, (void *)r->smac, 6) < 0)) {
		*code = DROP_MALFORMED;
		return CTX_ACT_SHOT;
	}
#ifndef DL_XDP
	if (r->kind == ROUTE_ENDPOINT)
		return bpf_redirect_peer(r->ifindex, 0);
#endif
	return bpf_redirect(r->ifindex, 0);
}

/* Fragments: the first one records its datagram's ports, later ones borrow them. Returns -1
 * for a later fragment whose first one was not seen. */
static __always_inline int nat_frag_ports(struct nat_pkt *p)
{
	struct frag_key fk = {};
	struct frag_ports *fp;

	fk.saddr = p->key.saddr;
	fk.daddr = p->key.daddr;
	fk.id = p->frag_id;
	fk.proto = p->key.proto;
	if (p->has_l4) {
		struct frag_ports v = { .sport = p->key.sport, .dport = p->key.dport };
		frag_ports.update(&fk, &v);
		return 0;
	}
	fp = frag_ports.lookup(&fk);
	if (!fp) {
		nat_count(NAT_C_FRAG_UNKNOWN);
		return -1;
	}
	p->key.sport = fp->sport;
	p->key.dport = fp->dport;
	return 0;
}

/* An ICMP error quoting a packet of a translated flow: the quote is translated back to what its
 * sender sent, the outer addresses follow (RFC 5508). */
static __always_inline int nat_icmp_error(dl_ctx *ctx, const struct nat_pkt *p, int forward,
					  __u32 *code)
{
	struct ct_key k = {};
	struct ct_entry *e;
	struct nat_route r = {};
	__be32 qs, qd, os, od;
	__be16 qsp, qdp;

	/* the quoted packet went the other way: its reverse is a tuple of this direction */
	ct_key_reverse(&k, p->inner.saddr, p->inner.daddr, p->inner.sport, p->inner.dport, p->inner.proto);
	e = ct.lookup(&k);
	if (!e || !e->kind)
		return NAT_DECLINE;     /* (a flow tracked untranslated: nothing to undo) */
	qs = e->to_daddr;
	qd = e->to_saddr;
	qsp = e->to_dport;
	qdp = e->to_sport;
	os = p->key.saddr;
	od = p->key.daddr;
	if (od == p->inner.saddr)
		od = qs;          /* to the quoted packet's sender */
	if (os == p->inner.daddr)
		os = qd;          /* from the quoted packet's receiver itself */
	if (forward) {
		nat_route(ctx, os, od, &r);
		if (r.kind != ROUTE_STACK && p->ttl <= 1)
			return NAT_DECLINE;
	}
	if (nat_rewrite_icmp_error(ctx, p, qs, qd, qsp, qdp, os, od) < 0) {
		*code = DROP_MALFORMED;
		return CTX_ACT_SHOT;
	}
	nat_count(NAT_C_ICMP_ERROR);
	if (!forward) {
		*code = VERDICT_NAT_PASS;
		return CTX_ACT_OK;
	}
	return nat_forward(ctx, &r, code);
}

#define NAT_PARSED (-2)    /* nat_parse_tracked: a TCP/UDP/ICMP-echo tuple is in *p */

/* The start every NAT hook shares: parse; an ICMP error about a tracked flow is translated here
 * (sent on if ``forward``); a later fragment borrows its datagram's ports. Returns NAT_PARSED,
 * NAT_DECLINE, or the action taken for an ICMP error. */
static __always_inline int nat_parse_tracked(dl_ctx *ctx, struct nat_pkt *p, int forward, __u32 *code)
{
	enum nat_parse_result pr = nat_parse(ctx, p);

#ifdef DL_XDP
	/* XDP takes the common case only: ICMP errors and fragments go on to TC untouched */
	if (pr != NP_OK || !p->has_l4 || p->first_frag)
		return NAT_DECLINE;
#endif
	if (pr == NP_ICMP_ERROR)
		return nat_icmp_error(ctx, p, forward, code);
	if (pr != NP_OK)
		return NAT_DECLINE;
	if ((!p->has_l4 || p->first_frag) && nat_frag_ports(p) < 0)
		return NAT_DECLINE;
	return NAT_PARSED;
}

/* ---- new flows: judged in two tail-called stages (ebpf/tc_nat.c), one rule evaluation each,
 * because one program holding both evaluations is beyond what the verifier can explore. The
 * stages pass their state in nat_scratch (per CPU; a tail-call chain never changes CPU). */

#define NAT_ORIGIN_ENDPOINT  1   /* an endpoint's packet (tc_from_endpoint) */
#define NAT_ORIGIN_UPLINK    2   /* from outside (tc_uplink_ingress) */
#define NAT_ORIGIN_LOOPBACK  4   /* the host's own packet to itself (tc_loopback on lo): POSTROUTING
                                  * only, as NAT_ORIGIN_LOCAL_OUT */
#define NAT_ORIGIN_LOCAL_OUT 3   /* the host's own packet leaving by the uplink (tc_uplink_egress):
                                  * POSTROUTING only, never redirected */

#define NAT_TAIL_EVAL   0   /* evaluate s->hook for s->m into s->d, then tail-call s->next */
#define NAT_TAIL_ROUTE  1   /* apply PREROUTING's decision, route, set up POSTROUTING */
#define NAT_TAIL_COMMIT 2   /* apply POSTROUTING's decision, create the flow, rewrite, send */
#define NAT_TAIL_CLASSIFY 3 /* search classifier s->d (NAT_OP_CLASSIFY), set s->pc, back to EVAL */

struct nat_scratch {
	struct nat_pkt p;
	struct nat_route r;
	struct nat_match_pkt m;   /* what the rules of s->hook see */
	struct nat_decision d;    /* what they decided */
	__u32 pc;                 /* where tc_nat_eval starts (a hook entry, after a LOOKUP, or the
	                           * rule a classifier found) */
	__u32 resume;             /* NAT_TAIL_CLASSIFY: where to go on if the classifier finds nothing */
	__u32 lookups;            /* NAT_OP_LOOKUP tables consulted so far in this evaluation */
	__u32 hook;
	__u32 next;               /* the stage after the evaluation */
	__u32 iif;                /* logical in-interface */
	__u32 origin;             /* NAT_ORIGIN_*: what to do when nothing translates */
	__u32 net_id;             /* NAT_ORIGIN_ENDPOINT: the sender's network */
	__u32 hairpin;            /* an endpoint reaching its own address through a DNAT */
	__u32 bridged;            /* a frame between two endpoints of one bridge (NAT_NEW_BRIDGED) */
	__be32 ts, td;       /* the translated tuple so far */
	__be16 tsp, tdp;
	__u8 kind;
	__u8 state;
	__u8 flags;
	__u8 pad;
};

BPF_TABLE_PINNED("percpu_array", __u32, struct nat_scratch, nat_scratch, 1, PIN_DIR "/nat_scratch");
/* the stages' program arrays: a program array holds programs of one type, so XDP has its own */
#ifdef DL_XDP
BPF_TABLE_PINNED("prog", __u32, __u32, nat_tail_xdp, 4, PIN_DIR "/nat_tail_xdp");
#else
BPF_TABLE_PINNED("prog", __u32, __u32, nat_tail, 4, PIN_DIR "/nat_tail");
#endif

/* Continue in stage ``slot`` (NAT_TAIL_*); returns only if that stage is missing. */
static __always_inline void nat_tail_call(dl_ctx *ctx, __u32 slot)
{
#ifdef DL_XDP
	nat_tail_xdp.call(ctx, slot);
#else
	nat_tail.call(ctx, slot);
#endif
}

static __always_inline struct nat_scratch *scratch(void)
{
	__u32 zero = 0;
	return nat_scratch.lookup(&zero);
}

#define NAT_NEW_NONE     0   /* nat_ingress: a miss is not a new flow */
#define NAT_NEW_ROUTED   1   /* a miss starts a new flow (a routed packet) */
#define NAT_NEW_BRIDGED  2   /* the same for a frame to another endpoint of the sender's bridge
                              * (bridge-netfilter semantics, NET_F_BRIDGED_NAT): a flow nothing
                              * translates is tracked untranslated, so that its later packets do
                              * not go through the rules again */

/* Translate a packet of a tracked flow (or an ICMP error about one). A miss that may start a
 * new flow (allow_new, NAT_NEW_*; packets with an L4 header only) continues in the tail-called
 * stages and does not return; otherwise NAT_DECLINE. iif: the logical in-interface (-i). */
static __always_inline int nat_ingress(dl_ctx *ctx, __u32 iif, int allow_new, __u32 origin,
				       __u32 net_id, __u32 *code)
{
	struct nat_pkt p = {};
	struct nat_route r = {};
	struct nat_scratch *s;
	struct ct_entry *e;
	__be32 ts, td;
	__be16 tsp, tdp;
	int rc;

	rc = nat_parse_tracked(ctx, &p, 1, code);
	if (rc != NAT_PARSED)
		return rc;
	e = ct.lookup(&p.key);
	if (e && p.key.proto == IPPROTO_TCP && p.has_l4 && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
	    e->dir == CT_DIR_ORIG && e->state >= CT_ST_FIN) {
		ct_delete_pair(&p.key, e);       /* a new connection on a closed flow's tuple */
		nat_count(NAT_C_CT_RESTART);
		e = NULL;
	}
	if (e && !e->kind) {
		ct_refresh(&p.key, e, &p);      /* a tracked, untranslated flow (the host's own) */
		return NAT_DECLINE;
	}
	if (e) {
		ts = e->to_saddr;
		td = e->to_daddr;
		tsp = e->to_sport;
		tdp = e->to_dport;
		nat_route(ctx, ts, td, &r);
		if (!nat_hook_takes(&r))
			return NAT_DECLINE;
		ct_refresh(&p.key, e, &p);
		if (r.kind != ROUTE_STACK && p.ttl <= 1) {
			nat_count(NAT_C_TTL_EXCEEDED);
			return NAT_DECLINE;
		}
		if (nat_rewrite(ctx, &p, ts, td, tsp, tdp) < 0) {
			*code = DROP_MALFORMED;
			return CTX_ACT_SHOT;
		}
		nat_count(p.has_l4 ? NAT_C_CT_HIT : NAT_C_FRAG_XLATE);
		return nat_forward(ctx, &r, code);
	}
	if (!allow_new || !p.has_l4)
		return NAT_DECLINE;
	s = scratch();
	if (!s)
		return NAT_DECLINE;
	s->p = p;
	s->iif = iif;
	s->origin = origin;
	s->net_id = net_id;
	s->hairpin = 0;
	s->bridged = allow_new == NAT_NEW_BRIDGED;
	__builtin_memset(&s->m, 0, sizeof(s->m));
	if (p.key.proto == IPPROTO_TCP || p.key.proto == IPPROTO_UDP) {
		s->m.sport = bpf_ntohs(p.key.sport);
		s->m.dport = bpf_ntohs(p.key.dport);
	}
	s->m.saddr = p.key.saddr;
	s->m.daddr = p.key.daddr;
	s->m.iif = iif;
	s->m.proto = p.key.proto;
	s->m.l4 = p.key.proto == IPPROTO_TCP || p.key.proto == IPPROTO_UDP;
	s->m.src_local = is_local_addr(p.key.saddr);
	s->m.dst_local = is_local_addr(p.key.daddr);
	s->hook = NAT_HOOK_PREROUTING;
	s->pc = nat_hook_entry(NAT_HOOK_PREROUTING);
	s->lookups = 0;
	s->next = NAT_TAIL_ROUTE;
	nat_tail_call(ctx, NAT_TAIL_EVAL);
	return NAT_DECLINE;     /* the stage is missing: behave as if nothing translates */
}

#ifndef DL_XDP
/* Leaving by an interface: tracked flows are translated (replies the host sends for a REDIRECT
 * or a DNAT to a local address). With local_out (NAT_ORIGIN_LOCAL_OUT on the uplink and on an
 * endpoint's veth, NAT_ORIGIN_LOOPBACK on lo; 0: translations only), a packet the host itself
 * sends that belongs to no flow starts one: POSTROUTING judges it in the tail-called stages
 * (SNAT, MASQUERADE), and an untranslated one is tracked so that its replies are never judged
 * (as new connections to a published port, or by POSTROUTING as if they started a flow).
 * logical_oif is what -o names (an endpoint's bridge; 0: this interface) and whose address
 * MASQUERADE takes; a new flow from natural_src (the address the kernel picks for this
 * interface: an endpoint's gateway) is left alone: for it no rule can change what the
 * receiver sees except an SNAT to another address, which dockline does not judge there. */
static __always_inline int nat_egress(dl_ctx *ctx, __u32 local_out, __u32 logical_oif, __be32 natural_src,
				      __u32 *code)
{
	__u32 ifindex = ctx->ifindex, from = ctx->ingress_ifindex;   /* read once: clang may
	                                                              * otherwise keep a modified ctx
	                                                              * pointer, which the verifier refuses */
	struct nat_pkt p = {};
	struct nat_scratch *s;
	struct ct_entry *e;
	__be32 ts, td;
	__be16 tsp, tdp;
	int rc = nat_parse_tracked(ctx, &p, 0, code);

	if (rc != NAT_PARSED)
		return rc;
	e = ct.lookup(&p.key);
	if (!e) {
		/* ingress_ifindex 0: made by this host, not forwarded (our redirects keep theirs) */
		__be32 want = 0;

		if (!local_out || from || !p.has_l4 || !is_local_addr(p.key.saddr))
			return NAT_DECLINE;
		{
			/* a socket the socket layer translated but could not give its source */
			__u64 cookie = bpf_get_socket_cookie(ctx);
			struct sock_xlate *x = sock_xlate.lookup(&cookie);
			if (x && x->want_saddr && x->want_saddr != p.key.saddr &&
			    x->nat_addr == p.key.daddr && x->nat_port == p.key.dport)
				want = x->want_saddr;
		}
		if (!want && p.key.saddr == natural_src)
			return NAT_DECLINE;
		s = scratch();
		if (!s)
			return NAT_DECLINE;
		s->p = p;
		s->iif = 0;
		s->origin = local_out;
		s->net_id = 0;
		s->hairpin = 0;
		s->bridged = 0;
		s->ts = p.key.saddr;
		s->td = p.key.daddr;
		s->tsp = p.key.sport;
		s->tdp = p.key.dport;
		s->kind = 0;
		s->state = CT_ST_NEW;
		s->flags = 0;
		if (p.key.proto == IPPROTO_TCP && !(p.tcp_flags & TCP_SYN)) {
			s->state = CT_ST_ESTABLISHED;
			s->flags = CT_F_LOOSE;
		}
		__builtin_memset(&s->r, 0, sizeof(s->r));
		s->r.kind = ROUTE_STACK;
		s->r.oif = logical_oif ? logical_oif : ifindex;
		__builtin_memset(&s->m, 0, sizeof(s->m));
		s->m.l4 = p.key.proto == IPPROTO_TCP || p.key.proto == IPPROTO_UDP;
		if (s->m.l4) {
			s->m.sport = bpf_ntohs(p.key.sport);
			s->m.dport = bpf_ntohs(p.key.dport);
		}
		if (want) {
			s->ts = want;
			s->kind = CT_K_SNAT;
		}
		s->m.saddr = s->ts;          /* POSTROUTING sees the source iptables would have */
		s->m.daddr = p.key.daddr;
		s->m.oif = s->r.oif;
		s->m.proto = p.key.proto;
		s->m.src_local = 1;
		s->m.dst_local = is_local_addr(p.key.daddr);
		s->hook = NAT_HOOK_POSTROUTING;
		s->pc = nat_hook_entry(NAT_HOOK_POSTROUTING);
		s->lookups = 0;
		s->next = NAT_TAIL_COMMIT;
		nat_tail_call(ctx, NAT_TAIL_EVAL);
		return NAT_DECLINE;
	}
	if (!e->kind) {
		ct_refresh(&p.key, e, &p);
		return NAT_DECLINE;
	}
	ts = e->to_saddr;
	td = e->to_daddr;
	tsp = e->to_sport;
	tdp = e->to_dport;
	ct_refresh(&p.key, e, &p);
	if (nat_rewrite(ctx, &p, ts, td, tsp, tdp) < 0) {
		*code = DROP_MALFORMED;
		return CTX_ACT_SHOT;
	}
	nat_count(NAT_C_CT_HIT);
	*code = VERDICT_NAT_PASS;
	return CTX_ACT_OK;
}

#endif /* !DL_XDP */

#endif

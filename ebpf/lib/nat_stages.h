/* The stages of a new flow's NAT, for TC (tc_nat.c) and XDP (xdp_nat.c): one text, the
 * context (ctx.h) decides which. Tail-called (nat_tail / nat_tail_xdp) from the entry programs
 * after a conntrack miss (nat.h: nat_ingress, nat_egress):
 *
 *   entry -> eval (PREROUTING) -> route -> eval (POSTROUTING) -> commit
 *
 *   nat_stage_eval    runs the compiled rules of one hook; nothing else, because the verifier
 *                     must follow every exit of the rule loop through whatever comes after it
 *   nat_stage_route   applies DNAT/REDIRECT, routes the translated destination, prepares
 *                     POSTROUTING (skipped for local destinations)
 *   nat_stage_commit  applies SNAT/MASQUERADE, creates both conntrack halves (source-port
 *                     allocation), rewrites and sends. If nothing translates, the packet gets
 *                     the verdict its entry program would have given it.
 * They pass the flow's state in nat_scratch. At XDP (only the uplink's ingress) a flow whose
 * translated destination is not an endpoint is declined before anything is written: XDP_PASS,
 * and the uplink's TC program judges the untouched packet again.
 */
#ifndef DOCKLINE_NAT_STAGES_H
#define DOCKLINE_NAT_STAGES_H

#include "nat.h"
#include "endpoint.h"

#ifndef DL_XDP
/* endpoint_finish for a new flow nothing translates: tracked untranslated (both halves) if it
 * passes, so that its later packets and its replies find it and are never judged by the rules
 * again (iptables tracks every flow: a reply is never a new connection to a published port,
 * nor matched by a POSTROUTING MASQUERADE). A dropped flow is not tracked: a flood of refused
 * packets must not fill the table. */
static __always_inline int endpoint_finish_tracked(struct __sk_buff *skb, struct endpoint_info *self,
						   const struct nat_scratch *s, int track)
{
	__u32 target = 0, code = endpoint_decide(skb, self, VERDICT_PASS, &target);

	if (track && code < DROP_BASE)
		ct_track_identity(&s->p.key, s->state, s->flags);
	return endpoint_act(skb, code, target);
}
#endif

/* Nothing translates: the entry program's own verdict. At TC every flow is tracked
 * (untranslated) from its first packet on; XDP tracks nothing: the TC program behind it sees
 * the same first packet and does. */
static __always_inline int decline(dl_ctx *ctx, struct nat_scratch *s, int track)
{
#ifdef DL_XDP
	count_verdict(VERDICT_XDP_PASS, ctx_len(ctx));
	return CTX_ACT_OK;
#else
	if (s->origin == NAT_ORIGIN_ENDPOINT) {
		__u32 ifindex = ctx_ifindex(ctx);
		return endpoint_finish_tracked(ctx, endpoints_by_ifindex.lookup(&ifindex), s, track);
	}
	if (track)
		ct_track_identity(&s->p.key, s->state, s->flags);
	count_verdict(s->origin == NAT_ORIGIN_LOOPBACK ? VERDICT_LOOPBACK_PASS : VERDICT_UPLINK_PASS, ctx_len(ctx));
	return CTX_ACT_OK;
#endif
}

static __always_inline int declined(dl_ctx *ctx, struct nat_scratch *s)
{
	return decline(ctx, s, 1);
}

/* A flow the rules would translate, whose first packet cannot be (TTL 1: the stack answers
 * with time exceeded): nothing is recorded, so that the next packet is judged again. */
static __always_inline int declined_untracked(dl_ctx *ctx, struct nat_scratch *s)
{
	return decline(ctx, s, 0);
}

static __always_inline int finish(dl_ctx *ctx, struct nat_scratch *s, __u32 code, int action)
{
	if (s->origin == NAT_ORIGIN_ENDPOINT)
		count_endpoint(ctx_ifindex(ctx), code, ctx_len(ctx));
	else
		count_verdict(code, ctx_len(ctx));
	return action;
}

/* The address REDIRECT (arriving by ifindex) or MASQUERADE (leaving by it) uses: 0 if the
 * interface has none, which the caller answers with DROP_NAT_NO_ADDR. */
static __always_inline __be32 ifaddr_of(__u32 ifindex)
{
	__be32 *a = nat_ifaddr.lookup(&ifindex);

	return a ? *a : 0;
}

static __always_inline int nat_stage_eval(dl_ctx *ctx)
{
	struct nat_scratch *s = scratch();
	struct nat_match_pkt m;
	struct nat_decision d = {};
	__u32 resume = 0;

	if (!s)
		return CTX_ACT_OK;
	m = s->m;
	nat_evaluate_from(s->pc, &m, &d, &resume, MAX_NAT_STEPS);
	s->d = d;
	if (d.op == NAT_OP_CLASSIFY) {
		if (s->lookups >= NAT_MAX_LOOKUPS) {
			s->d.op = NAT_OP_ACCEPT;
		} else {
			/* the search runs in its own program (the verifier follows the rule loop
			 * and the search separately) */
			s->resume = resume;
			s->lookups += 1;
			nat_tail_call(ctx, NAT_TAIL_CLASSIFY);
			return CTX_ACT_OK;
		}
	} else if (d.op == NAT_OP_LOOKUP) {
		if (nat_exact_match(d.table, &m, &s->d) || s->lookups >= NAT_MAX_LOOKUPS) {
			if (s->d.op == NAT_OP_LOOKUP)
				s->d.op = NAT_OP_ACCEPT;
		} else {
			/* not in the table: evaluate on from the next instruction, in a fresh run of
			 * this program (a tail call to itself) */
			s->pc = resume;
			s->lookups += 1;
			nat_tail_call(ctx, NAT_TAIL_EVAL);
			return CTX_ACT_OK;
		}
	}
	nat_tail_call(ctx, s->next);
	/* only if the next stage is missing (never once the agent has set up nat_tail). Nothing
	 * heavier here: the verifier follows every exit of the rule loop through this code. */
	return CTX_ACT_OK;
}

/* NAT_TAIL_CLASSIFY: the tuple-space search of the classifier in s->d, then evaluation goes on
 * at the rule found (which then matches) or after the classifier's rules. */
static __always_inline int nat_stage_classify(dl_ctx *ctx)
{
	struct nat_scratch *s = scratch();
	struct nat_match_pkt m;
	__u32 pc;

	if (!s)
		return CTX_ACT_OK;
	m = s->m;
	pc = nat_classify(s->d.table, &m, NAT_CLS_SHAPES);
	s->pc = pc != NAT_NO_PC ? pc : s->resume;
	nat_tail_call(ctx, NAT_TAIL_EVAL);
	return CTX_ACT_OK;
}

static __always_inline int nat_stage_route(dl_ctx *ctx)
{
	struct nat_scratch *s = scratch();
	struct nat_pkt *p;
	int l4;

	if (!s)
		return CTX_ACT_OK;
	p = &s->p;
	l4 = p->key.proto == IPPROTO_TCP || p->key.proto == IPPROTO_UDP;
	s->ts = p->key.saddr;
	s->td = p->key.daddr;
	s->tsp = p->key.sport;
	s->tdp = p->key.dport;
	s->kind = 0;
	s->state = CT_ST_NEW;
	s->flags = 0;
	if (s->d.op == NAT_OP_DNAT || s->d.op == NAT_OP_REDIRECT) {
		if (s->d.op == NAT_OP_REDIRECT) {
			s->td = ifaddr_of(s->iif);
			if (!s->td)
				return finish(ctx, s, DROP_NAT_NO_ADDR, CTX_ACT_SHOT);
			s->kind |= CT_K_LOCAL;
		} else if (s->d.to_flags & NAT_TO_ADDR) {
			s->td = nat_pick_addr(p->key.saddr, p->key.daddr, s->d.to_addr, s->d.to_addr_max);
		}
		if (l4 && s->d.to_port_min)
			s->tdp = bpf_htons(nat_pick_dport(bpf_ntohs(p->key.dport), s->d.to_port_min,
							  s->d.to_port_max, s->d.to_port_base, s->d.to_flags));
		s->kind |= CT_K_DNAT;
	}
	/* a mid-stream TCP packet (no SYN) is picked up only if no socket of the host owns it */
	if (p->key.proto == IPPROTO_TCP && !(p->tcp_flags & TCP_SYN)) {
		if (s->kind && host_socket_owns(ctx, IPPROTO_TCP, p->key.saddr, p->key.daddr, p->key.sport,
						p->key.dport))
			return declined(ctx, s);
		s->state = CT_ST_ESTABLISHED;
		s->flags = CT_F_LOOSE;
	}
	__builtin_memset(&s->r, 0, sizeof(s->r));
	nat_route(ctx, s->ts, s->td, &s->r);
	if (!nat_hook_takes(&s->r))
		return declined(ctx, s);
	s->d.op = NAT_OP_ACCEPT;
	if (s->origin == NAT_ORIGIN_ENDPOINT && s->r.kind == ROUTE_ENDPOINT) {
		/* isolation: only a DNATed flow (a published port) may reach another network */
		if (!(s->kind & CT_K_DNAT) && s->r.net_id != s->net_id)
			return declined(ctx, s);
		/* a container reaching itself, through any DNAT, at the target of one of the control
		 * plane's published ports: its source becomes its gateway, so that the reply comes
		 * back through us. This is Docker's per-port rule "-s C -d C -p P --dport CPORT -j
		 * MASQUERADE" (first in POSTROUTING, so it wins over the user's rules), as one lookup
		 * instead of a rule per port. Any other DNAT to the sender itself is left to the
		 * POSTROUTING rules, as with iptables. */
		if ((s->kind & CT_K_DNAT) && s->td == s->ts &&
		    nat_hairpin_target(s->td, s->tdp, p->key.proto))
			s->hairpin = 1;
	}
	if (!(s->kind & CT_K_LOCAL) && s->r.oif) {
		s->m.saddr = s->ts;
		s->m.daddr = s->td;
		s->m.sport = l4 ? bpf_ntohs(s->tsp) : 0;
		s->m.dport = l4 ? bpf_ntohs(s->tdp) : 0;
		s->m.iif = 0;
		s->m.oif = s->r.oif;
		s->m.src_local = is_local_addr(s->ts);
		s->m.dst_local = is_local_addr(s->td);
		s->hook = NAT_HOOK_POSTROUTING;
		s->pc = nat_hook_entry(NAT_HOOK_POSTROUTING);
		s->lookups = 0;
		s->next = NAT_TAIL_COMMIT;
		nat_tail_call(ctx, NAT_TAIL_EVAL);
		return declined(ctx, s);
	}
	nat_tail_call(ctx, NAT_TAIL_COMMIT);
	return declined(ctx, s);
}

/* SNAT's source address: the original one when the tuple is in the target's range already
 * (the kernel's first choice, get_unique_tuple step 1), else the range's hashed pick; a target
 * of ports only keeps the address. */
static __always_inline __be32 snat_source(const struct nat_scratch *s, const struct nat_pkt *p, int l4)
{
	__u32 a = bpf_ntohl(p->key.saddr);
	__u16 sp = bpf_ntohs(p->key.sport);

	if (!(s->d.to_flags & NAT_TO_ADDR))
		return p->key.saddr;
	if (a >= bpf_ntohl(s->d.to_addr) && a <= bpf_ntohl(s->d.to_addr_max) &&
	    (!l4 || !s->d.to_port_min || (sp >= s->d.to_port_min && sp <= s->d.to_port_max)))
		return p->key.saddr;
	return nat_pick_addr(p->key.saddr, s->td, s->d.to_addr, s->d.to_addr_max);
}

static __always_inline int nat_stage_commit(dl_ctx *ctx)
{
	struct nat_scratch *s = scratch();
	struct nat_config *cfg;
	struct nat_route r;
	struct nat_pkt p;
	__u32 zero = 0, code = 0;
	__u16 pmin, pmax;
	__be16 used = 0;
	int l4, snat, check_host = 0, action;

	if (!s)
		return CTX_ACT_OK;
	p = s->p;
	r = s->r;
	l4 = p.key.proto == IPPROTO_TCP || p.key.proto == IPPROTO_UDP;
	/* the hairpin MASQUERADE comes first: Docker's per-port rule leads POSTROUTING */
	snat = !s->hairpin && (s->d.op == NAT_OP_SNAT || s->d.op == NAT_OP_MASQUERADE);
	if (s->hairpin) {
		s->ts = ifaddr_of(s->iif);               /* the sender's gateway */
		if (!s->ts)
			return finish(ctx, s, DROP_NAT_NO_ADDR, CTX_ACT_SHOT);
		s->kind |= CT_K_SNAT;
	} else if (snat) {
		s->ts = s->d.op == NAT_OP_MASQUERADE ? ifaddr_of(r.oif) : snat_source(s, &p, l4);
		if (!s->ts)
			return finish(ctx, s, DROP_NAT_NO_ADDR, CTX_ACT_SHOT);
		s->kind |= CT_K_SNAT;
		/* the host's own socket holds its original tuple, or its port on every address (bound
		 * to 0.0.0.0:port): that one is not a collision */
		check_host = is_local_addr(s->ts) &&
			     !((s->origin == NAT_ORIGIN_LOCAL_OUT || s->origin == NAT_ORIGIN_LOOPBACK) &&
			       (s->ts == p.key.saddr || s->tsp == p.key.sport));
	}
	if (!s->kind)
		return declined(ctx, s);
	if (r.kind != ROUTE_STACK && p.ttl <= 1) {
		nat_count(NAT_C_TTL_EXCEEDED);
		return declined_untracked(ctx, s);
	}
	cfg = nat_config.lookup(&zero);
	pmin = cfg ? cfg->port_min : 32768;
	pmax = cfg ? cfg->port_max : 65535;
	/* only a SNAT/MASQUERADE decision's ports (the hairpin MASQUERADE has none) */
	if (snat && l4 && s->d.to_port_min) {
		pmin = s->d.to_port_min;
		pmax = s->d.to_port_max;
		s->tsp = bpf_htons(nat_pick_sport(bpf_ntohs(s->tsp), pmin, pmax, s->d.to_port_base,
						  s->d.to_flags));
	}
	if (pmax < pmin)
		pmax = pmin;
	if (ct_create(ctx, &p.key, s->ts, s->td, s->tsp, s->tdp, s->kind, s->state, s->flags, pmin, pmax,
		      check_host, &used) < 0)
		return finish(ctx, s, DROP_NAT_NO_PORT, CTX_ACT_SHOT);
	if (nat_rewrite(ctx, &p, s->ts, s->td, used, s->tdp) < 0)
		return finish(ctx, s, DROP_MALFORMED, CTX_ACT_SHOT);
	action = nat_forward(ctx, &r, &code);
	return finish(ctx, s, code, action);
}

#endif

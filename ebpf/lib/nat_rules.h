/* Evaluating the compiled NAT rules (control/nat/compiler.py writes nat_rules, nat_exact and
 * nat_config). Uses maps: the loader splices this file into the entry file's text, because bcc
 * rewrites map calls only in the main file.
 *
 * Contract with the compiler: a hook's program starts at nat_config.entry[hook]; every goto is
 * forward; every path ends in a terminal instruction within MAX_NAT_STEPS visits. */
#ifndef DOCKLINE_NAT_RULES_H
#define DOCKLINE_NAT_RULES_H

#include "common.h"
#include "structs.h"
#include "maps.h"
#include "nat_select.h"

#define NAT_HOOK_PREROUTING  0
#define NAT_HOOK_INPUT       1
#define NAT_HOOK_OUTPUT      2
#define NAT_HOOK_POSTROUTING 3

/* What a rule sees of a packet. Ports are host order here (ranges compare numerically). */
struct nat_match_pkt {
	__be32 saddr;
	__be32 daddr;
	__u16  sport;
	__u16  dport;
	__u32  iif;          /* logical in-interface (the bridge for endpoints), 0 = none */
	__u32  oif;          /* out-interface, 0 = none (PREROUTING, OUTPUT) */
	__u8   proto;
	__u8   src_local;    /* addrtype LOCAL, from local_addrs */
	__u8   dst_local;
	__u8   l4;           /* proto is TCP or UDP */
};

struct nat_decision {
	__u8   op;           /* NAT_OP_ACCEPT (no translation), DNAT, SNAT, MASQUERADE, REDIRECT */
	__be32 to_addr;      /* with NAT_TO_ADDR: the first address of the target's range */
	__be32 to_addr_max;  /* ... and its last */
	__u16  to_port_min;  /* host order, 0 = keep */
	__u16  to_port_max;
	__u16  to_port_base; /* with NAT_TO_SHIFT */
	__u16  to_flags;     /* NAT_TO_* */
	__u32  table;        /* NAT_OP_LOOKUP: the exact table; NAT_OP_CLASSIFY: the first shape slot */
	__u32  shapes;       /* NAT_OP_CLASSIFY: how many shapes */
};

static __always_inline __u8 is_local_addr(__be32 addr)
{
	struct subnet_key k = { .prefixlen = 32, .addr = addr };
	return local_addrs.lookup(&k) ? 1 : 0;
}

/* Branch-free condition arithmetic. Every condition of a rule becomes a 0/1 "miss" computed with
 * ALU operations only, and the rule takes one branch on their OR. Branches per condition would
 * make the verifier follow 2^conditions paths through every rule a packet may visit. OPAQUE
 * stops clang from turning the arithmetic back into compares and branches. */
#define OPAQUE(x) asm volatile("" : "+r"(x))

static __always_inline __u64 nonzero(__u64 x)          /* x != 0, for x < 2^63 */
{
	__u64 t = x | (0 - x);
	OPAQUE(t);
	return t >> 63;
}

static __always_inline __u64 below(__u64 a, __u64 b)    /* a < b, for a, b < 2^32 */
{
	__u64 t = a - b;
	OPAQUE(t);
	return t >> 63;
}

#define NEG(bitmask) ((__u64)nonzero(neg & (bitmask)))

/* 1 if the instruction's conditions hold. */
static __always_inline int rule_matches(const struct nat_rule *r, const struct nat_match_pkt *p)
{
	__u64 neg = r->neg, miss = 0, l4 = p->l4, req;
	__u64 sport = p->sport, dport = p->dport;

	miss |= nonzero((p->saddr & r->src_mask) ^ r->src) ^ NEG(NAT_NEG_SRC);
	miss |= nonzero((p->daddr & r->dst_mask) ^ r->dst) ^ NEG(NAT_NEG_DST);
	miss |= (nonzero(r->proto) & nonzero(r->proto ^ p->proto)) ^ NEG(NAT_NEG_PROTO);
	miss |= (nonzero(r->iif) & nonzero(r->iif ^ p->iif)) ^ NEG(NAT_NEG_IIF);
	miss |= (nonzero(r->oif) & nonzero(r->oif ^ p->oif)) ^ NEG(NAT_NEG_OIF);
	/* port conditions belong to -m tcp/udp/multiport: other protocols never match them, even
	 * negated */
	req = NEG(NAT_PORTS_REQUIRED);
	miss |= req & (l4 ^ 1);
	miss |= req & ((below(sport, r->sport_min) | below(r->sport_max, sport)) ^ NEG(NAT_NEG_SPORT));
	miss |= req & ((below(dport, r->dport_min) | below(r->dport_max, dport)) ^ NEG(NAT_NEG_DPORT));
	miss |= NEG(NAT_SRC_LOCAL) & (p->src_local ^ 1 ^ NEG(NAT_NEG_SRC_LOCAL));
	miss |= NEG(NAT_DST_LOCAL) & (p->dst_local ^ 1 ^ NEG(NAT_NEG_DST_LOCAL));
	return miss == 0;
}

/* The exact-match table of a NAT_OP_LOOKUP: a specific destination first, then "any". */
static __always_inline int nat_exact_match(__u32 table, const struct nat_match_pkt *p,
					   struct nat_decision *d)
{
	struct nat_exact_key k = {};
	struct nat_exact_val *v;

	if (!p->l4)
		return 0;
	k.table = table;
	k.daddr = p->daddr;
	k.dport = bpf_htons(p->dport);
	k.proto = p->proto;
	v = nat_exact.lookup(&k);
	if (v && ((v->iif && v->iif != p->iif) ^ v->iif_neg))
		v = NULL;
	if (!v) {
		k.daddr = 0;
		v = nat_exact.lookup(&k);
		if (v && ((v->iif && v->iif != p->iif) ^ v->iif_neg))
			v = NULL;
	}
	if (!v)
		return 0;
	d->op = NAT_OP_DNAT;
	d->to_addr = d->to_addr_max = v->to_addr;
	d->to_port_min = d->to_port_max = bpf_ntohs(v->to_port);
	d->to_port_base = 0;
	d->to_flags = NAT_TO_ADDR;
	return 1;
}

#define NAT_NO_PC 0xffffffff

/* The search's running state lives in map memory, not registers: the verifier does not track
 * map contents, so every path through a shape ends in the same state and the loop verifies in
 * time linear in its bound (kept in registers, "best" made each path a state of its own). */
struct nat_cls_search {
	__u32 best;               /* the first matching rule so far (absolute pc), NAT_NO_PC */
	__u32 cand;               /* the candidate being checked */
	__u32 last;               /* the shape being searched is the classifier's last */
	struct nat_match_pkt m;   /* the packet */
};

BPF_TABLE_PINNED("percpu_array", __u32, struct nat_cls_search, nat_cls_search, 1, PIN_DIR "/nat_cls_search");

/* Tuple-space search (Open vSwitch's classifier): the first rule of the classifier whose
 * conditions hold, as an absolute pc, or NAT_NO_PC. One hash lookup per shape; a candidate's
 * own conditions are checked at its pc, since a key holds only the exact and prefix fields;
 * rules a key cannot tell apart are candidates in turn (at most NAT_CLS_CHAIN).
 * Shapes come in order of their first rule: once the best candidate precedes a shape's first
 * rule, no later shape can win. The classifier's last shape says so (a count in a register
 * would let clang fold it into the loop bound, which the verifier then follows path by path);
 * max_shapes bounds the loop for the verifier (the compiler never gives a classifier more). */
static __always_inline __u32 nat_classify(__u32 first, const struct nat_match_pkt *p, const int max_shapes)
{
	__u32 zero = 0;
	struct nat_cls_search *st = nat_cls_search.lookup(&zero);

	if (!st)
		return NAT_NO_PC;
	st->best = NAT_NO_PC;
	st->m = *p;
	for (int i = 0; i < max_shapes; i++) {
		__u32 slot = first + i;
		struct nat_shape *sh;
		struct nat_cls_key k = {};
		__u32 *hit;
		__u8 local;

		sh = nat_shapes.lookup(&slot);
		if (!sh || sh->first_pc >= st->best)
			break;
		local = st->m.src_local | (st->m.dst_local << 1);
		k.shape = slot;
		k.saddr = st->m.saddr & sh->src_mask;
		k.daddr = st->m.daddr & sh->dst_mask;
		k.sport = st->m.sport & sh->sport_mask;
		k.dport = st->m.dport & sh->dport_mask;
		k.iif = st->m.iif & sh->iif_mask;
		k.oif = st->m.oif & sh->oif_mask;
		k.proto = st->m.proto & sh->proto_mask;
		k.local = local & sh->local_mask;
		st->last = sh->last;
		hit = nat_cls.lookup(&k);
		st->cand = hit ? *hit : 0;
		/* the key's candidates, in rule order (a classified rule's table: the next one) */
		for (int c = 0; c < NAT_CLS_CHAIN; c++) {
			__u32 pc = st->cand;
			struct nat_rule *r;

			if (!pc || pc >= st->best)
				break;
			r = nat_rules.lookup(&pc);
			if (!r)
				break;
			if (rule_matches(r, &st->m)) {
				st->best = pc;
				break;
			}
			st->cand = r->table;
		}
		if (st->last)
			break;
	}
	return st->best;
}

/* Is (daddr, dport, proto) the target of a published port (NAT_HAIRPIN_TABLE)? dport is
 * network order. */
static __always_inline int nat_hairpin_target(__be32 daddr, __be16 dport, __u8 proto)
{
	struct nat_exact_key k = { .table = NAT_HAIRPIN_TABLE, .daddr = daddr, .dport = dport, .proto = proto };

	return nat_exact.lookup(&k) != NULL;
}

static __always_inline __u32 nat_hook_entry(__u32 hook)
{
	__u32 zero = 0;
	struct nat_config *cfg = nat_config.lookup(&zero);

	return cfg ? cfg->entry[hook & 3] : 0xffffffff;
}

/* First-match evaluation from instruction pc until a decision (d->op, NAT_OP_ACCEPT when nothing
 * translates) or a NAT_OP_LOOKUP or NAT_OP_CLASSIFY instruction: then d->op is that op, d->table
 * (and d->shapes) its operands and *resume where to go on if nothing is found. The caller does the lookup outside this
 * loop, so the loop body stays small enough for the verifier at MAX_NAT_STEPS. */
static __always_inline void nat_evaluate_from(__u32 pc, const struct nat_match_pkt *p,
					      struct nat_decision *d, __u32 *resume, const int max_steps)
{
	d->op = NAT_OP_ACCEPT;
	for (int i = 0; i < max_steps; i++) {
		__u32 k = pc;
		struct nat_rule *r = nat_rules.lookup(&k);

		if (!r)
			return;
		/* gotos only go forward (compiler contract); anything else, e.g. the all-zero rules
		 * before the agent's first apply, ends the evaluation with no translation */
		if (!rule_matches(r, p)) {
			if (r->on_miss <= pc)
				return;
			pc = r->on_miss;
			continue;
		}
		if (r->op == NAT_OP_GOTO) {
			if (r->on_match <= pc)
				return;
			pc = r->on_match;
			continue;
		}
		d->op = r->op;
		d->to_addr = r->to_addr;
		d->to_port_min = r->to_port_min;
		d->to_port_max = r->to_port_max;
		d->to_addr_max = r->to_addr_max;
		d->to_port_base = r->to_port_base;
		d->to_flags = r->to_flags;
		d->table = r->table;
		d->shapes = r->shapes;
		*resume = r->on_miss;
		return;
	}
	{
		__u32 c = NAT_C_STEPS_EXCEEDED;
		__u64 *n = nat_counters.lookup(&c);
		if (n)
			*n += 1;
	}
}

#endif

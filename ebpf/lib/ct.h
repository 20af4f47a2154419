/* Conntrack for translated flows: lookups, TCP state, both halves created and repaired together.
 * Uses maps (spliced into the entry file by the loader). Only the agent deletes expired entries
 * (control/datapath/ct_gc.py); the datapath keeps using an entry until then, refreshing it.
 *
 * Full table: ct is an LRU hash, so an insert never fails for lack of room; the kernel evicts the
 * least recently used entries instead (an idle flow loses its translation). A live flow whose
 * other half was evicted re-creates it within CT_TWIN_CHECK_NS (twin repair). */
#ifndef DOCKLINE_CT_H
#define DOCKLINE_CT_H

#include "common.h"
#include "structs.h"
#include "maps.h"
#include "nat_packet.h"

static __always_inline void nat_count(__u32 idx)
{
	__u64 *n = nat_counters.lookup(&idx);
	if (n)
		*n += 1;
}

static __always_inline __u64 ct_timeout_ns(__u8 proto, __u8 state)
{
	__u64 s;

	if (proto == IPPROTO_TCP) {
		if (state == CT_ST_NEW)
			s = CT_TCP_SYN_TIMEOUT;
		else if (state == CT_ST_ESTABLISHED)
			s = CT_TCP_EST_TIMEOUT;
		else if (state == CT_ST_FIN)
			s = CT_TCP_FIN_TIMEOUT;
		else
			s = CT_TCP_CLOSE_TIMEOUT;
	} else if (proto == IPPROTO_UDP) {
		s = CT_UDP_TIMEOUT;
	} else {
		s = CT_ICMP_TIMEOUT;
	}
	return s * 1000000000ULL;
}

/* The state after this packet. RST closes; a FIN starts closing; any answer establishes. */
static __always_inline __u8 ct_next_state(__u8 state, __u8 dir, const struct nat_pkt *p)
{
	if (p->key.proto == IPPROTO_TCP && p->has_l4) {
		if (p->tcp_flags & TCP_RST)
			return CT_ST_CLOSED;
		if ((p->tcp_flags & TCP_FIN) && state < CT_ST_FIN)
			return CT_ST_FIN;
	}
	if (dir == CT_DIR_REPLY && state == CT_ST_NEW)
		return CT_ST_ESTABLISHED;
	return state;
}

static __always_inline void ct_twin_key(struct ct_key *tk, const struct ct_entry *e, __u8 proto)
{
	ct_key_reverse(tk, e->to_saddr, e->to_daddr, e->to_sport, e->to_dport, proto);
}

/* Account a packet of a tracked flow: counters, state (both halves on a change), expiry, and
 * now and then make sure the other half still exists. */
static __always_inline void ct_refresh(const struct ct_key *k, struct ct_entry *e, const struct nat_pkt *p)
{
	__u64 now = bpf_ktime_get_ns();
	__u8 next = ct_next_state(e->state, e->dir, p);
	struct ct_key tk = {};
	struct ct_entry *t;

	e->packets += 1;
	e->bytes += p->len;
	e->expires_ns = now + ct_timeout_ns(k->proto, next);
	if (next == e->state && now - e->twin_checked_ns < CT_TWIN_CHECK_NS)
		return;
	e->twin_checked_ns = now;
	ct_twin_key(&tk, e, k->proto);
	t = ct.lookup(&tk);
	if (t) {
		if (next != e->state) {
			t->state = next;
			t->expires_ns = e->expires_ns;
		}
		e->state = next;
		return;
	}
	/* evicted: rebuild the other half from this one */
	{
		struct ct_entry twin = {};
		twin.to_saddr = k->daddr;
		twin.to_daddr = k->saddr;
		twin.to_sport = k->dport;
		twin.to_dport = k->sport;
		twin.dir = e->dir == CT_DIR_ORIG ? CT_DIR_REPLY : CT_DIR_ORIG;
		twin.state = next;
		twin.flags = e->flags;
		twin.kind = e->kind;
		twin.expires_ns = e->expires_ns;
		twin.twin_checked_ns = now;
		ct.update(&tk, &twin);
		nat_count(NAT_C_CT_TWIN_REPAIR);
	}
	e->state = next;
}

/* Track a flow that is not translated (kind 0): a connection of the host itself leaving by the
 * uplink, so that its replies are recognised as replies and never judged by PREROUTING (as
 * netfilter's conntrack does). Skipped if the reply tuple belongs to another flow. */
static __always_inline void ct_track_identity(const struct ct_key *k, __u8 state, __u8 flags)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_entry oe = {}, re = {};
	struct ct_key rk = {};

	ct_key_reverse(&rk, k->saddr, k->daddr, k->sport, k->dport, k->proto);
	re.to_saddr = rk.saddr;
	re.to_daddr = rk.daddr;
	re.to_sport = rk.sport;
	re.to_dport = rk.dport;
	re.dir = CT_DIR_REPLY;
	re.state = state;
	re.flags = flags;
	re.expires_ns = now + ct_timeout_ns(k->proto, state);
	re.twin_checked_ns = now;
	if (ct.insert(&rk, &re) != 0)
		return;
	oe = re;
	oe.to_saddr = k->saddr;
	oe.to_daddr = k->daddr;
	oe.to_sport = k->sport;
	oe.to_dport = k->dport;
	oe.dir = CT_DIR_ORIG;
	ct.insert(k, &oe);
}

/* Remove both halves of the flow an entry belongs to. */
static __always_inline void ct_delete_pair(const struct ct_key *k, const struct ct_entry *e)
{
	struct ct_key tk = {};

	ct_twin_key(&tk, e, k->proto);
	ct.delete(&tk);
	ct.delete(k);
}

/* Is (saddr:sport -> daddr:dport) an existing socket of this netns (a listener included)?
 * A masqueraded flow must not take a tuple the host itself uses. */
static __always_inline int host_socket_owns(dl_ctx *ctx, __u8 proto, __be32 saddr,
					    __be32 daddr, __be16 sport, __be16 dport)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = saddr;
	t.ipv4.daddr = daddr;
	t.ipv4.sport = sport;
	t.ipv4.dport = dport;
	if (proto == IPPROTO_TCP)
		sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else if (proto == IPPROTO_UDP)
		sk = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		return 0;
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

static __always_inline __u16 clamp_port(__u32 v, __u16 lo, __u16 hi)
{
	return lo + (__u16)(((v & 0xffff) * (__u32)(hi - lo + 1)) >> 16);
}

/* Create both halves of a new flow: orig key k, translated tuple (ts, td, tsp, tdp). The reply
 * half goes in first with BPF_NOEXIST: that insert is the collision test. On a collision the
 * translated source port (ICMP: echo id) moves: kept if free, else a random one in
 * [pmin, pmax], then the next ones, NAT_PORT_RETRIES candidates in all. *tsp_out gets the port
 * used. Returns 0, or -1 when every candidate was taken. */
static __always_inline int ct_create(dl_ctx *ctx, const struct ct_key *k, __be32 ts, __be32 td,
				     __be16 tsp, __be16 tdp, __u8 kind, __u8 state, __u8 flags,
				     __u16 pmin, __u16 pmax, int check_host, __be16 *tsp_out)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_entry oe = {}, re = {};
	struct ct_key rk = {};
	int icmp_req = k->proto == IPPROTO_ICMP && k->sport;
	__u16 port = bpf_ntohs(icmp_req ? tsp : tsp);

	re.to_saddr = k->daddr;
	re.to_daddr = k->saddr;
	re.to_sport = k->dport;
	re.to_dport = k->sport;
	re.dir = CT_DIR_REPLY;
	re.state = state;
	re.flags = flags;
	re.kind = kind;
	re.expires_ns = now + ct_timeout_ns(k->proto, state);
	re.twin_checked_ns = now;

	for (int i = 0; i < NAT_PORT_RETRIES; i++) {
		__be16 p = bpf_htons(port);

		ct_key_reverse(&rk, ts, td, p, tdp, k->proto);
		if (!(check_host && host_socket_owns(ctx, k->proto, td, ts, tdp, p)) &&
		    ct.insert(&rk, &re) == 0) {
			oe.to_saddr = ts;
			oe.to_daddr = td;
			oe.to_sport = p;
			oe.to_dport = tdp;
			oe.dir = CT_DIR_ORIG;
			oe.state = state;
			oe.flags = flags;
			oe.kind = kind | (p != tsp ? CT_K_SNAT : 0);
			oe.expires_ns = re.expires_ns;
			oe.twin_checked_ns = now;
			if (oe.kind != re.kind) {
				struct ct_entry *r = ct.lookup(&rk);
				if (r)
					r->kind = oe.kind;
			}
			ct.update(k, &oe);
			nat_count(NAT_C_CT_NEW);
			*tsp_out = p;
			return 0;
		}
		if (i == 0) {
			/* our own reply half (the orig half was evicted, or another CPU made this flow) */
			struct ct_entry *r = ct.lookup(&rk);
			if (r && r->to_saddr == k->daddr && r->to_daddr == k->saddr &&
			    r->to_sport == k->dport && r->to_dport == k->sport) {
				oe = *r;
				oe.to_saddr = ts;
				oe.to_daddr = td;
				oe.to_sport = p;
				oe.to_dport = tdp;
				oe.dir = CT_DIR_ORIG;
				ct.update(k, &oe);
				nat_count(NAT_C_CT_TWIN_REPAIR);
				*tsp_out = p;
				return 0;
			}
		}
		nat_count(NAT_C_PORT_RETRY);
		if (i == 0)
			port = clamp_port(bpf_get_prandom_u32(), pmin, pmax);
		else
			port = port >= pmax || port < pmin ? pmin : port + 1;
	}
	nat_count(NAT_C_PORT_FAIL);
	return -1;
}

#endif

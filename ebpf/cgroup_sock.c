/* Socket-layer DNAT for the host's own processes (cgroup/connect4, sendmsg4, recvmsg4,
 * getpeername4): a connection from the host to a published port (a host address or 127.0.0.1)
 * is sent to the container address directly, so no proxy process runs and no packet is ever
 * rewritten. The OUTPUT rules decide, as iptables' nat OUTPUT chain would.
 *
 * Cgroup programs see every network namespace; these act only on sockets of the host's own
 * (nat_config.netns_cookie). The application keeps seeing the address it asked for:
 * getpeername4 and recvmsg4 undo the translation (sock_xlate, keyed by socket cookie).
 * Return value 1 = let the call proceed (these programs never refuse one).
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/nat_rules.h"

static __always_inline void sock_count(__u32 idx)
{
	__u64 *n = nat_counters.lookup(&idx);
	if (n)
		*n += 1;
}

static __always_inline struct nat_config *own_netns(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct nat_config *cfg = nat_config.lookup(&zero);

	if (!cfg || !cfg->netns_cookie || bpf_get_netns_cookie(ctx) != cfg->netns_cookie)
		return NULL;
	return cfg;
}

/* OUTPUT's decision. Unlike TC (tc_nat.c), a socket program cannot tail-call into the TC stages,
 * so exact-match tables and classifiers are consulted inline, at most NAT_SOCK_LOOKUPS of them
 * per evaluation (the compiler refuses an OUTPUT chain that needs more). */
static __always_inline int is_loopback(__be32 addr)
{
	return (addr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
}

static __always_inline int sock_evaluate(const struct nat_match_pkt *m, struct nat_decision *d)
{
	__u32 pc = nat_hook_entry(NAT_HOOK_OUTPUT), resume = 0;

	for (int round = 0; round < NAT_SOCK_LOOKUPS + 1; round++) {
		nat_evaluate_from(pc, m, d, &resume, NAT_SOCK_STEPS);
		if (d->op == NAT_OP_CLASSIFY) {
			__u32 hit = nat_classify(d->table, m, NAT_SOCK_SHAPES);

			pc = hit != NAT_NO_PC ? hit : resume;
			continue;
		}
		if (d->op != NAT_OP_LOOKUP)
			return 1;
		if (nat_exact_match(d->table, m, d))
			return 1;
		pc = resume;
	}
	return 0;
}

static __always_inline void translate(struct bpf_sock_addr *ctx, const int connect)
{
	struct nat_match_pkt m = {};
	struct nat_decision d = {};
	struct sock_xlate x = {};
	__u64 cookie;
	__u8 proto = ctx->protocol;

	if (ctx->family != 2 /* AF_INET */ || (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return;
	if (!own_netns(ctx))
		return;
	m.daddr = ctx->user_ip4;
	m.dport = bpf_ntohs((__u16)ctx->user_port);
	m.proto = proto;
	m.l4 = 1;
	m.dst_local = is_local_addr(m.daddr);
	m.src_local = 1;   /* the host's own socket */
	/* The source address is not chosen yet at connect(); for the destinations OUTPUT DNAT is
	 * mostly about (local ones) the kernel will pick: 127.0.0.1 towards loopback, else the
	 * local destination address itself. Elsewhere it is not known here (0: -s never matches);
	 * a DNAT of such a destination binds the socket to its route's source below. */
	{
		/* branch-free: a branch here would triple what the verifier explores in the rule loops
		 * (so route_src is not read before the rules: its NULL test is such a branch) */
		__u64 lo = nonzero((m.daddr & bpf_htonl(0xff000000)) ^ bpf_htonl(0x7f000000)) ^ 1;
		__u64 local = (__u64)m.dst_local & (lo ^ 1);
		m.saddr = (bpf_htonl(0x7f000001) & (__u32)(0 - lo)) | (m.daddr & (__u32)(0 - local));
	}
	if (!sock_evaluate(&m, &d))
		return;
	if (d.op == NAT_OP_DNAT || d.op == NAT_OP_REDIRECT) {
		/* iptables picks the source for the address asked for, then translates the
		 * destination: a socket that asked for a local address (not loopback) keeps that
		 * address as its source, whether REDIRECTed to 127.0.0.1 or DNATed elsewhere. The
		 * socket is bound to it before its destination changes (else the kernel would pick
		 * the source for the new destination: the bridge's address, or 127.0.0.1); POSTROUTING
		 * then judges the flow where it leaves (tc_to_endpoint, tc_uplink_egress, tc_loopback).
		 * The source the socket asked for: a local destination's own address (not loopback),
		 * or for a DNAT elsewhere the source of the original destination's route (route_src;
		 * an address range hashes it, as iptables hashes the source). */
		int keep = m.dst_local && m.saddr == m.daddr && !(d.op == NAT_OP_DNAT && is_loopback(m.daddr));
		if (d.op == NAT_OP_DNAT && !m.dst_local) {
			struct subnet_key k = { .prefixlen = 32, .addr = m.daddr };
			__be32 *routed = route_src.lookup(&k);
			if (routed && *routed) {
				m.saddr = *routed;
				keep = 1;
			}
		}
		if (d.op == NAT_OP_DNAT)
			x.nat_addr = d.to_flags & NAT_TO_ADDR ?
				     nat_pick_addr(m.saddr, m.daddr, d.to_addr, d.to_addr_max) : m.daddr;
		else
			x.nat_addr = bpf_htonl(0x7f000001);
		if (keep) {
			if (connect) {
				struct sockaddr_in sa = {};
				struct bpf_sock *sk = ctx->sk;
				sa.sin_family = 2;    /* AF_INET; port 0: the kernel picks one */
				sa.sin_addr.s_addr = m.saddr;
				/* a socket bound already keeps its binding; bound to a port but no address,
				 * it leaves from the kernel's pick: the TC program where it leaves makes the
				 * source m.saddr, and getsockname() reports it */
				if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)) != 0 && sk && !sk->src_ip4)
					x.want_saddr = x.sock_saddr = m.saddr;
			} else {
				ctx->msg_src_ip4 = m.saddr;
			}
		} else if (connect && d.op == NAT_OP_DNAT && is_loopback(m.daddr)) {
			/* DNAT of 127.0.0.1 elsewhere: iptables leaves the source 127.0.0.1 for masquerade
			 * (with route_localnet) to replace; here the kernel picks the address masquerade
			 * would give, and getsockname() still reports the loopback source */
			struct bpf_sock *sk = ctx->sk;
			if (sk && !sk->src_ip4)
				x.sock_saddr = m.saddr;
		}
	} else {
		return;
	}
	x.orig_addr = m.daddr;
	x.orig_port = bpf_htons(m.dport);
	x.nat_port = d.to_port_min ? bpf_htons(nat_pick_dport(m.dport, d.to_port_min, d.to_port_max,
							      d.to_port_base, d.to_flags)) : x.orig_port;
	ctx->user_ip4 = x.nat_addr;
	ctx->user_port = x.nat_port;
	cookie = bpf_get_socket_cookie(ctx);
	sock_xlate.update(&cookie, &x);
	sock_count(NAT_C_SOCK_XLATE);
}

static __always_inline void reverse(struct bpf_sock_addr *ctx)
{
	__u64 cookie;
	struct sock_xlate *x;

	if (ctx->family != 2 || !own_netns(ctx))
		return;
	cookie = bpf_get_socket_cookie(ctx);
	x = sock_xlate.lookup(&cookie);
	if (!x || ctx->user_ip4 != x->nat_addr || (__u16)ctx->user_port != x->nat_port)
		return;
	ctx->user_ip4 = x->orig_addr;
	ctx->user_port = x->orig_port;
	sock_count(NAT_C_SOCK_REVERSE);
}

int sock_connect4(struct bpf_sock_addr *ctx)
{
	translate(ctx, 1);
	return 1;
}

int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	translate(ctx, 0);
	return 1;
}

int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	reverse(ctx);
	return 1;
}

int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	reverse(ctx);
	return 1;
}

/* getsockname() of a translated socket whose source the socket layer could not set: the address
 * iptables would have given it (sock_xlate.sock_saddr). */
int sock_getsockname4(struct bpf_sock_addr *ctx)
{
	__u64 cookie;
	struct sock_xlate *x;

	if (ctx->family != 2 || !own_netns(ctx))
		return 1;
	cookie = bpf_get_socket_cookie(ctx);
	x = sock_xlate.lookup(&cookie);
	if (x && x->sock_saddr) {
		ctx->user_ip4 = x->sock_saddr;
		sock_count(NAT_C_SOCK_REVERSE);
	}
	return 1;
}

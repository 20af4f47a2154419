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
	 * about (local ones) the kernel will pick: 127.0.0.1 towards loopback, else the local
	 * destination address itself. Elsewhere it is unknown here (0: -s never matches). */
	{
		/* branch-free: a branch here would triple what the verifier explores in the rule loops */
		__u64 lo = nonzero((m.daddr & bpf_htonl(0xff000000)) ^ bpf_htonl(0x7f000000)) ^ 1;
		__u64 local = (__u64)m.dst_local & (lo ^ 1);
		m.saddr = (bpf_htonl(0x7f000001) & (__u32)(0 - lo)) | (m.daddr & (__u32)(0 - local));
	}
	if (!sock_evaluate(&m, &d))
		return;
	if (d.op == NAT_OP_DNAT) {
		/* the source is m.saddr's guess: exact for local destinations, 0 elsewhere (then an
		 * address range may pick another address than iptables, which hashes the source) */
		x.nat_addr = d.to_flags & NAT_TO_ADDR ?
			     nat_pick_addr(m.saddr, m.daddr, d.to_addr, d.to_addr_max) : m.daddr;
	} else if (d.op == NAT_OP_REDIRECT) {
		/* iptables sends locally generated packets to 127.0.0.1 and keeps their source: the
		 * local address they were addressed to (unless that was loopback already) */
		x.nat_addr = bpf_htonl(0x7f000001);
		if (m.dst_local && m.saddr == m.daddr) {
			if (connect) {
				struct sockaddr_in sa = {};
				struct bpf_sock *sk = ctx->sk;
				sa.sin_family = 2;    /* AF_INET; port 0: the kernel picks one */
				sa.sin_addr.s_addr = m.daddr;
				/* a socket bound already keeps its binding; bound to a port but no address,
				 * it will leave from 127.0.0.1: tc_loopback makes the source m.daddr */
				if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)) != 0 && sk && !sk->src_ip4)
					x.want_saddr = m.daddr;
			} else {
				ctx->msg_src_ip4 = m.daddr;
			}
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

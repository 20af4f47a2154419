/* SPDX-License-Identifier: GPL-2.0 */
/* Which address and port a NAT target with ranges picks, the way the kernel's NAT core does
 * (nf_nat_core.c: find_best_ips_proto, get_unique_tuple, nf_nat_l4proto_unique_tuple), so that
 * a rule set gives the same translations here as under iptables:
 *
 *  - an address range A-B: A + reciprocal_scale(jhash2(src as a 4-word nf_inet_addr,
 *    initval dst), B - A + 1). src/dst are the tuple's addresses before this manip (for SNAT
 *    the destination is already DNATed). Deterministic: the same client gets the same address.
 *  - DNAT ports P-Q: the original port if it is in the range, else P (the kernel starts a
 *    destination search at offset 0); P-Q/BASE: P + (port - BASE) mod (Q - P + 1), in 16 bits.
 *  - SNAT/MASQUERADE ports P-Q: the original port if in range, else a random one in range;
 *    with /BASE (iptables always passes base 0): P + port mod (Q - P + 1). ct_create moves on
 *    from there on a collision.
 * The Python twin is control/nat/select.py; tests/unit/test_nat_select.py holds both to
 * selections observed from the kernel's own NAT. */
#ifndef DOCKLINE_NAT_SELECT_H
#define DOCKLINE_NAT_SELECT_H

#include "common.h"
#include "structs.h"

static __always_inline __u32 nat_rol32(__u32 x, int k)
{
	return (x << k) | (x >> (32 - k));
}

/* jhash2(k, 4, initval) with k = { a0, 0, 0, 0 }: an IPv4 address as the kernel's
 * union nf_inet_addr. a0 and initval are the raw (network-order) address words. */
static __always_inline __u32 nat_jhash_addr(__u32 a0, __u32 initval)
{
	__u32 a, b, c;

	a = b = c = 0xdeadbeef + (4 << 2) + initval;
	a += a0;                        /* words 1 and 2 are zero */
	a -= c; a ^= nat_rol32(c, 4);  c += b;
	b -= a; b ^= nat_rol32(a, 6);  a += c;
	c -= b; c ^= nat_rol32(b, 8);  b += a;
	a -= c; a ^= nat_rol32(c, 16); c += b;
	b -= a; b ^= nat_rol32(a, 19); a += c;
	c -= b; c ^= nat_rol32(b, 4);  b += a;
	/* the tail: word 3 (zero) into a, then the final mix */
	c ^= b; c -= nat_rol32(b, 14);
	a ^= c; a -= nat_rol32(c, 11);
	b ^= a; b -= nat_rol32(a, 25);
	c ^= b; c -= nat_rol32(b, 16);
	a ^= c; a -= nat_rol32(c, 4);
	b ^= a; b -= nat_rol32(a, 14);
	c ^= b; c -= nat_rol32(b, 24);
	return c;
}

/* The address a target with lo..hi (network order) picks for a tuple src -> dst. */
static __always_inline __be32 nat_pick_addr(__be32 src, __be32 dst, __be32 lo, __be32 hi)
{
	__u32 min = bpf_ntohl(lo), dist = bpf_ntohl(hi) - min + 1;
	__u32 j;

	if (lo == hi)
		return lo;
	j = nat_jhash_addr(src, dst);
	return bpf_htonl(min + (__u32)(((__u64)j * dist) >> 32));
}

/* A shifted port map's port: min + (port - base) mod size, the offset taken in 16 bits. */
static __always_inline __u16 nat_shift_port(__u16 port, __u16 base, __u16 min, __u16 max)
{
	__u32 size = (__u32)max - min + 1;
	__u32 off = (__u16)(port - base);

	return min + (__u16)(off % size);
}

/* DNAT's destination port (host order) for original port dport; 0 = keep. */
static __always_inline __u16 nat_pick_dport(__u16 dport, __u16 min, __u16 max, __u16 base, __u16 flags)
{
	if (!min)
		return 0;
	if (max < min)
		max = min;
	if (flags & NAT_TO_SHIFT)
		return nat_shift_port(dport, base, min, max);
	if (dport >= min && dport <= max)
		return dport;
	return min;
}

/* SNAT/MASQUERADE's first candidate source port (host order) for original port sport. */
static __always_inline __u16 nat_pick_sport(__u16 sport, __u16 min, __u16 max, __u16 base, __u16 flags)
{
	if (max < min)
		max = min;
	if (flags & NAT_TO_SHIFT)
		return nat_shift_port(sport, base, min, max);
	if (sport >= min && sport <= max)
		return sport;
	return min + (__u16)(((bpf_get_prandom_u32() & 0xffff) * ((__u32)max - min + 1)) >> 16);
}

#endif

/* The packet context the shared NAT code runs on: a TC skb (struct __sk_buff) by default, an XDP
 * frame (struct xdp_md) when the entry file defines DL_XDP before its includes. The NAT headers
 * (nat_packet.h, ct.h, nat.h, nat_stages.h) use only what is here, so one text serves both hooks.
 *
 * Contract of the XDP variants:
 *   - offsets are from the start of the frame (the Ethernet header), as for TC;
 *   - checksum updates are RFC 1624 incremental updates done in software. An XDP frame has no
 *     CHECKSUM_PARTIAL state: the L4 checksum in the packet is taken to be complete, which holds
 *     for frames a NIC received. (A veth frame sent with checksum offload carries only the
 *     pseudo-header sum; technical notes §1.6. dockline therefore attaches XDP NAT to a veth only
 *     when asked to.)
 *   - only the linear part of the frame is read or written (the programs are not loaded with
 *     BPF_F_XDP_HAS_FRAGS, so a frame is one buffer).
 * Values passed as "from"/"to" are the bytes as they sit in the packet (network order), read as
 * native integers; one's-complement sums do not depend on byte order as long as every word is
 * read the same way. */
#ifndef DOCKLINE_CTX_H
#define DOCKLINE_CTX_H

#include "common.h"

#ifdef DL_XDP

typedef struct xdp_md dl_ctx;

#define CTX_ACT_OK    XDP_PASS
#define CTX_ACT_SHOT  XDP_DROP

/* bcc 0.26's helpers.h predates these helpers (kernel 5.18) */
static long (*dl_xdp_load_bytes)(struct xdp_md *ctx, __u32 off, void *buf, __u32 len) =
	(void *)BPF_FUNC_xdp_load_bytes;
static long (*dl_xdp_store_bytes)(struct xdp_md *ctx, __u32 off, void *buf, __u32 len) =
	(void *)BPF_FUNC_xdp_store_bytes;

static __always_inline void *ctx_data(dl_ctx *ctx) { return (void *)(long)ctx->data; }
static __always_inline void *ctx_data_end(dl_ctx *ctx) { return (void *)(long)ctx->data_end; }
static __always_inline __u32 ctx_len(dl_ctx *ctx) { return ctx->data_end - ctx->data; }
static __always_inline __u32 ctx_ifindex(dl_ctx *ctx) { return ctx->ingress_ifindex; }

static __always_inline long ctx_load(dl_ctx *ctx, __u32 off, void *to, __u32 len)
{
	return dl_xdp_load_bytes(ctx, off, to, len);
}

static __always_inline long ctx_store(dl_ctx *ctx, __u32 off, void *from, __u32 len)
{
	return dl_xdp_store_bytes(ctx, off, from, len);
}

/* ~(~check + ~from + to), folded: the checksum after a 2- or 4-byte field changed from -> to */
static __always_inline __u16 csum_replaced(__u16 check, __u32 from, __u32 to, __u32 size)
{
	__u32 s = (__u16)~check;

	if (size == 2) {
		s += (__u16)~(__u16)from;
		s += (__u16)to;
	} else {
		s += (__u16)~(__u16)from + (__u16)~(__u16)(from >> 16);
		s += (to & 0xffff) + (to >> 16);
	}
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline long csum_update_at(dl_ctx *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	__u32 size = flags & BPF_F_HDR_FIELD_MASK;
	__u16 check = 0;

	if (size != 2 && size != 4)
		return -1;
	if (dl_xdp_load_bytes(ctx, off, &check, 2) < 0)
		return -1;
	if ((flags & BPF_F_MARK_MANGLED_0) && !check)
		return 0;                       /* a UDP datagram without checksum keeps none */
	check = csum_replaced(check, from, to, size);
	if ((flags & BPF_F_MARK_MANGLED_0) && !check)
		check = 0xffff;                 /* CSUM_MANGLED_0: 0 would mean "no checksum" */
	return dl_xdp_store_bytes(ctx, off, &check, 2);
}

/* Same contracts as bpf_l3_csum_replace / bpf_l4_csum_replace (size in the low flag bits;
 * BPF_F_PSEUDO_HDR changes nothing here: a received frame's checksum is always complete). */
static __always_inline long ctx_l3_csum_replace(dl_ctx *ctx, __u32 off, __u32 from, __u32 to, __u64 size)
{
	return csum_update_at(ctx, off, from, to, size);
}

static __always_inline long ctx_l4_csum_replace(dl_ctx *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	return csum_update_at(ctx, off, from, to, flags);
}

#else /* TC */

typedef struct __sk_buff dl_ctx;

#define CTX_ACT_OK    TC_ACT_OK
#define CTX_ACT_SHOT  TC_ACT_SHOT

static __always_inline void *ctx_data(dl_ctx *ctx) { return (void *)(long)ctx->data; }
static __always_inline void *ctx_data_end(dl_ctx *ctx) { return (void *)(long)ctx->data_end; }
static __always_inline __u32 ctx_len(dl_ctx *ctx) { return ctx->len; }
static __always_inline __u32 ctx_ifindex(dl_ctx *ctx) { return ctx->ifindex; }

static __always_inline long ctx_load(dl_ctx *ctx, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes(ctx, off, to, len);
}

static __always_inline long ctx_store(dl_ctx *ctx, __u32 off, void *from, __u32 len)
{
	return bpf_skb_store_bytes(ctx, off, from, len, 0);
}

/* the kernel helpers: they also keep CHECKSUM_PARTIAL and GSO packets right */
static __always_inline long ctx_l3_csum_replace(dl_ctx *ctx, __u32 off, __u32 from, __u32 to, __u64 size)
{
	return bpf_l3_csum_replace(ctx, off, from, to, size);
}

static __always_inline long ctx_l4_csum_replace(dl_ctx *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	return bpf_l4_csum_replace(ctx, off, from, to, flags);
}

#endif

#endif

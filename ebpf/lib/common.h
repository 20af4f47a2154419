/* Includes and small helpers shared by every dockline BPF program (bcc, uapi headers only). */
#ifndef DOCKLINE_COMMON_H
#define DOCKLINE_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define ETH_P_8021Q_BE  0x0081   /* htons(ETH_P_8021Q) */
#define ETH_P_8021AD_BE 0xa888   /* htons(ETH_P_8021AD) */
#define ETH_P_IP_BE     0x0008   /* htons(ETH_P_IP) */
#define ETH_P_ARP_BE    0x0608   /* htons(ETH_P_ARP) */
#define ETH_P_IPV6_BE   0xdd86   /* htons(ETH_P_IPV6) */

static __always_inline int mac_equal(const unsigned char *a, const unsigned char *b)
{
	return ((const __u16 *)a)[0] == ((const __u16 *)b)[0] &&
	       ((const __u16 *)a)[1] == ((const __u16 *)b)[1] &&
	       ((const __u16 *)a)[2] == ((const __u16 *)b)[2];
}

#endif

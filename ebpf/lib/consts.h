/* Tunables: every one can be overridden from Python through bcc cflags (-DNAME=value). */
#ifndef DOCKLINE_CONSTS_H
#define DOCKLINE_CONSTS_H

#ifndef MAX_ENDPOINTS
#define MAX_ENDPOINTS 16384        /* host-side veths with a program, and endpoint addresses */
#endif
#ifndef MAX_LOCAL_SUBNETS
#define MAX_LOCAL_SUBNETS 1024     /* container subnets of this host (uplink anti-spoofing) */
#endif
#ifndef MAX_NETWORKS
#define MAX_NETWORKS 4096          /* networks of this host (net_info) */
#endif

/* ---- NAT and conntrack (ebpf/lib/ct.h, nat_*.h) */
#ifndef MAX_CT
#define MAX_CT 262144              /* conntrack entries (LRU; two per translated flow) */
#endif
#ifndef MAX_NAT_RULES
#define MAX_NAT_RULES 131072       /* compiled rule instructions per generation (two generations) */
#endif
#ifndef MAX_NAT_SHAPES
#define MAX_NAT_SHAPES 4096        /* classifier shapes per generation (two generations) */
#endif
#ifndef MAX_NAT_CLS
#define MAX_NAT_CLS 262144         /* classifier keys, both generations together */
#endif
#ifndef NAT_CLS_SHAPES
#define NAT_CLS_SHAPES 32          /* shapes one classifier may have (the compiler opens another) */
#endif
#ifndef NAT_CLS_CHAIN
#define NAT_CLS_CHAIN 4            /* candidate rules one classifier key may have */
#endif
#ifndef NAT_SOCK_SHAPES
#define NAT_SOCK_SHAPES 8          /* the same for OUTPUT (socket layer) */
#endif
#ifndef MAX_NAT_STEPS
#define MAX_NAT_STEPS 256          /* instructions one evaluation may visit (the compiler enforces it) */
#endif
#ifndef NAT_MAX_LOOKUPS
#define NAT_MAX_LOOKUPS 8          /* exact-match tables one evaluation may consult (tail calls) */
#endif
#ifndef NAT_SOCK_STEPS
#define NAT_SOCK_STEPS 128         /* instruction visits of an OUTPUT evaluation (socket layer) */
#endif
#ifndef NAT_SOCK_LOOKUPS
#define NAT_SOCK_LOOKUPS 2         /* exact-match tables an OUTPUT evaluation may consult (socket layer) */
#endif
#ifndef MAX_NAT_EXACT
#define MAX_NAT_EXACT 131072       /* exact-match DNAT entries (simple published-port rules) */
#endif
#ifndef MAX_NAT_IFADDRS
#define MAX_NAT_IFADDRS 1024       /* interfaces with an address MASQUERADE/REDIRECT may use */
#endif
#ifndef MAX_LOOPBACK_SRCS
#define MAX_LOOPBACK_SRCS 1024     /* source prefixes of the POSTROUTING rules host-local traffic may meet */
#endif
#ifndef MAX_ROUTE_SRC
#define MAX_ROUTE_SRC 4096         /* prefixes of the main routing table with the source the kernel picks */
#endif
#ifndef MAX_LOCAL_ADDRS
#define MAX_LOCAL_ADDRS 1024       /* prefixes of the host's "local" routing table (addrtype LOCAL) */
#endif
#ifndef MAX_FRAGS
#define MAX_FRAGS 8192             /* IPv4 datagrams in flight as fragments (LRU) */
#endif
#ifndef MAX_SOCK_XLATE
#define MAX_SOCK_XLATE 65536       /* sockets whose peer address the socket layer translated (LRU) */
#endif
#ifndef NAT_PORT_RETRIES
#define NAT_PORT_RETRIES 32        /* source-port candidates tried before a new flow is dropped */
#endif

/* Conntrack timeouts in seconds (Cilium's defaults; TCP after a FIN is shorter). */
#ifndef CT_TCP_SYN_TIMEOUT
#define CT_TCP_SYN_TIMEOUT 60
#endif
#ifndef CT_TCP_EST_TIMEOUT
#define CT_TCP_EST_TIMEOUT 21600
#endif
#ifndef CT_TCP_FIN_TIMEOUT
#define CT_TCP_FIN_TIMEOUT 60
#endif
#ifndef CT_TCP_CLOSE_TIMEOUT
#define CT_TCP_CLOSE_TIMEOUT 10
#endif
#ifndef CT_UDP_TIMEOUT
#define CT_UDP_TIMEOUT 60
#endif
#ifndef CT_ICMP_TIMEOUT
#define CT_ICMP_TIMEOUT 30
#endif
#define CT_TWIN_CHECK_NS 1000000000ULL   /* how often a flow re-checks its reply half (LRU repair) */

#ifndef PIN_DIR
#define PIN_DIR "/sys/fs/bpf/dockline/default/v1"   /* the agent always passes its own */
#endif

#endif

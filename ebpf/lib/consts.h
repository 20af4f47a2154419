/* Tunables: every one can be overridden from Python through bcc cflags (-DNAME=value). */
#ifndef DOCKLINE_CONSTS_H
#define DOCKLINE_CONSTS_H

#ifndef MAX_ENDPOINTS
#define MAX_ENDPOINTS 16384        /* host-side veths with a program, and endpoint addresses */
#endif
#ifndef MAX_PUBLISHED
#define MAX_PUBLISHED 65536        /* (container ip, proto, port) published service ports */
#endif
#ifndef MAX_LOCAL_SUBNETS
#define MAX_LOCAL_SUBNETS 1024     /* container subnets of this host (uplink anti-spoofing) */
#endif
#ifndef PIN_DIR
#define PIN_DIR "/sys/fs/bpf/dockline/default/v1"   /* the agent always passes its own */
#endif

#endif

/* Every map, pinned under PIN_DIR (which carries the layout version, because bcc reuses a
 * pinned map without checking its key and value sizes). Definitions only, no logic. */
#ifndef DOCKLINE_MAPS_H
#define DOCKLINE_MAPS_H

#include "consts.h"
#include "structs.h"

/* host-side veth ifindex -> what that endpoint may send as (anti-spoofing, its network) */
BPF_TABLE_PINNED("hash", __u32, struct endpoint_info, endpoints_by_ifindex, MAX_ENDPOINTS,
		 PIN_DIR "/endpoints_by_ifindex");
/* endpoint IPv4 -> where to deliver it (same-network fast path, isolation check) */
BPF_TABLE_PINNED("hash", __be32, struct ip_endpoint, endpoints_by_ip, MAX_ENDPOINTS,
		 PIN_DIR "/endpoints_by_ip");
/* published container services whose replies may cross networks */
BPF_TABLE_PINNED("hash", struct published_key, __u8, published_ports, MAX_PUBLISHED,
		 PIN_DIR "/published_ports");
/* container subnets of this host; the uplink drops packets claiming to come from them */
BPF_TABLE_PINNED7("lpm_trie", struct subnet_key, __u8, local_subnets, MAX_LOCAL_SUBNETS,
		  PIN_DIR "/local_subnets", BPF_F_NO_PREALLOC);
/* packets and bytes per verdict code (drop_reasons.h), per CPU */
BPF_TABLE_PINNED("percpu_array", __u32, struct counter, verdicts, NR_VERDICTS, PIN_DIR "/verdicts");
/* per-endpoint counters, per CPU */
BPF_TABLE_PINNED("percpu_hash", __u32, struct endpoint_stats, endpoint_stats, MAX_ENDPOINTS,
		 PIN_DIR "/endpoint_stats");

#endif

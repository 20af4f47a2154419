/* Never attached. Instantiates every map key/value struct in unpinned tables so that
 * tests/ebpf/test_layout.py can compare bcc's compiled layouts with the Python mirrors. */
#include "lib/common.h"
#include "lib/structs.h"

BPF_HASH(check_endpoint_info, __u32, struct endpoint_info, 1);
BPF_HASH(check_ip_endpoint, __be32, struct ip_endpoint, 1);
BPF_HASH(check_published_key, struct published_key, __u8, 1);
BPF_HASH(check_subnet_key, struct subnet_key, __u8, 1);
BPF_HASH(check_counter, __u32, struct counter, 1);
BPF_HASH(check_endpoint_stats, __u32, struct endpoint_stats, 1);

int layout_check(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

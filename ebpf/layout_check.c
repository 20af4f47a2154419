/* Never attached. Instantiates every map key/value struct in unpinned tables so that
 * tests/ebpf/test_layout.py can compare bcc's compiled layouts with the Python mirrors:
 * every struct of lib/structs.h (control/datapath/bpf_structs.py, map_schema.MIRRORS), then the
 * kernel UAPI structs the control plane mirrors (control/datapath/libbpf.py, prog_run.py). */
#include "lib/common.h"
#include "lib/structs.h"

BPF_HASH(check_endpoint_info, __u32, struct endpoint_info, 1);
BPF_HASH(check_ip_endpoint, __be32, struct ip_endpoint, 1);
BPF_HASH(check_subnet_key, struct subnet_key, __u8, 1);
BPF_HASH(check_counter, __u32, struct counter, 1);
BPF_HASH(check_endpoint_stats, __u32, struct endpoint_stats, 1);
BPF_HASH(check_net_info, __u32, struct net_info, 1);
BPF_HASH(check_ct, struct ct_key, struct ct_entry, 1);
BPF_HASH(check_nat_config, __u32, struct nat_config, 1);
BPF_HASH(check_nat_rule, __u32, struct nat_rule, 1);
BPF_HASH(check_nat_shape, __u32, struct nat_shape, 1);
BPF_HASH(check_nat_cls, struct nat_cls_key, __u32, 1);
BPF_HASH(check_nat_exact, struct nat_exact_key, struct nat_exact_val, 1);
BPF_HASH(check_frag, struct frag_key, struct frag_ports, 1);
BPF_HASH(check_sock_xlate, __u64, struct sock_xlate, 1);

/* uapi/linux/bpf.h */
BPF_HASH(check_bpf_prog_info, __u32, struct bpf_prog_info, 1);
BPF_HASH(check_bpf_map_info, __u32, struct bpf_map_info, 1);
BPF_HASH(check_sk_buff, __u32, struct __sk_buff, 1);
BPF_HASH(check_xdp_md, __u32, struct xdp_md, 1);

int layout_check(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

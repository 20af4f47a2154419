"""Per-program cost (design P9): each BPF program runs under BPF_PROG_TEST_RUN with ``repeat`` on
fixed packets, interleaved with a trivial reference TC program, in a private pin folder.

The gated number is the program's cost relative to the reference (ns per run / reference ns per
run), which cancels most of the machine's speed and noise; the absolute ns are reported too.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile

from ..control.datapath import bpf_structs as S
from ..control.datapath import map_schema
from ..control.datapath.loader import Programs, ensure_bpffs
from ..control.datapath.prog_run import prog_test_run

REPEAT = 50000

A_MAC, B_MAC = "02:42:0a:59:00:02", "02:42:0a:59:00:03"
A_IP, B_IP = "10.89.0.2", "10.89.0.3"


def _frame() -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    return bytes(Ether(src=A_MAC, dst=B_MAC) / IP(src=A_IP, dst=B_IP) / TCP(sport=40000, dport=80, flags="A")
                 / (b"x" * 64))


def _reference_program():
    from bcc import BPF
    b = BPF(text="#include <uapi/linux/pkt_cls.h>\nint ref(struct __sk_buff *s) { return TC_ACT_OK; }")
    return b, b.load_func("ref", BPF.SCHED_CLS).fd


def measure(rounds: int = 9) -> dict:
    """{program: {"ns": median ns/run, "ref_ns": ..., "relative": median of per-round ratios}}."""
    ensure_bpffs()
    root = tempfile.mkdtemp(prefix="dockline-progcost-", dir="/sys/fs/bpf")
    try:
        progs = Programs(root).load()
        by_ifindex = map_schema.open_map(progs.root, "endpoints_by_ifindex")
        by_ip = map_schema.open_map(progs.root, "endpoints_by_ip")
        # the sender is the test run's device (lo, ifindex 1); the receiver is known by IP
        by_ifindex.update(1, S.EndpointInfo(mac=S.mac_bytes(A_MAC), ip=S.be32(A_IP), net_id=7))
        by_ip.update(S.be32(B_IP), S.IpEndpoint(ifindex=1, net_id=7, mac=S.mac_bytes(B_MAC)))
        ref_obj, ref_fd = _reference_program()
        pkt = _frame()
        cases = {"tc_from_endpoint": progs.progs["tc_from_endpoint"].fd, "xdp_uplink": progs.progs["xdp_uplink"].fd}
        out = {}
        for name, fd in cases.items():
            ns, ref, rel = [], [], []
            for _ in range(rounds):
                r = prog_test_run(ref_fd, pkt, repeat=REPEAT).duration_ns
                p = prog_test_run(fd, pkt, repeat=REPEAT).duration_ns
                ns.append(p)
                ref.append(r)
                rel.append(p / max(r, 1))
            out[name] = {"ns": statistics.median(ns), "ref_ns": statistics.median(ref),
                         "relative": statistics.median(rel), "spread": [min(rel), max(rel)]}
        by_ifindex.close()
        by_ip.close()
        ref_obj.cleanup()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if os.path.exists(root):
            os.rmdir(root)

"""Per-program cost (design P9): each BPF program runs under BPF_PROG_TEST_RUN with ``repeat`` on
fixed packets, interleaved with a trivial reference TC program, in a private pin folder.

The gated number is the program's cost relative to the reference (ns per run / reference ns per
run), which cancels most of the machine's speed and noise; the absolute ns are reported too.
Each result carries the program's return value too: a cost is only meaningful for the path the
fixture is meant to take (``EXPECTED_RETVAL``), and the microbenchmarks check it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile

from ..control.datapath import bpf_structs as S
from ..control.datapath import map_schema
from ..control.datapath.loader import Programs, ensure_bpffs
from ..control.datapath.prog_run import prog_test_run

REPEAT = 50000

TC_ACT_REDIRECT = 7     # uapi/linux/pkt_cls.h
XDP_PASS = 2            # uapi/linux/bpf.h
#: What each program returns on ``_frame()`` with the maps ``loaded()`` writes: tc_from_endpoint
#: redirects the same-network frame into its peer; xdp_uplink knows no subnet or rule here and
#: passes it to TC.
EXPECTED_RETVAL = {"tc_from_endpoint": TC_ACT_REDIRECT, "xdp_uplink": XDP_PASS}

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


@contextlib.contextmanager
def loaded():
    """The programs loaded in a private pin folder, with one sender and one receiver on one network
    in the endpoint maps; yields ``{"fds": {program: fd}, "packet": bytes, "ref_fd": fd,
    "verdicts": PinnedMap}`` (verdicts: per-CPU packet/byte counters by Verdict code). Everything
    is unloaded and the folder removed on exit."""
    ensure_bpffs()
    root = tempfile.mkdtemp(prefix="dockline-progcost-", dir="/sys/fs/bpf")
    try:
        progs = Programs(root).load()
        with contextlib.ExitStack() as stack:
            by_ifindex = map_schema.open_map(progs.root, "endpoints_by_ifindex")
            stack.callback(by_ifindex.close)
            by_ip = map_schema.open_map(progs.root, "endpoints_by_ip")
            stack.callback(by_ip.close)
            verdicts = map_schema.open_map(progs.root, "verdicts")
            stack.callback(verdicts.close)
            # the sender is the test run's device (lo, ifindex 1); the receiver is known by IP
            by_ifindex.update(1, S.EndpointInfo(mac=S.mac_bytes(A_MAC), ip=S.be32(A_IP), net_id=7))
            by_ip.update(S.be32(B_IP), S.IpEndpoint(ifindex=1, net_id=7, mac=S.mac_bytes(B_MAC)))
            ref_obj, ref_fd = _reference_program()
            stack.callback(ref_obj.cleanup)
            yield {"fds": {name: progs.progs[name].fd for name in EXPECTED_RETVAL}, "packet": _frame(),
                   "ref_fd": ref_fd, "verdicts": verdicts}
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if os.path.exists(root):
            os.rmdir(root)


def measure(rounds: int = 9) -> dict:
    """{program: {"ns": median ns/run, "ref_ns": ..., "relative": median of per-round ratios,
    "spread": [min, max] of those, "retvals": the set of return values seen, as a sorted list}}."""
    with loaded() as env:
        pkt, ref_fd = env["packet"], env["ref_fd"]
        out = {}
        for name, fd in env["fds"].items():
            ns, ref, rel, retvals = [], [], [], set()
            for _ in range(rounds):
                r = prog_test_run(ref_fd, pkt, repeat=REPEAT).duration_ns
                run = prog_test_run(fd, pkt, repeat=REPEAT)
                retvals.add(run.retval)
                ns.append(run.duration_ns)
                ref.append(r)
                rel.append(run.duration_ns / max(r, 1))
            out[name] = {"ns": statistics.median(ns), "ref_ns": statistics.median(ref),
                         "relative": statistics.median(rel), "spread": [min(rel), max(rel)],
                         "retvals": sorted(retvals)}
        return out

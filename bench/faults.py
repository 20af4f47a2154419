"""Deliberate, real slowdowns for proving that the regression gate catches them.

This kernel has no netem, so the slowdown is a cls_bpf filter (bench/faults_burn.c, compiled by
bcc) on both directions of the candidate's server-side host veths: every packet of the measured
flows pays a real per-packet CPU cost before the datapath sees it. The cost is calibrated with
request/response probes until that rate drops by about the asked fraction.
"""

from __future__ import annotations

from pathlib import Path

from . import metrics

BURN_SRC = Path(__file__).with_name("faults_burn.c")
BURN_PRIO = 1          # before any datapath filter (ours use higher prio numbers)
_loaded = []           # keep compiled programs alive for the life of the run


def _attach(host_ns_path: str, ifname: str, fd: int, name: str) -> None:
    from pyroute2 import IPRoute

    from ..control.netlink.netns import run_in_netns

    def attach():
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            try:
                ipr.tc("add", "clsact", idx)
            except Exception:   # already there
                pass
            for parent in ("ffff:fff2", "ffff:fff3"):   # ingress, egress
                ipr.tc("replace-filter", "bpf", idx, ":1", fd=fd, name=name, parent=parent,
                       classid=1, direct_action=True, prio=BURN_PRIO)
    run_in_netns(host_ns_path, attach)


def burn_program(iters: int):
    from bcc import BPF
    b = BPF(src_file=str(BURN_SRC), cflags=[f"-DBURN_ITERS={iters}"])
    fn = b.load_func("tc_burn", BPF.SCHED_CLS)
    _loaded.append(b)
    return fn


def apply_burn(target, iters: int) -> None:
    fn = burn_program(iters)
    for host_ns, ifname in target.server_veths():
        _attach(host_ns, ifname, fn.fd, fn.name.decode() if isinstance(fn.name, bytes) else fn.name)


def inject_delay(target, fraction: float, results: dict, tries: int = 5) -> int:
    """Make ``target`` slower by about ``fraction`` on request/response; returns the burn size."""
    ep = target.c2c()
    base = metrics.request_response(ep, duration=1.0)["tps"]
    iters, got = 300, 0.0
    for _ in range(tries):
        target.burn_iters = iters
        apply_burn(target, iters)
        got = 1 - metrics.request_response(ep, duration=1.0)["tps"] / base
        if abs(got - fraction) < 0.04:
            break
        iters = max(10, min(150000, int(iters * fraction / max(got, 0.01))))
    results.setdefault("injected", {})[target.name] = {
        "fraction": fraction, "burn_iters_per_packet": iters, "probe_slowdown": round(got, 3)}
    return iters

"""The host-local row (``dockline bench --host-local``, issue 11 P11, "do no harm"): RR, CRR and
TCP throughput over 127.0.0.1 inside a dockline host against the same in a plain network
namespace on a machine with no dockline programs at all.

The dockline side is a simulated eBPF host (control/sim/simhost.py) with one bridge network and
one endpoint with a published port, the state in which the control plane's Docker-shaped
masquerade rule (``-s <subnet> ! -o <bridge> -j MASQUERADE``) could match host-local traffic
from the gateway's address, so the loopback program may be attached to ``lo``; its socket-layer
programs sit on the cgroup root and see every socket of the machine. Both client and server run
in that host's netns and talk over 127.0.0.1. The plain side is a fresh netns with only ``lo``
up, measured while no dockline host exists (each round builds the dockline host, measures it,
and removes it; the order of the two flips every round), so that it carries none of dockline's
cgroup programs either.

Per round, each metric's ratio dockline / plain; the headline is the median over rounds, with
min and max. Target: >= 0.97 on every metric.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from .metrics import connect_rate, request_response, tcp_throughput
from .targets import Endpoints

TARGET = 0.97
METRICS = {"crr_cps": (connect_rate, "cps"), "rr_tps": (request_response, "tps"),
           "tcp_gbit_s": (lambda ep, d: tcp_throughput(ep, duration=d), "gbit_s")}


class _DocklineHost:
    def __init__(self):
        from ..control.netlink import netns
        from ..control.sim.simhost import SimHost
        self.host = SimHost(Path(tempfile.mkdtemp(prefix="dl-hostlocal-")), datapath="ebpf")
        self.host.start_agent()
        self.host.call("network_create", name="n1", subnet="10.78.0.0/24")
        self.host.call("endpoint_create", name="web", network="n1", ports=["18080:80"])
        ns = netns.netns_path(self.host.host_ns)
        self.ep = Endpoints(ns, ns, "127.0.0.1")
        self.loopback = self.host.call("info")["datapath"].get("host_local_nat")

    def close(self):
        self.host.cleanup()


class _PlainNetns:
    def __init__(self):
        import secrets
        from ..control.netlink import netns
        from ..control.sim.nstools import sh
        self.name = "dl-plain-" + secrets.token_hex(3)
        netns.ensure_netns(self.name)
        sh(self.name, "ip", "link", "set", "lo", "up", check=True)
        path = netns.netns_path(self.name)
        self.ep = Endpoints(path, path, "127.0.0.1")

    def close(self):
        from ..control.netlink import netns
        netns.remove_netns(self.name)


def measure(rounds: int = 4, duration: float = 2.0, console=None) -> dict:
    from rich.progress import Progress
    raw = {m: {"dockline": [], "plain": []} for m in METRICS}
    loopback = None
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("host-local", total=rounds * 2)
        for r in range(rounds):
            order = ("dockline", "plain") if r % 2 == 0 else ("plain", "dockline")
            for side in order:
                progress.update(task, description=f"host-local: round {r + 1}/{rounds} ({side})")
                box = _DocklineHost() if side == "dockline" else _PlainNetns()
                try:
                    if side == "dockline":
                        loopback = box.loopback
                    for m, (run, key) in METRICS.items():
                        raw[m][side].append(run(box.ep, duration)[key])
                finally:
                    box.close()
                progress.advance(task)
    out = {"rounds": rounds, "duration_s": duration, "raw": raw, "loopback_nat": loopback, "ratios": {}}
    for m, v in raw.items():
        ratios = [a / b for a, b in zip(v["dockline"], v["plain"])]
        med = statistics.median(ratios)
        out["ratios"][m] = {"median": med, "min": min(ratios), "max": max(ratios),
                            "verdict": "PASS" if med >= TARGET else "MISS"}
    return out


def table(results: dict) -> list[str]:
    r = results.get("host_local")
    if not r:
        return []
    lines = ["", "## Host-local traffic on a dockline host (issue 11 P11: do no harm)", "",
             "| metric over 127.0.0.1 | dockline host / plain netns (median) | min | max | verdict |",
             "|---|---|---|---|---|"]
    for m, x in r["ratios"].items():
        lines.append(f"| {m} | {x['median']:.3f} | {x['min']:.3f} | {x['max']:.3f} | {x['verdict']} |")
    lines.append(f"\nTarget ≥ {TARGET}. {r['rounds']} rounds of {r['duration_s']:.0f} s per metric, the two "
                 "sides alternating; the plain netns is measured with no dockline host on the machine. "
                 f"Loopback NAT on the dockline host: {r['loopback_nat']}.")
    return lines

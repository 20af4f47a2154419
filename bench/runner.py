"""The benchmark run: build every target, measure each metric in interleaved rounds
(A B A B …, the order flipped every round), and turn paired rounds into ratios.

A ratio is always "higher is better": candidate/baseline for rates, baseline/candidate for costs.
Its median over rounds is the headline; min and max give the spread.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import metrics
from .targets import DocklineTarget, LoopbackTarget, Target


@dataclass
class Metric:
    id: str
    title: str
    topology: str                    # c2c | published | egress
    unit: str
    run: Callable                    # (Endpoints, duration) -> dict
    value: Callable[[dict], float]   # picks the headline number out of run()'s dict
    higher_is_better: bool = True
    mappings: int = 1                # published topology: how many ports are published in all
    extras: dict = field(default_factory=dict)   # name -> picker, recorded besides the value
    ceiling: bool = False            # also measured on the loopback ceiling


def _tput(streams):
    return lambda ep, d: metrics.tcp_throughput(ep, streams, d)


def _crr_metric(m: int) -> Metric:
    return Metric(f"crr_published_{m}", f"new TCP connections/s to a published port, {m} mappings",
                  "published", "conn/s", metrics.connect_rate, lambda r: r["cps"], mappings=m,
                  extras={"p99_us": lambda r: r["p99_us"], "errors": lambda r: r.get("errors", 0)})


def all_metrics() -> list[Metric]:
    return [
        Metric("tcp_1", "TCP throughput, 1 stream (c2c)", "c2c", "Gbit/s", _tput(1), lambda r: r["gbit_s"],
               extras={"cpu_s_per_gb": lambda r: r["cpu_s_per_gb"]}, ceiling=True),
        Metric("tcp_4", "TCP throughput, 4 streams (c2c)", "c2c", "Gbit/s", _tput(4), lambda r: r["gbit_s"],
               extras={"cpu_s_per_gb": lambda r: r["cpu_s_per_gb"]}, ceiling=True),
        Metric("cpu_per_gb", "CPU seconds per GB moved, 1 stream (c2c)", "c2c", "CPU s/GB", _tput(1),
               lambda r: r["cpu_s_per_gb"], higher_is_better=False),
        Metric("rr", "1-byte TCP request/response rate (c2c)", "c2c", "trans/s", metrics.request_response,
               lambda r: r["tps"], extras={"p50_us": lambda r: r["p50_us"], "p99_us": lambda r: r["p99_us"]},
               ceiling=True),
        Metric("udp_pps", "64-byte UDP packets/s received (c2c)", "c2c", "pkt/s", metrics.udp_rate,
               lambda r: r["received"]["pps"], extras={"sent_pps": lambda r: r["sent"]["pps"]}, ceiling=True),
        Metric("tcp_egress", "TCP throughput, container -> outside (masquerade)", "egress", "Gbit/s", _tput(1),
               lambda r: r["gbit_s"]),
        *(_crr_metric(m) for m in CRR_MAPPINGS),
    ]


#: The connection-rate curve against the number of published ports (P3). A full run measures
#: all of them; --quick only crr_published_1.
CRR_MAPPINGS = (1, 100, 1000, 3000, 10000)
#: Measured once per run, not per round, so they are not Metrics: "prog_cost" under
#: BPF_PROG_TEST_RUN (P9), "publish_cost" by publishing ports on each target (P4). Either can be
#: asked for with --metric like a Metric.
ONCE_PER_RUN = ("prog_cost", "publish_cost")
QUICK_METRICS = ("rr", "crr_published_1", "udp_pps", "tcp_1", "prog_cost")


def known_metric_ids() -> list[str]:
    return [m.id for m in all_metrics()] + list(ONCE_PER_RUN)


@dataclass
class Settings:
    rounds: int = 5
    duration: float = 3.0
    metric_ids: tuple = ()          # empty = all
    publish_cost_ports: int = 10000
    inject_slowdown: float = 0.0    # fault injection for proving the gate works


def default_targets(candidates=("kernel",), baseline: str = "auto", macvlan: bool = False) -> list[Target]:
    """docker0, the candidates, the loopback ceiling; with ``macvlan`` the macvlan row too
    (Docker's macvlan driver and a dockline macvlan network per candidate, c2c metrics)."""
    from .docker_target import docker_baseline, macvlan_targets
    extra = macvlan_targets(candidates, baseline) if macvlan else []
    return [docker_baseline(baseline)] + [DocklineTarget(c) for c in candidates] + extra + [LoopbackTarget()]


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
        # uncommitted edits outside bench/ change what is measured: name them (read-only git)
        dirty = [line[3:] for line in subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
            cwd=Path(__file__).parent.parent).stdout.splitlines() if not line[3:].startswith("bench/")]
    except OSError:
        commit, dirty = "", []
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "commit": commit, "uncommitted": dirty,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def ratio_stats(per_round: list[float]) -> dict:
    vals = [v for v in per_round if v == v and v not in (float("inf"),)]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "per_round": per_round}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "per_round": per_round}


def paired_ratios(metric: Metric, values: dict, baseline: str, candidate: str) -> dict:
    a, b = values.get(baseline, []), values.get(candidate, [])
    pairs = list(zip(a, b))
    if metric.higher_is_better:
        return ratio_stats([c / a if a else float("nan") for a, c in pairs])
    return ratio_stats([a / c if c else float("nan") for a, c in pairs])


class Run:
    """One benchmark run over ``targets`` (their ``kind`` says baseline / candidate / ceiling)."""

    def __init__(self, targets: list[Target], settings: Settings, console=None):
        self.targets = targets
        self.settings = settings
        self.console = console
        self.results: dict = {"meta": machine_info(), "settings": settings.__dict__.copy(), "targets": {},
                              "metrics": {}, "ratios": {}, "publish_cost": {}}

    def selected(self) -> list[Metric]:
        ids = self.settings.metric_ids
        return [m for m in all_metrics() if not ids or m.id in ids]

    def execute(self) -> dict:
        self.results["meta"]["loadavg_start"] = os.getloadavg()   # others' work on the machine shows here
        tmp = Path(tempfile.mkdtemp(prefix="dockline-bench-"))
        built = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=False) as progress:
            try:
                task = progress.add_task("building topologies", total=len(self.targets))
                for t in self.targets:
                    progress.update(task, description=f"building {t.name}")
                    built.append(t)   # before build(): a half-built target is torn down too
                    t.build(tmp)
                    self.results["targets"][t.name] = {"kind": t.kind, "description": t.describe(),
                                                       **({"ratio_against": list(t.ratio_against)}
                                                          if t.ratio_against else {})}
                    progress.advance(task)
                if self.settings.publish_cost_ports and (
                        not self.settings.metric_ids or "publish_cost" in self.settings.metric_ids):
                    # first, on freshly started agents/daemons: no earlier topology is still
                    # being freed while memory is sampled
                    task = progress.add_task(f"publishing {self.settings.publish_cost_ports} ports",
                                             total=len(self.targets))
                    for t in self.targets:
                        progress.update(task, description=f"publishing {self.settings.publish_cost_ports} ports "
                                                          f"on {t.name}")
                        try:
                            cost = t.publish_cost(self.settings.publish_cost_ports)
                        except Exception as e:   # recorded, never hidden
                            self.results.setdefault("publish_cost_errors", {})[t.name] = repr(e)
                            cost = None
                        if cost:
                            self.results["publish_cost"][t.name] = cost
                        progress.advance(task)
                if self.settings.inject_slowdown:
                    self._inject(self.settings.inject_slowdown)
                mets = self.selected()
                steps = sum(self.settings.rounds * len(self._targets_for(m)) for m in mets)
                task = progress.add_task("measuring", total=steps)
                for m in mets:
                    self._measure(m, progress, task)
                if any(t.name == "ebpf" for t in self.targets) and (
                        not self.settings.metric_ids or "prog_cost" in self.settings.metric_ids):
                    progress.update(task, description="per-program cost (BPF_PROG_TEST_RUN)")
                    self._prog_cost()
            finally:
                cleanup = progress.add_task("removing topologies", total=len(built))
                for t in reversed(built):
                    t.teardown()
                    progress.advance(cleanup)
        self.results["meta"]["loadavg_end"] = os.getloadavg()
        self._ratios()
        from .design import check
        self.results["design_targets"] = check(self.results)
        return self.results

    def _prog_cost(self):
        """Per-program cost relative to a trivial program; stored as a higher-is-better ratio
        (reference ns / program ns) so the gate treats it like every other ratio."""
        from .prog_cost import measure
        cost = measure()
        self.results["prog_cost"] = cost
        for prog, c in cost.items():
            self.results["ratios"].setdefault(f"prog_cost_{prog}", {})["ebpf/reference"] = {
                "median": 1 / c["relative"], "min": 1 / c["spread"][1], "max": 1 / c["spread"][0],
                "per_round": []}

    def _targets_for(self, m: Metric) -> list[Target]:
        return [t for t in self.targets if t.kind != "ceiling" or (m.ceiling and m.topology == "c2c")]

    def _endpoints(self, t: Target, m: Metric):
        if m.topology == "c2c":
            return t.c2c()
        if m.topology == "egress":
            return t.egress()
        return t.published(m.mappings)

    def _measure(self, m: Metric, progress, task):
        targets = self._targets_for(m)
        rec = self.results["metrics"].setdefault(m.id, {
            "title": m.title, "unit": m.unit, "higher_is_better": m.higher_is_better, "topology": m.topology,
            "values": {}, "extras": {}, "raw": {}})
        eps = {}
        for t in targets:
            progress.update(task, description=f"{m.id}: preparing {t.name}")
            ep = self._endpoints(t, m)
            if ep is not None:
                eps[t.name] = ep
        for r in range(self.settings.rounds):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for t in order:
                progress.update(task, description=f"{m.id}: round {r + 1}/{self.settings.rounds} on {t.name}")
                if t.name in eps:
                    try:
                        out = m.run(eps[t.name], self.settings.duration)
                        value = m.value(out)
                        rec["raw"].setdefault(t.name, []).append(out)
                        for k, pick in m.extras.items():
                            rec["extras"].setdefault(t.name, {}).setdefault(k, []).append(pick(out))
                    except Exception as e:   # recorded, never hidden: a failed round is a NaN
                        value = float("nan")
                        rec.setdefault("errors", []).append(f"{t.name} round {r + 1}: {e}")
                    rec["values"].setdefault(t.name, []).append(value)
                progress.advance(task)

    def _ratios(self):
        base = next((t.name for t in self.targets if t.kind == "baseline"), None)
        ceil = next((t.name for t in self.targets if t.kind == "ceiling"), None)
        for mid, rec in self.results["metrics"].items():
            m = next(x for x in all_metrics() if x.id == mid)
            out = {}
            for t in self.targets:
                if t.kind != "candidate":
                    continue
                if t.ratio_against:     # a row of its own (macvlan): against its references only
                    for ref in t.ratio_against:
                        if rec["values"].get(ref) and rec["values"].get(t.name):
                            out[f"{t.name}/{ref}"] = paired_ratios(m, rec["values"], ref, t.name)
                    continue
                if base and rec["values"].get(base):
                    out[f"{t.name}/{base}"] = paired_ratios(m, rec["values"], base, t.name)
                elif t.name != "kernel" and rec["values"].get("kernel"):
                    # the baseline could not run this case (Docker at 10k mappings): the kernel
                    # backend, which writes Docker's rule shapes, stands in for docker0's rules
                    out[f"{t.name}/kernel"] = paired_ratios(m, rec["values"], "kernel", t.name)
                if ceil and ceil in rec["values"]:
                    out[f"{t.name}/{ceil}"] = paired_ratios(m, rec["values"], ceil, t.name)
            if base and ceil and ceil in rec["values"]:
                out[f"{base}/{ceil}"] = paired_ratios(m, rec["values"], ceil, base)
            self.results["ratios"][mid] = out

    def _inject(self, fraction: float):
        """Slow every candidate down for real (bench/faults.py), calibrated so request/response
        loses about ``fraction`` of its rate."""
        from .faults import inject_delay
        for t in self.targets:
            if t.kind == "candidate" and not t.ratio_against:     # not the macvlan row: no host veth
                inject_delay(t, fraction, self.results)

"""The endpoint-cost row (``dockline bench --endpoints N``): what creating and removing one
endpoint costs with none present and with ``N`` present, and what removing all ``N`` costs
(``system reset``), per candidate datapath.

Procedure, per candidate, on a simulated host of its own (agent in its own netns):
  1. warm-up: three endpoints created and removed;
  2. ``rounds`` times: create an endpoint on an empty network, check that it got an address,
     remove it (the time of the pair is one sample): "0 present";
  3. ``N`` residents are created on a second network (a progress bar counts them);
  4. ``rounds`` times the same pair among them: "N present";
  5. ``system reset`` removes everything; its time is "reset".

The two populations cannot be interleaved (the growth being measured is the kernel's and the
agent's state), so the ratio rests on two runs of ``rounds`` samples a minute apart on a shared
machine; its 95 % interval is a bootstrap of the ratio of the medians. Targets (issue 10): the
ratio at most 1.2 at N = 1,000; reset under 30 s.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

RATIO_TARGET = 1.2
TARGET_N = 1000
RESET_TARGET_S = 30.0


def _churn(host, net: str, rounds: int, tag: str) -> list[float]:
    out = []
    for i in range(rounds):
        t = time.perf_counter()
        ep = host.call("endpoint_create", name=f"churn{tag}{i}", network=net)
        host.call("endpoint_rm", ref=f"churn{tag}{i}")
        out.append(time.perf_counter() - t)
        if not ep["networks"][net]["ip"]:
            raise RuntimeError(f"endpoint churn{tag}{i} got no address on {net}")
    return out


def ratio_interval(a: list[float], b: list[float], draws: int = 2000, seed: int = 7) -> tuple[float, float]:
    """95 % bootstrap interval of median(b) / median(a)."""
    rnd = random.Random(seed)
    ratios = sorted(statistics.median(rnd.choices(b, k=len(b))) / statistics.median(rnd.choices(a, k=len(a)))
                    for _ in range(draws))
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def measure_candidate(datapath: str, n: int, rounds: int, progress=None) -> dict:
    from ..control.sim.simhost import SimHost
    host = SimHost(Path(tempfile.mkdtemp(prefix="dl-epcost-")), datapath=datapath)
    try:
        host.start_agent()
        host.call("network_create", name="empty", subnet="10.70.0.0/20")
        host.call("network_create", name="full", subnet="10.72.0.0/16")
        _churn(host, "empty", 3, "w")
        zero = _churn(host, "empty", rounds, "z")
        task = progress.add_task(f"{datapath}: {n} residents", total=n) if progress else None
        t = time.perf_counter()
        for i in range(n):
            host.call("endpoint_create", name=f"resident{i}", network="full")
            if progress:
                progress.advance(task)
        populate_s = time.perf_counter() - t
        full = _churn(host, "full", rounds, "f")
        t = time.perf_counter()
        host.call("reset")
        reset_s = time.perf_counter() - t
        left = [e["name"] for e in host.call("ps")]
        if left:
            raise RuntimeError(f"reset left endpoints behind: {left[:5]}")
    finally:
        host.cleanup()
    lo, hi = ratio_interval(zero, full)
    ratio = statistics.median(full) / statistics.median(zero)
    return {"n": n, "rounds": rounds, "zero_ms": [x * 1e3 for x in zero], "full_ms": [x * 1e3 for x in full],
            "zero_median_ms": statistics.median(zero) * 1e3, "full_median_ms": statistics.median(full) * 1e3,
            "ratio": ratio, "ratio_ci": [lo, hi], "populate_s": populate_s, "reset_s": reset_s,
            "ratio_verdict": ("n/a (the target is at 1,000)" if n < TARGET_N else "PASS" if hi <= RATIO_TARGET
                              else "MISS" if lo > RATIO_TARGET else "UNRESOLVED"),
            "reset_verdict": ("n/a" if n < TARGET_N else "PASS" if reset_s < RESET_TARGET_S else "MISS")}


def measure(candidates, n: int, rounds: int, console=None) -> dict:
    from rich.progress import Progress
    out = {}
    with Progress(console=console, transient=True) as progress:
        for c in candidates:
            out[c] = measure_candidate(c, n, rounds, progress)
    return out


def table(results: dict) -> list[str]:
    rows = results.get("endpoint_costs")
    if not rows:
        return []
    lines = ["", "## Endpoint costs as endpoints accumulate (issue 10: ratio ≤ 1.2 at 1,000; reset < 30 s)", "",
             "| candidate | present | create+rm, 0 present | create+rm, N present | ratio [95 % CI] | verdict "
             "| create N | reset N | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lo, hi = r["ratio_ci"]
        lines.append(f"| {name} | {r['n']} | {r['zero_median_ms']:.1f} ms | {r['full_median_ms']:.1f} ms "
                     f"| {r['ratio']:.2f} [{lo:.2f}–{hi:.2f}] | {r['ratio_verdict']} | {r['populate_s']:.1f} s "
                     f"| {r['reset_s']:.1f} s | {r['reset_verdict']} |")
    lines.append(f"\n{next(iter(rows.values()))['rounds']} pairs per population; the populations are measured one "
                 "after the other (they cannot be interleaved), so the interval covers sampling noise only.")
    return lines

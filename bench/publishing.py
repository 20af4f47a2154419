"""P4, the cost of publishing ports: one measurement procedure shared by every target.

A target supplies four callbacks (how to create and remove an endpoint, how much memory its
control plane holds, which processes belong to it); ``measure`` does the rest:

  1. warm-up: an endpoint with one port is created and removed; then an endpoint without ports
     (its time on a host with no ports published); a pause lets freed memory settle;
  2. memory, kernel slab and processes are sampled; ``n`` ports are published on one new
     endpoint (``bulk_s``), then one more endpoint with one port (``one_more_s``); sampled again;
  3. ``repeats`` alternating pairs: an endpoint with one port, an endpoint without ports (the
     order flips every pair), each removed again. The marginal cost of one more port is
     (endpoint with one port) - (endpoint without ports), median of the per-pair differences:
     the endpoint's own namespace and veth are not a cost of publishing. While the bootstrap
     95 % interval of that median still contains ``limit_s`` (the design target: the noise of
     two endpoint creations hides which side of it the cost is on), ``step`` more pairs are
     measured, up to ``max_repeats`` pairs in all. Each look at the interval is a chance to stop
     on a lucky one, so the final interval is somewhat optimistic; ``looks`` says how many there
     were. Where the control plane reports its own last change (``last_apply``), the time of its
     NAT step is recorded for every creation of the pairs too, with and without the port.

Memory is the control plane's own delta (agent RSS, or dockerd's RSS plus the PSS of its
docker-proxy processes) plus the machine's Slab delta (BPF map entries, conntrack and iptables
live there). The slab figure is machine-wide, so anything else running at the same time moves it.
"""

from __future__ import annotations

import collections
import os
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from .design import P4_ONE_S

#: Host ports of the bulk mapping and of the single extra mapping.
BULK_BASE = 30000
ONE_MORE = "45000:80"


def slab_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


def _ppid_comm(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    fields = s[s.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), comm


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) of every live (non-zombie) process."""
    out = {}
    for p in os.listdir("/proc"):
        if p.isdigit() and (pc := _ppid_comm(int(p))) is not None:
            out[int(p)] = pc
    return out


def descendants(table: dict[int, tuple[int, str]], roots: Iterable[int]) -> set[int]:
    roots = set(roots)
    out = set()
    for pid in table:
        p, seen = pid, 0
        while p in table and seen < 64:
            if p in roots:
                out.add(pid)
                break
            p, seen = table[p][0], seen + 1
    return out - roots


def net_ns_members(ns_path: str) -> set[int]:
    """Processes whose network namespace is the one at ``ns_path``."""
    try:
        st = os.stat(ns_path)
    except OSError:
        return set()
    out = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                s = os.stat(f"/proc/{p}/ns/net")
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                out.add(int(p))
    return out


@dataclass
class Callbacks:
    create: Callable[[str, list], None]      # (endpoint name, port specs) -> None
    remove: Callable[..., None]              # (*endpoint names) -> None, missing ones ignored
    memory_kib: Callable[[], int]            # the control plane's memory now
    owned_pids: Callable[[], set]            # processes that belong to the target now
    extra_kib: Callable[[], dict] | None = None   # further memory figures, informational
    last_apply: Callable[[], dict | None] | None = None   # the control plane's own report of its last change


def median_ci95(xs: list[float], resamples: int = 2000) -> list[float]:
    """A bootstrap 95 % interval of the median of ``xs`` (seeded: the same data, the same interval)."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return [meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]]


def _timed(f, *a) -> float:
    t0 = time.perf_counter()
    f(*a)
    return time.perf_counter() - t0


def unresolved(ci: list[float], limit_s: float | None) -> bool:
    """Does the interval ``ci`` still contain ``limit_s``?"""
    return limit_s is not None and ci[0] <= limit_s < ci[1]


def measure(n: int, cb: Callbacks, repeats: int = 21, settle: float = 2.0, limit_s: float | None = P4_ONE_S,
            max_repeats: int = 121, step: int = 20) -> dict:
    cb.remove("cost", "cost1")
    cb.create("cost", [ONE_MORE])   # warm-up: the publishing code paths run once before anything is timed
    cb.remove("cost")
    t_bare_empty = _timed(cb.create, "cost", [])
    cb.remove("cost")
    time.sleep(settle)   # let memory freed by the removals (RCU, allocator) settle before sampling

    mem0, slab0, extra0 = cb.memory_kib(), slab_kib(), (cb.extra_kib() if cb.extra_kib else {})
    all0, own0 = set(process_table()), cb.owned_pids()
    t_bulk = _timed(cb.create, "cost", [f"{BULK_BASE}-{BULK_BASE + n - 1}:{BULK_BASE}-{BULK_BASE + n - 1}"])
    apply_bulk = cb.last_apply() if cb.last_apply else None
    t_one = _timed(cb.create, "cost1", [ONE_MORE])
    apply_one = cb.last_apply() if cb.last_apply else None
    time.sleep(1.0)   # a process that exits by itself right away is not an extra process
    mem1, slab1, extra1 = cb.memory_kib(), slab_kib(), (cb.extra_kib() if cb.extra_kib else {})
    table = process_table()
    new_all = set(table) - all0
    new_own = cb.owned_pids() - own0
    cb.remove("cost1")

    with_port, without, diffs = [], [], []
    step_with, step_without = [], []          # the control plane's own NAT step, seconds
    looks, i = 0, 0
    while True:
        for i in range(i, i + (repeats if not i else min(step, max_repeats - i))):
            pair = {}
            for ports in ([ONE_MORE], []) if i % 2 == 0 else ([], [ONE_MORE]):
                pair[bool(ports)] = _timed(cb.create, "cost1", ports)
                own = cb.last_apply() if cb.last_apply else None
                if own and "seconds" in own:
                    (step_with if ports else step_without).append(own["seconds"])
                cb.remove("cost1")
            with_port.append(pair[True])
            without.append(pair[False])
            diffs.append(pair[True] - pair[False])
        i += 1
        looks += 1
        if len(diffs) >= max_repeats or not unresolved(median_ci95(diffs), limit_s):
            break
    cb.remove("cost", "cost1")

    def names(pids):
        return dict(collections.Counter(table[p][1] for p in pids if p in table).most_common())

    mem_mib, slab_mib = (mem1 - mem0) / 1024, (slab1 - slab0) / 1024
    return {
        "ports": n, "bulk_s": t_bulk, "one_more_s": t_one,
        "endpoint_without_ports_s": statistics.median(without),
        "endpoint_without_ports_empty_host_s": t_bare_empty,
        "endpoint_with_one_port_s": statistics.median(with_port),
        "marginal_port_s": statistics.median(diffs),
        "marginal_port_spread_s": [min(diffs), max(diffs)],
        "marginal_port_ci95_s": median_ci95(diffs),
        "bulk_net_s": t_bulk - statistics.median(without),
        "repeats": len(diffs), "looks": looks, "limit_s": limit_s,
        "per_repeat": {"with_one_port_s": with_port, "without_ports_s": without},
        "control_plane_step_s": ({"with_one_port": statistics.median(step_with),
                                  "without_ports": statistics.median(step_without),
                                  "marginal": statistics.median(step_with) - statistics.median(step_without)}
                                 if step_with and step_without else None),
        "agent_rss_delta_mib": mem_mib, "slab_delta_mib": slab_mib, "memory_delta_mib": mem_mib + slab_mib,
        "extra_kib": {k: extra1.get(k, 0) - extra0.get(k, 0) for k in extra1},
        "control_plane_report": {"bulk": apply_bulk, "one_more": apply_one},
        "extra_processes": len(new_own), "extra_process_names": names(new_own),
        "new_processes_machine": len(new_all), "new_process_names_machine": names(new_all),
    }

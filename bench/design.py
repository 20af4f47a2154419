"""The design targets P3 and P4 (shared/design.md §4), checked against one run's results.

Each row names the target, the candidate, the measured value (median with [min–max] where there
are rounds) and PASS, MISS or "not measured" (with the reason); "one more port" can also be
UNRESOLVED, when the noise of the measurement spans its limit. Nothing is rounded in the
candidate's favour: a value exactly on the limit passes, anything beyond it misses.

P3, new TCP connections/s to a published port from an outside netns:
  * ≥ 1.2× docker0 with 1 mapping;
  * ≥ 5× docker0 with 10,000 mappings. Real Docker cannot publish 10,000 ports on this machine
    (bench/docker_target.py, DOCKER_MAX_MAPPINGS); then the docker0-equivalent rules (the kernel
    candidate, which writes Docker's iptables rule shape) stand in, and the row says so;
  * dockline at 10,000 mappings within 10 % of dockline at 1. The two are different metrics,
    measured minutes apart, so rounds are paired by index (not interleaved) and the row says so.
P4, publishing ports (bench/publishing.py):
  * 10,000 mappings in ≤ 1 s: the endpoint's own cost (an endpoint without ports, median of the
    repeats) is subtracted; the raw time is shown next to it;
  * one more in ≤ 5 ms: (endpoint with one port) − (endpoint without ports), median of repeated
    pairs with a bootstrap 95 % interval (PASS/MISS only when the interval is on one side of the
    limit; while it is not, more pairs are measured, up to 121); the raw first measurement and the
    agent's own NAT step time (first, and medians over the pairs) are shown next to it;
  * ≤ 10 MB extra memory: control-plane RSS delta + machine Slab delta, in MB (10^6 bytes); a
    negative part (memory freed by other activity while sampling) counts as 0, never as a credit;
  * 0 extra processes: new processes still alive 1 s later that belong to the target.
"""

from __future__ import annotations

import statistics

P3_ONE, P3_10K, P3_FLAT = 1.2, 5.0, 0.10
P4_BULK_S, P4_ONE_S, P4_MEM_MB, P4_PROCS, P4_PORTS = 1.0, 0.005, 10.0, 0, 10000
MIB = 1.048576      # MB per MiB


def _spread(r: dict) -> str:
    return f"{r['median']:.2f}× [{r['min']:.2f}–{r['max']:.2f}]"


def _row(pid, target, cand, measured, verdict, note=""):
    return {"id": pid, "target": target, "candidate": cand, "measured": measured, "verdict": verdict, "note": note}


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("PASS" if ok else "MISS")


def _ratio_row(pid, target, cand, results, mid, limit):
    base = next((n for n, d in results["targets"].items() if d["kind"] == "baseline"), None)
    cols = results["ratios"].get(mid, {})
    r, note = cols.get(f"{cand}/{base}"), ""
    if r is None and f"{cand}/kernel" in cols:
        r = cols[f"{cand}/kernel"]
        note = (f"{base} could not publish this many ports here; the docker0-equivalent rules (dockline's "
                f"kernel backend, Docker's iptables rule shape) stand in")
    if r is not None and r["median"] != r["median"]:
        return _row(pid, target, cand, "", "MISS", "no paired round succeeded (see errors)")
    if r is None:
        why = "metric not in this run" if mid not in results["metrics"] else \
            ("this candidate is the docker0 stand-in at this size" if cand == "kernel" else "no paired value")
        return _row(pid, target, cand, "", _verdict(None), why)
    return _row(pid, target, cand, _spread(r), _verdict(r["median"] >= limit), note)


def flatness(results: dict, name: str, lo: str = "crr_published_1", hi: str = "crr_published_10000") -> dict | None:
    """``name``'s rate at ``hi`` over its rate at ``lo``, rounds paired by index."""
    m = results["metrics"]
    a, b = m.get(lo, {}).get("values", {}).get(name), m.get(hi, {}).get("values", {}).get(name)
    if not a or not b:
        return None
    per = [y / x for x, y in zip(a, b) if x == x and y == y and x]
    if not per:
        return None
    return {"median": statistics.median(per), "min": min(per), "max": max(per), "per_round": per}


def _resolved(p: dict, limit: float) -> str:
    """PASS or MISS only when the 95 % interval of the marginal cost lies on one side of the limit:
    it is the difference of two endpoint creations of ~100 ms each, and on a busy 2-CPU machine
    their jitter can be larger than the limit itself."""
    lo, hi = p.get("marginal_port_ci95_s") or [p["marginal_port_s"]] * 2
    if hi <= limit:
        return "PASS"
    if lo > limit:
        return "MISS"
    return "UNRESOLVED"


def _own_step(p: dict) -> str:
    """The agent's own report of the time its NAT step took for the one more port (eBPF backend):
    the first one, and the medians over the pairs with and without the port."""
    one = (p.get("control_plane_report") or {}).get("one_more") or {}
    if "seconds" not in one:
        return ""
    text = f"; the agent's own NAT step for it: {one['seconds'] * 1000:.2f} ms"
    step = p.get("control_plane_step_s")
    if step:
        text += (f" (median over the pairs: {step['with_one_port'] * 1000:.2f} ms with the port, "
                 f"{step['without_ports'] * 1000:.2f} ms without)")
    return text


def _looks(p: dict) -> str:
    """More pairs were measured while the interval contained the limit (bench/publishing.py)."""
    looks = p.get("looks", 1)
    if looks <= 1:
        return ""
    return (f" (measured in {looks} steps: more pairs while the interval contained "
            f"{p.get('limit_s', P4_ONE_S) * 1000:.0f} ms)")


def check(results: dict) -> list[dict]:
    rows = []
    cands = [n for n, d in results["targets"].items() if d["kind"] == "candidate" and not d.get("ratio_against")]
    for c in cands:
        rows.append(_ratio_row("P3", f"≥ {P3_ONE}× docker0, 1 mapping", c, results, "crr_published_1", P3_ONE))
        rows.append(_ratio_row("P3", f"≥ {P3_10K:.0f}× docker0, 10,000 mappings", c, results,
                               "crr_published_10000", P3_10K))
        f = flatness(results, c)
        target = "10,000 mappings within 10 % of 1 mapping"
        if f is None and all(m in results["metrics"] for m in ("crr_published_1", "crr_published_10000")):
            rows.append(_row("P3", target, c, "", "MISS", "no round of both metrics succeeded (see errors)"))
        elif f is None:
            rows.append(_row("P3", target, c, "", _verdict(None), "needs crr_published_1 and crr_published_10000"))
        else:
            rows.append(_row("P3", target, c, _spread(f), _verdict(abs(f["median"] - 1) <= P3_FLAT),
                             "rate at 10,000 / rate at 1; different metrics, rounds paired by index"))
    pc = results.get("publish_cost", {})
    errs = results.get("publish_cost_errors", {})
    for c in cands:
        p = pc.get(c)
        if p is None:
            # publishing that fails does not meet the target; one that was not asked for is not measured
            verdict, why = ("MISS", f"failed: {errs[c]}") if c in errs else (_verdict(None), "publish_cost not in this run")
            rows += [_row("P4", t, c, "", verdict, why) for t in
                     ("10,000 mappings ≤ 1 s", "one more ≤ 5 ms", "≤ 10 MB extra memory", "0 extra processes")]
            continue
        if "marginal_port_s" not in p:   # a results.json from before bench/publishing.py
            rows.append(_row("P4", "all", c, "", _verdict(None), "old results format"))
            continue
        full = p["ports"] >= P4_PORTS
        rows.append(_row("P4", f"{P4_PORTS:,} mappings ≤ {P4_BULK_S:.0f} s", c,
                         f"{p['bulk_net_s']:.2f} s (raw {p['bulk_s']:.2f} s, endpoint without ports "
                         f"{p['endpoint_without_ports_s']:.2f} s)",
                         _verdict(p["bulk_net_s"] <= P4_BULK_S if full else None),
                         "" if full else f"only {p['ports']} ports were published"))
        ci = p.get("marginal_port_ci95_s") or [p["marginal_port_s"]] * 2
        rows.append(_row("P4", f"one more ≤ {P4_ONE_S * 1000:.0f} ms", c,
                         f"{p['marginal_port_s'] * 1000:.1f} ms [{p['marginal_port_spread_s'][0] * 1000:.1f}–"
                         f"{p['marginal_port_spread_s'][1] * 1000:.1f}] (with one port "
                         f"{p['endpoint_with_one_port_s'] * 1000:.0f} ms − without "
                         f"{p['endpoint_without_ports_s'] * 1000:.0f} ms; raw first {p['one_more_s'] * 1000:.0f} ms)",
                         _resolved(p, P4_ONE_S),
                         f"median of {p['repeats']} alternating pairs{_looks(p)}, 95 % interval of the median "
                         f"{ci[0] * 1000:.1f}–{ci[1] * 1000:.1f} ms" + _own_step(p)))
        # a negative part (memory freed by something else while sampling) never offsets the other
        mem_mb = (max(p["agent_rss_delta_mib"], 0) + max(p["slab_delta_mib"], 0)) * MIB
        bpf = p.get("extra_kib", {}).get("bpf_maps_memlock")
        note = "slab is machine-wide: other activity at the same time moves it"
        if bpf is not None:
            note += f"; of the kernel side, the BPF maps' own memlock grew {bpf * 1024 / 1e6:.1f} MB"
        if mem_mb < 0 or min(p["agent_rss_delta_mib"], p["slab_delta_mib"]) < 0:
            note += "; a negative part (memory freed while sampling) is counted as 0"
        rows.append(_row("P4", f"≤ {P4_MEM_MB:.0f} MB extra memory", c,
                         f"{mem_mb:.1f} MB (agent RSS {p['agent_rss_delta_mib'] * MIB:.1f} + slab "
                         f"{p['slab_delta_mib'] * MIB:.1f})", _verdict(mem_mb <= P4_MEM_MB if full else None), note))
        rows.append(_row("P4", "0 extra processes", c,
                         f"{p['extra_processes']} (machine-wide new: {p['new_processes_machine']})",
                         _verdict(p["extra_processes"] <= P4_PROCS),
                         ", ".join(f"{k}×{v}" for k, v in p.get("extra_process_names", {}).items())))
    return rows

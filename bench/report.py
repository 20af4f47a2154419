"""Benchmark reports: the results as JSON, a Markdown table, and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(v: float, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if abs(v) >= 1000:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return f"{s} {unit}".strip()


def _median(xs):
    xs = sorted(x for x in xs if x == x)
    if not xs:
        return float("nan")
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _stats(vals):
    vals = [v for v in vals if v == v]
    if not vals:
        return None
    return {"median": _median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def crr_curve(results: dict) -> dict:
    """target -> [(mappings, {median, min, max}), ...] over the crr_published_N metrics of a run."""
    crr = sorted((int(m.rsplit("_", 1)[1]), rec) for m, rec in results["metrics"].items()
                 if m.startswith("crr_published_"))
    out = {}
    for name in results["targets"]:
        pts = [(n, st) for n, rec in crr if (st := _stats(rec["values"].get(name, [])))]
        if pts:
            out[name] = pts
    return out


def _ratio_cell(r) -> str:
    return f"{r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}]" if r and r["median"] == r["median"] else ""


def mappings_table(results: dict) -> list[str]:
    """Rate per number of mappings per target, and each candidate's ratio to docker0 (or to the
    docker0-equivalent rules where Docker could not take part)."""
    curve = crr_curve(results)
    if not curve:
        return []
    from .design import flatness
    t = results["targets"]
    base = next((n for n, d in t.items() if d["kind"] == "baseline"), None)
    cands = [n for n, d in t.items() if d["kind"] == "candidate" and not d.get("ratio_against")]
    sizes = sorted({n for pts in curve.values() for n, _ in pts})
    names = [n for n in t if n in curve]
    hdr = ["mappings"] + [f"{n} conn/s" for n in names] + [f"{c}/{base}" for c in cands] + \
        [f"{n} vs its 1 mapping" for n in names]
    lines = ["", "## Connection rate vs number of mappings (P3)", "",
             "Median [min–max] over rounds; conn/s are machine-dependent, compare within a row. A ratio "
             "marked † is against the docker0-equivalent rules (the kernel candidate), because "
             f"{base} could not publish that many ports here. The last columns divide each round's rate "
             "by the same round index at 1 mapping (different metrics, not interleaved).", "",
             "| " + " | ".join(hdr) + " |", "|---|" + "---|" * (len(hdr) - 1)]
    for n in sizes:
        mid = f"crr_published_{n}"
        cells = [f"{n:,}"]
        for name in names:
            st = dict(curve[name]).get(n)
            cells.append(f"{_fmt(st['median'])} [{_fmt(st['min'])}–{_fmt(st['max'])}]" if st else "—")
        cols = results["ratios"].get(mid, {})
        for c in cands:
            if f"{c}/{base}" in cols:
                cells.append(_ratio_cell(cols[f"{c}/{base}"]))
            elif f"{c}/kernel" in cols:
                cells.append(_ratio_cell(cols[f"{c}/kernel"]) + " †")
            else:
                cells.append("—")
        for name in names:
            f = flatness(results, name, hi=mid)
            cells.append(_ratio_cell(f) if f else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def macvlan_table(results: dict) -> list[str]:
    """The macvlan row (P12): each dockline macvlan target against the references it names
    (Docker's macvlan driver, the bridge path of the same datapath), per c2c metric."""
    rows = [(n, d["ratio_against"]) for n, d in results["targets"].items() if d.get("ratio_against")]
    if not rows:
        return []
    lines = ["", "## macvlan, container to container on one parent (P12)", "",
             "| metric | " + " | ".join(f"{n}/{ref}" for n, refs in rows for ref in refs) + " |",
             "|---|" + "---|" * sum(len(refs) for _, refs in rows)]
    for mid, rec in results["metrics"].items():
        if rec.get("topology") != "c2c":
            continue
        cells = []
        for n, refs in rows:
            for ref in refs:
                r = results["ratios"].get(mid, {}).get(f"{n}/{ref}")
                cells.append(_ratio_cell(r) if r else "— (not measured)")
        lines.append(f"| {rec['title']} | " + " | ".join(cells) + " |")
    return lines


def design_table(results: dict) -> list[str]:
    rows = results.get("design_targets")
    if not rows:
        return []
    lines = ["", "## Design targets P3 and P4 (shared/design.md §4)", "",
             "| # | target | candidate | measured | verdict | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        v = {"PASS": "**PASS**", "MISS": "**MISS**", "UNRESOLVED": "**UNRESOLVED**"}.get(r["verdict"], r["verdict"])
        lines.append(f"| {r['id']} | {r['target']} | {r['candidate']} | {r['measured']} | {v} | {r['note']} |")
    return lines


def markdown(results: dict) -> str:
    t = results["targets"]
    base = next((n for n, d in t.items() if d["kind"] == "baseline"), None)
    lines = ["# dockline benchmark", "",
             f"Machine: Linux {results['meta']['kernel']}, {results['meta']['cpus']} CPUs; commit "
             f"`{results['meta']['commit']}`; {results['meta']['date']}."
             + (f" Uncommitted edits measured too: {', '.join(results['meta']['uncommitted'])}."
                if results["meta"].get("uncommitted") else "")
             + (f" Load average (1/5/15 min) at start {'/'.join(f'{x:.1f}' for x in results['meta']['loadavg_start'])},"
                f" at end {'/'.join(f'{x:.1f}' for x in results['meta']['loadavg_end'])} (2 CPUs; the benchmark itself keeps about"
                f" one busy, more is other work competing with it)."
                if results["meta"].get("loadavg_end") else ""),
             f"Rounds: {results['settings']['rounds']} interleaved (A B, then B A), "
             f"{results['settings']['duration']} s each. Ratios are medians of per-round ratios "
             f"[min–max], higher is better.", "", "Targets:", ""]
    lines += [f"- **{n}** ({d['kind']}): {d['description']}" for n, d in t.items()]
    if results.get("injected"):
        lines += ["", f"**Injected slowdown**: {results['injected']}"]
    ratio_cols = sorted({k for r in results["ratios"].values() for k in r})
    lines += ["", "## Ratios", "", "| metric | " + " | ".join(ratio_cols) + " |",
              "|---|" + "---|" * len(ratio_cols)]
    for mid, rec in results["metrics"].items():
        cells = []
        for col in ratio_cols:
            r = results["ratios"].get(mid, {}).get(col)
            cells.append(f"{r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}]" if r and r["median"] == r["median"]
                         else "")
        lines.append(f"| {rec['title']} | " + " | ".join(cells) + " |")
    lines += design_table(results)
    lines += macvlan_table(results)
    from .endpoint_costs import table as endpoint_table
    lines += endpoint_table(results)
    from .nat_box import table as nat_box_table
    lines += nat_box_table(results)
    from .host_local import table as host_local_table
    lines += host_local_table(results)
    lines += mappings_table(results)
    names = list(t)
    lines += ["", "## Absolute numbers (medians; they depend on this machine, compare only within a run)", "",
              "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for mid, rec in results["metrics"].items():
        cells = []
        for n in names:
            vals = rec["values"].get(n)
            cell = _fmt(_median(vals), rec["unit"]) if vals else ""
            ex = rec["extras"].get(n, {})
            if "p99_us" in ex:
                cell += f" (p50 {_fmt(_median(ex.get('p50_us', [float('nan')])))} µs, " \
                        f"p99 {_fmt(_median(ex['p99_us']))} µs)" if "p50_us" in ex else \
                        f" (p99 {_fmt(_median(ex['p99_us']))} µs)"
            if sum(x for x in ex.get("errors", []) if x == x):
                cell += f" ({sum(ex['errors']):,} failed connects)"
            cells.append(cell)
        lines.append(f"| {rec['title']} | " + " | ".join(cells) + " |")
        for err in rec.get("errors", []):
            lines.append(f"|  ↳ error: {err} |" + " |" * len(names))
    if results.get("prog_cost"):
        lines += ["", "## Per-program cost (BPF_PROG_TEST_RUN, 50,000 repeats, median of 9 rounds)", "",
                  "| program | ns per packet | trivial program ns | relative cost [min–max] |", "|---|---|---|---|"]
        for prog, c in results["prog_cost"].items():
            lines.append(f"| {prog} | {c['ns']:.0f} | {c['ref_ns']:.0f} | {c['relative']:.2f} "
                         f"[{c['spread'][0]:.2f}–{c['spread'][1]:.2f}] |")
    if results.get("publish_cost") or results.get("publish_cost_errors"):
        lines += ["", "## Publishing ports (P4)", "",
                  "\"one more port\" is (endpoint with one port) − (endpoint without ports), median of alternating "
                  "pairs [min–max] (bootstrap 95 % interval of that median); \"all at once\" is the raw time to create the endpoint with every port, and "
                  "\"net\" subtracts the endpoint without ports. Memory: control-plane (agent, or dockerd + "
                  "docker-proxy PSS) delta plus the machine's Slab delta; processes: new ones still alive 1 s "
                  "later that belong to the target (all new ones machine-wide in brackets).", "",
                  "| target | ports | all at once (raw) | net of the endpoint | one more port | endpoint with one port "
                  "(raw) | endpoint without ports | same, before any port | agent/daemon memory Δ | kernel slab Δ | "
                  "BPF map memlock Δ | extra processes |", "|---|" + "---|" * 11]
        for n, c in results.get("publish_cost", {}).items():
            if "marginal_port_s" not in c:   # a results.json from before bench/publishing.py
                lines.append(f"| {n} | {c['ports']} | {c['bulk_s']:.2f} s | | | {c['one_more_s'] * 1000:.1f} ms | "
                             f"{c['endpoint_without_ports_s'] * 1000:.1f} ms | | {c['agent_rss_delta_mib']:.1f} MiB | "
                             f"{c['slab_delta_mib']:.1f} MiB | | {c['extra_processes']} |")
                continue
            lo, hi = c["marginal_port_spread_s"]
            bpf = c.get("extra_kib", {}).get("bpf_maps_memlock")
            procs = f"{c['extra_processes']} [{c['new_processes_machine']}]"
            if c.get("extra_process_names"):
                procs += " " + ", ".join(f"{k}×{v}" for k, v in c["extra_process_names"].items())
            lines.append(
                f"| {n} | {c['ports']:,} | {c['bulk_s']:.2f} s | {c['bulk_net_s']:.2f} s | "
                f"{c['marginal_port_s'] * 1000:.1f} ms [{lo * 1000:.1f}–{hi * 1000:.1f}]"
                + (f" (95 % CI of the median {c['marginal_port_ci95_s'][0] * 1000:.1f}–"
                   f"{c['marginal_port_ci95_s'][1] * 1000:.1f})" if c.get("marginal_port_ci95_s") else "") + " | "
                f"{c['endpoint_with_one_port_s'] * 1000:.1f} ms (first: {c['one_more_s'] * 1000:.1f} ms) | "
                f"{c['endpoint_without_ports_s'] * 1000:.1f} ms | {c['endpoint_without_ports_empty_host_s'] * 1000:.1f} ms | "
                f"{c['agent_rss_delta_mib']:.1f} MiB | {c['slab_delta_mib']:.1f} MiB | "
                f"{'' if bpf is None else f'{bpf / 1024:.1f} MiB'} | {procs} |")
        for n, e in results.get("publish_cost_errors", {}).items():
            lines.append(f"| {n} | error: {e} |" + " |" * 10)
    if base:
        lines += ["", f"Baseline **{base}**: {t[base]['description']}."]
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path) -> list[Path]:
    made = []
    # 1. ratios with spread
    def title(m):
        return results["metrics"][m]["title"] if m in results["metrics"] else m.replace("_", " ")

    rows = [(title(m), col, r) for m, cols in results["ratios"].items()
            for col, r in cols.items() if r["median"] == r["median"]]
    if rows:
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
        labels = [f"{title}\n{col}" for title, col, _ in rows]
        med = [r["median"] for _, _, r in rows]
        err = [[r["median"] - r["min"] for _, _, r in rows], [r["max"] - r["median"] for _, _, r in rows]]
        ax.barh(range(len(rows)), med, xerr=err, color=["#4c72b0" if "/loopback" not in c else "#dd8452"
                                                          for _, c, _ in rows], capsize=3)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ratio (median, min–max over rounds; > 1 = candidate better)")
        ax.set_title("dockline vs baseline and ceiling")
        fig.tight_layout()
        p = out / "ratios.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    # 2. connection rate against the number of published ports
    crr = crr_curve(results)
    if len({n for pts in crr.values() for n, _ in pts}) > 1:   # a curve needs two sizes at least
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for name, pts in crr.items():
            xs = [n for n, _ in pts]
            med = [st["median"] for _, st in pts]
            err = [[st["median"] - st["min"] for _, st in pts], [st["max"] - st["median"] for _, st in pts]]
            ax.errorbar(xs, med, yerr=err, marker="o", capsize=4, label=f"{name} ({results['targets'][name]['kind']})")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("published ports on the host (log scale; the measured port is published last)")
        ax.set_ylabel("new connections/s (median, bars: min–max over rounds)")
        ax.set_title("Connection rate to a published port vs number of mappings")
        base = next((n for n, d in results["targets"].items() if d["kind"] == "baseline"), None)
        if base in crr and len(crr[base]) < max(len(v) for v in crr.values()):
            ax.annotate(f"{base} measured up to {crr[base][-1][0]:,} mappings"
                        + ("; beyond, kernel (Docker's iptables rule shape) stands in for it" if "kernel" in crr else ""),
                        xy=(0.02, 0.02), xycoords="axes fraction", fontsize=7)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        p = out / "crr_vs_mappings.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    # 3. absolute medians per metric, one panel each
    mids = [m for m in results["metrics"] if not m.startswith("crr_published_")]
    if mids:
        fig, axes = plt.subplots(1, len(mids), figsize=(3 * len(mids), 3.5))
        axes = [axes] if len(mids) == 1 else axes
        for ax, m in zip(axes, mids):
            rec = results["metrics"][m]
            names = [n for n in results["targets"] if n in rec["values"]]
            ax.bar(names, [_median(rec["values"][n]) for n in names], color="#55a868")
            ax.set_title(m, fontsize=9)
            ax.set_ylabel(rec["unit"], fontsize=8)
            ax.tick_params(labelsize=7)
        fig.suptitle("absolute medians (machine-dependent)", fontsize=9)
        fig.tight_layout()
        p = out / "absolute.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    from .nat_box import plot as nat_box_plot
    nat_png = nat_box_plot(results, out)
    if nat_png:
        made.append(nat_png)
    return made


def write(results: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    (out / "report.md").write_text(markdown(results))
    pngs = plots(results, out)
    return {"json": out / "results.json", "markdown": out / "report.md", "plots": pngs}

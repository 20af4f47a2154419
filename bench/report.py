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


def markdown(results: dict) -> str:
    t = results["targets"]
    base = next((n for n, d in t.items() if d["kind"] == "baseline"), None)
    lines = ["# dockline benchmark", "",
             f"Machine: Linux {results['meta']['kernel']}, {results['meta']['cpus']} CPUs; commit "
             f"`{results['meta']['commit']}`; {results['meta']['date']}.",
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
    if results.get("publish_cost"):
        lines += ["", "## Publishing ports", "", "| target | ports | all at once | one more | endpoint alone | "
                  "agent/daemon memory Δ | kernel slab Δ | extra processes |", "|---|---|---|---|---|---|---|---|"]
        for n, c in results["publish_cost"].items():
            lines.append(f"| {n} | {c['ports']} | {c['bulk_s']:.2f} s | {c['one_more_s'] * 1000:.1f} ms | "
                         f"{c['endpoint_without_ports_s'] * 1000:.1f} ms | {c['agent_rss_delta_mib']:.1f} MiB | "
                         f"{c['slab_delta_mib']:.1f} MiB | {c['extra_processes']} |")
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
    crr = sorted((int(m.rsplit("_", 1)[1]), rec) for m, rec in results["metrics"].items()
                 if m.startswith("crr_published_"))
    if len(crr) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in results["targets"]:
            pts = [(n, _median(rec["values"][name])) for n, rec in crr if name in rec["values"]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("published ports on the host")
        ax.set_ylabel("new connections/s (median)")
        ax.set_title("Connection rate to a published port vs NAT table size")
        ax.legend()
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
    return made


def write(results: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    (out / "report.md").write_text(markdown(results))
    pngs = plots(results, out)
    return {"json": out / "results.json", "markdown": out / "report.md", "plots": pngs}

"""``dockline bench``: run the benchmark suite (or its quick subset), write the report, and with
``--check`` act as the regression gate. Exit codes: 0 ok, 1 regression, 2 bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import gate, report
from .runner import QUICK_METRICS, Run, Settings, default_targets, known_metric_ids


def usable_candidates() -> list[str]:
    """Every dockline backend whose probe passes here, best first."""
    from ..control.datapath import probe
    return [name for name, (ok, _) in probe().items() if ok]


def run_bench(out: str, quick: bool = False, rounds: int | None = None, duration: float | None = None,
              metrics: list[str] | None = None, candidates: list[str] | None = None, baseline: str = "auto",
              check: str | None = None, tolerance: float | None = None, write_baseline: str | None = None,
              inject_slowdown: float = 0.0, as_json: bool = False, macvlan: bool = False,
              endpoints: int = 0, nat_box: str | None = None, host_local: bool = False) -> int:
    console = Console(stderr=True)
    unknown = sorted(set(metrics or ()) - set(known_metric_ids()))
    if unknown:   # a typo must not quietly measure nothing
        console.print(f"[red]unknown metric(s): {', '.join(unknown)}; known: {', '.join(known_metric_ids())}[/]")
        return 2
    settings = Settings(rounds=rounds or (3 if quick else 5), duration=duration or (1.0 if quick else 3.0),
                        metric_ids=tuple(metrics or (QUICK_METRICS if quick else ())),
                        inject_slowdown=inject_slowdown)
    candidates = tuple(candidates or usable_candidates())
    targets = default_targets(candidates, baseline, macvlan=macvlan)
    results = Run(targets, settings, console).execute()
    if endpoints:
        from . import endpoint_costs
        results["endpoint_costs"] = endpoint_costs.measure(candidates, endpoints, rounds=max(20, settings.rounds * 6),
                                                           console=console)
    if nat_box:
        from . import nat_box as box
        counts = tuple(int(x) for x in nat_box.split(","))
        results["nat_box"] = box.measure(counts, rounds=settings.rounds, duration=settings.duration, console=console)
    if host_local:
        from . import host_local as hl
        results["host_local"] = hl.measure(rounds=max(4, settings.rounds), duration=settings.duration, console=console)
    outdir = Path(out)
    files = report.write(results, outdir)
    console.print(f"report: {files['markdown']}  data: {files['json']}  plots: "
                  + ", ".join(str(p) for p in files["plots"]))
    if write_baseline:
        Path(write_baseline).write_text(json.dumps(gate.baseline_from(results, tolerance or gate.DEFAULT_TOLERANCE),
                                                   indent=2, sort_keys=True))
        console.print(f"gate baseline written to {write_baseline}")
    if not check:
        if as_json:
            print(json.dumps(results["ratios"], indent=2))
        else:
            print(report.markdown(results))
        return 0

    base = gate.load_baseline(Path(check))
    rows = gate.compare(results, base, tolerance)
    failing = sorted({r["metric"] for r in rows if not r["ok"]})
    if failing:   # measure the regressed metrics again before failing anyone
        console.print(f"[yellow]below tolerance: {', '.join(failing)}; measuring them again[/]")
        again = Run(default_targets(candidates, baseline, macvlan=macvlan),
                    Settings(rounds=settings.rounds, duration=settings.duration, metric_ids=tuple(failing),
                             inject_slowdown=inject_slowdown), console).execute()
        rows2 = {(r["metric"], r["ratio"]): r for r in gate.compare(again, base, tolerance)}
        for r in rows:
            if not r["ok"]:
                r2 = rows2.get((r["metric"], r["ratio"]))
                r["retry"] = r2["current"] if r2 else None
                r["ok"] = bool(r2 and r2["ok"])
    results["gate"] = rows
    (outdir / "gate.json").write_text(json.dumps(rows, indent=2))
    if as_json:
        print(json.dumps({"ok": all(r["ok"] for r in rows), "rows": rows}, indent=2))
    else:
        t = Table(title=f"regression gate vs {check}")
        for c in ("metric", "ratio", "baseline", "floor", "current", "retry", "verdict"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["metric"], r["ratio"], f"{r['baseline']:.3f}", f"{r['floor']:.3f}", f"{r['current']:.3f}",
                      "" if r.get("retry") is None else f"{r['retry']:.3f}",
                      "[green]ok[/]" if r["ok"] else "[red]REGRESSED[/]")
        Console().print(t)
    bad = [r for r in rows if not r["ok"]]
    if not rows:
        console.print("[red]the gate compared nothing: the baseline and this run share no ratio[/]")
        return 1
    for r in bad:
        console.print(f"[red]regressed: {r['metric']} {r['ratio']} = {r['current']:.3f} "
                      f"(retry {r.get('retry')}), floor {r['floor']:.3f} (baseline {r['baseline']:.3f})[/]")
    return 1 if bad else 0

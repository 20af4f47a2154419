"""The performance-regression gate: compare the ratios of a quick run against a committed baseline.

A metric regresses when its median ratio falls more than ``tolerance`` (a fraction) below the
baseline's. A regressed metric is measured again (a noisy machine must not block a good change);
only a metric that regresses twice fails the gate. Ratios, not absolute numbers, are compared:
both sides of a ratio were measured in the same run, interleaved.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Default tolerance. bench/README.md records the run-to-run spread that justifies it.
DEFAULT_TOLERANCE = 0.20


def load_baseline(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    return data.get("gate", data)


def baseline_from(results: dict, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """The gate file written by ``dockline bench --quick --write-baseline``."""
    return {"gate": {"tolerance": tolerance, "meta": results["meta"], "targets": results["targets"],
                     "ratios": {m: {k: v["median"] for k, v in r.items()} for m, r in results["ratios"].items()}}}


def compare(results: dict, baseline: dict, tolerance: float | None = None) -> list[dict]:
    """Every (metric, ratio) present in both, with its verdict."""
    tol = baseline.get("tolerance", DEFAULT_TOLERANCE) if tolerance is None else tolerance
    rows = []
    for mid, cols in baseline["ratios"].items():
        for col, want in cols.items():
            got = results["ratios"].get(mid, {}).get(col)
            numerator = col.split("/")[0]
            if got is None or baseline["targets"].get(numerator, {}).get("kind") != "candidate":
                continue   # only our datapaths are gated, not docker0 against the ceiling
            floor = want * (1 - tol)
            ok = got["median"] == got["median"] and got["median"] >= floor
            rows.append({"metric": mid, "ratio": col, "baseline": want, "current": got["median"],
                         "floor": floor, "spread": [got["min"], got["max"]], "ok": ok})
    return rows

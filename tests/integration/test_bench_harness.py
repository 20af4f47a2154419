"""The benchmark harness itself: topologies are built and removed, reports are written, and the
gate passes an unchanged datapath and fails a really slowed-down one. No speed is asserted.

      docker0-equivalent host ─┐     kernel host ─┐      loopback netns
      (agent + bridge)         │     (agent)      │      (127.0.0.1)
      outside netns ───────────┘     outside ─────┘
"""

import json
import struct

import pytest

from dockline.bench import gate, report, targets
from dockline.bench.main import run_bench
from dockline.bench.runner import Run, Settings
from dockline.bench.targets import DocklineTarget, LoopbackTarget
from dockline.control.netlink import netns
from dockline.control.sim.simhost import SimHost

pytestmark = pytest.mark.root


def tiny_run(tmp_path, metric_ids=("rr",), **kw):
    return Run(tiny_targets(), Settings(rounds=2, duration=0.5, metric_ids=metric_ids, **kw)).execute()


def tiny_targets():
    return [DocklineTarget("kernel", name="docker0", kind="baseline", description="equivalent"),
            DocklineTarget("kernel"), LoopbackTarget()]


def test_topologies_are_built_measured_and_removed(tmp_path, monkeypatch):
    # Only this run's namespaces are checked: other test sessions on the machine make and remove
    # their own meanwhile, so a machine-wide before/after comparison would judge them too.
    hosts = []

    class RecordedSimHost(SimHost):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            hosts.append(self)

    monkeypatch.setattr(targets, "SimHost", RecordedSimHost)
    built = tiny_targets()
    res = Run(built, Settings(rounds=2, duration=0.5, metric_ids=("rr", "crr_published_1", "udp_pps"))).execute()
    loopback_ns = {t.ns for t in built if isinstance(t, LoopbackTarget)}
    assert len(hosts) == 2 and len(loopback_ns) == 1
    ours = {ns for ns in netns.list_netns() if ns in loopback_ns or any(
        ns in (h.host_ns, h.out_ns) or ns.startswith(f"dl-{h.name}-") for h in hosts)}
    assert not ours, f"the run left namespaces behind: {sorted(ours)}"
    for mid in ("rr", "crr_published_1", "udp_pps"):
        rec = res["metrics"][mid]
        assert not rec.get("errors"), rec.get("errors")
        assert all(len(v) == 2 and all(x > 0 for x in v) for v in rec["values"].values())
    assert set(res["ratios"]["rr"]) == {"kernel/docker0", "kernel/loopback", "docker0/loopback"}
    assert "kernel/loopback" not in res["ratios"]["crr_published_1"]   # no ceiling for NAT paths
    r = res["ratios"]["rr"]["kernel/docker0"]
    assert r["min"] <= r["median"] <= r["max"] and len(r["per_round"]) == 2


def test_report_files(tmp_path):
    res = tiny_run(tmp_path)
    files = report.write(res, tmp_path / "out")
    md = files["markdown"].read_text()
    assert "| 1-byte TCP request/response rate (c2c) |" in md and "kernel/docker0" in md
    assert json.loads(files["json"].read_text())["ratios"]["rr"]
    assert files["plots"]
    for png in files["plots"]:
        head = png.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        w, h = struct.unpack(">II", head[16:24])
        assert w > 200 and h > 100


def synthetic(median):
    return {"ratios": {"rr": {"kernel/docker0": {"median": median, "min": median, "max": median}}}}


def test_gate_compare_logic():
    base = {"tolerance": 0.15, "targets": {"kernel": {"kind": "candidate"}, "docker0": {"kind": "baseline"}},
            "ratios": {"rr": {"kernel/docker0": 1.0, "docker0/loopback": 0.7}}}
    (row,) = gate.compare(synthetic(0.9), base)       # docker0/loopback is not ours: not gated
    assert row["ok"] and row["floor"] == pytest.approx(0.85)
    (row,) = gate.compare(synthetic(0.7), base)
    assert not row["ok"]
    assert gate.compare({"ratios": {}}, base) == []


def test_gate_catches_an_injected_slowdown(tmp_path):
    """A real 50% slowdown (netem on the candidate's server veths) must fail the gate, and the
    same gate must pass the unchanged datapath. The baseline here is one quick run (not the
    median of five, as bench/baseline.json is), so the gate is given 30% instead of 15%: one
    quick run of crr_published_1 swung 1.30 -> 0.82 -> 1.05 on this VM."""
    base_file = tmp_path / "baseline.json"
    common = dict(quick=True, rounds=3, duration=1.0, metrics=["rr", "crr_published_1"], baseline="equivalent",
                  tolerance=0.3)
    assert run_bench(str(tmp_path / "a"), write_baseline=str(base_file), **common) == 0
    assert run_bench(str(tmp_path / "b"), check=str(base_file), **common) == 0
    assert run_bench(str(tmp_path / "c"), check=str(base_file), inject_slowdown=0.5, **common) == 1
    rows = json.loads((tmp_path / "c" / "gate.json").read_text())
    assert {r["metric"] for r in rows if not r["ok"]} >= {"rr"}

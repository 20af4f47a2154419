"""The macvlan row of `dockline bench` (P12): its candidates are ratioed against the references
they name (Docker's macvlan driver, the bridge path), never against docker0."""

from dockline.bench import report
from dockline.bench.runner import Run, Settings
from dockline.bench.targets import MacvlanTarget, Target


class Fake(Target):
    def __init__(self, name, kind):
        self.name, self.kind = name, kind

    def build(self, tmpdir): ...

    def teardown(self): ...

    def c2c(self): ...


def test_macvlan_candidates_are_ratioed_against_their_references_only():
    mv = MacvlanTarget("kernel")
    assert mv.name == "macvlan-kernel" and mv.ratio_against == ("docker-macvlan", "kernel")
    assert mv.published(1) is None and mv.egress() is None
    run = Run([Fake("docker0", "baseline"), Fake("kernel", "candidate"), Fake("docker-macvlan", "reference"),
               mv], Settings())
    run.results["metrics"]["rr"] = {"title": "rr", "topology": "c2c",
                                    "values": {"docker0": [1.0, 1.0], "kernel": [2.0, 2.0],
                                               "docker-macvlan": [1.0, 2.0], "macvlan-kernel": [3.0, 3.0]}}
    run._ratios()
    r = run.results["ratios"]["rr"]
    assert r["kernel/docker0"]["median"] == 2.0
    assert r["macvlan-kernel/docker-macvlan"]["per_round"] == [3.0, 1.5]
    assert r["macvlan-kernel/kernel"]["median"] == 1.5
    assert "macvlan-kernel/docker0" not in r and "docker-macvlan/docker0" not in r
    run.results["targets"] = {"macvlan-kernel": {"kind": "candidate", "description": "",
                                                 "ratio_against": list(mv.ratio_against)}}
    table = "\n".join(report.macvlan_table(run.results))
    assert "macvlan-kernel/docker-macvlan" in table and "| rr |" in table

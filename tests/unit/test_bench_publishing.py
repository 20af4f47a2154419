"""bench/publishing.measure's pairs and bench/design's P4 verdicts, on scripted timings: more
pairs are measured only while the interval of the marginal cost contains the limit, the
control plane's own step times are summarised, and the verdict is PASS/MISS/UNRESOLVED by the
final interval. No agent, no namespace."""

import itertools

import pytest

from dockline.bench import design, publishing


class Scripted:
    """Callbacks whose endpoint creations "take" the scripted times (with port, without)."""

    def __init__(self, with_port, without):
        self.times = {True: iter(with_port), False: iter(without)}
        self.last = None

    def callbacks(self):
        return publishing.Callbacks(create=self.create, remove=lambda *names: None, memory_kib=lambda: 1000,
                                    owned_pids=set, last_apply=lambda: self.last)

    def create(self, name, ports):
        self.last = {"seconds": 0.0004 if ports else 0.0003}


@pytest.fixture
def scripted(monkeypatch):
    def make(with_port, without):
        s = Scripted(with_port, without)
        # bulk, one more and the warm-up creations are timed too: they take 0
        seq = {"n": 0}

        def timed(f, name, ports):
            f(name, ports)
            seq["n"] += 1
            if seq["n"] <= 3 or name == "cost":     # warm-up, bare empty, bulk, first one more
                return 0.0
            return next(s.times[bool(ports)])
        monkeypatch.setattr(publishing, "_timed", timed)
        monkeypatch.setattr(publishing.time, "sleep", lambda s: None)
        monkeypatch.setattr(publishing, "slab_kib", lambda: 0)
        return s
    return make


def test_a_clear_cost_stops_after_the_first_pairs(scripted):
    s = scripted(itertools.repeat(0.100), itertools.repeat(0.090))        # 10 ms: a clear MISS
    r = publishing.measure(10, s.callbacks(), repeats=21)
    assert r["repeats"] == 21 and r["looks"] == 1
    assert r["marginal_port_s"] == pytest.approx(0.010)
    assert r["control_plane_step_s"]["marginal"] == pytest.approx(0.0001)


def test_pairs_are_added_while_the_interval_contains_the_limit(scripted):
    # noisy first pairs (differences -20 .. +24 ms), then quiet ones 1 ms apart
    noisy = [0.100 + d / 1000 for d in (-20, 24, -15, 18, -10, 22, -18, 20, 1, -12, 16, 2, 19, -17, 21, -14, 23, 3, -16, 17, 0)]
    s = scripted(noisy + [0.101] * 100, [0.100] * 200)
    r = publishing.measure(10, s.callbacks(), repeats=21, max_repeats=61, step=10)
    assert r["looks"] > 1 and 21 < r["repeats"] <= 61
    lo, hi = r["marginal_port_ci95_s"]
    assert hi <= design.P4_ONE_S or r["repeats"] == 61
    assert len(r["per_repeat"]["with_one_port_s"]) == r["repeats"]


def test_the_number_of_pairs_is_capped(scripted):
    wide = [0.100 + d / 1000 for d in itertools.islice(itertools.cycle((-30, 40, 5, -25, 35)), 200)]
    s = scripted(wide, [0.100] * 200)
    r = publishing.measure(10, s.callbacks(), repeats=21, max_repeats=41, step=10)
    assert r["repeats"] == 41 and r["looks"] == 3
    assert publishing.unresolved(r["marginal_port_ci95_s"], design.P4_ONE_S)


@pytest.mark.parametrize("ci, verdict", [([-0.002, 0.004], "PASS"), ([0.006, 0.009], "MISS"),
                                         ([0.001, 0.008], "UNRESOLVED"), ([-0.001, 0.005], "PASS")])
def test_p4_verdict_follows_the_final_interval(ci, verdict):
    p = {"ports": 10000, "bulk_s": 0.3, "bulk_net_s": 0.2, "endpoint_without_ports_s": 0.08,
         "one_more_s": 0.08, "marginal_port_s": sum(ci) / 2, "marginal_port_spread_s": [-0.01, 0.01],
         "marginal_port_ci95_s": ci, "endpoint_with_one_port_s": 0.081, "repeats": 31, "looks": 2,
         "limit_s": 0.005, "agent_rss_delta_mib": 4.0, "slab_delta_mib": 1.0, "extra_processes": 0,
         "new_processes_machine": 0, "control_plane_report": {"one_more": {"seconds": 0.0003}},
         "control_plane_step_s": {"with_one_port": 0.0004, "without_ports": 0.0003, "marginal": 0.0001}}
    results = {"targets": {"ebpf": {"kind": "candidate"}}, "metrics": {}, "ratios": {},
               "publish_cost": {"ebpf": p}}
    row = next(r for r in design.check(results) if r["target"] == "one more ≤ 5 ms")
    assert row["verdict"] == verdict
    assert "31 alternating pairs (measured in 2 steps" in row["note"]
    assert "0.40 ms with the port, 0.30 ms without" in row["note"]

"""Per-packet costs (pytest-benchmark): the VXLAN codec twins (Cython and pure Python), and the
BPF programs under BPF_PROG_TEST_RUN (each benchmark call runs the program 1,000 times in the
kernel; ``extra_info`` has the kernel's ns per run). Every benchmark checks the result of what it
timed: the bytes the codec produced, the verdict the program returned and counted."""

import os

import pytest

from dockline.fastpath import IMPLEMENTATIONS

INNER = bytes.fromhex("02420a590003" "02420a590002" "0800") + bytes(1386)
ENCAP_ARGS = (42, b"\x02" * 6, b"\x04" * 6, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
PER_CALL = 1000     # in-kernel repetitions per benchmark call of a BPF program


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root for BPF_PROG_TEST_RUN")


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_vxlan_encap(benchmark, impl):
    mod = IMPLEMENTATIONS[impl]
    out = benchmark(mod.encap, INNER, *ENCAP_ARGS)
    assert len(out) == len(INNER) + mod.OUTER_HLEN
    # the twins write the same frame, and it decodes back to what went in
    assert all(other.encap(INNER, *ENCAP_ARGS) == out for other in IMPLEMENTATIONS.values())
    assert mod.decap(out) == (42, INNER)


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_vxlan_decap(benchmark, impl):
    mod = IMPLEMENTATIONS[impl]
    frame = mod.encap(INNER, *ENCAP_ARGS)
    vni, inner = benchmark(mod.decap, frame)
    assert vni == 42 and inner == INNER


def test_tc_from_endpoint_per_packet(benchmark):
    """tc_from_endpoint on a frame between two endpoints of one network (the fast path into the
    peer): its per-packet cost, and that every repetition redirected the frame unchanged and was
    counted as REDIRECT_PEER. (Moved here from tests/ebpf/test_tc_endpoint.py, which keeps the
    behaviour and no longer times anything.)"""
    needs_root()
    from dockline.bench.prog_cost import TC_ACT_REDIRECT, loaded
    from dockline.control.datapath.bpf_structs import Verdict
    from dockline.control.datapath.prog_run import prog_test_run

    def counted(verdicts):
        vals = verdicts.lookup(int(Verdict.REDIRECT_PEER)) or []
        return sum(v.packets for v in vals), sum(v.bytes for v in vals)

    with loaded() as env:
        fd, pkt = env["fds"]["tc_from_endpoint"], env["packet"]
        before = counted(env["verdicts"])
        results = []
        benchmark.pedantic(lambda: results.append(prog_test_run(fd, pkt, repeat=PER_CALL)),
                           rounds=20, iterations=1, warmup_rounds=1)
        packets, nbytes = (a - b for a, b in zip(counted(env["verdicts"]), before))
    assert {(r.retval, r.out) for r in results} == {(TC_ACT_REDIRECT, pkt)}
    assert (packets, nbytes) == (len(results) * PER_CALL, len(results) * PER_CALL * len(pkt))
    assert all(r.duration_ns > 0 for r in results)
    benchmark.extra_info["ns_per_packet"] = sorted(r.duration_ns for r in results)[len(results) // 2]


def test_bpf_program_cost(benchmark):
    """The P9 measurement itself (bench/prog_cost.py), with each program on its intended path."""
    needs_root()
    from dockline.bench.prog_cost import EXPECTED_RETVAL, measure
    cost = benchmark.pedantic(measure, kwargs={"rounds": 3}, rounds=1, iterations=1)
    benchmark.extra_info.update({p: c["ns"] for p, c in cost.items()})
    assert {p: c["retvals"] for p, c in cost.items()} == {p: [v] for p, v in EXPECTED_RETVAL.items()}
    assert all(c["ns"] > 0 and c["ref_ns"] > 0 and c["spread"][0] <= c["relative"] <= c["spread"][1]
               for c in cost.values())

"""Per-packet costs (pytest-benchmark): the VXLAN codec twins (Cython and pure Python), and the
BPF programs under BPF_PROG_TEST_RUN (each benchmark call runs the program 1,000 times in the
kernel; ``extra_info`` has the kernel's ns per run)."""

import os

import pytest

from dockline.fastpath import IMPLEMENTATIONS

INNER = bytes.fromhex("02420a590003" "02420a590002" "0800") + bytes(1386)


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_vxlan_encap(benchmark, impl):
    mod = IMPLEMENTATIONS[impl]
    out = benchmark(mod.encap, INNER, 42, b"\x02" * 6, b"\x04" * 6, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
    assert len(out) == len(INNER) + mod.OUTER_HLEN


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_vxlan_decap(benchmark, impl):
    mod = IMPLEMENTATIONS[impl]
    frame = mod.encap(INNER, 42, b"\x02" * 6, b"\x04" * 6, bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
    vni, inner = benchmark(mod.decap, frame)
    assert vni == 42 and inner == INNER


def test_bpf_program_cost(benchmark):
    if os.geteuid() != 0:
        pytest.skip("needs root for BPF_PROG_TEST_RUN")
    from dockline.bench.prog_cost import measure
    cost = benchmark.pedantic(measure, kwargs={"rounds": 3}, rounds=1, iterations=1)
    benchmark.extra_info.update({p: c["ns"] for p, c in cost.items()})
    assert cost["tc_from_endpoint"]["ns"] > 0

"""control/nat/select.py (the twin of ebpf/lib/nat_select.h) against what the kernel's own NAT
picked. The vectors were recorded on this project's VM (Linux 6.18, iptables 1.8.9 nf_tables)
by sending UDP from one namespace through iptables rules and capturing what arrived in another;
tests/integration/nat_corpus/ranges.rules checks the same behaviour against live iptables, and
tests/ebpf/test_nat_rules_diff.py ("ranges") the BPF program against this module."""

from __future__ import annotations

import random

import pytest

from dockline.control.nat import select

# -j DNAT --to-destination 10.9.0.10-10.9.0.29: (client, original destination) -> picked
DNAT_RANGE = [
    (("10.9.0.50", "10.9.0.99"), "10.9.0.19"), (("10.9.0.51", "10.9.0.98"), "10.9.0.28"),
    (("10.9.0.52", "10.9.0.97"), "10.9.0.14"), (("10.9.0.53", "10.9.0.96"), "10.9.0.25"),
    (("10.9.0.54", "10.9.0.95"), "10.9.0.15"), (("10.9.0.55", "10.9.0.94"), "10.9.0.16"),
    (("10.9.0.56", "10.9.0.93"), "10.9.0.29"), (("10.9.0.57", "10.9.0.99"), "10.9.0.25"),
    (("10.9.0.50", "10.9.0.96"), "10.9.0.22"), (("10.9.0.52", "10.9.0.94"), "10.9.0.10"),
]
# -j SNAT --to-source 10.9.0.50-10.9.0.59 from 10.9.0.1: destination -> picked source
SNAT_RANGE = [("10.9.0.10", "10.9.0.55"), ("10.9.0.11", "10.9.0.58"), ("10.9.0.12", "10.9.0.51"),
              ("10.9.0.13", "10.9.0.57"), ("10.9.0.18", "10.9.0.54"), ("10.9.0.25", "10.9.0.59"),
              ("10.9.0.26", "10.9.0.50"), ("10.9.0.29", "10.9.0.53")]


@pytest.mark.parametrize("tup,want", DNAT_RANGE)
def test_dnat_address_range_picks_what_the_kernel_picks(tup, want):
    assert str(select.pick_addr(*tup, "10.9.0.10", "10.9.0.29")) == want


@pytest.mark.parametrize("dst,want", SNAT_RANGE)
def test_snat_address_range_picks_what_the_kernel_picks(dst, want):
    assert str(select.snat_addr("10.9.0.1", dst, "10.9.0.50", "10.9.0.59")) == want


def test_snat_keeps_a_source_already_in_the_range():
    assert str(select.snat_addr("10.9.0.52", "10.9.0.10", "10.9.0.50", "10.9.0.59")) == "10.9.0.52"
    # ... unless the target has ports and the source port is outside them: then hashed
    assert str(select.snat_addr("10.9.0.52", "10.9.0.10", "10.9.0.50", "10.9.0.59", sport=80,
                                ports=(2000, 2099))) == str(select.pick_addr("10.9.0.52", "10.9.0.10",
                                                                              "10.9.0.50", "10.9.0.59"))


def test_one_address_is_that_address():
    assert str(select.pick_addr("1.2.3.4", "5.6.7.8", "10.0.0.1")) == "10.0.0.1"
    assert str(select.pick_addr("1.2.3.4", "5.6.7.8", "10.0.0.1", "10.0.0.1")) == "10.0.0.1"


def test_dnat_ports_shifted_map():
    # --to-destination 10.9.0.2:2000-2099/1000: the kernel sent 1000->2000, 1050->2050,
    # 1150->2050, 999->2035 (the offset wraps in 16 bits), 5000->2000
    got = [select.dnat_port(p, 2000, 2099, 1000) for p in (1000, 1050, 1150, 999, 5000)]
    assert got == [2000, 2050, 2050, 2035, 2000]
    # --to-destination :2000-2099/5 for --dport 9: 2004
    assert select.dnat_port(9, 2000, 2099, 5) == 2004


def test_dnat_ports_keep_the_original_inside_the_range_else_the_first():
    # --to-destination 10.9.0.2:2000-2099: 2050 stayed 2050; 1000 and 3000 became 2000
    assert [select.dnat_port(p, 2000, 2099) for p in (2050, 1000, 3000, 2000, 2099)] == [2050, 2000, 2000, 2000, 2099]


def test_snat_ports_shifted_map_and_range():
    # --to-source 10.9.0.1:2000-2099/1000 (base 0 in the kernel): sport 1000->2000, 1050->2050, 999->2099
    assert [select.snat_port(p, 2000, 2099, 0) for p in (1000, 1050, 999)] == [2000, 2050, 2099]
    assert select.snat_port(2042, 2000, 2099) == 2042
    rng = random.Random(1)
    picks = {select.snat_port(80, 2000, 2099, rng=rng) for _ in range(200)}
    assert picks <= set(range(2000, 2100)) and len(picks) > 50     # random, not the lowest port


def test_jhash2_known_value():
    # jhash2 of no words is its initial value: 0xdeadbeef + initval
    assert select.jhash2([], 1) == 0xDEADBEF0

"""control/protocols.py is the one protocol table: its numbers are the kernel's IPPROTO_*, its two
directions agree, and the NAT rules, the eBPF datapath and conntrack listings use it."""

from __future__ import annotations

import socket

from dockline.control import protocols
from dockline.control.nat import managed
from dockline.control.nat import rules


def test_numbers_are_the_kernels():
    assert protocols.NUMBERS == {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP,
                                 "icmp": socket.IPPROTO_ICMP}
    assert (protocols.TCP, protocols.UDP, protocols.ICMP) == (6, 17, 1)


def test_both_directions_agree():
    assert {protocols.number(n): n for n in protocols.NUMBERS} == protocols.NAMES
    assert all(protocols.name(protocols.number(n)) == n for n in protocols.NUMBERS)
    assert protocols.name(47) == "47"           # no name: the number, as conntrack shows it
    assert protocols.PORT_NUMBERS == {6, 17}


def test_the_nat_rules_use_the_table():
    assert rules.PROTO_NUMBERS is protocols.NUMBERS
    assert rules.PROTOCOLS == ("tcp", "udp", "icmp")
    assert rules.PORT_PROTOCOLS == protocols.PORT_PROTOCOLS
    assert [rules._norm_proto(p) for p in ("6", "17", "1", "0", "UDP")] == ["tcp", "udp", "icmp", None, "udp"]


def test_published_ports_list_with_the_tables_names():
    listed = managed.published_as_rules({("0.0.0.0", 8080, protocols.UDP): ("10.0.0.2", 53)})
    assert [r.proto for r in listed] == ["udp"]

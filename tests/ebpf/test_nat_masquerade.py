"""MASQUERADE / SNAT through the programs (inside the private netns of tests/ebpf/natenv.py):
c1 -> outside leaves with up0's address (nat_ifaddr), the answer comes back into c1; source-port
allocation (keep, collide, exhaust, host sockets); the bpf_redirect_neigh route."""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.packet import Raw

from dockline.control.datapath import bpf_structs as S

from .harness import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX, Tuple
from .natenv import (assert_tracked_untranslated, C1, C2, CLIENT, HOST_IP, MASQUERADE, TCP_P, UDP_P, assert_bytes, ct_pair_of,
                     ct_tuples, from_c1, from_outside, rewritten, ruleset, to_c1, to_outside)

pytestmark = pytest.mark.root


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_masquerade_keeps_a_free_port_and_the_answer_comes_back(world, proto):
    m = world.maps
    world.rules(MASQUERADE)
    number = TCP_P if proto == "tcp" else UDP_P
    out_l4 = TCP(sport=40000, dport=443, flags="S") if proto == "tcp" else UDP(sport=40000, dport=53) / Raw(b"q")
    dport = 443 if proto == "tcp" else 53
    first = from_c1(out_l4)
    rv, out = world.endpoint(bytes(first))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_outside(first, src=HOST_IP))
    assert m.moved_verdicts() == {"NAT_REDIRECT": (1, len(first))}
    assert m.nat_counter_table() == {"CT_NEW": 1}
    orig = Tuple(C1.ip, CLIENT, 40000, dport, number)
    assert ct_tuples(m) == ct_pair_of(orig, Tuple(HOST_IP, CLIENT, 40000, dport, number))
    assert {e.kind for e in m.ct_table().values()} == {S.CT_K_SNAT}

    back_l4 = (TCP(sport=443, dport=40000, flags="SA") if proto == "tcp"
               else UDP(sport=53, dport=40000) / Raw(b"answer"))
    back = from_outside(back_l4)
    rv, out = world.uplink(bytes(back))
    assert rv == TC_ACT_REDIRECT                     # bpf_redirect_peer into c1
    assert_bytes(out, to_c1(back, dst=C1.ip))
    assert m.moved_verdicts() == {"NAT_REDIRECT": (2, len(first) + len(back))}
    assert {e.state for e in m.ct_table().values()} == {S.CT_ST_ESTABLISHED}


def test_traffic_inside_the_network_is_not_masqueraded(world):
    """c1 -> c2 via the gateway: POSTROUTING sees -o br-n, so no translation; the endpoint's own
    verdict (pass to the host, since it is addressed to the gateway MAC)."""
    world.rules(MASQUERADE)
    pkt = bytes(from_c1(TCP(sport=40000, dport=80, flags="S"), dst=C2.ip))
    assert world.endpoint(pkt) == (TC_ACT_OK, pkt)
    assert world.maps.moved_verdicts() == {"PASS": (1, len(pkt))}
    assert_tracked_untranslated(world.maps, pkt)


def test_masquerade_without_an_interface_address_drops(world):
    world.rules(MASQUERADE)
    world.maps.nat_ifaddr.delete(world.up0)
    pkt = bytes(from_c1(TCP(sport=40000, dport=443, flags="S")))
    assert world.endpoint(pkt) == (TC_ACT_SHOT, pkt)
    assert world.maps.moved_verdicts() == {"NAT_NO_ADDR": (1, len(pkt))}
    assert world.maps.endpoint_stats(TEST_RUN_IFINDEX)["dropped"] == (1, len(pkt))
    assert world.maps.ct.keys() == []


def test_route_without_a_resolved_neighbour_uses_redirect_neigh(world):
    """192.0.2.0/24 is routed via a gateway with no neighbour entry: bpf_redirect_neigh, so the
    MACs are left for the kernel to fill."""
    world.rules(MASQUERADE)
    syn = from_c1(TCP(sport=40000, dport=443, flags="S"), dst="192.0.2.50")
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, rewritten(syn, src=HOST_IP))
    assert world.maps.moved_verdicts() == {"NAT_REDIRECT": (1, len(syn))}


# ---------------------------------------------------------------- source-port allocation
PMIN, PMAX = 50000, 50099


def occupy(world, port: int, remote=CLIENT, rport=443, proto=TCP_P):
    """A flow of c2 masqueraded to HOST_IP:port towards remote:rport (its reply tuple is taken)."""
    world.maps.add_ct_pair(Tuple(C2.ip, remote, port, rport, proto), Tuple(HOST_IP, remote, port, rport, proto),
                           kind=S.CT_K_SNAT)


def test_taken_port_moves_into_the_range(world):
    """c1:40000+i -> CLIENT:443 while c2's flows hold HOST_IP:40000+i: each new flow gets a port
    of [port_min, port_max], all different, counted as retries; the answer to the new port
    reaches c1 with its own port."""
    m = world.maps
    world.rules(MASQUERADE, port_min=PMIN, port_max=PMAX)
    chosen = []
    for i in range(10):
        occupy(world, 40000 + i)
        syn = from_c1(TCP(sport=40000 + i, dport=443, flags="S"))
        rv, out = world.endpoint(bytes(syn))
        assert rv == TC_ACT_REDIRECT
        orig = Tuple(C1.ip, CLIENT, 40000 + i, 443, TCP_P)
        to = ct_tuples(m)[orig]
        assert PMIN <= to.sport <= PMAX and (to.saddr, to.daddr, to.dport) == (HOST_IP, CLIENT, 443)
        assert_bytes(out, to_outside(syn, src=HOST_IP, sport=to.sport))
        e = m.ct_table()[orig]
        assert e.kind == S.CT_K_SNAT
        chosen.append(to.sport)
    assert len(set(chosen)) == 10
    counters = m.nat_counter_table()
    assert counters["CT_NEW"] == 10 and counters["PORT_RETRY"] >= 10 and "PORT_FAIL" not in counters
    assert len(m.ct.keys()) == 2 * 10 + 2 * 10

    back = from_outside(TCP(sport=443, dport=chosen[3], flags="SA"))
    rv, out = world.uplink(bytes(back))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(back, dst=C1.ip, dport=40003))


def test_one_collision_is_one_retry(world):
    world.rules(MASQUERADE, port_min=PMIN, port_max=PMAX)
    occupy(world, 40000)
    world.endpoint(bytes(from_c1(TCP(sport=40000, dport=443, flags="S"))))
    assert world.maps.nat_counter_table() == {"CT_NEW": 1, "PORT_RETRY": 1}


def test_other_destination_does_not_collide(world):
    """The reply tuple includes the remote: HOST_IP:40000 to another remote is free."""
    world.rules(MASQUERADE, port_min=PMIN, port_max=PMAX)
    occupy(world, 40000, remote="198.51.100.8")
    syn = from_c1(TCP(sport=40000, dport=443, flags="S"))
    rv, out = world.endpoint(bytes(syn))
    assert_bytes(out, to_outside(syn, src=HOST_IP))
    assert world.maps.nat_counter_table() == {"CT_NEW": 1}


def test_exhausted_range_drops_and_inserts_nothing(world):
    """Range of one port (50000), both it and the kept port taken: NAT_PORT_RETRIES (32)
    candidates fail, the packet is dropped (DROP_NAT_NO_PORT), no entry is added."""
    m = world.maps
    world.rules(MASQUERADE, port_min=50000, port_max=50000)
    occupy(world, 40000)
    occupy(world, 50000)
    before = set(m.ct_table())
    syn = bytes(from_c1(TCP(sport=40000, dport=443, flags="S")))
    assert world.endpoint(syn) == (TC_ACT_SHOT, syn)
    assert m.moved_verdicts() == {"NAT_NO_PORT": (1, len(syn))}
    assert m.nat_counter_table() == {"PORT_RETRY": 32, "PORT_FAIL": 1}
    assert set(m.ct_table()) == before
    # the one port freed: the next attempt takes it
    m.ct.delete(Tuple(CLIENT, HOST_IP, 443, 50000, TCP_P).key())
    rv, out = world.endpoint(syn)
    assert rv == TC_ACT_REDIRECT
    assert ct_tuples(m)[Tuple(C1.ip, CLIENT, 40000, 443, TCP_P)].sport == 50000


def test_host_socket_holds_its_port(world):
    """A listener of the host on HOST_IP:40001 owns that port: the masqueraded flow moves (the
    host's sockets are looked up with bpf_sk_lookup_tcp in the test's netns)."""
    world.rules(MASQUERADE, port_min=PMIN, port_max=PMAX)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST_IP, 40001))
        s.listen(1)
        syn = from_c1(TCP(sport=40001, dport=443, flags="S"))
        rv, out = world.endpoint(bytes(syn))
        to = ct_tuples(world.maps)[Tuple(C1.ip, CLIENT, 40001, 443, TCP_P)]
        assert PMIN <= to.sport <= PMAX
        assert_bytes(out, to_outside(syn, src=HOST_IP, sport=to.sport))
        assert world.maps.nat_counter_table() == {"CT_NEW": 1, "PORT_RETRY": 1}
    finally:
        s.close()
    # without the listener the port is kept
    syn = from_c1(TCP(sport=40001, dport=444, flags="S"))
    rv, out = world.endpoint(bytes(syn))
    assert_bytes(out, to_outside(syn, src=HOST_IP))


def test_snat_to_a_port_range(world):
    """SNAT --to-source A:P1-P2: a source port outside the range becomes a random one of the
    range (the kernel's choice too, nf_nat_l4proto_unique_tuple); the next flows to the same
    remote take the others, and a fifth finds none."""
    m = world.maps
    world.rules(ruleset("-A POSTROUTING -s 10.0.0.0/24 -o up0 -p tcp -j SNAT --to-source 203.0.113.1:61000-61003\n"))
    ports = []
    for sport in (40000, 40001, 40002, 40003):
        syn = from_c1(TCP(sport=sport, dport=443, flags="S"))
        rv, out = world.endpoint(bytes(syn))
        assert rv == TC_ACT_REDIRECT
        to = ct_tuples(m)[Tuple(C1.ip, CLIENT, sport, 443, TCP_P)]
        assert_bytes(out, to_outside(syn, src=HOST_IP, sport=to.sport))
        ports.append(to.sport)
    assert sorted(ports) == [61000, 61001, 61002, 61003]
    syn = bytes(from_c1(TCP(sport=40004, dport=443, flags="S")))
    assert world.endpoint(syn) == (TC_ACT_SHOT, syn)    # four ports, four flows: full
    assert m.moved_verdicts()["NAT_NO_PORT"] == (1, len(syn))

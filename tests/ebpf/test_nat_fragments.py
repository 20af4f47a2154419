"""Fragments through NAT (lib/nat.h nat_frag_ports): the first fragment carries the ports and
records them in frag_ports; later fragments of the same datagram borrow them and are translated
like it (addresses only: their bytes hold no L4 header). The expected fragments are those of
scapy's translated datagram, cut at the same offsets: so the first fragment's L4 checksum must be
the one of the whole translated datagram."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from dockline.control.datapath import bpf_structs as S

from .harness import TC_ACT_OK, TC_ACT_REDIRECT, Tuple
from .natenv import (C1, CLIENT, DOCKER_HOST, GW_MAC, HOST_IP, MASQUERADE, ROUTER_MAC, UDP_P, UPLINK_MAC,
                     assert_bytes, ct_tuples, raw_payload)

pytestmark = pytest.mark.root

CUT = 48          # bytes of L4 data in the first fragment (a multiple of 8)


def fragments(esrc: str, edst: str, ip: IP, cut: int = CUT) -> list[bytes]:
    """The frames of ``ip`` (a whole datagram, checksums computed by scapy) in two fragments."""
    whole = bytes(ip)
    hdr = IP(whole)
    data = whole[hdr.ihl * 4:]
    out = []
    for off, chunk, mf in ((0, data[:cut], "MF"), (cut, data[cut:], 0)):
        frag = IP(src=hdr.src, dst=hdr.dst, id=hdr.id, ttl=hdr.ttl, proto=hdr.proto, flags=mf, frag=off // 8)
        out.append(bytes(Ether(src=esrc, dst=edst) / frag / Raw(chunk)))
    return out


def datagram(**udp) -> IP:
    return IP(src=CLIENT, dst=HOST_IP, id=0x4242, ttl=64) / UDP(**udp) / raw_payload(100)


def test_dnat_of_a_fragmented_datagram(world):
    m = world.maps
    world.rules(DOCKER_HOST)
    first, second = fragments(ROUTER_MAC, UPLINK_MAC, datagram(sport=40000, dport=5353))
    x_first, x_second = fragments(GW_MAC, C1.mac, IP(src=CLIENT, dst=C1.ip, id=0x4242, ttl=63)
                                  / UDP(sport=40000, dport=53) / raw_payload(100))
    assert first != x_first and second != x_second

    rv, out = world.uplink(first)
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, x_first, "first fragment")
    fk = S.FragKey(S.be32(CLIENT), S.be32(HOST_IP), S.be16(0x4242), UDP_P)
    fp = m.frag_ports.lookup(fk)
    assert fp is not None and (S.be16_value(fp.sport), S.be16_value(fp.dport)) == (40000, 5353)

    rv, out = world.uplink(second)
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, x_second, "second fragment")
    assert m.nat_counter_table() == {"CT_NEW": 1, "FRAG_XLATE": 1}
    assert m.moved_verdicts() == {"NAT_REDIRECT": (2, len(first) + len(second))}
    orig = Tuple(CLIENT, HOST_IP, 40000, 5353, UDP_P)
    assert m.ct_table()[orig].packets == 1          # the later fragment counts in the flow


def test_fragments_of_the_reply(world):
    """c1's fragmented answer is translated back, both fragments routed out of up0."""
    world.rules(DOCKER_HOST)
    world.uplink(bytes(Ether(src=ROUTER_MAC, dst=UPLINK_MAC) / datagram(sport=40000, dport=5353)))
    frags = fragments(C1.mac, GW_MAC, IP(src=C1.ip, dst=CLIENT, id=7, ttl=64) / UDP(sport=53, dport=40000)
                      / raw_payload(100, seed=3))
    want = fragments(UPLINK_MAC, ROUTER_MAC, IP(src=HOST_IP, dst=CLIENT, id=7, ttl=63)
                     / UDP(sport=5353, dport=40000) / raw_payload(100, seed=3))
    for f, w in zip(frags, want):
        rv, out = world.endpoint(f)
        assert rv == TC_ACT_REDIRECT
        assert_bytes(out, w)


def test_later_fragment_without_its_first_passes_untranslated(world):
    """A later fragment whose first one was not seen (another IP id) cannot be matched to a flow:
    it continues untranslated (FRAG_UNKNOWN), even though its addresses belong to a tracked flow."""
    m = world.maps
    world.rules(DOCKER_HOST)
    first, _ = fragments(ROUTER_MAC, UPLINK_MAC, datagram(sport=40000, dport=5353))
    world.uplink(first)
    orphan = fragments(ROUTER_MAC, UPLINK_MAC, IP(src=CLIENT, dst=HOST_IP, id=0x4343, ttl=64)
                       / UDP(sport=40000, dport=5353) / raw_payload(100))[1]
    assert world.uplink(orphan) == (TC_ACT_OK, orphan)
    assert m.nat_counter_table() == {"CT_NEW": 1, "FRAG_UNKNOWN": 1}
    assert m.moved_verdicts()["UPLINK_PASS"] == (1, len(orphan))


def test_fragmented_tcp_segment(world):
    """The same for TCP (checksum at offset 16 of the first fragment's data)."""
    world.rules(DOCKER_HOST)
    first, second = fragments(ROUTER_MAC, UPLINK_MAC, IP(src=CLIENT, dst=HOST_IP, id=9, ttl=64)
                              / TCP(sport=40000, dport=8080, flags="PA") / raw_payload(120))
    x = fragments(GW_MAC, C1.mac, IP(src=CLIENT, dst=C1.ip, id=9, ttl=63)
                  / TCP(sport=40000, dport=80, flags="PA") / raw_payload(120))
    for f, w in zip((first, second), x):
        rv, out = world.uplink(f)
        assert rv == TC_ACT_REDIRECT
        assert_bytes(out, w)


def test_fragmented_echo_through_masquerade(world):
    """A large ping from c1: the first fragment carries the ICMP header (its id is the flow's
    "port"); the later fragment must leave with the host's address as well, or the remote can
    never reassemble the datagram."""
    world.rules(MASQUERADE)
    ping = IP(src=C1.ip, dst=CLIENT, id=5, ttl=64) / ICMP(type=8, id=0x77, seq=1) / raw_payload(200)
    frags = fragments(C1.mac, GW_MAC, ping)
    want = fragments(UPLINK_MAC, ROUTER_MAC, IP(src=HOST_IP, dst=CLIENT, id=5, ttl=63)
                     / ICMP(type=8, id=0x77, seq=1) / raw_payload(200))
    for n, (f, w) in enumerate(zip(frags, want)):
        rv, out = world.endpoint(f)
        assert rv == TC_ACT_REDIRECT, f"fragment {n}: {world.maps.moved_verdicts()}"
        assert_bytes(out, w, f"fragment {n}")
    assert ct_tuples(world.maps)[Tuple(C1.ip, CLIENT, 0x77, 0, 1)] == Tuple(HOST_IP, CLIENT, 0x77, 0, 1)
    assert world.maps.nat_counter_table() == {"CT_NEW": 1, "FRAG_XLATE": 1}

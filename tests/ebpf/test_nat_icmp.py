"""ICMP through NAT (inside the private netns of tests/ebpf/natenv.py): errors quoting a
translated flow get their quote translated back and the outer addresses follow (RFC 5508); ICMP
echo through masquerade, its identifier translated like a port. Every output is compared byte for
byte with scapy's packet: outer IP checksum, ICMP checksum, quoted IP checksum and, when the quote
holds it, the quoted L4 checksum all recomputed by scapy."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import checksum

from dockline.control.datapath import bpf_structs as S

from .harness import TC_ACT_OK, TC_ACT_REDIRECT, Tuple
from .natenv import (C1, C2, CLIENT, DOCKER_HOST, GW_MAC, HOST_IP, ICMP_P, MASQUERADE, ROUTER_IP, ROUTER_MAC,
                     TCP_P, UDP_P, UPLINK_MAC, assert_bytes, ct_tuples, from_c1, from_outside, to_c1, to_outside)

pytestmark = pytest.mark.root

PMIN, PMAX = 50000, 50099


def masquerade_with_remap(world, proto: int, sport: int, dport: int):
    """MASQUERADE, with HOST_IP:sport towards CLIENT:dport taken by c2, so that c1's flow gets
    another port (the quote then has a port to translate back too)."""
    world.rules(MASQUERADE, port_min=PMIN, port_max=PMAX)
    world.maps.add_ct_pair(Tuple(C2.ip, CLIENT, sport, dport, proto), Tuple(HOST_IP, CLIENT, sport, dport, proto),
                           kind=S.CT_K_SNAT)


def sent(world, pkt) -> bytes:
    """Run a frame c1 sends; the translated IP packet as it leaves (what a remote would quote)."""
    rv, out = world.endpoint(bytes(pkt))
    assert rv == TC_ACT_REDIRECT
    return out[14:]


def untranslate_quote(quote: bytes, **fields) -> bytes:
    """A full quoted IP packet with fields changed and its IP and L4 checksums recomputed."""
    q = IP(quote)
    for k, v in fields.items():
        if k in ("src", "dst"):
            setattr(q, k, v)
        elif k == "icmp_id":
            q[ICMP].id = v
        else:
            setattr(q.payload, k, v)
    q.chksum = None
    q.payload.chksum = None
    return bytes(q)


@pytest.mark.parametrize("icmp_kw, src", [
    (dict(type=3, code=3), CLIENT),                        # port unreachable from the remote itself
    (dict(type=3, code=4, nexthopmtu=1280), ROUTER_IP),    # fragmentation needed, from a router
    (dict(type=11, code=0), ROUTER_IP),                    # time exceeded in transit
], ids=["port-unreachable", "frag-needed", "time-exceeded"])
def test_error_about_masqueraded_udp(world, icmp_kw, src):
    masquerade_with_remap(world, UDP_P, 40000, 53)
    quote = sent(world, from_c1(UDP(sport=40000, dport=53) / Raw(b"a dns query")))
    mapped = ct_tuples(world.maps)[Tuple(C1.ip, CLIENT, 40000, 53, UDP_P)].sport
    assert mapped != 40000 and IP(quote).src == HOST_IP and IP(quote)[UDP].sport == mapped

    err = from_outside(ICMP(**icmp_kw) / Raw(quote), src=src)
    rv, out = world.uplink(bytes(err))
    assert rv == TC_ACT_REDIRECT
    expected = (Ether(src=GW_MAC, dst=C1.mac) / IP(src=src, dst=C1.ip, ttl=63)
                / ICMP(**icmp_kw) / Raw(untranslate_quote(quote, src=C1.ip, sport=40000)))
    assert_bytes(out, bytes(expected))
    assert world.maps.nat_counter_table()["ICMP_ERROR"] == 1
    assert world.maps.moved_verdicts()["NAT_REDIRECT"] == (2, (14 + len(quote)) + len(err))


def test_error_with_a_minimal_quote_of_masqueraded_tcp(world):
    """RFC 792 quotes: the IP header and 8 bytes, so the quoted TCP checksum is not in the quote
    and only the ports are translated (and folded into the ICMP checksum)."""
    masquerade_with_remap(world, TCP_P, 40000, 443)
    quote = sent(world, from_c1(TCP(sport=40000, dport=443, flags="S", seq=123456)))
    mapped = ct_tuples(world.maps)[Tuple(C1.ip, CLIENT, 40000, 443, TCP_P)].sport
    quote = quote[:20 + 8]
    err = from_outside(ICMP(type=3, code=1) / Raw(quote), src=ROUTER_IP)
    rv, out = world.uplink(bytes(err))
    assert rv == TC_ACT_REDIRECT
    hdr = bytearray(quote[:20])
    hdr[12:16] = bytes(map(int, C1.ip.split(".")))
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    l4 = (40000).to_bytes(2, "big") + quote[22:28]
    assert quote[20:22] == mapped.to_bytes(2, "big")
    expected = Ether(src=GW_MAC, dst=C1.mac) / IP(src=ROUTER_IP, dst=C1.ip, ttl=63) / ICMP(type=3, code=1) / Raw(
        bytes(hdr) + l4)
    assert_bytes(out, bytes(expected))


def test_error_from_the_container_about_a_dnat_flow(world):
    """c1 answers a DNATed datagram (client -> host:5353 -> c1:53) with port unreachable: the
    error leaves from the host's address and quotes the datagram as the client sent it."""
    world.rules(DOCKER_HOST)
    q = from_outside(UDP(sport=40000, dport=5353) / Raw(b"query"))
    rv, delivered = world.uplink(bytes(q))
    assert rv == TC_ACT_REDIRECT
    quote = delivered[14:]
    assert IP(quote).dst == C1.ip and IP(quote)[UDP].dport == 53
    err = from_c1(ICMP(type=3, code=3) / Raw(quote))
    rv, out = world.endpoint(bytes(err))
    assert rv == TC_ACT_REDIRECT
    expected = (Ether(src=UPLINK_MAC, dst=ROUTER_MAC) / IP(src=HOST_IP, dst=CLIENT, ttl=63)
                / ICMP(type=3, code=3) / Raw(untranslate_quote(quote, dst=HOST_IP, dport=5353)))
    assert_bytes(out, bytes(expected))
    assert world.maps.nat_counter_table() == {"CT_NEW": 1, "ICMP_ERROR": 1}


def test_error_about_an_untracked_flow_passes(world):
    world.rules(MASQUERADE)
    quote = bytes(IP(src=HOST_IP, dst=CLIENT) / UDP(sport=40000, dport=53) / Raw(b"q"))
    err = bytes(from_outside(ICMP(type=3, code=3) / Raw(quote)))
    assert world.uplink(err) == (TC_ACT_OK, err)
    assert world.maps.moved_verdicts() == {"UPLINK_PASS": (1, len(err))}
    assert world.maps.nat_counter_table() == {}


def test_error_with_ttl_1_is_left_to_the_stack(world):
    masquerade_with_remap(world, UDP_P, 40000, 53)
    quote = sent(world, from_c1(UDP(sport=40000, dport=53) / Raw(b"q")))
    err = bytes(from_outside(ICMP(type=3, code=3) / Raw(quote), ttl=1))
    assert world.uplink(err) == (TC_ACT_OK, err)
    assert "ICMP_ERROR" not in world.maps.nat_counter_table()


# ---------------------------------------------------------------- echo
def test_echo_through_masquerade_translates_the_identifier(world):
    """c1 pings CLIENT with id 0x1234 while c2's ping holds that id on HOST_IP: the request
    leaves with another id of the port range, the reply comes back to c1 with 0x1234."""
    m = world.maps
    world.rules(MASQUERADE, port_min=PMIN, port_max=PMAX)
    m.add_ct_pair(Tuple(C2.ip, CLIENT, 0x1234, 0, ICMP_P), Tuple(HOST_IP, CLIENT, 0x1234, 0, ICMP_P),
                  kind=S.CT_K_SNAT)
    req = from_c1(ICMP(type=8, id=0x1234, seq=1) / Raw(b"ping payload"))
    rv, out = world.endpoint(bytes(req))
    assert rv == TC_ACT_REDIRECT
    to = ct_tuples(m)[Tuple(C1.ip, CLIENT, 0x1234, 0, ICMP_P)]
    assert PMIN <= to.sport <= PMAX and to.dport == 0
    assert_bytes(out, to_outside(req, src=HOST_IP, icmp_id=to.sport))
    assert m.ct_table()[Tuple(CLIENT, HOST_IP, 0, to.sport, ICMP_P)].dir == S.CT_DIR_REPLY

    rep = from_outside(ICMP(type=0, id=to.sport, seq=1) / Raw(b"ping payload"))
    rv, out = world.uplink(bytes(rep))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(rep, dst=C1.ip, icmp_id=0x1234))


def test_echo_keeps_a_free_identifier(world):
    world.rules(MASQUERADE)
    req = from_c1(ICMP(type=8, id=77, seq=3))
    rv, out = world.endpoint(bytes(req))
    assert_bytes(out, to_outside(req, src=HOST_IP))


def test_time_exceeded_quoting_a_masqueraded_echo(world):
    """A traceroute-style error about c1's (id-translated) echo request: the quoted ICMP header
    gets its id and checksum back."""
    m = world.maps
    world.rules(MASQUERADE, port_min=PMIN, port_max=PMAX)
    m.add_ct_pair(Tuple(C2.ip, CLIENT, 0x1234, 0, ICMP_P), Tuple(HOST_IP, CLIENT, 0x1234, 0, ICMP_P),
                  kind=S.CT_K_SNAT)
    quote = sent(world, from_c1(ICMP(type=8, id=0x1234, seq=1) / Raw(b"probe")))
    assert IP(quote)[ICMP].id != 0x1234
    err = from_outside(ICMP(type=11, code=0) / Raw(quote), src=ROUTER_IP)
    rv, out = world.uplink(bytes(err))
    assert rv == TC_ACT_REDIRECT
    expected = (Ether(src=GW_MAC, dst=C1.mac) / IP(src=ROUTER_IP, dst=C1.ip, ttl=63)
                / ICMP(type=11, code=0) / Raw(untranslate_quote(quote, src=C1.ip, icmp_id=0x1234)))
    assert_bytes(out, bytes(expected))

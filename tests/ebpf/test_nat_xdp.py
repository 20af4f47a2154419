"""NAT at native XDP on the uplink (xdp_uplink + the xdp_nat.c stages), run with
BPF_PROG_TEST_RUN inside the private netns of tests/ebpf/natenv.py.

XDP is an accelerator in front of tc_uplink_ingress with one contract: a packet is either
translated completely and redirected into its endpoint (XDP_REDIRECT), or passed on untouched
(XDP_PASS) with no conntrack entry made, for the TC program to handle. So every test checks one
of the two outcomes exactly, and the translated bytes are compared with scapy's (checksums
recomputed) and with what the TC program makes of the same packet on the same maps.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from dockline.control.datapath import bpf_structs as S

from .harness import TC_ACT_OK, TC_ACT_REDIRECT, XDP_DROP, XDP_PASS, XDP_REDIRECT, Tuple
from .natenv import (C1, CLIENT, DNAT_RULESETS, DOCKER_HOST, HOST_IP, MASQUERADE, TCP_P, UDP_P, assert_bytes,
                     ct_pair_of, ct_tuples, from_c1, from_outside, raw_payload, ruleset, to_c1, to_outside)

pytestmark = pytest.mark.root

FIRST = {"tcp": (TCP_P, 8080, 80, TCP(sport=40000, dport=8080, flags="S", seq=7)),
         "udp": (UDP_P, 5353, 53, UDP(sport=40000, dport=5353) / Raw(b"query"))}


@pytest.mark.parametrize("proto", list(FIRST))
@pytest.mark.parametrize("rules", list(DNAT_RULESETS))
def test_published_port_is_translated_at_xdp(world, rules, proto):
    """A new connection to a published port: judged by the same compiled rules (exact table and
    generic instructions), conntrack made, translated and redirected into c1 at XDP; the next
    packet is a conntrack hit at XDP; c1's reply (TC) goes back with the published address."""
    m = world.maps
    world.rules(DNAT_RULESETS[rules])
    number, hport, cport, l4 = FIRST[proto]
    first = from_outside(l4)
    rv, out = world.xdp(bytes(first))
    assert rv == XDP_REDIRECT
    assert_bytes(out, to_c1(first, dst=C1.ip, dport=cport))
    assert m.moved_verdicts() == {"XDP_NAT_REDIRECT": (1, len(first))}
    orig, to = Tuple(CLIENT, HOST_IP, 40000, hport, number), Tuple(CLIENT, C1.ip, 40000, cport, number)
    assert ct_tuples(m) == ct_pair_of(orig, to)
    assert m.ct_table()[orig].kind == S.CT_K_DNAT

    nxt = from_outside((TCP(sport=40000, dport=hport, flags="A", seq=8) if proto == "tcp"
                        else UDP(sport=40000, dport=hport)) / raw_payload(300))
    rv, out = world.xdp(bytes(nxt))
    assert rv == XDP_REDIRECT
    assert_bytes(out, to_c1(nxt, dst=C1.ip, dport=cport))
    assert m.nat_counter_table() == {"CT_NEW": 1, "CT_HIT": 1}
    assert m.ct_table()[orig].packets == 1

    reply = from_c1((TCP(sport=cport, dport=40000, flags="A") if proto == "tcp"
                     else UDP(sport=cport, dport=40000)) / Raw(b"answer"))
    rv, out = world.endpoint(bytes(reply))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_outside(reply, src=HOST_IP, sport=hport))


def _tc_then_xdp(world, rules, pkts):
    """The outputs of tc_uplink_ingress and of xdp_uplink for the same packets, each on freshly
    installed maps: [(tc retval, tc bytes, xdp retval, xdp bytes)]."""
    outs = []
    for run in (world.uplink, world.xdp):
        world.maps.clear()
        world.install()
        world.rules(rules)
        outs.append([run(bytes(p)) for p in pkts])
    return [(a[0], a[1], b[0], b[1]) for a, b in zip(*outs)]


def test_xdp_and_tc_make_the_same_bytes(world):
    """Same maps, same packets: XDP's translation is TC's, byte for byte (TCP with options and
    payload, UDP, UDP without checksum, a later packet of each flow)."""
    pkts = [from_outside(TCP(sport=41000 + i, dport=8080, flags="S", seq=99, options=[("MSS", 1460)]))
            for i in range(3)]
    pkts += [from_outside(UDP(sport=42000, dport=5353) / raw_payload(700, seed=3)),
             from_outside(UDP(sport=42001, dport=5353, chksum=0) / Raw(b"no checksum")),
             from_outside(TCP(sport=41000, dport=8080, flags="PA", seq=100, ack=1) / raw_payload(1200, seed=4)),
             from_outside(UDP(sport=42000, dport=5353) / Raw(b"again"))]
    for i, (trv, tout, xrv, xout) in enumerate(_tc_then_xdp(world, DOCKER_HOST, pkts)):
        assert (trv, xrv) == (TC_ACT_REDIRECT, XDP_REDIRECT), i
        assert xout == tout, f"packet {i}: XDP and TC differ"
    zero = _tc_then_xdp(world, DOCKER_HOST, [pkts[4]])[0][3]
    assert zero[14 + 20 + 6:14 + 20 + 8] == b"\0\0"          # "no checksum" stays so


def test_masquerade_reply_is_translated_at_xdp(world):
    """c1's masqueraded connection (TC); the server's answer arriving on the uplink is a conntrack
    hit that XDP translates back and redirects into c1."""
    world.rules(MASQUERADE)
    syn = from_c1(TCP(sport=33000, dport=443, flags="S"))
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    answer = from_outside(TCP(sport=443, dport=33000, flags="SA"), src=CLIENT, dst=HOST_IP)
    rv, out = world.xdp(bytes(answer))
    assert rv == XDP_REDIRECT
    assert_bytes(out, to_c1(answer, dst=C1.ip))
    assert world.maps.moved_verdicts()["XDP_NAT_REDIRECT"] == (1, len(answer))


@pytest.mark.parametrize("what, rules, pkt", [
    ("REDIRECT to a local port", ruleset("-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 3128\n"),
     from_outside(TCP(sport=40000, dport=80, flags="S"))),
    ("DNAT to an address outside", ruleset("-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT "
                                           "--to-destination 198.51.100.50:80\n"),
     from_outside(TCP(sport=40000, dport=8080, flags="S"))),
    ("no rule matches", DOCKER_HOST, from_outside(TCP(sport=40000, dport=9999, flags="S"))),
    ("ICMP error", DOCKER_HOST,
     from_outside(ICMP(type=3, code=3) / IP(src=HOST_IP, dst=CLIENT) / UDP(sport=5353, dport=40000))),
    ("first fragment", DOCKER_HOST,
     from_outside(UDP(sport=40000, dport=5353) / raw_payload(64), flags="MF")),
    ("TTL 1", DOCKER_HOST, from_outside(TCP(sport=40000, dport=8080, flags="S"), ttl=1)),
], ids=["redirect", "forward", "no-rule", "icmp-error", "fragment", "ttl1"])
def test_what_xdp_leaves_to_tc_passes_untouched(world, what, rules, pkt):
    """Anything XDP does not send into an endpoint itself: XDP_PASS, the bytes unchanged, no
    conntrack entry; TC then does its usual thing with the untouched packet."""
    world.rules(rules)
    rv, out = world.xdp(bytes(pkt))
    assert (rv, out) == (XDP_PASS, bytes(pkt)), what
    assert world.maps.ct.keys() == [], what
    assert "XDP_NAT_REDIRECT" not in world.maps.moved_verdicts()


def test_tracked_flow_to_a_local_address_is_left_to_tc(world):
    """A REDIRECTed flow's later packets are conntrack hits whose destination is the host: XDP
    passes them untranslated (TC translates them; translating at XDP and passing would make TC
    judge the translated tuple as a new flow)."""
    world.rules(ruleset("-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 3128\n"))
    syn = from_outside(TCP(sport=40000, dport=80, flags="S"))
    assert world.uplink(bytes(syn))[0] == TC_ACT_OK              # TC made the flow
    ack = from_outside(TCP(sport=40000, dport=80, flags="A"))
    assert world.xdp(bytes(ack)) == (XDP_PASS, bytes(ack))
    rv, out = world.uplink(bytes(ack))
    assert rv == TC_ACT_OK and out != bytes(ack)                    # TC translated it


def test_spoofed_source_is_still_dropped_first(world):
    world.rules(DOCKER_HOST)
    pkt = from_outside(TCP(sport=40000, dport=8080, flags="S"), src="10.0.0.77")
    rv, _ = world.xdp(bytes(pkt))
    assert rv == XDP_DROP
    assert world.maps.ct.keys() == []
    assert world.maps.moved_verdicts() == {"UPLINK_SPOOFED": (1, len(pkt))}

"""Host-local traffic on lo's egress (tc_loopback) with BPF_PROG_TEST_RUN in the private netns of
tests/ebpf/natenv.py: POSTROUTING (-o lo) for the host's flows to itself, both directions
translated at the one hook, untranslated flows tracked once.

The source fix for a REDIRECTed socket bound to a port only (sock_xlate.want_saddr, keyed by the
socket's cookie) cannot be driven from here: a test run's skb carries a fresh dummy socket whose
cookie is unknown beforehand. It is tested end to end by the differential test (rule set
"edges", flow host -> host_ip:7778, against real iptables)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw


from .harness import TC_ACT_OK, Tuple
from .natenv import GW_N, HOST_IP, LO, TCP_P, UDP_P, assert_bytes, ct_pair_of, ct_tuples, rewritten, ruleset

pytestmark = pytest.mark.root

#: Docker's egress masquerade, which also matches the host's connections from the gateway address
MASQ = ruleset("-A POSTROUTING -s 10.0.0.0/24 ! -o br-n -j MASQUERADE\n")


def on_lo(src: str, dst: str, l4) -> Ether:
    return Ether(src="00:00:00:00:00:00", dst="00:00:00:00:00:00") / IP(src=src, dst=dst) / l4


def test_host_to_its_gateway_address_is_masqueraded(world):
    """host (from 10.0.0.1) -> 10.0.0.1:8030: out by lo, POSTROUTING's MASQUERADE gives it the
    address the kernel would pick for lo (here HOST_IP); the reply is translated back."""
    world.rules(MASQ)
    world.maps.set_ifaddr(LO, HOST_IP)
    syn = on_lo(GW_N, GW_N, TCP(sport=45063, dport=8030, flags="S"))
    rv, out = world.loopback(bytes(syn))
    assert rv == TC_ACT_OK
    assert_bytes(out, rewritten(syn, src=HOST_IP, ttl_dec=0))
    assert ct_tuples(world.maps) == ct_pair_of(Tuple(GW_N, GW_N, 45063, 8030, TCP_P),
                                               Tuple(HOST_IP, GW_N, 45063, 8030, TCP_P))
    ans = on_lo(GW_N, HOST_IP, TCP(sport=8030, dport=45063, flags="SA"))
    rv, out = world.loopback(bytes(ans))
    assert rv == TC_ACT_OK
    assert_bytes(out, rewritten(ans, dst=GW_N, ttl_dec=0))
    assert world.maps.moved_verdicts() == {"NAT_PASS": (2, len(syn) + len(ans))}


def test_untranslated_host_flow_is_tracked_once(world):
    """127.0.0.1 -> 127.0.0.1: nothing matches; the flow is tracked untranslated, so the reply
    (which a POSTROUTING rule could match) is never judged; bytes stay as they were."""
    world.rules(ruleset("-A POSTROUTING -p udp -m udp --sport 53 -j MASQUERADE\n"))
    world.maps.set_ifaddr(LO, HOST_IP)
    q = on_lo("127.0.0.1", "127.0.0.1", UDP(sport=40000, dport=53) / Raw(b"q"))
    assert world.loopback(bytes(q)) == (TC_ACT_OK, bytes(q))
    t = Tuple("127.0.0.1", "127.0.0.1", 40000, 53, UDP_P)
    assert ct_tuples(world.maps) == ct_pair_of(t, t)
    answer = on_lo("127.0.0.1", "127.0.0.1", UDP(sport=53, dport=40000) / Raw(b"a"))
    assert world.loopback(bytes(answer)) == (TC_ACT_OK, bytes(answer))     # not masqueraded
    assert world.maps.nat_counter_table() == {}


def test_flows_no_rule_can_translate_are_not_tracked(world):
    """Docker's "-s <subnet> ! -o <bridge> -j MASQUERADE" can translate host-local traffic only
    from (or, for the reply, to) an address in the subnet: a 127.0.0.1 flow is neither judged
    nor tracked (loopback_srcs), while one from the gateway address still is."""
    world.rules(MASQ)
    world.maps.set_ifaddr(LO, HOST_IP)
    q = on_lo("127.0.0.1", "127.0.0.1", TCP(sport=40001, dport=8080, flags="S"))
    assert world.loopback(bytes(q)) == (TC_ACT_OK, bytes(q))
    assert ct_tuples(world.maps) == {}
    back = on_lo(HOST_IP, GW_N, TCP(sport=8080, dport=40002, flags="SA"))   # to the gateway: judged
    world.loopback(bytes(back))
    assert Tuple(HOST_IP, GW_N, 8080, 40002, TCP_P) in ct_tuples(world.maps)

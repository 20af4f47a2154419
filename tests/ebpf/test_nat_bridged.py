"""Frames between two endpoints of one bridge under nat rules that could translate them
(NET_F_BRIDGED_NAT, bridge-netfilter semantics; control/nat/reach.py decides which networks),
through tc_from_endpoint with BPF_PROG_TEST_RUN in the private netns of tests/ebpf/natenv.py.
c1 is the sender, c2 the peer on the same network N (bridge br-n)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.packet import Raw

from dockline.control.datapath import bpf_structs as S

from .harness import TC_ACT_REDIRECT, TEST_RUN_IFINDEX, Tuple
from .natenv import (BR_N, C1, C2, GW_MAC, GW_N, NET_N, TCP_P, UDP_P, assert_bytes, ct_pair_of, ct_tuples, from_c1,
                     rewritten, ruleset)

pytestmark = pytest.mark.root

#: the edge case of the differential corpus: a POSTROUTING rule for traffic between two containers
C1_TO_C2_81 = ruleset("-A POSTROUTING -s 10.0.0.2/32 -d 10.0.0.3/32 -p tcp -m tcp --dport 81 -j MASQUERADE\n")


def _flag(world, on: bool):
    world.maps.add_net_info(NET_N, BR_N, GW_N, GW_MAC, flags=S.NET_F_BRIDGED_NAT if on else 0)


def _to_c2(l4, **kw):
    return from_c1(l4, dst=C2.ip, edst=C2.mac, **kw)


def test_bridged_frame_is_masqueraded_when_flagged(world):
    """c1 -> c2:81 at c2's MAC: POSTROUTING (-o br-n) masquerades it to the gateway, as iptables
    with br_netfilter does; the translated frame is routed into c2 (TTL - 1, the gateway's MAC)."""
    world.rules(C1_TO_C2_81)
    _flag(world, True)
    syn = _to_c2(TCP(sport=40000, dport=81, flags="S"))
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, rewritten(syn, src=GW_N, esrc=GW_MAC, edst=C2.mac))
    assert ct_tuples(world.maps) == ct_pair_of(Tuple(C1.ip, C2.ip, 40000, 81, TCP_P),
                                               Tuple(GW_N, C2.ip, 40000, 81, TCP_P))


def test_untranslated_bridged_flow_is_tracked_once(world):
    """On a flagged network, a flow no rule translates keeps the L2 fast path (redirect_peer,
    bytes untouched) and is tracked untranslated: its next packet is a conntrack hit, not a
    second trip through the rules."""
    world.rules(C1_TO_C2_81)
    _flag(world, True)
    first = _to_c2(UDP(sport=40000, dport=53) / Raw(b"q"))
    assert world.endpoint(bytes(first)) == (TC_ACT_REDIRECT, bytes(first))
    orig = Tuple(C1.ip, C2.ip, 40000, 53, UDP_P)
    ct = world.maps.ct_table()
    assert ct_tuples(world.maps) == ct_pair_of(orig, orig) and ct[orig].kind == 0
    assert world.maps.moved_verdicts() == {"REDIRECT_PEER": (1, len(first))}
    again = _to_c2(UDP(sport=40000, dport=53) / Raw(b"again"))
    assert world.endpoint(bytes(again)) == (TC_ACT_REDIRECT, bytes(again))
    assert world.maps.ct_table()[orig].packets == 1
    assert world.maps.nat_counter_table() == {}          # no CT_NEW: nothing was translated


def test_unflagged_network_keeps_bridged_frames_untouched(world):
    """The same rule without the flag: the frame is switched untouched and nothing is tracked
    (what dockline did before bridged NAT, and still does for Docker's own rules)."""
    world.rules(C1_TO_C2_81)
    _flag(world, False)
    syn = _to_c2(TCP(sport=40000, dport=81, flags="S"))
    assert world.endpoint(bytes(syn)) == (TC_ACT_REDIRECT, bytes(syn))
    assert world.maps.ct.keys() == []
    assert world.maps.endpoint_stats(TEST_RUN_IFINDEX)["redirected"] == (1, len(syn))

"""DNAT through the programs (BPF_PROG_TEST_RUN, inside the private netns of tests/ebpf/natenv.py):
published ports arriving on the uplink (tc_uplink_ingress), their replies from the container
(tc_from_endpoint), REDIRECT and its replies from the host (tc_uplink_egress). Every translated
packet is compared byte for byte with scapy's packet carrying the translated fields, the TTL
decremented when the program routes it, the route's MACs and recomputed checksums."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import ICMP, TCP, UDP
from scapy.packet import Raw

from dockline.control.datapath import bpf_structs as S

from .harness import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX, Tuple
from .natenv import (assert_tracked_untranslated, BR_N, C1, C2, CLIENT, DNAT_RULESETS, DOCKER_HOST, GW_M, GW_M_MAC, GW_MAC, HOST_IP, M1,
                     TCP_P, UDP_P, assert_bytes, ct_pair_of, ct_tuples, from_c1, from_outside, rewritten, ruleset,
                     to_c1, to_outside)

pytestmark = pytest.mark.root

SEC = 1_000_000_000
#: proto -> (number, published port, container port, first packet, reply, [new-state, answered] timeouts)
FLOWS = {
    "tcp": (TCP_P, 8080, 80, TCP(sport=40000, dport=8080, flags="S", seq=1000),
            TCP(sport=80, dport=40000, flags="SA", seq=5000, ack=1001), (60, 21600)),
    "udp": (UDP_P, 5353, 53, UDP(sport=40000, dport=5353) / Raw(b"query"),
            UDP(sport=53, dport=40000) / Raw(b"an answer"), (60, 60)),
}


def check_timing(entry, t0, t1, timeout_s):
    assert t0 + timeout_s * SEC <= entry.expires_ns <= t1 + timeout_s * SEC, (
        f"expires_ns {entry.expires_ns} not within [{t0}, {t1}] + {timeout_s} s")


@pytest.mark.parametrize("proto", list(FLOWS))
@pytest.mark.parametrize("rules", list(DNAT_RULESETS))
def test_published_port_and_reply(world, rules, proto):
    """Outside -> host:published: DNATed into c1 with both conntrack halves; c1's reply leaves
    with the host's address and the published port. The same bytes and entries whether the rule
    is an exact-table entry or a generic instruction."""
    m = world.maps
    prog = world.rules(DNAT_RULESETS[rules])
    assert bool(prog.exact) == (rules == "exact"), "the variants must take both evaluation paths"
    number, hport, cport, l4, l4_reply, (t_new, t_answered) = FLOWS[proto]

    first = from_outside(l4)
    t0 = time.monotonic_ns()
    rv, out = world.uplink(bytes(first))
    t1 = time.monotonic_ns()
    assert rv == TC_ACT_REDIRECT                     # bpf_redirect_peer into c1
    assert_bytes(out, to_c1(first, dst=C1.ip, dport=cport))
    assert m.moved_verdicts() == {"NAT_REDIRECT": (1, len(first))}
    assert m.nat_counter_table() == {"CT_NEW": 1}

    orig = Tuple(CLIENT, HOST_IP, 40000, hport, number)
    to = Tuple(CLIENT, C1.ip, 40000, cport, number)
    assert ct_tuples(m) == ct_pair_of(orig, to)
    ct = m.ct_table()
    o, r = ct[orig], ct[to.reverse()]
    assert (o.dir, r.dir) == (S.CT_DIR_ORIG, S.CT_DIR_REPLY)
    for e in (o, r):
        assert (e.state, e.kind, e.flags) == (S.CT_ST_NEW, S.CT_K_DNAT, 0)
        check_timing(e, t0, t1, t_new)
        assert t0 <= e.twin_checked_ns <= t1
        # the packet that creates the flow is not counted in it
        assert (e.packets, e.bytes) == (0, 0)

    reply = from_c1(l4_reply)
    t0 = time.monotonic_ns()
    rv, out = world.endpoint(bytes(reply))
    t1 = time.monotonic_ns()
    assert rv == TC_ACT_REDIRECT                     # bpf_redirect out of up0
    assert_bytes(out, to_outside(reply, src=HOST_IP, sport=hport))
    assert m.moved_verdicts() == {"NAT_REDIRECT": (2, len(first) + len(reply))}
    assert m.endpoint_stats(TEST_RUN_IFINDEX)["redirected"] == (1, len(reply))
    assert m.nat_counter_table() == {"CT_NEW": 1, "CT_HIT": 1}
    ct = m.ct_table()
    o, r = ct[orig], ct[to.reverse()]
    assert o.state == r.state == S.CT_ST_ESTABLISHED
    assert (r.packets, r.bytes, o.packets) == (1, len(reply), 0)
    check_timing(r, t0, t1, t_answered)
    assert o.expires_ns == r.expires_ns              # a state change refreshes both halves

    # the client's next packet is a conntrack hit in the original direction
    nxt = from_outside(TCP(sport=40000, dport=hport, flags="A", seq=1001, ack=5001) if proto == "tcp"
                       else UDP(sport=40000, dport=hport) / Raw(b"again"))
    rv, out = world.uplink(bytes(nxt))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(nxt, dst=C1.ip, dport=cport))
    assert m.ct_table()[orig].packets == 1
    assert m.nat_counter_table() == {"CT_NEW": 1, "CT_HIT": 2}


@pytest.mark.parametrize("rules", list(DNAT_RULESETS))
@pytest.mark.parametrize("what, pkt", [
    ("unpublished port", from_outside(TCP(sport=40000, dport=8081, flags="S"))),
    ("published port, other protocol", from_outside(UDP(sport=40000, dport=8080))),
    ("not a local address", from_outside(TCP(sport=40000, dport=8080, flags="S"), dst="203.0.113.99")),
    ("icmp echo", from_outside(ICMP(id=5))),
], ids=["unpublished", "other-proto", "not-local", "icmp"])
def test_not_published_passes_untouched(world, rules, what, pkt):
    world.rules(DNAT_RULESETS[rules])
    rv, out = world.uplink(bytes(pkt))
    assert (rv, out) == (TC_ACT_OK, bytes(pkt)), what
    assert world.maps.moved_verdicts() == {"UPLINK_PASS": (1, len(pkt))}
    assert world.maps.nat_counter_table() == {}
    assert_tracked_untranslated(world.maps, bytes(pkt))


def test_exact_rule_names_the_in_interface(world):
    """Two exact tables for the same port: -i up1 goes to c2 (first table), anything else falls
    through the first table's iif check to the second (c1): two LOOKUPs, the second after a
    tail call of tc_nat_eval to itself."""
    prog = world.rules(ruleset(""":DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -i up1 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.3:80
-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
"""))
    assert prog.max_lookups["PREROUTING"] == 2
    syn = from_outside(TCP(sport=40000, dport=8080, flags="S"))
    rv, out = world.uplink(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(syn, dst=C1.ip, dport=80))
    syn1 = from_outside(TCP(sport=40001, dport=8080, flags="S"), dst="198.18.0.1")
    rv, out = world.uplink(bytes(syn1), ifindex=world.up1)
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, rewritten(syn1, dst=C2.ip, dport=80, esrc=GW_MAC, edst=C2.mac))
    assert world.maps.nat_counter_table() == {"CT_NEW": 2}


def test_container_reaches_a_sibling_through_the_host_address(world):
    """c1 -> host:8080 published by c2 (same network): DNATed and sent straight into c2; the
    masquerade rule does not apply (the out-interface is the bridge)."""
    world.rules(ruleset(""":DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 10.0.0.0/24 ! -o br-n -j MASQUERADE
-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.3:80
"""))
    syn = from_c1(TCP(sport=40000, dport=8080, flags="S"), dst=HOST_IP)
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, rewritten(syn, dst=C2.ip, dport=80, esrc=GW_MAC, edst=C2.mac))
    assert ct_tuples(world.maps) == ct_pair_of(Tuple(C1.ip, HOST_IP, 40000, 8080, TCP_P),
                                               Tuple(C1.ip, C2.ip, 40000, 80, TCP_P))
    assert world.maps.endpoint_stats(TEST_RUN_IFINDEX)["redirected"] == (1, len(syn))


def test_udp_without_checksum_keeps_none(world):
    """A zero UDP checksum means "none": the translation must leave it zero."""
    world.rules(DOCKER_HOST)
    dgram = from_outside(UDP(sport=40000, dport=5353, chksum=0) / Raw(b"query"))
    assert bytes(dgram)[14 + 20 + 6:14 + 20 + 8] == b"\0\0"
    rv, out = world.uplink(bytes(dgram))
    assert rv == TC_ACT_REDIRECT
    expected = to_c1(dgram, dst=C1.ip, dport=53)
    assert expected[14 + 20 + 6:14 + 20 + 8] == b"\0\0"
    assert_bytes(out, expected)


def test_ttl_1_is_left_to_the_stack(world):
    """A packet the program would route with TTL 1 is not translated (the stack answers with
    time exceeded); no flow is created, not even an untranslated one: the next packet is
    judged again, and translated."""
    world.rules(DOCKER_HOST)
    syn = from_outside(TCP(sport=40000, dport=8080, flags="S"), ttl=1)
    assert world.uplink(bytes(syn)) == (TC_ACT_OK, bytes(syn))
    assert world.maps.nat_counter_table() == {"TTL_EXCEEDED": 1}
    assert world.maps.moved_verdicts() == {"UPLINK_PASS": (1, len(syn))}
    assert world.maps.ct.keys() == []
    again = from_outside(TCP(sport=40000, dport=8080, flags="S"))
    assert world.uplink(bytes(again))[0] == TC_ACT_REDIRECT


# ---------------------------------------------------------------- REDIRECT (a local destination)
TPROXY = ruleset("-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 3128\n")


def test_redirect_and_the_hosts_reply_on_egress(world):
    """-j REDIRECT on the uplink: the destination becomes up0's address (nat_ifaddr) and port
    3128; the packet continues into the stack (no route of ours: no TTL change, MACs kept). The
    host's reply is translated back by tc_uplink_egress."""
    world.rules(TPROXY)
    syn = from_outside(TCP(sport=40000, dport=80, flags="S"), dst="93.184.216.34")
    rv, out = world.uplink(bytes(syn))
    assert rv == TC_ACT_OK
    assert_bytes(out, rewritten(syn, dst=HOST_IP, dport=3128, ttl_dec=0))
    assert world.maps.moved_verdicts() == {"NAT_PASS": (1, len(syn))}
    orig = Tuple(CLIENT, "93.184.216.34", 40000, 80, TCP_P)
    to = Tuple(CLIENT, HOST_IP, 40000, 3128, TCP_P)
    assert ct_tuples(world.maps) == ct_pair_of(orig, to)
    assert {e.kind for e in world.maps.ct_table().values()} == {S.CT_K_DNAT | S.CT_K_LOCAL}

    from scapy.layers.l2 import Ether
    from scapy.layers.inet import IP
    reply = (Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src=HOST_IP, dst=CLIENT)
             / TCP(sport=3128, dport=40000, flags="SA"))
    rv, out = world.egress(bytes(reply))
    assert rv == TC_ACT_OK
    assert_bytes(out, rewritten(reply, src="93.184.216.34", sport=80, ttl_dec=0))
    assert world.maps.moved_verdicts() == {"NAT_PASS": (2, len(syn) + len(reply))}
    assert {e.state for e in world.maps.ct_table().values()} == {S.CT_ST_ESTABLISHED}


def test_egress_leaves_untracked_packets_alone(world):
    world.rules(TPROXY)
    from scapy.layers.l2 import Ether
    from scapy.layers.inet import IP
    pkt = bytes(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src=HOST_IP, dst=CLIENT)
                / TCP(sport=22, dport=40000, flags="SA"))
    assert world.egress(pkt) == (TC_ACT_OK, pkt)
    assert world.maps.moved_verdicts() == {"UPLINK_PASS": (1, len(pkt))}


def test_redirect_without_an_interface_address_drops(world):
    world.rules(TPROXY)
    world.maps.nat_ifaddr.delete(world.up0)
    syn = from_outside(TCP(sport=40000, dport=80, flags="S"), dst="93.184.216.34")
    rv, out = world.uplink(bytes(syn))
    assert (rv, out) == (TC_ACT_SHOT, bytes(syn))
    assert world.maps.moved_verdicts() == {"NAT_NO_ADDR": (1, len(syn))}
    assert world.maps.ct.keys() == []


#: the control plane's own chains with c1's published port 8080 (an exact entry with the
#: hairpin-masquerade flag, as the agent writes it) and egress masquerade
CONTROL_PLANE = ruleset(""":DOCKLINE - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKLINE
-A POSTROUTING -s 10.0.0.0/24 ! -o br-n -j MASQUERADE
""")
C1_PUBLISHED = {("0.0.0.0", 8080, TCP_P): (C1.ip, 80)}


def test_container_reaches_its_own_published_port(world):
    """c1 -> host:8080 published by c1 itself (a control-plane port): the reply must come back
    through the datapath, so the source becomes the gateway (as Docker's per-port MASQUERADE
    rule does), keeping the source port; a second connection gets its own flow."""
    world.rules(CONTROL_PLANE, published=C1_PUBLISHED)
    for sport in (40000, 40001):
        syn = from_c1(TCP(sport=sport, dport=8080, flags="S"), dst=HOST_IP)
        rv, out = world.endpoint(bytes(syn))
        assert rv == TC_ACT_REDIRECT, world.maps.moved_verdicts()
        assert_bytes(out, to_c1(syn, src="10.0.0.1", dst=C1.ip, dport=80))
        orig = Tuple(C1.ip, HOST_IP, sport, 8080, TCP_P)
        assert ct_tuples(world.maps)[orig] == Tuple("10.0.0.1", C1.ip, sport, 80, TCP_P)
        assert world.maps.ct_table()[orig].kind == S.CT_K_DNAT | S.CT_K_SNAT
    ans = from_c1(TCP(sport=80, dport=40001, flags="SA"), dst="10.0.0.1")
    rv, out = world.endpoint(bytes(ans))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(ans, src=HOST_IP, sport=8080, dst=C1.ip))


def test_users_dnat_to_a_published_target_is_masqueraded_too(world):
    """Docker's per-port rule matches the target (c1, tcp, 80), whatever DNAT led there: a
    user's rule to c1:80 from c1 itself gets the gateway as source as well."""
    world.rules(CONTROL_PLANE.replace("COMMIT", "-A PREROUTING -p tcp -m tcp --dport 7070 -j DNAT "
                                                "--to-destination 10.0.0.2:80\nCOMMIT"), published=C1_PUBLISHED)
    syn = from_c1(TCP(sport=40000, dport=7070, flags="S"), dst=HOST_IP)
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(syn, src="10.0.0.1", dst=C1.ip, dport=80))


def test_hairpin_masquerade_comes_before_the_users_postrouting(world):
    """Docker's per-port hairpin rule leads POSTROUTING, so a user's SNAT rule that also matches
    the flow does not get to decide: the source is still the gateway."""
    world.rules(CONTROL_PLANE.replace("COMMIT", "-A POSTROUTING -d 10.0.0.2/32 -j SNAT --to-source 203.0.113.1"
                                                "\nCOMMIT"), published=C1_PUBLISHED)
    syn = from_c1(TCP(sport=40000, dport=8080, flags="S"), dst=HOST_IP)
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(syn, src="10.0.0.1", dst=C1.ip, dport=80))


def test_users_dnat_to_the_sender_itself_is_not_masqueraded(world):
    """A user's DNAT rule from c1 to itself at a port nobody published, with no MASQUERADE rule
    for it: no SNAT, as with iptables (where the container then drops its own address as a
    martian source)."""
    world.rules(DOCKER_HOST)
    syn = from_c1(TCP(sport=40000, dport=8080, flags="S"), dst=HOST_IP)
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(syn, dst=C1.ip, dport=80))
    assert world.maps.ct_table()[Tuple(C1.ip, HOST_IP, 40000, 8080, TCP_P)].kind == S.CT_K_DNAT


def test_users_hairpin_masquerade_rule_applies(world):
    """With Docker's own per-port rule in the user's POSTROUTING, POSTROUTING does the SNAT."""
    world.rules(DOCKER_HOST.replace("COMMIT", "-A POSTROUTING -s 10.0.0.2/32 -d 10.0.0.2/32 -p tcp -m tcp "
                                              "--dport 80 -j MASQUERADE\nCOMMIT"))
    syn = from_c1(TCP(sport=40000, dport=8080, flags="S"), dst=HOST_IP)
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(syn, src="10.0.0.1", dst=C1.ip, dport=80))


def test_own_published_port_without_a_gateway_address_drops(world):
    world.rules(CONTROL_PLANE, published=C1_PUBLISHED)
    world.maps.nat_ifaddr.delete(BR_N)
    syn = bytes(from_c1(TCP(sport=40000, dport=8080, flags="S"), dst=HOST_IP))
    assert world.endpoint(syn) == (TC_ACT_SHOT, syn)
    assert world.maps.moved_verdicts() == {"NAT_NO_ADDR": (1, len(syn))}


# ---------------------------------------------------------------- isolation with NAT rules
CROSS = ruleset(""":DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 10.0.0.0/24 ! -o br-n -j MASQUERADE
-A POSTROUTING -s 10.9.0.0/24 ! -o br-m -j MASQUERADE
-A DOCKER -p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.9.0.2:90
""")


def test_published_port_of_another_network_is_reachable(world):
    """c1 -> host:9090, published by m1 on network M: a DNATed flow may cross networks (the
    masquerade rule applies too: the out-interface br-m is not c1's bridge, so the source becomes
    br-m's address, as MASQUERADE does)."""
    world.rules(CROSS)
    syn = from_c1(TCP(sport=40000, dport=9090, flags="S"), dst=HOST_IP)
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, rewritten(syn, src=GW_M, dst=M1.ip, dport=90, esrc=GW_M_MAC, edst=M1.mac))
    to = ct_tuples(world.maps)[Tuple(C1.ip, HOST_IP, 40000, 9090, TCP_P)]
    assert to == Tuple(GW_M, M1.ip, 40000, 90, TCP_P)
    assert world.maps.ct_table()[Tuple(C1.ip, HOST_IP, 40000, 9090, TCP_P)].kind == S.CT_K_DNAT | S.CT_K_SNAT


def test_direct_cross_network_traffic_stays_isolated_with_rules(world):
    """c1 -> m1's address through the gateway: no DNAT, so the route stage declines before
    POSTROUTING (whose MASQUERADE rule would match) and the endpoint isolates it."""
    world.rules(CROSS)
    syn = bytes(from_c1(TCP(sport=40000, dport=90, flags="S"), dst=M1.ip))
    assert world.endpoint(syn) == (TC_ACT_SHOT, syn)
    assert world.maps.moved_verdicts() == {"ISOLATION": (1, len(syn))}
    assert world.maps.ct.keys() == []


def test_internal_endpoint_gets_no_nat(world):
    """An endpoint of an internal network (EP_F_INTERNAL) is never translated, rules or not."""
    world.rules(DOCKER_HOST)
    world.maps.by_ifindex.update(C1.ifindex, S.EndpointInfo(mac=S.mac_bytes(C1.mac), flags=S.EP_F_INTERNAL,
                                                            ip=S.be32(C1.ip), net_id=C1.net_id))
    for pkt in (bytes(from_c1(TCP(sport=40000, dport=443, flags="S"))),
                bytes(from_c1(TCP(sport=40000, dport=8080, flags="S"), dst=HOST_IP))):
        assert world.endpoint(pkt) == (TC_ACT_OK, pkt)
    assert world.maps.ct.keys() == [] and world.maps.nat_counter_table() == {}


def test_dnat_with_ip_options(world):
    """IHL 6: the L4 header (ports, checksum) is found after the options."""
    world.rules(DOCKER_HOST)
    syn = from_outside(TCP(sport=40000, dport=8080, flags="S"), options=[b"\x01\x01\x01\x00"])
    assert bytes(syn)[14] == 0x46
    rv, out = world.uplink(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(syn, dst=C1.ip, dport=80))

"""Conntrack lifecycle through the programs (lib/ct.h): TCP states and their timeouts in both
halves, a new SYN on a closed flow, twin repair after an eviction, mid-stream pickup."""

from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.inet import ICMP, TCP, UDP

from dockline.control.datapath import bpf_structs as S

from .harness import TC_ACT_OK, TC_ACT_REDIRECT, Tuple
from .natenv import (assert_tracked_untranslated, C1, CLIENT, DOCKER_HOST, HOST_IP, ICMP_P, TCP_P, UDP_P, assert_bytes, ct_pair_of,
                     ct_tuples, from_c1, from_outside, to_c1, to_outside)

pytestmark = pytest.mark.root

SEC = 1_000_000_000
#: consts.h
TIMEOUT = {"syn": 60, "est": 21600, "fin": 60, "close": 10, "udp": 60, "icmp": 30}
TWIN_CHECK_NS = SEC

ORIG = Tuple(CLIENT, HOST_IP, 40000, 8080, TCP_P)
TO = Tuple(CLIENT, C1.ip, 40000, 80, TCP_P)
REPLY = TO.reverse()


def client(flags: str, **kw):
    return from_outside(TCP(sport=40000, dport=8080, flags=flags, **kw))


def server(flags: str, **kw):
    return from_c1(TCP(sport=80, dport=40000, flags=flags, **kw))


class Clock:
    """Runs one packet and remembers the monotonic window it ran in (bpf_ktime_get_ns)."""

    def __init__(self, world):
        self.world = world
        self.t0 = self.t1 = 0

    def run(self, side: str, pkt):
        self.t0 = time.monotonic_ns()
        r = getattr(self.world, side)(bytes(pkt))
        self.t1 = time.monotonic_ns()
        return r

    def expires_within(self, entry, timeout_s: int) -> bool:
        return self.t0 + timeout_s * SEC <= entry.expires_ns <= self.t1 + timeout_s * SEC


def halves(world):
    ct = world.maps.ct_table()
    return ct[ORIG], ct[REPLY]


def test_tcp_states_and_timeouts(world):
    world.rules(DOCKER_HOST)
    clk = Clock(world)

    assert clk.run("uplink", client("S"))[0] == TC_ACT_REDIRECT
    o, r = halves(world)
    assert (o.state, r.state) == (S.CT_ST_NEW, S.CT_ST_NEW)
    assert clk.expires_within(o, TIMEOUT["syn"]) and clk.expires_within(r, TIMEOUT["syn"])

    assert clk.run("endpoint", server("SA"))[0] == TC_ACT_REDIRECT
    o, r = halves(world)
    assert (o.state, r.state) == (S.CT_ST_ESTABLISHED, S.CT_ST_ESTABLISHED)
    assert clk.expires_within(o, TIMEOUT["est"]) and clk.expires_within(r, TIMEOUT["est"])
    reply_expiry = r.expires_ns

    # no state change: only the half that saw the packet is refreshed
    assert clk.run("uplink", client("A"))[0] == TC_ACT_REDIRECT
    o, r = halves(world)
    assert o.state == r.state == S.CT_ST_ESTABLISHED
    assert clk.expires_within(o, TIMEOUT["est"]) and o.expires_ns > reply_expiry
    assert r.expires_ns == reply_expiry

    assert clk.run("uplink", client("FA"))[0] == TC_ACT_REDIRECT
    o, r = halves(world)
    assert (o.state, r.state) == (S.CT_ST_FIN, S.CT_ST_FIN)
    assert clk.expires_within(o, TIMEOUT["fin"]) and o.expires_ns == r.expires_ns

    # a FIN in the other direction keeps FIN (no going back to "established")
    assert clk.run("endpoint", server("FA"))[0] == TC_ACT_REDIRECT
    o, r = halves(world)
    assert (o.state, r.state) == (S.CT_ST_FIN, S.CT_ST_FIN)

    rst = server("R")
    rv, out = clk.run("endpoint", rst)
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_outside(rst, src=HOST_IP, sport=8080))      # still translated
    o, r = halves(world)
    assert (o.state, r.state) == (S.CT_ST_CLOSED, S.CT_ST_CLOSED)
    assert clk.expires_within(r, TIMEOUT["close"]) and o.expires_ns == r.expires_ns
    assert (o.packets, r.packets) == (2, 3)
    assert world.maps.nat_counter_table() == {"CT_NEW": 1, "CT_HIT": 5}


@pytest.mark.parametrize("state", [S.CT_ST_FIN, S.CT_ST_CLOSED])
def test_new_syn_on_a_closing_flow_restarts_it(world, state):
    """A SYN (no ACK) on the original tuple of a flow in FIN or CLOSED replaces both halves: a
    fresh flow through the rules (CT_RESTART, CT_NEW), counters from zero."""
    world.rules(DOCKER_HOST)
    world.maps.add_ct_pair(ORIG, TO, kind=S.CT_K_DNAT, state=state)
    e = world.maps.ct.lookup(ORIG.key())
    e.packets = 77
    world.maps.ct.update(ORIG.key(), e)
    syn = client("S")
    rv, out = world.uplink(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(syn, dst=C1.ip, dport=80))
    assert world.maps.nat_counter_table() == {"CT_RESTART": 1, "CT_NEW": 1}
    o, r = halves(world)
    assert (o.state, r.state, o.packets) == (S.CT_ST_NEW, S.CT_ST_NEW, 0)
    assert ct_tuples(world.maps) == ct_pair_of(ORIG, TO)


@pytest.mark.parametrize("flags, state", [("S", S.CT_ST_ESTABLISHED), ("SA", S.CT_ST_CLOSED),
                                          ("S", S.CT_ST_NEW)], ids=["syn-established", "synack-closed",
                                                                    "syn-new"])
def test_no_restart_otherwise(world, flags, state):
    """A SYN on an open flow (a retransmission) or a SYN-ACK is an ordinary hit."""
    world.rules(DOCKER_HOST)
    world.maps.add_ct_pair(ORIG, TO, kind=S.CT_K_DNAT, state=state)
    world.uplink(bytes(client(flags)))
    assert world.maps.nat_counter_table() == {"CT_HIT": 1}
    assert world.maps.ct_table()[ORIG].packets == 1


def test_closed_reply_direction_syn_is_not_a_restart(world):
    """Only the original direction restarts a flow: a SYN from the server side on a CLOSED flow
    is translated by the stale entry."""
    world.rules(DOCKER_HOST)
    world.maps.add_ct_pair(ORIG, TO, kind=S.CT_K_DNAT, state=S.CT_ST_CLOSED)
    syn = server("S")
    rv, out = world.endpoint(bytes(syn))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_outside(syn, src=HOST_IP, sport=8080))
    assert world.maps.nat_counter_table() == {"CT_HIT": 1}


# ---------------------------------------------------------------- twin repair
def test_evicted_reply_half_is_rebuilt_by_the_original_half(world):
    """The reply half is gone (LRU) and the original half has not checked its twin for over
    CT_TWIN_CHECK_NS (twin_checked_ns forced to 0): the next packet rebuilds it, equal to what
    ct_create wrote, and the answer is translated again."""
    m = world.maps
    world.rules(DOCKER_HOST)
    world.uplink(bytes(client("S")))
    world.endpoint(bytes(server("SA")))
    want_reply = m.ct.lookup(REPLY.key())
    m.ct.delete(REPLY.key())
    o = m.ct.lookup(ORIG.key())
    o.twin_checked_ns = 0
    m.ct.update(ORIG.key(), o)
    t0 = time.monotonic_ns()
    assert world.uplink(bytes(client("A")))[0] == TC_ACT_REDIRECT
    t1 = time.monotonic_ns()
    assert m.nat_counter_table()["CT_TWIN_REPAIR"] == 1
    got = m.ct.lookup(REPLY.key())
    assert got is not None
    assert (Tuple.to_of(got, TCP_P), got.dir, got.state, got.kind, got.flags) == (
        Tuple.to_of(want_reply, TCP_P), S.CT_DIR_REPLY, S.CT_ST_ESTABLISHED, S.CT_K_DNAT, 0)
    assert t0 <= got.twin_checked_ns <= t1 and t0 <= m.ct.lookup(ORIG.key()).twin_checked_ns <= t1
    ans = server("A")
    rv, out = world.endpoint(bytes(ans))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_outside(ans, src=HOST_IP, sport=8080))


def test_twin_is_not_checked_again_within_the_interval(world):
    """Right after the flow was created (twin_checked_ns = now) a missing twin is not noticed:
    the check costs a lookup, so it runs once per CT_TWIN_CHECK_NS."""
    m = world.maps
    world.rules(DOCKER_HOST)
    world.uplink(bytes(client("S")))
    m.ct.delete(REPLY.key())
    world.uplink(bytes(client("S")))          # same state: no twin check within 1 s
    assert m.ct.lookup(REPLY.key()) is None
    assert "CT_TWIN_REPAIR" not in m.nat_counter_table()


def test_evicted_original_half_is_rebuilt_by_the_reply_half(world):
    m = world.maps
    world.rules(DOCKER_HOST)
    world.uplink(bytes(client("S")))
    world.endpoint(bytes(server("SA")))
    want = m.ct.lookup(ORIG.key())
    m.ct.delete(ORIG.key())
    r = m.ct.lookup(REPLY.key())
    r.twin_checked_ns = 0
    m.ct.update(REPLY.key(), r)
    world.endpoint(bytes(server("A")))
    got = m.ct.lookup(ORIG.key())
    assert got is not None and m.nat_counter_table()["CT_TWIN_REPAIR"] == 1
    assert (Tuple.to_of(got, TCP_P), got.dir, got.state, got.kind) == (
        Tuple.to_of(want, TCP_P), S.CT_DIR_ORIG, want.state, want.kind)


def test_evicted_original_half_is_rebuilt_by_a_new_original_packet(world):
    """The original half is gone: the client's next packet is a conntrack miss, goes through the
    rules, and ct_create finds the flow's own reply half: the original half is re-created with
    the same translation (no new flow, no port change)."""
    m = world.maps
    world.rules(DOCKER_HOST)
    world.uplink(bytes(client("S")))
    world.endpoint(bytes(server("SA")))
    m.ct.delete(ORIG.key())
    ack = client("A")
    rv, out = world.uplink(bytes(ack))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(ack, dst=C1.ip, dport=80))
    assert m.nat_counter_table() == {"CT_NEW": 1, "CT_HIT": 1, "CT_TWIN_REPAIR": 1}
    assert ct_tuples(m) == ct_pair_of(ORIG, TO)
    o, r = halves(world)
    assert (o.dir, o.state, o.kind) == (S.CT_DIR_ORIG, S.CT_ST_ESTABLISHED, S.CT_K_DNAT)


# ---------------------------------------------------------------- pickup, other protocols
def test_mid_stream_packet_starts_a_loose_flow(world):
    """An ACK of a connection conntrack never saw (e.g. after a restart of the table) is picked
    up: ESTABLISHED at once, flagged LOOSE."""
    world.rules(DOCKER_HOST)
    ack = client("A")
    rv, out = world.uplink(bytes(ack))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(ack, dst=C1.ip, dport=80))
    o, r = halves(world)
    for e in (o, r):
        assert (e.state, e.flags) == (S.CT_ST_ESTABLISHED, S.CT_F_LOOSE)


def test_mid_stream_packet_of_a_host_socket_is_not_picked_up(world):
    """... unless a socket of the host owns that tuple (here a listener on HOST_IP:8080): then it
    is the host's own connection and stays untranslated."""
    world.rules(DOCKER_HOST)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST_IP, 8080))
        s.listen(1)
        ack = bytes(client("A"))
        assert world.uplink(ack) == (TC_ACT_OK, ack)
        assert_tracked_untranslated(world.maps, ack)     # the host's own connection
        assert world.maps.moved_verdicts() == {"UPLINK_PASS": (1, len(ack))}
        # a SYN is a new connection: the rule decides, whatever listens
        for k in world.maps.ct.keys():       # (a SYN on a live tuple stays that flow's)
            world.maps.ct.delete(k)
        assert world.uplink(bytes(client("S")))[0] == TC_ACT_REDIRECT
    finally:
        s.close()


@pytest.mark.parametrize("proto", ["udp", "icmp"])
def test_udp_and_icmp_timeouts(world, proto):
    """UDP and ICMP echo flows (masqueraded): NEW until answered, then ESTABLISHED, with the
    protocol's timeout throughout."""
    world.rules(DOCKER_HOST)
    clk = Clock(world)
    if proto == "udp":
        out_l4, back_l4, number, t = UDP(sport=40000, dport=53), UDP(sport=53, dport=40000), UDP_P, "udp"
        orig = Tuple(C1.ip, CLIENT, 40000, 53, UDP_P)
    else:
        out_l4, back_l4, number, t = ICMP(id=9), ICMP(type=0, id=9), ICMP_P, "icmp"
        orig = Tuple(C1.ip, CLIENT, 9, 0, ICMP_P)
    clk.run("endpoint", from_c1(out_l4))
    ct = world.maps.ct_table()
    assert len(ct) == 2 and all(e.state == S.CT_ST_NEW and clk.expires_within(e, TIMEOUT[t]) for e in ct.values())
    assert orig in ct
    assert clk.run("uplink", from_outside(back_l4))[0] == TC_ACT_REDIRECT
    ct = world.maps.ct_table()
    assert all(e.state == S.CT_ST_ESTABLISHED and clk.expires_within(e, TIMEOUT[t]) for e in ct.values())


def test_ttl_1_on_a_tracked_flow_is_left_untranslated(world):
    world.rules(DOCKER_HOST)
    world.maps.add_ct_pair(ORIG, TO, kind=S.CT_K_DNAT, state=S.CT_ST_ESTABLISHED)
    pkt = bytes(from_outside(TCP(sport=40000, dport=8080, flags="A"), ttl=1))
    assert world.uplink(pkt) == (TC_ACT_OK, pkt)
    assert world.maps.nat_counter_table() == {"TTL_EXCEEDED": 1}

"""tc_from_endpoint (ebpf/tc_endpoint.c) run by the kernel on buffers (BPF_PROG_TEST_RUN):
return value, output packet, verdict counter and endpoint_stats for every table case of
tests/ebpf/packets.py, each with and without net_info (NAT on, no rules: routed packets go through
the tail-called stages of ebpf/tc_nat.c, which decline and give the same verdict). The NAT side
effects (nat_counters, whether the stages ran, conntrack) are checked against tests/ebpf/model.py."""

from __future__ import annotations

import errno

import pytest

from dockline.control.datapath.bpf_structs import Verdict

from . import harness, model
from .harness import TEST_RUN_IFINDEX, check_case, prog_test_run, run
from .packets import (A1, A2, B1, GW_A_MAC, OUTSIDE_IP, TC_CASES, frame, params, standard, with_net_info,
                      with_variants)

pytestmark = pytest.mark.root


def check_nat_effects(case, maps, scratch):
    """After check_case: the NAT counters that moved, whether the new-flow stages ran (nat_scratch,
    see conftest.Scratch) and the conntrack keys, as the model predicts them."""
    if case.expected_errno is not None:
        assert maps.nat_counter_table() == {} and not scratch.route_stage_ran()
        return
    st = model.state_of(case.setup)
    want = model.tc_model(case.build(), st).nat
    assert maps.nat_counter_table() == want.counters, f"{case.id}: nat counters"
    assert scratch.route_stage_ran() == want.stages, (
        f"{case.id}: the tail-called stages {'did not run' if want.stages else 'ran'}")
    assert set(maps.ct_table()) == set(st.ct()), f"{case.id}: conntrack entries changed"


@pytest.mark.parametrize("case", params(with_variants(TC_CASES)))
def test_tc_from_endpoint(case, maps, tc_fd, scratch):
    check_case(case, maps, tc_fd, stats_ifindex=TEST_RUN_IFINDEX)
    check_nat_effects(case, maps, scratch)


def test_net_info_variants_exercise_the_stages():
    """The net_info variants are not vacuous: the model sends the routed ones (to the gateway
    MAC, TCP/UDP/ICMP echo, not a later fragment) through the stages, and the rest not."""
    cases = [c for c in with_variants(TC_CASES) if c.id.endswith("+net_info") and c.expected_errno is None]
    staged = {c.id for c in cases if model.tc_model(c.build(), model.state_of(c.setup)).nat.stages}
    assert {"to-unknown-ip+net_info", "cross-network-via-gateway-mac+net_info", "to-gateway-ip+net_info",
            "icmp-echo-to-outside+net_info", "fragment-mf-cross-network+net_info",
            "same-network-via-gateway-mac+net_info"} <= staged
    assert not staged & {"unicast-same-network+net_info", "cross-network+net_info", "gre-to-outside+net_info",
                         "icmp-error-to-outside+net_info", "fragment-offset-cross-network+net_info",
                         "arp-request+net_info"}
    assert len(staged) >= 12


def test_stages_missing_behave_like_no_nat(maps, bpf_env, scratch):
    """With nat_tail emptied (a stage missing), nat_ingress's fallback gives the same verdict; the
    slots are refilled afterwards."""
    from dockline.control.datapath import loader, map_schema
    standard(maps)
    with_net_info(maps)
    tail = map_schema.open_map(bpf_env.root, "nat_tail")
    try:
        for slot in loader.NAT_TAIL:
            tail.delete(slot)
        pkt = frame(edst=GW_A_MAC, dst=B1.ip)
        assert run(bpf_env.tc_fd, pkt) == (harness.TC_ACT_SHOT, pkt)
        assert maps.verdict(Verdict.ISOLATION) == (1, len(pkt))
        assert not scratch.route_stage_ran()
    finally:
        tail.close()
        bpf_env.programs._fill_tail_calls()
    pkt = frame(edst=GW_A_MAC, dst=OUTSIDE_IP)
    assert run(bpf_env.tc_fd, pkt) == (harness.TC_ACT_OK, pkt)
    assert scratch.route_stage_ran()


@pytest.mark.parametrize("case", [c for c in TC_CASES if c.expected_errno is None and not c.bug][:8],
                         ids=str)
def test_explicit_ctx_ifindex_gives_the_same_verdict(case, maps, tc_fd):
    """A __sk_buff ctx naming ifindex 1 explicitly behaves like no ctx at all."""
    check_case(case, maps, tc_fd, stats_ifindex=TEST_RUN_IFINDEX, ifindex=TEST_RUN_IFINDEX)


# ---------------------------------------------------------------- what the test run gives
@pytest.fixture(scope="module")
def ifindex_probe():
    """A trivial SCHED_CLS program returning skb->ifindex * 1000 + skb->ingress_ifindex."""
    from bcc import BPF
    b = BPF(text=b"int probe(struct __sk_buff *s) { return s->ifindex * 1000 + s->ingress_ifindex; }")
    try:
        yield b.load_func(b"probe", BPF.SCHED_CLS).fd
    finally:
        b.cleanup()


def test_harness_test_run_device_is_the_loopback(ifindex_probe):
    """Without a ctx the kernel builds the skb on the netns loopback: ifindex 1, no ingress."""
    assert run(ifindex_probe, frame())[0] == TEST_RUN_IFINDEX * 1000 + 0 == 1000


def test_harness_ctx_sets_ifindex_and_ingress_ifindex(ifindex_probe):
    ctx = harness.SkBuff(ifindex=1, ingress_ifindex=7)
    assert run(ifindex_probe, frame(), ctx=ctx)[0] == 1007


def test_harness_ctx_with_a_missing_ifindex_is_refused(ifindex_probe):
    with pytest.raises(harness.RunRefused) as e:
        run(ifindex_probe, frame(), ifindex=0x7FFF0000)
    assert e.value.errno == errno.ENODEV


def test_harness_ctx_with_a_forbidden_field_is_refused(ifindex_probe):
    with pytest.raises(harness.RunRefused) as e:
        run(ifindex_probe, frame(), ctx=harness.SkBuff(len=60))
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("ethertype, shortest", [(0x0800, 14 + 20), (0x86DD, 14 + 40), (0x0806, 14),
                                                   (0x8100, 14), (0x88CC, 14), (0x0000, 14)])
def test_harness_shortest_frame_a_sched_cls_test_run_accepts(ifindex_probe, ethertype, shortest):
    """Measured on 6.18: below ETH_HLEN every run is refused; IPv4 and IPv6 frames are also
    refused while their network header does not fit (the kernel reads it for the test socket),
    so the program's own truncated-IPv4 checks are only reachable in a TC test run through
    IHL > 5 (and through the XDP program, whose test run has no such check)."""
    pkt = frame()[:12] + ethertype.to_bytes(2, "big") + bytes(64)
    assert run(ifindex_probe, pkt[:shortest])[0] == 1000
    with pytest.raises(harness.RunRefused) as e:
        run(ifindex_probe, pkt[:shortest - 1])
    assert e.value.errno == errno.EINVAL


def test_endpoint_keyed_on_another_ifindex_is_unknown(maps, tc_fd):
    """The program looks itself up by skb->ifindex: a1 keyed on ifindex 2 is not this device."""
    standard(maps)
    maps.by_ifindex.delete(A1.ifindex)
    maps.add_endpoint(harness.Endpoint("a1@2", 2, A1.ip, A1.mac, A1.net_id), by_ip=False)
    before = maps.verdict(Verdict.UNKNOWN_ENDPOINT)[0]
    assert run(tc_fd, frame())[0] == harness.TC_ACT_SHOT
    assert maps.verdict(Verdict.UNKNOWN_ENDPOINT)[0] == before + 1


# ---------------------------------------------------------------- counters over several packets
def test_endpoint_stats_accumulate(maps, tc_fd):
    standard(maps)
    sent = {"redirected": [], "passed": [], "dropped": []}
    for pkt, bucket in ((frame(), "redirected"), (frame(), "redirected"),
                        (frame(edst=GW_A_MAC, dst="8.8.8.8"), "passed"),
                        (frame(src=A2.ip), "dropped"), (frame(edst=B1.mac, dst=B1.ip), "dropped"),
                        (frame(esrc=B1.mac), "dropped")):
        run(tc_fd, pkt)
        sent[bucket].append(len(pkt))
    assert maps.endpoint_stats(TEST_RUN_IFINDEX) == {k: (len(v), sum(v)) for k, v in sent.items()}
    assert maps.verdict(Verdict.REDIRECT_PEER) == (2, sum(sent["redirected"]))
    assert maps.verdict(Verdict.PASS) == (1, sum(sent["passed"]))
    assert maps.ep_stats.keys()[0].value == TEST_RUN_IFINDEX and len(maps.ep_stats.keys()) == 1


def test_unknown_endpoint_still_gets_a_stats_entry(maps, tc_fd):
    """Documented behaviour: count() creates the endpoint_stats entry of the device even when the
    device is unknown (the control plane's remove_orphans deletes such entries)."""
    run(tc_fd, frame())
    assert maps.endpoint_stats(TEST_RUN_IFINDEX) == {"redirected": (0, 0), "passed": (0, 0),
                                                      "dropped": (1, len(frame()))}


def test_map_changes_apply_to_the_next_packet(maps, tc_fd):
    """No caching in the program: a2 moving to network B turns the redirect into a drop."""
    standard(maps)
    assert run(tc_fd, frame())[0] == harness.TC_ACT_REDIRECT
    maps.add_endpoint(harness.Endpoint("a2", A2.ifindex, A2.ip, A2.mac, B1.net_id), by_ifindex=False)
    assert run(tc_fd, frame())[0] == harness.TC_ACT_SHOT
    assert maps.verdict(Verdict.ISOLATION)[0] == 1


def test_repeat_runs_count_every_repetition(maps, tc_fd):
    """Behaviour only; the per-packet cost is a benchmark
    (bench/micro/test_datapath_cost.py::test_tc_from_endpoint_per_packet)."""
    standard(maps)
    pkt = frame()
    r = prog_test_run(tc_fd, pkt, repeat=1000)
    assert r.retval == harness.TC_ACT_REDIRECT and r.out == pkt
    assert maps.verdict(Verdict.REDIRECT_PEER) == (1000, 1000 * len(pkt))
    assert maps.moved_verdicts() == {"REDIRECT_PEER": (1000, 1000 * len(pkt))}

"""Malformed-packet fuzzing: thousands of random and mutated frames through BPF_PROG_TEST_RUN and
through the pure-Python reference model (tests/ebpf/model.py): 0 mismatches allowed in the
refusal errno, the verdict (the one verdict counter that moved), the return value and the output
bytes. The model is first checked against every hand-written case of tests/ebpf/packets.py.

Every TC class runs twice: without net_info, and with net_info for both networks (NAT on, no
rules, empty conntrack), where routed packets go through the tail-called NAT stages and must still
get the model's verdict; there the NAT counters must match the model too (only FRAG_UNKNOWN can
move) and conntrack must stay empty.

Fixed seeds: a failure names the class, the packet (hex) and both verdicts, and reproduces.
"""

from __future__ import annotations

import random
import struct

import pytest

from .natenv import ct_tuples

from dockline.control.datapath.bpf_structs import Verdict

from . import model, packets
from .harness import RunRefused, TEST_RUN_IFINDEX, prog_test_run, stats_bucket
from .packets import A1, A2, B1, BCAST_MAC, GW_A_MAC, OTHER_MAC, OUTSIDE_IP, ROUTER_MAC, UPLINK_MAC

root = pytest.mark.root   # the model-only tests run anywhere

SEED = 0xD0C11E
PER_CLASS = 2000

STANDARD = model.state_of(packets.standard)
WITHOUT_SELF = model.state_of(packets.without_self)
SELF_ENTRY = STANDARD.by_ifindex[TEST_RUN_IFINDEX]


def _nat_states():
    """STANDARD and WITHOUT_SELF with net_info: fresh State objects (the model fills their
    frag_ports as the program fills the map)."""
    def add(setup):
        return model.state_of(lambda m: (setup(m), packets.with_net_info(m)))
    return add(packets.standard), add(packets.without_self)

MACS = [model.mac_b(m) for m in (A1.mac, A2.mac, B1.mac, GW_A_MAC, BCAST_MAC, OTHER_MAC)]
IPS = [model.ip_b(i) for i in (A1.ip, A2.ip, B1.ip, packets.GW_A_IP, OUTSIDE_IP, "0.0.0.0",
                               "255.255.255.255", "10.1.0.77")]
SPORTS = [8080, 5353, 0, 53, 40000]
PROTOS = [6, 17, 1, 47, 0]
ETHERTYPES = [0x0800, 0x0806, 0x86DD, 0x8100, 0x88A8, 0x88CC, 0x9100, 0x0000, 0x05DC, 0x0600, 0xFFFF]
A1_MAC, A1_IP = model.mac_b(A1.mac), model.ip_b(A1.ip)


# ---------------------------------------------------------------- raw frame builders (fast)
def ipv4(*, esrc=A1_MAC, edst=model.mac_b(A2.mac), src=A1_IP, dst=model.ip_b(A2.ip), proto=6,
         sport=40000, dport=80, ihl=None, ver=4, tot_len=None, frag=0, opts=b"", ethertype=0x0800) -> bytes:
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 65535, 0, 0)
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + 4, 0) + b"data"
    else:
        l4 = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"
    hl = 20 + len(opts)
    if ihl is None:
        ihl = hl // 4
    tot = hl + len(l4) if tot_len is None else tot_len
    iph = struct.pack("!BBHHHBBH4s4s", (ver << 4) | (ihl & 0xF), 0, tot & 0xFFFF, 1, frag & 0xFFFF, 64,
                      proto & 0xFF, 0, src, dst) + opts
    return edst + esrc + struct.pack("!H", ethertype) + iph + l4


def arp(*, esrc=A1_MAC, sha=A1_MAC, sip=A1_IP, tip=model.ip_b(A2.ip), op=1, hrd=1, pro=0x0800, hln=6,
        pln=4) -> bytes:
    return (model.mac_b(BCAST_MAC) + esrc + b"\x08\x06" + struct.pack("!HHBBH", hrd, pro, hln, pln, op)
            + sha + sip + bytes(6) + tip)


def random_valid(rng: random.Random, own: float = 0.4) -> bytes:
    """A well-formed frame between random known addresses; with probability ``own`` each the
    Ethernet and IP/ARP sources are a1's, otherwise any known (often spoofed) one."""
    def mac():
        return A1_MAC if rng.random() < own else rng.choice(MACS)

    def src():
        return A1_IP if rng.random() < own else rng.choice(IPS)

    r = rng.random()
    if r < 0.15:
        return arp(esrc=mac(), sha=mac(), sip=src(), tip=rng.choice(IPS))
    if r < 0.2:
        return (model.mac_b("33:33:00:00:00:01") + mac() + b"\x86\xdd"
                + rng.randbytes(rng.randrange(0, 80)))
    opts = rng.choice([b"", b"", b"\x01\x01\x01\x00", b"\x01" * 40])
    return ipv4(esrc=mac(), edst=rng.choice(MACS),
                src=src(), dst=rng.choice(IPS), proto=rng.choice(PROTOS),
                sport=rng.choice(SPORTS + [rng.randrange(65536)]), dport=rng.choice(SPORTS),
                frag=rng.choice([0, 0, 0x4000, 0x2000, 0x0001, rng.randrange(65536)]), opts=opts)


def put(data: bytes, off: int, value: bytes) -> bytes:
    if off >= len(data):
        return data
    return data[:off] + value[:len(data) - off] + data[off + len(value):]


# ---------------------------------------------------------------- packet classes
def gen_random_bytes(rng):
    n = rng.choice([rng.randrange(0, 34), rng.randrange(14, 130), rng.randrange(34, 80)])
    pkt = rng.randbytes(n)
    if rng.random() < 0.6:
        pkt = put(pkt, 6, A1_MAC)
    if rng.random() < 0.6:
        pkt = put(pkt, 12, struct.pack("!H", rng.choice([0x0800, 0x0806, 0x8100, 0x88A8, 0x86DD])))
    if rng.random() < 0.3:
        pkt = put(pkt, 26, A1_IP)
    return pkt, STANDARD


def gen_truncation():
    """Every prefix (0..len bytes) of a stream of random valid frames."""
    rng = random.Random(SEED + 1)
    while True:
        full = random_valid(rng, own=0.9)
        for n in range(len(full) + 1):
            yield full[:n], STANDARD


def gen_ihl(rng):
    pkt = ipv4(esrc=A1_MAC, src=A1_IP, dst=rng.choice(IPS[:3]), edst=rng.choice(MACS[:4]),
               proto=rng.choice([6, 17]), sport=rng.choice([8080, 5353, 1234]),
               opts=rng.choice([b"", b"\x01\x01\x01\x00", b"\x01" * 12]),
               ihl=rng.randrange(16), ver=rng.choice([4] * 6 + [0, 5, 6, 15]),
               tot_len=rng.choice([None, None, 0, rng.randrange(0, 64), rng.randrange(65536)]))
    if rng.random() < 0.3:
        pkt = pkt[:rng.randrange(14, len(pkt) + 1)]
    if rng.random() < 0.1:
        pkt += rng.randbytes(rng.randrange(1, 40))
    return pkt, STANDARD


def gen_ethertype(rng):
    et = rng.choice(ETHERTYPES + [rng.randrange(65536)])
    base = rng.choice([random_valid(rng), ipv4(), arp()])
    pkt = put(base, 12, struct.pack("!H", et))
    if rng.random() < 0.2:
        pkt = put(pkt, 6, rng.choice(MACS))
    return pkt, STANDARD


def gen_frag(rng):
    pkt = ipv4(esrc=A1_MAC, src=A1_IP, dst=rng.choice(IPS[:3]), edst=rng.choice(MACS[:4]),
               proto=rng.choice(PROTOS + [rng.randrange(256)]),
               sport=rng.choice([8080, 8080, 5353, 5353, rng.randrange(65536)]),
               frag=rng.choice([0, 0x4000, 0x2000, 0x1FFF, 0x8000, 0x0001, rng.randrange(65536)]),
               opts=rng.choice([b"", b"\x01\x01\x01\x00"]))
    if rng.random() < 0.2:
        pkt = pkt[:rng.randrange(34, len(pkt) + 1)]
    return pkt, STANDARD


def gen_endpoints(rng):
    return random_valid(rng), (WITHOUT_SELF if rng.random() < 0.1 else STANDARD)


TC_CLASSES = {
    "random-bytes": gen_random_bytes,
    "truncation": None,          # a stream, see gen_truncation
    "ihl-version-total-length": gen_ihl,
    "ethertype": gen_ethertype,
    "fragments-and-ports": gen_frag,
    "endpoints-and-spoofing": gen_endpoints,
}


def tc_packets(name: str, n: int, nat: bool = False):
    """The class's packets, each with the State it runs in (with net_info when ``nat``)."""
    if name == "truncation":
        it = gen_truncation()
        cases = [next(it) for _ in range(n)]
    else:
        rng = random.Random(f"{SEED}-{name}")
        cases = [TC_CLASSES[name](rng) for _ in range(n)]
    if nat:
        std, without = _nat_states()
        cases = [(pkt, std if st is STANDARD else without) for pkt, st in cases]
    return cases


# ---------------------------------------------------------------- the comparison loop
def use_state(maps, state, current):
    """Only the sender's endpoints_by_ifindex entry differs between the fuzz states, so switching
    never touches the counters."""
    if state is current:
        return current
    if TEST_RUN_IFINDEX in state.by_ifindex:
        maps.add_endpoint(packets.A1, by_ip=False)
    # (both fuzz states of one run have the same net_info, subnets and by_ip)
    else:
        maps.by_ifindex.delete(TEST_RUN_IFINDEX)
    return state


def fuzz(maps, prog_fd, cases, model_fn, *, stats: bool, nat_counters: dict | None = None):
    """``nat_counters``: a dict the model's NAT counter increments are summed into."""
    current = cases[0][1]
    current.install(maps)
    hist: dict[int, list[int]] = {}
    mismatches = []
    refusals = 0
    for pkt, state in cases:
        current = use_state(maps, state, current)
        want = model_fn(pkt, state)
        if nat_counters is not None and want.nat is not None:
            for name, n in want.nat.counters.items():
                nat_counters[name] = nat_counters.get(name, 0) + n
        try:
            r = prog_test_run(prog_fd, pkt)
            got_errno = None
        except RunRefused as e:
            r, got_errno = None, e.errno
        if want.errno is not None or got_errno is not None:
            refusals += 1
            if want.errno != got_errno:
                mismatches.append((pkt, f"model errno {want.errno}, kernel errno {got_errno}"
                                   + (f" (ran: retval {r.retval})" if r else "")))
                hist = {c: list(maps.verdict(c)) for c in range(32)}   # resync
            continue
        h = hist.setdefault(want.verdict, [0, 0])
        after = maps.verdict(want.verdict)
        ok_counter = after == (h[0] + 1, h[1] + len(pkt))
        if not ok_counter or r.retval != want.retval or r.out != pkt:
            table = {c: maps.verdict(c) for c in range(32)}
            moved = [Verdict(c).name for c, v in table.items() if v != tuple(hist.get(c, (0, 0)))]
            mismatches.append((pkt, f"model {Verdict(want.verdict).name}/{want.retval}, program "
                                    f"{moved}/{r.retval}" + ("" if r.out == pkt else " (packet changed)")))
            hist = {c: list(v) for c, v in table.items()}
            continue
        h[0] += 1
        h[1] += len(pkt)
    if mismatches:
        return mismatches, hist, refusals
    assert sum(v[0] for v in hist.values()) + refusals == len(cases), "a run was not accounted for"
    # every counter agrees with the model's histogram at the end (nothing moved twice)
    table = {c: maps.verdict(c) for c in range(32)}
    assert {c: v for c, v in table.items() if v != (0, 0)} == {c: tuple(v) for c, v in hist.items() if v[0]}
    if stats:
        want = {"redirected": [0, 0], "passed": [0, 0], "dropped": [0, 0]}
        for c, (p, b) in hist.items():
            want[stats_bucket(c)][0] += p
            want[stats_bucket(c)][1] += b
        got = maps.endpoint_stats(TEST_RUN_IFINDEX) or {k: (0, 0) for k in want}
        assert got == {k: tuple(v) for k, v in want.items()}
    return mismatches, hist, refusals


def report(mismatches, limit=10) -> str:
    return f"{len(mismatches)} mismatches, first {limit}:\n" + "\n".join(
        f"  {why}: {pkt.hex()}" for pkt, why in mismatches[:limit])


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("case", packets.params(packets.with_variants(packets.TC_CASES)))
def test_model_agrees_with_tc_table(case):
    """The reference model reproduces every hand-written expectation (no kernel involved). The
    model follows the program, so it "fails" exactly the cases that name a program bug."""
    want = model.tc_model(case.build(), model.state_of(case.setup))
    assert (want.errno, want.verdict, want.retval) == (case.expected_errno, case.expected_verdict_code,
                                                       case.expected_retval)


@pytest.mark.parametrize("case", packets.params(packets.XDP_CASES))
def test_model_agrees_with_xdp_table(case):
    want = model.xdp_model(case.build(), model.state_of(case.setup))
    assert (want.errno, want.verdict, want.retval) == (case.expected_errno, case.expected_verdict_code,
                                                       case.expected_retval)


@root
@pytest.mark.parametrize("nat", [False, True], ids=["plain", "net_info"])
@pytest.mark.parametrize("name", list(TC_CLASSES))
def test_fuzz_tc_from_endpoint(maps, tc_fd, name, nat):
    cases = tc_packets(name, PER_CLASS, nat)
    want_nat: dict = {}
    mismatches, hist, refusals = fuzz(maps, tc_fd, cases, model.tc_model, stats=True, nat_counters=want_nat)
    assert not mismatches, report(mismatches)
    # the class really exercised something: several verdicts, not only one
    assert len([c for c, v in hist.items() if v[0]]) >= 3, hist
    assert maps.nat_counter_table() == want_nat
    # no rules: nothing is translated, and what is tracked is tracked untranslated
    assert all(k == v for k, v in ct_tuples(maps).items())
    if not nat:
        assert want_nat == {} and maps.frag_ports.keys() == []


def test_fuzz_tc_covers_every_tc_verdict():
    """Across all classes the model (and so the program) reached every TC verdict."""
    seen = set()
    for name in TC_CLASSES:
        for pkt, state in tc_packets(name, PER_CLASS):
            o = model.tc_model(pkt, state)
            if o.verdict is not None:
                seen.add(o.verdict)
    not_tc = {Verdict.XDP_PASS, Verdict.XDP_NAT_REDIRECT, Verdict.UPLINK_SPOOFED, Verdict.UPLINK_MALFORMED,
              Verdict.UPLINK_PASS, Verdict.LOOPBACK_PASS}
    # translations need conntrack entries or rules, which the fuzz states do not have
    nat_only = {Verdict.NAT_REDIRECT, Verdict.NAT_PASS, Verdict.NAT_NO_PORT, Verdict.NAT_NO_ADDR}
    assert seen == {v for v in Verdict} - not_tc - nat_only


# -- xdp_uplink
UP_SRCS = [model.ip_b(i) for i in ("10.1.0.9", "10.1.0.255", "10.1.1.0", "10.2.255.255", "10.3.0.1",
                                   OUTSIDE_IP, "0.0.0.0", "9.255.255.255")]


def gen_uplink(rng):
    r = rng.random()
    if r < 0.2:
        pkt = rng.randbytes(rng.randrange(0, 100))
        if rng.random() < 0.7:
            pkt = put(pkt, 12, b"\x08\x00")
        return pkt
    pkt = ipv4(esrc=model.mac_b(ROUTER_MAC), edst=model.mac_b(UPLINK_MAC),
               src=rng.choice(UP_SRCS + [rng.randbytes(4)]), dst=A1_IP, proto=rng.choice(PROTOS),
               ihl=rng.choice([None] * 5 + [rng.randrange(16)]), ver=rng.choice([4] * 8 + [6, 0]),
               tot_len=rng.choice([None] * 4 + [rng.randrange(0, 80)]),
               opts=rng.choice([b"", b"\x01\x01\x01\x00"]),
               ethertype=rng.choice([0x0800] * 6 + [0x8100, 0x86DD, 0x0806, rng.randrange(65536)]))
    if rng.random() < 0.3:
        pkt = pkt[:rng.randrange(0, len(pkt) + 1)]
    return pkt


@root
def test_fuzz_xdp_uplink(maps, xdp_fd):
    rng = random.Random(f"{SEED}-uplink")
    cases = [(gen_uplink(rng), STANDARD) for _ in range(PER_CLASS)]
    mismatches, hist, refusals = fuzz(maps, xdp_fd, cases, model.xdp_model, stats=False)
    assert not mismatches, report(mismatches)
    assert {Verdict(c) for c, v in hist.items() if v[0]} == {
        Verdict.XDP_PASS, Verdict.UPLINK_SPOOFED, Verdict.UPLINK_MALFORMED}
    assert refusals > 0

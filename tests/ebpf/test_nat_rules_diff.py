"""Differential check of the compiled rule interpreter (ebpf/lib/nat_rules.h, run by the
tail-called tc_nat_eval): generated packets arriving on the uplink (tc_uplink_ingress, from up0 or
up1) must get the PREROUTING decision control/nat/interpreter.run() gives for the same compiled
Program, seen in the output packet: its destination address and port (DNAT, REDIRECT), or the
packet untouched (ACCEPT). The interpreter itself is checked against iptables semantics by
tests/unit (reference evaluator); this closes the loop to the kernel.

Every packet has a source port (ICMP: echo id) of its own, so conntrack never answers for an
earlier one: each decision is the rules'. Fixed seed: a mismatch names the packet and reproduces."""

from __future__ import annotations

import ipaddress
import random

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from dockline.control.nat import compiler as C
from dockline.control.nat import interpreter
from dockline.control.nat import select

from .harness import TC_ACT_OK, TC_ACT_REDIRECT
from .natenv import CLIENT, GW_M, GW_N, HOST_IP, ROUTER_MAC, UP1_IP, UPLINK_MAC, ruleset

pytestmark = pytest.mark.root

SEED = 0x5EED
PACKETS = 500

RULESETS = {
    "docker": ruleset(""":DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -i up1 -j RETURN
-A DOCKER ! -i up1 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
-A DOCKER -p udp -m udp --dport 5353 -j DNAT --to-destination 10.0.0.3:53
-A DOCKER -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 -j DNAT --to-destination 10.0.0.3:22
-A DOCKER -p tcp -m tcp --dport 8081:8083 -j DNAT --to-destination 10.0.0.2:81
"""),
    "generic": ruleset("""-A PREROUTING -s 198.51.100.0/28 -p tcp -m tcp --dport 80 -j ACCEPT
-A PREROUTING ! -s 198.51.100.0/24 -p tcp -m multiport --dports 80,443,8000:8010 -j DNAT --to-destination 10.0.0.2
-A PREROUTING -p tcp -m tcp --sport 1024:2047 -j DNAT --to-destination 10.0.0.3:9000
-A PREROUTING -d 203.0.113.1/32 -p udp -m multiport ! --dports 53,123 -j DNAT --to-destination 10.0.0.2:5000
-A PREROUTING -d 203.0.113.1/32 -p icmp -j DNAT --to-destination 10.0.0.3
-A PREROUTING -s 192.0.2.0/24 ! -p tcp -j DNAT --to-destination 10.0.0.2
-A PREROUTING -m addrtype ! --dst-type LOCAL -p udp -j DNAT --to-destination 10.0.0.3:7
"""),
    "chains": ruleset(""":A - [0:0]
:B - [0:0]
-A PREROUTING -p icmp -j RETURN
-A PREROUTING -j A
-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.3
-A A -s 198.51.100.1/32 -j RETURN
-A A -j B
-A A -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080
-A B -p udp -j ACCEPT
-A B -p tcp -m tcp --dport 22 -j REDIRECT --to-ports 2222
-A B -i up1 -p tcp -m tcp --dport 23 -j REDIRECT
-A B -p tcp -m tcp ! --sport 1024:65535
"""),
    "exact-runs": ruleset("""\
-A PREROUTING -d 203.0.113.1/32 -p tcp -m tcp --dport 1000 -j DNAT --to-destination 10.0.0.3:7
-A PREROUTING -p tcp -m tcp --dport 1000 -j DNAT --to-destination 10.0.0.2:1
-A PREROUTING -p tcp -m tcp --dport 1001 -j DNAT --to-destination 10.0.0.2:2
-A PREROUTING -s 192.0.2.0/24 -p udp -j ACCEPT
-A PREROUTING -p udp -m udp --dport 1000 -j DNAT --to-destination 10.0.0.3:1
-A PREROUTING -d 198.18.0.1/32 -p udp -m udp --dport 1002 -j DNAT --to-destination 10.0.0.3:8
-A PREROUTING ! -i up0 -p tcp -m tcp --dport 1002 -j DNAT --to-destination 10.0.0.2:3
-A PREROUTING -s 100.64.0.0/10 -j ACCEPT
-A PREROUTING -i up1 -p udp -m udp --dport 1001 -j DNAT --to-destination 10.0.0.3:2
-A PREROUTING -p udp -m udp --sport 1024:1100 -j ACCEPT
-A PREROUTING -p tcp -m tcp --dport 1003 -j DNAT --to-destination 10.0.0.2
"""),
    # long runs: tuple-space classifiers (ebpf/lib/nat_rules.h nat_classify), with shadowed and
    # chained keys, residual negations and ranges, RETURN from a classified user chain
    "classified": ruleset(""":U - [0:0]
-A PREROUTING -s 198.51.100.1/32 -p tcp -j DNAT --to-destination 10.0.0.2:1
-A PREROUTING -s 198.51.100.0/24 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.3:2
-A PREROUTING ! -s 192.0.2.0/24 -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.2:3
-A PREROUTING -s 192.0.2.0/24 -p udp -m udp --dport 53 ! -i up1 -j DNAT --to-destination 10.0.0.3:4
-A PREROUTING -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.2:5
-A PREROUTING -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.3:99
-A PREROUTING -d 203.0.113.1/32 -p tcp -m tcp --sport 1024:2047 -j DNAT --to-destination 10.0.0.3:6
-A PREROUTING -i up1 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:7
-A PREROUTING -p tcp -m multiport --dports 8000:8010,9000 -j DNAT --to-destination 10.0.0.3:8
-A PREROUTING -s 100.64.0.0/10 -j ACCEPT
-A PREROUTING -s 203.0.113.50/32 -p icmp -j DNAT --to-destination 10.0.0.3
-A PREROUTING -p tcp -m tcp --dport 1000 -j DNAT --to-destination 10.0.0.2:10
-A PREROUTING -m addrtype ! --dst-type LOCAL -p udp -j DNAT --to-destination 10.0.0.3:12
-A PREROUTING -j U
-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.3:11
-A U -p tcp -m tcp --dport 22 -j RETURN
-A U -s 198.51.100.20/32 -p tcp -j RETURN
-A U -i up0 -p tcp -m tcp --sport 1024:1100 -j DNAT --to-destination 10.0.0.2:13
-A U -d 203.0.113.1/32 -p udp -j DNAT --to-destination 10.0.0.2:14
-A U ! -p tcp -j ACCEPT
-A U -p tcp -m tcp ! --dport 1:1023 -s 192.0.2.0/24 -j DNAT --to-destination 10.0.0.3:15
-A U -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.0.0.2:16
-A U -s 203.0.113.50/32 -p tcp -j REDIRECT --to-ports 17
-A U -p tcp -m tcp --dport 23 -j REDIRECT
"""),
    # more shapes than one classifier takes (NAT_CLS_SHAPES): prefixes of every length (the
    # narrowest of each source wins, so the shadowed ones share its decision)
    "many-shapes": ruleset("".join(
        f"-A PREROUTING -s {src}/{plen} -p {proto} -j DNAT --to-destination {to}\n"
        for plen in range(32, 7, -1)
        for src, proto, to in (("198.51.100.20", "tcp", "10.0.0.2:100"), ("192.0.2.5", "udp", "10.0.0.3:300"))
    ) + "".join(f"-A PREROUTING -d 203.0.113.{n}/{24 + n} -p tcp -j DNAT --to-destination 10.0.0.3:200\n"
                for n in range(1, 9)) + "-A PREROUTING -p udp -j DNAT --to-destination 10.0.0.2:400\n"),
    # targets with ranges: the address hashed from the tuple, a port kept when inside the
    # range, a shifted map (P-Q/BASE), ports only (the address kept), REDIRECT to a range
    "ranges": ruleset(f"""\
-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2-10.0.0.3
-A PREROUTING -p tcp -m tcp --dport 1000:1099 -j DNAT --to-destination 10.0.0.3:2000-2099/1000
-A PREROUTING -p tcp -m tcp --dport 8080:8090 -j DNAT --to-destination 10.0.0.2:8085-8087
-A PREROUTING -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.2-10.0.0.3:5300-5301
-A PREROUTING -d {HOST_IP}/32 -p tcp -m tcp --dport 3000:3099 -j DNAT --to-destination :7000-7009/3000
-A PREROUTING -p tcp -m tcp --dport 22 -j REDIRECT --to-ports 2220-2229
"""),
}

SOURCES = [CLIENT, "198.51.100.1", "198.51.100.20", "192.0.2.5", "100.64.0.1", "203.0.113.50"]
LOCAL = {HOST_IP, UP1_IP, GW_N, GW_M}    # natenv.World.install: local_addrs (and 127.0.0.0/8)


def is_local(addr: str) -> bool:
    return addr in LOCAL or ipaddress.IPv4Address(addr) in ipaddress.IPv4Network("127.0.0.0/8")


def rule_ports(prog: C.Program) -> list[int]:
    """Ports the rules name (range ends and their neighbours), for the generator to hit them."""
    ports = set()
    for i in prog.instructions:
        for r in (i.sport, i.dport):
            if r is not None:
                ports |= {r.lo, r.hi, max(r.lo - 1, 0), min(r.hi + 1, 65535)}
        if i.to_ports is not None:
            ports |= {i.to_ports.lo, i.to_ports.hi, (i.to_ports.lo + i.to_ports.hi) // 2}
    ports |= {k.dport for k in prog.exact}
    return sorted(ports) or [80]


def decisions(prog: C.Program) -> set:
    """Every terminal decision the program can make."""
    out = {norm(C.OP_ACCEPT, None, None, None, None)}
    for i in prog.instructions:
        if i.op in (C.OP_DNAT, C.OP_REDIRECT):
            out.add(norm(i.op, i.to_addr, i.to_addr_hi, i.to_ports, i.to_port_base))
    for v in prog.exact.values():
        out.add(norm(C.OP_DNAT, v.to_addr, None, C.PortRange(v.to_port, v.to_port) if v.to_port else None, None))
    return out


def norm(op, addr, addr_hi, ports, base):
    return (op, None if addr is None else str(addr), None if addr_hi is None else str(addr_hi),
            None if ports is None else (ports.lo, ports.hi), base)


def packets(prog: C.Program, up0: int, up1: int, count: int = PACKETS):
    rng = random.Random(f"{SEED}")
    ports = rule_ports(prog)
    seq = 0
    for _ in range(count):
        seq += 1
        proto = rng.choice([6, 6, 6, 17, 17, 1])
        saddr = rng.choice(SOURCES)
        daddr = rng.choice([HOST_IP, HOST_IP, HOST_IP, UP1_IP, UP1_IP, "203.0.113.99", "8.8.8.8"])
        dport = rng.choice(ports) if rng.random() < 0.85 else rng.randrange(1, 65536)
        # unique per packet; half of them in 1024..2047 (a --sport range of the rules)
        sport = rng.choice([1024 + seq % 1024 if seq < 1024 else 30000 + seq, 30000 + seq])
        iif = rng.choice([up0, up0, up1])
        yield proto, saddr, daddr, sport, dport, iif, seq


def frame(proto, saddr, daddr, sport, dport, seq) -> bytes:
    ip = IP(src=saddr, dst=daddr, ttl=64)
    if proto == 6:
        l4 = TCP(sport=sport, dport=dport, flags="S")
    elif proto == 17:
        l4 = UDP(sport=sport, dport=dport)
    else:
        l4 = ICMP(type=8, id=seq, seq=1)
    return bytes(Ether(src=ROUTER_MAC, dst=UPLINK_MAC) / ip / l4)


def seen(out: bytes, proto: int):
    """(daddr, dport or echo id) of an output frame, and its source side."""
    p = Ether(out)[IP]
    l4 = p.payload
    if proto == 1:
        return (p.dst, l4.id), (p.src, l4.id)
    return (p.dst, l4.dport), (p.src, l4.sport)


@pytest.mark.parametrize("name", list(RULESETS))
def test_uplink_decisions_match_the_interpreter(world, name):
    m = world.maps
    prog = world.rules(RULESETS[name])
    ifaddr = {world.up0: HOST_IP, world.up1: UP1_IP}
    mismatches, got_decisions = [], set()
    count = 2500 if name == "classified" else PACKETS      # its rarest decisions need more
    for proto, saddr, daddr, sport, dport, iif, seq in packets(prog, world.up0, world.up1, count):
        op, to_addr, to_addr_hi, to_ports, base = interpreter.decide(prog, "PREROUTING", saddr, daddr, proto, sport,
                                                                     dport, iif=iif, is_local=is_local)
        got_decisions.add(norm(op, to_addr, to_addr_hi, to_ports, base))
        pkt = frame(proto, saddr, daddr, sport, dport, seq)
        port = seq if proto == 1 else dport
        src_side = (saddr, seq if proto == 1 else sport)
        if op == C.OP_ACCEPT:
            want = ((daddr, port), src_side, {TC_ACT_OK})
        elif op in (C.OP_DNAT, C.OP_REDIRECT):
            if op == C.OP_REDIRECT:
                addr = ifaddr[iif]
            elif to_addr is None:
                addr = daddr                       # a target of ports only
            else:
                addr = str(select.pick_addr(saddr, daddr, to_addr, to_addr_hi))
            new_port = select.dnat_port(dport, to_ports.lo, to_ports.hi, base) if (to_ports and proto != 1) else port
            # an endpoint: bpf_redirect_peer; the host itself (REDIRECT, DNAT to a local address):
            # into the stack
            want = ((addr, new_port), src_side, {TC_ACT_OK} if is_local(addr) else {TC_ACT_REDIRECT})
        else:
            raise AssertionError(f"PREROUTING decided op {op}")
        rv, out = world.uplink(pkt, ifindex=iif)
        got = (*seen(out, proto), rv)
        if (got[0], got[1]) != want[:2] or rv not in want[2] or (op == C.OP_ACCEPT and out != pkt):
            mismatches.append(f"{proto} {saddr}:{sport} -> {daddr}:{dport} iif {iif}: interpreter {op} "
                              f"{to_addr}-{to_addr_hi} {to_ports}/{base} wants {want}, program gave {got}")
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:15])
    # the generator reached every decision the rules can make, so every one was compared
    assert got_decisions == decisions(prog), decisions(prog) - got_decisions
    assert m.nat_counter_table().get("STEPS_EXCEEDED", 0) == 0


def test_classified_rule_sets_really_are_classifiers(world):
    """The "classified" rule set is two classifiers (PREROUTING's and U's) with chained keys;
    "many-shapes" needs two classifiers for its shapes."""
    prog = world.rules(RULESETS["classified"])
    assert sum(i.op == C.OP_CLASSIFY for i in prog.instructions) == 2
    assert any(i.table for i in prog.instructions if i.op not in (C.OP_CLASSIFY, C.OP_LOOKUP))   # a chain
    prog = world.rules(RULESETS["many-shapes"])
    heads = [i for i in prog.instructions if i.op == C.OP_CLASSIFY]
    assert len(heads) == 2 and len(prog.shapes) > C.NAT_CLS_SHAPES and heads[0].shapes == C.NAT_CLS_SHAPES


def test_exact_runs_really_are_several_tables(world):
    """The "exact-runs" rule set chains several LOOKUP instructions (one tail call of tc_nat_eval
    per table consulted), with a specific destination before "any" in one table."""
    prog = world.rules(RULESETS["exact-runs"])
    assert prog.max_lookups["PREROUTING"] >= 4
    assert len({k.table for k in prog.exact}) >= 4
    assert any(str(k.daddr) == HOST_IP for k in prog.exact) and any(k.daddr == C.ANY for k in prog.exact)


def test_eight_exact_tables_on_one_path(world):
    """NAT_MAX_LOOKUPS (8) exact tables on one path: a packet for the last one is DNATed after
    seven misses (seven tail calls of tc_nat_eval to itself, within the kernel's tail-call
    budget together with the other stages)."""
    body = ""
    for n in range(8):      # 7 other rules between them: fewer than make a classifier
        body += f"-A PREROUTING -p tcp -m tcp --dport {2000 + n} -j DNAT --to-destination 10.0.0.2:{100 + n}\n"
        if n < 7:
            body += f"-A PREROUTING -s 192.0.2.{n}/32 -j ACCEPT\n"
    prog = world.rules(ruleset(body))
    assert prog.max_lookups["PREROUTING"] == 8
    for n in (0, 7):
        pkt = frame(6, CLIENT, HOST_IP, 40000 + n, 2000 + n, 0)
        rv, out = world.uplink(pkt)
        assert rv == TC_ACT_REDIRECT
        assert seen(out, 6)[0] == ("10.0.0.2", 100 + n)
    pkt = frame(6, CLIENT, HOST_IP, 40009, 2008, 0)      # in no table: ACCEPT after eight misses
    assert world.uplink(pkt) == (TC_ACT_OK, pkt)


def test_unconfigured_nat_config_translates_nothing(world):
    """nat_config as the kernel creates it (all zero, before the agent's first apply) points
    every hook at instruction 0, an all-zero "goto 0": a goto that does not go forward ends the
    evaluation at once (no STEPS_EXCEEDED) and nothing is translated."""
    from dockline.control.datapath import bpf_structs as S
    world.maps.nat_config.update(0, S.NatConfig())
    pkt = frame(6, CLIENT, HOST_IP, 40000, 8080, 0)
    assert world.uplink(pkt) == (TC_ACT_OK, pkt)
    assert world.maps.nat_counter_table() == {}
    out_pkt = bytes(Ether(src="02:42:0a:00:00:02", dst="02:42:0a:00:00:01") / IP(src="10.0.0.2", dst=CLIENT)
                    / TCP(sport=40000, dport=443, flags="S"))
    assert world.endpoint(out_pkt) == (TC_ACT_OK, out_pkt)
    assert world.maps.nat_counter_table() == {}


def test_a_hundred_thousand_rules_translate_in_a_few_lookups(world):
    """100,000 rules of mixed shapes written to the maps: packets for rules near the end get
    their translation, and no evaluation runs out of steps."""
    lines = []
    for i in range(100_000):
        a = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        lines.append([
            f"-A PREROUTING -s {a}/32 -p tcp -j DNAT --to-destination 10.0.0.2:80",
            f"-A PREROUTING -d 198.18.{(i >> 8) & 255}.{i & 255}/32 -p tcp -m tcp --dport {1000 + i % 60000} "
            "-j DNAT --to-destination 10.0.0.3",
            f"-A PREROUTING -i up1 -p udp -m udp --dport {i % 65535 + 1} -j DNAT --to-destination 10.0.0.2:53",
            f"-A PREROUTING -s 198.51.{(i >> 8) & 255}.0/24 -d 203.0.{i & 255}.0/24 -p tcp -j DNAT --to-destination 10.0.0.3:1",
        ][i % 4])
    prog = world.rules(ruleset("\n".join(lines) + "\n"))
    assert prog.max_steps["PREROUTING"] <= 4
    i = 99_999              # shape "-s/24 -d/24" (rule 34,463 has the same key and comes first)
    pkt = frame(6, f"198.51.{(i >> 8) & 255}.9", f"203.0.{i & 255}.1", 40000, 22, 0)
    rv, out = world.uplink(pkt)
    assert rv == TC_ACT_REDIRECT and seen(out, 6)[0] == ("10.0.0.3", 1)
    i = 99_993                                           # "-d/32 --dport", from CLIENT
    pkt = frame(6, CLIENT, f"198.18.{(i >> 8) & 255}.{i & 255}", 40001, 1000 + i % 60000, 0)
    rv, out = world.uplink(pkt)
    assert rv == TC_ACT_REDIRECT and seen(out, 6)[0] == ("10.0.0.3", 1000 + i % 60000)
    pkt = frame(6, CLIENT, f"198.18.{(i >> 8) & 255}.{i & 255}", 40002, 999, 0)      # no rule
    assert world.uplink(pkt) == (TC_ACT_OK, pkt)
    assert world.maps.nat_counter_table().get("STEPS_EXCEEDED", 0) == 0

"""Interface wildcards (control/nat/wildcards.py): the expanded rule set decides every packet as
iptables decides it under the original (the reference evaluator, which matches PREFIX+ by
prefix), and compiled, the interpreter twin agrees too. Generated rule sets, fixed seed."""

from __future__ import annotations

import random

import pytest

from dockline.control import protocols
from dockline.control.nat import compiler as C
from dockline.control.nat import interpreter, reference, wildcards
from dockline.control.nat.parser import parse_save
from dockline.control.nat.rules import Rule, Ruleset

NAMES = ["eth0", "eth1", "ethx", "br0", "br-a1", "wlan0", "e+th"]
IFINDEX = {n: i + 2 for i, n in enumerate(NAMES)}
PATTERNS = ["eth+", "br+", "e+", "wl+", "eth0", "br0", "e+th", "nomatch+", "gone0"]
TARGETS = ["ACCEPT", "RETURN", "DNAT", "REDIRECT", None, "U"]


def _rule(rng, chain: str) -> Rule:
    kw = {}
    if chain in ("PREROUTING", "U") and rng.random() < 0.7:
        kw.update(in_iface=rng.choice(PATTERNS), in_neg=rng.random() < 0.4)
    if chain in ("POSTROUTING",) and rng.random() < 0.7:
        kw.update(out_iface=rng.choice(PATTERNS), out_neg=rng.random() < 0.4)
    if rng.random() < 0.4:
        kw.update(proto=rng.choice(["tcp", "udp"]))
    if chain == "POSTROUTING":
        t = rng.choice(["ACCEPT", "MASQUERADE", "SNAT", None])
    else:
        t = rng.choice(TARGETS if chain == "PREROUTING" else TARGETS[:-1])
    if t == "DNAT":
        kw.update(to_addr=f"10.0.0.{rng.randrange(2, 50)}")
    if t == "SNAT":
        kw.update(to_addr=f"192.0.2.{rng.randrange(2, 50)}")
    return Rule(target=t, **kw)


def _ruleset(rng) -> Ruleset:
    rs = Ruleset({"U": []})
    for chain, n in (("PREROUTING", 12), ("U", 5), ("POSTROUTING", 10)):
        rs.chains[chain] = [_rule(rng, chain) for _ in range(n)]
    return rs


def _decide_reference(rs, hook, iif, oif, proto):
    d = reference.evaluate(rs, hook, reference.Packet("198.51.100.7", "198.18.0.1", proto, 40000, 80, iif, oif),
                           lambda a: False)
    return d.action, str(d.rule.to_addr) if d.rule is not None and d.rule.to_addr else None


_OPS = {C.OP_ACCEPT: "ACCEPT", C.OP_DNAT: "DNAT", C.OP_SNAT: "SNAT", C.OP_MASQUERADE: "MASQUERADE",
        C.OP_REDIRECT: "REDIRECT"}


def _decide_compiled(prog, hook, iif, oif, proto):
    op, addr, _ = interpreter.run(prog, hook, "198.51.100.7", "198.18.0.1", protocols.number(proto), 40000, 80,
                                  IFINDEX.get(iif, 0), IFINDEX.get(oif, 0))
    return _OPS[op], str(addr) if op != C.OP_ACCEPT and addr else None


@pytest.mark.parametrize("seed", range(300))
def test_expanded_rules_decide_as_the_wildcards_do(seed):
    rng = random.Random(seed)
    rs = _ruleset(rng)
    expanded = wildcards.expand(rs, NAMES)
    left = {n for rules in expanded.chains.values() for r in rules for n in (r.in_iface, r.out_iface)
            if n and n.endswith("+")}
    assert all(not n.startswith(p[:-1]) for p in left for n in NAMES), left
    prog = C.compile_ruleset(expanded, IFINDEX.get)
    for proto in ("tcp", "udp"):
        for name in NAMES + [None]:
            want = _decide_reference(rs, "PREROUTING", name, None, proto)
            assert _decide_reference(expanded, "PREROUTING", name, None, proto) == want, (seed, name)
            assert _decide_compiled(prog, "PREROUTING", name, None, proto) == want, (seed, name)
            want = _decide_reference(rs, "POSTROUTING", None, name, proto)
            assert _decide_reference(expanded, "POSTROUTING", None, name, proto) == want, (seed, name)
            assert _decide_compiled(prog, "POSTROUTING", None, name, proto) == want, (seed, name)


def test_expansion_shapes():
    rs = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -i eth+ -p tcp -j DNAT --to-destination 10.0.0.2\n"
                    "-A PREROUTING ! -i br+ -j ACCEPT\n-A PREROUTING ! -i none+ -j RETURN\n"
                    "-A PREROUTING -i none+ -j ACCEPT\nCOMMIT\n")[0]
    out = wildcards.expand(rs, NAMES)
    assert [r.to_text() for r in out.chains["PREROUTING"]] == [
        "-i eth0 -p tcp -j DNAT --to-destination 10.0.0.2", "-i eth1 -p tcp -j DNAT --to-destination 10.0.0.2",
        "-i ethx -p tcp -j DNAT --to-destination 10.0.0.2", "-j DL-IFACE-0",
        "-j ACCEPT",                      # RETURN in a built-in chain is its policy
        "-i none+ -j ACCEPT"]
    assert [r.to_text() for r in out.chains["DL-IFACE-0"]] == ["-i br-a1 -j RETURN", "-i br0 -j RETURN", "-j ACCEPT"]
    assert rs.chains["PREROUTING"][0].in_iface == "eth+"          # the input is not changed


def test_wildcards_match_by_prefix_in_the_reference():
    rs = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -i e+ -j DNAT --to-destination 10.0.0.9\nCOMMIT\n")[0]
    assert _decide_reference(rs, "PREROUTING", "ethx", None, "tcp") == ("DNAT", "10.0.0.9")
    assert _decide_reference(rs, "PREROUTING", "br0", None, "tcp") == ("ACCEPT", None)
    assert _decide_reference(rs, "PREROUTING", None, None, "tcp") == ("ACCEPT", None)


def test_negated_wildcard_return_in_a_user_chain_leaves_the_chain():
    rs = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:U - [0:0]\n-A PREROUTING -j U\n"
                    "-A PREROUTING -j DNAT --to-destination 10.0.0.1\n"
                    "-A U ! -i eth+ -p udp -j RETURN\n-A U -i eth0 -p udp -j DNAT --to-destination 10.0.0.2\n"
                    "-A U -p tcp -j DNAT --to-destination 10.0.0.3\nCOMMIT\n")[0]
    ex = wildcards.expand(rs, NAMES)
    prog = C.compile_ruleset(ex, IFINDEX.get)
    for name, proto, want in (("br0", "udp", ("DNAT", "10.0.0.1")), ("eth0", "udp", ("DNAT", "10.0.0.2")),
                              ("br0", "tcp", ("DNAT", "10.0.0.3")), ("eth1", "udp", ("DNAT", "10.0.0.1"))):
        assert _decide_reference(rs, "PREROUTING", name, None, proto) == want
        assert _decide_reference(ex, "PREROUTING", name, None, proto) == want
        assert _decide_compiled(prog, "PREROUTING", name, None, proto) == want

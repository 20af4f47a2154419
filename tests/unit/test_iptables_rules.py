"""Unit tests for the kernel backend's iptables rule rendering: a golden file, structural invariants and a forwarding truth table."""

import ipaddress
import pathlib
import re

import pytest

from dockline.control.datapath import iptables_rules as rules
from dockline.control.datapath.iptables_rules import PublishedPort, render, render_teardown
from dockline.control.model import Network, PortMapping

GOLDEN = pathlib.Path(__file__).parent / "golden" / "iptables_kernel.rules"

WEB_ID = "1f2e3d4c5b6a" + "7" * 52
SECRET_ID = "9a8b7c6d5e4f" + "3" * 52
WEB_BR, SECRET_BR, DEFAULT_BR = "dl-" + WEB_ID[:12], "dl-" + SECRET_ID[:12], "dockline0"

NETWORKS = [
    Network(id="b" * 64, name="bridge", driver="bridge", subnet="10.88.0.0/16", gateway="10.88.0.1",
            bridge=DEFAULT_BR, builtin=True, dns=False),
    Network(id="h" * 64, name="host", driver="host", builtin=True, dns=False),     # pseudo: no rules
    Network(id="n" * 64, name="none", driver="null", builtin=True, dns=False),     # pseudo: no rules
    Network(id=WEB_ID, name="web", driver="bridge", subnet="10.89.0.0/24", gateway="10.89.0.1", bridge=WEB_BR),
    Network(id=SECRET_ID, name="secret", driver="bridge", subnet="10.89.1.0/24", gateway="10.89.1.1",
            bridge=SECRET_BR, internal=True),
]
PORTS = [
    PublishedPort(PortMapping("e1", "tcp", "0.0.0.0", 8080, 80), "10.88.0.2", DEFAULT_BR),
    PublishedPort(PortMapping("e2", "udp", "127.0.0.1", 5353, 53), "10.89.0.2", WEB_BR),
]

BUILTIN_TARGETS = {"ACCEPT", "DROP", "RETURN", "MASQUERADE", "DNAT"}


def parse_restore(text):
    """{table: {"chains": [declared names], "rules": [(chain, spec)]}} from iptables-restore text."""
    tables, cur = {}, None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], {"chains": [], "rules": []})
        elif line.startswith(":"):
            cur["chains"].append(line[1:].split()[0])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            cur["rules"].append((chain, spec))
        elif line == "COMMIT":
            cur = None
        else:
            raise AssertionError(f"unexpected line {line!r}")
    return tables


@pytest.fixture(scope="module")
def text():
    return render(NETWORKS, PORTS)


# ------------------------------------------------------------------------- golden
def test_render_matches_golden_file(text):
    assert text == GOLDEN.read_text()


def test_render_is_deterministic(text):
    assert render(NETWORKS, PORTS) == text


def test_render_with_nothing_still_declares_and_returns():
    t = parse_restore(render([], []))
    assert t["nat"]["rules"] == []
    assert t["filter"]["rules"] == [(rules.FWD_CHAIN, f"-j {rules.ISO1_CHAIN}"),
                                    (rules.ISO1_CHAIN, "-j RETURN"), (rules.ISO2_CHAIN, "-j RETURN")]


# ------------------------------------------------------------------------- invariants
def test_every_chain_declared_once_per_table(text):
    t = parse_restore(text)
    assert list(t) == ["nat", "filter"]
    for table in t.values():
        assert len(table["chains"]) == len(set(table["chains"]))
    assert t["nat"]["chains"] == [rules.NAT_CHAIN, rules.NAT_POST_CHAIN]
    assert t["filter"]["chains"] == [rules.FWD_CHAIN, rules.FILTER_CHAIN, rules.ISO1_CHAIN, rules.ISO2_CHAIN]


def test_every_rule_appends_to_a_declared_chain_and_targets_a_known_one(text):
    for name, table in parse_restore(text).items():
        for chain, spec in table["rules"]:
            assert chain in table["chains"], (name, chain)
            target = re.search(r"-j (\S+)", spec).group(1)
            assert target in BUILTIN_TARGETS or target in table["chains"], (name, chain, spec)
            assert spec.count(" -j ") + spec.startswith("-j ") == 1, spec


def test_nat_and_filter_targets_stay_in_their_table(text):
    t = parse_restore(text)
    assert {re.search(r"-j (\S+)", s).group(1) for _, s in t["filter"]["rules"]} <= \
        {"ACCEPT", "DROP", "RETURN"} | set(t["filter"]["chains"])
    assert {re.search(r"-j (\S+)", s).group(1) for _, s in t["nat"]["rules"]} <= {"DNAT", "MASQUERADE"}


def test_jumps_lead_into_declared_chains(text):
    t = parse_restore(text)
    for table, builtin, spec in rules.JUMPS:
        assert builtin in ("PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD")
        assert spec[-2] == "-j" and spec[-1] in t[table]["chains"]
    # Without a userland proxy, loopback-destined connections are DNATed too: no "! -d 127.0.0.0/8".
    out = next(spec for table, chain, spec in rules.JUMPS if chain == "OUTPUT")
    assert "127.0.0.0/8" not in out and "!" not in out


def test_pseudo_networks_get_no_rules(text):
    bridged = [n for n in NETWORKS if n.driver == "bridge"]
    assert len(bridged) == 3
    assert render(bridged, PORTS) == text


def test_internal_network_gets_no_egress_masquerade(text):
    nat = parse_restore(text)["nat"]["rules"]
    assert f"-s 10.89.1.0/24 ! -o {SECRET_BR} -j MASQUERADE" not in {s for _, s in nat}
    assert not [s for _, s in nat if "10.89.1.0/24" in s]
    # ... while the other two networks do have one
    assert (rules.NAT_POST_CHAIN, f"-s 10.89.0.0/24 ! -o {WEB_BR} -j MASQUERADE") in nat
    assert (rules.NAT_POST_CHAIN, f"-s 10.88.0.0/16 ! -o {DEFAULT_BR} -j MASQUERADE") in nat


def test_internal_network_gets_no_masquerade_line_at_all(text):
    assert not [s for _, s in parse_restore(text)["nat"]["rules"] if SECRET_BR in s]


def test_internal_network_gets_no_accept_to_outside(text):
    fwd = [s for c, s in parse_restore(text)["filter"]["rules"] if c == rules.FWD_CHAIN]
    assert f"-i {SECRET_BR} ! -o {SECRET_BR} -j ACCEPT" not in fwd
    assert fwd[:2] == [f"! -s 10.89.1.0/24 -o {SECRET_BR} -j DROP", f"! -d 10.89.1.0/24 -i {SECRET_BR} -j DROP"]
    assert f"-i {WEB_BR} ! -o {WEB_BR} -j ACCEPT" in fwd


def test_render_teardown_declares_the_same_chains_and_no_rules(text):
    full, down = parse_restore(text), parse_restore(render_teardown())
    assert {k: v["chains"] for k, v in down.items()} == {k: v["chains"] for k, v in full.items()}
    assert all(v["rules"] == [] for v in down.values())
    assert render_teardown().endswith("COMMIT\n")


def test_published_port_rules_per_mapping(text):
    t = parse_restore(text)
    nat = [s for c, s in t["nat"]["rules"] if c == rules.NAT_CHAIN]
    assert nat == ["-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80",
                   "-d 127.0.0.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.89.0.2:53"]
    flt = [s for c, s in t["filter"]["rules"] if c == rules.FILTER_CHAIN]
    assert flt == [f"-d 10.88.0.2/32 ! -i {DEFAULT_BR} -o {DEFAULT_BR} -p tcp -m tcp --dport 80 -j ACCEPT",
                   f"-d 10.89.0.2/32 ! -i {WEB_BR} -o {WEB_BR} -p udp -m udp --dport 53 -j ACCEPT"]


# ------------------------------------------------------------------------- forwarding truth table
class Filter:
    """Evaluates the rendered filter table for one forwarded packet, for the matches render() uses.

    Unknown options raise, so a new rule shape makes these tests fail rather than pass vacuously.
    """

    def __init__(self, text):
        t = parse_restore(text)["filter"]
        self.chains = {c: [] for c in t["chains"]}
        for chain, spec in t["rules"]:
            self.chains[chain].append(spec.split())

    def verdict(self, i, o, src, dst, proto="tcp", dport=80, state=("NEW",)):
        pkt = dict(i=i, o=o, src=ipaddress.IPv4Address(src), dst=ipaddress.IPv4Address(dst), proto=proto,
                   dport=dport, state=set(state))
        return self._run(rules.FWD_CHAIN, pkt) or "FALLTHROUGH"

    def _run(self, chain, pkt):
        for toks in self.chains[chain]:
            target = self._match(toks, pkt)
            if target is None:
                continue
            if target in ("ACCEPT", "DROP"):
                return target
            if target == "RETURN":
                return None
            v = self._run(target, pkt)
            if v:
                return v
        return None

    @staticmethod
    def _match(toks, pkt):
        k, neg, target = 0, False, None
        while k < len(toks):
            opt = toks[k]
            if opt == "!":
                neg, k = True, k + 1
                continue
            arg = toks[k + 1]
            if opt == "-j":
                target = arg
                ok = True
            elif opt == "-m":
                ok = arg in ("tcp", "udp", "conntrack")
            elif opt in ("-i", "-o"):
                ok = pkt[opt[1]] == arg
            elif opt in ("-s", "-d"):
                ok = pkt["src" if opt == "-s" else "dst"] in ipaddress.IPv4Network(arg)
            elif opt == "-p":
                ok = pkt["proto"] == arg
            elif opt == "--dport":
                ok = pkt["dport"] == int(arg)
            elif opt == "--ctstate":
                ok = bool(pkt["state"] & set(arg.split(",")))
            else:
                raise AssertionError(f"option {opt} not understood by the test evaluator")
            if ok == neg:
                return None
            neg, k = False, k + 2
        return target


WAN = "eth0"
OUTSIDE = "198.51.100.7"
B1, W1, W2, S1, S2 = "10.88.0.2", "10.89.0.2", "10.89.0.3", "10.89.1.2", "10.89.1.3"

# (description, in, out, src, dst, proto, dport, conntrack state, expected verdict).
# Addresses are after DNAT: a packet "via a published port" already carries the container address.
TRUTH = [
    ("same network", WEB_BR, WEB_BR, W1, W2, "tcp", 9999, ("NEW",), "ACCEPT"),
    ("same internal network", SECRET_BR, SECRET_BR, S1, S2, "udp", 9999, ("NEW",), "ACCEPT"),
    ("egress to the outside", WEB_BR, WAN, W1, OUTSIDE, "tcp", 443, ("NEW",), "ACCEPT"),
    ("default bridge egress", DEFAULT_BR, WAN, B1, OUTSIDE, "udp", 53, ("NEW",), "ACCEPT"),
    ("internal egress", SECRET_BR, WAN, S1, OUTSIDE, "tcp", 443, ("NEW",), "DROP"),
    ("reply to egress", WAN, WEB_BR, OUTSIDE, W1, "tcp", 40000, ("ESTABLISHED",), "ACCEPT"),
    ("outside to unpublished port", WAN, WEB_BR, OUTSIDE, W1, "tcp", 80, ("NEW",), "DROP"),
    ("outside to published tcp port", WAN, DEFAULT_BR, OUTSIDE, B1, "tcp", 80, ("NEW", "DNAT"), "ACCEPT"),
    ("outside, published port, wrong proto", WAN, DEFAULT_BR, OUTSIDE, B1, "udp", 80, ("NEW", "DNAT"), "DROP"),
    ("outside to published udp port", WAN, WEB_BR, OUTSIDE, W1, "udp", 53, ("NEW", "DNAT"), "ACCEPT"),
    ("outside to internal", WAN, SECRET_BR, OUTSIDE, S1, "tcp", 80, ("NEW",), "DROP"),
    ("network to network by address", WEB_BR, DEFAULT_BR, W1, B1, "tcp", 80, ("NEW",), "DROP"),
    ("network to network, unpublished", DEFAULT_BR, WEB_BR, B1, W2, "tcp", 80, ("NEW",), "DROP"),
    ("network to internal", WEB_BR, SECRET_BR, W1, S1, "tcp", 80, ("NEW",), "DROP"),
    ("internal to network", SECRET_BR, WEB_BR, S1, W1, "tcp", 80, ("NEW",), "DROP"),
    # Reached through the host address and DNATed: allowed across networks (commit 458f0d9; Docker
    # with its userland proxy behaves so, Docker <= 27 with the proxy disabled drops it, moby#38784).
    ("network to other network's published port", WEB_BR, DEFAULT_BR, W1, B1, "tcp", 80, ("NEW", "DNAT"),
     "ACCEPT"),
    ("not our bridges", WAN, "eth1", OUTSIDE, "192.0.2.1", "tcp", 80, ("NEW",), "FALLTHROUGH"),
]


@pytest.mark.parametrize("case", TRUTH, ids=[c[0] for c in TRUTH])
def test_forwarding_truth_table(text, case):
    _, i, o, src, dst, proto, dport, state, expected = case
    assert Filter(text).verdict(i, o, src, dst, proto, dport, state) == expected


def test_internal_network_cannot_reach_published_ports_through_its_gateway(text):
    # S1 sends to 10.89.1.1:8080 (its gateway, a local address); PREROUTING DNATs it to B1:80.
    assert Filter(text).verdict(SECRET_BR, DEFAULT_BR, S1, B1, "tcp", 80, ("NEW", "DNAT")) == "DROP"


def test_without_nat_the_nat_chains_are_empty_and_the_filter_rules_stay(text):
    """The eBPF backend translates in its programs: its iptables rules have no DNAT or
    MASQUERADE, and no per-port filter accepts, but the same isolation and forwarding rules."""
    bare = parse_restore(render(NETWORKS, PORTS, with_nat=False))
    full = parse_restore(text)
    assert bare["nat"]["rules"] == []
    per_port = {r for r in full["filter"]["rules"] if "--dport" in r[1]}
    assert per_port and set(bare["filter"]["rules"]) == set(full["filter"]["rules"]) - per_port

"""Differential NAT tests: dockline's eBPF NAT against the kernel's iptables nat, flow by flow.

Two worlds of the same shape (tests/integration/nat_worlds.py): A has the rule set loaded with
iptables-restore in namespaces built by hand, B is a SimHost (datapath ebpf) given the same rule
set with ``nat_import``. Each rule set of nat_corpus/ is loaded into both, then the same flows
run through both in the same order, and what every receiver saw (receiver, source address and
port, destination address and port), what each client believes it talks to, and each flow's
outcome must be identical.

Corpus files are iptables-restore ``*nat`` blocks with placeholders ({bridge}, {uplink},
{subnet}, {c1}, {c2}, {host_ip}, {gateway}, {outside}, {vip}) and flow declarations in comments:

  # probe: <tcp|udp> <dst> <port> [from=role,role]   one flow from every role that can reach dst
                                                     (udp from the host: connected and sendto)
  # flow: <tcp|udp|udp-sendto|icmp> <src> <dst> [port] [sport=N]   exactly this flow

dst is one of host_ip, lo, gateway, outside, vip, c1, c2. Every rule set also gets BASELINE
(published ports, hairpin, egress masquerade, ICMP, OUTPUT through the socket layer). Each flow
sends 3 messages on one socket (a new flow, then established traffic) from a fixed source port
(ICMP: echo id), unique in the module, so translated ports are comparable and no tuple is reused.

Compared per flow: outcome (ok / refused / timeout / partial(n:...) / errno), the client's
getpeername (UDP, ICMP: where each reply came from), every receiver record, and the client's
own address and port (getsockname, "local"). On failure the mismatching flows are listed
with both worlds' view; run with -s to see every flow.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from . import nat_worlds as W

pytestmark = pytest.mark.root

CORPUS_DIR = Path(__file__).parent / "nat_corpus"
TIMEOUT = 0.5          # per connect / per reply; every flow that fails waits this long once

#: which roles can send to each destination (the outside has routes to the host and the VIPs only)
REACH = {"host_ip": ("out", "c1", "c2", "host"), "vip": ("out", "c1", "c2", "host"),
         "lo": ("host",), "gateway": ("c1", "c2", "host"), "outside": ("c1", "c2", "host"),
         "c1": ("c2", "host"), "c2": ("c1", "host")}

#: (kind, src, dst, dport): the control plane's own NAT, in every rule set
BASELINE = (
    ("tcp", "out", "host_ip", 9000),          # published port
    ("udp", "out", "host_ip", 9053),
    ("tcp", "out", "host_ip", 7070),          # no rule: the host's own listener
    ("tcp", "c1", "host_ip", 9000),           # hairpin to itself (masqueraded to the gateway)
    ("tcp", "c2", "host_ip", 9000),           # hairpin to another container
    ("udp", "c2", "host_ip", 9053),
    ("tcp", "c2", "c1", 80),                  # same network, no NAT
    ("tcp", "c1", "outside", 5555),           # egress masquerade
    ("udp", "c2", "outside", 5555),
    ("icmp", "c1", "outside", 0),
    ("icmp", "c2", "outside", 0),
    ("tcp", "host", "lo", 9000),              # OUTPUT DNAT (socket layer in dockline)
    ("tcp", "host", "host_ip", 9000),
    ("udp-sendto", "host", "host_ip", 9053),
    ("udp", "host", "lo", 9053),
    ("tcp", "host", "c1", 80),                # host to a container, no NAT
    # untranslated flows, which must be tracked all the same: their replies are never judged as
    # new flows (a POSTROUTING MASQUERADE would match them). (Routed straight into a container
    # from outside: dockline's filter drops that, as Docker's does; test_nat_every_interface.py
    # runs it into a bridge made by hand.)
    ("tcp", "c1", "host_ip", 7070),           # a container to a host service, port not published
    ("udp", "c2", "host_ip", 7070),
    ("tcp", "c2", "gateway", 7070),
)

_fids = iter(range(1, 5000))


def _flow(kind, src, dst, dport=0, sport=0, note=""):
    fid = next(_fids)
    if not sport:
        sport = 1000 + fid if kind == "icmp" else 45000 + fid     # unique tuples across the module
    return W.Flow(fid=fid, src=src, kind=kind, dst=dst, dport=int(dport), sport=int(sport), note=note)


def parse_corpus(path: Path) -> tuple[str, list[W.Flow]]:
    text = path.read_text()
    flows = [_flow(*b, note="baseline") for b in BASELINE]
    for line in text.splitlines():
        m = re.match(r"#\s*(probe|flow):\s*(.*)", line.strip())
        if not m:
            continue
        words = m.group(2).split()
        opts = dict(w.split("=", 1) for w in words if "=" in w)
        args = [w for w in words if "=" not in w]
        if m.group(1) == "probe":
            kind, dst, port = args
            for src in opts.get("from", ",".join(REACH[dst])).split(","):
                assert src in REACH[dst], f"{path.name}: {src} cannot reach {dst}"
                kinds = [kind] if not (kind == "udp" and src == "host") else ["udp", "udp-sendto"]
                flows += [_flow(k, src, dst, port) for k in kinds]
        else:
            kind, src, dst, *rest = args
            flows.append(_flow(kind, src, dst, rest[0] if rest else 0, opts.get("sport", 0)))
    return text, flows


CORPUS = {p.stem: parse_corpus(p) for p in sorted(CORPUS_DIR.glob("*.rules"))}


def _host_ports() -> dict[str, set[int]]:
    """Every port a flow aims at on a host address gets a listener on the host, so a flow that is
    not translated is seen there rather than refused."""
    ports = {"tcp": set(), "udp": set()}
    for _, flows in CORPUS.values():
        for f in flows:
            if f.dst in ("host_ip", "lo", "gateway") and f.kind != "icmp":
                ports["tcp" if f.kind == "tcp" else "udp"].add(f.dport)
    return ports


class Worlds:
    def __init__(self, a, b, rec_a, rec_b):
        self.a, self.b, self.rec_a, self.rec_b = a, b, rec_a, rec_b

    def load(self, text_a: str, text_b: str | None = None):
        self.a.load(W.render(text_a, self.a.bridge))
        self.b.load(W.render(text_b if text_b is not None else text_a, self.b.bridge))

    def run(self, flows):
        ra, rb = W.run_both([(self.a, self.rec_a), (self.b, self.rec_b)], flows, TIMEOUT)
        return ra, rb, W.compare(flows, ra, rb)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    b = W.WorldB(tmp_path_factory.mktemp("natdiff"))
    a = rec_a = rec_b = None
    try:
        a = W.WorldA(b.bridge, b.veths)
        ports = _host_ports()
        rec_a = W.Receivers(a, ports)
        rec_b = W.Receivers(b, ports)
        yield Worlds(a, b, rec_a, rec_b)
    finally:
        for r in (rec_a, rec_b):
            if r is not None:
                r.close()
        try:
            if a is not None:
                a.cleanup()
        finally:
            b.cleanup()


EMPTY = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"


def test_world_a_mirrors_dockline_control_plane(worlds):
    """World A's copy of dockline's own chains is what dockline lists (iptables -S), rule for rule."""
    worlds.load(EMPTY)
    listed, _ = W.control_plane_nat(worlds.b.bridge)
    assert worlds.b.listing() == listed
    saved = worlds.a.saved()
    for rule in listed:
        assert rule in saved, f"world A lacks {rule!r}:\n{saved}"


#: Flows where dockline deliberately differs from iptables, with the reason (README: eBPF NAT).
#: Keyed by (rule set, kind, src, dst, dport). They must still differ: if one starts matching,
#: the entry goes (and the README with it).
DEVIATIONS = {
}


def _deviation(name, f):
    return DEVIATIONS.get((name, f.kind, f.src, f.dst, f.dport))


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_rule_set_matches_iptables(worlds, name):
    text, flows = CORPUS[name]
    worlds.load(text)
    started = time.monotonic()
    ra, rb, mismatches = worlds.run(flows)
    expected = {f.fid for f in flows if _deviation(name, f)}
    differing = {m.flow.fid for m in mismatches}
    assert expected <= differing, (f"documented deviations now match iptables: "
                                   f"{[str(f) for f in flows if f.fid in expected - differing]}")
    mismatches = [m for m in mismatches if m.flow.fid not in expected]
    report = W.table(f"rule set {name}: {len(flows)} flows in {time.monotonic() - started:.1f}s, "
                     f"{len({m.flow.fid for m in mismatches})} differ", flows, ra, rb, mismatches)
    print(report)
    if mismatches:
        pytest.fail(f"{len({m.flow.fid for m in mismatches})} of {len(flows)} flows differ between iptables "
                    f"and dockline for rule set {name}:\n" + _only_mismatches(report), pytrace=False)
    # the comparison is only worth something if flows got through
    assert sum(r.outcome == "ok" for r in ra.values()) >= len(flows) // 2, report


def _only_mismatches(report: str) -> str:
    blocks, cur = [], []
    for line in report.splitlines()[1:]:
        if not line.startswith("     ") and cur:
            blocks.append(cur)
            cur = []
        cur.append(line)
    if cur:
        blocks.append(cur)
    return "\n".join("\n".join(b) for b in blocks if b[0].startswith("!!"))


def test_comparison_detects_a_difference(worlds):
    """The harness can fail: world B gets the Docker rule set with one DNAT pointed at the other
    container; exactly the flows through that rule must be reported, with what each world saw."""
    text, _ = CORPUS["docker"]
    changed = text.replace("--dport 8080 -j DNAT --to-destination {c1}:80",
                           "--dport 8080 -j DNAT --to-destination {c2}:80")
    assert changed != text
    worlds.load(text, changed)
    flows = [_flow("tcp", "out", "host_ip", 8080), _flow("tcp", "out", "host_ip", 8081),
             _flow("tcp", "host", "lo", 8080)]
    ra, rb, mismatches = worlds.run(flows)
    print(W.table("deliberately different rule sets", flows, ra, rb, mismatches))
    assert {(m.flow.fid, m.field) for m in mismatches} == {(flows[0].fid, "seen"), (flows[2].fid, "seen")}
    assert {r[1] for r in ra[flows[0].fid].seen} == {"c1"} and {r[1] for r in rb[flows[0].fid].seen} == {"c2"}

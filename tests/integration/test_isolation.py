"""Isolation truth table: every ordered pair of endpoints across three networks, over TCP, UDP
and ICMP. Same network: reachable. Different networks: not reachable by container address.

      host netns:   bridge n1          bridge n2          bridge n3 (internal)
                     |     |            |     |             |     |
                    a1    a2           b1    b2            c1    c2
"""

import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest

from dockline.control.sim.nstools import Server, ping, request

pytestmark = pytest.mark.root

PORT = 6000
LAYOUT = {"n1": ["a1", "a2"], "n2": ["b1", "b2"], "n3": ["c1", "c2"]}


def build(host):
    for net, eps in LAYOUT.items():
        host.call("network_create", name=net, internal=(net == "n3"))
        for ep in eps:
            host.call("endpoint_create", name=ep, network=net)
    where = {ep: net for net, eps in LAYOUT.items() for ep in eps}
    ips = {ep: host.call("inspect", ref=ep)["networks"][where[ep]]["ip"] for ep in where}
    return where, ips


def probe_all(host, where, ips):
    servers = [Server(host.ep_ns(ep), PORT, proto) for ep in where for proto in ("tcp", "udp")]
    try:
        def probe(args):
            src, dst, proto = args
            if proto == "icmp":
                ok = ping(host.ep_ns(src), ips[dst], wait=1)
            else:
                seen = request(host.ep_ns(src), ips[dst], PORT, proto, timeout=1.0)
                ok = seen is not None
                if ok:   # no NAT inside or between networks: the server sees the real source
                    assert seen.split(":")[0] == ips[src], f"{src}->{dst}/{proto}: seen as {seen}"
            return (src, dst, proto), ok

        cases = [(s, d, p) for s, d in itertools.permutations(where, 2) for p in ("tcp", "udp", "icmp")]
        with ThreadPoolExecutor(16) as pool:
            return dict(pool.map(probe, cases))
    finally:
        for s in servers:
            s.close()


def check_table(host):
    where, ips = build(host) if not host.call("ps") else (
        {ep: net for net, eps in LAYOUT.items() for ep in eps},
        {ep: host.call("inspect", ref=ep)["networks"][net]["ip"] for net, eps in LAYOUT.items() for ep in eps})
    got = probe_all(host, where, ips)
    expected = {k: where[k[0]] == where[k[1]] for k in got}
    wrong = sorted(f"{s}->{d}/{p}: got {'open' if got[(s, d, p)] else 'blocked'}"
                   for (s, d, p) in got if got[(s, d, p)] != expected[(s, d, p)])
    assert not wrong, "isolation truth table mismatches:\n" + "\n".join(wrong)
    assert len(got) == 6 * 5 * 3


def test_isolation_truth_table(host):
    check_table(host)


def test_isolation_truth_table_survives_agent_restart(host):
    build(host)
    host.stop_agent()
    host.start_agent()
    check_table(host)


def test_internal_network_has_no_egress_but_others_do(host):
    build(host)
    assert not ping(host.ep_ns("c1"), "198.18.0.2")
    assert ping(host.ep_ns("a1"), "198.18.0.2")

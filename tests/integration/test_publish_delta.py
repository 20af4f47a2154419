"""Publishing ports on the eBPF backend by delta: an endpoint change hands the datapath only the
ports it added or removed, and the rest of the time the whole published set is rebuilt (rule,
network and interface changes, connect/disconnect, restarts). Either way the NAT exact-match map
must hold exactly the ports the store publishes: after every step below, the live generation's
entries of the map are compared with what ``inspect`` says, entry by entry.

      host netns: bridges n1, n2 (agent, eBPF NAT)
                  a (n1, 3 ports) · r (n1, a range) · u (n1, udp, a host address) · e (n1, ephemeral)
"""

import ipaddress
import signal
import socket

import pytest

from dockline.control import protocols
from dockline.control.config import BPF_ROOT
from dockline.control.datapath import bpf_structs as S
from dockline.control.datapath import map_schema
from dockline.control.datapath.nat_maps import TABLE_BASE

pytestmark = pytest.mark.root


@pytest.fixture
def datapath():
    return "ebpf"


def live_entries(host) -> tuple[set, set]:
    """(host ip, host port, proto, container ip, container port) of every exact entry of the live
    generation (no user rules are given here, so they are all published ports), and the
    (container ip, container port, proto) of every entry of NAT_HAIRPIN_TABLE."""
    root = map_schema.pin_root(f"{BPF_ROOT}/{host.name}")
    cfg_map = map_schema.open_map(root, "nat_config")
    exact = map_schema.open_map(root, "nat_exact")
    try:
        gen = cfg_map.lookup(0).generation
        lo = TABLE_BASE[gen]
        out, hairpin = set(), set()
        for k, v in exact.items():
            proto = protocols.name(k.proto)
            if lo <= k.table < lo + (1 << 20):
                out.add((S.ip_text(k.daddr), socket.ntohs(k.dport), proto, S.ip_text(v.to_addr),
                         socket.ntohs(v.to_port)))
            elif k.table == S.NAT_HAIRPIN_TABLE:
                hairpin.add((S.ip_text(k.daddr), socket.ntohs(k.dport), proto))
        return out, hairpin
    finally:
        cfg_map.close()
        exact.close()


def published(host) -> set:
    """What the store publishes, as ``live_entries`` shows it."""
    out = set()
    for e in host.call("ps"):
        if not e["ports"]:
            continue
        ins = host.call("inspect", ref=e["name"])
        atts = sorted(ins["networks"].values(), key=lambda a: a["index"])
        ip = atts[0]["ip"]
        for p in ins["ports"]:
            out.add((p["host_ip"], p["host_port"], p["proto"], ip, p["container_port"]))
    return out


def check(host, expect_count=None):
    want = published(host)
    entries, hairpin = live_entries(host)
    assert entries == want
    assert hairpin == {(cip, cport, proto) for _, _, proto, cip, cport in want}
    if expect_count is not None:
        assert len(want) == expect_count
    return want


def test_map_holds_exactly_the_published_ports_through_deltas_rebuilds_and_restarts(host):
    host.call("network_create", name="n1")
    host.call("network_create", name="n2")
    check(host, 0)
    host.call("endpoint_create", name="a", network="n1", ports=["8080:80", "8443:443", "9000:90/udp"])
    host.call("endpoint_create", name="r", network="n1", ports=["20000-20499:30000-30499"])
    host.call("endpoint_create", name="u", network="n1", ports=["198.18.0.1:8080:81/udp"])
    host.call("endpoint_create", name="e", network="n1", ports=["80", "81"])       # ephemeral host ports
    host.call("endpoint_create", name="plain", network="n2")
    assert host.call("info")["datapath"]["nat"].get("incremental"), "a port change was not a delta"
    check(host, 3 + 500 + 1 + 2)
    ephemeral = {p["host_port"] for p in host.call("inspect", ref="e")["ports"]}
    assert ephemeral == {49153, 49154}

    # a conflicting publish changes nothing, in the store or in the map
    r = host.cli("create", "--name", "x", "--network", "n1", "-p", "20100:1")
    assert r.returncode == 4, r.stderr
    r = host.cli("create", "--name", "x", "--network", "n1", "-p", "198.18.0.1:8443:1")   # 0.0.0.0 holds it
    assert r.returncode == 4, r.stderr
    check(host, 506)

    host.call("endpoint_rm", ref="r")
    check(host, 6)
    # a new network is a rule change (masquerade, a bridge): the whole set is rebuilt and flipped
    before = host.call("info")["datapath"]["nat"]
    host.call("network_create", name="n3")
    after = host.call("info")["datapath"]["nat"]
    assert after["flipped"] and after["generation"] != before["generation"]
    check(host, 6)
    host.call("endpoint_create", name="r", network="n3", ports=["21000-21009:7000-7009"])
    check(host, 16)

    # ports move with the attachment that carries them (no delta: the whole set is compared)
    host.call("connect", network="n2", endpoint="a")
    host.call("disconnect", network="n1", endpoint="a")
    entries = check(host, 16)
    a_n2 = host.call("inspect", ref="a")["networks"]["n2"]["ip"]
    assert ("0.0.0.0", 8080, "tcp", a_n2, 80) in entries

    # the agent dies; the restarted one rebuilds from the store, then goes on by delta
    host.stop_agent(signal.SIGKILL)
    host.start_agent()
    check(host, 16)
    host.call("endpoint_create", name="late", network="n2", ports=["7777:77"])
    check(host, 17)
    host.call("endpoint_rm", ref="e")
    host.call("endpoint_rm", ref="u")
    check(host, 14)

    # a user rule compiles the rule set again; publishing afterwards is a delta on the new tables
    r = host.cli("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "5555", "-j", "RETURN")
    assert r.returncode == 0, r.stderr
    check(host, 14)
    host.call("endpoint_create", name="after-rule", network="n1", ports=["6000-6099:6000-6099"])
    assert host.call("info")["datapath"]["nat"].get("incremental")
    check(host, 114)
    listing = host.cli("iptables", "-t", "nat", "-S", "DOCKLINE").stdout
    assert listing.count("-j DNAT") == 114
    host.call("reconcile")
    check(host, 114)


def test_many_ports_then_one_more_is_a_delta_of_one(host):
    host.call("network_create", name="n1")
    host.call("endpoint_create", name="bulk", network="n1", ports=["30000-32999:30000-32999"])
    nat = host.call("info")["datapath"]["nat"]
    assert nat["incremental"] and nat["exact_written"] == 3000
    host.call("endpoint_create", name="one", network="n1", ports=["45000:80"])
    nat = host.call("info")["datapath"]["nat"]
    assert nat["incremental"] and (nat["exact_written"], nat["exact_removed"]) == (1, 0)
    host.call("endpoint_create", name="none", network="n1")
    nat = host.call("info")["datapath"]["nat"]
    assert nat["incremental"] and (nat["exact_written"], nat["exact_removed"]) == (0, 0)
    host.call("endpoint_rm", ref="one")
    nat = host.call("info")["datapath"]["nat"]
    assert nat["incremental"] and (nat["exact_written"], nat["exact_removed"]) == (0, 1)
    assert host.call("info")["published_ports"] == 3000
    entries = check(host, 3000)
    assert all(ipaddress.IPv4Address(e[3]) in ipaddress.IPv4Network("10.89.0.0/16") for e in entries)

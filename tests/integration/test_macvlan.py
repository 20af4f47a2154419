"""macvlan networks end to end: endpoints get a macvlan sub-interface of a parent interface of the
simulated host, on both forwarding engines. The parent is a veth whose peer sits in the outside
netns (a macvlan parent needs a carrier).

Every test builds on this:

      outside netns                     mvl0x (no address: the parent's segment)
          |  veth
      host netns      mvl0 (parent, no address)      dockline0 (the default bridge)
                       |  macvlan sub-interfaces, made by the agent, moved into:
      endpoints        eth0 of each macvlan endpoint (its own MAC, its own address)
"""

import pytest
from dnslib import DNSRecord
from pyroute2 import IPRoute

from dockline.control.sim.nstools import Server, assert_exchange, ping, request, sh
from dockline.control.sim.simhost import SimHost
from dockline.control.netlink.netns import netns_path, run_in_netns

pytestmark = pytest.mark.root

PARENT = "mvl0"
INVALID, NOT_FOUND, CONFLICT = 2, 3, 4


@pytest.fixture
def host(tmp_path, datapath):
    """The shared fixture's simulated host, with more time to start: a fresh eBPF host compiles
    every program, which takes well over 30 s on this 2-CPU machine when other work runs."""
    h = SimHost(tmp_path, datapath=datapath)
    try:
        h.start_agent(timeout=150)
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def parent(host):
    """The parent veth mvl0 in the host netns, its peer in the outside netns, both up."""
    with IPRoute(netns=host.host_ns) as ipr:
        ipr.link("add", ifname=PARENT, kind="veth", peer={"ifname": PARENT + "x", "net_ns_fd": host.out_ns})
        ipr.link("set", index=ipr.link_lookup(ifname=PARENT)[0], state="up")
    with IPRoute(netns=host.out_ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=PARENT + "x")[0], state="up")
    yield PARENT
    # the netns go with the host fixture; their interfaces with them


def ip_of(host, ep, net):
    return host.call("inspect", ref=ep)["networks"][net]["ip"]


def host_links(host) -> set[str]:
    out = sh(host.host_ns, "ip", "-o", "link", "show", check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def network_names(host) -> set[str]:
    return {n["name"] for n in host.call("network_ls")}


def query(host, ep, name):
    wire = run_in_netns(netns_path(host.ep_ns(ep)), DNSRecord.question(name, "A").send, "127.0.0.11", 53,
                        timeout=3)
    return sorted(str(rr.rdata) for rr in DNSRecord.parse(wire).rr)


def test_endpoints_on_one_parent_reach_each_other(host, parent):
    """
        [ a ] eth0 10.77.0.x ─┐
                              ├─ macvlan (bridge mode) on mvl0
        [ b ] eth0 10.77.0.y ─┘
    """
    r = host.cli("network", "create", "mv1", "-d", "macvlan", "--parent", parent, "--subnet", "10.77.0.0/24",
                 "--gateway", "10.77.0.254")
    assert r.returncode == 0, r.stderr
    net = host.call("network_inspect", ref="mv1")
    assert net["driver"] == "macvlan" and net["bridge"] == ""
    assert net["options"] == {"parent": parent, "macvlan_mode": "bridge"}
    host.call("endpoint_create", name="a", network="mv1")
    host.call("endpoint_create", name="b", network="mv1")
    a, b = ip_of(host, "a", "mv1"), ip_of(host, "b", "mv1")
    link = sh(host.ep_ns("a"), "ip", "-d", "link", "show", "dev", "eth0", check=True).stdout
    assert "macvlan mode bridge" in link and host.call("inspect", ref="a")["networks"]["mv1"]["mac"] in link
    assert "via 10.77.0.254" in sh(host.ep_ns("a"), "ip", "route", "show", "default", check=True).stdout
    assert ping(host.ep_ns("a"), b) and ping(host.ep_ns("b"), a)
    assert_exchange(host.ep_ns("a"), host.ep_ns("b"), b, a)
    # nothing of the network lives in the host netns: no bridge, no host-side veth
    assert not {n for n in host_links(host) if n.startswith(("dl-", "dlv", "dlm"))}
    host.call("endpoint_rm", ref="a")
    host.call("endpoint_rm", ref="b")
    host.call("network_rm", ref="mv1")


def test_docker_options_and_private_mode(host, parent):
    """
        [ a ] eth0 ─┐
                    ├─ macvlan (private mode) on mvl0: siblings cannot reach each other
        [ b ] eth0 ─┘
    """
    r = host.cli("network", "create", "mvp", "-d", "macvlan", "-o", f"parent={parent}", "-o",
                 "macvlan_mode=private", "--subnet", "10.78.0.0/24")
    assert r.returncode == 0, r.stderr
    assert host.call("network_inspect", ref="mvp")["options"] == {"parent": parent, "macvlan_mode": "private"}
    host.call("endpoint_create", name="a", network="mvp")
    host.call("endpoint_create", name="b", network="mvp")
    assert "macvlan mode private" in sh(host.ep_ns("a"), "ip", "-d", "link", "show", "dev", "eth0").stdout
    assert not ping(host.ep_ns("a"), ip_of(host, "b", "mvp"))


def test_networks_are_isolated(host, parent):
    """
        [ a ] mv1 10.77.0.0/24 ─┐
                                ├─ both on mvl0 (bridge mode)
        [ c ] mv2 10.79.0.0/24 ─┘
        [ d ] bridge network br1 (dl-… bridge in the host netns)
    """
    host.call("network_create", name="mv1", driver="macvlan", subnet="10.77.0.0/24", options={"parent": parent})
    host.call("network_create", name="mv2", driver="macvlan", subnet="10.79.0.0/24", options={"parent": parent})
    host.call("network_create", name="br1", subnet="10.80.0.0/24")
    host.call("endpoint_create", name="a", network="mv1")
    host.call("endpoint_create", name="a2", network="mv1")
    host.call("endpoint_create", name="c", network="mv2")
    host.call("endpoint_create", name="d", network="br1")
    assert ping(host.ep_ns("a"), ip_of(host, "a2", "mv1"))         # the fabric works
    assert not ping(host.ep_ns("a"), ip_of(host, "c", "mv2"))
    assert not ping(host.ep_ns("c"), ip_of(host, "a", "mv1"))
    assert not ping(host.ep_ns("a"), ip_of(host, "d", "br1"))
    assert not ping(host.ep_ns("d"), ip_of(host, "a", "mv1"))
    # the host cannot reach its own macvlan endpoints through the parent (README: macvlan)
    assert not ping(host.host_ns, ip_of(host, "a", "mv1"))


def test_dns_by_name_and_alias_and_static_ip(host, parent):
    """
        [ web ] eth0 10.77.0.50 (--ip), alias www ─┐
                                                   ├─ macvlan on mvl0
        [ cli ] eth0 10.77.0.x                    ─┘   names answered at 127.0.0.11 in each
    """
    host.call("network_create", name="mv1", driver="macvlan", subnet="10.77.0.0/24", options={"parent": parent})
    host.call("endpoint_create", name="web", network="mv1", ip="10.77.0.50", aliases=["www"])
    host.call("endpoint_create", name="cli", network="mv1")
    assert "10.77.0.50/24" in sh(host.ep_ns("web"), "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert query(host, "cli", "web") == ["10.77.0.50"]
    assert query(host, "cli", "www") == ["10.77.0.50"]
    assert query(host, "web", "cli") == [ip_of(host, "cli", "mv1")]
    srv = Server(host.ep_ns("web"), 80)
    try:
        assert request(host.ep_ns("cli"), "10.77.0.50", 80) is not None
    finally:
        srv.close()
    # the static address is leased: a second --ip 10.77.0.50 is refused
    with pytest.raises(Exception, match="10.77.0.50 is already in use"):
        host.call("endpoint_create", name="dup", network="mv1", ip="10.77.0.50")


@pytest.mark.parametrize("datapath", ["ebpf"])   # the only engine with anti-spoofing on macvlan (README)
def test_spoofed_sources_are_dropped_and_counted(host, parent):
    """
        [ a ] eth0 10.77.0.x: sends from 10.77.0.99, then with another MAC ─┐  tc_guard_endpoint
        [ b ] eth0 10.77.0.y                                                ─┘  (eBPF only)
    """
    host.call("network_create", name="mv1", driver="macvlan", subnet="10.77.0.0/24", options={"parent": parent})
    host.call("endpoint_create", name="a", network="mv1")
    host.call("endpoint_create", name="b", network="mv1")
    b = ip_of(host, "b", "mv1")
    assert ping(host.ep_ns("a"), b)
    # b's MAC pinned in a's neighbour table: the spoofed packets below need no ARP first
    b_mac = host.call("inspect", ref="b")["networks"]["mv1"]["mac"]
    sh(host.ep_ns("a"), "ip", "neigh", "replace", b, "lladdr", b_mac, "dev", "eth0", "nud", "permanent", check=True)

    def drops(reason):
        return host.call("stats")["verdicts"].get(reason, {}).get("packets", 0)

    sh(host.ep_ns("a"), "ip", "addr", "add", "10.77.0.99/24", "dev", "eth0", check=True)
    before = drops("spoofed_ip")
    assert sh(host.ep_ns("a"), "ping", "-n", "-c", "2", "-W", "1", "-I", "10.77.0.99", b).returncode != 0
    assert drops("spoofed_ip") >= before + 2
    sh(host.ep_ns("a"), "ip", "addr", "del", "10.77.0.99/24", "dev", "eth0", check=True)
    assert ping(host.ep_ns("a"), b)                      # its own address still works

    sh(host.ep_ns("a"), "ip", "link", "set", "dev", "eth0", "address", "02:00:00:00:00:99", check=True)
    before = drops("spoofed_mac")
    assert not ping(host.ep_ns("a"), b, count=2)
    assert drops("spoofed_mac") >= before + 2


def refused(host, args, code, message):
    """``dockline ARGS`` fails with ``code`` and exactly the one-line ``message``, and changes
    nothing: no network record, no endpoint, no interface in the host netns."""
    nets, links_before = network_names(host), host_links(host)
    eps = {e["name"] for e in host.call("ps")}
    r = host.cli(*args)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(message), r.stderr
    assert network_names(host) == nets
    assert {e["name"] for e in host.call("ps")} == eps
    assert host_links(host) == links_before


def test_bad_input_is_refused_with_one_line_and_no_change(host, parent):
    """
        host netns: mvl0 (parent of network mv1, bridge mode), dockline0 (default bridge)
    """
    mv = ["network", "create", "bad", "-d", "macvlan"]
    refused(host, mv + ["--subnet", "10.81.0.0/24"], INVALID,
            "macvlan network needs a parent interface: --parent IFACE (or -o parent=IFACE)")
    refused(host, mv + ["--parent", "nosuch0", "--subnet", "10.81.0.0/24"], NOT_FOUND,
            "parent interface nosuch0 not found on this host")
    refused(host, mv + ["--parent", "dockline0", "--subnet", "10.81.0.0/24"], INVALID,
            "parent dockline0 is network bridge's bridge: a macvlan parent must be an interface towards "
            "the outside (e.g. an uplink)")
    refused(host, mv + ["--parent", parent], INVALID,
            "macvlan network bad needs --subnet: the parent's segment is not ours to pick")
    refused(host, mv + ["--parent", parent, "--subnet", "10.81.0.0/24", "-o", "mode=l2"], INVALID,
            "unknown macvlan option 'mode': use parent, macvlan_mode")
    refused(host, mv + ["--parent", parent, "--subnet", "10.81.0.0/24", "-o", "macvlan_mode=l3"], INVALID,
            "invalid macvlan mode 'l3': choose from bridge, private, vepa, passthru")

    host.call("network_create", name="mv1", driver="macvlan", subnet="10.77.0.0/24", options={"parent": parent})
    refused(host, mv + ["--parent", parent, "--subnet", "10.81.0.0/24", "--macvlan-mode", "vepa"], CONFLICT,
            f"parent {parent} is already used by network mv1 in macvlan mode bridge: another network on it "
            f"must use mode bridge too")
    refused(host, mv + ["--parent", parent, "--subnet", "10.81.0.0/24", "--macvlan-mode", "passthru"], CONFLICT,
            f"parent {parent} is already used by network mv1 in macvlan mode bridge: passthru takes the "
            f"parent alone")
    refused(host, mv + ["--parent", parent, "--subnet", "10.77.0.128/25"], CONFLICT,
            "subnet 10.77.0.128/25 overlaps with network mv1")
    refused(host, ["network", "create", "bad", "-d", "ipvlan", "--parent", parent, "--subnet", "10.81.0.0/24"],
            INVALID, "driver ipvlan is not available: this kernel has no ipvlan support (CONFIG_IPVLAN is not set)")
    refused(host, ["create", "--name", "web", "--network", "mv1", "-p", "8080:80"], INVALID,
            "-p cannot be used on macvlan network mv1: its traffic never crosses the host, so nothing can "
            "forward a host port")
    # the same network, in a compatible mode, is fine
    host.call("network_create", name="mv2", driver="macvlan", subnet="10.79.0.0/24", options={"parent": parent})


def test_reconcile_after_restart_keeps_macvlan_endpoints(host, parent):
    """
        [ a ] ─┐ macvlan on mvl0; the agent is killed and started again in between
        [ b ] ─┘
    """
    host.call("network_create", name="mv1", driver="macvlan", subnet="10.77.0.0/24", options={"parent": parent})
    host.call("endpoint_create", name="a", network="mv1")
    host.call("endpoint_create", name="b", network="mv1")
    before = sh(host.ep_ns("a"), "ip", "-o", "link", "show", "dev", "eth0", check=True).stdout.split(":")[0]
    host.stop_agent()
    host.start_agent()                      # start() reconciles: nothing to recreate
    after = sh(host.ep_ns("a"), "ip", "-o", "link", "show", "dev", "eth0", check=True).stdout.split(":")[0]
    assert before == after, "the restart recreated a's interface"
    assert ping(host.ep_ns("a"), ip_of(host, "b", "mv1"))
    assert not {n for n in host_links(host) if n.startswith("dlm")}

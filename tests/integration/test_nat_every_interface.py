"""Published ports are reachable from every interface of the host by default, as with Docker, on
every backend; eBPF NAT follows interfaces that appear after the agent started, runs on a bridge
made by hand (not on its ports), and stays off interfaces excluded by name.

      outside  198.18.0.2 ──── uplink0 198.18.0.1 ┐
      side     198.19.0.2 ──── side0   198.19.0.1 ├ host netns ── dockline bridge n1 ── web :8080
      skip     198.20.0.2 ──── skip0   198.20.0.1 │  (skip0: --nat-exclude 'skip*')
      lan      198.21.0.2 ── lanp ─ br-hand 198.21.0.1 ┘  (a Linux bridge made by hand)

side0, skip0 and br-hand are made after the agent started.
"""

import time

import pytest

from dockline.control.netlink import netns
from dockline.control.sim.nstools import Server, link_namespaces, request, sh
from dockline.control.sim.simhost import HOST_IP, OUTSIDE_IP, SimHost

pytestmark = pytest.mark.root


@pytest.fixture
def box(tmp_path, datapath):
    h = SimHost(tmp_path, datapath=datapath, extra_args=["--nat-exclude", "skip*"])
    extra = [f"{h.tag}-side", f"{h.tag}-skip", f"{h.tag}-lan"]
    try:
        for ns in extra:
            netns.ensure_netns(ns)
        h.start_agent()
        h.call("network_create", name="n1", subnet="10.91.0.0/24")
        h.call("endpoint_create", name="web", network="n1", ports=["18080:8080", "18053:5353/udp"])
        link_namespaces(h.host_ns, "side0", "198.19.0.1/24", extra[0], "s0", "198.19.0.2/24")
        link_namespaces(h.host_ns, "skip0", "198.20.0.1/24", extra[1], "k0", "198.20.0.2/24")
        sh(h.host_ns, "ip", "link", "add", "br-hand", "type", "bridge", check=True)
        sh(h.host_ns, "ip", "addr", "add", "198.21.0.1/24", "dev", "br-hand", check=True)
        sh(h.host_ns, "ip", "link", "set", "br-hand", "up", check=True)
        link_namespaces(h.host_ns, "lanp", "198.22.0.9/32", extra[2], "eth0", "198.21.0.2/24")
        sh(h.host_ns, "ip", "addr", "flush", "dev", "lanp", check=True)
        sh(h.host_ns, "ip", "link", "set", "lanp", "master", "br-hand", check=True)
        yield h, extra
    finally:
        for ns in extra:
            netns.remove_netns(ns)
        h.cleanup()


def _nat_interfaces(h, want, timeout=10.0, settled=lambda view: True):
    """``info``'s per-interface NAT view once it names every interface of ``want`` and
    ``settled(view)`` holds (the agent follows link events as they come: lanp is a plain veth
    for a moment before it becomes a port of br-hand); iptables' view ("*") names none."""
    deadline = time.monotonic() + timeout
    while True:
        view = h.call("info")["datapath"]["nat_interfaces"]
        if (("*" in view or all(n in view for n in want)) and settled(view)) or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def test_published_ports_reachable_from_every_interface(box, datapath):
    h, (side, skip, lan) = box
    servers = [Server(h.ep_ns("web"), 8080), Server(h.ep_ns("web"), 5353, "udp")]
    try:
        view = _nat_interfaces(h, ["uplink0", "side0", "skip0", "br-hand", "lanp"],
                               settled=lambda v: "*" in v or "port of bridge" in v.get("lanp", ""))
        if datapath == "kernel":
            assert view == {"*": "iptables: netfilter hooks every interface"}
        else:
            assert view["uplink0"].startswith("eBPF") and view["side0"].startswith("eBPF"), view
            assert view["br-hand"].startswith("eBPF"), view
            assert "port of bridge br-hand" in view["lanp"], view
            assert "excluded" in view["skip0"], view
            assert "loopback" in view["lo"], view
            assert not any(n.startswith(("dl-", "dlv")) for n in view), view
        for ns, host_ip, client_ip in [(h.out_ns, HOST_IP, OUTSIDE_IP), (side, "198.19.0.1", "198.19.0.2"),
                                       (lan, "198.21.0.1", "198.21.0.2")]:
            for proto, port in (("tcp", 18080), ("udp", 18053)):
                seen = request(ns, host_ip, port, proto)
                assert seen is not None, f"{proto} {host_ip}:{port} from {ns} got no answer"
                assert seen.split(":")[0] == client_ip, f"the container saw {seen}, expected {client_ip}"
        seen = request(skip, "198.20.0.1", 18080, timeout=1.0)
        if datapath == "kernel":
            assert seen is not None and seen.split(":")[0] == "198.20.0.2"
        else:
            assert seen is None, "an excluded interface must not get eBPF NAT"
    finally:
        for s in servers:
            s.close()


@pytest.mark.parametrize("datapath", ["ebpf"])     # iptables follows nothing: netfilter hooks all
def test_an_interface_that_goes_is_forgotten(box, datapath):
    h, (side, skip, lan) = box
    assert _nat_interfaces(h, ["side0"])["side0"].startswith("eBPF")
    sh(h.host_ns, "ip", "link", "del", "side0", check=True)
    deadline = time.monotonic() + 10
    while "side0" in h.call("info")["datapath"]["nat_interfaces"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "side0" not in h.call("info")["datapath"]["nat_interfaces"]
    # and one that comes back under the same name is picked up again
    link_namespaces(h.host_ns, "side0", "198.19.0.1/24", side, "s1", "198.19.0.2/24")
    assert _nat_interfaces(h, ["side0"])["side0"].startswith("eBPF")
    srv = Server(h.ep_ns("web"), 8080)
    try:
        seen = request(side, "198.19.0.1", 18080)
        assert seen is not None and seen.split(":")[0] == "198.19.0.2"
    finally:
        srv.close()


@pytest.mark.parametrize("datapath", ["ebpf"])     # the nat rule front end is eBPF NAT's
def test_untranslated_flows_are_tracked_so_replies_are_not_masqueraded(box, datapath):
    """A router's LAN: the outside reaches a container on the hand-made bridge by its own address
    (routed, nothing translates), while the bridge's subnet is masqueraded on its way out. The
    container's reply must not be masqueraded: its flow was tracked (untranslated) when the
    first packet came in, as iptables tracks every flow; and the rules ran once for the flow."""
    h, (side, skip, lan) = box
    h.call("nat_import", text="*nat\n-A POSTROUTING -s 198.21.0.0/24 ! -o br-hand -j MASQUERADE\nCOMMIT\n")
    sh(h.out_ns, "ip", "route", "replace", "198.21.0.0/24", "via", HOST_IP, check=True)
    sh(lan, "ip", "route", "replace", "default", "via", "198.21.0.1", check=True)
    _nat_interfaces(h, ["br-hand", "lanp"], settled=lambda v: "port of bridge" in v.get("lanp", ""))
    servers = [Server(lan, 8080), Server(lan, 5353, "udp")]
    try:
        for proto, port in (("tcp", 8080), ("udp", 5353)):
            seen = request(h.out_ns, "198.21.0.2", port, proto)
            assert seen is not None, f"{proto} to the container's own address got no answer"
            assert seen.split(":")[0] == OUTSIDE_IP, seen
        flows = h.call("conntrack", limit=100)["flows"]
        mine = [f for f in flows if "198.21.0.2" in f["orig"]]
        assert mine and all(f["kind"] == "" for f in mine), mine      # tracked, untranslated
        # and the masquerade itself still works for what the container starts
        out_srv = Server(h.out_ns, 5555)
        try:
            seen = request(lan, OUTSIDE_IP, 5555)
            assert seen is not None and seen.split(":")[0] == HOST_IP, seen
        finally:
            out_srv.close()
    finally:
        for s in servers:
            s.close()

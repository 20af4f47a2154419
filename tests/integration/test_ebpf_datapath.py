"""What only the eBPF backend does: same-network traffic bypasses the bridge through
bpf_redirect_peer, anti-spoofing and isolation happen in the program and are counted by reason,
and a restart adopts the pinned programs without compiling.

      host netns:  bridge n1 (ARP, gateway)        bridge n2
                    veth+tc ── a    veth+tc ── b    veth+tc ── c
                     └────── redirect_peer ──────┘
"""

import json
import signal

import pytest

from dockline.control.sim.nstools import Server, ping, request, sh

pytestmark = pytest.mark.root


@pytest.fixture
def datapath():
    return "ebpf"


def verdict(host, name):
    return host.call("stats")["verdicts"].get(name, {}).get("packets", 0)


def bridge_tx_packets(host, bridge_port):
    out = sh(host.host_ns, "ip", "-s", "-j", "link", "show", "dev", bridge_port, check=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["packets"]


@pytest.fixture
def three(host):
    host.call("network_create", name="n1")
    host.call("network_create", name="n2")
    for ep, net in (("a", "n1"), ("b", "n1"), ("c", "n2")):
        host.call("endpoint_create", name=ep, network=net)
    return {ep: host.call("inspect", ref=ep)["networks"][net] for ep, net in (("a", "n1"), ("b", "n1"), ("c", "n2"))}


def test_info_and_probe_choose_ebpf(host):
    info = host.call("info")
    assert info["datapath"]["name"] == "ebpf" and info["probe"]["ebpf"]["usable"]
    assert len(info["datapath"]["programs_digest"]) == 16


def test_same_network_traffic_is_redirected_to_the_peer(host, three):
    a, b = three["a"], three["b"]
    assert ping(host.ep_ns("a"), b["ip"])          # ARP goes through the bridge first
    before_red = verdict(host, "redirect_peer")
    before_bridge = bridge_tx_packets(host, b["host_ifname"])
    srv = Server(host.ep_ns("b"), 5000)
    try:
        for _ in range(20):
            assert request(host.ep_ns("a"), b["ip"], 5000) is not None
    finally:
        srv.close()
    assert verdict(host, "redirect_peer") - before_red >= 20 * 4
    # the bridge did not carry that traffic to b: its port sent (almost) nothing more
    assert bridge_tx_packets(host, b["host_ifname"]) - before_bridge < 10
    eps = {e["endpoint"]: e for e in host.call("stats")["endpoints"]}
    assert eps["a"]["redirected"]["packets"] > 0 and eps["b"]["redirected"]["packets"] > 0


def test_cross_network_is_dropped_in_the_program(host, three):
    before = verdict(host, "isolation")
    assert request(host.ep_ns("a"), three["c"]["ip"], 5000, timeout=0.5) is None
    assert not ping(host.ep_ns("a"), three["c"]["ip"], wait=0.5)
    assert verdict(host, "isolation") > before


def test_spoofed_source_ip_is_dropped_and_counted(host, three):
    ns = host.ep_ns("a")
    sh(ns, "ip", "addr", "add", "10.89.0.250/24", "dev", "eth0", check=True)
    before = verdict(host, "spoofed_ip")
    assert ping(ns, three["b"]["ip"])   # the assigned address still works
    r = sh(ns, "ping", "-n", "-c", "2", "-W", "1", "-I", "10.89.0.250", three["b"]["ip"])
    assert r.returncode != 0, "a packet from a spoofed source address got through"
    assert verdict(host, "spoofed_ip") >= before + 2


def test_spoofed_mac_is_dropped_and_counted(host, three):
    ns = host.ep_ns("a")
    assert ping(ns, three["b"]["ip"])
    sh(ns, "ip", "link", "set", "eth0", "address", "02:00:00:00:00:99", check=True)
    before = verdict(host, "spoofed_mac")
    assert not ping(ns, three["b"]["ip"])
    assert verdict(host, "spoofed_mac") > before


def test_restart_adopts_pinned_programs_without_compiling(host, three):
    assert ping(host.ep_ns("a"), three["b"]["ip"])
    digest = host.call("info")["datapath"]["programs_digest"]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        host.stop_agent(sig)
        assert ping(host.ep_ns("a"), three["b"]["ip"]), "forwarding stopped with the agent"
        host.start_agent()
        info = host.call("info")["datapath"]
        assert info["programs_digest"] == digest and info["compiled_this_start"] is False
        assert info["programs_origin"] == "pins"
    log = host.agent_log.read_text()
    # the first start only: compiled, or loaded from the session's compile cache
    assert log.count("BPF programs compiled and pinned") + log.count("BPF programs loaded from the compile cache") == 1
    assert log.count("BPF programs adopted") == 2
    assert ping(host.ep_ns("a"), three["b"]["ip"])

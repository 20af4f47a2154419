"""Datapaths built from parts: kernel forwarding (the Linux bridge) with eBPF NAT, end to end.

      outside (198.18.0.2) ──veth── host: uplink0 198.18.0.1 [tc: eBPF NAT]
                                          bridge n1 (10.66.0.0/24): the kernel forwards
                                            |               |
                                          [ web ]         [ cli ]   endpoint veths [tc: NAT only]
"""

import pytest

from dockline.control.sim.nstools import Server, ping, request, sh
from dockline.control.sim.simhost import HOST_IP, OUTSIDE_IP, SimHost

pytestmark = pytest.mark.root


@pytest.fixture
def combo(tmp_path):
    h = SimHost(tmp_path, datapath="kernel+ebpfnat")
    try:
        h.start_agent(timeout=150)   # a fresh eBPF host compiles every program
        yield h
    finally:
        h.cleanup()


def test_kernel_forwarding_with_ebpf_nat(combo):
    info = combo.call("info")["datapath"]
    assert (info["name"], info["forwarding_engine"], info["nat_engine"]) == ("kernel+ebpfnat", "kernel", "ebpf")
    combo.call("network_create", name="n1", subnet="10.66.0.0/24")
    combo.call("endpoint_create", name="web", network="n1", ports=["8080:80"])
    combo.call("endpoint_create", name="cli", network="n1")
    web = combo.call("inspect", ref="web")["networks"]["n1"]["ip"]
    srv = Server(combo.ep_ns("web"), 80)
    try:
        # a published port from outside: translated by eBPF, the client's address kept
        seen = request(combo.out_ns, HOST_IP, 8080)
        assert seen is not None and seen.split(":")[0] == OUTSIDE_IP
        # same network: the bridge forwards (no redirect_peer verdict), and it works
        assert request(combo.ep_ns("cli"), web, 80) is not None
    finally:
        srv.close()
    assert ping(combo.ep_ns("cli"), web)
    stats = combo.call("stats")
    assert "redirect_peer" not in stats["verdicts"], stats["verdicts"]
    assert stats["verdicts"]["pass"]["packets"] > 0 and "forward_rules" in stats
    # iptables does no NAT on this datapath: no DNAT or MASQUERADE of ours in the nat table
    nat = sh(combo.host_ns, "iptables-save", "-t", "nat", check=True).stdout
    assert "DNAT" not in nat and "MASQUERADE" not in nat
    # eBPF NAT's abilities are there: user nat rules and the conntrack view
    r = combo.cli("iptables", "-t", "nat", "-S")
    assert r.returncode == 0 and any("--dport 8080" in line and "DNAT" in line for line in r.stdout.splitlines()), \
        r.stdout + r.stderr
    assert combo.cli("nat", "conntrack").returncode == 0


def test_ebpf_forwarding_with_iptables_nat_is_refused(tmp_path):
    h = SimHost(tmp_path, datapath="ebpf+iptablesnat")
    try:
        with pytest.raises(AssertionError, match="ebpf forwarding needs ebpf NAT"):
            h.start_agent()
    finally:
        h.cleanup()

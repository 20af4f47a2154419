"""Agent kill and restart: the data plane keeps forwarding while the agent is down, and the
restarted agent adopts the kernel state without rebuilding it.

      outside ──uplink── host netns (agent: killed / restarted)
                           │ bridge n1
                         web (published 8080 -> 80)    client
Flows: client -> web:80 (TCP, held open), outside -> 198.18.0.1:8080 (TCP), client -> web (UDP).
"""

import json
import signal
import time

import pytest

from dockline.control.sim.nstools import Server, open_stream, ping, request, sh
from dockline.control.sim.simhost import HOST_IP
from dockline.control.netlink import netns

pytestmark = pytest.mark.root


def link_indexes(host):
    out = sh(host.host_ns, "ip", "-j", "link", "show", check=True).stdout
    return {l["ifname"]: l["ifindex"] for l in json.loads(out)}


def exchange(sock, payload):
    sock.sendall(payload)
    got = b""
    while not got.endswith(payload):
        chunk = sock.recv(65536)
        assert chunk, "the long-lived connection was closed"
        got += chunk
    return got


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_agent_restart_keeps_state_and_traffic(host, sig):
    host.call("network_create", name="n1")
    host.call("endpoint_create", name="web", network="n1", ports=["8080:80"])
    host.call("endpoint_create", name="client", network="n1")
    web_ip = host.call("inspect", ref="web")["networks"]["n1"]["ip"]
    tcp, udp = Server(host.ep_ns("web"), 80), Server(host.ep_ns("web"), 80, "udp")
    try:
        inner = open_stream(host.ep_ns("client"), web_ip, 80)
        outer = open_stream(host.out_ns, HOST_IP, 8080)
        before = {"ps": host.call("ps"), "nets": host.call("network_ls"), "links": link_indexes(host)}
        exchange(inner, b"before")
        exchange(outer, b"before")

        host.stop_agent(sig)
        # control plane down: established flows, new connections and ICMP still work
        for i in range(3):
            exchange(inner, b"down-%d" % i)
            exchange(outer, b"down-%d" % i)
            time.sleep(0.2)
        assert request(host.ep_ns("client"), web_ip, 80) is not None
        assert request(host.out_ns, HOST_IP, 8080) is not None
        assert request(host.ep_ns("client"), web_ip, 80, "udp") is not None
        assert ping(host.ep_ns("client"), web_ip)

        host.start_agent()
        after = {"ps": host.call("ps"), "nets": host.call("network_ls"), "links": link_indexes(host)}
        assert after == before, "the restarted agent changed state or rebuilt interfaces"
        exchange(inner, b"after")
        exchange(outer, b"after")
        assert request(host.out_ns, HOST_IP, 8080) is not None
        # and it still takes orders
        host.call("endpoint_create", name="late", network="n1")
        assert ping(host.ep_ns("late"), web_ip)
        inner.close()
        outer.close()
    finally:
        tcp.close()
        udp.close()


def test_reconcile_recreates_what_was_deleted_behind_its_back(host):
    host.call("network_create", name="n1")
    host.call("endpoint_create", name="web", network="n1", ports=["8080:80"])
    web = host.call("inspect", ref="web")["networks"]["n1"]
    host.stop_agent(signal.SIGKILL)
    # someone deletes the veth and flushes our NAT chain while the agent is down
    sh(host.host_ns, "ip", "link", "del", web["host_ifname"], check=True)
    sh(host.host_ns, "iptables", "-t", "nat", "-F", "DOCKLINE", check=True)
    # ... and leaves an orphan bridge of ours behind
    sh(host.host_ns, "ip", "link", "add", "dl-000000000000", "type", "bridge", check=True)
    host.start_agent()
    s = Server(host.ep_ns("web"), 80)
    try:
        assert request(host.out_ns, HOST_IP, 8080) is not None
    finally:
        s.close()
    assert "dl-000000000000" not in link_indexes(host)


def test_store_survives_kill_during_a_burst_of_operations(host):
    """SIGKILL the agent while it is creating endpoints: after restart every endpoint in the store
    is fully networked and nothing half-made is left in the kernel."""
    import threading
    host.call("network_create", name="n1")

    def burst():
        for i in range(20):
            try:
                host.call("endpoint_create", name=f"e{i}", network="n1")
            except Exception:
                return

    t = threading.Thread(target=burst)
    t.start()
    time.sleep(1.0)
    host.stop_agent(signal.SIGKILL)
    t.join()
    host.start_agent()
    eps = host.call("ps")
    assert eps, "no endpoint was created before the kill"
    names = {e["name"] for e in eps}
    prefix = f"dl-{host.name}-"
    assert {ns[len(prefix):] for ns in netns.list_netns(prefix)} == names
    first = sorted(names)[0]
    for e in eps:
        assert ping(host.ep_ns(first), e["networks"]["n1"]), f"{e['name']} is not reachable after restart"

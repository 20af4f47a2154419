"""Published ports and egress masquerade.

      outside netns  198.18.0.2 ──veth── 198.18.0.1 uplink0   host netns (agent, iptables)
                                                     │ bridge n1          │ bridge n2
                                                   web (80, 81, 53/udp)  b     other
Published: 198.18.0.1:8080 -> web:80 and friends. Reached from the outside netns, from the
host itself (host address and 127.0.0.1), from a container on the same network (hairpin), from
web itself, and from a container on another network.
"""

import pytest

from dockline.control.sim.nstools import Server, request
from dockline.control.sim.simhost import HOST_IP, OUTSIDE_IP

pytestmark = pytest.mark.root


@pytest.fixture
def web(host):
    host.call("network_create", name="n1")
    host.call("network_create", name="n2")
    host.call("endpoint_create", name="web", network="n1",
              ports=["8080:80", "8053:53/udp", "7000-7001:81-82", f"{HOST_IP}:9090:80"])
    host.call("endpoint_create", name="b", network="n1")
    host.call("endpoint_create", name="other", network="n2")
    ns = host.ep_ns("web")
    servers = [Server(ns, 80), Server(ns, 53, "udp"), Server(ns, 81), Server(ns, 82)]
    yield {ep: host.call("inspect", ref=ep)["networks"][net]["ip"]
           for ep, net in (("web", "n1"), ("b", "n1"), ("other", "n2"))}
    for s in servers:
        s.close()


def src(seen):
    assert seen is not None, "no answer through the published port"
    return seen.split(":")[0]


def test_from_outside_keeps_the_client_address(host, web):
    assert src(request(host.out_ns, HOST_IP, 8080)) == OUTSIDE_IP
    assert src(request(host.out_ns, HOST_IP, 8053, "udp")) == OUTSIDE_IP
    assert src(request(host.out_ns, HOST_IP, 7000)) == OUTSIDE_IP
    assert src(request(host.out_ns, HOST_IP, 7001)) == OUTSIDE_IP
    assert src(request(host.out_ns, HOST_IP, 9090)) == OUTSIDE_IP


def test_unpublished_port_is_closed_from_outside(host, web):
    assert request(host.out_ns, HOST_IP, 8081, timeout=1) is None


def test_from_the_host_itself(host, web):
    gw = host.call("network_inspect", ref="n1")["gateway"]
    # host address: the source seen is a host address (masqueraded to the bridge's)
    assert src(request(host.host_ns, HOST_IP, 8080)) in (HOST_IP, gw)
    # loopback: no userland proxy, so DNAT + route_localnet + masquerade to the bridge address
    assert src(request(host.host_ns, "127.0.0.1", 8080)) == gw
    assert src(request(host.host_ns, "127.0.0.1", 8053, "udp")) == gw
    # a mapping bound to one host address is not published on the others
    assert request(host.host_ns, "127.0.0.1", 9090, timeout=1) is None


def test_hairpin_from_the_same_network(host, web):
    assert src(request(host.ep_ns("b"), HOST_IP, 8080)) == web["b"]
    assert src(request(host.ep_ns("b"), HOST_IP, 8053, "udp")) == web["b"]


def test_hairpin_to_itself(host, web):
    gw = host.call("network_inspect", ref="n1")["gateway"]
    # the reply must come back through the host, so the source is masqueraded
    assert src(request(host.ep_ns("web"), HOST_IP, 8080)) == gw


def test_from_another_network_through_the_published_port(host, web):
    seen = src(request(host.ep_ns("other"), HOST_IP, 8080))
    assert seen in (web["other"], HOST_IP, host.call("network_inspect", ref="n1")["gateway"])
    # but not directly by container address
    assert request(host.ep_ns("other"), web["web"], 80, timeout=1) is None


def test_port_listing_and_removal(host, web):
    ports = host.call("port", ref="web")
    assert {(p["host_port"], p["container_port"], p["proto"]) for p in ports} == {
        (8080, 80, "tcp"), (8053, 53, "udp"), (7000, 81, "tcp"), (7001, 82, "tcp"), (9090, 80, "tcp")}
    host.call("endpoint_rm", ref="web")
    assert request(host.out_ns, HOST_IP, 8080, timeout=1) is None


def test_random_host_port(host):
    host.call("network_create", name="n1")
    host.call("endpoint_create", name="r", network="n1", ports=["80"])
    (p,) = host.call("port", ref="r")
    assert 49153 <= p["host_port"] <= 60999
    s = Server(host.ep_ns("r"), 80)
    try:
        assert src(request(host.out_ns, HOST_IP, p["host_port"])) == OUTSIDE_IP
    finally:
        s.close()


def test_egress_is_masqueraded_to_the_host_address(host):
    host.call("network_create", name="n1")
    host.call("endpoint_create", name="a", network="n1")
    for proto in ("tcp", "udp"):
        s = Server(host.out_ns, 5555, proto)
        try:
            assert src(request(host.ep_ns("a"), OUTSIDE_IP, 5555, proto)) == HOST_IP
        finally:
            s.close()


def test_publish_and_unpublish_on_a_running_endpoint(host, web):
    """``dockline publish``/``unpublish``: ports come and go on a running endpoint, the others
    (sharing its container port 80) keep working, hairpin included; bad input changes nothing."""
    assert request(host.out_ns, HOST_IP, 8090, timeout=1) is None
    r = host.cli("publish", "web", "8090:80", "8091-8092:81-82")
    assert r.returncode == 0, r.stderr
    assert "80/tcp -> 0.0.0.0:8090" in r.stdout
    for port in (8090, 8091, 8092):
        assert src(request(host.out_ns, HOST_IP, port)) == OUTSIDE_IP
    assert src(request(host.ep_ns("web"), HOST_IP, 8090)) != web["web"]      # hairpin to itself: masqueraded
    r = host.cli("publish", "web", "8080:82")
    assert r.returncode == 4 and "port is already allocated" in r.stderr     # Conflict
    assert len(r.stderr.strip().splitlines()) == 1
    r = host.cli("unpublish", "web", "8090:80")
    assert r.returncode == 0, r.stderr
    assert request(host.out_ns, HOST_IP, 8090, timeout=1) is None
    assert src(request(host.out_ns, HOST_IP, 8080)) == OUTSIDE_IP            # same container port: kept
    assert src(request(host.ep_ns("web"), HOST_IP, 8080)) != web["web"]
    r = host.cli("unpublish", "web", "8090:80")
    assert r.returncode != 0 and "does not publish" in r.stderr
    ports = {(p["host_port"], p["container_port"]) for p in host.call("port", ref="web")}
    assert ports == {(8080, 80), (8053, 53), (7000, 81), (7001, 82), (9090, 80), (8091, 81), (8092, 82)}

"""Reachability between endpoints on one network, across several networks, and in every mode.

      host netns:   bridge n1 (10.89.x.0/24)
                      |            |
                    eth0         eth0
                  [ a ]        [ b ]        (endpoint netns made by the agent)
"""

import os

import pytest

from dockline.control.sim.nstools import Server, assert_exchange, ping, request, sh

pytestmark = pytest.mark.root


def ip_of(host, ep, net):
    return host.call("inspect", ref=ep)["networks"][net]["ip"]


def test_ping_tcp_udp_on_one_network(host):
    host.call("network_create", name="n1")
    host.call("endpoint_create", name="a", network="n1")
    host.call("endpoint_create", name="b", network="n1")
    a, b = ip_of(host, "a", "n1"), ip_of(host, "b", "n1")
    assert ping(host.ep_ns("a"), b) and ping(host.ep_ns("b"), a)
    assert_exchange(host.ep_ns("a"), host.ep_ns("b"), b, a)


def test_endpoint_interface_matches_inspect(host):
    host.call("network_create", name="n1", subnet="10.61.0.0/24", mtu=1400)
    ep = host.call("endpoint_create", name="a", network="n1", ip="10.61.0.50")
    att = ep["networks"]["n1"]
    out = sh(host.ep_ns("a"), "ip", "-o", "-4", "addr", "show", "dev", "eth0", check=True).stdout
    assert "10.61.0.50/24" in out
    link = sh(host.ep_ns("a"), "ip", "-o", "link", "show", "dev", "eth0", check=True).stdout
    assert "mtu 1400" in link and att["mac"] in link
    route = sh(host.ep_ns("a"), "ip", "route", "show", "default", check=True).stdout
    assert "via 10.61.0.1" in route


def test_connect_and_disconnect_second_network(host):
    host.call("network_create", name="n1")
    host.call("network_create", name="n2")
    host.call("endpoint_create", name="a", network="n1")
    host.call("endpoint_create", name="b", network="n2")
    b = ip_of(host, "b", "n2")
    assert not ping(host.ep_ns("a"), b)
    host.call("connect", network="n2", endpoint="a")
    assert sh(host.ep_ns("a"), "ip", "link", "show", "eth1").returncode == 0
    assert ping(host.ep_ns("a"), b)
    host.call("disconnect", network="n2", endpoint="a")
    assert sh(host.ep_ns("a"), "ip", "link", "show", "eth1").returncode != 0
    assert not ping(host.ep_ns("a"), b)
    # the address went back to the pool and is leased again on the next connect
    assert host.call("network_inspect", ref="n2")["endpoints"].keys() == {"b"}


def test_container_mode_shares_the_netns(host):
    host.call("network_create", name="n1")
    host.call("endpoint_create", name="pod", network="n1")
    host.call("endpoint_create", name="side", network="container:pod")
    info = host.call("inspect", ref="side")
    assert info["mode"] == "container" and info["netns_path"] == host.call("inspect", ref="pod")["netns_path"]
    # a server in the shared netns is reachable on localhost from the sidecar's point of view
    srv = Server(host.ep_ns("pod"), 7000, "tcp", ip="127.0.0.1")
    try:
        assert request(info["netns_path"], "127.0.0.1", 7000) is not None
    finally:
        srv.close()
    # the pod cannot go while the sidecar uses its namespace
    with pytest.raises(Exception, match="shares its network namespace with side"):
        host.call("endpoint_rm", ref="pod")


def test_none_mode_has_only_loopback(host):
    host.call("endpoint_create", name="lonely", network="none")
    links = sh(host.ep_ns("lonely"), "ip", "-o", "link", "show", check=True).stdout.splitlines()
    assert len(links) == 1 and "lo:" in links[0] and "UP" in links[0]


def test_host_mode_uses_the_host_netns(host):
    ep = host.call("endpoint_create", name="h", network="host")
    assert ep["mode"] == "host"
    assert os.stat(ep["netns_path"]).st_ino == os.stat(f"/run/netns/{host.host_ns}").st_ino


def test_adopt_existing_netns_by_path(host):
    from dockline.control.netlink import netns
    name = f"{host.tag}-adopted"
    netns.ensure_netns(name)
    try:
        host.call("network_create", name="n1")
        host.call("endpoint_create", name="b", network="n1")
        host.call("endpoint_create", name="adopted", network="n1", netns_spec=f"/run/netns/{name}")
        assert ping(name, ip_of(host, "b", "n1"))
        host.call("endpoint_rm", ref="adopted")
        # the namespace is not ours: it stays, only our interface is gone
        assert netns.exists(name)
        assert sh(name, "ip", "link", "show", "eth0").returncode != 0
    finally:
        netns.remove_netns(name)


def test_default_network_and_egress(host):
    """The default 'bridge' network (docker0-like) reaches the outside through masquerade."""
    host.call("endpoint_create", name="a")
    assert ip_of(host, "a", "bridge").startswith("10.88.")
    assert ping(host.ep_ns("a"), "198.18.0.2")

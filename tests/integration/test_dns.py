"""Embedded DNS end to end through the agent: names and aliases resolve inside user-defined
networks, names on other networks do not, other names go to the upstream resolver.

      outside netns: upstream resolver 198.18.0.2:53 (example.test -> 192.0.2.10, else NXDOMAIN)
            |
      host netns: agent (forwards from here)
            |  n1: a, b (alias bee)      n2: c
      endpoint netns: resolver sockets on 127.0.0.11:53, /etc/resolv.conf points there
"""

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

from dockline.control.sim.nstools import sh
from dockline.control.netlink.netns import netns_path, run_in_netns

pytestmark = pytest.mark.root


class UpstreamResolver(BaseResolver):
    def __init__(self):
        self.queries = []

    def resolve(self, request, handler):
        name = str(request.q.qname).rstrip(".")
        self.queries.append(name)
        reply = request.reply()
        if name == "example.test":
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("192.0.2.10"), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def upstream(host):
    resolver = UpstreamResolver()
    server = run_in_netns(netns_path(host.out_ns), DNSServer, resolver, port=53, address="198.18.0.2")
    server.start_thread()
    yield resolver
    server.stop()
    server.server.server_close()


def query(host, ep, name, qtype="A"):
    q = DNSRecord.question(name, qtype)
    wire = run_in_netns(netns_path(host.ep_ns(ep)), q.send, "127.0.0.11", 53, timeout=3)
    return DNSRecord.parse(wire)


def answers(reply):
    return sorted(str(rr.rdata) for rr in reply.rr)


@pytest.fixture
def two_networks(host, upstream):
    host.call("network_create", name="n1")
    host.call("network_create", name="n2")
    host.call("endpoint_create", name="a", network="n1")
    host.call("endpoint_create", name="b", network="n1", aliases=["bee", "Web"])
    host.call("endpoint_create", name="c", network="n2")
    return {ep: host.call("inspect", ref=ep)["networks"][net]["ip"] for ep, net in
            (("a", "n1"), ("b", "n1"), ("c", "n2"))}


def test_names_and_aliases_resolve_on_the_same_network(host, two_networks):
    ips = two_networks
    for name in ("b", "bee", "web", "WEB", "b."):
        r = query(host, "a", name)
        assert r.header.rcode == RCODE.NOERROR and answers(r) == [ips["b"]], name
    assert answers(query(host, "b", "a")) == [ips["a"]]
    # AAAA for a local name: NOERROR and empty, so the client does not go upstream for it
    r = query(host, "a", "b", "AAAA")
    assert r.header.rcode == RCODE.NOERROR and not r.rr


def test_names_on_other_networks_are_nxdomain(host, two_networks, upstream):
    r = query(host, "a", "c")
    assert r.header.rcode == RCODE.NXDOMAIN
    assert query(host, "c", "b").header.rcode == RCODE.NXDOMAIN
    assert "c" in upstream.queries   # unknown here, so it was forwarded, and upstream said no


def test_other_names_are_forwarded_upstream(host, two_networks, upstream):
    r = query(host, "a", "example.test")
    assert answers(r) == ["192.0.2.10"]
    assert upstream.queries.count("example.test") == 1


def test_resolv_conf_inside_points_at_the_embedded_resolver(host, two_networks):
    out = sh(host.ep_ns("a"), "getent", "hosts", "bee", check=True).stdout
    assert out.split()[0] == two_networks["b"]
    assert sh(host.ep_ns("a"), "getent", "hosts", "c").returncode != 0


def test_connect_adds_names_and_disconnect_removes_them(host, two_networks):
    host.call("connect", network="n2", endpoint="a")
    ip_c = two_networks["c"]
    assert answers(query(host, "a", "c")) == [ip_c]
    host.call("disconnect", network="n2", endpoint="a")
    assert query(host, "a", "c").header.rcode == RCODE.NXDOMAIN


def test_dns_answers_again_after_agent_restart(host, two_networks):
    host.stop_agent()
    host.start_agent()
    assert answers(query(host, "a", "bee")) == [two_networks["b"]]


def test_default_bridge_has_no_embedded_dns(host):
    host.call("endpoint_create", name="x")
    conf = sh(host.ep_ns("x"), "cat", "/etc/resolv.conf", check=True).stdout
    assert "127.0.0.11" not in conf and "nameserver 198.18.0.2" in conf

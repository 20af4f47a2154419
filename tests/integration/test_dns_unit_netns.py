"""EmbeddedDNS against real sockets in throwaway network namespaces (needs root)."""

from __future__ import annotations

import os
import secrets
import selectors
import socket
import struct
import threading
import time

import pytest
from dnslib import A, DNSRecord, EDNS0, QTYPE, RCODE, RR
from pyroute2 import IPRoute

from dockline.control.dns import EmbeddedDNS
from dockline.control.errors import DatapathError
from dockline.control.netlink.netns import ensure_netns, netns_path, remove_netns, run_in_netns

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")]

# Topology: listeners live in the endpoint netns; forwarding sockets are made in the "agent" netns,
# which reaches the fake upstream resolver in the "upstream" netns over a veth pair. Nothing is
# created in the root netns.
AGENT_IP, UPSTREAM_IP = "169.254.53.1", "169.254.53.2"
TIMEOUT = 1.0
BIG_COUNT = 40          # 40 A records make a reply of ~670 bytes, over the 512-byte UDP limit
LOCAL_NAMES = {
    "ep1": {"web": ["10.1.0.5"], "db": ["10.1.0.6"], "database": ["10.1.0.6"],   # "database": an alias
            "many": [f"10.1.1.{i}" for i in range(1, BIG_COUNT + 1)]},
    "int1": {"web": ["10.2.0.5"]},
}
REVERSE = {"ep1": {"10.1.0.5": ["web"]}}


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


class FakeUpstream:
    """A tiny UDP+TCP resolver in the upstream netns: example.test A, big.test (BIG_COUNT A records,
    truncated over UDP), fail.test SERVFAIL, silent.test no answer, NXDOMAIN for the rest."""

    def __init__(self, path: str, ip: str):
        def open_sockets():
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            for s in (udp, tcp):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((ip, 53))
            tcp.listen(8)
            return udp, tcp
        self.udp, self.tcp = run_in_netns(path, open_sockets)
        self.queries = []       # (transport, qname)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _answer(self, data: bytes, transport: str) -> bytes | None:
        q = DNSRecord.parse(data)
        name = str(q.q.qname).rstrip(".")
        self.queries.append((transport, name))
        r = q.reply(aa=0)
        if name == "example.test" and q.q.qtype == QTYPE.A:
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.10"), ttl=60))
        elif name == "big.test":
            for i in range(BIG_COUNT):
                r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(f"192.0.2.{i + 1}"), ttl=60))
        elif name == "fail.test":
            r.header.rcode = RCODE.SERVFAIL
        elif name == "silent.test":
            return None
        else:
            r.header.rcode = RCODE.NXDOMAIN
        wire = r.pack()
        if transport == "udp" and len(wire) > 512:
            t = q.reply(aa=0)
            t.header.tc = 1
            wire = t.pack()
        return wire

    def _run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ, "udp")
        sel.register(self.tcp, selectors.EVENT_READ, "tcp")
        while not self._stop:
            for key, _ in sel.select(timeout=0.2):
                try:
                    if key.data == "udp":
                        data, peer = self.udp.recvfrom(65535)
                        wire = self._answer(data, "udp")
                        if wire:
                            self.udp.sendto(wire, peer)
                    else:
                        conn, _ = self.tcp.accept()
                        with conn:
                            conn.settimeout(2)
                            n = struct.unpack("!H", _recv_exact(conn, 2))[0]
                            wire = self._answer(_recv_exact(conn, n), "tcp")
                            if wire:
                                conn.sendall(struct.pack("!H", len(wire)) + wire)
                except OSError:
                    pass
        sel.close()

    def close(self):
        self._stop = True
        self._thread.join()
        self.udp.close()
        self.tcp.close()


@pytest.fixture(scope="module")
def topo():
    suffix = secrets.token_hex(3)
    names = {role: f"dltdns-{role}-{suffix}" for role in ("ep", "ag", "up")}
    upstream = None
    try:
        for n in names.values():
            ensure_netns(n)
        with IPRoute(netns=names["ag"]) as ipr:
            ipr.link("add", ifname="dlag0", kind="veth", peer="dlup0")
            ipr.link("set", index=ipr.link_lookup(ifname="dlup0")[0], net_ns_fd=names["up"])
            idx = ipr.link_lookup(ifname="dlag0")[0]
            ipr.addr("add", index=idx, address=AGENT_IP, prefixlen=30)
            ipr.link("set", index=idx, state="up")
        with IPRoute(netns=names["up"]) as ipr:
            idx = ipr.link_lookup(ifname="dlup0")[0]
            ipr.addr("add", index=idx, address=UPSTREAM_IP, prefixlen=30)
            ipr.link("set", index=idx, state="up")
        upstream = FakeUpstream(netns_path(names["up"]), UPSTREAM_IP)
        yield {"ep": netns_path(names["ep"]), "ag": netns_path(names["ag"]), "upstream": upstream}
    finally:
        if upstream:
            upstream.close()
        for n in names.values():
            remove_netns(n)


@pytest.fixture
def dns(topo):
    topo["upstream"].queries.clear()
    lookups = []

    def lookup(key, name):
        lookups.append((key, name))
        if name == "boom":
            raise RuntimeError("state store broken")
        return LOCAL_NAMES.get(key, {}).get(name)

    server = EmbeddedDNS(lookup, [UPSTREAM_IP], timeout=TIMEOUT,
                         reverse=lambda key, ip: REVERSE.get(key, {}).get(ip),
                         can_forward=lambda key: key != "int1", forward_netns=topo["ag"])
    server.lookups = lookups
    server.start()
    try:
        server.add_listener("ep1", topo["ep"])                        # 127.0.0.11:53
        server.add_listener("int1", topo["ep"], address="127.0.0.12")  # an internal-only endpoint
        yield server
    finally:
        server.stop()


def query(path, name, qtype="A", tcp=False, server="127.0.0.11", timeout=3.0) -> DNSRecord:
    """Ask the embedded server from a socket made inside the endpoint netns."""
    q = DNSRecord.question(name, qtype)
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with run_in_netns(path, socket.socket, socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        s.connect((server, 53))
        if tcp:
            wire = q.pack()
            s.sendall(struct.pack("!H", len(wire)) + wire)
            reply = _recv_exact(s, struct.unpack("!H", _recv_exact(s, 2))[0])
        else:
            s.send(q.pack())
            reply = s.recv(65535)
    r = DNSRecord.parse(reply)
    assert r.header.id == q.header.id and r.q.qname == q.q.qname
    return r


def addrs(r: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr if rr.rtype == QTYPE.A]


def test_local_name_case_insensitive_and_alias(dns, topo):
    r = query(topo["ep"], "WeB")
    assert r.header.rcode == RCODE.NOERROR and addrs(r) == ["10.1.0.5"]
    assert r.rr[0].ttl == 600
    assert ("ep1", "web") in dns.lookups
    assert addrs(query(topo["ep"], "database.")) == ["10.1.0.6"]
    # the other endpoint's networks give another answer for the same name
    assert addrs(query(topo["ep"], "web", server="127.0.0.12")) == ["10.2.0.5"]
    assert dns.stats["answered_local"] == 3 and dns.stats["forwarded"] == 0
    assert topo["upstream"].queries == []


def test_aaaa_for_local_name_is_empty_noerror(dns, topo):
    r = query(topo["ep"], "web", "AAAA")
    assert r.header.rcode == RCODE.NOERROR and r.rr == []
    assert topo["upstream"].queries == []


def test_ptr_for_local_address(dns, topo):
    r = query(topo["ep"], "5.0.1.10.in-addr.arpa", "PTR")
    assert r.header.rcode == RCODE.NOERROR
    assert [str(rr.rdata) for rr in r.rr] == ["web."]
    # an address not on the endpoint's networks goes upstream (NXDOMAIN there)
    assert query(topo["ep"], "9.9.9.10.in-addr.arpa", "PTR").header.rcode == RCODE.NXDOMAIN
    assert topo["upstream"].queries == [("udp", "9.9.9.10.in-addr.arpa")]


def test_forwarded_answer_nxdomain_and_servfail(dns, topo):
    r = query(topo["ep"], "example.test")
    assert r.header.rcode == RCODE.NOERROR and addrs(r) == ["192.0.2.10"]
    assert query(topo["ep"], "nope.test").header.rcode == RCODE.NXDOMAIN
    assert query(topo["ep"], "fail.test").header.rcode == RCODE.SERVFAIL
    assert dns.stats["forwarded"] == 3 and dns.stats["nxdomain"] == 1 and dns.stats["servfail"] == 1


def test_forwarding_over_tcp(dns, topo):
    r = query(topo["ep"], "example.test", tcp=True)
    assert addrs(r) == ["192.0.2.10"]
    assert topo["upstream"].queries == [("udp", "example.test")]   # forwarded over UDP first


def test_upstreams_tried_in_order(dns, topo):
    dns.set_upstreams([f"{UPSTREAM_IP}:5300", UPSTREAM_IP])   # nothing listens on 5300
    assert addrs(query(topo["ep"], "example.test")) == ["192.0.2.10"]


#: For the two tests below, the resolver's upstream timeout is made much longer than TIMEOUT, so
#: that what they check is an order of events or an answer at all, not a stopwatch reading: they
#: hold on a loaded machine (no upper bound on elapsed time is asserted).
LONG_UPSTREAM_TIMEOUT = 4.0


def test_upstream_down_gives_servfail_without_waiting_out_the_timeout(dns, topo, monkeypatch):
    """A refusing upstream (ICMP port unreachable) is a failure at once, not a timeout: the client
    gives up long before the resolver's upstream timeout would end, and still gets SERVFAIL."""
    monkeypatch.setattr(dns, "timeout", 60.0)
    dns.set_upstreams([f"{UPSTREAM_IP}:5300"])
    assert query(topo["ep"], "example.test", timeout=10.0).header.rcode == RCODE.SERVFAIL


def test_silent_upstream_times_out_to_servfail_without_blocking_others(dns, topo, monkeypatch):
    """While one forward waits on an upstream that never answers, local names and other forwards
    are answered (before it gives up); then it ends in SERVFAIL, having waited its timeout."""
    monkeypatch.setattr(dns, "timeout", LONG_UPSTREAM_TIMEOUT)
    results = {}

    def slow():
        t0 = time.monotonic()
        results["rcode"] = query(topo["ep"], "silent.test", timeout=LONG_UPSTREAM_TIMEOUT + 20).header.rcode
        results["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=slow)
    t.start()
    while ("udp", "silent.test") not in topo["upstream"].queries and t.is_alive():   # forwarded, unanswered
        time.sleep(0.01)
    assert addrs(query(topo["ep"], "web")) == ["10.1.0.5"]            # the loop is not blocked
    assert addrs(query(topo["ep"], "example.test")) == ["192.0.2.10"]  # nor are other forwards
    assert "rcode" not in results, "the silent forward ended before the others were answered"
    t.join()
    assert results["rcode"] == RCODE.SERVFAIL
    # a lower bound only: the resolver did not give up early (load can only make this longer)
    assert results["elapsed"] >= LONG_UPSTREAM_TIMEOUT * 0.8


def test_internal_endpoint_does_not_forward(dns, topo):
    r = query(topo["ep"], "example.test", server="127.0.0.12")
    assert r.header.rcode == RCODE.SERVFAIL
    assert topo["upstream"].queries == []
    assert dns.stats["forwarded"] == 0 and dns.stats["servfail"] == 1


def test_big_forwarded_reply_truncated_over_udp_full_over_tcp(dns, topo):
    r = query(topo["ep"], "big.test")
    assert r.header.tc == 1 and r.rr == []
    r = query(topo["ep"], "big.test", tcp=True)
    assert r.header.tc == 0 and len(addrs(r)) == BIG_COUNT
    # the TCP client's query went upstream over UDP, got TC, and was retried over TCP
    assert topo["upstream"].queries == [("udp", "big.test"), ("udp", "big.test"), ("tcp", "big.test")]


def test_big_local_reply_truncated_over_udp_full_over_tcp(dns, topo):
    r = query(topo["ep"], "many")
    assert r.header.tc == 1 and r.rr == [] and r.header.rcode == RCODE.NOERROR
    r = query(topo["ep"], "many", tcp=True)
    assert sorted(addrs(r)) == sorted(LOCAL_NAMES["ep1"]["many"])
    assert dns.stats["truncated"] == 1


def test_edns_size_raises_udp_limit(dns, topo):
    q = DNSRecord.question("many")
    q.add_ar(EDNS0(udp_len=4096))
    with run_in_netns(topo["ep"], socket.socket, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(q.pack(), ("127.0.0.11", 53))
        r = DNSRecord.parse(s.recv(65535))
    assert r.header.tc == 0 and len(addrs(r)) == BIG_COUNT


def test_malformed_queries_do_not_kill_the_server(dns, topo):
    with run_in_netns(topo["ep"], socket.socket, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x12\x34garbage", ("127.0.0.11", 53))
        s.sendto(b"", ("127.0.0.11", 53))
        reply = DNSRecord.question("web").reply().pack()   # a response, not a query
        s.sendto(reply, ("127.0.0.11", 53))
    with run_in_netns(topo["ep"], socket.socket, socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect(("127.0.0.11", 53))
        s.sendall(struct.pack("!H", 7) + b"garbage")
        assert s.recv(10) == b""            # the server closed the connection
    assert query(topo["ep"], "boom").header.rcode == RCODE.SERVFAIL   # a lookup that raises
    assert addrs(query(topo["ep"], "web")) == ["10.1.0.5"]
    assert addrs(query(topo["ep"], "web", tcp=True)) == ["10.1.0.5"]
    assert dns.stats["malformed"] == 4


def test_add_listener_idempotent_and_errors_name_the_netns(dns, topo):
    dns.add_listener("ep1", topo["ep"])
    assert addrs(query(topo["ep"], "web")) == ["10.1.0.5"]
    with pytest.raises(DatapathError, match="dltdns-missing"):
        dns.add_listener("ghost", "/var/run/netns/dltdns-missing")


def test_remove_listener_closes_sockets(dns, topo):
    assert addrs(query(topo["ep"], "web")) == ["10.1.0.5"]
    dns.remove_listener("ep1")
    dns.remove_listener("ep1")      # idempotent
    with pytest.raises((socket.timeout, ConnectionRefusedError)):
        query(topo["ep"], "web", timeout=0.5)
    with pytest.raises(ConnectionRefusedError):
        query(topo["ep"], "web", tcp=True, timeout=0.5)
    assert addrs(query(topo["ep"], "web", server="127.0.0.12")) == ["10.2.0.5"]   # the other one stays

"""Embedded DNS server: answers container names on 127.0.0.11 in each endpoint netns, forwards the rest upstream."""

from __future__ import annotations

import collections
import functools
import ipaddress
import logging
import secrets
import selectors
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from dnslib import A, DNSRecord, OPCODE, PTR, QTYPE, RCODE, RR

from .errors import DatapathError, InvalidArgument
from .netlink.netns import run_in_netns

log = logging.getLogger("dockline.dns")

LOCAL_TTL = 600            # Docker's TTL for the names it answers itself
UDP_MIN_LIMIT = 512        # RFC 1035 UDP payload limit, raised by the client's EDNS size if larger
TCP_IDLE_SECONDS = 10.0    # idle client TCP connections are closed (RFC 7766 6.2.3)
TCP_MAX_CONNS = 256        # beyond this, new client TCP connections are closed at once


def parse_upstream(spec: str) -> tuple[int, str, int]:
    """``"ipv4"``, ``"ipv4:port"`` or ``"ipv6"`` -> (address family, ip, port); port defaults to 53."""
    host, _, port = spec.partition(":") if spec.count(":") == 1 else (spec, "", "53")
    try:
        ip, port_n = ipaddress.ip_address(host), int(port or "x")
        if not 0 < port_n < 65536:
            raise ValueError
    except ValueError:
        raise InvalidArgument(f"invalid DNS upstream {spec!r}: use ip or ip:port") from None
    return (socket.AF_INET if ip.version == 4 else socket.AF_INET6), str(ip), port_n


def _open_listener_sockets(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    # Runs inside the endpoint netns (via run_in_netns): the sockets stay in it for life.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for s in (udp, tcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
            s.setblocking(False)
        tcp.listen(64)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


_Listener = collections.namedtuple("_Listener", "key path address port udp tcp")


class _Conn:
    """One accepted client TCP connection. Replies are sent by worker threads, hence the lock."""

    def __init__(self, key: str, sock: socket.socket):
        self.key, self.sock, self.buf, self.last = key, sock, b"", time.monotonic()
        self.send_lock = threading.Lock()

    def send(self, wire: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(struct.pack("!H", len(wire)) + wire)   # RFC 1035 4.2.2 framing


class EmbeddedDNS:
    """One server thread (selectors loop) serving many listeners: one UDP + one TCP socket per endpoint netns.

    ``lookup``, ``reverse`` and ``can_forward`` are called from the server thread and from worker
    threads, never with this object's lock held, so they may take the caller's own locks.
    Unknown names on an endpoint where ``can_forward(key)`` is False (only internal networks) get
    SERVFAIL, as Docker's resolver does when it may not proxy: the name is not known to be absent,
    it just cannot be resolved from there, so an NXDOMAIN that clients cache would be wrong.
    ``forward_netns`` (a netns path) is where forwarding sockets are made; None: the agent's own netns.
    """

    def __init__(self, lookup, upstreams: list[str], timeout: float = 2.0, reverse=None, can_forward=None,
                 forward_netns: str | None = None, workers: int = 4):
        self.lookup, self.reverse, self.can_forward = lookup, reverse, can_forward
        self.timeout, self.forward_netns, self.workers = timeout, forward_netns, workers
        self.stats = dict.fromkeys(("queries", "answered_local", "forwarded", "nxdomain", "servfail",
                                    "truncated", "malformed"), 0)
        self.set_upstreams(upstreams)
        self._lock = threading.Lock()       # guards listeners, conns, stats, selector changes, closes
        self._listeners: dict[str, _Listener] = {}
        self._conns: set[_Conn] = set()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, functools.partial(self._wake_r.recv, 64))
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = False

    def start(self) -> None:
        if not self._thread:
            self._stopping = False
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dns-fwd")
            self._thread = threading.Thread(target=self._loop, name="dns-server", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Join the server thread and workers, close every socket; ``start`` may follow (with new listeners)."""
        if self._thread:
            self._stopping = True
            self._wake_w.send(b"x")
            self._thread.join()
            self._thread = None
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for key in list(self._listeners):
            self.remove_listener(key)

    def set_upstreams(self, upstreams) -> None:
        self._upstreams = [parse_upstream(u) for u in upstreams]   # one assignment: a worker sees old or new

    def add_listener(self, key: str, netns_path: str, address: str = "127.0.0.11", port: int = 53) -> None:
        """Serve endpoint ``key`` on address:port (UDP and TCP) inside ``netns_path``. Repeating a call
        does nothing; the same key with other arguments replaces the listener."""
        old = self._listeners.get(key)
        if old and (old.path, old.address, old.port) == (netns_path, address, port):
            return
        try:
            udp, tcp = run_in_netns(netns_path, _open_listener_sockets, address, port)
        except OSError as e:
            raise DatapathError(f"cannot listen for DNS on {address}:{port} in network namespace "
                                f"{netns_path}: {e.strerror or e}") from None
        self.remove_listener(key)
        lst = _Listener(key, netns_path, address, port, udp, tcp)
        with self._lock:
            self._listeners[key] = lst
            self._sel.register(udp, selectors.EVENT_READ, functools.partial(self._on_udp, lst))
            self._sel.register(tcp, selectors.EVENT_READ, functools.partial(self._on_accept, lst))
        log.info("dns: listening on %s:%d in %s for %s", address, port, netns_path, key)

    def remove_listener(self, key: str) -> None:
        """Close the endpoint's sockets and TCP connections; a reply still in flight is dropped."""
        with self._lock:
            lst = self._listeners.pop(key, None)
            if lst is None:
                return
            for s in (lst.udp, lst.tcp):
                self._sel.unregister(s)
                s.close()
            for c in [c for c in self._conns if c.key == key]:
                self._close_conn(c)
        log.info("dns: stopped listening in %s for %s", lst.path, key)

    # ----- server thread: reads sockets under the lock (so remove_listener never closes one
    # mid-read), then serves outside it. Answers that may wait (forwarding, TCP) go to workers.
    def _loop(self) -> None:
        last_sweep = time.monotonic()
        while not self._stopping:
            for skey, _ in self._sel.select(timeout=1.0):
                try:
                    skey.data()
                except Exception:   # one bad event must never end the loop
                    log.exception("dns: error while handling an event")
            if time.monotonic() - last_sweep > 1.0:
                last_sweep = time.monotonic()
                with self._lock:
                    for c in [c for c in self._conns if last_sweep - c.last > TCP_IDLE_SECONDS]:
                        self._close_conn(c)

    def _on_udp(self, lst: _Listener) -> None:
        with self._lock:
            try:
                data, peer = lst.udp.recvfrom(65535)
            except OSError:     # nothing to read, or closed by remove_listener meanwhile
                return
        self._serve(lst.key, data, lambda wire: lst.udp.sendto(wire, peer), udp=True)

    def _on_accept(self, lst: _Listener) -> None:
        with self._lock:
            try:
                sock, _ = lst.tcp.accept()
            except OSError:
                return
            if len(self._conns) >= TCP_MAX_CONNS:
                sock.close()
                return
            sock.settimeout(self.timeout)   # bounds a worker's sendall to a client that does not read
            conn = _Conn(lst.key, sock)
            self._conns.add(conn)
            self._sel.register(sock, selectors.EVENT_READ, functools.partial(self._on_tcp_data, conn))

    def _on_tcp_data(self, conn: _Conn) -> None:
        with self._lock:
            if conn not in self._conns:
                return
            try:
                data = conn.sock.recv(65537)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:     # reset by the client
                data = b""
            if not data:
                self._close_conn(conn)
                return
            conn.buf, conn.last, msgs = conn.buf + data, time.monotonic(), []
            while len(conn.buf) >= 2:
                n = struct.unpack("!H", conn.buf[:2])[0]
                if len(conn.buf) < 2 + n:
                    break
                msgs.append(conn.buf[2:2 + n])
                conn.buf = conn.buf[2 + n:]
        for msg in msgs:
            self._submit(self._serve_tcp, conn, msg)

    def _serve_tcp(self, conn: _Conn, msg: bytes) -> None:
        if not self._serve(conn.key, msg, conn.send, udp=False):
            with self._lock:
                self._close_conn(conn)

    def _close_conn(self, conn: _Conn) -> None:   # caller holds the lock
        if conn in self._conns:
            self._conns.discard(conn)
            self._sel.unregister(conn.sock)
            conn.sock.close()

    def _submit(self, fn, *args) -> None:
        try:
            self._pool.submit(fn, *args)
        except (RuntimeError, AttributeError):   # no pool or shut down: the server is stopping
            pass

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    # ----- query handling ----------------------------------------------------------------------
    def _serve(self, key: str, data: bytes, send, udp: bool) -> bool:
        """Answer one query; False if it was malformed (dropped; the caller closes a TCP connection)."""
        try:
            q = DNSRecord.parse(data)
            if q.header.qr or len(q.questions) != 1:
                raise ValueError("not a query with one question")
        except Exception:
            self._count("malformed")
            log.debug("dns: dropped a malformed query for %s (%d bytes)", key, len(data))
            return False
        self._count("queries")
        qname, qtype = str(q.q.qname).rstrip(".").lower(), q.q.qtype
        reply, forward = None, False
        try:
            if q.header.opcode != OPCODE.QUERY:
                reply = _error(q, RCODE.NOTIMP)
            else:
                reply = self._answer_local(key, q, qname, qtype)
                forward = reply is None and (self.can_forward is None or self.can_forward(key))
                if reply is not None or forward:
                    self._count("answered_local" if reply is not None else "forwarded")
        except Exception:
            log.exception("dns: lookup of %s for %s failed", qname, key)
        log.debug("dns: %s %s %s -> %s", key, qname, QTYPE.get(qtype, qtype),
                  "local" if reply is not None else "forward" if forward else "servfail")
        if forward and udp:     # an upstream wait must not block the server thread
            self._submit(self._forward_and_send, q, data, send, udp)
        elif forward:           # TCP queries are on a worker already
            self._forward_and_send(q, data, send, udp)
        else:
            self._send(q, reply or _error(q, RCODE.SERVFAIL), send, udp)
        return True

    def _answer_local(self, key: str, q: DNSRecord, qname: str, qtype: int) -> DNSRecord | None:
        """The reply for a name or address known on the endpoint's networks, or None to forward."""
        if qtype == QTYPE.PTR and qname.endswith(".in-addr.arpa"):
            octets = qname[:-len(".in-addr.arpa")].split(".")
            if self.reverse is None or len(octets) != 4 or not all(o.isdigit() for o in octets):
                return None
            names = self.reverse(key, ".".join(reversed(octets)))
            rrs = [RR(q.q.qname, QTYPE.PTR, rdata=PTR(n.rstrip(".") + "."), ttl=LOCAL_TTL)
                   for n in names or ()]
        else:
            names = self.lookup(key, qname)
            # A known name: A (or ANY) gets its records; AAAA and every other type get NOERROR with
            # no answers, like Docker, so the client does not ask upstream about a container name.
            wanted = qtype in (QTYPE.A, QTYPE.ANY)
            rrs = [RR(q.q.qname, QTYPE.A, rdata=A(ip), ttl=LOCAL_TTL) for ip in names or () if wanted]
        if names is None:
            return None
        reply = q.reply()
        for rr in rrs:
            reply.add_answer(rr)
        return reply

    def _send(self, q: DNSRecord, reply: DNSRecord | bytes, send, udp: bool) -> None:
        """Send a reply. Over UDP, one larger than the client's limit (512, or its EDNS size) becomes
        the header and question with TC set, so the client asks again over TCP."""
        if isinstance(reply, bytes):    # forwarded: already checked to parse
            wire, header = reply, DNSRecord.parse(reply).header
        else:
            wire, header = reply.pack(), reply.header
        edns = [rr.rclass for rr in q.ar if rr.rtype == QTYPE.OPT]
        if udp and len(wire) > max([UDP_MIN_LIMIT] + edns):
            header.tc = 1
            wire = DNSRecord(header, q=q.q).pack()
            self._count("truncated")
        rcode = header.rcode
        if rcode in (RCODE.NXDOMAIN, RCODE.SERVFAIL):
            self._count("nxdomain" if rcode == RCODE.NXDOMAIN else "servfail")
        try:
            send(wire)
        except OSError as e:    # listener removed or client gone meanwhile
            log.debug("dns: reply not sent: %s", e)

    # ----- forwarding (worker threads) ---------------------------------------------------------
    def _forward_and_send(self, q: DNSRecord, data: bytes, send, udp: bool) -> None:
        wire = self._forward(q, data, tcp=not udp)
        if wire is not None:    # relay the reply as received, with the client's id back in place
            wire = struct.pack("!H", q.header.id) + wire[2:]
        self._send(q, wire or _error(q, RCODE.SERVFAIL), send, udp)

    def _forward(self, q: DNSRecord, data: bytes, tcp: bool) -> bytes | None:
        """The first upstream reply to the query, upstreams tried in order; None if none answered.
        The query goes out with a random id from a fresh socket (so a random source port), and only
        a reply with that id and the same question is taken: off-path spoofing must guess both."""
        qid = secrets.randbits(16)
        out = struct.pack("!H", qid) + data[2:]     # the raw query, only its id replaced
        for family, host, port in list(self._upstreams):
            try:
                wire = self._exchange(family, socket.SOCK_DGRAM, host, port, out, qid, q)
                if tcp and DNSRecord.parse(wire).header.tc:    # a TCP client wants the full reply
                    wire = self._exchange(family, socket.SOCK_STREAM, host, port, out, qid, q)
                return wire
            except OSError as e:
                log.debug("dns: upstream %s:%d failed for %s: %s", host, port, q.q.qname, e)
        return None

    def _exchange(self, family, kind, host: str, port: int, out: bytes, qid: int, q: DNSRecord) -> bytes:
        """One round trip; raises OSError (timeout, refused, unreachable, bad reply)."""
        sock = (run_in_netns(self.forward_netns, socket.socket, family, kind) if self.forward_netns
                else socket.socket(family, kind))
        deadline = time.monotonic() + self.timeout
        with sock:
            sock.settimeout(self.timeout)
            sock.connect((host, port))      # a connected UDP socket ignores other sources
            if kind == socket.SOCK_STREAM:
                sock.sendall(struct.pack("!H", len(out)) + out)
                wire = _recv_exact(sock, struct.unpack("!H", _recv_exact(sock, 2))[0])
                if not _matches(wire, qid, q):
                    raise ConnectionError("upstream reply does not match the query")
                return wire
            sock.send(out)
            while True:     # skip stray or stale datagrams until the deadline
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                wire = sock.recv(65535)
                if _matches(wire, qid, q):
                    return wire


def _error(q: DNSRecord, rcode: int) -> DNSRecord:
    reply = q.reply(aa=0)
    reply.header.rcode = rcode
    return reply


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("upstream closed the connection")
        buf += chunk
    return buf


def _matches(wire: bytes, qid: int, q: DNSRecord) -> bool:
    """True if ``wire`` is a response to the query sent with id ``qid`` for ``q``'s question."""
    try:
        r = DNSRecord.parse(wire)
    except Exception:
        return False
    return (r.header.id == qid and r.header.qr == 1 and len(r.questions) == 1
            and r.q.qname == q.q.qname and r.q.qtype == q.q.qtype)

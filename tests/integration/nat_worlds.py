"""Two identical worlds for differential NAT tests (tests/integration/test_nat_differential.py).

  A. "iptables world": namespaces built here by hand in the shape of a dockline host, with the
     rule set loaded by ``iptables-restore`` (the kernel's nat is the reference).
  B. "dockline world": a SimHost (datapath ebpf) with the same network, addresses and MACs, the
     rule set given to the agent with ``nat_import``.

Both look like this (every name and address is the same in A and B, except the namespaces'):

      out      198.18.0.2/24 up0        route 10.96.0.0/16 via 198.18.0.1 (service VIPs)
        | veth
      host     198.18.0.1/24 uplink0    default via 198.18.0.2; bridges dockline0 (10.88.0.1/16)
        |                               and dl-<12 hex> (10.77.0.1/24, hairpin on its ports)
      c1 10.77.0.10    c2 10.77.0.11    MAC 02:42:<ip bytes>, default via 10.77.0.1

Receivers run in every namespace of a world and record what they see of each message:
(receiver, source address, source port, destination address, destination port). Clients record
the outcome and the address they believe they talk to (getpeername; UDP/ICMP: where replies
come from). ``compare`` lines the two worlds up on those fields. The client's own address
(getsockname) is recorded and printed but not compared: for OUTPUT DNAT dockline rewrites the
connect() destination, so the kernel picks the source for the translated destination.

Everything stays inside namespaces made here (A) or by SimHost (B); ``WorldA.cleanup`` and
``WorldB.cleanup`` remove them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import selectors
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

from dockline.control.sim.simhost import HOST_IP, OUTSIDE_IP, SimHost
from dockline.control.model import mac_for_ip
from dockline.control.netlink.netns import netns_path, run_in_netns

SUBNET = "10.77.0.0/24"
GATEWAY = "10.77.0.1"
C1 = "10.77.0.10"
C2 = "10.77.0.11"
VIP = "10.96.0.10"
VIP_NET = "10.96.0.0/16"
DEFAULT_NET = ("dockline0", "10.88.0.1", "10.88.0.0/16")     # the agent's built-in network
UPLINK = "uplink0"

#: Ports published through the control plane in world B (endpoint_create ports=...), mirrored in
#: world A as DNAT rules of chain DOCKLINE: (proto, host port, endpoint, container port).
PUBLISHED = (("tcp", 9000, "c1", 80), ("udp", 9053, "c1", 53))

#: Receivers per role: TCP ports, UDP ports. The host also listens on every host port a flow
#: aims at (so that an untranslated flow is seen, not refused) -- see Receivers.
CONTAINER_TCP = (80, 81)
CONTAINER_UDP = (53, 9120)
HOST_FIXED = (7070,)
OUTSIDE_TCP = (5555,)
OUTSIDE_UDP = (5555,)

ADDRESSES = {"host_ip": HOST_IP, "outside": OUTSIDE_IP, "gateway": GATEWAY, "lo": "127.0.0.1",
             "c1": C1, "c2": C2, "vip": VIP}


def placeholders(bridge: str) -> dict:
    return {"bridge": bridge, "uplink": UPLINK, "subnet": SUBNET, "c1": C1, "c2": C2,
            "host_ip": HOST_IP, "gateway": GATEWAY, "outside": OUTSIDE_IP, "vip": VIP}


def render(template: str, bridge: str) -> str:
    return template.format_map(placeholders(bridge))


def _run(cmd: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def nsexec(ns: str, *cmd: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ip", "netns", "exec", ns, *cmd], stdin=stdin, check=check)


# ------------------------------------------------------------------------------------ rules

def control_plane_nat(bridge: str) -> tuple[list[str], list[str]]:
    """World A's version of dockline's own nat rules as ``-A`` lines: ``(listed, implicit)``.
    ``listed``: chains DOCKLINE and DOCKLINE-POSTROUTING plus the jumps, in the order dockline
    lists them with ``iptables -S``. ``implicit``: what dockline's datapath does without listing
    it, written the way Docker (and dockline's kernel backend) write it: the per-port hairpin
    MASQUERADE (a container reaching its own published port gets its gateway as source)."""
    dn_br, _, dn_sub = DEFAULT_NET
    ips = {"c1": C1, "c2": C2}
    listed = ["-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKLINE",
              "-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKLINE",
              "-A POSTROUTING -j DOCKLINE-POSTROUTING"]
    listed += [f"-A DOCKLINE -p {proto} -m {proto} --dport {hp} -j DNAT --to-destination {ips[ep]}:{cp}"
               for proto, hp, ep, cp in PUBLISHED]
    listed += [f"-A DOCKLINE-POSTROUTING -s {dn_sub} ! -o {dn_br} -j MASQUERADE",
               f"-A DOCKLINE-POSTROUTING -o {dn_br} -m addrtype --src-type LOCAL -j MASQUERADE",
               f"-A DOCKLINE-POSTROUTING -s {SUBNET} ! -o {bridge} -j MASQUERADE",
               f"-A DOCKLINE-POSTROUTING -o {bridge} -m addrtype --src-type LOCAL -j MASQUERADE"]
    implicit = [f"-A DOCKLINE-POSTROUTING -s {ips[ep]}/32 -d {ips[ep]}/32 -p {proto} -m {proto} "
                f"--dport {cp} -j MASQUERADE" for proto, hp, ep, cp in PUBLISHED]
    return listed, implicit


def world_a_restore(user_text: str, bridge: str) -> str:
    """The complete iptables-restore input for world A: filter all ACCEPT, nat = dockline's own
    chains (evaluated first, as in dockline) + the user's rule set."""
    lines = [ln.strip() for ln in user_text.splitlines()]
    start, end = lines.index("*nat"), lines.index("COMMIT")
    body = [ln for ln in lines[start + 1:end] if ln and not ln.startswith("#")]
    decl = [ln for ln in body if ln.startswith(":") and ln.split()[0][1:] not in
            ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")]
    rules = [ln for ln in body if not ln.startswith(":")]
    listed, implicit = control_plane_nat(bridge)
    cp_rules = listed + implicit
    out = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", "COMMIT",
           "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]", ":DOCKLINE - [0:0]", ":DOCKLINE-POSTROUTING - [0:0]"]
    out += decl + cp_rules + rules + ["COMMIT", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------ worlds

class World:
    """What the flows need of a world: a namespace per role and a place to load rules."""

    name: str
    ns: dict[str, str]          # role -> netns name
    bridge: str

    def load(self, user_text: str) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError


class WorldB(World):
    """The dockline world: a SimHost with network n1 and endpoints c1, c2."""

    name = "dockline"

    def __init__(self, tmpdir):
        self.host = SimHost(tmpdir, datapath="ebpf")
        try:
            self.host.start_agent()
            net = self.host.call("network_create", name="n1", subnet=SUBNET)
            assert net["gateway"] == GATEWAY, net
            self.bridge = net["bridge"]
            ports = {ep: [f"{hp}:{cp}/{proto}" for proto, hp, e, cp in PUBLISHED if e == ep] for ep in ("c1", "c2")}
            self.veths = {}
            for ep, ip in (("c1", C1), ("c2", C2)):
                info = self.host.call("endpoint_create", name=ep, network="n1", ip=ip, ports=ports[ep])
                att = info["networks"]["n1"]
                assert att["ip"] == ip and att["mac"] == mac_for_ip(ip), att
                self.veths[ep] = att["host_ifname"]
            self.ns = {"host": self.host.host_ns, "out": self.host.out_ns,
                       "c1": self.host.ep_ns("c1"), "c2": self.host.ep_ns("c2")}
            _common_routes(self.ns)
        except BaseException:
            self.host.cleanup()
            raise

    def load(self, user_text: str) -> None:
        self.host.call("nat_import", text=user_text)

    def listing(self) -> list[str]:
        out = self.host.call("nat_iptables", argv=["-t", "nat", "-S"])["output"]
        return [ln for ln in out.splitlines() if ln.startswith("-A ")]

    def cleanup(self) -> None:
        self.host.cleanup()


class WorldA(World):
    """The iptables world, built by hand in namespaces ``<tag>-{host,out,c1,c2}``."""

    name = "iptables"

    def __init__(self, bridge: str, veths: dict[str, str]):
        self.tag = "dlx" + secrets.token_hex(3)
        self.bridge = bridge
        self.ns = {role: f"{self.tag}-{role}" for role in ("host", "out", "c1", "c2")}
        try:
            self._build(veths)
        except BaseException:
            self.cleanup()
            raise

    def _build(self, veths: dict[str, str]) -> None:
        h, o = self.ns["host"], self.ns["out"]
        for ns in self.ns.values():
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        plen = ipaddress.IPv4Network(SUBNET).prefixlen
        # uplink: made inside the host netns, peer moved straight into out (never in the root netns)
        _run(["ip", "-n", h, "link", "add", UPLINK, "type", "veth", "peer", "name", "up0", "netns", o])
        _run(["ip", "-n", h, "addr", "add", f"{HOST_IP}/24", "dev", UPLINK])
        _run(["ip", "-n", o, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "up0"])
        _run(["ip", "-n", h, "link", "set", UPLINK, "up"])
        _run(["ip", "-n", o, "link", "set", "up0", "up"])
        # the agent's built-in network: a bridge with no ports
        dn_br, dn_gw, dn_sub = DEFAULT_NET
        _run(["ip", "-n", h, "link", "add", dn_br, "type", "bridge"])
        _run(["ip", "-n", h, "addr", "add", f"{dn_gw}/{ipaddress.IPv4Network(dn_sub).prefixlen}", "dev", dn_br])
        _run(["ip", "-n", h, "link", "set", dn_br, "up"])
        # network n1: the same bridge name as dockline's
        _run(["ip", "-n", h, "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "-n", h, "addr", "add", f"{GATEWAY}/{plen}", "dev", self.bridge])
        _run(["ip", "-n", h, "link", "set", self.bridge, "up"])
        for ep, ip in (("c1", C1), ("c2", C2)):
            ns, veth = self.ns[ep], veths[ep]
            _run(["ip", "-n", h, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "-n", ns, "link", "set", "eth0", "address", mac_for_ip(ip)])
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/{plen}", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "route", "add", "default", "via", GATEWAY])
            _run(["ip", "-n", h, "link", "set", veth, "master", self.bridge])
            _run(["ip", "-n", h, "link", "set", veth, "up"])
            nsexec(h, "bridge", "link", "set", "dev", veth, "hairpin", "on")
        for key, val in (("net.ipv4.ip_forward", "1"), (f"net.ipv4.conf.{self.bridge}.route_localnet", "1"),
                         (f"net.ipv4.conf.{dn_br}.route_localnet", "1"),
                         ("net.bridge.bridge-nf-call-iptables", "1")):
            nsexec(h, "sysctl", "-q", "-w", f"{key}={val}")
        _common_routes(self.ns)

    def load(self, user_text: str) -> None:
        nsexec(self.ns["host"], "iptables-restore", "-w", stdin=world_a_restore(user_text, self.bridge))
        # a new rule set applies to new flows only, in both worlds; flows never reuse a tuple

    def saved(self) -> str:
        return nsexec(self.ns["host"], "iptables-save", "-t", "nat").stdout

    def cleanup(self) -> None:
        for ns in self.ns.values():
            if os.path.exists(netns_path(ns)):
                _run(["ip", "netns", "del", ns], check=False)


def _common_routes(ns: dict[str, str]) -> None:
    """Routes both worlds get: service VIPs are reached through the host; the host has a default
    route (as any real host), so connecting to a VIP gets as far as the nat OUTPUT chain."""
    _run(["ip", "-n", ns["out"], "route", "replace", VIP_NET, "via", HOST_IP])
    _run(["ip", "-n", ns["host"], "route", "replace", "default", "via", OUTSIDE_IP])


# ------------------------------------------------------------------------------------ flows

@dataclass(frozen=True)
class Flow:
    """One client conversation. ``kind``: tcp, udp (connected socket), udp-sendto (unconnected)
    or icmp (echo). ``dst`` is a key of ADDRESSES. ``msgs`` messages go over the same socket
    (the first one opens the flow, the others are established traffic)."""

    fid: int
    src: str
    kind: str
    dst: str
    dport: int = 0
    sport: int = 0              # TCP/UDP source port, ICMP echo id
    msgs: int = 3
    note: str = ""

    def label(self) -> str:
        port = f":{self.dport}" if self.kind != "icmp" else ""
        sp = f" sport {self.sport}" if self.kind != "icmp" else f" id {self.sport}"
        return f"#{self.fid} {self.kind:10s} {self.src:>4s} -> {self.dst}{port}{sp}"


@dataclass
class Result:
    outcome: str = ""                    # ok | refused | timeout | partial(n) | <errno name>
    peer: str = ""                       # what the client believes it talks to (getpeername)
    reply_from: tuple = ()               # UDP/ICMP: source of each reply, as the client sees it
    seen: tuple = ()                     # receivers' records, in arrival order
    local: str = ""                      # the client's own address and port (getsockname)

    def fields(self) -> dict:
        return {"outcome": self.outcome, "peer": self.peer, "reply_from": self.reply_from, "seen": self.seen,
                "local": self.local}


def _sock(ns: str, family_type: int, proto: int = 0) -> socket.socket:
    return run_in_netns(netns_path(ns), socket.socket, socket.AF_INET, family_type, proto)


def _errname(e: OSError) -> str:
    if isinstance(e, socket.timeout):
        return "timeout"
    if e.errno == errno.ECONNREFUSED:
        return "refused"
    return errno.errorcode.get(e.errno, str(e))


def _addr(a) -> str:
    return f"{a[0]}:{a[1]}"


def run_flow(world: World, f: Flow, timeout: float) -> Result:
    ns = world.ns[f.src]
    dst = ADDRESSES[f.dst]
    if f.kind == "tcp":
        return _tcp(ns, f, dst, timeout)
    if f.kind in ("udp", "udp-sendto"):
        return _udp(ns, f, dst, timeout)
    if f.kind == "icmp":
        return _icmp(ns, f, dst, timeout)
    raise ValueError(f.kind)


def _tcp(ns, f: Flow, dst: str, timeout: float) -> Result:
    r = Result()
    s = _sock(ns, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", f.sport))
        s.settimeout(timeout)
        try:
            s.connect((dst, f.dport))
        except OSError as e:
            r.outcome = _errname(e)
            return r
        r.peer, r.local = _addr(s.getpeername()), _addr(s.getsockname())
        buf = b""
        for n in range(f.msgs):
            try:
                s.sendall(f"F{f.fid}#{n}\n".encode())
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionResetError(errno.ECONNRESET, "closed")
                    buf += chunk
            except OSError as e:
                r.outcome = f"partial({n}:{_errname(e)})"
                return r
            line, _, buf = buf.partition(b"\n")
            if line != f"R{f.fid}#{n}".encode():
                r.outcome = f"bad reply {line!r}"
                return r
        r.outcome = "ok"
        return r
    finally:
        s.close()


def _udp(ns, f: Flow, dst: str, timeout: float) -> Result:
    r = Result()
    s = _sock(ns, socket.SOCK_DGRAM)
    froms = []
    try:
        s.bind(("0.0.0.0", f.sport))
        s.settimeout(timeout)
        if f.kind == "udp":
            try:
                s.connect((dst, f.dport))
            except OSError as e:
                r.outcome = _errname(e)
                return r
            r.peer = _addr(s.getpeername())
        for n in range(f.msgs):
            msg = f"F{f.fid}#{n}\n".encode()
            try:
                if f.kind == "udp":
                    s.send(msg)
                else:
                    s.sendto(msg, (dst, f.dport))
                if not r.local:
                    r.local = _addr(s.getsockname())
                deadline = time.monotonic() + timeout
                while True:
                    s.settimeout(max(0.01, deadline - time.monotonic()))
                    data, frm = s.recvfrom(4096)
                    if data.strip() == f"R{f.fid}#{n}".encode():
                        froms.append(_addr(frm))
                        break
            except OSError as e:
                r.outcome = _errname(e) if n == 0 else f"partial({n}:{_errname(e)})"
                r.reply_from = tuple(froms)
                return r
        r.outcome = "ok"
        r.reply_from = tuple(froms)
        return r
    finally:
        s.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _icmp(ns, f: Flow, dst: str, timeout: float) -> Result:
    r = Result()
    s = _sock(ns, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    froms = []
    try:
        for n in range(f.msgs):
            payload = f"F{f.fid}#{n}\n".encode()
            hdr = struct.pack("!BBHHH", 8, 0, 0, f.sport, n + 1)
            pkt = struct.pack("!BBHHH", 8, 0, _checksum(hdr + payload), f.sport, n + 1) + payload
            try:
                s.sendto(pkt, (dst, 0))
                deadline = time.monotonic() + timeout
                while True:
                    s.settimeout(max(0.01, deadline - time.monotonic()))
                    data, frm = s.recvfrom(4096)
                    ihl = (data[0] & 0x0F) * 4
                    typ, _, _, ident, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                    if typ == 0 and ident == f.sport and seq == n + 1 and data[ihl + 8:] == payload:
                        froms.append(frm[0])
                        break
            except OSError as e:
                r.outcome = _errname(e) if n == 0 else f"partial({n}:{_errname(e)})"
                r.reply_from = tuple(froms)
                return r
        r.outcome = "ok"
        r.reply_from = tuple(froms)
        return r
    finally:
        s.close()


# ------------------------------------------------------------------------------------ receivers

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


class Receivers:
    """Servers in every namespace of a world, one selector thread. TCP: each accepted connection's
    getpeername/getsockname is recorded for each message it carries; UDP: recvmsg's source and
    the packet's destination (IP_PKTINFO), answered from that same address; ICMP (outside
    only): a raw socket records echo requests (the kernel answers them)."""

    def __init__(self, world: World, host_ports: dict[str, set[int]]):
        self.world = world
        self.records: dict[int, list[tuple]] = {}
        self.lock = threading.Lock()
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self._stop = False
        # containers listen on their own address: dockline's DNS holds 127.0.0.11:53 in them
        plan = {"c1": (C1, CONTAINER_TCP, CONTAINER_UDP), "c2": (C2, CONTAINER_TCP, CONTAINER_UDP),
                "host": ("0.0.0.0", sorted(set(HOST_FIXED) | host_ports["tcp"]),
                         sorted(set(HOST_FIXED) | host_ports["udp"])),
                "out": ("0.0.0.0", OUTSIDE_TCP, OUTSIDE_UDP)}
        try:
            for role, (addr, tcp, udp) in plan.items():
                ns = world.ns[role]
                for port in tcp:
                    s = _sock(ns, socket.SOCK_STREAM)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((addr, port))
                    s.listen(64)
                    self._add(s, ("listen", role))
                for port in udp:
                    s = _sock(ns, socket.SOCK_DGRAM)
                    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                    s.bind((addr, port))
                    self._add(s, ("udp", role))
            s = _sock(world.ns["out"], socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self._add(s, ("icmp", "out"))
        except BaseException:
            self.close()
            raise
        self.thread = threading.Thread(target=self._loop, name=f"receivers-{world.name}", daemon=True)
        self.thread.start()

    def _add(self, s: socket.socket, data) -> None:
        s.setblocking(False)
        self.socks.append(s)
        self.sel.register(s, selectors.EVENT_READ, data)

    def _record(self, fid: int, rec: tuple) -> None:
        with self.lock:
            self.records.setdefault(fid, []).append(rec)

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select(timeout=0.1):
                try:
                    self._handle(key.fileobj, key.data)
                except OSError:
                    pass

    def _handle(self, s: socket.socket, data) -> None:
        kind, role = data[0], data[1]
        if kind == "listen":
            conn, _ = s.accept()
            self._add(conn, ("conn", role, [b""]))
        elif kind == "conn":
            chunk = s.recv(4096)
            if not chunk:
                self.sel.unregister(s)
                self.socks.remove(s)
                s.close()
                return
            buf = data[2]
            buf[0] += chunk
            while b"\n" in buf[0]:
                line, _, buf[0] = buf[0].partition(b"\n")
                fid, n = _parse_msg(line)
                if fid is None:
                    continue
                peer, me = s.getpeername(), s.getsockname()
                self._record(fid, (n, role, peer[0], peer[1], me[0], me[1]))
                s.setblocking(True)
                s.sendall(f"R{fid}#{n}\n".encode())
                s.setblocking(False)
        elif kind == "udp":
            msg, anc, _, peer = s.recvmsg(4096, socket.CMSG_SPACE(12))
            dst = None
            for level, typ, cdata in anc:
                if level == socket.IPPROTO_IP and typ == IP_PKTINFO:
                    ifindex, spec, addr = struct.unpack("i4s4s", cdata[:12])
                    dst = socket.inet_ntoa(addr)
            fid, n = _parse_msg(msg.strip())
            if fid is None:
                return
            self._record(fid, (n, role, peer[0], peer[1], dst, s.getsockname()[1]))
            pktinfo = struct.pack("i4s4s", 0, socket.inet_aton(dst), b"\0" * 4)
            s.sendmsg([f"R{fid}#{n}\n".encode()], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, peer)
        elif kind == "icmp":
            pkt, _ = s.recvfrom(4096)
            ihl = (pkt[0] & 0x0F) * 4
            typ, _, _, ident, seq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
            if typ != 8:
                return
            fid, n = _parse_msg(pkt[ihl + 8:].strip())
            if fid is None:
                return
            src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
            self._record(fid, (n, role, src, ident, dst, 0))

    def take(self, fid: int) -> tuple:
        with self.lock:
            return tuple(self.records.pop(fid, ()))

    def close(self) -> None:
        self._stop = True
        t = getattr(self, "thread", None)
        if t:
            t.join(timeout=2)
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.sel.close()


def _parse_msg(line: bytes):
    try:
        text = line.decode()
        if not text.startswith("F") or "#" not in text:
            return None, None
        fid, n = text[1:].split("#", 1)
        return int(fid), int(n)
    except (UnicodeDecodeError, ValueError):
        return None, None


# ------------------------------------------------------------------------------------ running

def run_flows(world: World, receivers: Receivers, flows: list[Flow], timeout: float,
              settle: float = 0.15) -> dict[int, Result]:
    results = {}
    for f in flows:
        results[f.fid] = run_flow(world, f, timeout)
    time.sleep(settle)          # late arrivals of failed flows are recorded too
    for f in flows:
        results[f.fid].seen = receivers.take(f.fid)
    return results


def run_both(worlds: list[tuple[World, Receivers]], flows: list[Flow], timeout: float) -> list[dict]:
    """The same flows, in the same order, through each world at once (one thread per world)."""
    out: list = [None] * len(worlds)
    errors = []

    def work(i, world, rec):
        try:
            out[i] = run_flows(world, rec, flows, timeout)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, w, r)) for i, (w, r) in enumerate(worlds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


@dataclass
class Mismatch:
    flow: Flow
    field: str
    a: object
    b: object


def compare(flows: list[Flow], ra: dict[int, Result], rb: dict[int, Result]) -> list[Mismatch]:
    out = []
    for f in flows:
        fa, fb = ra[f.fid].fields(), rb[f.fid].fields()
        for k in fa:
            if fa[k] != fb[k]:
                out.append(Mismatch(f, k, fa[k], fb[k]))
    return out


def _fmt_seen(seen) -> str:
    if not isinstance(seen, tuple) or not seen or not isinstance(seen[0], tuple):
        return str(seen) if seen != () else "-"
    rows = []
    for n, role, s, sp, d, dp in seen:
        rows.append(f"[{n}] {role} saw {s}:{sp} -> {d}:{dp}")
    # identical records for every message are printed once
    uniq = sorted(set(r.split("] ", 1)[1] for r in rows))
    if len(uniq) == 1:
        return f"{len(rows)}x {uniq[0]}"
    return "; ".join(rows)


def table(title: str, flows: list[Flow], ra: dict[int, Result], rb: dict[int, Result],
          mismatches: list[Mismatch] | None = None, names=("iptables", "dockline")) -> str:
    """All flows, one block each; mismatching ones marked ``!!``."""
    bad = {(m.flow.fid, m.field) for m in (mismatches or [])}
    lines = [title]
    for f in flows:
        a, b = ra[f.fid], rb[f.fid]
        mark = "!!" if any(fid == f.fid for fid, _ in bad) else "  "
        lines.append(f"{mark} {f.label()}  {f.note}")
        for name, r in zip(names, (a, b)):
            lines.append(f"     {name:9s} outcome={r.outcome:12s} peer={r.peer or '-':22s} "
                         f"replies_from={','.join(sorted(set(r.reply_from))) or '-':22s} local={r.local or '-'}")
            lines.append(f"     {'':9s} seen: {_fmt_seen(r.seen)}")
        for fld in ("outcome", "peer", "reply_from", "seen", "local"):
            if (f.fid, fld) in bad:
                lines.append(f"     !! {fld} differs")
    return "\n".join(lines)

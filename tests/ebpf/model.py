"""Pure-Python reference models of the programs' verdicts, written from the C logic
(ebpf/tc_endpoint.c, ebpf/xdp_uplink.c, ebpf/lib/parsing.h, and of ebpf/lib/nat.h the part that
applies without NAT rules: conntrack hits whose translated destination is an endpoint, and the
new-flow stages declining), plus what BPF_PROG_TEST_RUN itself refuses (kernel 6.18, measured:
tests/ebpf/test_tc_endpoint.py::test_harness_*).

The map contents are a ``State`` of plain Python values, which can also be written into the real
maps (``install``) or recorded from the setup functions of tests/ebpf/packets.py (``Recorder``).
The model assumes no NAT rules (nat_config as NatMaps.clear() leaves it) and empty frag_ports;
translations it cannot predict without the test netns' routing table (a conntrack hit towards a
non-endpoint, an ICMP error quoting a tracked flow) raise ``Unmodelled``: tests/ebpf/test_nat_*.py
cover those against scapy.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from dockline.control.datapath.bpf_structs import DROP_BASE, Verdict

from dockline.control.datapath import bpf_structs as S

from .harness import (TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS,
                      Endpoint, Tuple)

ETH_HLEN = 14


def ip_b(ip: str) -> bytes:
    return socket.inet_aton(ip)


def mac_b(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class Unmodelled(Exception):
    """A case outside what the model predicts (see the module docstring)."""


@dataclass
class State:
    """What the maps hold. by_ifindex: ifindex -> (mac, ip, net_id); by_ip: ip -> (ifindex,
    net_id, mac); subnets: networks; net_info: net_id -> (bridge_ifindex, gateway ip, gw_mac);
    ct: orig Tuple -> (translated Tuple, kind, state), both halves derived from it."""

    by_ifindex: dict = field(default_factory=dict)
    by_ip: dict = field(default_factory=dict)
    subnets: list = field(default_factory=list)
    net_info: dict = field(default_factory=dict)
    ct_pairs: dict = field(default_factory=dict)
    frag_ports: dict = field(default_factory=dict)   # (saddr, daddr, id, proto) -> (sport, dport);
                                                     # filled by tc_nat() as the program fills the map

    def ct(self) -> dict:
        """Every ct entry: key Tuple -> (to Tuple, dir, kind, state)."""
        out = {}
        for orig, (to, kind, state) in self.ct_pairs.items():
            out[orig] = (to, S.CT_DIR_ORIG, kind, state)
            out[to.reverse()] = (orig.reverse(), S.CT_DIR_REPLY, kind, state)
        return out

    def install(self, maps):
        for ifindex, (mac, ip, net) in self.by_ifindex.items():
            maps.add_endpoint(Endpoint("", ifindex, socket.inet_ntoa(ip), mac.hex(":"), net), by_ip=False)
        for ip, (ifindex, net, mac) in self.by_ip.items():
            maps.add_endpoint(Endpoint("", ifindex, socket.inet_ntoa(ip), mac.hex(":"), net), by_ifindex=False)
        for n in self.subnets:
            maps.add_subnet(str(n))
        for net, (bridge, gw, gw_mac) in self.net_info.items():
            maps.add_net_info(net, bridge, socket.inet_ntoa(gw), gw_mac.hex(":"))
        for orig, (to, kind, state) in self.ct_pairs.items():
            maps.add_ct_pair(orig, to, kind=kind, state=state)


class _Deleter:
    def __init__(self, d):
        self.d = d

    def delete(self, key):
        return self.d.pop(key, None) is not None


class Recorder:
    """Stands in for harness.Maps in a packets.py setup function and records a State."""

    def __init__(self):
        self.state = State()
        self.by_ifindex = _Deleter(self.state.by_ifindex)

    def add_endpoint(self, ep: Endpoint, *, by_ifindex: bool = True, by_ip: bool = True):
        if by_ifindex:
            self.state.by_ifindex[ep.ifindex] = (mac_b(ep.mac), ip_b(ep.ip), ep.net_id)
        if by_ip:
            self.state.by_ip[ip_b(ep.ip)] = (ep.ifindex, ep.net_id, mac_b(ep.mac))

    def add_subnet(self, cidr: str):
        self.state.subnets.append(ipaddress.IPv4Network(cidr))

    def add_net_info(self, net_id: int, bridge_ifindex: int, gateway: str, gw_mac: str):
        self.state.net_info[net_id] = (bridge_ifindex, ip_b(gateway), mac_b(gw_mac))

    def add_ct_pair(self, orig: Tuple, to: Tuple, *, kind: int, state: int = S.CT_ST_NEW, **_):
        self.state.ct_pairs[orig] = (to, kind, state)


def state_of(setup) -> State:
    r = Recorder()
    setup(r)
    return r.state


@dataclass(frozen=True)
class Outcome:
    errno: int | None       # the kernel refuses the buffer
    verdict: int | None
    retval: int | None
    nat: "NatOutcome | None" = field(default=None, compare=False)


def refused(e: int) -> Outcome:
    return Outcome(e, None, None)


def tc_test_run_refusal(pkt: bytes) -> int | None:
    """SCHED_CLS test runs refuse < ETH_HLEN, and IPv4/IPv6 frames whose network header does not
    fit (the kernel reads it to fill the test socket)."""
    if len(pkt) < ETH_HLEN:
        return errno.EINVAL
    proto = pkt[12:14]
    if proto == b"\x08\x00" and len(pkt) < ETH_HLEN + 20:
        return errno.EINVAL
    if proto == b"\x86\xdd" and len(pkt) < ETH_HLEN + 40:
        return errno.EINVAL
    return None


def parse_ipv4(pkt: bytes, off: int):
    """parsing.h parse_ipv4: the header length, or None."""
    if len(pkt) < off + 20:
        return None
    ver, ihl = pkt[off] >> 4, pkt[off] & 0xF
    if ver != 4 or ihl < 5:
        return None
    hlen = ihl * 4
    if off + hlen > len(pkt):
        return None
    if struct.unpack_from("!H", pkt, off + 2)[0] < hlen:
        return None
    return hlen


def tc_verdict_code(pkt: bytes, st: State, ifindex: int = TEST_RUN_IFINDEX) -> int:
    """tc_from_endpoint()'s verdict."""
    return tc_evaluate(pkt, st, ifindex)[0]


def tc_evaluate(pkt: bytes, st: State, ifindex: int = TEST_RUN_IFINDEX) -> tuple[int, "NatOutcome"]:
    """(verdict, what NAT did) of tc_from_endpoint(): endpoint_checks, nat_ingress when the
    sender's network has a net_info entry, then endpoint_forwarding."""
    code = _endpoint_checks(pkt, st, ifindex)
    if code != Verdict.PASS:
        return code, NatOutcome()
    my_net = st.by_ifindex[ifindex][2]
    nat = tc_nat(pkt, st, my_net)
    if nat.code is not None:
        return nat.code, nat
    code = endpoint_forwarding(pkt, st, my_net)
    if nat.stages and code < DROP_BASE:
        # nothing translated a new flow that passes: it is tracked untranslated (both halves)
        p = nat_parse(pkt)
        state = S.CT_ST_ESTABLISHED if p.key.proto == 6 and not p.tcp_flags & 0x02 else S.CT_ST_NEW
        st.ct_pairs[p.key] = (p.key, 0, state)
    return code, nat


def _endpoint_checks(pkt: bytes, st: State, ifindex: int) -> int:
    """endpoint_checks() of tc_endpoint.c (step 1), and the unknown-endpoint check."""
    V = Verdict
    me = st.by_ifindex.get(ifindex)
    if me is None:
        return V.UNKNOWN_ENDPOINT
    my_mac, my_ip, my_net = me
    if len(pkt) < ETH_HLEN:
        return V.MALFORMED
    if pkt[6:12] != my_mac:
        return V.SPOOFED_MAC
    proto = pkt[12:14]
    if proto == b"\x08\x06":
        if len(pkt) < ETH_HLEN + 8:
            return V.MALFORMED
        hrd, pro, hln, pln = struct.unpack_from("!HHBB", pkt, ETH_HLEN)
        if hrd != 1 or pro != 0x0800 or hln != 6 or pln != 4:
            return V.MALFORMED
        if len(pkt) < ETH_HLEN + 8 + 20:
            return V.MALFORMED
        sha, sip = pkt[22:28], pkt[28:32]
        if sha != my_mac or sip != my_ip:
            return V.SPOOFED_ARP
        return V.PASS_ARP
    if proto in (b"\x81\x00", b"\x88\xa8"):
        return V.VLAN
    if proto != b"\x08\x00":
        return V.PASS_OTHER
    hlen = parse_ipv4(pkt, ETH_HLEN)
    if hlen is None:
        return V.MALFORMED
    saddr = pkt[ETH_HLEN + 12:ETH_HLEN + 16]
    if saddr != my_ip:
        return V.SPOOFED_IP
    return V.PASS


def endpoint_forwarding(pkt: bytes, st: State, my_net: int) -> int:
    """endpoint_forwarding() of lib/endpoint.h (steps 3-5), on a packet endpoint_checks passed."""
    V = Verdict
    daddr = pkt[ETH_HLEN + 16:ETH_HLEN + 20]
    dst = st.by_ip.get(daddr)
    if dst is None:
        return V.PASS
    dst_ifindex, dst_net, dst_mac = dst
    # a fragment NAT did not claim takes the host path (no trustworthy ports)
    frag = struct.unpack_from("!H", pkt, ETH_HLEN + 6)[0] & 0x3FFF
    if frag:
        return V.PASS
    if dst_net != my_net:
        return V.ISOLATION
    if pkt[0:6] != dst_mac:
        return V.PASS
    return V.REDIRECT_PEER


# ---------------------------------------------------------------- NAT without rules (lib/nat.h)
@dataclass
class NatPkt:
    """lib/nat_packet.h nat_parse(): result NP_* as a string, and the tuple."""

    result: str                      # "ok", "icmp_error", "not_ipv4", "untracked", "malformed"
    key: Tuple | None = None
    has_l4: bool = True
    first_frag: bool = False
    ttl: int = 0
    tcp_flags: int = 0
    inner: Tuple | None = None
    frag_id: int = 0


def _l4_tuple(pkt: bytes, off: int, proto: int):
    """l4_tuple(): (r, sport, dport, tcp_flags) with r -1 (truncated), 0 (untracked), 1."""
    if proto in (6, 17):
        if off + 4 > len(pkt):
            return -1, 0, 0, 0
        sport, dport = struct.unpack_from("!HH", pkt, off)
        flags = 0
        if proto == 6:
            if off + 20 > len(pkt):
                return -1, 0, 0, 0
            flags = pkt[off + 13]
        return 1, sport, dport, flags
    if proto == 1:
        if off + 8 > len(pkt):
            return -1, 0, 0, 0
        typ, ident = pkt[off], struct.unpack_from("!H", pkt, off + 4)[0]
        if typ == 8:
            return 1, ident, 0, typ
        if typ == 0:
            return 1, 0, ident, typ
        return 0, 0, 0, typ
    return 0, 0, 0, 0


def nat_parse(pkt: bytes) -> NatPkt:
    if len(pkt) < ETH_HLEN:
        return NatPkt("malformed")
    if pkt[12:14] != b"\x08\x00":
        return NatPkt("not_ipv4")
    ip = ETH_HLEN
    if len(pkt) < ip + 20 or pkt[ip] >> 4 != 4 or pkt[ip] & 0xF < 5:
        return NatPkt("malformed")
    hlen = (pkt[ip] & 0xF) * 4
    if ip + hlen > len(pkt) or struct.unpack_from("!H", pkt, ip + 2)[0] < hlen:
        return NatPkt("malformed")
    proto, ttl = pkt[ip + 9], pkt[ip + 8]
    saddr, daddr = socket.inet_ntoa(pkt[ip + 12:ip + 16]), socket.inet_ntoa(pkt[ip + 16:ip + 20])
    frag = struct.unpack_from("!H", pkt, ip + 6)[0]
    frag_id = struct.unpack_from("!H", pkt, ip + 4)[0]
    if frag & 0x1FFF:
        if proto not in (6, 17, 1):
            return NatPkt("untracked")
        return NatPkt("ok", Tuple(saddr, daddr, 0, 0, proto), has_l4=False, ttl=ttl, frag_id=frag_id)
    first = bool(frag & 0x2000)
    r, sport, dport, flags = _l4_tuple(pkt, ip + hlen, proto)
    if r < 0:
        return NatPkt("malformed")
    if r > 0:
        return NatPkt("ok", Tuple(saddr, daddr, sport, dport, proto), first_frag=first, ttl=ttl,
                      tcp_flags=flags if proto == 6 else 0, frag_id=frag_id)
    if proto != 1 or flags not in (3, 11, 12) or first:
        return NatPkt("untracked")
    inner = ip + hlen + 8
    if inner + 20 > len(pkt) or pkt[inner] >> 4 != 4 or pkt[inner] & 0xF < 5:
        return NatPkt("untracked")
    ihlen = (pkt[inner] & 0xF) * 4
    if inner + ihlen > len(pkt) or struct.unpack_from("!H", pkt, inner + 6)[0] & 0x1FFF:
        return NatPkt("untracked")
    iproto = pkt[inner + 9]
    if iproto == 6:              # a quote may hold only 8 bytes of TCP: the ports suffice
        if inner + ihlen + 4 > len(pkt):
            return NatPkt("untracked")
        isport, idport = struct.unpack_from("!HH", pkt, inner + ihlen)
    else:
        r, isport, idport, _ = _l4_tuple(pkt, inner + ihlen, iproto)
        if r <= 0:
            return NatPkt("untracked")
    return NatPkt("icmp_error", Tuple(saddr, daddr, 0, 0, proto), ttl=ttl,
                  inner=Tuple(socket.inet_ntoa(pkt[inner + 12:inner + 16]),
                              socket.inet_ntoa(pkt[inner + 16:inner + 20]), isport, idport, iproto))


@dataclass
class NatOutcome:
    code: int | None = None          # None: NAT declined, the endpoint's own steps decide
    counters: dict = field(default_factory=dict)   # NatCounter name -> increment
    stages: bool = False             # the new-flow stages (tail calls) ran, and declined
    ct_hit: Tuple | None = None      # the ct key that translated the packet


def tc_nat(pkt: bytes, st: State, my_net: int) -> NatOutcome:
    """What nat_ingress() (and the tail-called stages, with no rules) do to a packet that passed
    endpoint_checks: only when the sender's network has a net_info entry."""
    if my_net not in st.net_info:
        return NatOutcome()
    _, _, gw_mac = st.net_info[my_net]
    p = nat_parse(pkt)
    ct = st.ct()
    if p.result == "icmp_error":
        if p.inner.reverse() in ct and ct[p.inner.reverse()][2]:
            raise Unmodelled("ICMP error quoting a tracked flow (tests/ebpf/test_nat_icmp.py)")
        return NatOutcome()
    if p.result != "ok":
        return NatOutcome()
    fk = (p.key.saddr, p.key.daddr, p.frag_id, p.key.proto)
    if p.has_l4 and p.first_frag:
        st.frag_ports[fk] = (p.key.sport, p.key.dport)
    if not p.has_l4:
        if fk not in st.frag_ports:
            return NatOutcome(counters={"FRAG_UNKNOWN": 1})
        key = Tuple(p.key.saddr, p.key.daddr, *st.frag_ports[fk], p.key.proto)
        if key in ct and not ct[key][2]:
            return NatOutcome()      # of a flow tracked untranslated: refreshed, nothing else
        if key in ct:
            raise Unmodelled("a later fragment of a tracked flow (tests/ebpf/test_nat_fragments.py)")
        return NatOutcome()
    e = ct.get(p.key)
    if e is not None and p.key.proto == 6 and p.tcp_flags & 0x12 == 0x02 and e[1] == S.CT_DIR_ORIG \
            and e[3] >= S.CT_ST_FIN:
        raise Unmodelled("SYN on a closed flow: restarted through the rules")
    if e is not None and not e[2]:
        return NatOutcome()          # a flow tracked untranslated: refreshed, nothing else
    if e is not None:
        to = e[0]
        dst = st.by_ip.get(ip_b(to.daddr))
        if dst is None:
            raise Unmodelled("conntrack hit routed by bpf_fib_lookup (tests/ebpf/test_nat_*.py)")
        if p.ttl <= 1:
            return NatOutcome(counters={"TTL_EXCEEDED": 1})
        return NatOutcome(Verdict.NAT_REDIRECT, {"CT_HIT": 1}, ct_hit=p.key)
    if pkt[0:6] != gw_mac:
        return NatOutcome()
    return NatOutcome(stages=True)


def tc_model(pkt: bytes, st: State, ifindex: int = TEST_RUN_IFINDEX) -> Outcome:
    e = tc_test_run_refusal(pkt)
    if e is not None:
        return refused(e)
    code, nat = tc_evaluate(pkt, st, ifindex)
    if code >= DROP_BASE:
        rv = TC_ACT_SHOT
    elif code in (Verdict.REDIRECT_PEER, Verdict.NAT_REDIRECT):
        rv = TC_ACT_REDIRECT
    else:
        rv = TC_ACT_OK
    return Outcome(None, int(code), rv, nat)


def xdp_verdict_code(pkt: bytes, st: State) -> int:
    """uplink_verdict() of xdp_uplink.c."""
    if len(pkt) < ETH_HLEN or pkt[12:14] != b"\x08\x00":
        return Verdict.XDP_PASS
    if parse_ipv4(pkt, ETH_HLEN) is None:
        return Verdict.UPLINK_MALFORMED
    saddr = ipaddress.IPv4Address(pkt[ETH_HLEN + 12:ETH_HLEN + 16])
    if any(saddr in n for n in st.subnets):
        return Verdict.UPLINK_SPOOFED
    return Verdict.XDP_PASS


def xdp_model(pkt: bytes, st: State) -> Outcome:
    if len(pkt) < ETH_HLEN:
        return refused(errno.EINVAL)
    code = xdp_verdict_code(pkt, st)
    return Outcome(None, int(code), XDP_DROP if code >= DROP_BASE else XDP_PASS)

"""Pure-Python reference models of the programs' verdicts, written from the C logic
(ebpf/tc_endpoint.c, ebpf/xdp_uplink.c, ebpf/lib/parsing.h), plus what BPF_PROG_TEST_RUN itself
refuses (kernel 6.18, measured: tests/ebpf/test_tc_endpoint.py::test_harness_*).

The map contents are a ``State`` of plain Python values, which can also be written into the real
maps (``install``) or recorded from the setup functions of tests/ebpf/packets.py (``Recorder``).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from dockline.control.datapath.bpf_structs import DROP_BASE, Verdict

from .harness import (TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS,
                      Endpoint)

ETH_HLEN = 14


def ip_b(ip: str) -> bytes:
    return socket.inet_aton(ip)


def mac_b(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@dataclass
class State:
    """What the maps hold. by_ifindex: ifindex -> (mac, ip, net_id); by_ip: ip -> (ifindex,
    net_id, mac); published: {(ip, port as 2 network-order bytes, proto)}; subnets: networks."""

    by_ifindex: dict = field(default_factory=dict)
    by_ip: dict = field(default_factory=dict)
    published: set = field(default_factory=set)
    subnets: list = field(default_factory=list)

    def install(self, maps):
        for ifindex, (mac, ip, net) in self.by_ifindex.items():
            maps.add_endpoint(Endpoint("", ifindex, socket.inet_ntoa(ip), mac.hex(":"), net), by_ip=False)
        for ip, (ifindex, net, mac) in self.by_ip.items():
            maps.add_endpoint(Endpoint("", ifindex, socket.inet_ntoa(ip), mac.hex(":"), net), by_ifindex=False)
        for ip, port, proto in self.published:
            maps.publish(socket.inet_ntoa(ip), int.from_bytes(port, "big"), proto)
        for n in self.subnets:
            maps.add_subnet(str(n))


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

    def publish(self, ip: str, port: int, proto: int):
        self.state.published.add((ip_b(ip), port.to_bytes(2, "big"), proto))

    def add_subnet(self, cidr: str):
        self.state.subnets.append(ipaddress.IPv4Network(cidr))


def state_of(setup) -> State:
    r = Recorder()
    setup(r)
    return r.state


@dataclass(frozen=True)
class Outcome:
    errno: int | None       # the kernel refuses the buffer
    verdict: int | None
    retval: int | None


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
    """endpoint_verdict() of tc_endpoint.c."""
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
    saddr, daddr = pkt[ETH_HLEN + 12:ETH_HLEN + 16], pkt[ETH_HLEN + 16:ETH_HLEN + 20]
    if saddr != my_ip:
        return V.SPOOFED_IP
    dst = st.by_ip.get(daddr)
    if dst is None:
        return V.PASS
    dst_ifindex, dst_net, dst_mac = dst
    # fragments to an endpoint take the host path (no trustworthy ports); replies from a
    # published service too (its conntrack may have to undo a DNAT), whatever the network
    l4proto = pkt[ETH_HLEN + 9]
    frag = struct.unpack_from("!H", pkt, ETH_HLEN + 6)[0] & 0x3FFF
    if frag:
        return V.PASS
    port = b"\x00\x00"
    l4 = ETH_HLEN + hlen
    need = {6: 20, 17: 8}.get(l4proto)
    if need is not None and len(pkt) >= l4 + need:
        port = pkt[l4:l4 + 2]
    if port != b"\x00\x00" and (saddr, port, l4proto) in st.published:
        return V.PASS
    if dst_net != my_net:
        return V.ISOLATION
    if pkt[0:6] != dst_mac:
        return V.PASS
    return V.REDIRECT_PEER


def tc_model(pkt: bytes, st: State, ifindex: int = TEST_RUN_IFINDEX) -> Outcome:
    e = tc_test_run_refusal(pkt)
    if e is not None:
        return refused(e)
    code = tc_verdict_code(pkt, st, ifindex)
    if code >= DROP_BASE:
        rv = TC_ACT_SHOT
    elif code == Verdict.REDIRECT_PEER:
        rv = TC_ACT_REDIRECT
    else:
        rv = TC_ACT_OK
    return Outcome(None, int(code), rv)


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

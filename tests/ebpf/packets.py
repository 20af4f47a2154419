"""Table-driven packet cases for tc_from_endpoint and xdp_uplink.

Topology (what the control plane would have written into the maps):

    network A (net_id 100): a1 10.1.0.2  <- the sender: its host-side veth is the test-run
                                            device (ifindex 1, the netns loopback, see harness)
                            a2 10.1.0.3     ifindex 1002
                            gateway 10.1.0.1 (not an endpoint: only its MAC is used), bridge
                            ifindex 3100 (net_info only: no such device is needed)
    network B (net_id 200): b1 10.2.0.2     ifindex 2002; gateway 10.2.0.1, bridge 3200
    local subnets (uplink anti-spoofing): 10.1.0.0/24, 10.2.0.0/16
    no NAT rules (nat_config as NatMaps.clear() leaves it), empty conntrack

The old "published ports" special case is gone: a reply from a published port is a conntrack
hit now (the ct-* cases, whose setup writes both halves of the DNATed flow), and without one it is
judged like any packet (cross-network: isolated).

Every case without conntrack entries runs twice (tests/ebpf/test_tc_endpoint.py): with the maps
above, and with net_info entries for both networks (``with_net_info``), when tc_from_endpoint runs
nat_ingress and a routed packet goes through the tail-called stages of ebpf/tc_nat.c, which find
nothing to translate and must give the same verdict. The ct-* cases always have net_info.

Packets are built with scapy only as bytes, always with explicit MACs and IPs (no ARP/route
lookups). Only a conntrack hit rewrites a packet (expected_out, built with scapy: translated
addresses and ports, TTL - 1, MACs of the route, checksums recomputed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from dockline.control.datapath.bpf_structs import Verdict

from dockline.control import protocols
from dockline.control.datapath import bpf_structs as S

from .harness import (TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS,
                      Endpoint, Maps, Tuple)

TCP_P, UDP_P = protocols.TCP, protocols.UDP

NET_A, NET_B = 100, 200
A1 = Endpoint("a1", TEST_RUN_IFINDEX, "10.1.0.2", "02:00:0a:01:00:02", NET_A)
A2 = Endpoint("a2", 1002, "10.1.0.3", "02:00:0a:01:00:03", NET_A)
B1 = Endpoint("b1", 2002, "10.2.0.2", "02:00:0a:02:00:02", NET_B)
ENDPOINTS = (A1, A2, B1)
GW_A_IP, GW_A_MAC = "10.1.0.1", "02:00:0a:01:00:01"
GW_B_IP, GW_B_MAC = "10.2.0.1", "02:00:0a:02:00:01"
BR_A, BR_B = 3100, 3200
OTHER_MAC = "02:de:ad:be:ef:01"
BCAST_MAC = "ff:ff:ff:ff:ff:ff"
OUTSIDE_IP = "8.8.8.8"
HOST_IP = "203.0.113.1"      # the host address a published port is reached at (ct-* cases)
LOCAL_SUBNETS = ("10.1.0.0/24", "10.2.0.0/16")
UPLINK_MAC, ROUTER_MAC = "02:00:00:00:00:aa", "02:00:00:00:00:bb"


def standard(maps: Maps):
    """The whole topology above (no net_info: tc_from_endpoint does no NAT)."""
    for ep in ENDPOINTS:
        maps.add_endpoint(ep)
    for cidr in LOCAL_SUBNETS:
        maps.add_subnet(cidr)


def with_net_info(maps: Maps):
    """net_info for both networks: tc_from_endpoint runs nat_ingress for their endpoints."""
    maps.add_net_info(NET_A, BR_A, GW_A_IP, GW_A_MAC)
    maps.add_net_info(NET_B, BR_B, GW_B_IP, GW_B_MAC)


def dnat_flow(client: str, cport: int, hport: int, server: str, sport: int, proto: int = TCP_P):
    """A setup with the topology, net_info and both conntrack halves of a connection from
    client:cport to HOST_IP:hport that PREROUTING DNATed to server:sport (a published port)."""
    def setup(maps: Maps):
        standard(maps)
        with_net_info(maps)
        maps.add_ct_pair(Tuple(client, HOST_IP, cport, hport, proto),
                         Tuple(client, server, cport, sport, proto), kind=S.CT_K_DNAT)
    return setup


def without_self(maps: Maps):
    """Everything but a1's endpoints_by_ifindex entry: the test-run device is unknown."""
    standard(maps)
    maps.by_ifindex.delete(A1.ifindex)


def nothing(maps: Maps):
    pass


@dataclass(frozen=True)
class PacketCase:
    id: str
    description: str
    build: Callable[[], bytes]
    setup: Callable[[Maps], None]
    expected_retval: int | None          # None when the kernel refuses the run
    expected_verdict_code: Verdict | None
    expected_out: bytes | None = None    # None: identical to the input
    expected_errno: int | None = None    # the kernel refuses the buffer (BPF_PROG_TEST_RUN)
    bug: str | None = None               # the program does not do this yet: strict xfail
    both_net_info: bool = True           # also run with with_net_info(), same expectations

    def __str__(self):
        return self.id


def params(cases):
    """pytest parameters with readable ids; a case naming a program bug is a strict xfail."""
    import pytest
    return [pytest.param(x, id=x.id, marks=[pytest.mark.xfail(strict=True, reason=f"bug: {x.bug}")]
                         if x.bug else []) for x in cases]


def nat_variant(case: PacketCase) -> PacketCase:
    """The case with net_info entries added after its setup (same expectations)."""
    from dataclasses import replace

    def setup(maps, _base=case.setup):
        _base(maps)
        with_net_info(maps)
    return replace(case, id=case.id + "+net_info", setup=setup, both_net_info=False)


def with_variants(cases):
    """Every case, and the net_info variant of those that have one."""
    return list(cases) + [nat_variant(x) for x in cases if x.both_net_info]


# ---------------------------------------------------------------- builders
def eth(src=A1.mac, dst=A2.mac, **kw):
    return Ether(src=src, dst=dst, **kw)


def ip4(src=A1.ip, dst=A2.ip, **kw):
    return IP(src=src, dst=dst, **kw)


def tcp(sport=40000, dport=80, **kw):
    return TCP(sport=sport, dport=dport, flags="S", **kw)


def frame(*, esrc=A1.mac, edst=A2.mac, src=A1.ip, dst=A2.ip, l4=None, ip_kw=None) -> bytes:
    return bytes(eth(esrc, edst) / ip4(src, dst, **(ip_kw or {})) / (l4 if l4 is not None else tcp()))


def arp(*, esrc=A1.mac, hwsrc=A1.mac, psrc=A1.ip, pdst=A2.ip, op=1, **kw) -> bytes:
    return bytes(eth(esrc, BCAST_MAC) / ARP(op=op, hwsrc=hwsrc, psrc=psrc, hwdst="00:00:00:00:00:00",
                                             pdst=pdst, **kw))


def patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


IP_OFF = 14   # IPv4 header offset in an untagged frame
NOP_OPTS = b"\x01\x01\x01\x00"   # 3 NOPs + EOL: one 32-bit option word (IHL 6)


def c(id, description, build, expected_retval, verdict, setup=standard, **kw):
    return PacketCase(id, description, build, setup, expected_retval, verdict, **kw)


# ---------------------------------------------------------------- tc_from_endpoint
SHOT, OK, REDIR = TC_ACT_SHOT, TC_ACT_OK, TC_ACT_REDIRECT
V = Verdict

TC_CASES = [
    # fast path and pass
    c("unicast-same-network", "a1 -> a2, to a2's MAC: bpf_redirect_peer into a2",
      lambda: frame(), REDIR, V.REDIRECT_PEER),
    c("unicast-same-network-udp", "a1 -> a2 UDP", lambda: frame(l4=UDP(sport=1000, dport=53)),
      REDIR, V.REDIRECT_PEER),
    c("same-network-via-gateway-mac", "a1 -> a2's IP but the gateway MAC: the host routes it",
      lambda: frame(edst=GW_A_MAC), OK, V.PASS),
    c("to-gateway-ip", "a1 -> the gateway address (not an endpoint)",
      lambda: frame(edst=GW_A_MAC, dst=GW_A_IP), OK, V.PASS),
    c("to-unknown-ip", "a1 -> 8.8.8.8 (egress)", lambda: frame(edst=GW_A_MAC, dst=OUTSIDE_IP), OK, V.PASS),
    c("to-broadcast-ip", "a1 -> 255.255.255.255", lambda: frame(edst=BCAST_MAC, dst="255.255.255.255",
                                                                l4=UDP(sport=68, dport=67)), OK, V.PASS),
    c("to-self-ip", "a1 -> its own address, to its own MAC (same network): redirected to a1",
      lambda: frame(edst=A1.mac, dst=A1.ip), REDIR, V.REDIRECT_PEER),
    # isolation
    c("cross-network", "a1 -> b1 (network B), to b1's MAC", lambda: frame(edst=B1.mac, dst=B1.ip),
      SHOT, V.ISOLATION),
    c("cross-network-via-gateway-mac", "a1 -> b1 through the gateway MAC: still isolated",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip), SHOT, V.ISOLATION),
    c("cross-network-icmp", "a1 -> b1 ICMP echo via the gateway: isolated",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=ICMP()), SHOT, V.ISOLATION),
    # former "published port" cases: without a conntrack entry a reply from a port that may be
    # published is an ordinary packet (the published_ports special case is gone)
    c("former-published-reply-tcp", "tcp from 8080 to b1 (another network) without a conntrack "
      "entry: isolated", lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=TCP(sport=8080, dport=40000, flags="SA")),
      SHOT, V.ISOLATION),
    c("former-published-reply-udp", "udp from 5353 to b1 without a conntrack entry: isolated",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=UDP(sport=5353, dport=40000)), SHOT, V.ISOLATION),
    c("unpublished-port-cross-network", "tcp from 8081 to b1: isolated",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=TCP(sport=8081, dport=40000)), SHOT, V.ISOLATION),
    c("truncated-tcp-cross-network", "only 12 bytes of TCP header to b1: isolated (NAT's parser "
      "calls it malformed and declines)", lambda: frame(edst=GW_A_MAC, dst=B1.ip,
                                                         l4=TCP(sport=8080, dport=40000))[:IP_OFF + 20 + 12],
      SHOT, V.ISOLATION),
    c("ip-options-cross-network", "IHL 6 (one option word) to b1: isolated",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=TCP(sport=8080, dport=40000),
                    ip_kw={"options": [NOP_OPTS]}), SHOT, V.ISOLATION),
    c("former-published-reply-same-network", "tcp from 8080 to a2's MAC without a conntrack entry: "
      "the fast path", lambda: frame(l4=TCP(sport=8080, dport=40000, flags="SA")), REDIR, V.REDIRECT_PEER),
    c("former-published-reply-udp-same-network", "udp from 5353 to a2's MAC: the fast path",
      lambda: frame(l4=UDP(sport=5353, dport=40000)), REDIR, V.REDIRECT_PEER),
    c("reply-to-outside", "tcp from 8080 to 8.8.8.8 (not an endpoint): pass",
      lambda: frame(edst=GW_A_MAC, dst=OUTSIDE_IP, l4=TCP(sport=8080, dport=40000)), OK, V.PASS),
    c("icmp-echo-to-outside", "ICMP echo to 8.8.8.8 via the gateway: pass",
      lambda: frame(edst=GW_A_MAC, dst=OUTSIDE_IP, l4=ICMP(id=7)), OK, V.PASS),
    c("icmp-error-to-outside", "ICMP port unreachable quoting an untracked packet: pass",
      lambda: frame(edst=GW_A_MAC, dst=OUTSIDE_IP, l4=ICMP(type=3, code=3) / IP(src=OUTSIDE_IP, dst=A1.ip)
                    / UDP(sport=53, dport=40000)), OK, V.PASS),
    c("gre-to-outside", "GRE (not tracked) to 8.8.8.8: pass", lambda: bytes(
        eth(A1.mac, GW_A_MAC) / ip4(A1.ip, OUTSIDE_IP, proto=47) / Raw(bytes(8))), OK, V.PASS),
    c("ttl-1-to-outside", "TTL 1 via the gateway (left to the stack): pass",
      lambda: frame(edst=GW_A_MAC, dst=OUTSIDE_IP, ip_kw={"ttl": 1}), OK, V.PASS),
    # conntrack hits (need net_info): the reply of a DNATed connection is translated back and
    # sent straight to its endpoint (bpf_redirect_peer), TTL - 1, MACs of the route
    c("ct-reply-cross-network", "a1's tcp/80 answers b1, whose connection to host:8080 was DNATed "
      "to a1:80: source becomes host:8080, into b1", lambda: frame(edst=GW_A_MAC, dst=B1.ip,
                                                                   l4=TCP(sport=80, dport=40000, flags="SA")),
      REDIR, V.NAT_REDIRECT, setup=dnat_flow(B1.ip, 40000, 8080, A1.ip, 80), both_net_info=False,
      expected_out=bytes(Ether(src=GW_B_MAC, dst=B1.mac) / IP(src=HOST_IP, dst=B1.ip, ttl=63)
                         / TCP(sport=8080, dport=40000, flags="SA"))),
    c("ct-reply-cross-network-udp", "the same for udp 53 published as 5353",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=UDP(sport=53, dport=40000) / Raw(b"answer")),
      REDIR, V.NAT_REDIRECT, setup=dnat_flow(B1.ip, 40000, 5353, A1.ip, 53, UDP_P), both_net_info=False,
      expected_out=bytes(Ether(src=GW_B_MAC, dst=B1.mac) / IP(src=HOST_IP, dst=B1.ip, ttl=63)
                         / UDP(sport=5353, dport=40000) / Raw(b"answer"))),
    c("ct-reply-same-network-peer-mac", "a1 answers a2 (same L2, to a2's MAC) on a connection a2 "
      "made to host:8080: translated, not the untranslated fast path",
      lambda: frame(l4=TCP(sport=80, dport=40000, flags="A")), REDIR, V.NAT_REDIRECT,
      setup=dnat_flow(A2.ip, 40000, 8080, A1.ip, 80), both_net_info=False,
      expected_out=bytes(Ether(src=GW_A_MAC, dst=A2.mac) / IP(src=HOST_IP, dst=A2.ip, ttl=63)
                         / TCP(sport=8080, dport=40000, flags="A"))),
    c("ct-orig-cross-network", "a1 -> host:9090, DNATed to b1:90 (a published port of network B): "
      "a mid-stream packet of the flow is translated into b1",
      lambda: frame(edst=GW_A_MAC, dst=HOST_IP, l4=TCP(sport=40001, dport=9090, flags="A")),
      REDIR, V.NAT_REDIRECT, setup=dnat_flow(A1.ip, 40001, 9090, B1.ip, 90), both_net_info=False,
      expected_out=bytes(Ether(src=GW_B_MAC, dst=B1.mac) / IP(src=A1.ip, dst=B1.ip, ttl=63)
                         / TCP(sport=40001, dport=90, flags="A"))),
    c("ct-icmp-echo-reply", "a1 answers b1's ping of host (DNATed to a1): source becomes host",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=ICMP(type=0, id=7, seq=1) / Raw(b"ping")),
      REDIR, V.NAT_REDIRECT, setup=dnat_flow(B1.ip, 7, 0, A1.ip, 0, 1), both_net_info=False,
      expected_out=bytes(Ether(src=GW_B_MAC, dst=B1.mac) / IP(src=HOST_IP, dst=B1.ip, ttl=63)
                         / ICMP(type=0, id=7, seq=1) / Raw(b"ping"))),
    c("ct-other-port-is-a-miss", "a1 answers b1 from port 81 (the flow is 80): no entry, isolated",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=TCP(sport=81, dport=40000, flags="SA")),
      SHOT, V.ISOLATION, setup=dnat_flow(B1.ip, 40000, 8080, A1.ip, 80), both_net_info=False),
    c("ct-other-proto-is-a-miss", "udp 80 -> b1:40000 (the flow is tcp): isolated",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=UDP(sport=80, dport=40000)),
      SHOT, V.ISOLATION, setup=dnat_flow(B1.ip, 40000, 8080, A1.ip, 80), both_net_info=False),
    c("ct-reply-ttl-1", "TTL 1 on a tracked reply: NAT leaves it (TTL_EXCEEDED) and the endpoint's "
      "own steps isolate it", lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=TCP(sport=80, dport=40000, flags="SA"),
                                            ip_kw={"ttl": 1}),
      SHOT, V.ISOLATION, setup=dnat_flow(B1.ip, 40000, 8080, A1.ip, 80), both_net_info=False),
    c("ct-without-net-info", "the same tracked reply when a1's network has no net_info: no NAT, "
      "isolated", lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=TCP(sport=80, dport=40000, flags="SA")),
      SHOT, V.ISOLATION, both_net_info=False,
      setup=lambda m: (standard(m), m.add_ct_pair(Tuple(B1.ip, HOST_IP, 40000, 8080, TCP_P),
                                                  Tuple(B1.ip, A1.ip, 40000, 80, TCP_P), kind=S.CT_K_DNAT))),
    c("ct-reply-fragment-mf", "a tracked reply's first fragment (MF) is translated too",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=UDP(sport=53, dport=40000) / Raw(b"answer"),
                    ip_kw={"flags": "MF", "id": 99}),
      REDIR, V.NAT_REDIRECT, setup=dnat_flow(B1.ip, 40000, 5353, A1.ip, 53, UDP_P), both_net_info=False,
      expected_out=bytes(Ether(src=GW_B_MAC, dst=B1.mac) / IP(src=HOST_IP, dst=B1.ip, ttl=63, flags="MF", id=99)
                         / UDP(sport=5353, dport=40000) / Raw(b"answer"))),
    # fragments: a fragment NAT does not translate takes the host path to an endpoint (no
    # trustworthy ports for the isolation check; the kernel judges it there)
    c("fragment-mf-same-network", "first fragment (MF) a1 -> a2: host path, not redirected",
      lambda: frame(ip_kw={"flags": "MF"}), OK, V.PASS),
    c("fragment-offset-same-network", "non-first fragment (offset 8) a1 -> a2: host path",
      lambda: frame(l4=TCP(sport=8080, dport=40000), ip_kw={"frag": 8}), OK, V.PASS),
    c("fragment-mf-cross-network", "first fragment (MF) to b1 via the gateway: host path",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=TCP(sport=8080, dport=40000), ip_kw={"flags": "MF"}),
      OK, V.PASS),
    c("fragment-offset-cross-network", "non-first fragment (offset 8) to b1: host path",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=TCP(sport=8080, dport=40000), ip_kw={"frag": 8}),
      OK, V.PASS),
    c("fragment-offset-udp-to-outside", "non-first UDP fragment to 8.8.8.8: pass (with net_info "
      "NAT looks for its first fragment's ports: FRAG_UNKNOWN)",
      lambda: frame(edst=GW_A_MAC, dst=OUTSIDE_IP, l4=UDP(sport=1, dport=2), ip_kw={"frag": 100}), OK, V.PASS),
    c("fragment-df-cross-network", "DF set (not a fragment) to b1: isolated",
      lambda: frame(edst=GW_A_MAC, dst=B1.ip, l4=TCP(sport=8080, dport=40000), ip_kw={"flags": "DF"}),
      SHOT, V.ISOLATION),
    # anti-spoofing
    c("spoofed-mac", "a1 with another source MAC", lambda: frame(esrc=OTHER_MAC), SHOT, V.SPOOFED_MAC),
    c("spoofed-mac-as-a2", "a1 claiming a2's MAC", lambda: frame(esrc=A2.mac, edst=GW_A_MAC), SHOT,
      V.SPOOFED_MAC),
    c("spoofed-ip", "a1's MAC, a2's IPv4 source", lambda: frame(src=A2.ip), SHOT, V.SPOOFED_IP),
    c("spoofed-ip-outside", "a1's MAC, a source outside any network",
      lambda: frame(src="192.0.2.7", edst=GW_A_MAC, dst=OUTSIDE_IP), SHOT, V.SPOOFED_IP),
    c("spoofed-ip-with-options", "spoofed source behind IP options (IHL 6)",
      lambda: frame(src=A2.ip, ip_kw={"options": [NOP_OPTS]}), SHOT, V.SPOOFED_IP),
    c("valid-ip-with-options", "valid source with IP options (IHL 6) -> a2: redirected",
      lambda: frame(ip_kw={"options": [NOP_OPTS]}), REDIR, V.REDIRECT_PEER),
    c("valid-ip-with-max-options", "IHL 15 (40 bytes of options), valid: redirected",
      lambda: frame(ip_kw={"options": [b"\x01" * 39 + b"\x00"]}), REDIR, V.REDIRECT_PEER),
    c("spoofed-ip-zero-source", "0.0.0.0 source (DHCP-style) is not a1's address",
      lambda: frame(src="0.0.0.0", edst=BCAST_MAC, dst="255.255.255.255", l4=UDP(sport=68, dport=67)),
      SHOT, V.SPOOFED_IP),
    # ARP
    c("arp-request", "valid ARP request who-has a2", lambda: arp(), OK, V.PASS_ARP),
    c("arp-reply", "valid ARP reply", lambda: arp(op=2), OK, V.PASS_ARP),
    c("arp-gratuitous", "gratuitous ARP for a1's own address", lambda: arp(pdst=A1.ip), OK, V.PASS_ARP),
    c("arp-spoofed-sender-ip", "ARP sender IP a2 (ARP cache poisoning)", lambda: arp(psrc=A2.ip),
      SHOT, V.SPOOFED_ARP),
    c("arp-spoofed-sender-mac", "Ethernet source a1, ARP sender MAC another",
      lambda: arp(hwsrc=OTHER_MAC), SHOT, V.SPOOFED_ARP),
    c("arp-spoofed-eth-mac", "Ethernet source another MAC: the MAC check comes first",
      lambda: arp(esrc=OTHER_MAC), SHOT, V.SPOOFED_MAC),
    c("arp-truncated", "ARP header cut inside the sender/target addresses",
      lambda: arp()[:14 + 8 + 10], SHOT, V.MALFORMED),
    c("arp-header-only", "ARP with only its 8-byte fixed header", lambda: arp()[:14 + 8], SHOT, V.MALFORMED),
    c("arp-ethertype-no-body", "ARP ethertype, nothing after the Ethernet header",
      lambda: arp()[:14], SHOT, V.MALFORMED),
    c("arp-not-ipv4", "ARP with protocol type IPv6 (not Ethernet/IPv4): malformed",
      lambda: patch(arp(), 14 + 2, b"\x86\xdd"), SHOT, V.MALFORMED),
    c("arp-bad-hw-len", "ARP with hardware length 8", lambda: patch(arp(), 14 + 4, b"\x08"), SHOT,
      V.MALFORMED),
    c("arp-not-ethernet", "ARP hardware type 6 (IEEE 802)", lambda: patch(arp(), 14, b"\x00\x06"), SHOT,
      V.MALFORMED),
    # other ethertypes
    c("ipv6", "IPv6 (ND, link-local...) continues to the bridge",
      lambda: bytes(eth(dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1") / UDP(sport=1, dport=2)),
      OK, V.PASS_OTHER),
    c("lldp", "LLDP (0x88cc)", lambda: bytes(eth(dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"\x02\x07" + bytes(7))),
      OK, V.PASS_OTHER),
    c("ethertype-only", "a 14-byte frame with an unknown ethertype",
      lambda: bytes(eth(type=0x1234)), OK, V.PASS_OTHER),
    c("ipv6-spoofed-mac", "IPv6 with another source MAC: the MAC check applies to every ethertype",
      lambda: bytes(eth(src=OTHER_MAC, dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1")),
      SHOT, V.SPOOFED_MAC),
    c("vlan-8021q", "802.1Q tagged frame", lambda: bytes(eth() / Dot1Q(vlan=5) / ip4() / tcp()),
      SHOT, V.VLAN),
    c("vlan-qinq-88a8", "802.1ad (QinQ) tagged frame",
      lambda: bytes(eth(type=0x88A8) / Dot1AD(vlan=7) / Dot1Q(vlan=5) / ip4() / tcp()), SHOT, V.VLAN),
    c("vlan-tag-only", "802.1Q ethertype, no tag body", lambda: bytes(eth(type=0x8100)), SHOT, V.VLAN),
    # malformed
    c("truncated-ethernet-10", "10 bytes: BPF_PROG_TEST_RUN refuses a buffer shorter than ETH_HLEN",
      lambda: frame()[:10], None, None, expected_errno=22),
    c("truncated-ethernet-13", "13 bytes: refused as well", lambda: frame()[:13], None, None,
      expected_errno=22),
    c("ipv4-ethertype-no-header", "IPv4 ethertype, nothing after the Ethernet header: a SCHED_CLS "
      "test run refuses IPv4 frames shorter than 14+20 bytes (kernel 6.18)",
      lambda: frame()[:14], None, None, expected_errno=22),
    c("truncated-ipv4-header", "19 of the 20 IPv4 header bytes: refused by the kernel too",
      lambda: frame()[:IP_OFF + 19], None, None, expected_errno=22),
    c("truncated-ipv6-header", "IPv6 ethertype with 39 of 40 header bytes: refused (14+40 needed)",
      lambda: bytes(eth(dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1"))[:IP_OFF + 39],
      None, None, expected_errno=22),
    c("ipv4-header-only", "exactly the 20-byte IPv4 header, no L4: redirected like any unicast",
      lambda: frame()[:IP_OFF + 20], REDIR, V.REDIRECT_PEER),
    c("ihl-4", "IHL 4 (16 bytes) is below the minimum", lambda: frame(ip_kw={"ihl": 4}), SHOT, V.MALFORMED),
    c("ihl-0", "IHL 0", lambda: frame(ip_kw={"ihl": 0}), SHOT, V.MALFORMED),
    c("ihl-beyond-packet", "IHL 15 (60 bytes) but only 20+20 bytes of IP packet",
      lambda: frame(ip_kw={"ihl": 15}), SHOT, V.MALFORMED),
    c("ihl-6-beyond-packet", "IHL 6 with exactly 20 bytes after the Ethernet header",
      lambda: frame(ip_kw={"ihl": 6})[:IP_OFF + 20], SHOT, V.MALFORMED),
    c("total-length-below-ihl", "total length 19 < 20-byte header", lambda: frame(ip_kw={"len": 19}),
      SHOT, V.MALFORMED),
    c("total-length-below-options", "IHL 6 (24 bytes) with total length 20",
      lambda: frame(ip_kw={"options": [NOP_OPTS], "len": 20}), SHOT, V.MALFORMED),
    c("total-length-zero", "total length 0 (TSO-style) is < the header: malformed",
      lambda: frame(ip_kw={"len": 0}), SHOT, V.MALFORMED),
    c("total-length-beyond-packet", "total length 1500 on a 54-byte frame: not checked (only "
      ">= IHL*4 is), redirected", lambda: frame(ip_kw={"len": 1500}), REDIR, V.REDIRECT_PEER),
    c("ip-version-6-in-ipv4-ethertype", "version nibble 6 under ethertype 0x0800",
      lambda: patch(frame(), IP_OFF, b"\x65"), SHOT, V.MALFORMED),
    c("malformed-before-spoof-check", "IHL 4 with a spoofed source: malformed wins (header "
      "checked first)", lambda: frame(src=A2.ip, ip_kw={"ihl": 4}), SHOT, V.MALFORMED),
    c("spoofed-mac-before-malformed", "another source MAC on a malformed IPv4 header: MAC first",
      lambda: frame(esrc=OTHER_MAC, ip_kw={"ihl": 4}), SHOT, V.SPOOFED_MAC),
    # unknown endpoint
    c("unknown-endpoint-ifindex", "the test-run device has no endpoints_by_ifindex entry",
      lambda: frame(), SHOT, V.UNKNOWN_ENDPOINT, setup=without_self),
    c("unknown-endpoint-empty-maps", "no map entries at all", lambda: frame(), SHOT, V.UNKNOWN_ENDPOINT,
      setup=nothing),
    c("unknown-endpoint-arp", "ARP from an unknown device", lambda: arp(), SHOT, V.UNKNOWN_ENDPOINT,
      setup=without_self),
    c("unknown-endpoint-short-frame", "14-byte frame from an unknown device: the endpoint check "
      "comes first", lambda: bytes(eth(type=0x1234)), SHOT, V.UNKNOWN_ENDPOINT, setup=without_self),
    c("dst-not-in-by-ip", "a2 only in endpoints_by_ifindex (no by-IP entry): plain pass",
      lambda: frame(), OK, V.PASS, setup=lambda m: (m.add_endpoint(A1), m.add_endpoint(A2, by_ip=False))),
]


# ---------------------------------------------------------------- xdp_uplink
def up(src=OUTSIDE_IP, dst=A1.ip, **ip_kw) -> bytes:
    return bytes(Ether(src=ROUTER_MAC, dst=UPLINK_MAC) / IP(src=src, dst=dst, **ip_kw)
                 / TCP(sport=443, dport=40000, flags="SA"))


XDP_CASES = [
    c("pass-normal", "8.8.8.8 -> a1: not ours to judge", lambda: up(), XDP_PASS, V.XDP_PASS),
    c("pass-outside-to-outside", "transit traffic", lambda: up(dst="192.0.2.1"), XDP_PASS, V.XDP_PASS),
    c("spoofed-source-local-subnet", "source 10.1.0.9 inside our 10.1.0.0/24",
      lambda: up(src="10.1.0.9"), XDP_DROP, V.UPLINK_SPOOFED),
    c("spoofed-source-is-an-endpoint", "source a2's exact address", lambda: up(src=A2.ip), XDP_DROP,
      V.UPLINK_SPOOFED),
    c("spoofed-source-in-slash16", "source 10.2.200.1 inside 10.2.0.0/16 (LPM match)",
      lambda: up(src="10.2.200.1"), XDP_DROP, V.UPLINK_SPOOFED),
    c("pass-adjacent-subnet", "source 10.1.1.5 just outside 10.1.0.0/24", lambda: up(src="10.1.1.5"),
      XDP_PASS, V.XDP_PASS),
    c("pass-without-subnets", "10.1.0.9 with an empty local_subnets map", lambda: up(src="10.1.0.9"),
      XDP_PASS, V.XDP_PASS, setup=nothing),
    c("spoofed-source-with-options", "spoofed source behind IP options",
      lambda: up(src="10.1.0.9", options=[NOP_OPTS]), XDP_DROP, V.UPLINK_SPOOFED),
    c("malformed-ihl-4", "IHL 4", lambda: up(ihl=4), XDP_DROP, V.UPLINK_MALFORMED),
    c("malformed-ihl-beyond-packet", "IHL 15 on a 40-byte IP packet", lambda: up(ihl=15), XDP_DROP,
      V.UPLINK_MALFORMED),
    c("malformed-total-length", "total length 10", lambda: up(len=10), XDP_DROP, V.UPLINK_MALFORMED),
    c("malformed-version", "version 6 under ethertype IPv4", lambda: patch(up(), IP_OFF, b"\x65"),
      XDP_DROP, V.UPLINK_MALFORMED),
    c("malformed-wins-over-spoofed", "IHL 4 with a local source: malformed",
      lambda: up(src="10.1.0.9", ihl=4), XDP_DROP, V.UPLINK_MALFORMED),
    c("truncated-ipv4-header", "IPv4 ethertype with 10 bytes of IP header: malformed",
      lambda: up()[:IP_OFF + 10], XDP_DROP, V.UPLINK_MALFORMED),
    c("ipv4-ethertype-no-header", "IPv4 ethertype, nothing after Ethernet: malformed",
      lambda: up()[:14], XDP_DROP, V.UPLINK_MALFORMED),
    c("pass-arp", "ARP", lambda: bytes(Ether(src=ROUTER_MAC, dst=BCAST_MAC) / ARP(
        op=1, hwsrc=ROUTER_MAC, psrc="10.1.0.9", hwdst="00:00:00:00:00:00", pdst="192.0.2.1")),
      XDP_PASS, V.XDP_PASS),
    c("pass-ipv6", "IPv6", lambda: bytes(Ether(src=ROUTER_MAC, dst=UPLINK_MAC) /
                                         IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2)),
      XDP_PASS, V.XDP_PASS),
    c("pass-non-ip-short", "14-byte non-IP frame (truncated: nothing to judge)",
      lambda: bytes(Ether(src=ROUTER_MAC, dst=UPLINK_MAC, type=0x88CC)), XDP_PASS, V.XDP_PASS),
    c("pass-vlan-tagged-spoofed", "802.1Q-tagged IPv4 from a local subnet: not parsed, passes "
      "(the uplink program only judges untagged IPv4)",
      lambda: bytes(Ether(src=ROUTER_MAC, dst=UPLINK_MAC) / Dot1Q(vlan=5) / IP(src="10.1.0.9", dst=A1.ip)
                    / TCP(sport=1, dport=2)), XDP_PASS, V.XDP_PASS),
    c("truncated-ethernet", "10 bytes: BPF_PROG_TEST_RUN refuses a buffer shorter than ETH_HLEN",
      lambda: up()[:10], None, None, expected_errno=22),
]


def _unique(cases):
    ids = [x.id for x in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return cases


_unique(TC_CASES)
_unique(XDP_CASES)

"""The world of the NAT program tests (tests/ebpf/test_nat_*.py): a private network namespace for
the routes bpf_fib_lookup resolves, the map contents of one host with one container network, rule
sets, packet builders and byte-exact comparisons with scapy.

Private netns. A SCHED_CLS test run builds its skb on the loopback device of the calling thread's
netns, and bpf_fib_lookup / bpf_sk_lookup_* use that netns. So that routes and sockets are the
tests' own, not the machine's, the session creates one namespace (``NatNetns``: unshare of the
main thread, configured with ``ip``, kept open by fd) and every NAT test runs inside it
(``enter``/``leave``: setns of the main thread, nothing else changes). Its devices are veth pairs
whose peers stay inside it (no dummy driver on this kernel), IPv6 is off, so nothing can leave it,
and no test sends anything: BPF_PROG_TEST_RUN only.

    up0   veth (peer up0p), 02:00:00:00:00:aa, 203.0.113.1/24 (HOST_IP): the uplink
          default via 203.0.113.254 (ROUTER_IP, permanent neighbour ROUTER_MAC)
          192.0.2.0/24 via 203.0.113.253 (no neighbour: bpf_fib_lookup says NO_NEIGH)
    up1   veth (peer up1p), 02:00:00:00:00:ab, 198.18.0.1/24: a second uplink (-i / ! -i)
    lo    up; ip_forward on (bpf_fib_lookup wants forwarding on the input device)

Container network N (net_id 1): 10.0.0.0/24, gateway 10.0.0.1 (GW_MAC) on bridge "br-n"
(ifindex BR_N: only a number in net_info and the rules, no device), endpoints c1 10.0.0.2 (the
test-run device, ifindex 1) and c2 10.0.0.3 (ifindex 902, only a bpf_redirect_peer target).
Network M (net_id 2): 10.9.0.0/24 on "br-m" (BR_M), endpoint m1 10.9.0.2 (ifindex 903).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from dockline.control import protocols

from .harness import TEST_RUN_IFINDEX, Endpoint, Maps, SkBuff, Tuple, XdpMd, prog_test_run

TCP_P, UDP_P, ICMP_P = protocols.TCP, protocols.UDP, protocols.ICMP

HOST_IP = "203.0.113.1"
UPLINK_MAC = "02:00:00:00:00:aa"
ROUTER_IP, ROUTER_MAC = "203.0.113.254", "02:00:00:00:00:bb"
NO_NEIGH_NET, NO_NEIGH_GW = "192.0.2.0/24", "203.0.113.253"
UP1_IP, UP1_MAC = "198.18.0.1", "02:00:00:00:00:ab"
LO = 1                           # the loopback device's ifindex (in every netns)
CLIENT = "198.51.100.7"          # somewhere outside, reached via the default route
CLIENT_MAC = "02:00:00:00:00:cc"  # what a frame from outside carries as its source MAC

NET_N = 1
SUBNET_N = "10.0.0.0/24"
GW_N, GW_MAC = "10.0.0.1", "02:42:0a:00:00:01"
BR_N = 900
C1 = Endpoint("c1", TEST_RUN_IFINDEX, "10.0.0.2", "02:42:0a:00:00:02", NET_N)
C2 = Endpoint("c2", 902, "10.0.0.3", "02:42:0a:00:00:03", NET_N)
#: another network M (net_id 2): 10.9.0.0/24, gateway 10.9.0.1 on "br-m" (ifindex 901), endpoint m1
NET_M, GW_M, GW_M_MAC, BR_M = 2, "10.9.0.1", "02:42:0a:09:00:01", 901
M1 = Endpoint("m1", 903, "10.9.0.2", "02:42:0a:09:00:02", NET_M)

HEAD = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
"""


def ruleset(body: str) -> str:
    return HEAD + body + "COMMIT\n"


#: Docker's published port (the brief's shape): an exact-table (LOOKUP) rule
DOCKER_DNAT = ruleset(""":DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
-A DOCKER -p udp -m udp --dport 5353 -j DNAT --to-destination 10.0.0.2:53
""")
#: the same decisions for the test packets from generic instructions (a -s condition)
DOCKER_DNAT_SOURCE = ruleset(""":DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -s 198.51.100.0/24 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
-A DOCKER -s 198.51.100.0/24 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.0.0.2:53
""")
#: ... and from multiport instructions
DOCKER_DNAT_MULTIPORT = ruleset(""":DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -p tcp -m multiport --dports 8080,9090 -j DNAT --to-destination 10.0.0.2:80
-A DOCKER -p udp -m multiport --dports 5353,6000:6010 -j DNAT --to-destination 10.0.0.2:53
""")
DNAT_RULESETS = {"exact": DOCKER_DNAT, "source": DOCKER_DNAT_SOURCE, "multiport": DOCKER_DNAT_MULTIPORT}

MASQUERADE = ruleset("-A POSTROUTING -s 10.0.0.0/24 ! -o br-n -j MASQUERADE\n")
#: Docker's host: published ports and egress masquerade
DOCKER_HOST = ruleset(""":DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 10.0.0.0/24 ! -o br-n -j MASQUERADE
-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
-A DOCKER -p udp -m udp --dport 5353 -j DNAT --to-destination 10.0.0.2:53
""")


# ---------------------------------------------------------------- the private netns
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def _ip(*args: str):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class NatNetns:
    """A network namespace of the tests' own (see the module docstring)."""

    def __init__(self):
        self.orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        if _libc.unshare(CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            os.close(self.orig)
            raise OSError(e, f"unshare(CLONE_NEWNET): {os.strerror(e)}")
        try:
            self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            self._configure()
            self.ifindex = {link["ifname"]: link["ifindex"] for link in
                            json.loads(subprocess.run(["ip", "-j", "link", "show"], check=True,
                                                      capture_output=True, text=True).stdout)}
        finally:
            _setns(self.orig)
        self.inside = False

    @staticmethod
    def _configure():
        for path, value in (("/proc/sys/net/ipv4/ip_forward", "1"),
                            ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"),
                            ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")):
            with open(path, "w") as f:
                f.write(value)
        _ip("link", "set", "lo", "up")
        for name, mac, addr in (("up0", UPLINK_MAC, HOST_IP + "/24"), ("up1", UP1_MAC, UP1_IP + "/24")):
            # a veth pair whose peer stays in this netns (this kernel has no dummy driver)
            _ip("link", "add", name, "address", mac, "type", "veth", "peer", "name", name + "p")
            _ip("addr", "add", addr, "dev", name)
            _ip("link", "set", name + "p", "up")
            _ip("link", "set", name, "up")
        _ip("neigh", "replace", ROUTER_IP, "lladdr", ROUTER_MAC, "dev", "up0", "nud", "permanent")
        _ip("route", "add", "default", "via", ROUTER_IP, "dev", "up0")
        _ip("route", "add", NO_NEIGH_NET, "via", NO_NEIGH_GW, "dev", "up0")

    def enter(self):
        _setns(self.fd)
        self.inside = True

    def leave(self):
        _setns(self.orig)
        self.inside = False

    def close(self):
        if self.inside:
            self.leave()
        os.close(self.fd)
        os.close(self.orig)


# ---------------------------------------------------------------- the maps of one host
@dataclass
class World:
    """Map contents of the host above, and how to run the programs there."""

    maps: Maps
    ns: NatNetns
    fds: dict                       # program name -> fd

    @property
    def up0(self) -> int:
        return self.ns.ifindex["up0"]

    @property
    def up1(self) -> int:
        return self.ns.ifindex["up1"]

    def ifindex_of(self, name: str) -> int | None:
        """What the rule compiler resolves interface names with."""
        return {"br-n": BR_N, "br-m": BR_M, "up0": self.up0, "up1": self.up1}.get(name)

    def install(self):
        m = self.maps
        for ep in (C1, C2, M1):
            m.add_endpoint(ep)
        m.add_subnet(SUBNET_N)
        m.add_subnet("10.9.0.0/24")
        m.add_net_info(NET_N, BR_N, GW_N, GW_MAC)
        m.add_net_info(NET_M, BR_M, GW_M, GW_M_MAC)
        for cidr in (HOST_IP + "/32", UP1_IP + "/32", GW_N + "/32", GW_M + "/32", "127.0.0.0/8"):
            m.add_local_addr(cidr)
        m.set_ifaddr(self.up0, HOST_IP)
        m.set_ifaddr(self.up1, UP1_IP)
        m.set_ifaddr(BR_N, GW_N)
        m.set_ifaddr(BR_M, GW_M)

    def rules(self, text: str, **kw):
        return self.maps.apply_nat(text, self.ifindex_of, **kw)

    # -- runs
    def uplink(self, pkt: bytes, ifindex: int | None = None):
        """tc_uplink_ingress on a frame arriving by up0 (or ``ifindex``): (retval, out)."""
        r = prog_test_run(self.fds["tc_uplink_ingress"], pkt, ctx=SkBuff(ifindex=ifindex or self.up0))
        return r.retval, r.out

    def xdp(self, pkt: bytes, ifindex: int | None = None):
        """xdp_uplink (native XDP on the uplink) on a frame arriving by up0: (retval, out). An
        XDP_REDIRECT is only reported, not carried out (no BPF_F_TEST_XDP_LIVE_FRAMES)."""
        r = prog_test_run(self.fds["xdp_uplink"], pkt, ctx=XdpMd(ingress_ifindex=ifindex or self.up0))
        return r.retval, r.out

    def loopback(self, pkt: bytes):
        """tc_loopback (lo's egress) on a frame the host sends to itself."""
        r = prog_test_run(self.fds["tc_loopback"], pkt, ctx=SkBuff(ifindex=LO))
        return r.retval, r.out

    def egress(self, pkt: bytes):
        r = prog_test_run(self.fds["tc_uplink_egress"], pkt, ctx=SkBuff(ifindex=self.up0))
        return r.retval, r.out

    def endpoint(self, pkt: bytes):
        """tc_from_endpoint on a frame c1 sends (the test-run device is c1's veth)."""
        r = prog_test_run(self.fds["tc_from_endpoint"], pkt)
        return r.retval, r.out


# ---------------------------------------------------------------- packets
def from_outside(l4: Packet, *, src: str = CLIENT, dst: str = HOST_IP, ttl: int = 64, **ip_kw) -> Packet:
    """A frame arriving by the uplink from the router."""
    return Ether(src=ROUTER_MAC, dst=UPLINK_MAC) / IP(src=src, dst=dst, ttl=ttl, **ip_kw) / l4


def from_c1(l4: Packet, *, dst: str = CLIENT, edst: str = GW_MAC, ttl: int = 64, **ip_kw) -> Packet:
    """A frame c1 sends (to the gateway MAC: routed)."""
    return Ether(src=C1.mac, dst=edst) / IP(src=C1.ip, dst=dst, ttl=ttl, **ip_kw) / l4


def rewritten(p: Packet, *, src=None, dst=None, sport=None, dport=None, icmp_id=None, esrc=None, edst=None,
              ttl_dec: int = 1) -> bytes:
    """``p`` with the given fields changed, the TTL decremented (the program routes it) and every
    checksum recomputed by scapy (a zero UDP checksum stays zero: "no checksum")."""
    q = p.copy()
    if esrc is not None:
        q[Ether].src = esrc
    if edst is not None:
        q[Ether].dst = edst
    ip = q[IP]
    if src is not None:
        ip.src = src
    if dst is not None:
        ip.dst = dst
    ip.ttl -= ttl_dec
    ip.chksum = None
    l4 = ip.payload
    if isinstance(l4, (TCP, UDP)):
        if sport is not None:
            l4.sport = sport
        if dport is not None:
            l4.dport = dport
        if not (isinstance(l4, UDP) and l4.chksum == 0):
            l4.chksum = None
    elif isinstance(l4, ICMP):
        if icmp_id is not None:
            l4.id = icmp_id
        l4.chksum = None
    return bytes(q)


def to_c1(p: Packet, **kw) -> bytes:
    """Routed into c1 (bpf_redirect_peer): MACs gateway -> c1."""
    return rewritten(p, esrc=GW_MAC, edst=C1.mac, **kw)


def to_outside(p: Packet, **kw) -> bytes:
    """Routed out of up0 by bpf_fib_lookup: MACs up0 -> router."""
    return rewritten(p, esrc=UPLINK_MAC, edst=ROUTER_MAC, **kw)


def assert_bytes(out: bytes, expected: bytes, what: str = "output"):
    """Every byte equal; otherwise name the differing offsets and show both packets."""
    if out == expected:
        return
    diffs = [i for i in range(max(len(out), len(expected)))
             if i >= len(out) or i >= len(expected) or out[i] != expected[i]]
    raise AssertionError(
        f"{what}: {len(diffs)} bytes differ at offsets {diffs[:24]} (lengths {len(out)}/{len(expected)})\n"
        f"got:      {Ether(out).summary()}\n          {out.hex()}\n"
        f"expected: {Ether(expected).summary()}\n          {expected.hex()}")


# ---------------------------------------------------------------- conntrack expectations
def ct_pair_of(orig: Tuple, to: Tuple) -> dict:
    """The two keys a flow has and the translated tuple each holds."""
    return {orig: to, to.reverse(): orig.reverse()}


def ct_tuples(maps: Maps) -> dict:
    """key Tuple -> translated Tuple of every ct entry."""
    return {k: Tuple.to_of(e, k.proto) for k, e in maps.ct_table().items()}


def raw_payload(n: int, seed: int = 0) -> Raw:
    return Raw(bytes((seed + i * 7) & 0xFF for i in range(n)))



def assert_tracked_untranslated(maps: Maps, *pkts: bytes) -> None:
    """Each of ``pkts`` started a flow that nothing translates, and conntrack holds exactly those
    flows, untranslated (both halves map to themselves): every flow is tracked from its first
    packet, so its replies are never judged as new flows."""
    from scapy.layers.inet import IP
    t = ct_tuples(maps)
    assert all(k == v for k, v in t.items()), f"a translated entry: {t}"
    assert len(t) == 2 * len(pkts), t
    for pkt in pkts:
        ip = IP(pkt[14:])
        assert any(k.saddr == ip.src and k.daddr == ip.dst for k in t), (ip.summary(), t)

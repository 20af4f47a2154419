"""Tests for the VXLAN codec twins in dockline.fastpath: scapy golden bytes, round trips, flow hashing, errors, and twin equality."""

import os
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from dockline import fastpath
from dockline.fastpath import IMPLEMENTATIONS, vxlan_py

NO_EXT = os.environ.get("DOCKLINE_NO_EXTENSIONS") == "1"

SMAC, DMAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
SIP, DIP = "192.0.2.1", "198.51.100.2"
SMAC_B, DMAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
SIP_B, DIP_B = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2])
ADDRS = dict(src_mac=SMAC_B, dst_mac=DMAC_B, src_ip=SIP_B, dst_ip=DIP_B)


def eth(**kw):
    """Ethernet header with explicit MACs: scapy would otherwise ARP for a default dst MAC."""
    return Ether(**{"src": "0a:00:00:00:00:01", "dst": "0a:00:00:00:00:02", **kw})


INNER_TCP = bytes(eth() / IP(src="10.1.0.1", dst="10.1.0.2") / TCP(sport=40000, dport=80) / b"GET /")
INNER_UDP = bytes(eth() / IP(src="10.1.0.3", dst="10.1.0.4") / UDP(sport=5353, dport=53) / b"q")
INNER_ARP = bytes(eth(dst="ff:ff:ff:ff:ff:ff") / ARP())
INNER_V6 = bytes(eth() / IPv6() / UDP(sport=1, dport=2) / b"v6")
INNERS = {"tcp": INNER_TCP, "udp": INNER_UDP, "arp": INNER_ARP, "ipv6": INNER_V6, "empty": b""}


@pytest.fixture(params=sorted(IMPLEMENTATIONS), ids=str)
def impl(request):
    return IMPLEMENTATIONS[request.param]


def outer(sport, vni=42, ttl=64, ip_id=0, ip_kw=None, udp_kw=None, vxlan_flags=0x08, inner=b"", **vx):
    """Scapy-built outer frame; lengths and checksums left to scapy unless overridden."""
    return (Ether(src=SMAC, dst=DMAC)
            / IP(**{"src": SIP, "dst": DIP, "flags": "DF", "id": ip_id, "ttl": ttl, **(ip_kw or {})})
            / UDP(sport=sport, **{"dport": 4789, "chksum": 0, **(udp_kw or {})})
            / VXLAN(vni=vni, flags=vxlan_flags, **vx) / Raw(inner))


def fnv1a32(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) % 2**32
    return h


def outcome(fn, *args, **kw):
    """Result or (exception type, reason, message): what must match between twins."""
    try:
        return ("ok", fn(*args, **kw))
    except (ValueError, TypeError) as e:
        return (type(e).__name__, getattr(e, "reason", None), str(e))


# --- selection and API ------------------------------------------------------------------------

@pytest.mark.skipif(NO_EXT, reason="DOCKLINE_NO_EXTENSIONS=1 selects pure Python")
def test_cython_extension_is_built_and_selected():
    assert "cython" in IMPLEMENTATIONS, "dockline.fastpath._vxlan_c was not built"
    mod = IMPLEMENTATIONS["cython"]
    assert not mod.__file__.endswith(".py")
    assert fastpath.vxlan is mod


def test_public_api_identical(impl):
    for name in fastpath.public_api:
        assert hasattr(impl, name), name
    for name in ("VXLAN_PORT", "VXLAN_HLEN", "OUTER_HLEN", "VXLAN_FLAG_I", "REASONS", "VxlanError"):
        assert getattr(impl, name) is getattr(vxlan_py, name)
    assert (impl.VXLAN_PORT, impl.VXLAN_HLEN, impl.OUTER_HLEN, impl.VXLAN_FLAG_I) == (4789, 8, 50, 0x08)
    assert issubclass(impl.VxlanError, ValueError)


# --- encap against scapy ----------------------------------------------------------------------

@pytest.mark.parametrize("inner", list(INNERS.values()), ids=list(INNERS))
@pytest.mark.parametrize("vni,ttl,ip_id", [(0, 64, 0), (1, 1, 0xFFFF), (0xABCDEF, 255, 0x1234), (0xFFFFFF, 0, 7)])
def test_encap_matches_scapy(impl, inner, vni, ttl, ip_id):
    got = impl.encap(inner, vni, ttl=ttl, ip_id=ip_id, **ADDRS)
    sport = impl.flow_source_port(inner)
    assert got == bytes(outer(sport, vni=vni, ttl=ttl, ip_id=ip_id, inner=inner))
    assert len(got) == impl.OUTER_HLEN + len(inner)


@pytest.mark.parametrize("inner", list(INNERS.values()), ids=list(INNERS))
def test_encap_udp_checksum_matches_scapy(impl, inner):
    got = impl.encap(inner, 0x5A5A5A, ip_id=99, udp_csum=True, **ADDRS)
    want = bytes(outer(impl.flow_source_port(inner), vni=0x5A5A5A, ip_id=99, inner=inner,
                       udp_kw={"chksum": None}))
    assert got == want
    assert got[40:42] != b"\0\0"


def test_encap_udp_checksum_zero_is_sent_as_ffff(impl):
    # Non-IP inner frame: the source port hashes only the MACs, so the tail can be tuned
    # (at an even UDP offset) until the computed checksum is exactly 0.
    inner = bytes(eth(type=0x88B5) / (b"x" * 20))
    pre = impl.encap(inner + b"\0\0", 7, udp_csum=True, **ADDRS)
    pre_csum = struct.unpack("!H", pre[40:42])[0]
    inner += struct.pack("!H", pre_csum)
    got = impl.encap(inner, 7, udp_csum=True, **ADDRS)
    assert got[40:42] == b"\xff\xff"
    assert got == bytes(outer(impl.flow_source_port(inner), vni=7, inner=inner, udp_kw={"chksum": None}))
    pseudo = SIP_B + DIP_B + struct.pack("!xBH", 17, len(got) - 34)
    assert impl.ipv4_checksum(pseudo + got[34:]) == 0  # 0xFFFF verifies like 0


@pytest.mark.parametrize("kw,field", [
    ({"vni": -1}, "vni"), ({"vni": 1 << 24}, "vni"),
    ({"src_mac": b"\0" * 5}, "src_mac"), ({"dst_mac": b"\0" * 7}, "dst_mac"),
    ({"src_ip": b"\0" * 16}, "src_ip"), ({"dst_ip": b""}, "dst_ip"),
    ({"ttl": 256}, "ttl"), ({"ip_id": 1 << 16}, "ip_id"),
    ({"inner_frame": b"\0" * (65535 - 36 + 1)}, "inner_frame"),
])
def test_encap_rejects_bad_arguments(impl, kw, field):
    args = {"inner_frame": INNER_TCP, "vni": 1, **ADDRS, **kw}
    with pytest.raises(ValueError, match=field) as exc:
        impl.encap(**args)
    assert not isinstance(exc.value, impl.VxlanError)
    assert outcome(impl.encap, **args) == outcome(vxlan_py.encap, **args)


def test_encap_accepts_largest_inner(impl):
    inner = b"\x01" * (65535 - 36)
    frame = impl.encap(inner, 3, **ADDRS)
    assert frame[16:18] == b"\xff\xff"
    assert impl.decap(frame) == (3, inner)


# --- decap ------------------------------------------------------------------------------------

@pytest.mark.parametrize("inner", list(INNERS.values()), ids=list(INNERS))
@pytest.mark.parametrize("udp_csum", [False, True])
def test_round_trip(impl, inner, udp_csum):
    for vni in (0, 1, 0x800000, 0xFFFFFF):
        frame = impl.encap(inner, vni, udp_csum=udp_csum, **ADDRS)
        assert impl.decap(frame) == (vni, inner)
        assert impl.decap(bytearray(frame)) == (vni, inner)
        assert impl.decap(memoryview(frame)) == (vni, inner)


def test_decap_drops_ethernet_padding(impl):
    frame = impl.encap(b"\xaa" * 3, 9, **ADDRS)
    assert impl.decap(frame + b"\0" * 11) == (9, b"\xaa" * 3)


@pytest.mark.parametrize("options", [[IPOption_NOP()] * 4, [IPOption_RR(routers=["10.9.9.9"] * 3)]],
                         ids=["nop4", "record_route"])
def test_decap_skips_ip_options(impl, options):
    frame = bytes(outer(50000, vni=77, inner=INNER_TCP, ip_kw={"options": options}))
    assert frame[14] > 0x45
    assert impl.decap(frame) == (77, INNER_TCP)


def test_decap_ignores_other_flags_and_reserved_bits(impl):
    # RFC 7348: reserved bits MUST be zero on send and ignored on receive; only I is checked.
    frame = bytearray(impl.encap(INNER_TCP, 0x010203, **ADDRS))
    frame[42] = 0xFF
    frame[43:46] = b"\xff\xff\xff"
    frame[49] = 0xFF
    assert impl.decap(bytes(frame)) == (0x010203, INNER_TCP)


def _patch(frame, offset, value):
    b = bytearray(frame)
    b[offset:offset + len(value)] = value
    return bytes(b)


_BASE = bytes(outer(50000, vni=42, inner=INNER_TCP))
MALFORMED = {
    **{f"truncated_{n}": (_BASE[:n], "truncated") for n in (0, 1, 13, 14, 20, 33, 41, 49)},
    "truncated_in_inner": (_BASE[:-1], "bad_length"),
    "ihl_4": (bytes(outer(50000, ip_kw={"ihl": 4}, inner=INNER_TCP)), "bad_ihl"),
    "ihl_past_frame": (_patch(bytes(outer(50000)), 14, b"\x4f"), "bad_ihl"),
    "more_fragments": (bytes(outer(50000, ip_kw={"flags": "MF"}, inner=INNER_TCP)), "fragment"),
    "fragment_offset": (bytes(eth() / IP(frag=185) / UDP(dport=4789) / VXLAN() / INNER_TCP), "fragment"),
    "tcp": (bytes(eth() / IP(dst=DIP) / TCP(dport=4789) / VXLAN() / INNER_TCP), "not_udp"),
    "icmp": (bytes(eth() / IP() / ICMP()), "not_udp"),
    "port_4790": (bytes(outer(50000, udp_kw={"dport": 4790}, inner=INNER_TCP)), "not_vxlan_port"),
    "port_8472": (bytes(eth() / IP() / UDP(sport=1, dport=8472) / VXLAN() / INNER_TCP), "not_vxlan_port"),
    "udp_len_short": (bytes(outer(50000, udp_kw={"len": 20}, inner=INNER_TCP)), "bad_length"),
    "udp_len_long": (bytes(outer(50000, udp_kw={"len": 16 + len(INNER_TCP) + 1}, inner=INNER_TCP)), "bad_length"),
    "ip_len_past_frame": (bytes(outer(50000, ip_kw={"len": 20 + 16 + len(INNER_TCP) + 1}, inner=INNER_TCP)),
                          "bad_length"),
    "ip_len_under_headers": (bytes(outer(50000, ip_kw={"len": 20 + 15}, inner=INNER_TCP)), "bad_length"),
    "vxlan_flags_0": (bytes(outer(50000, vxlan_flags=0x00, inner=INNER_TCP)), "bad_flags"),
    "vxlan_flags_no_i": (bytes(outer(50000, vxlan_flags=0x04, inner=INNER_TCP)), "bad_flags"),
    "bad_ip_csum": (bytes(outer(50000, ip_kw={"chksum": 0x1234}, inner=INNER_TCP)), "bad_ip_csum"),
    "ipv6_ethertype": (bytes(eth() / IPv6() / UDP(dport=4789) / VXLAN() / INNER_TCP), "not_ipv4"),
    "arp_ethertype": (bytes(eth() / ARP()), "not_ipv4"),
    "vlan_tagged": (bytes(eth() / Dot1Q(vlan=10) / IP() / UDP(dport=4789) / VXLAN() / INNER_TCP), "not_ipv4"),
    "ip_version_6": (_patch(_BASE, 14, b"\x65"), "not_ipv4"),
}


@pytest.mark.parametrize("frame,reason", list(MALFORMED.values()), ids=list(MALFORMED))
def test_decap_rejects_malformed(impl, frame, reason):
    with pytest.raises(impl.VxlanError) as exc:
        impl.decap(frame)
    assert exc.value.reason == reason
    assert str(exc.value).startswith(reason)
    assert outcome(impl.decap, frame) == outcome(vxlan_py.decap, frame)


def test_malformed_base_frame_is_valid(impl):
    assert impl.decap(_BASE) == (42, INNER_TCP)


def test_every_reason_is_exercised():
    assert {reason for _, reason in MALFORMED.values()} == vxlan_py.REASONS


def test_vxlan_error_rejects_unknown_reason():
    with pytest.raises(ValueError, match="unknown"):
        vxlan_py.VxlanError("nope")


# --- checksum and flow hash -------------------------------------------------------------------

def test_ipv4_checksum(impl):
    header = bytes(IP(src=SIP, dst=DIP, id=5, ttl=9) / UDP())[:20]
    assert impl.ipv4_checksum(header) == 0
    zeroed = header[:10] + b"\0\0" + header[12:]
    assert impl.ipv4_checksum(zeroed) == struct.unpack("!H", header[10:12])[0]
    assert impl.ipv4_checksum(b"") == 0xFFFF
    assert impl.ipv4_checksum(b"\x01") == 0xFEFF  # odd tail padded with zero


def test_flow_source_port_definition(impl):
    # TCP/IPv4: FNV-1a 32 over saddr daddr proto sport dport, scaled into [lo, hi].
    key = bytes([10, 1, 0, 1, 10, 1, 0, 2, 6]) + struct.pack("!HH", 40000, 80)
    assert impl.flow_source_port(INNER_TCP) == 49152 + (fnv1a32(key) * 16384 >> 32)
    assert impl.flow_source_port(INNER_TCP, 1000, 1999) == 1000 + (fnv1a32(key) * 1000 >> 32)
    # ICMP: no ports, hashed as zeros.
    icmp = bytes(eth() / IP(src="10.1.0.1", dst="10.1.0.2") / ICMP())
    key = bytes([10, 1, 0, 1, 10, 1, 0, 2, 1, 0, 0, 0, 0])
    assert impl.flow_source_port(icmp) == 49152 + (fnv1a32(key) * 16384 >> 32)
    # Non-IPv4 and fragments: dst MAC + src MAC.
    assert impl.flow_source_port(INNER_ARP) == 49152 + (fnv1a32(INNER_ARP[:12]) * 16384 >> 32)
    frag = bytes(eth() / IP(flags="MF") / UDP() / b"x")
    assert impl.flow_source_port(frag) == 49152 + (fnv1a32(frag[:12]) * 16384 >> 32)
    assert impl.flow_source_port(b"\x07") == 49152 + (fnv1a32(b"\x07") * 16384 >> 32)


def test_flow_source_port_stable_per_flow_and_spread_across_flows(impl):
    def frame(sport, payload):
        return bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2", id=len(payload), ttl=len(payload) % 50 + 1)
                     / TCP(sport=sport, dport=443, seq=len(payload)) / payload)

    for sport in (1025, 40000, 65535):
        ports = {impl.flow_source_port(frame(sport, b"x" * k)) for k in range(20)}
        assert len(ports) == 1  # payload, IP id, TTL and TCP seq do not move the flow
    ports = [impl.flow_source_port(frame(sport, b"")) for sport in range(30000, 30256)]
    assert all(49152 <= p <= 65535 for p in ports)
    assert len(set(ports)) > 240  # 256 flows into 16384 ports: a handful of collisions at most
    assert len(set(impl.encap(frame(s, b""), 1, **ADDRS)[34:36] for s in range(30000, 30016))) > 1


def test_flow_source_port_range(impl):
    assert {impl.flow_source_port(INNER_TCP[:k], 7, 7) for k in range(60)} == {7}
    for k in range(80):
        assert 0 <= impl.flow_source_port(INNER_TCP[:k] + bytes([k]), 0, 3) <= 3
    with pytest.raises(ValueError, match="lo"):
        impl.flow_source_port(INNER_TCP, 5, 4)
    with pytest.raises(ValueError, match="hi"):
        impl.flow_source_port(INNER_TCP, 0, 65536)


# --- twin equality ----------------------------------------------------------------------------

def _random_inner(rng):
    kind = rng.randrange(8)
    ip = dict(src=f"10.{rng.randrange(256)}.0.{rng.randrange(256)}", dst=f"10.0.{rng.randrange(256)}.1",
              id=rng.randrange(65536), ttl=rng.randrange(1, 256))
    payload = rng.randbytes(rng.randrange(64))
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 1:
        return bytes(eth() / IP(**ip) / TCP(sport=rng.randrange(65536), dport=rng.randrange(65536)) / payload)
    if kind == 2:
        return bytes(eth() / IP(**ip) / UDP(sport=rng.randrange(65536), dport=rng.randrange(65536)) / payload)
    if kind == 3:
        return bytes(eth() / IP(flags=rng.choice(["MF", 0]), frag=rng.randrange(2) * 100, **ip)
                     / UDP() / payload)
    if kind == 4:
        return bytes(eth() / IP(options=[IPOption_NOP()] * rng.randrange(1, 40), **ip) / TCP() / payload)
    if kind == 5:
        return bytes(eth() / IPv6() / UDP() / payload)
    if kind == 6:  # IPv4 ethertype with a random, often broken, IP header
        return bytes(eth(type=0x0800)) + rng.randbytes(rng.randrange(60))
    return bytes(eth() / IP(**ip) / TCP())[:rng.randrange(14, 54)]


@pytest.mark.skipif(len(IMPLEMENTATIONS) < 2, reason="only one implementation importable")
def test_twins_identical_on_random_frames():
    rng = random.Random(7348)
    ref = vxlan_py
    for twin in IMPLEMENTATIONS.values():
        if twin is ref:
            continue
        for _ in range(2000):
            inner = _random_inner(rng)
            kw = dict(vni=rng.randrange(1 << 24), src_mac=rng.randbytes(6), dst_mac=rng.randbytes(6),
                      src_ip=rng.randbytes(4), dst_ip=rng.randbytes(4), ttl=rng.randrange(256),
                      ip_id=rng.randrange(65536), udp_csum=rng.random() < 0.5)
            lo = rng.randrange(65536)
            hi = rng.randrange(lo, 65536)
            assert twin.flow_source_port(inner) == ref.flow_source_port(inner)
            assert twin.flow_source_port(inner, lo, hi) == ref.flow_source_port(inner, lo, hi)
            assert twin.ipv4_checksum(inner) == ref.ipv4_checksum(inner)
            frame = ref.encap(inner, **kw)
            assert twin.encap(inner, **kw) == frame
            assert twin.decap(frame) == ref.decap(frame) == (kw["vni"], inner)
            # Damage: flip header bytes, cut, or pad; both must agree on result or error.
            bad = bytearray(frame)
            for _ in range(rng.randrange(1, 4)):
                bad[rng.randrange(min(len(bad), 60))] = rng.randrange(256)
            cut = bytes(bad[:rng.randrange(len(bad) + 1)]) if rng.random() < 0.3 else bytes(bad)
            for candidate in (bytes(bad), cut, inner, frame + rng.randbytes(rng.randrange(20))):
                assert outcome(twin.decap, candidate) == outcome(ref.decap, candidate)

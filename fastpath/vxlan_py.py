"""Pure-Python reference VXLAN (RFC 7348) header codec for an IPv4 underlay; _vxlan_c.pyx must match it byte for byte."""

import operator
import struct

# Every multi-byte field below is in network (big-endian) byte order on the wire.
VXLAN_PORT = 4789  # IANA-assigned UDP destination port
VXLAN_HLEN = 8  # flags(1) reserved(3) VNI(3) reserved(1)
OUTER_HLEN = 50  # Ethernet 14 + IPv4 20 (no options) + UDP 8 + VXLAN 8, as written by encap()
VXLAN_FLAG_I = 0x08  # "VNI is valid"; the only flag bit this codec writes or checks

# VxlanError.reason values, one per way decap() refuses a frame.
REASONS = frozenset({
    "truncated",  # the frame ends before the outer header it has reached so far
    "not_ipv4",  # ethertype is not 0x0800 (VLAN tags included) or the IP version is not 4
    "bad_ihl",  # IHL < 5, or the IPv4 header runs past the end of the frame
    "fragment",  # MF set or fragment offset != 0
    "not_udp",  # IP protocol is not 17
    "not_vxlan_port",  # UDP destination port is not VXLAN_PORT
    "bad_length",  # IP total length or UDP length disagrees with the frame or each other
    "bad_flags",  # VXLAN I flag clear
    "bad_ip_csum",  # IPv4 header checksum does not verify
})

_ETH_HLEN = 14
_ETH_P_IP = 0x0800
_IPPROTO_UDP = 17
_IP_DF = 0x4000
_IP_MF_OFFSET = 0x3FFF  # MF flag + 13-bit fragment offset
_PORT_PROTOS = (6, 17, 33, 132, 136)  # TCP, UDP, DCCP, SCTP, UDP-Lite: sport, dport lead the L4 header
_MAX_INNER = 0xFFFF - 20 - 8 - VXLAN_HLEN  # the IPv4 total length field is 16 bits
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


class VxlanError(ValueError):
    """decap() refused a frame: .reason is one of REASONS, .detail says what was seen."""

    def __init__(self, reason, detail=""):
        if reason not in REASONS:
            raise ValueError(f"unknown VxlanError reason {reason!r}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self):
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def _bytes(obj):
    """Contract: any bytes-like object is accepted; non-buffers raise TypeError."""
    return obj if type(obj) is bytes else memoryview(obj).tobytes()


def _fixed(obj, name, size):
    data = _bytes(obj)
    if len(data) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(data)}")
    return data


def _uint(value, name, limit):
    value = operator.index(value)
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in 0..{limit}, got {value}")
    return value


def ipv4_checksum(header):
    """RFC 1071 Internet checksum of header (an odd tail is padded with a zero byte).

    Summing a header that already carries its checksum gives 0 when it is valid.
    """
    data = _bytes(header)
    if len(data) & 1:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))  # 16-bit big-endian words
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _flow_key(f):
    """The bytes flow_source_port() hashes.

    Untagged, unfragmented IPv4 inner frame (ethertype 0x0800, version 4, IHL >= 5, whole IP
    header present): saddr(4) daddr(4) proto(1) sport(2) dport(2), 13 bytes as on the wire; the
    ports are zero unless proto is TCP/UDP/DCCP/SCTP/UDP-Lite and 4 L4 bytes are present.
    Anything else: the first 12 bytes, dst MAC + src MAC (fewer if the frame is shorter).
    """
    if len(f) >= _ETH_HLEN + 20 and f[12] == 0x08 and f[13] == 0x00 and f[14] >> 4 == 4:
        l4 = _ETH_HLEN + (f[14] & 0x0F) * 4
        if l4 >= _ETH_HLEN + 20 and len(f) >= l4 and not ((f[20] << 8) | f[21]) & _IP_MF_OFFSET:
            proto = f[23]
            ports = f[l4:l4 + 4] if proto in _PORT_PROTOS and len(f) >= l4 + 4 else b"\0\0\0\0"
            return f[26:34] + bytes((proto,)) + ports
    return f[:12]


def flow_source_port(inner_frame, lo=49152, hi=65535):
    """Outer UDP source port for inner_frame, stable per inner flow (cf. udp_flow_src_port()).

    h = FNV-1a 32 (offset basis 0x811C9DC5, prime 0x01000193) over _flow_key(inner_frame);
    port = lo + (h * (hi - lo + 1) >> 32), so lo <= port <= hi.
    """
    lo = _uint(lo, "lo", 0xFFFF)
    hi = _uint(hi, "hi", 0xFFFF)
    if lo > hi:
        raise ValueError(f"lo must not exceed hi, got {lo} > {hi}")
    h = _FNV_OFFSET
    for b in _flow_key(_bytes(inner_frame)):
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return lo + (h * (hi - lo + 1) >> 32)


def encap(inner_frame, vni, src_mac, dst_mac, src_ip, dst_ip, ttl=64, ip_id=0, udp_csum=False):
    """Return Ethernet + IPv4 + UDP + VXLAN + inner_frame (OUTER_HLEN + len(inner_frame) bytes).

    IPv4: no options, tos 0, DF, protocol UDP, header checksum filled in. UDP: source port
    flow_source_port(inner_frame), destination VXLAN_PORT, checksum 0 unless udp_csum, then the
    pseudo-header checksum with a computed 0 sent as 0xFFFF. VXLAN: flags I, VNI, reserved zero.
    Bad arguments raise ValueError naming the parameter (TypeError for non-buffers/non-ints).
    """
    inner = _bytes(inner_frame)
    if len(inner) > _MAX_INNER:
        raise ValueError(f"inner_frame must be at most {_MAX_INNER} bytes, got {len(inner)}")
    vni = _uint(vni, "vni", 0xFFFFFF)
    src_mac = _fixed(src_mac, "src_mac", 6)
    dst_mac = _fixed(dst_mac, "dst_mac", 6)
    src_ip = _fixed(src_ip, "src_ip", 4)
    dst_ip = _fixed(dst_ip, "dst_ip", 4)
    ttl = _uint(ttl, "ttl", 0xFF)
    ip_id = _uint(ip_id, "ip_id", 0xFFFF)

    udp_len = 8 + VXLAN_HLEN + len(inner)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ip_id, _IP_DF, ttl,
                               _IPPROTO_UDP, 0, src_ip, dst_ip))
    struct.pack_into("!H", ip, 10, ipv4_checksum(ip))
    sport = flow_source_port(inner)
    payload = struct.pack("!B3xI", VXLAN_FLAG_I, vni << 8) + inner  # VNI in the top 24 bits
    csum = 0
    if udp_csum:
        pseudo = src_ip + dst_ip + struct.pack("!xBH", _IPPROTO_UDP, udp_len)
        csum = ipv4_checksum(pseudo + struct.pack("!HHHH", sport, VXLAN_PORT, udp_len, 0) + payload)
        csum = csum or 0xFFFF  # RFC 768: a transmitted 0 means "no checksum"
    udp = struct.pack("!HHHH", sport, VXLAN_PORT, udp_len, csum)
    return dst_mac + src_mac + b"\x08\x00" + bytes(ip) + udp + payload


def decap(frame):
    """Return (vni, inner_frame) from an untagged Ethernet/IPv4/UDP/VXLAN frame.

    Checks run in this order and raise VxlanError with the reason shown: Ethernet header
    present (truncated); ethertype 0x0800 (not_ipv4); 20 IP bytes present (truncated); version 4
    (not_ipv4); IHL >= 5 and the header within the frame (bad_ihl); header checksum (bad_ip_csum);
    MF clear and offset 0 (fragment); protocol 17 (not_udp); UDP header present (truncated);
    dport VXLAN_PORT (not_vxlan_port); VXLAN header present (truncated); IP total length covers
    the headers and fits the frame, UDP length == IP payload length (bad_length); I flag set
    (bad_flags). IP options are skipped. Bytes past the IP total length are Ethernet padding and
    dropped. Other VXLAN flag and reserved bits are ignored, as RFC 7348 says receivers must.
    The UDP checksum is not verified (RFC 7348 lets receivers accept without checking it).
    """
    f = _bytes(frame)
    n = len(f)
    if n < _ETH_HLEN:
        raise VxlanError("truncated", f"{n}-byte frame, Ethernet needs {_ETH_HLEN}")
    ethertype = (f[12] << 8) | f[13]
    if ethertype != _ETH_P_IP:
        raise VxlanError("not_ipv4", f"ethertype 0x{ethertype:04x}")
    if n < _ETH_HLEN + 20:
        raise VxlanError("truncated", f"{n}-byte frame, IPv4 needs {_ETH_HLEN + 20}")
    if f[14] >> 4 != 4:
        raise VxlanError("not_ipv4", f"IP version {f[14] >> 4}")
    hl = (f[14] & 0x0F) * 4
    if hl < 20 or _ETH_HLEN + hl > n:
        raise VxlanError("bad_ihl", f"IHL {hl // 4} in a {n}-byte frame")
    if ipv4_checksum(f[_ETH_HLEN:_ETH_HLEN + hl]):
        raise VxlanError("bad_ip_csum", f"header checksum 0x{(f[24] << 8) | f[25]:04x}")
    frag = (f[20] << 8) | f[21]
    if frag & _IP_MF_OFFSET:
        raise VxlanError("fragment", f"flags/offset 0x{frag:04x}")
    if f[23] != _IPPROTO_UDP:
        raise VxlanError("not_udp", f"IP protocol {f[23]}")
    u = _ETH_HLEN + hl  # UDP header offset
    if n < u + 8:
        raise VxlanError("truncated", f"{n}-byte frame, UDP needs {u + 8}")
    dport = (f[u + 2] << 8) | f[u + 3]
    if dport != VXLAN_PORT:
        raise VxlanError("not_vxlan_port", f"UDP dport {dport}")
    if n < u + 8 + VXLAN_HLEN:
        raise VxlanError("truncated", f"{n}-byte frame, VXLAN needs {u + 8 + VXLAN_HLEN}")
    tot = (f[16] << 8) | f[17]
    if tot < hl + 8 + VXLAN_HLEN or _ETH_HLEN + tot > n:
        raise VxlanError("bad_length", f"IP total length {tot} in a {n}-byte frame")
    ulen = (f[u + 4] << 8) | f[u + 5]
    if ulen != tot - hl:
        raise VxlanError("bad_length", f"UDP length {ulen}, IP payload {tot - hl}")
    v = u + 8  # VXLAN header offset
    if not f[v] & VXLAN_FLAG_I:
        raise VxlanError("bad_flags", f"VXLAN flags 0x{f[v]:02x} without I")
    vni = (f[v + 4] << 16) | (f[v + 5] << 8) | f[v + 6]
    return vni, f[v + VXLAN_HLEN:_ETH_HLEN + tot]

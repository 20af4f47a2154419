# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython twin of vxlan_py: the same VXLAN codec API on raw byte pointers, with byte-identical results and errors."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.number cimport PyNumber_Index
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

# One definition of the public constants and the exception: the reference module's, re-exported.
from .vxlan_py import OUTER_HLEN, REASONS, VXLAN_FLAG_I, VXLAN_HLEN, VXLAN_PORT, VxlanError

# Mirrors of vxlan_py's private constants; every multi-byte wire field is network byte order.
cdef enum:
    ETH_HLEN = 14
    ETH_P_IP = 0x0800
    IPPROTO_UDP = 17
    IP_DF = 0x4000
    IP_MF_OFFSET = 0x3FFF  # MF flag + 13-bit fragment offset
    C_VXLAN_PORT = 4789
    C_VXLAN_HLEN = 8
    C_FLAG_I = 0x08
    C_OUTER_HLEN = 50
    MAX_INNER = 0xFFFF - 20 - 8 - 8  # the IPv4 total length field is 16 bits

cdef uint32_t FNV_OFFSET = 0x811C9DC5u
cdef uint32_t FNV_PRIME = 0x01000193u


cdef inline uint16_t _rd16(const uint8_t* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline void _wr16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline uint64_t _sum16(const uint8_t* p, Py_ssize_t n, uint64_t acc) noexcept nogil:
    """Add n bytes as big-endian 16-bit words to acc; an odd tail byte is padded with zero."""
    cdef Py_ssize_t i
    for i in range(0, n - 1, 2):
        acc += (p[i] << 8) | p[i + 1]
    if n & 1:
        acc += p[n - 1] << 8
    return acc


cdef inline uint16_t _fold(uint64_t acc) noexcept nogil:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return (~acc) & 0xFFFF


cdef inline uint32_t _fnv(uint32_t h, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * FNV_PRIME  # uint32_t arithmetic wraps mod 2**32
    return h


cdef inline bint _is_proto_with_ports(uint8_t proto) noexcept nogil:
    return proto == 6 or proto == 17 or proto == 33 or proto == 132 or proto == 136


cdef uint32_t _flow_hash(const uint8_t* f, Py_ssize_t n) noexcept nogil:
    """FNV-1a 32 over the key vxlan_py._flow_key() defines."""
    cdef uint32_t h = FNV_OFFSET
    cdef Py_ssize_t l4
    cdef int k
    if n >= ETH_HLEN + 20 and f[12] == 0x08 and f[13] == 0x00 and f[14] >> 4 == 4:
        l4 = ETH_HLEN + (f[14] & 0x0F) * 4
        if l4 >= ETH_HLEN + 20 and n >= l4 and not (_rd16(f + 20) & IP_MF_OFFSET):
            h = _fnv(h, f + 26, 8)  # saddr, daddr
            h = _fnv(h, f + 23, 1)  # proto
            if _is_proto_with_ports(f[23]) and n >= l4 + 4:
                return _fnv(h, f + l4, 4)
            for k in range(4):  # no ports: four zero bytes, and h ^ 0 == h
                h *= FNV_PRIME
            return h
    return _fnv(h, f, 12 if n > 12 else n)


cdef inline uint16_t _map_port(uint32_t h, uint32_t lo, uint32_t hi) noexcept nogil:
    return <uint16_t>(lo + ((<uint64_t>h * (hi - lo + 1)) >> 32))


cdef inline bytes _bytes(object obj):
    return <bytes>obj if type(obj) is bytes else memoryview(obj).tobytes()


cdef bytes _fixed(object obj, str name, Py_ssize_t size):
    cdef bytes data = _bytes(obj)
    if len(data) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(data)}")
    return data


cdef long _uint(object value, str name, long limit) except -1:
    value = PyNumber_Index(value)
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in 0..{limit}, got {value}")
    return value


def ipv4_checksum(header):
    """RFC 1071 Internet checksum of header (an odd tail is padded with a zero byte).

    Summing a header that already carries its checksum gives 0 when it is valid.
    """
    cdef bytes data = _bytes(header)
    return _fold(_sum16(<const uint8_t*>PyBytes_AS_STRING(data), len(data), 0))


def flow_source_port(inner_frame, lo=49152, hi=65535):
    """Outer UDP source port for inner_frame, stable per inner flow; see vxlan_py.flow_source_port."""
    cdef long clo = _uint(lo, "lo", 0xFFFF)
    cdef long chi = _uint(hi, "hi", 0xFFFF)
    if clo > chi:
        raise ValueError(f"lo must not exceed hi, got {clo} > {chi}")
    cdef bytes data = _bytes(inner_frame)
    return _map_port(_flow_hash(<const uint8_t*>PyBytes_AS_STRING(data), len(data)), clo, chi)


def encap(inner_frame, vni, src_mac, dst_mac, src_ip, dst_ip, ttl=64, ip_id=0, udp_csum=False):
    """Return Ethernet + IPv4 + UDP + VXLAN + inner_frame; see vxlan_py.encap for the contract."""
    cdef bytes inner = _bytes(inner_frame)
    cdef Py_ssize_t n = len(inner)
    if n > MAX_INNER:
        raise ValueError(f"inner_frame must be at most {MAX_INNER} bytes, got {n}")
    cdef uint32_t cvni = _uint(vni, "vni", 0xFFFFFF)
    cdef bytes smac = _fixed(src_mac, "src_mac", 6)
    cdef bytes dmac = _fixed(dst_mac, "dst_mac", 6)
    cdef bytes sip = _fixed(src_ip, "src_ip", 4)
    cdef bytes dip = _fixed(dst_ip, "dst_ip", 4)
    cdef uint8_t cttl = _uint(ttl, "ttl", 0xFF)
    cdef uint16_t cid = _uint(ip_id, "ip_id", 0xFFFF)
    cdef bint want_csum = udp_csum

    cdef const uint8_t* src = <const uint8_t*>PyBytes_AS_STRING(inner)
    cdef uint16_t udp_len = 8 + C_VXLAN_HLEN + n
    cdef bytes out = PyBytes_FromStringAndSize(NULL, C_OUTER_HLEN + n)
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    cdef uint64_t acc

    # Ethernet: dst(6) src(6) type(2) at 0
    memcpy(o, PyBytes_AS_STRING(dmac), 6)
    memcpy(o + 6, PyBytes_AS_STRING(smac), 6)
    _wr16(o + 12, ETH_P_IP)
    # IPv4 at 14: ver/ihl, tos, total length, id, flags/offset, ttl, proto, csum, saddr, daddr
    o[14] = 0x45
    o[15] = 0
    _wr16(o + 16, 20 + udp_len)
    _wr16(o + 18, cid)
    _wr16(o + 20, IP_DF)
    o[22] = cttl
    o[23] = IPPROTO_UDP
    _wr16(o + 24, 0)
    memcpy(o + 26, PyBytes_AS_STRING(sip), 4)
    memcpy(o + 30, PyBytes_AS_STRING(dip), 4)
    _wr16(o + 24, _fold(_sum16(o + 14, 20, 0)))
    # UDP at 34: sport, dport, length, csum (filled last)
    _wr16(o + 34, _map_port(_flow_hash(src, n), 49152, 65535))
    _wr16(o + 36, C_VXLAN_PORT)
    _wr16(o + 38, udp_len)
    _wr16(o + 40, 0)
    # VXLAN at 42: flags(1) reserved(3) VNI(3) reserved(1), then the inner frame at 50
    memset(o + 42, 0, C_VXLAN_HLEN)
    o[42] = C_FLAG_I
    o[46] = (cvni >> 16) & 0xFF
    o[47] = (cvni >> 8) & 0xFF
    o[48] = cvni & 0xFF
    if n:
        memcpy(o + 50, src, n)
    if want_csum:
        # Pseudo-header: saddr, daddr, zero, proto, UDP length; then UDP header + payload.
        acc = _sum16(o + 26, 8, IPPROTO_UDP + udp_len)
        acc = _fold(_sum16(o + 34, udp_len, acc))
        _wr16(o + 40, acc if acc else 0xFFFF)  # RFC 768: a transmitted 0 means "no checksum"
    return out


def decap(frame):
    """Return (vni, inner_frame); checks, their order and reasons are vxlan_py.decap's."""
    cdef bytes data = _bytes(frame)
    cdef const uint8_t* f = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = len(data)
    cdef Py_ssize_t hl, u, v
    cdef uint16_t ethertype, frag, dport, tot, ulen
    if n < ETH_HLEN:
        raise VxlanError("truncated", f"{n}-byte frame, Ethernet needs {ETH_HLEN}")
    ethertype = _rd16(f + 12)
    if ethertype != ETH_P_IP:
        raise VxlanError("not_ipv4", f"ethertype 0x{ethertype:04x}")
    if n < ETH_HLEN + 20:
        raise VxlanError("truncated", f"{n}-byte frame, IPv4 needs {ETH_HLEN + 20}")
    if f[14] >> 4 != 4:
        raise VxlanError("not_ipv4", f"IP version {f[14] >> 4}")
    hl = (f[14] & 0x0F) * 4
    if hl < 20 or ETH_HLEN + hl > n:
        raise VxlanError("bad_ihl", f"IHL {hl // 4} in a {n}-byte frame")
    if _fold(_sum16(f + ETH_HLEN, hl, 0)):
        raise VxlanError("bad_ip_csum", f"header checksum 0x{_rd16(f + 24):04x}")
    frag = _rd16(f + 20)
    if frag & IP_MF_OFFSET:
        raise VxlanError("fragment", f"flags/offset 0x{frag:04x}")
    if f[23] != IPPROTO_UDP:
        raise VxlanError("not_udp", f"IP protocol {f[23]}")
    u = ETH_HLEN + hl  # UDP header offset
    if n < u + 8:
        raise VxlanError("truncated", f"{n}-byte frame, UDP needs {u + 8}")
    dport = _rd16(f + u + 2)
    if dport != C_VXLAN_PORT:
        raise VxlanError("not_vxlan_port", f"UDP dport {dport}")
    if n < u + 8 + C_VXLAN_HLEN:
        raise VxlanError("truncated", f"{n}-byte frame, VXLAN needs {u + 8 + C_VXLAN_HLEN}")
    tot = _rd16(f + 16)
    if tot < hl + 8 + C_VXLAN_HLEN or ETH_HLEN + tot > n:
        raise VxlanError("bad_length", f"IP total length {tot} in a {n}-byte frame")
    ulen = _rd16(f + u + 4)
    if ulen != tot - hl:
        raise VxlanError("bad_length", f"UDP length {ulen}, IP payload {tot - hl}")
    v = u + 8  # VXLAN header offset
    if not f[v] & C_FLAG_I:
        raise VxlanError("bad_flags", f"VXLAN flags 0x{f[v]:02x} without I")
    vni = (f[v + 4] << 16) | (f[v + 5] << 8) | f[v + 6]
    return vni, PyBytes_FromStringAndSize(<const char*>f + v + C_VXLAN_HLEN, ETH_HLEN + tot - v - C_VXLAN_HLEN)

"""ctypes mirrors of ebpf/lib/structs.h and ebpf/lib/drop_reasons.h.

The C headers are the definition. These mirrors exist so the agent can write pinned maps after a
restart without recompiling (bcc's generated types need a compile). tests/ebpf/test_layout.py
checks every size and field offset here, and the byte packings derived from them
(``byte_packing``), against what bcc compiled from ebpf/layout_check.c, and that ``Verdict``
matches drop_reasons.h. Which map holds which struct: map_schema.py.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import socket
import struct

#: Bumped whenever a struct below changes: part of the pin path (bcc reuses a pinned map without
#: checking key/value sizes, so a new layout must never meet an old map).
LAYOUT_VERSION = 5


class Verdict(enum.IntEnum):
    """drop_reasons.h. Stable numbers; codes >= DROP_BASE are drops."""

    REDIRECT_PEER = 0
    PASS = 1
    PASS_ARP = 2
    PASS_OTHER = 3
    XDP_PASS = 4
    NAT_REDIRECT = 5
    NAT_PASS = 6
    UPLINK_PASS = 7
    XDP_NAT_REDIRECT = 8
    LOOPBACK_PASS = 9
    UNKNOWN_ENDPOINT = 16
    MALFORMED = 17
    SPOOFED_MAC = 18
    SPOOFED_IP = 19
    SPOOFED_ARP = 20
    ISOLATION = 21
    VLAN = 22
    UPLINK_SPOOFED = 23
    UPLINK_MALFORMED = 24
    NAT_NO_PORT = 25
    NAT_NO_ADDR = 26

    @property
    def is_drop(self) -> bool:
        return self >= DROP_BASE


DROP_BASE = 16
NR_VERDICTS = 32


class EndpointInfo(ctypes.Structure):
    """struct endpoint_info { __u8 mac[6]; __u16 flags; __be32 ip; __u32 net_id; };"""

    _fields_ = [("mac", ctypes.c_ubyte * 6), ("flags", ctypes.c_uint16), ("ip", ctypes.c_uint32),
                ("net_id", ctypes.c_uint32)]


class IpEndpoint(ctypes.Structure):
    """struct ip_endpoint { __u32 ifindex; __u32 net_id; __u8 mac[6]; __u16 flags; };"""

    _fields_ = [("ifindex", ctypes.c_uint32), ("net_id", ctypes.c_uint32), ("mac", ctypes.c_ubyte * 6),
                ("flags", ctypes.c_uint16)]


class SubnetKey(ctypes.Structure):
    """struct subnet_key { __u32 prefixlen; __be32 addr; };  (LPM trie key)"""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32)]


class Counter(ctypes.Structure):
    """struct counter { __u64 packets; __u64 bytes; };"""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class EndpointStats(ctypes.Structure):
    """struct endpoint_stats { struct counter redirected, passed, dropped; };"""

    _fields_ = [("redirected", Counter), ("passed", Counter), ("dropped", Counter)]


EP_F_INTERNAL = 1


class NetInfo(ctypes.Structure):
    """struct net_info { __u32 bridge_ifindex; __be32 gateway; __u8 gw_mac[6]; __u16 flags; };"""

    _fields_ = [("bridge_ifindex", ctypes.c_uint32), ("gateway", ctypes.c_uint32),
                ("gw_mac", ctypes.c_ubyte * 6), ("flags", ctypes.c_uint16)]


#: net_info.flags (structs.h NET_F_*)
NET_F_BRIDGED_NAT = 0x0001
NET_F_KERNEL_FWD = 0x0002        # the kernel forwards the network's frames (kernel forwarding + eBPF NAT)


# ---- NAT and conntrack
class NatCounter(enum.IntEnum):
    """nat_counters.h. Stable numbers."""

    CT_HIT = 0
    CT_NEW = 1
    CT_TWIN_REPAIR = 2
    PORT_RETRY = 3
    PORT_FAIL = 4
    ICMP_ERROR = 5
    SOCK_XLATE = 6
    SOCK_REVERSE = 7
    STEPS_EXCEEDED = 8
    FRAG_XLATE = 9
    FRAG_UNKNOWN = 10
    TTL_EXCEEDED = 11
    CT_RESTART = 12


NR_NAT_COUNTERS = 16

CT_DIR_ORIG, CT_DIR_REPLY = 0, 1
CT_STATES = {1: "new", 2: "established", 3: "fin", 4: "closed"}
CT_ST_NEW, CT_ST_ESTABLISHED, CT_ST_FIN, CT_ST_CLOSED = 1, 2, 3, 4
CT_F_LOOSE = 1
CT_K_DNAT, CT_K_SNAT, CT_K_LOCAL = 1, 2, 4


class CtKey(ctypes.Structure):
    """struct ct_key { __be32 saddr, daddr; __be16 sport, dport; __u8 proto; __u8 pad[3]; };"""

    _fields_ = [("saddr", ctypes.c_uint32), ("daddr", ctypes.c_uint32), ("sport", ctypes.c_uint16),
                ("dport", ctypes.c_uint16), ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3)]


class CtEntry(ctypes.Structure):
    """struct ct_entry: the translated tuple, direction, state, flags, kind, expiry, counters."""

    _fields_ = [("to_saddr", ctypes.c_uint32), ("to_daddr", ctypes.c_uint32), ("to_sport", ctypes.c_uint16),
                ("to_dport", ctypes.c_uint16), ("dir", ctypes.c_uint8), ("state", ctypes.c_uint8),
                ("flags", ctypes.c_uint8), ("kind", ctypes.c_uint8), ("expires_ns", ctypes.c_uint64),
                ("twin_checked_ns", ctypes.c_uint64), ("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class NatConfig(ctypes.Structure):
    """struct nat_config { __u64 netns_cookie; __u16 port_min, port_max; __u32 generation;
    __u32 entry[4]; };"""

    _fields_ = [("netns_cookie", ctypes.c_uint64), ("port_min", ctypes.c_uint16), ("port_max", ctypes.c_uint16),
                ("generation", ctypes.c_uint32), ("entry", ctypes.c_uint32 * 4)]


class NatRule(ctypes.Structure):
    """struct nat_rule: one compiled instruction (see control/nat/compiler.py)."""

    _fields_ = [("src", ctypes.c_uint32), ("src_mask", ctypes.c_uint32), ("dst", ctypes.c_uint32),
                ("dst_mask", ctypes.c_uint32), ("sport_min", ctypes.c_uint16), ("sport_max", ctypes.c_uint16),
                ("dport_min", ctypes.c_uint16), ("dport_max", ctypes.c_uint16), ("iif", ctypes.c_uint32),
                ("oif", ctypes.c_uint32), ("proto", ctypes.c_uint8), ("op", ctypes.c_uint8),
                ("neg", ctypes.c_uint16), ("on_match", ctypes.c_uint32), ("on_miss", ctypes.c_uint32),
                ("to_addr", ctypes.c_uint32), ("to_port_min", ctypes.c_uint16), ("to_port_max", ctypes.c_uint16),
                ("table", ctypes.c_uint32), ("shapes", ctypes.c_uint32), ("to_addr_max", ctypes.c_uint32),
                ("to_port_base", ctypes.c_uint16), ("to_flags", ctypes.c_uint16)]


#: struct nat_rule's to_flags
NAT_TO_ADDR = 1
NAT_TO_SHIFT = 2


class NatShape(ctypes.Structure):
    """struct nat_shape: one shape of a tuple-space classifier (masks, first pc)."""

    _fields_ = [("src_mask", ctypes.c_uint32), ("dst_mask", ctypes.c_uint32), ("sport_mask", ctypes.c_uint16),
                ("dport_mask", ctypes.c_uint16), ("iif_mask", ctypes.c_uint32), ("oif_mask", ctypes.c_uint32),
                ("proto_mask", ctypes.c_uint8), ("local_mask", ctypes.c_uint8), ("last", ctypes.c_uint16),
                ("first_pc", ctypes.c_uint32)]


class NatClsKey(ctypes.Structure):
    """struct nat_cls_key: a shape slot and a packet's fields under its masks."""

    _fields_ = [("shape", ctypes.c_uint32), ("saddr", ctypes.c_uint32), ("daddr", ctypes.c_uint32),
                ("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16), ("iif", ctypes.c_uint32),
                ("oif", ctypes.c_uint32), ("proto", ctypes.c_uint8), ("local", ctypes.c_uint8),
                ("pad", ctypes.c_uint16)]


class NatExactKey(ctypes.Structure):
    """struct nat_exact_key { __u32 table; __be32 daddr; __be16 dport; __u8 proto; __u8 pad; };"""

    _fields_ = [("table", ctypes.c_uint32), ("daddr", ctypes.c_uint32), ("dport", ctypes.c_uint16),
                ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


class NatExactVal(ctypes.Structure):
    """struct nat_exact_val { __be32 to_addr; __be16 to_port; __u8 iif_neg; __u8 pad; __u32 iif; };"""

    _fields_ = [("to_addr", ctypes.c_uint32), ("to_port", ctypes.c_uint16), ("iif_neg", ctypes.c_uint8),
                ("pad", ctypes.c_uint8), ("iif", ctypes.c_uint32)]


def byte_packing(mirror: type[ctypes.Structure], network_order: tuple[str, ...]) -> struct.Struct:
    """A ``struct.Struct`` over the bytes of ``mirror``, derived from its fields: one item per
    field in declaration order, except fields named ``pad*`` (zero bytes, no item); a field in
    ``network_order`` is raw bytes (``Ns``: pack ``ipaddress.packed`` / ``port.to_bytes(2,
    "big")``), any other an unsigned integer of its size in host order. For code that builds
    thousands of keys as bytes (nat_maps.py) without a second hand-written copy of the layout."""
    fmt, end = "=", 0
    for name, ftype in mirror._fields_:
        desc = getattr(mirror, name)
        if desc.offset > end:
            fmt += f"{desc.offset - end}x"
        if name.startswith("pad"):
            fmt += f"{desc.size}x"
        elif name in network_order:
            fmt += f"{desc.size}s"
        else:
            fmt += {1: "B", 2: "H", 4: "I", 8: "Q"}[desc.size]
        end = desc.offset + desc.size
    fmt += f"{ctypes.sizeof(mirror) - end}x" if ctypes.sizeof(mirror) > end else ""
    packing = struct.Struct(fmt)
    assert packing.size == ctypes.sizeof(mirror), (mirror.__name__, fmt)
    return packing


#: struct nat_exact_key as bytes: pack(table, daddr 4 bytes, dport 2 bytes, proto)
NAT_EXACT_KEY_BYTES = byte_packing(NatExactKey, network_order=("daddr", "dport"))
NAT_CLS_KEY_BYTES = byte_packing(NatClsKey, network_order=("saddr", "daddr"))
#: struct nat_exact_val as bytes: pack(to_addr 4 bytes, to_port 2 bytes, iif_neg, iif)
NAT_EXACT_VAL_BYTES = byte_packing(NatExactVal, network_order=("to_addr", "to_port"))

#: nat_exact table id of the published ports' targets (structs.h NAT_HAIRPIN_TABLE)
NAT_HAIRPIN_TABLE = 0


class FragKey(ctypes.Structure):
    """struct frag_key { __be32 saddr, daddr; __be16 id; __u8 proto; __u8 pad; };"""

    _fields_ = [("saddr", ctypes.c_uint32), ("daddr", ctypes.c_uint32), ("id", ctypes.c_uint16),
                ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


class FragPorts(ctypes.Structure):
    """struct frag_ports { __be16 sport, dport; };"""

    _fields_ = [("sport", ctypes.c_uint16), ("dport", ctypes.c_uint16)]


class SockXlate(ctypes.Structure):
    """struct sock_xlate { __be32 orig_addr, nat_addr; __be16 orig_port, nat_port; __be32 want_saddr, sock_saddr; };"""

    _fields_ = [("orig_addr", ctypes.c_uint32), ("nat_addr", ctypes.c_uint32), ("orig_port", ctypes.c_uint16),
                ("nat_port", ctypes.c_uint16), ("want_saddr", ctypes.c_uint32), ("sock_saddr", ctypes.c_uint32)]


#: NAT_OP_* and NAT_NEG_* of structs.h
NAT_OP_GOTO, NAT_OP_ACCEPT, NAT_OP_DNAT, NAT_OP_SNAT, NAT_OP_MASQUERADE, NAT_OP_REDIRECT, NAT_OP_LOOKUP = range(7)
NAT_NEG_SRC, NAT_NEG_DST, NAT_NEG_SPORT, NAT_NEG_DPORT = 0x01, 0x02, 0x04, 0x08
NAT_NEG_IIF, NAT_NEG_OIF, NAT_NEG_PROTO = 0x10, 0x20, 0x40
NAT_SRC_LOCAL, NAT_NEG_SRC_LOCAL, NAT_DST_LOCAL, NAT_NEG_DST_LOCAL = 0x100, 0x200, 0x400, 0x800
NAT_PORTS_REQUIRED = 0x1000
NAT_HOOKS = {"PREROUTING": 0, "INPUT": 1, "OUTPUT": 2, "POSTROUTING": 3}


def be16_value(v: int) -> int:
    """Inverse of be16: the port number held in a network-order u16 slot."""
    return int.from_bytes(v.to_bytes(2, "little"), "big")


# ---- byte-order helpers: "be" fields hold the network-order bytes in a host-order integer slot
def be32(ip: str) -> int:
    """IPv4 text -> the u32 whose in-memory bytes are the address in network order."""
    return int.from_bytes(socket.inet_aton(str(ipaddress.IPv4Address(ip))), "little")


def be16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def mac_bytes(mac: str):
    return (ctypes.c_ubyte * 6)(*bytes.fromhex(mac.replace(":", "")))


def ip_text(v: int) -> str:
    return socket.inet_ntoa(v.to_bytes(4, "little"))

"""ctypes mirrors of ebpf/lib/structs.h and ebpf/lib/drop_reasons.h.

The C headers are the definition. These mirrors exist so the agent can write pinned maps after a
restart without recompiling (bcc's generated types need a compile). tests/ebpf/test_layout.py
checks every size and field offset here against what bcc compiled from ebpf/layout_check.c, and
that ``Verdict`` matches drop_reasons.h.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import socket

#: Bumped whenever a struct below changes: part of the pin path (bcc reuses a pinned map without
#: checking key/value sizes, so a new layout must never meet an old map).
LAYOUT_VERSION = 2


class Verdict(enum.IntEnum):
    """drop_reasons.h. Stable numbers; codes >= DROP_BASE are drops."""

    REDIRECT_PEER = 0
    PASS = 1
    PASS_ARP = 2
    PASS_OTHER = 3
    XDP_PASS = 4
    UNKNOWN_ENDPOINT = 16
    MALFORMED = 17
    SPOOFED_MAC = 18
    SPOOFED_IP = 19
    SPOOFED_ARP = 20
    ISOLATION = 21
    VLAN = 22
    UPLINK_SPOOFED = 23
    UPLINK_MALFORMED = 24

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


class PublishedKey(ctypes.Structure):
    """struct published_key { __be32 ip; __be16 port; __u8 proto; __u8 pad; };"""

    _fields_ = [("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("pad", ctypes.c_uint8)]


class SubnetKey(ctypes.Structure):
    """struct subnet_key { __u32 prefixlen; __be32 addr; };  (LPM trie key)"""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32)]


class Counter(ctypes.Structure):
    """struct counter { __u64 packets; __u64 bytes; };"""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class EndpointStats(ctypes.Structure):
    """struct endpoint_stats { struct counter redirected, passed, dropped; };"""

    _fields_ = [("redirected", Counter), ("passed", Counter), ("dropped", Counter)]


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

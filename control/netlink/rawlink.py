"""Single rtnetlink requests sent as raw bytes, for the few that pyroute2 0.9 cannot build.

Contract: ``request`` sends one message with NLM_F_REQUEST | NLM_F_ACK on a fresh NETLINK_ROUTE
socket of the calling thread's netns and returns once the kernel acknowledged it; an error reply
raises OSError with the kernel's errno. Netlink headers and attributes are in host byte order;
attributes are padded to 4 bytes (NLA_ALIGN).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct

RTM_SETLINK = 19
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
AF_BRIDGE = 7
IFLA_PROTINFO = 12
IFLA_BRPORT_MODE = 4            # the bridge port's hairpin mode (u8)

_seq = itertools.count(1)


def nla(attr_type: int, payload: bytes) -> bytes:
    """One netlink attribute: struct nlattr {u16 len; u16 type} + payload, padded to 4 bytes."""
    head = struct.pack("HH", 4 + len(payload), attr_type)
    return head + payload + b"\0" * (-len(payload) % 4)


def ifinfomsg(family: int, index: int) -> bytes:
    """struct ifinfomsg {u8 family; u8 pad; u16 type; i32 index; u32 flags; u32 change}."""
    return struct.pack("BBHiII", family, 0, 0, index, 0, 0)


def request(msg_type: int, payload: bytes) -> None:
    seq = next(_seq)
    msg = struct.pack("IHHII", 16 + len(payload), msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + payload
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.send(msg)
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind, _, rseq, _ = struct.unpack_from("IHHII", data, off)
                if kind == NLMSG_ERROR and rseq == seq:
                    (err,) = struct.unpack_from("i", data, off + 16)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return
                off += (length + 3) & ~3
                if length == 0:
                    break


def set_bridge_port_hairpin(index: int, on: bool) -> None:
    """RTM_SETLINK, family AF_BRIDGE, IFLA_PROTINFO (nested: the bridge reads a non-nested one as
    a port state) holding IFLA_BRPORT_MODE: what ``bridge link set dev X hairpin on`` sends."""
    protinfo = nla(IFLA_PROTINFO | NLA_F_NESTED, nla(IFLA_BRPORT_MODE, struct.pack("B", int(on))))
    request(RTM_SETLINK, ifinfomsg(AF_BRIDGE, index) + protinfo)

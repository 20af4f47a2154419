"""A cheap "may the host's IPv4 addresses or routes have changed?" test, for callers that keep a
copy of them (the eBPF NAT's host-address maps)."""

from __future__ import annotations

import errno
import socket
import struct


class AddressWatch:
    """Whether the host's IPv4 addresses or routes may have changed since the last look: a
    netlink socket subscribed to their groups (opened in the host netns) is drained, and anything
    read, or an overflow, means they may have. Nothing is parsed: the caller dumps again."""

    GROUPS = 0x10 | 0x40            # RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, self.GROUPS))
        self.sock.setblocking(False)
        self.fresh = False          # nothing seen yet: the first look says "changed"

    def changed(self) -> bool:
        changed = not self.fresh
        while True:
            try:
                self.sock.recv(65536)
                changed = True
            except BlockingIOError:
                break
            except OSError as e:    # ENOBUFS: events were lost
                changed = True
                if e.errno != errno.ENOBUFS:
                    break
        self.fresh = True
        return changed

    def invalidate(self) -> None:
        """The caller could not act on the last answer: say "changed" next time."""
        self.fresh = False

    def close(self) -> None:
        self.sock.close()


class LinkWatch:
    """Interfaces that appear, change or go in the host netns, as they happen: a netlink socket
    subscribed to RTMGRP_LINK (and woken by address and route changes too) (opened in the calling thread's netns, the host's). ``events()``
    drains it and returns ``[(kind, ifindex, name, master), ...]`` (kind "new" or "del"; master:
    the ifindex of the bridge it is a port of, 0 if none), or None if events were lost (ENOBUFS:
    the caller dumps the links again). Messages are struct nlmsghdr + struct ifinfomsg + rtattrs,
    host byte order."""

    # RTMGRP_LINK; and RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE only to wake the reader (their
    # messages are skipped here: a new interface's address matters as much as the interface)
    GROUP = 0x1 | 0x10 | 0x40
    RTM_NEWLINK, RTM_DELLINK = 16, 17
    IFLA_IFNAME, IFLA_MASTER = 3, 10

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, self.GROUP))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def events(self) -> list[tuple[str, int, str, int]] | None:
        out: list[tuple[str, int, str, int]] = []
        lost = False
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    lost = True
                    continue
                raise
            out.extend(self.parse(data))
        return None if lost else out

    @classmethod
    def parse(cls, data: bytes) -> list[tuple[str, int, str, int]]:
        out = []
        off = 0
        while off + 16 <= len(data):
            length, msg_type = struct.unpack_from("IH", data, off)
            if length < 16 or off + length > len(data):
                break               # malformed or cut short: the rest cannot be framed
            if msg_type in (cls.RTM_NEWLINK, cls.RTM_DELLINK) and length >= 32:
                (index,) = struct.unpack_from("i", data, off + 20)
                name, master = "", 0
                a = off + 32
                end = off + length
                while a + 4 <= end:
                    alen, atype = struct.unpack_from("HH", data, a)
                    if alen < 4:
                        break
                    payload = data[a + 4:a + alen]
                    atype &= 0x3FFF
                    if atype == cls.IFLA_IFNAME:
                        name = payload.split(b"\0", 1)[0].decode(errors="replace")
                    elif atype == cls.IFLA_MASTER and len(payload) >= 4:
                        (master,) = struct.unpack_from("I", payload)
                    a += (alen + 3) & ~3
                out.append(("new" if msg_type == cls.RTM_NEWLINK else "del", index, name, master))
            off += (length + 3) & ~3
        return out

    def close(self) -> None:
        self.sock.close()

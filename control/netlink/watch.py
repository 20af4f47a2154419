"""A cheap "may the host's IPv4 addresses or routes have changed?" test, for callers that keep a
copy of them (the eBPF NAT's host-address maps)."""

from __future__ import annotations

import errno
import socket


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

"""The IP protocols dockline knows, by name and by number: the one table every part shares.

Names are the lowercase ones iptables, Docker's ``-p 80/udp`` and ``dockline nat conntrack``
use. Numbers are the IP header's protocol field (IANA, IPPROTO_* of <netinet/in.h>), which is
what the BPF programs compare (struct ct_key.proto, struct nat_rule.proto, struct
nat_exact_key.proto).
"""

from __future__ import annotations

ICMP = 1            # IPPROTO_ICMP
TCP = 6             # IPPROTO_TCP
UDP = 17            # IPPROTO_UDP

#: name -> number, for every protocol a rule, a published port or a tracked flow can have
NUMBERS = {"tcp": TCP, "udp": UDP, "icmp": ICMP}
#: number -> name
NAMES = {number: name for name, number in NUMBERS.items()}

#: the protocols with ports (--sport/--dport, published ports), by name and by number
PORT_PROTOCOLS = ("tcp", "udp")
PORT_NUMBERS = frozenset(NUMBERS[p] for p in PORT_PROTOCOLS)


def number(name: str) -> int:
    """The protocol number of ``name`` ("tcp", "udp" or "icmp"); KeyError for anything else
    (callers validate user input first and name the problem themselves)."""
    return NUMBERS[name]


def name(num: int) -> str:
    """The name of protocol number ``num``, or the number as text if dockline has no name for it
    (what ``dockline nat conntrack`` shows)."""
    return NAMES.get(num, str(num))

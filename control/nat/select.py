"""The pure-Python twin of ebpf/lib/nat_select.h: which address and port a NAT target with
ranges picks, as the kernel's NAT core picks them (nf_nat_core.c), so that dockline and iptables
give a client the same translation.

- Address range A-B: ``A + ((jhash2([src, 0, 0, 0], initval=dst) * (B - A + 1)) >> 32)``, with
  src/dst the tuple's raw (network-order, read as a little-endian u32 on x86) addresses before
  this manip. Deterministic: the same client gets the same address (no random seed: zone 0).
- DNAT ports P-Q: the original port if inside, else P; ``P-Q/BASE``: P + (port - BASE) mod size
  (the offset in 16 bits).
- SNAT/MASQUERADE ports P-Q: the original port if inside, else random in the range (the kernel's
  choice is random too); ``/BASE`` (always 0 from iptables): P + port mod size.

Ports are host-order ints, addresses ``ipaddress.IPv4Address`` or dotted strings.
"""

from __future__ import annotations

import ipaddress
import random

_M = 0xFFFFFFFF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def jhash2(words: list[int], initval: int) -> int:
    """The kernel's jhash2 (Bob Jenkins' lookup3 over u32 words)."""
    a = b = c = (0xDEADBEEF + (len(words) << 2) + initval) & _M
    k, n = list(words), len(words)
    i = 0
    while n > 3:
        a, b, c = (a + k[i]) & _M, (b + k[i + 1]) & _M, (c + k[i + 2]) & _M
        a = (a - c) & _M; a ^= _rol(c, 4); c = (c + b) & _M          # noqa: E702 (the mix's shape)
        b = (b - a) & _M; b ^= _rol(a, 6); a = (a + c) & _M          # noqa: E702
        c = (c - b) & _M; c ^= _rol(b, 8); b = (b + a) & _M          # noqa: E702
        a = (a - c) & _M; a ^= _rol(c, 16); c = (c + b) & _M         # noqa: E702
        b = (b - a) & _M; b ^= _rol(a, 19); a = (a + c) & _M         # noqa: E702
        c = (c - b) & _M; c ^= _rol(b, 4); b = (b + a) & _M          # noqa: E702
        n -= 3
        i += 3
    if n == 0:
        return c
    if n == 3:
        c = (c + k[i + 2]) & _M
    if n >= 2:
        b = (b + k[i + 1]) & _M
    a = (a + k[i]) & _M
    c ^= b; c = (c - _rol(b, 14)) & _M                               # noqa: E702
    a ^= c; a = (a - _rol(c, 11)) & _M                               # noqa: E702
    b ^= a; b = (b - _rol(a, 25)) & _M                               # noqa: E702
    c ^= b; c = (c - _rol(b, 16)) & _M                               # noqa: E702
    a ^= c; a = (a - _rol(c, 4)) & _M                                # noqa: E702
    b ^= a; b = (b - _rol(a, 14)) & _M                               # noqa: E702
    c ^= b; c = (c - _rol(b, 24)) & _M                               # noqa: E702
    return c


def _raw(addr) -> int:
    """The address's 4 bytes as a little-endian u32: what the kernel's u32 view of a __be32 is
    on x86 (and what the BPF program reads)."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, "little")


def pick_addr(src, dst, lo, hi=None) -> ipaddress.IPv4Address:
    """The address a target ``lo[-hi]`` picks for the tuple src -> dst."""
    lo = ipaddress.IPv4Address(lo)
    if hi is None or ipaddress.IPv4Address(hi) == lo:
        return lo
    dist = int(ipaddress.IPv4Address(hi)) - int(lo) + 1
    j = jhash2([_raw(src), 0, 0, 0], _raw(dst))
    return ipaddress.IPv4Address(int(lo) + ((j * dist) >> 32))


def shift_port(port: int, base: int, lo: int, hi: int) -> int:
    return lo + ((port - base) & 0xFFFF) % (hi - lo + 1)


def dnat_port(dport: int, lo: int, hi: int, base: int | None = None) -> int:
    """DNAT/REDIRECT's destination port for the original port ``dport``."""
    if base is not None:
        return shift_port(dport, base, lo, hi)
    return dport if lo <= dport <= hi else lo


def snat_port(sport: int, lo: int, hi: int, base: int | None = None,
              rng: random.Random | None = None) -> int:
    """SNAT/MASQUERADE's first candidate source port (before any collision moves it)."""
    if base is not None:
        return shift_port(sport, base, lo, hi)
    if lo <= sport <= hi:
        return sport
    return (rng or random).randint(lo, hi)


def snat_addr(src, dst, lo, hi=None, sport: int | None = None, ports: tuple[int, int] | None = None):
    """SNAT's source address: the original when the tuple is in the range already (address, and
    the port when the target has ports), else the hashed pick."""
    a = ipaddress.IPv4Address(src)
    top = ipaddress.IPv4Address(hi) if hi is not None else ipaddress.IPv4Address(lo)
    if ipaddress.IPv4Address(lo) <= a <= top and (ports is None or sport is None or ports[0] <= sport <= ports[1]):
        return a
    return pick_addr(src, dst, lo, hi)

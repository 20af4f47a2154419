"""Could the nat rules translate traffic that takes no routed path through dockline's hooks?

Two kinds of traffic iptables translates but dockline's routed hooks never see:

  * **bridged frames** between two endpoints of one bridge: Docker hosts run br_netfilter, so
    such a frame goes through nat PREROUTING (``-i`` is the bridge) and POSTROUTING (``-o`` is
    the bridge) like routed traffic;
  * **host-local traffic** (both ends on the host, out by ``lo``): nat OUTPUT (done at the socket
    layer) and POSTROUTING (``-o lo``).

dockline gives them the same treatment only where a rule could match (the endpoint program's
NET_F_BRIDGED_NAT networks; the loopback program attached to ``lo``), because it costs: every
new flow of that kind is judged by the rules and gets conntrack entries, translated or not. With
Docker's own rules no network's bridged frames qualify, so container-to-container traffic keeps
its fast path.

The test is conservative: a rule *may match* a class of packets unless one of its conditions is
false for every packet of the class (``PacketClass``). A class qualifies when a translating rule
that may match is reached, from the class's hooks, through jumps that may match.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .rules import Rule, Ruleset, iface_matches

TRANSLATING = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT"})


@dataclass(frozen=True)
class PacketClass:
    hooks: tuple[str, ...]                     # the nat chains these packets traverse
    iface: str                                 # their -i (PREROUTING) and -o (POSTROUTING)
    src: tuple[ipaddress.IPv4Network, ...]     # the source lies in one of these
    dst: tuple[ipaddress.IPv4Network, ...]     # the destination lies in one of these
    local: bool                                # both addresses are the host's (addrtype LOCAL)
    distinct: bool                             # source != destination always


def _iface_excludes(name: str | None, neg: bool, iface: str) -> bool:
    # "-i X" needs iif to match X; "! -i X" needs it not to (X may be a PREFIX+ wildcard)
    return name is not None and (not iface_matches(name, iface)) != neg


def _addr_excludes(net: ipaddress.IPv4Network | None, neg: bool, where) -> bool:
    if net is None:
        return False
    if neg:
        return all(w.subnet_of(net) for w in where)      # every possible address is excluded
    return not any(net.overlaps(w) for w in where)       # no possible address is in it


def _type_excludes(addrtype: str | None, neg: bool, local: bool) -> bool:
    if addrtype != "LOCAL":
        return False
    return (not neg and not local) or (neg and local)


def may_match(rule: Rule, cls: PacketClass) -> bool:
    """Could ``rule`` match some packet of ``cls``?"""
    if _iface_excludes(rule.in_iface, rule.in_neg, cls.iface) or _iface_excludes(rule.out_iface, rule.out_neg, cls.iface):
        return False
    if _addr_excludes(rule.src, rule.src_neg, cls.src) or _addr_excludes(rule.dst, rule.dst_neg, cls.dst):
        return False
    if _type_excludes(rule.src_type, rule.src_type_neg, cls.local) or \
            _type_excludes(rule.dst_type, rule.dst_type_neg, cls.local):
        return False
    if (cls.distinct and rule.src is not None and rule.src == rule.dst and rule.src.prefixlen == 32
            and not rule.src_neg and not rule.dst_neg):
        return False
    return True


def _chain_may_translate(rs: Ruleset, chain: str, cls: PacketClass, targets, seen: set) -> bool:
    if chain in seen:
        return False
    seen.add(chain)
    for rule in rs.chains.get(chain, []):
        if not may_match(rule, cls):
            continue
        if rule.target in targets:
            return True
        if rule.target in rs.chains and _chain_may_translate(rs, rule.target, cls, targets, seen):
            return True
    return False


def may_translate(rs: Ruleset, cls: PacketClass, targets=TRANSLATING) -> bool:
    """Could a rule with one of ``targets`` decide for some packet of ``cls``?"""
    return any(_chain_may_translate(rs, hook, cls, targets, set()) for hook in cls.hooks)


def bridged_nat_bridges(rs: Ruleset, networks) -> set[str]:
    """The bridges (of ``networks``: objects with ``bridge`` and ``subnet``) whose frames between
    two endpoints some rule of ``rs`` could translate."""
    out = set()
    for n in networks:
        subnet = (ipaddress.IPv4Network(n.subnet),)
        cls = PacketClass(("PREROUTING", "POSTROUTING"), n.bridge, subnet, subnet, local=False, distinct=True)
        if may_translate(rs, cls):
            out.add(n.bridge)
    return out


def _translating_sources(rs: Ruleset, chain: str, cls: PacketClass, targets, seen: set, out: list) -> bool:
    """Collect into ``out`` the ``-s`` prefix of every rule with one of ``targets`` that may
    decide for ``cls`` from ``chain``; False as soon as one has no positive ``-s`` (any source)."""
    if chain in seen:
        return True
    seen.add(chain)
    for rule in rs.chains.get(chain, []):
        if not may_match(rule, cls):
            continue
        if rule.target in targets:
            if rule.src is None or rule.src_neg:
                return False
            out.append(rule.src)
        elif rule.target in rs.chains and not _translating_sources(rs, rule.target, cls, targets, seen, out):
            return False
    return True


def loopback_sources(rs: Ruleset, local_addrs) -> tuple[ipaddress.IPv4Network, ...] | None:
    """The source prefixes of the POSTROUTING rules that could translate host-local traffic, or
    None if one could translate any source (or OUTPUT could REDIRECT it: its source fix needs
    every flow). A host-local flow neither of whose addresses is in them cannot be translated
    in either direction, so the loopback program need not track it (tc_loopback.c)."""
    where = tuple(ipaddress.IPv4Network(a) for a in local_addrs) or (ipaddress.IPv4Network("127.0.0.0/8"),)
    if may_translate(rs, PacketClass(("OUTPUT",), "lo", where, where, local=True, distinct=False), targets={"REDIRECT"}):
        return None
    out: list = []
    cls = PacketClass(("POSTROUTING",), "lo", where, where, local=True, distinct=False)
    if not _translating_sources(rs, "POSTROUTING", cls, TRANSLATING, set(), out):
        return None
    return tuple(dict.fromkeys(out))


def loopback_may_translate(rs: Ruleset, local_addrs) -> bool:
    """Does host-local traffic (``-o lo``, both addresses among ``local_addrs``, the host's local
    prefixes) need the loopback program: could POSTROUTING translate it, or OUTPUT REDIRECT it
    (a socket bound to a port only then needs its source fixed there, see cgroup_sock.c)?"""
    where = tuple(ipaddress.IPv4Network(a) for a in local_addrs) or (ipaddress.IPv4Network("127.0.0.0/8"),)
    return (may_translate(rs, PacketClass(("POSTROUTING",), "lo", where, where, local=True, distinct=False))
            or may_translate(rs, PacketClass(("OUTPUT",), "lo", where, where, local=True, distinct=False),
                             targets={"REDIRECT"}))

"""Which container networks' bridged frames some nat rule could translate.

Docker hosts run br_netfilter: a frame one container sends to another on the same bridge goes
through nat PREROUTING (``-i`` is the bridge) and POSTROUTING (``-o`` is the bridge) like routed
traffic. dockline's endpoint program gives such frames the same treatment only on networks
returned here (``NET_F_BRIDGED_NAT``), because it costs: every new flow between two containers
is judged by the rules and gets conntrack entries, translated or not. With Docker's own rules
(and dockline's) no network qualifies, so container-to-container traffic keeps its fast path.

The test is conservative: a rule *may match* a bridged packet of a network unless one of its
conditions is false for every such packet, which is a packet with

  * in-interface (PREROUTING) and out-interface (POSTROUTING) = the network's bridge,
  * source and destination inside the network's subnet, and different from each other,
  * neither address a local address of the host (they are containers').

A network qualifies when a rule that may match, reached from PREROUTING or POSTROUTING through
jumps that may match, translates (DNAT, SNAT, MASQUERADE, REDIRECT).
"""

from __future__ import annotations

import ipaddress

from .rules import Rule, Ruleset

TRANSLATING = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT"})


def _iface_excludes(name: str | None, neg: bool, bridge: str) -> bool:
    # "-i X" needs iif == X; "! -i X" needs iif != X
    return name is not None and (name != bridge) != neg


def _addr_excludes(net: ipaddress.IPv4Network | None, neg: bool, subnet: ipaddress.IPv4Network) -> bool:
    if net is None:
        return False
    if neg:
        return subnet.subnet_of(net)          # every container address is in the negated range
    return not net.overlaps(subnet)           # no container address is in it


def may_match_bridged(rule: Rule, bridge: str, subnet: ipaddress.IPv4Network) -> bool:
    """Could ``rule`` match a frame between two endpoints of ``bridge`` (addresses in ``subnet``)?"""
    if _iface_excludes(rule.in_iface, rule.in_neg, bridge) or _iface_excludes(rule.out_iface, rule.out_neg, bridge):
        return False
    if _addr_excludes(rule.src, rule.src_neg, subnet) or _addr_excludes(rule.dst, rule.dst_neg, subnet):
        return False
    if (rule.dst_type == "LOCAL" and not rule.dst_type_neg) or (rule.src_type == "LOCAL" and not rule.src_type_neg):
        return False
    if (rule.src is not None and rule.src == rule.dst and rule.src.prefixlen == 32
            and not rule.src_neg and not rule.dst_neg):
        return False                          # source == destination: never between two endpoints
    return True


def _chain_may_translate(rs: Ruleset, chain: str, bridge: str, subnet, seen: set) -> bool:
    if chain in seen:
        return False
    seen.add(chain)
    for rule in rs.chains.get(chain, []):
        if not may_match_bridged(rule, bridge, subnet):
            continue
        if rule.target in TRANSLATING:
            return True
        if rule.target in rs.chains and _chain_may_translate(rs, rule.target, bridge, subnet, seen):
            return True
    return False


def bridged_nat_bridges(rs: Ruleset, networks) -> set[str]:
    """The bridges (of ``networks``: objects with ``bridge`` and ``subnet``) whose bridged frames
    some rule of ``rs`` could translate."""
    out = set()
    for n in networks:
        subnet = ipaddress.IPv4Network(n.subnet)
        if any(_chain_may_translate(rs, hook, n.bridge, subnet, set()) for hook in ("PREROUTING", "POSTROUTING")):
            out.add(n.bridge)
    return out

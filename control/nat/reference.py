"""A reference evaluator for the nat table: which rule decides a packet, with iptables' semantics.

Contract: ``evaluate(ruleset, hook, pkt, is_local)`` walks the built-in chain ``hook``
(PREROUTING, OUTPUT or POSTROUTING; dockline never evaluates INPUT) exactly as iptables does for
the first packet of a connection:

- rules are tried in order; the first rule whose every condition holds acts;
- a rule without a target only "matches" and traversal continues with the next rule;
- ``-j CHAIN`` evaluates the user chain; falling off its end, or ``RETURN`` in it, resumes after
  the jump; ``RETURN`` in a built-in chain applies the policy (ACCEPT);
- ``ACCEPT`` stops traversal without translation; DNAT/SNAT/MASQUERADE/REDIRECT stop with that
  translation; falling off the built-in chain applies the policy (ACCEPT, ``rule=None``).

Conditions: ``-i``/``-o`` match ``pkt.iif``/``pkt.oif`` by name, ``PREFIX+`` by prefix (a
missing interface, None, matches no name, so ``! -i x`` holds); ``--src-type``/``--dst-type LOCAL`` ask
``is_local(address)``; port conditions (``--sport``/``--dport``/multiport, negated or not) belong
to the tcp/udp match, so they never hold for a packet of another protocol; ``! -p tcp`` holds for
udp and icmp. The caller supplies what the kernel would: e.g. no ``iif`` at OUTPUT/POSTROUTING.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable

from ..errors import InvalidArgument, NotFound
from .rules import NAT_TARGETS, PROTOCOLS, Rule, Ruleset, iface_matches

HOOKS = ("PREROUTING", "OUTPUT", "POSTROUTING")


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection, as the nat table sees it."""

    saddr: str
    daddr: str
    proto: str                  # "tcp" | "udp" | "icmp"
    sport: int = 0
    dport: int = 0
    iif: str | None = None
    oif: str | None = None


@dataclass(frozen=True)
class Decision:
    """``action`` is "ACCEPT" (no translation, also the policy) or the NAT target that applies;
    ``rule``/``chain`` name the deciding rule (None when the policy decided)."""

    action: str
    rule: Rule | None
    chain: str | None


def evaluate(ruleset: Ruleset, hook: str, pkt: Packet, is_local: Callable[[str], bool]) -> Decision:
    """Decide ``pkt`` at built-in chain ``hook``; see the module docstring."""
    if hook not in HOOKS:
        raise InvalidArgument(f'hook "{hook}" is not evaluated (one of {", ".join(HOOKS)})')
    if pkt.proto not in PROTOCOLS:
        raise InvalidArgument(f'packet protocol "{pkt.proto}" must be one of {", ".join(PROTOCOLS)}')
    decision = _walk(ruleset, hook, pkt, is_local, depth=0)
    return decision if decision is not None else Decision("ACCEPT", None, None)


def _walk(rs: Ruleset, chain: str, pkt: Packet, is_local, depth: int) -> Decision | None:
    """The decision taken inside ``chain``, or None to continue after the jump (or the policy)."""
    if chain not in rs.chains:
        raise NotFound(f'chain "{chain}" does not exist (jump target)')
    if depth > len(rs.chains):
        raise InvalidArgument(f'jump loop through chain "{chain}"')
    for rule in rs.chains[chain]:
        if not matches(rule, pkt, is_local):
            continue
        t = rule.target
        if t is None:
            continue
        if t == "RETURN":
            return None
        if t == "ACCEPT" or t in NAT_TARGETS:
            return Decision(t, rule, chain)
        sub = _walk(rs, t, pkt, is_local, depth + 1)
        if sub is not None:
            return sub
    return None


def matches(rule: Rule, pkt: Packet, is_local: Callable[[str], bool]) -> bool:
    """Whether every condition of ``rule`` holds for ``pkt`` (the target is not considered)."""
    if rule.proto is not None and (pkt.proto == rule.proto) == rule.proto_neg:
        return False
    for net, neg, addr in ((rule.src, rule.src_neg, pkt.saddr), (rule.dst, rule.dst_neg, pkt.daddr)):
        if net is not None and (ipaddress.IPv4Address(addr) in net) == neg:
            return False
    for name, neg, actual in ((rule.in_iface, rule.in_neg, pkt.iif),
                              (rule.out_iface, rule.out_neg, pkt.oif)):
        if name is not None and iface_matches(name, actual) == neg:
            return False
    port_conditions = ((rule.sport, rule.sport_neg, pkt.sport), (rule.dport, rule.dport_neg, pkt.dport))
    multi_conditions = ((rule.msports, rule.msports_neg, pkt.sport),
                        (rule.mdports, rule.mdports_neg, pkt.dport))
    has_ports = any(r is not None for r, _, _ in port_conditions) or any(m for m, _, _ in multi_conditions)
    if has_ports and pkt.proto not in ("tcp", "udp"):
        return False
    for r, neg, port in port_conditions:
        if r is not None and (port in r) == neg:
            return False
    for ranges, neg, port in multi_conditions:
        if ranges and any(port in r for r in ranges) == neg:
            return False
    for kind, neg, addr in ((rule.src_type, rule.src_type_neg, pkt.saddr),
                            (rule.dst_type, rule.dst_type_neg, pkt.daddr)):
        if kind is not None and bool(is_local(addr)) == neg:
            return False
    return True


__all__ = ["HOOKS", "Packet", "Decision", "evaluate", "matches"]

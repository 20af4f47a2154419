"""Interface wildcards (``-i eth+``, ``! -o br+``) for the compiler, which matches interfaces by
ifindex: a rule set is rewritten against the host's interface names of the moment, and compiled
again when a name that a rule names (exactly or by prefix) appears, goes or is renamed (the link
watch: control/datapath/ebpf.py).

Contract: ``expand(ruleset, names) -> Ruleset`` equivalent to the input for packets whose
interfaces are among ``names``, with no wildcard left that one of ``names`` matches:

- ``-i eth+ REST -j T`` becomes ``-i N REST -j T`` for each matching name N, in name order (a
  packet has one in-interface, so at most one of them matches); with no matching name the rule
  stays as it is and can never match (the compiler gives an unknown name an ifindex no packet
  has).
- ``! -i eth+ REST -j T`` becomes a jump to a chain of its own, ``DL-IFACE-n``:
  ``-i N -j RETURN`` for each matching N, then ``REST -j T``. A RETURN goes on after the jump,
  which is where a non-matching rule goes on; a jump to a user chain T returns into
  ``DL-IFACE-n`` and falls off its end, to the same place. With no matching name the negation
  always holds and the rule loses it.
- ``! -i eth+ REST -j RETURN`` cannot live in such a chain (its RETURN would leave only that
  chain). In a built-in chain RETURN is the policy, ACCEPT, so it becomes ``-j ACCEPT`` there.
  In a user chain U the rules after it (B) move to a chain ``DL-IFACE-n`` of their own, and for
  each matching N: ``-i N -j DL-IFACE-n`` then ``-i N -j RETURN`` (B runs, then U is left, as
  it would be after B), followed by ``REST -j RETURN`` and B itself.
- ``-o`` likewise, after ``-i``.

The input Ruleset is not changed. The listing and iptables-save keep the user's text.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from .rules import BUILTIN_CHAINS, Rule, Ruleset, iface_matches, is_iface_wildcard

CHAIN_PREFIX = "DL-IFACE-"


def has_wildcards(rs: Ruleset) -> bool:
    return any(is_iface_wildcard(r.in_iface) or is_iface_wildcard(r.out_iface)
               for rules in rs.chains.values() for r in rules)


def expand(rs: Ruleset, names: Iterable[str]) -> Ruleset:
    ex = _Expansion(sorted(set(names)))
    out = Ruleset({c: [] for c in rs.chains})
    for chain, rules in rs.chains.items():
        out.chains[chain] = ex.rules(list(rules), builtin=chain in BUILTIN_CHAINS)
    out.chains.update(ex.extra)
    return out


class _Expansion:
    def __init__(self, names: list[str]):
        self.names = names
        self.extra: dict[str, list[Rule]] = {}

    def _chain(self, rules: list[Rule]) -> str:
        name = f"{CHAIN_PREFIX}{len(self.extra)}"
        self.extra[name] = rules
        return name

    def rules(self, rules: list[Rule], builtin: bool) -> list[Rule]:
        out: list[Rule] = []
        for i, r in enumerate(rules):
            field = _negated_wildcard(r)
            if field is not None and r.target == "RETURN":
                if builtin:
                    r = replace(r, target="ACCEPT")
                else:
                    out += self._negated_return(r, field, rules[i + 1:])
                    return out
            out += self._rule(r)
        return out

    def _negated_return(self, r: Rule, field: str, tail: list[Rule]) -> list[Rule]:
        neg_field = _NEG[field]
        hits = [n for n in self.names if iface_matches(getattr(r, field), n)]
        rest = replace(r, **{field: None, neg_field: False})
        if not hits:
            return self.rules([rest] + tail, builtin=False)
        after = self._chain(self.rules(list(tail), builtin=False))
        out = []
        for n in hits:
            out += [Rule(**{field: n}, target=after), Rule(**{field: n}, target="RETURN")]
        return out + self.rules([rest] + tail, builtin=False)

    def _rule(self, r: Rule) -> list[Rule]:
        rules = [r]
        for field, neg_field in _NEG.items():
            nxt = []
            for x in rules:
                pattern = getattr(x, field)
                if not is_iface_wildcard(pattern):
                    nxt.append(x)
                    continue
                hits = [n for n in self.names if iface_matches(pattern, n)]
                if not getattr(x, neg_field):
                    nxt += [replace(x, **{field: n}) for n in hits] if hits else [x]
                    continue
                rest = replace(x, **{field: None, neg_field: False})
                if not hits:
                    nxt.append(rest)
                    continue
                wrapper = self._chain([Rule(**{field: n}, target="RETURN") for n in hits] + [rest])
                nxt.append(Rule(target=wrapper))
            rules = nxt
        return rules


_NEG = {"in_iface": "in_neg", "out_iface": "out_neg"}


def _negated_wildcard(r: Rule) -> str | None:
    """The field of ``r``'s first negated wildcard (``-i`` before ``-o``), or None."""
    for field, neg_field in _NEG.items():
        if is_iface_wildcard(getattr(r, field)) and getattr(r, neg_field):
            return field
    return None

"""``iptables -t nat -L`` and ``-S`` output for a ``Ruleset``, character for character as
iptables 1.8 (nf_tables) prints it.

``-L`` is always numeric (as with ``-n``; dockline never does DNS or service-name lookups), so the
protocol column shows numbers (``0`` for all, ``6`` for tcp). ``verbose`` (``-v``) adds the
counter and interface columns (counters are always 0), ``exact`` (``-x``) widens the counters,
``line_numbers`` adds the ``num`` column. Note that without ``-v`` iptables does not show
``-i``/``-o`` at all. ``-S`` writes ``-P``/``-N``/``-A`` lines in iptables-save's syntax.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rules import BUILTIN_CHAINS, PROTO_NUMBERS, Rule, Ruleset


@dataclass(frozen=True)
class ListFormat:
    """The ``-L`` flags that change its output."""

    verbose: bool = False
    exact: bool = False
    line_numbers: bool = False


def list_rules(rs: Ruleset, chain: str | None = None, rulenum: int | None = None) -> str:
    """``-S [chain [rulenum]]``: ``-P``/``-N`` lines then ``-A`` lines (only the rule if rulenum)."""
    chains = [chain] if chain is not None else rs.listing_order()
    if rulenum is not None:
        rules = rs.chains[chain]
        return _append_line(chain, rules[rulenum - 1]) + "\n" if rulenum <= len(rules) else ""
    lines = [f"-P {c} ACCEPT" for c in chains if c in BUILTIN_CHAINS]
    lines += [f"-N {c}" for c in chains if c not in BUILTIN_CHAINS]
    lines += [_append_line(c, r) for c in chains for r in rs.chains[c]]
    return "".join(line + "\n" for line in lines)


def _append_line(chain: str, rule: Rule) -> str:
    return f"-A {chain} {rule.to_text()}".rstrip()


def list_table(rs: Ruleset, chain: str | None = None, rulenum: int | None = None,
               fmt: ListFormat = ListFormat()) -> str:
    """``-L [chain [rulenum]]``: one block per chain, blank line between blocks."""
    if rulenum is not None:
        rules = rs.chains[chain]
        return _rule_line(rules[rulenum - 1], rulenum, fmt) + "\n" if rulenum <= len(rules) else ""
    blocks = []
    for c in ([chain] if chain is not None else rs.listing_order()):
        lines = [_chain_header(rs, c, fmt), _column_header(fmt)]
        lines += [_rule_line(r, n, fmt) for n, r in enumerate(rs.chains[c], 1)]
        blocks.append("".join(line + "\n" for line in lines))
    return "\n".join(blocks)


def _chain_header(rs: Ruleset, chain: str, fmt: ListFormat) -> str:
    if chain in BUILTIN_CHAINS:
        counters = " 0 packets, 0 bytes" if fmt.verbose else ""
        return f"Chain {chain} (policy ACCEPT{counters})"
    return f"Chain {chain} ({len(rs.references(chain))} references)"


def _column_header(fmt: ListFormat) -> str:
    h = f"{'num':<4} " if fmt.line_numbers else ""
    if fmt.verbose:
        h += f"{'pkts':>8} {'bytes':>10} " if fmt.exact else f"{'pkts':>5} {'bytes':>5} "
    h += f"{'target':<9}  prot opt"
    if fmt.verbose:
        h += f" {'in':<6} {'out':<6} "
    return h + f" {'source':<19}  {'destination':<19} "


def _rule_line(r: Rule, num: int, fmt: ListFormat) -> str:
    s = f"{num:<4} " if fmt.line_numbers else ""
    if fmt.verbose:
        # iptables pads both counters to 8 with -x although the header pads bytes to 10.
        s += f"{0:>8} {0:>8} " if fmt.exact else f"{0:>5} {0:>5} "
    s += f"{r.target or '':<9} "
    s += ("!" if r.proto_neg else " ") + f"{PROTO_NUMBERS.get(r.proto, 0):<5}"
    s += "-- "
    if fmt.verbose:
        s += f" {_iface(r.in_iface, r.in_neg):<6} {_iface(r.out_iface, r.out_neg):<6} "
    for net, neg in ((r.src, r.src_neg), (r.dst, r.dst_neg)):
        text = "0.0.0.0/0" if net is None else (
            str(net.network_address) if net.prefixlen == 32 else str(net))
        s += ("!" if neg else " ") + f"{text:<19} "
    return s + _match_text(r) + _target_text(r)


def _iface(name: str | None, neg: bool) -> str:
    return ("!" if neg else "") + (name if name is not None else "*")


def _ports(name: str, pr, neg: bool) -> str:
    if pr is None or (pr.is_full and not neg):
        return ""
    inv = "!" if neg else ""
    if pr.lo == pr.hi:
        return f" {name}:{inv}{pr.lo}"
    return f" {name}s:{inv}{pr.lo}:{pr.hi}"


def _match_text(r: Rule) -> str:
    out = ""
    for key in r.matches():
        if key == "ports":
            out += f" {r.proto}" + _ports("spt", r.sport, r.sport_neg) + _ports("dpt", r.dport, r.dport_neg)
        elif key in ("msports", "mdports"):
            ranges, neg = getattr(r, key), getattr(r, key + "_neg")
            out += f" multiport {key[1:]} " + (" !" if neg else "") + ",".join(p.match_text() for p in ranges)
        elif key == "addrtype":
            out += " ADDRTYPE match"
            if r.src_type is not None:
                out += " src-type " + ("!" if r.src_type_neg else "") + r.src_type
            if r.dst_type is not None:
                out += " dst-type " + ("!" if r.dst_type_neg else "") + r.dst_type
        elif key == "comment":
            out += f" /* {r.comment} */"
    return out


def _target_text(r: Rule) -> str:
    ports = r.to_spec() if r.to_ports is not None else None
    if r.target in ("DNAT", "SNAT"):
        return f" to:{r.to_spec()}"
    if r.target == "MASQUERADE" and ports:
        return f" masq ports: {ports}"
    if r.target == "REDIRECT" and ports:
        return f" redir ports {ports}"
    return ""

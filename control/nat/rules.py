"""The nat table as data: ``PortRange``, ``Rule``, ``Ruleset``, and their iptables-save rendering.

Contracts
- A ``Rule`` is valid on its own once constructed: ``__post_init__`` normalises it the way
  iptables does (``-p 6`` is ``tcp``, ``-s 10.1.2.3/8`` is ``10.0.0.0/8``, ``/0`` is no address,
  ``--dport 0:65535`` is no port condition) and raises ``InvalidArgument`` for anything iptables
  would refuse or dockline does not support. Checks that need the chain (``-i`` in POSTROUTING,
  DNAT reachable from POSTROUTING, jumps, loops) belong to ``Ruleset.validate``.
- Two rules are equal exactly when iptables-save prints them identically, which is also when
  ``iptables -C``/``-D`` consider them the same rule (iptables-nft compares matches in order, so
  ``match_order`` takes part in equality).
- ``Rule.to_args()`` is the argv form, ``Rule.to_text()`` the iptables-save line form (quoted),
  ``Ruleset.save()`` a complete ``*nat`` ... ``COMMIT`` block, byte-identical to what
  ``iptables-save -t nat`` (iptables 1.8, nf_tables) prints for the same rules, minus its ``#``
  comment lines.

The INPUT chain of the nat table is accepted, stored, rendered and validated (SNAT is allowed in
it, as in iptables) but dockline never evaluates it: dockline NATs forwarded and host-originated
traffic only (PREROUTING, OUTPUT, POSTROUTING).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple

from .. import protocols
from ..errors import InvalidArgument, NotFound

BUILTIN_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
NAT_TARGETS = ("DNAT", "SNAT", "MASQUERADE", "REDIRECT")
STANDARD_TARGETS = ("ACCEPT", "RETURN")
#: Built-in chains each translating target may be used from (the kernel's hook masks; note
#: MASQUERADE is POSTROUTING only, while SNAT is also allowed in INPUT).
TARGET_CHAINS = {
    "DNAT": ("PREROUTING", "OUTPUT"),
    "REDIRECT": ("PREROUTING", "OUTPUT"),
    "SNAT": ("POSTROUTING", "INPUT"),
    "MASQUERADE": ("POSTROUTING",),
}
#: Targets iptables knows that dockline refuses by name (also reserved as chain names).
UNSUPPORTED_TARGETS = frozenset({
    "DROP", "REJECT", "LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "NETMAP", "NOTRACK", "CT",
    "TPROXY", "TRACE", "QUEUE", "NFQUEUE", "CLASSIFY", "DSCP", "TOS", "TTL", "TCPMSS", "SAME",
    "CLUSTERIP", "SET", "AUDIT", "CHECKSUM", "IDLETIMER", "LED", "RATEEST", "SECMARK",
    "CONNSECMARK", "SYNPROXY", "HMARK", "TEE", "ECN", "CONNTRACK", "JUMP", "GOTO",
})
PROTOCOLS = tuple(protocols.NUMBERS)             # control/protocols.py is the table
PROTO_NUMBERS = protocols.NUMBERS
PORT_PROTOCOLS = protocols.PORT_PROTOCOLS
#: Keys of the optional matches, in the order dockline writes them when ``match_order`` is empty.
MATCH_KEYS = ("ports", "msports", "mdports", "addrtype", "comment")
MAX_CHAIN_NAME = 28          # iptables: "must be under 29 chars"
MAX_IFNAME = 15              # IFNAMSIZ - 1
MAX_COMMENT = 255            # xt_comment; iptables-nft silently truncates longer ones, we refuse
MULTIPORT_MAX = 15           # XT_MULTI_PORTS; a range takes two slots
_SAFE_CHARS = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class PortRange:
    """An inclusive port range ``lo..hi`` within 0..65535 (a single port has ``lo == hi``)."""

    lo: int
    hi: int

    def __post_init__(self):
        for v in (self.lo, self.hi):
            if type(v) is not int or not 0 <= v <= 65535:
                raise InvalidArgument(f'bad port "{v}" (must be 0-65535)')
        if self.lo > self.hi:
            raise InvalidArgument(f'bad port range "{self.lo}:{self.hi}" (min > max)')

    @classmethod
    def single(cls, port: int) -> "PortRange":
        return cls(port, port)

    def __contains__(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    @property
    def is_full(self) -> bool:
        return self.lo == 0 and self.hi == 65535

    def match_text(self) -> str:
        """As a match writes it: ``80`` or ``80:90``."""
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"

    def target_text(self) -> str:
        """As a NAT target writes it: ``80`` or ``80-90``."""
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


FULL_PORTS = PortRange(0, 65535)


def quote(value: str) -> str:
    """Quote a string argument the way iptables-save does (``xtables_save_string``)."""
    if value and all(c in _SAFE_CHARS for c in value):
        return value
    return '"' + "".join("\\" + c if c in "\"\\'" else c for c in value) + '"'


def check_chain_name(name: str) -> None:
    """Raise InvalidArgument unless ``name`` is a valid name for a user chain."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument("chain name must not be empty")
    if len(name) > MAX_CHAIN_NAME:
        raise InvalidArgument(f'chain name "{name}" too long (at most {MAX_CHAIN_NAME} characters)')
    if name.startswith("-") or name == "!":
        raise InvalidArgument(f'chain name "{name}" must not start with "-" or be "!"')
    if any(not c.isprintable() or c.isspace() or c in "\"'\\" for c in name):
        raise InvalidArgument(f'chain name "{name}" contains whitespace, a quote or a backslash')
    if name in NAT_TARGETS or name in STANDARD_TARGETS or name in UNSUPPORTED_TARGETS:
        raise InvalidArgument(f'chain name "{name}" clashes with a target name')


def iface_matches(pattern: str, name: str | None) -> bool:
    """iptables' interface match: ``eth+`` is every name that starts with ``eth``; any other
    pattern is one exact name (a ``+`` inside a name is a character). No interface (None)
    matches nothing."""
    if name is None:
        return False
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def is_iface_wildcard(pattern: str | None) -> bool:
    return pattern is not None and pattern.endswith("+")


@functools.lru_cache(maxsize=4096)
def check_iface(name: str, opt: str) -> None:
    """Raise InvalidArgument unless ``name`` is an interface name or a ``PREFIX+`` wildcard
    usable with ``-i``/``-o`` (at most IFNAMSIZ - 1 characters, the ``+`` included)."""
    if not name:
        raise InvalidArgument(f"empty interface name in {opt}")
    if len(name) > MAX_IFNAME:
        raise InvalidArgument(f'bad interface name "{name}" in {opt} (at most {MAX_IFNAME} characters)')
    if any(not c.isprintable() or c.isspace() or c in "/\"'\\" for c in name):
        raise InvalidArgument(f'bad interface name "{name}" in {opt}')


def _net(value, opt: str) -> ipaddress.IPv4Network | None:
    if value is None or type(value) is ipaddress.IPv4Network:
        return value
    try:
        return ipaddress.IPv4Network(value, strict=False)
    except (ValueError, TypeError):
        raise InvalidArgument(f'bad address "{value}" in {opt}') from None


@dataclass(frozen=True)
class Rule:
    """One rule of the nat table. Field names mirror iptables options; ``*_neg`` is a leading ``!``.

    ``sport``/``dport`` are the ``-m tcp``/``-m udp`` port match (``-p`` says which). A bare
    ``-m tcp`` without ports is stored as ``dport=PortRange(0, 65535)`` so that it survives a round
    trip (iptables-save keeps it). ``match_order`` records the order of the optional matches when
    it differs from ``MATCH_KEYS`` (iptables keeps the order they were given in); it is normalised
    to ``()`` for the canonical order.
    """

    proto: str | None = None
    proto_neg: bool = False
    src: ipaddress.IPv4Network | None = None
    src_neg: bool = False
    dst: ipaddress.IPv4Network | None = None
    dst_neg: bool = False
    in_iface: str | None = None
    in_neg: bool = False
    out_iface: str | None = None
    out_neg: bool = False
    sport: PortRange | None = None
    sport_neg: bool = False
    dport: PortRange | None = None
    dport_neg: bool = False
    msports: tuple[PortRange, ...] = ()
    msports_neg: bool = False
    mdports: tuple[PortRange, ...] = ()
    mdports_neg: bool = False
    src_type: str | None = None
    src_type_neg: bool = False
    dst_type: str | None = None
    dst_type_neg: bool = False
    comment: str | None = None
    target: str | None = None
    to_addr: ipaddress.IPv4Address | None = None
    to_addr_hi: ipaddress.IPv4Address | None = None   # the last address of A-B (None: one address)
    to_ports: PortRange | None = None
    to_port_base: int | None = None                   # P-Q/BASE: the shifted port map (None: off)
    match_order: tuple[str, ...] = field(default=())

    # -- normalisation and rule-local validation -------------------------------------------

    def __post_init__(self):
        # straight-line on purpose: a 100,000-rule import builds 100,000 of these
        s = self._set
        if self.proto is not None:
            s("proto", _norm_proto(self.proto))
            if self.proto is None and self.proto_neg:
                raise InvalidArgument('"! -p all" would never match')
        elif self.proto_neg:
            raise InvalidArgument('"! -p all" would never match')
        if self.src is not None:
            net = _net(self.src, "-s")
            if net.prefixlen == 0:
                if self.src_neg:
                    raise InvalidArgument(f'"! -s {net}" would never match')
                net = None
            s("src", net)
        if self.dst is not None:
            net = _net(self.dst, "-d")
            if net.prefixlen == 0:
                if self.dst_neg:
                    raise InvalidArgument(f'"! -d {net}" would never match')
                net = None
            s("dst", net)
        if self.in_iface is not None:
            check_iface(self.in_iface, "-i")
            if self.in_iface == "+":             # every interface: iptables drops the match
                if self.in_neg:
                    raise InvalidArgument('"! -i +" would never match')
                s("in_iface", None)
        if self.out_iface is not None:
            check_iface(self.out_iface, "-o")
            if self.out_iface == "+":
                if self.out_neg:
                    raise InvalidArgument('"! -o +" would never match')
                s("out_iface", None)
        self._check_negations()
        if self.sport is not None or self.dport is not None:
            self._norm_ports()
        if self.msports or self.mdports or type(self.msports) is not tuple or type(self.mdports) is not tuple:
            self._norm_multiport()
        for name, opt in (("src_type", "--src-type"), ("dst_type", "--dst-type")):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str) or value.upper() != "LOCAL":
                    raise InvalidArgument(f'unsupported address type "{value}" in -m addrtype {opt} '
                                          "(supported: LOCAL)")
                s(name, "LOCAL")
        if self.comment is not None:
            if len(self.comment) > MAX_COMMENT:
                raise InvalidArgument(f"comment longer than {MAX_COMMENT} characters")
            if any(c in "\n\r\0" for c in self.comment):
                raise InvalidArgument("comment contains a newline or NUL character")
        self._check_target()
        order = self.match_order
        if (not self.msports and not self.mdports and self.src_type is None and self.dst_type is None
                and self.comment is None and len(order) <= 1 and all(k in MATCH_KEYS for k in order)):
            if order != ():         # at most the port match is present: its order is the only one
                s("match_order", ())
        else:
            s("match_order", self._norm_order())

    def _norm_multiport(self):
        for name, opt in (("msports", "--sports"), ("mdports", "--dports")):
            ranges = tuple(getattr(self, name))
            if any(not isinstance(r, PortRange) for r in ranges):
                raise InvalidArgument(f"{opt} takes PortRange values")
            slots = sum(1 if r.lo == r.hi else 2 for r in ranges)
            if slots > MULTIPORT_MAX:
                raise InvalidArgument(f"too many ports in -m multiport {opt} (at most {MULTIPORT_MAX}; "
                                      "a range counts as two)")
            if ranges:
                self._need_port_proto(f"-m multiport {opt}")
            self._set(name, ranges)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)        # normalising a frozen instance

    def _check_negations(self):
        if not (self.src_neg or self.dst_neg or self.in_neg or self.out_neg or self.sport_neg or self.dport_neg
                or self.src_type_neg or self.dst_type_neg or self.msports_neg or self.mdports_neg):
            return
        pairs = (("src", "src_neg", "-s"), ("dst", "dst_neg", "-d"), ("in_iface", "in_neg", "-i"),
                 ("out_iface", "out_neg", "-o"), ("sport", "sport_neg", "--sport"),
                 ("dport", "dport_neg", "--dport"), ("src_type", "src_type_neg", "--src-type"),
                 ("dst_type", "dst_type_neg", "--dst-type"))
        for name, neg, opt in pairs:
            if getattr(self, neg) and getattr(self, name) is None:
                raise InvalidArgument(f'"! {opt}" needs a value')
        for name, opt in (("msports", "--sports"), ("mdports", "--dports")):
            if getattr(self, name + "_neg") and not getattr(self, name):
                raise InvalidArgument(f'"! {opt}" needs a value')

    def _need_port_proto(self, what: str):
        if self.proto not in PORT_PROTOCOLS or self.proto_neg:
            raise InvalidArgument(f"{what} needs -p tcp or -p udp")

    def _norm_ports(self):
        s = self._set
        had_full = False
        for name, opt in (("sport", "--sport"), ("dport", "--dport")):
            r = getattr(self, name)
            if r is None:
                continue
            if not isinstance(r, PortRange):
                raise InvalidArgument(f"{opt} takes a PortRange")
            self._need_port_proto(opt)
            if r.is_full:
                if getattr(self, name + "_neg"):
                    raise InvalidArgument(f'"! {opt} 0:65535" would never match')
                had_full = True
                s(name, None)
        if had_full and self.sport is None and self.dport is None:
            s("dport", FULL_PORTS)      # a bare -m tcp / -m udp

    def _check_target(self):
        t = self.target
        if t is not None:
            if not isinstance(t, str) or not t:
                raise InvalidArgument("empty target in -j")
            if t in UNSUPPORTED_TARGETS:
                raise InvalidArgument(f'unsupported target "-j {t}" (supported: DNAT, SNAT, MASQUERADE, '
                                      "REDIRECT, RETURN, ACCEPT or a user chain)")
            if t not in NAT_TARGETS and t not in STANDARD_TARGETS:
                check_chain_name(t)
        if self.to_addr is not None:
            if t not in ("DNAT", "SNAT"):
                raise InvalidArgument("a translation address needs -j DNAT or -j SNAT")
            self._set("to_addr", _to_address(self.to_addr, t))
        if self.to_addr_hi is not None:
            if self.to_addr is None:
                raise InvalidArgument(f"an address range in {_to_opt(t)} needs its first address")
            hi = _to_address(self.to_addr_hi, t)
            if int(hi) < int(self.to_addr):
                raise InvalidArgument(f'bad address range "{self.to_addr}-{hi}" in {_to_opt(t)} (min > max)')
            self._set("to_addr_hi", None if hi == self.to_addr else hi)
        if self.to_ports is not None:
            if t not in NAT_TARGETS:
                raise InvalidArgument("translation ports need -j DNAT, SNAT, MASQUERADE or REDIRECT")
            if not isinstance(self.to_ports, PortRange):
                raise InvalidArgument(f"{_to_opt(t)} ports must be a PortRange")
            self._need_port_proto(f"{_to_opt(t)} with a port" if t in ("DNAT", "SNAT") else "--to-ports")
        if self.to_port_base is not None:
            self._check_port_base(t)
        if t in ("DNAT", "SNAT") and self.to_addr is None and self.to_ports is None:
            raise InvalidArgument(f"{t} needs {_to_opt(t)} with an address or ports")

    def _check_port_base(self, t: str | None):
        """``P-Q/BASE``: iptables 1.8's shifted port map. DNAT keeps BASE (port = P + (dport - BASE)
        mod the range's size); SNAT and MASQUERADE accept the form but iptables hands the kernel a
        base of 0 (iptables-save prints ``/0``), so it is normalised to 0 here too. REDIRECT is
        refused, as iptables refuses it."""
        b = self.to_port_base
        if t == "REDIRECT":
            raise InvalidArgument("a shifted port range (P-Q/BASE) is not supported with -j REDIRECT")
        if t not in ("DNAT", "SNAT", "MASQUERADE"):
            raise InvalidArgument("a shifted port range (P-Q/BASE) needs -j DNAT, SNAT or MASQUERADE")
        if self.to_ports is None or self.to_ports.lo == self.to_ports.hi:
            raise InvalidArgument(f"a port base in {_to_opt(t)} needs a port range P-Q")
        if type(b) is not int or not 0 <= b <= 65535:
            raise InvalidArgument(f'bad port base "{b}" in {_to_opt(t)} (must be 0-65535)')
        if t != "DNAT" and b:
            self._set("to_port_base", 0)

    def to_spec(self) -> str:
        """The translation as iptables writes it after --to-destination/--to-source/--to-ports:
        ``[A[-B]][:P[-Q][/BASE]]`` (``P[-Q][/BASE]`` for --to-ports)."""
        out = ""
        if self.to_addr is not None:
            out = str(self.to_addr) + (f"-{self.to_addr_hi}" if self.to_addr_hi is not None else "")
        if self.to_ports is not None:
            ports = self.to_ports.target_text()
            if self.to_port_base is not None:
                ports += f"/{self.to_port_base}"
            out = out + ":" + ports if self.target in ("DNAT", "SNAT") else ports
        return out

    def _present_keys(self) -> tuple[str, ...]:
        """The optional matches present, in MATCH_KEYS order."""
        out = []
        if self.sport is not None or self.dport is not None:
            out.append("ports")
        if self.msports:
            out.append("msports")
        if self.mdports:
            out.append("mdports")
        if self.src_type is not None or self.dst_type is not None:
            out.append("addrtype")
        if self.comment is not None:
            out.append("comment")
        return tuple(out)

    def _norm_order(self) -> tuple[str, ...]:
        order = tuple(self.match_order)
        unknown = [k for k in order if k not in MATCH_KEYS]
        if unknown or len(set(order)) != len(order):
            raise InvalidArgument(f"bad match_order {order!r} (keys: {', '.join(MATCH_KEYS)})")
        canonical = self._present_keys()
        eff = tuple(k for k in order if k in canonical)
        eff += tuple(k for k in canonical if k not in eff)
        return () if eff == canonical else eff

    # -- rendering -----------------------------------------------------------------------------

    def matches(self) -> tuple[str, ...]:
        """The optional matches present, in the order they are written."""
        return self.match_order or self._present_keys()

    def to_args(self) -> list[str]:
        """The rule spec as argv, in iptables-save's order and spelling (comment unquoted)."""
        a: list[str] = []
        if self.src is not None:
            a += neg(self.src_neg) + ["-s", str(self.src)]
        if self.dst is not None:
            a += neg(self.dst_neg) + ["-d", str(self.dst)]
        if self.in_iface is not None:
            a += neg(self.in_neg) + ["-i", self.in_iface]
        if self.out_iface is not None:
            a += neg(self.out_neg) + ["-o", self.out_iface]
        if self.proto is not None:
            a += neg(self.proto_neg) + ["-p", self.proto]
        for key in self.matches():
            if key == "ports":
                a += ["-m", self.proto]
                if self.sport is not None:
                    a += neg(self.sport_neg) + ["--sport", self.sport.match_text()]
                if self.dport is not None and not (self.dport.is_full and not self.dport_neg):
                    a += neg(self.dport_neg) + ["--dport", self.dport.match_text()]
            elif key in ("msports", "mdports"):
                ranges, inv = getattr(self, key), getattr(self, key + "_neg")
                opt = "--sports" if key == "msports" else "--dports"
                a += ["-m", "multiport"] + neg(inv) + [opt, ",".join(r.match_text() for r in ranges)]
            elif key == "addrtype":
                a += ["-m", "addrtype"]
                if self.src_type is not None:
                    a += neg(self.src_type_neg) + ["--src-type", self.src_type]
                if self.dst_type is not None:
                    a += neg(self.dst_type_neg) + ["--dst-type", self.dst_type]
            elif key == "comment":
                a += ["-m", "comment", "--comment", self.comment]
        if self.target is not None:
            a += ["-j", self.target]
            if self.target in ("DNAT", "SNAT"):
                a += [_to_opt(self.target), self.to_spec()]
            elif self.to_ports is not None:
                a += ["--to-ports", self.to_spec()]
        return a

    def to_text(self) -> str:
        """The rule spec as iptables-save writes it after ``-A CHAIN`` (the comment quoted)."""
        args = self.to_args()
        out = []
        for i, tok in enumerate(args):
            out.append(quote(tok) if i and args[i - 1] == "--comment" else tok)
        return " ".join(out)

    def jump(self) -> str | None:
        """The user chain this rule jumps to, or None."""
        t = self.target
        return t if t is not None and t not in NAT_TARGETS and t not in STANDARD_TARGETS else None


def neg(flag: bool) -> list[str]:
    """``["!"]`` for a negated option, else ``[]``."""
    return ["!"] if flag else []


def _to_address(value, target: str | None) -> ipaddress.IPv4Address:
    if type(value) is ipaddress.IPv4Address:
        return value
    try:
        return ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise InvalidArgument(f'bad address "{value}" in {_to_opt(target)}') from None


def _to_opt(target: str | None) -> str:
    return {"DNAT": "--to-destination", "SNAT": "--to-source"}.get(target, "--to-ports")


#: ``-p 6`` is ``-p tcp``, ``-p 0`` is ``-p all``
_PROTO_BY_NUMBER_TEXT = {str(n): p for p, n in protocols.NUMBERS.items()} | {"0": "all"}


def _norm_proto(proto) -> str | None:
    if proto is None:
        return None
    p = str(proto).lower()
    p = _PROTO_BY_NUMBER_TEXT.get(p, p)
    if p == "all":
        return None
    if p not in PROTOCOLS:
        raise InvalidArgument(f'unsupported protocol "{proto}" in -p (supported: tcp, udp, icmp, all)')
    return p


class Problem(NamedTuple):
    """What ``Ruleset.problem`` found: the error class, its message, and the rule to blame."""

    kind: type
    message: str
    chain: str | None = None
    index: int | None = None        # 0-based index of the rule in ``chain``


@dataclass
class Ruleset:
    """The nat table: chain name -> rules. The four built-in chains always exist, first and in
    ``BUILTIN_CHAINS`` order; user chains follow in creation order (they are *printed* sorted by
    name, as iptables does). Policies are always ACCEPT (the only one the nat table allows)."""

    chains: dict[str, list[Rule]] = field(default_factory=dict)

    def __post_init__(self):
        chains = {c: list(self.chains.get(c, ())) for c in BUILTIN_CHAINS}
        for name, rules in self.chains.items():
            if name not in chains:
                chains[name] = list(rules)
        self.chains = chains

    def copy(self) -> "Ruleset":
        """A copy whose chain lists can be changed independently (rules are immutable)."""
        return Ruleset({name: list(rules) for name, rules in self.chains.items()})

    def user_chains(self) -> list[str]:
        """User chains in creation order."""
        return [c for c in self.chains if c not in BUILTIN_CHAINS]

    def listing_order(self) -> list[str]:
        """Chains in the order iptables prints them: built-ins, then user chains sorted by name."""
        return list(BUILTIN_CHAINS) + sorted(self.user_chains())

    def references(self, chain: str) -> list[tuple[str, int]]:
        """``(chain, 0-based index)`` of every rule that jumps to ``chain``."""
        return [(c, i) for c, rules in self.chains.items() for i, r in enumerate(rules)
                if r.jump() == chain]

    def save(self) -> str:
        """The table as ``iptables-save -t nat`` prints it (without its ``#`` comment lines)."""
        lines = ["*nat"]
        lines += [f":{c} ACCEPT [0:0]" for c in BUILTIN_CHAINS]
        lines += [f":{c} - [0:0]" for c in sorted(self.user_chains())]
        for c in self.listing_order():
            lines += [f"-A {c} {r.to_text()}".rstrip() for r in self.chains[c]]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    # -- table-wide validation ----------------------------------------------------------------

    def validate(self) -> None:
        """Raise the first problem ``problem()`` finds (InvalidArgument or NotFound)."""
        p = self.problem()
        if p is not None:
            raise p.kind(p.message)

    def problem(self) -> Problem | None:
        """The first table-wide problem, or None: chain names, ``-i``/``-o`` in built-in chains,
        jump targets, jump loops, and NAT targets used from (or reachable from) a built-in chain
        whose hook does not allow them."""
        for name in self.user_chains():
            try:
                check_chain_name(name)
            except InvalidArgument as e:
                return Problem(InvalidArgument, e.message, name)
        for chain, rules in self.chains.items():
            for i, r in enumerate(rules):
                p = self._rule_problem(chain, i, r)
                if p is not None:
                    return p
        return self._loop_problem() or self._hook_problem()

    def _rule_problem(self, chain: str, i: int, r: Rule) -> Problem | None:
        if chain in ("POSTROUTING", "OUTPUT") and r.in_iface is not None:
            return Problem(InvalidArgument, f"-i is not allowed in chain {chain}", chain, i)
        if chain in ("PREROUTING", "INPUT") and r.out_iface is not None:
            return Problem(InvalidArgument, f"-o is not allowed in chain {chain}", chain, i)
        j = r.jump()
        if j is not None:
            if j in BUILTIN_CHAINS:
                return Problem(InvalidArgument, f"cannot jump to built-in chain {j}", chain, i)
            if j not in self.chains:
                return Problem(NotFound, f'chain "{j}" does not exist (jump target)', chain, i)
        allowed = TARGET_CHAINS.get(r.target)
        if allowed and chain in BUILTIN_CHAINS and chain not in allowed:
            return Problem(InvalidArgument, f"{r.target} is not allowed in chain {chain} "
                           f"(only in {', '.join(allowed)})", chain, i)
        return None

    def _loop_problem(self) -> Problem | None:
        state: dict[str, int] = {}          # 1 = on the current path, 2 = done

        def visit(chain: str, path: list[tuple[str, int]]) -> Problem | None:
            state[chain] = 1
            for i, r in enumerate(self.chains[chain]):
                j = r.jump()
                if j is None:
                    continue
                if state.get(j) == 1:
                    names = [c for c, _ in path] + [chain]
                    loop = names[names.index(j):] + [j]
                    return Problem(InvalidArgument, f"jump loop: {' -> '.join(loop)}", chain, i)
                if state.get(j) is None:
                    p = visit(j, path + [(chain, i)])
                    if p is not None:
                        return p
            state[chain] = 2
            return None

        for c in self.user_chains():
            if c not in state:
                p = visit(c, [])
                if p is not None:
                    return p
        return None

    def _hook_problem(self) -> Problem | None:
        for hook in BUILTIN_CHAINS:
            seen, todo = set(), [j for r in self.chains[hook] if (j := r.jump())]
            while todo:
                c = todo.pop(0)
                if c in seen:
                    continue
                seen.add(c)
                for i, r in enumerate(self.chains[c]):
                    allowed = TARGET_CHAINS.get(r.target)
                    if allowed and hook not in allowed:
                        return Problem(InvalidArgument,
                                       f'{r.target} in chain "{c}" is reachable from {hook} '
                                       f"({r.target} is only allowed in {', '.join(allowed)})", c, i)
                    if (j := r.jump()) is not None:
                        todo.append(j)
        return None

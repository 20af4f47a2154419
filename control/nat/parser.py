"""Parse iptables rule specs (argv) and iptables-save text into the nat data model.

Contracts
- ``parse_rule_args(args) -> Rule``: the rule-spec part of an ``iptables -t nat -A CHAIN ...``
  command line (what follows the chain name). Every option dockline does not implement is refused
  by name with ``InvalidArgument``; nothing is silently ignored except the options that cannot
  change what a rule matches or does (``-4``, ``-c PKTS BYTES``).
- ``parse_save(text) -> (Ruleset, warnings)``: ``iptables-save`` output (or an
  ``iptables-restore`` file made of ``:CHAIN`` and ``-A`` lines). The ``*nat`` block is required;
  other tables are skipped, one warning each. Errors name the 1-based line number, and nothing is
  returned on error.
- Lines are split into words exactly like iptables-restore does (``tokenize``), so that whatever
  ``Ruleset.save`` quotes reads back unchanged.

Spellings accepted besides the canonical ones: ``--src``/``--source``, ``--dst``/``--destination``,
``--protocol``, ``--in-interface``, ``--out-interface``, ``--jump``, ``--match``,
``--source-port``/``--destination-port``, ``--source-ports``/``--destination-ports``, and ``--to``
(DNAT/SNAT) and ``--to-port`` (MASQUERADE/REDIRECT), the abbreviations iptables' getopt accepts
that are common in the wild. Unlike iptables, ``--dport`` may also come before ``-p tcp``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

from .. import protocols
from ..errors import DocklineError, InvalidArgument, NotFound
from .rules import (BUILTIN_CHAINS, FULL_PORTS, UNSUPPORTED_TARGETS, PortRange, Rule, Ruleset,
                    check_chain_name)

SUPPORTED_MATCHES = ("tcp", "udp", "multiport", "addrtype", "comment")

ALIASES = {
    "--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d", "--protocol": "-p",
    "--in-interface": "-i", "--out-interface": "-o", "--jump": "-j", "--match": "-m",
    "--source-port": "--sport", "--destination-port": "--dport",
    "--source-ports": "--sports", "--destination-ports": "--dports",
    "--goto": "-g", "--fragment": "-f", "--ipv4": "-4", "--ipv6": "-6", "--set-counters": "-c",
}

#: Number of values each rule-spec option takes (for command-line splitting in commands.py).
RULE_OPTION_ARITY = {
    "!": 0, "-s": 1, "-d": 1, "-i": 1, "-o": 1, "-p": 1, "-m": 1, "-j": 1, "-g": 1, "-f": 0,
    "-4": 0, "-6": 0, "-c": 2, "--sport": 1, "--dport": 1, "--sports": 1, "--dports": 1,
    "--ports": 1, "--src-type": 1, "--dst-type": 1, "--limit-iface-in": 0, "--limit-iface-out": 0,
    "--comment": 1, "--to-destination": 1, "--to-source": 1, "--to": 1, "--to-ports": 1,
    "--to-port": 1, "--random": 0, "--random-fully": 0, "--persistent": 0, "--syn": 0,
    "--tcp-flags": 2, "--tcp-option": 1,
}
RULE_OPTION_ARITY.update({alias: RULE_OPTION_ARITY[opt] for alias, opt in ALIASES.items()})

_INVERTIBLE = {"-s", "-d", "-i", "-o", "-p", "--sport", "--dport", "--sports", "--dports",
               "--src-type", "--dst-type"}
_TARGET_OPTS = {"--to-destination": ("DNAT",), "--to-source": ("SNAT",), "--to": ("DNAT", "SNAT"),
                "--to-ports": ("MASQUERADE", "REDIRECT"), "--to-port": ("MASQUERADE", "REDIRECT")}
_UNSUPPORTED_TARGET_OPTS = {"--random", "--random-fully", "--persistent"}
_UNSUPPORTED_MATCH_OPTS = {"--syn": "tcp", "--tcp-flags": "tcp", "--tcp-option": "tcp",
                           "--limit-iface-in": "addrtype", "--limit-iface-out": "addrtype",
                           "--ports": "multiport"}
_UNSUPPORTED_CORE = {"-f": "fragments", "-g": "goto; use -j", "-6": "IPv6"}
_PORT_RE = re.compile(r"0|[1-9][0-9]{0,4}")


# -- words and values ---------------------------------------------------------------------------

def tokenize(line: str) -> list[str]:
    """Split one iptables-restore line into words: whitespace separates, ``"..."`` groups (and
    ends a word at its closing quote), ``\\x`` inside quotes is ``x``. An unterminated quote is an
    error (iptables-restore would swallow the rest of the line)."""
    if '"' not in line:
        return line.split()             # the common case, at C speed (a 100,000-rule file)
    words, buf, i, quoted = [], [], 0, False
    while i < len(line):
        c = line[i]
        if c == '"':
            j, part = i + 1, []
            while j < len(line) and line[j] != '"':
                if line[j] == "\\" and j + 1 < len(line):
                    j += 1
                part.append(line[j])
                j += 1
            if j >= len(line):
                raise InvalidArgument("unterminated quote")
            buf += part
            words.append("".join(buf))
            buf, i, quoted = [], j + 1, False
            continue
        if c in " \t\n\r":
            if buf or quoted:
                words.append("".join(buf))
            buf, quoted = [], False
        else:
            buf.append(c)
        i += 1
    if buf:
        words.append("".join(buf))
    return words


def parse_port(text: str, opt: str) -> int:
    """A decimal port 0..65535 (no service names, no leading zeros)."""
    if not _PORT_RE.fullmatch(text) or int(text) > 65535:
        hint = " (service names are not supported)" if text.isalpha() else ""
        raise InvalidArgument(f'bad port "{text}" in {opt}{hint}')
    return int(text)


def parse_match_range(text: str, opt: str) -> PortRange:
    """``--sport``/``--dport`` value: ``P``, ``A:B``, ``A:`` (to 65535), ``:B`` (from 0) or ``:``."""
    if ":" not in text:
        return PortRange.single(parse_port(text, opt))
    lo, _, hi = text.partition(":")
    lo_n = parse_port(lo, opt) if lo else 0
    hi_n = parse_port(hi, opt) if hi else 65535
    if lo_n > hi_n:
        raise InvalidArgument(f'bad port range "{text}" in {opt} (min > max)')
    return PortRange(lo_n, hi_n)


def parse_multiport(text: str, opt: str) -> tuple[PortRange, ...]:
    """``--sports``/``--dports`` value: comma-separated ``P`` or ``A:B`` with ``A < B``."""
    out = []
    for item in text.split(","):
        if ":" in item:
            lo, _, hi = item.partition(":")
            lo_n, hi_n = parse_port(lo, opt), parse_port(hi, opt)
            if lo_n >= hi_n:
                raise InvalidArgument(f'bad port range "{item}" in {opt} (min must be below max)')
            out.append(PortRange(lo_n, hi_n))
        else:
            out.append(PortRange.single(parse_port(item, opt)))
    return tuple(out)


def parse_target_ports(text: str, opt: str) -> PortRange:
    """NAT target ports: ``P`` or ``A-B`` (a colon is refused, as iptables does)."""
    if ":" in text:
        raise InvalidArgument(f'bad port range "{text}" in {opt} (use a dash: A-B)')
    lo, dash, hi = text.partition("-")
    lo_n = parse_port(lo, opt)
    hi_n = parse_port(hi, opt) if dash else lo_n
    if lo_n > hi_n:
        raise InvalidArgument(f'bad port range "{text}" in {opt} (min > max)')
    return PortRange(lo_n, hi_n)


_DOTTED_QUAD = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")


@functools.lru_cache(maxsize=65536)
def _ipv4(text: str) -> ipaddress.IPv4Address:
    """``ipaddress.IPv4Address(text)`` (the same strict dotted quad, ValueError otherwise), several
    times faster: a 100,000-rule iptables-save file holds some 200,000 addresses."""
    m = _DOTTED_QUAD.fullmatch(text)
    if m is None:
        raise ValueError(text)
    a, b, c, d = (int(x) for x in m.groups())
    if a > 255 or b > 255 or c > 255 or d > 255:
        raise ValueError(text)
    return ipaddress.IPv4Address((a << 24) | (b << 16) | (c << 8) | d)


def parse_to(text: str, opt: str) -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv4Address | None,
                                          PortRange | None, int | None]:
    """DNAT/SNAT value ``[A[-B]][:P[-Q][/BASE]]`` as iptables 1.8 takes it: (first address, last
    address or None, ports or None, port base or None). Either part may be left out, not both."""
    addr, colon, ports = text.partition(":")
    if not addr and not ports:
        raise InvalidArgument(f'bad value "{text}" in {opt} (need an address, ports or both)')
    lo = hi = None
    if addr:
        first, dash, last = addr.partition("-")
        try:
            lo = _ipv4(first)
            hi = _ipv4(last) if dash else None
        except ValueError:
            raise InvalidArgument(f'bad address "{addr}" in {opt}') from None
        if hi is not None and int(hi) < int(lo):
            raise InvalidArgument(f'bad address range "{addr}" in {opt} (min > max)')
    port_range, base = (parse_shifted_ports(ports, opt) if colon else (None, None))
    return lo, hi, port_range, base


def parse_shifted_ports(text: str, opt: str) -> tuple[PortRange, int | None]:
    """``P[-Q][/BASE]``: a target port range and its shift base (iptables 1.8; BASE needs P-Q)."""
    ports, slash, base = text.partition("/")
    rng = parse_target_ports(ports, opt)
    if not slash:
        return rng, None
    if rng.lo == rng.hi:
        raise InvalidArgument(f'bad port range "{text}" in {opt} (a base needs a range P-Q/BASE)')
    if not base.isdigit() or int(base) > 65535:
        raise InvalidArgument(f'bad port base "{base}" in {opt} (must be 0-65535)')
    return rng, int(base)


@functools.lru_cache(maxsize=65536)
def parse_address(text: str, opt: str) -> ipaddress.IPv4Network:
    """``-s``/``-d`` value: ``A.B.C.D[/LEN|/MASK]``; hostnames, lists and odd masks are refused."""
    if "," in text:
        raise InvalidArgument(f'multiple addresses in {opt} are not supported ("{text}")')
    addr, slash, mask = text.partition("/")
    try:
        ip = _ipv4(addr)
    except ValueError:
        raise InvalidArgument(f'bad address "{text}" in {opt} (hostnames are not supported)') from None
    if slash and "." in mask:
        try:
            net = ipaddress.IPv4Network(f"0.0.0.0/{mask}")
        except ValueError:
            raise InvalidArgument(f'unsupported non-contiguous netmask "{mask}" in {opt}') from None
        mask = str(net.prefixlen)
    if slash and (not mask.isdigit() or int(mask) > 32):
        raise InvalidArgument(f'bad netmask "{mask}" in {opt}')
    plen = int(mask or 32)
    return ipaddress.IPv4Network((int(ip) & (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, plen))


# -- rule specs ---------------------------------------------------------------------------------

@dataclass
class _Spec:
    """What has been read of one rule spec so far."""

    values: dict = field(default_factory=dict)
    order: list = field(default_factory=list)
    ports_module: str | None = None         # an explicit -m tcp / -m udp
    open_multiport: bool = False            # a -m multiport waiting for --sports/--dports
    loaded: set = field(default_factory=set)
    has_to: bool = False                    # --to-destination/--to-source/--to-ports was given

    def put(self, key: str, value, neg: bool, opt: str, *, twice: str | None = None,
            neg_key: str | None = None):
        if key in self.values:
            raise InvalidArgument(twice or f"multiple {opt} flags not allowed")
        self.values[key] = value
        if neg:
            self.values[neg_key or key + "_neg"] = True

    def use(self, key: str):
        if key not in self.order:
            self.order.append(key)


def parse_rule_args(args: list[str]) -> Rule:
    """Parse a rule spec (argv after the chain name) into a ``Rule``; see the module docstring."""
    sp, neg, i = _Spec(), False, 0
    count = len(args)
    while i < count:
        tok = args[i]
        if tok == "!":
            if neg:
                raise InvalidArgument('multiple consecutive "!" not allowed')
            neg, i = True, i + 1
            continue
        opt = ALIASES.get(tok, tok)
        n = RULE_OPTION_ARITY.get(opt, 0)
        if n:
            if i + n >= count:
                raise InvalidArgument(f'option "{tok}" needs a value')
            vals = args[i + 1:i + 1 + n]
        else:
            vals = ()
        _apply_option(sp, opt, tok, vals, neg)      # refuses unsupported options first, by name
        if neg and opt not in _INVERTIBLE:
            raise InvalidArgument(f'option "{tok}" cannot be inverted with "!"')
        neg, i = False, i + 1 + n
    if neg:
        raise InvalidArgument('"!" must be followed by an option')
    if sp.open_multiport:
        raise InvalidArgument("-m multiport needs --sports or --dports")
    if "addrtype" in sp.loaded and "src_type" not in sp.values and "dst_type" not in sp.values:
        raise InvalidArgument("-m addrtype needs --src-type or --dst-type")
    if "comment" in sp.loaded and "comment" not in sp.values:
        raise InvalidArgument("-m comment needs --comment")
    if sp.ports_module is not None:
        proto = sp.values.get("proto")
        if str(proto).lower() not in (sp.ports_module, str(protocols.number(sp.ports_module))):
            raise InvalidArgument(f"-m {sp.ports_module} needs -p {sp.ports_module}")
        if "sport" not in sp.values and "dport" not in sp.values:
            sp.values["dport"] = FULL_PORTS         # a bare -m tcp
    return Rule(**sp.values, match_order=tuple(sp.order))


def _apply_option(sp: _Spec, opt: str, tok: str, vals: list[str], neg: bool) -> None:
    v = vals[0] if vals else None
    if opt in ("-s", "-d"):
        sp.put("src" if opt == "-s" else "dst", parse_address(v, opt), neg, opt)
    elif opt in ("-i", "-o"):
        key = "in" if opt == "-i" else "out"
        sp.put(key + "_iface", v, neg, opt, neg_key=key + "_neg")
    elif opt == "-p":
        sp.put("proto", v, neg, opt)
    elif opt == "-m":
        _load_match(sp, v)
    elif opt in ("--sport", "--dport"):
        sp.put(opt[2:], parse_match_range(v, tok), neg, tok, twice=f'option "{tok}" can only be used once')
        sp.use("ports")
    elif opt in ("--sports", "--dports"):
        if "multiport" not in sp.loaded:
            raise InvalidArgument(f'option "{tok}" needs -m multiport')
        if not sp.open_multiport:
            raise InvalidArgument("one -m multiport takes one of --sports or --dports "
                                  "(use a second -m multiport)")
        key = "msports" if opt == "--sports" else "mdports"
        sp.put(key, parse_multiport(v, tok), neg, tok,
               twice=f"-m multiport {opt} given twice (dockline supports one each of --sports and --dports)")
        sp.open_multiport = False
        sp.use(key)
    elif opt in ("--src-type", "--dst-type"):
        if "addrtype" not in sp.loaded:
            raise InvalidArgument(f'option "{tok}" needs -m addrtype')
        key = "src_type" if opt == "--src-type" else "dst_type"
        sp.put(key, v, neg, tok, twice=f'option "{tok}" can only be used once')
    elif opt == "--comment":
        if "comment" not in sp.loaded:
            raise InvalidArgument('option "--comment" needs -m comment')
        sp.put("comment", v, False, tok, twice='option "--comment" can only be used once')
    elif opt == "-j":
        if v in UNSUPPORTED_TARGETS:
            raise InvalidArgument(f'unsupported target "-j {v}" (supported: DNAT, SNAT, MASQUERADE, '
                                  "REDIRECT, RETURN, ACCEPT or a user chain)")
        sp.put("target", v, False, opt)
    elif opt in _TARGET_OPTS:
        _target_option(sp, opt, tok, v)
    elif opt in _UNSUPPORTED_TARGET_OPTS:
        target = sp.values.get("target")
        where = f" for target {target}" if target else ""
        raise InvalidArgument(f'unsupported option "{tok}"{where}')
    elif opt in _UNSUPPORTED_MATCH_OPTS:
        raise InvalidArgument(f'unsupported option "{tok}" for match {_UNSUPPORTED_MATCH_OPTS[opt]}')
    elif opt in _UNSUPPORTED_CORE:
        raise InvalidArgument(f'unsupported option "{tok}" ({_UNSUPPORTED_CORE[opt]})')
    elif opt == "-4" or opt == "-c":
        if opt == "-c" and not all(x.isdigit() for x in vals):
            raise InvalidArgument(f'bad counters "{" ".join(vals)}" in -c')
    elif tok.startswith("-") and len(tok) > 1:
        raise InvalidArgument(f'unknown option "{tok}"')
    else:
        raise InvalidArgument(f'unexpected argument "{tok}"')


def _load_match(sp: _Spec, name: str) -> None:
    if name not in SUPPORTED_MATCHES:
        raise InvalidArgument(f'unsupported match "-m {name}" (supported: {", ".join(SUPPORTED_MATCHES)})')
    if sp.open_multiport:
        raise InvalidArgument("-m multiport needs --sports or --dports")
    if name in ("tcp", "udp"):
        if sp.ports_module == name:
            raise InvalidArgument(f"-m {name} given twice")
        if sp.ports_module is not None:
            raise InvalidArgument(f"-m {name} cannot be combined with -m {sp.ports_module}")
        sp.ports_module = name
        sp.use("ports")
    elif name == "multiport":
        sp.open_multiport = True
    else:
        if name in sp.loaded:
            raise InvalidArgument(f"-m {name} given twice (dockline supports one per rule)")
        sp.use(name)
    sp.loaded.add(name)


def _target_option(sp: _Spec, opt: str, tok: str, v: str) -> None:
    target = sp.values.get("target")
    allowed = _TARGET_OPTS[opt]
    if target not in allowed:
        if target is None:
            raise InvalidArgument(f'option "{tok}" needs -j {" or -j ".join(allowed)}')
        raise InvalidArgument(f'unknown option "{tok}" for target {target}')
    if target in ("DNAT", "SNAT"):
        name = "--to-destination" if target == "DNAT" else "--to-source"
        if sp.has_to:
            raise InvalidArgument(f'option "{name}" can only be used once')
        sp.has_to = True
        lo, hi, ports, base = parse_to(v, name)
        for key, value in (("to_addr", lo), ("to_addr_hi", hi), ("to_ports", ports), ("to_port_base", base)):
            if value is not None:
                sp.values[key] = value
    else:
        if sp.has_to:
            raise InvalidArgument('option "--to-ports" can only be used once')
        sp.has_to = True
        ports, base = parse_shifted_ports(v, "--to-ports")
        sp.values["to_ports"] = ports
        if base is not None:
            sp.values["to_port_base"] = base


# -- iptables-save text -------------------------------------------------------------------------

_COUNTERS = re.compile(r"\[\d+:\d+\]")


def parse_save(text: str) -> tuple[Ruleset, list[str]]:
    """Parse iptables-save output into the nat ``Ruleset`` plus warnings for skipped tables."""
    warnings: list[str] = []
    table, table_line, nat = None, 0, None
    lines = text.splitlines()
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("*"):
                if table is not None:
                    raise InvalidArgument(f"*{line[1:]} starts before COMMIT of *{table}")
                table, table_line = line[1:].strip(), n
                if table == "nat":
                    if nat is not None:
                        raise InvalidArgument("second *nat table")
                    nat = _NatBlock()
                else:
                    warnings.append(f"line {n}: skipped table *{table} (dockline handles only the nat table)")
            elif table is None:
                raise InvalidArgument(f'expected "*nat" before "{line}"')
            elif line == "COMMIT":
                if table == "nat":
                    ruleset = nat.build()
                table = None
            elif table == "nat":
                nat.add_line(n, line)
        except DocklineError as e:
            raise type(e)(f"line {getattr(e, 'line', n)}: {e.message}") from None
    if table is not None:
        raise InvalidArgument(f"line {table_line}: *{table} has no COMMIT")
    if nat is None:
        raise InvalidArgument("no *nat table in the input")
    return ruleset, warnings


class _NatBlock:
    """The lines of one ``*nat`` block; ``build`` checks and assembles them at COMMIT, as
    iptables-restore does (a jump may name a chain declared further down)."""

    def __init__(self):
        self.chains: dict[str, int] = {}                     # name -> line declared
        self.rules: list[tuple[int, str, Rule]] = []

    def add_line(self, n: int, line: str) -> None:
        if line.startswith(":"):
            self._chain_line(n, line[1:].split())
            return
        if _COUNTERS.match(line):
            line = _COUNTERS.sub("", line, count=1).strip()
        words = tokenize(line)
        if len(words) < 2 or words[0] not in ("-A", "--append"):
            raise InvalidArgument(f'only ":CHAIN" and "-A CHAIN ..." lines are supported, got "{line}"')
        self.rules.append((n, words[1], parse_rule_args(words[2:])))

    def _chain_line(self, n: int, words: list[str]) -> None:
        if len(words) not in (2, 3) or (len(words) == 3 and not _COUNTERS.fullmatch(words[2])):
            raise InvalidArgument(f'bad chain line ":{" ".join(words)}" (want ":NAME POLICY [p:b]")')
        name, policy = words[0], words[1]
        if name in self.chains:
            raise InvalidArgument(f'chain "{name}" declared twice')
        if name in BUILTIN_CHAINS:
            if policy != "ACCEPT":
                raise InvalidArgument(f'unsupported policy "{policy}" for {name} (the nat table only allows ACCEPT)')
        else:
            check_chain_name(name)
            if policy != "-":
                raise InvalidArgument(f'user chain "{name}" cannot have policy "{policy}" (write "-")')
        self.chains[name] = n

    def build(self) -> Ruleset:
        rs = Ruleset({name: [] for name in self.chains})
        where: dict[tuple[str, int], int] = {}
        for n, chain, rule in self.rules:
            if chain not in rs.chains:
                err = NotFound(f'chain "{chain}" does not exist')
                err.line = n
                raise err
            where[(chain, len(rs.chains[chain]))] = n
            rs.chains[chain].append(rule)
        p = rs.problem()
        if p is not None:
            err = p.kind(p.message)
            err.line = where.get((p.chain, p.index), self.chains.get(p.chain, 0))
            raise err
        return rs

"""Apply one ``iptables -t nat ...`` command line to a ``Ruleset``.

Contract: ``apply(ruleset, argv) -> (new_ruleset, output)``. ``argv`` is what follows
``iptables`` (``["-t", "nat", "-A", "PREROUTING", "-p", "tcp", ...]``). The input ruleset is never
mutated; the returned one is a fresh copy (validated as a whole after every change). ``output`` is
the text iptables would print: empty for changes and ``-C``, the listing for ``-L``/``-S``.

Commands (short and long forms): ``-A chain rule``, ``-I chain [num] rule``, ``-D chain rule|num``,
``-R chain num rule``, ``-C chain rule``, ``-F [chain]``, ``-N chain``, ``-X [chain]``,
``-L [chain [num]]``, ``-S [chain [num]]``, ``-P chain ACCEPT``. Exactly one per call, and
``-t nat`` is required. Flags ``-n -v -x --line-numbers -w [secs] -W [usecs]`` are accepted
(``-v``, ``-x`` and ``--line-numbers`` shape ``-L``; the rest change nothing); short flags may be
bundled (``-nvL``).

``-X`` without a chain deletes every user chain, all or nothing like iptables-nft: it fails with
Conflict, deleting none, if any user chain still has rules or is jumped to from a built-in chain.

Errors: InvalidArgument (bad or unsupported input), NotFound (missing chain, rule or rule number),
Conflict (chain exists, is referenced, or is not empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Conflict, InvalidArgument, NotFound
from .listing import ListFormat, list_rules, list_table
from .parser import ALIASES, RULE_OPTION_ARITY, parse_rule_args
from .rules import BUILTIN_CHAINS, Rule, Ruleset, check_chain_name

#: command flag -> command name
COMMANDS = {
    "-A": "append", "--append": "append", "-I": "insert", "--insert": "insert",
    "-D": "delete", "--delete": "delete", "-R": "replace", "--replace": "replace",
    "-C": "check", "--check": "check", "-F": "flush", "--flush": "flush",
    "-N": "new-chain", "--new-chain": "new-chain", "-X": "delete-chain",
    "--delete-chain": "delete-chain", "-L": "list", "--list": "list", "-S": "list-rules",
    "--list-rules": "list-rules", "-P": "policy", "--policy": "policy",
}
UNSUPPORTED_COMMANDS = {"-E", "--rename-chain", "-Z", "--zero", "-h", "--help", "-V", "--version"}
_FLAGS = {"-n": "numeric", "--numeric": "numeric", "-v": "verbose", "--verbose": "verbose",
          "-x": "exact", "--exact": "exact", "--line-numbers": "line_numbers",
          "-w": "wait", "--wait": "wait", "-W": "wait", "--wait-interval": "wait"}
_BUNDLE_LETTERS = set("nvxwLSFX")
_TABLE_ERROR = "only the nat table is supported (-t nat)"


@dataclass
class _Command:
    """One parsed command line."""

    name: str | None = None
    flag: str | None = None
    chain: str | None = None
    number: str | None = None          # rule number (or policy, for -P), as typed
    table: str | None = None
    flags: set = field(default_factory=set)
    spec: list = field(default_factory=list)


def apply(ruleset: Ruleset, argv: list[str]) -> tuple[Ruleset, str]:
    """Apply one command to a copy of ``ruleset``; return ``(new ruleset, text to print)``."""
    try:
        cmd = _scan(list(argv))
    except InvalidArgument:
        if not _names_nat(argv):        # the table is the first thing wrong with such a line
            raise InvalidArgument(_TABLE_ERROR) from None
        raise
    if cmd.table != "nat":
        raise InvalidArgument(_TABLE_ERROR)
    if cmd.name is None:
        raise InvalidArgument("no command given (one of -A -I -D -R -C -F -N -X -L -S -P)")
    rs = ruleset.copy()
    out = _HANDLERS[cmd.name](rs, cmd)
    if cmd.name not in ("list", "list-rules", "check"):
        rs.validate()
    return rs, out


def apply_unvalidated(ruleset: Ruleset, argv: list[str]) -> Ruleset:
    """One changing command applied to ``ruleset`` itself (no copy) and not validated as a
    whole: for iptables-restore (control/nat/restore.py), which validates at COMMIT."""
    cmd = _scan(list(argv))
    if cmd.table != "nat":
        raise InvalidArgument(_TABLE_ERROR)
    if cmd.name is None:
        raise InvalidArgument("no command given (one of -A -I -D -R -F -N -X -P)")
    if cmd.name in ("list", "list-rules", "check"):
        raise InvalidArgument(f"{cmd.flag} is not a restore command")
    _HANDLERS[cmd.name](ruleset, cmd)
    return ruleset


def is_listing(argv: list[str]) -> bool:
    """Whether ``argv`` is a -L/-S command (any spelling); False for a line ``apply`` refuses."""
    try:
        return _scan(list(argv)).name in ("list", "list-rules")
    except InvalidArgument:
        return False


# -- scanning the command line ------------------------------------------------------------------

def _names_nat(argv: list[str]) -> bool:
    pairs = zip(argv, argv[1:])
    return ("-tnat" in argv or "--table=nat" in argv
            or any(a in ("-t", "--table") and b == "nat" for a, b in pairs))


def _expand(tok: str) -> list[str]:
    """Split a bundled short-flag word (``-nvL`` -> ``-n -v -L``), ``-tnat`` and ``--opt=value``."""
    if len(tok) > 2 and tok[0] == "-" and tok[1] != "-" and set(tok[1:]) <= _BUNDLE_LETTERS:
        return ["-" + c for c in tok[1:]]
    if len(tok) > 2 and tok.startswith("-t") and tok[2] != "-":
        return ["-t", tok[2:]]
    if tok.startswith("--") and tok.split("=", 1)[0] in ("--table", "--wait", "--wait-interval"):
        return tok.split("=", 1)
    return [tok]


def _scan(argv: list[str]) -> _Command:
    """Sort the words into table, command, command arguments, flags and the rule spec. Only words
    in option position are expanded; the values of rule options are skipped over unread."""
    cmd, args, i = _Command(), list(argv), 0

    def optional_arg(j: int) -> str | None:
        return args[j] if j < len(args) and not args[j].startswith("-") and args[j] != "!" else None

    while i < len(args):
        args[i:i + 1] = _expand(args[i])
        tok = args[i]
        if tok in ("-t", "--table"):
            if i + 1 >= len(args):
                raise InvalidArgument(_TABLE_ERROR)
            if args[i + 1] != "nat":
                raise InvalidArgument(_TABLE_ERROR)
            cmd.table, i = args[i + 1], i + 2
        elif tok in COMMANDS:
            if cmd.name is not None:
                raise InvalidArgument(f"only one command per call (got {cmd.flag} and {tok})")
            cmd.name, cmd.flag = COMMANDS[tok], tok
            i = _command_args(cmd, args, i + 1, optional_arg)
        elif tok in UNSUPPORTED_COMMANDS:
            raise InvalidArgument(f'unsupported command "{tok}" (supported: -A -I -D -R -C -F -N -X -L -S -P)')
        elif tok in _FLAGS:
            cmd.flags.add(_FLAGS[tok])
            i += 1
            if _FLAGS[tok] == "wait" and i < len(args) and args[i].replace(".", "", 1).isdigit():
                i += 1
        else:
            n = 1 + RULE_OPTION_ARITY.get(ALIASES.get(tok, tok), 0)
            cmd.spec += args[i:i + n]
            i += n
    return cmd


def _command_args(cmd: _Command, args: list[str], i: int, optional_arg) -> int:
    """Read the positional arguments of ``cmd.flag`` starting at ``args[i]``; return the next index."""
    name = cmd.name
    if name in ("flush", "delete-chain", "list", "list-rules"):
        cmd.chain = optional_arg(i)
        if cmd.chain is None:
            return i
        i += 1
        if name in ("list", "list-rules") and optional_arg(i) is not None:
            cmd.number, i = args[i], i + 1
        return i
    if i >= len(args) or args[i].startswith("-") or args[i] == "!":
        raise InvalidArgument(f'option "{cmd.flag}" needs a chain name')
    cmd.chain, i = args[i], i + 1
    if name in ("insert", "delete") and optional_arg(i) is not None:
        cmd.number, i = args[i], i + 1
    elif name in ("replace", "policy"):
        if i >= len(args):
            raise InvalidArgument(f'option "{cmd.flag}" needs a chain name and '
                                  + ("a rule number" if name == "replace" else "a policy"))
        cmd.number, i = args[i], i + 1
    return i


# -- handlers -----------------------------------------------------------------------------------

def _chain(rs: Ruleset, name: str) -> list[Rule]:
    if name not in rs.chains:
        raise NotFound(f'chain "{name}" does not exist')
    return rs.chains[name]


def _rulenum(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f'invalid rule number "{text}"')
    return int(text)


def _no_spec(cmd: _Command) -> None:
    if cmd.spec:
        raise InvalidArgument(f'unexpected argument "{cmd.spec[0]}" for {cmd.flag}')


def _rule(cmd: _Command) -> Rule:
    return parse_rule_args(cmd.spec)


def _append(rs: Ruleset, cmd: _Command) -> str:
    rules = _chain(rs, cmd.chain)
    rules.append(_rule(cmd))
    return ""


def _insert(rs: Ruleset, cmd: _Command) -> str:
    rules = _chain(rs, cmd.chain)
    n = _rulenum(cmd.number) if cmd.number is not None else 1
    rule = _rule(cmd)
    if n > len(rules) + 1:
        raise NotFound(f"index of insertion too big: chain {cmd.chain} has {len(rules)} rules")
    rules.insert(n - 1, rule)
    return ""


def _delete(rs: Ruleset, cmd: _Command) -> str:
    rules = _chain(rs, cmd.chain)
    if cmd.number is not None:
        _no_spec(cmd)
        n = _rulenum(cmd.number)
        if n > len(rules):
            raise NotFound(f"rule number {n} does not exist in chain {cmd.chain}")
        del rules[n - 1]
        return ""
    rule = _rule(cmd)
    if rule not in rules:
        raise NotFound(f"no matching rule in chain {cmd.chain}")
    rules.remove(rule)
    return ""


def _replace(rs: Ruleset, cmd: _Command) -> str:
    rules = _chain(rs, cmd.chain)
    n = _rulenum(cmd.number)
    rule = _rule(cmd)
    if n > len(rules):
        raise NotFound(f"rule number {n} does not exist in chain {cmd.chain}")
    rules[n - 1] = rule
    return ""


def _check(rs: Ruleset, cmd: _Command) -> str:
    rules = _chain(rs, cmd.chain)
    if _rule(cmd) not in rules:
        raise NotFound(f"no matching rule in chain {cmd.chain}")
    return ""


def _flush(rs: Ruleset, cmd: _Command) -> str:
    _no_spec(cmd)
    for name in ([cmd.chain] if cmd.chain is not None else list(rs.chains)):
        _chain(rs, name).clear()
    return ""


def _new_chain(rs: Ruleset, cmd: _Command) -> str:
    _no_spec(cmd)
    if cmd.chain in rs.chains:
        raise Conflict(f'chain "{cmd.chain}" already exists')
    check_chain_name(cmd.chain)
    rs.chains[cmd.chain] = []
    return ""


def _delete_chain(rs: Ruleset, cmd: _Command) -> str:
    _no_spec(cmd)
    if cmd.chain is not None:
        if cmd.chain in BUILTIN_CHAINS:
            raise InvalidArgument(f"cannot delete built-in chain {cmd.chain}")
        names = [cmd.chain]
        _chain(rs, cmd.chain)
    else:
        names = sorted(rs.user_chains())
    for name in names:
        if rs.chains[name]:
            raise Conflict(f'chain "{name}" is not empty ({len(rs.chains[name])} rules); flush it first')
        refs = [c for c, _ in rs.references(name) if c not in names]
        if refs:
            raise Conflict(f'chain "{name}" is in use: jumped to from {", ".join(dict.fromkeys(refs))}')
    for name in names:
        del rs.chains[name]
    return ""


def _format(cmd: _Command) -> ListFormat:
    return ListFormat(verbose="verbose" in cmd.flags, exact="exact" in cmd.flags,
                      line_numbers="line_numbers" in cmd.flags)


def _list(rs: Ruleset, cmd: _Command) -> str:
    _no_spec(cmd)
    if cmd.chain is not None:
        _chain(rs, cmd.chain)
    n = _rulenum(cmd.number) if cmd.number is not None else None
    if cmd.name == "list":
        return list_table(rs, cmd.chain, n, _format(cmd))
    return list_rules(rs, cmd.chain, n)


def _policy(rs: Ruleset, cmd: _Command) -> str:
    _no_spec(cmd)
    _chain(rs, cmd.chain)
    if cmd.chain not in BUILTIN_CHAINS:
        raise InvalidArgument(f"cannot set the policy of user chain {cmd.chain}")
    if cmd.number != "ACCEPT":
        raise InvalidArgument(f'unsupported policy "{cmd.number}" (the nat table only allows ACCEPT)')
    return ""


_HANDLERS = {
    "append": _append, "insert": _insert, "delete": _delete, "replace": _replace, "check": _check,
    "flush": _flush, "new-chain": _new_chain, "delete-chain": _delete_chain, "list": _list,
    "list-rules": _list, "policy": _policy,
}

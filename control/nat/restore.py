"""``iptables-restore -T nat`` for dockline's nat table: the same input, the same semantics.

Contract: ``restore(current, text, noflush) -> (ruleset or None, warnings)``. ``current`` is the
table now (the user's rules); it is never mutated. The ``*nat`` block of ``text`` is applied to
a copy as iptables-restore applies it, and the result is returned for the caller to apply in one
step (nothing is applied here). None means the input has no ``*nat`` block: iptables-restore
then leaves the nat table alone, and so does the caller.

- Without ``noflush`` the table starts empty: every rule and user chain not in the input is gone.
- With ``noflush`` the table keeps what it has. A declared user chain (``:NAME - [p:b]``) is
  flushed if it exists and created if not; a declared built-in chain keeps its rules (its
  policy must be ACCEPT or ``-``, the only ones the nat table takes).
- Lines are iptables commands as iptables-restore takes them: ``-A`` (the iptables-save form,
  read fast enough for 100,000 rules), and ``-I -D -R -F -N -X -P`` through the front end's
  command engine (control/nat/commands.py). A ``[packets:bytes]`` prefix is accepted (counters
  are not kept). Listing commands are refused.
- At ``COMMIT`` the whole table is validated (jumps may name chains declared further down, as
  with iptables-restore). Errors name the 1-based line; other tables are skipped with one
  warning each.
"""

from __future__ import annotations

from ..errors import DocklineError, InvalidArgument, NotFound
from . import commands
from .parser import _COUNTERS, parse_rule_args, tokenize
from .rules import BUILTIN_CHAINS, Ruleset, check_chain_name

_LISTING = {"-L", "--list", "-S", "--list-rules", "-C", "--check"}


def restore(current: Ruleset, text: str, noflush: bool) -> tuple[Ruleset | None, list[str]]:
    warnings: list[str] = []
    table, table_line, block, result = None, 0, None, None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("*"):
                if table is not None:
                    raise InvalidArgument(f"*{line[1:]} starts before COMMIT of *{table}")
                table, table_line = line[1:].strip(), n
                if table == "nat":
                    if result is not None:
                        raise InvalidArgument("second *nat table")
                    block = _Block(current.copy() if noflush else Ruleset(), noflush)
                else:
                    warnings.append(f"line {n}: skipped table *{table} (dockline handles only the nat table)")
            elif table is None:
                raise InvalidArgument(f'expected "*nat" before "{line}"')
            elif line == "COMMIT":
                if table == "nat":
                    result = block.commit()
                table = None
            elif table == "nat":
                block.line(n, line)
        except DocklineError as e:
            raise type(e)(f"line {getattr(e, 'line', None) or n}: {e.message}") from None
    if table is not None:
        raise InvalidArgument(f"line {table_line}: *{table} has no COMMIT")
    return result, warnings


class _Block:
    """One ``*nat`` block being applied to ``rs``."""

    def __init__(self, rs: Ruleset, noflush: bool):
        self.rs = rs
        self.noflush = noflush
        self.declared: dict[str, int] = {}      # chain -> line it was declared on
        self.appended: dict[str, int] = {}      # chain -> line of its latest -A (for COMMIT errors)

    def line(self, n: int, line: str) -> None:
        if line.startswith(":"):
            self._declare(n, line[1:].split())
            return
        if _COUNTERS.match(line):
            line = _COUNTERS.sub("", line, count=1).strip()
        words = tokenize(line)
        if len(words) >= 2 and words[0] in ("-A", "--append"):
            chain = words[1]
            if chain not in self.rs.chains:
                raise NotFound(f'chain "{chain}" does not exist')
            self.rs.chains[chain].append(parse_rule_args(words[2:]))
            self.appended[chain] = n
            return
        if not words or words[0] in _LISTING or words[0].startswith("-t") or words[0] == "--table":
            raise InvalidArgument(f'"{line}" is not a restore command (-A -I -D -R -F -N -X -P; no -t)')
        self.rs = commands.apply_unvalidated(self.rs, ["-t", "nat", *words])

    def _declare(self, n: int, words: list[str]) -> None:
        if len(words) not in (2, 3) or (len(words) == 3 and not _COUNTERS.fullmatch(words[2])):
            raise InvalidArgument(f'bad chain line ":{" ".join(words)}" (want ":NAME POLICY [p:b]")')
        name, policy = words[0], words[1]
        if name in self.declared:
            raise InvalidArgument(f'chain "{name}" declared twice')
        self.declared[name] = n
        if name in BUILTIN_CHAINS:
            if policy not in ("ACCEPT", "-"):
                raise InvalidArgument(f'unsupported policy "{policy}" for {name} (the nat table only allows ACCEPT)')
            return
        check_chain_name(name)
        if policy != "-":
            raise InvalidArgument(f'user chain "{name}" cannot have policy "{policy}" (write "-")')
        self.rs.chains[name] = []             # created, or flushed (noflush) where it existed

    def commit(self) -> Ruleset:
        p = self.rs.problem()
        if p is not None:
            err = p.kind(p.message)
            err.line = self.appended.get(p.chain, self.declared.get(p.chain, 0)) or 0
            raise err
        return self.rs

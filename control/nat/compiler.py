"""Compile a nat ``Ruleset`` into the instruction array the BPF programs evaluate
(ebpf/lib/nat_rules.h, struct nat_rule in ebpf/lib/structs.h).

Contract of the output (``Program``):
  * ``instructions[pc]`` is evaluated at pc: if its conditions hold, ``op`` decides (a terminal
    translation or ACCEPT, a GOTO to ``on_match``, or a LOOKUP in exact-match table ``table``);
    otherwise evaluation goes on at ``on_miss``. pcs are relative to the program (the map writer
    adds the generation's base).
  * Every goto is forward. User chains are inlined where they are jumped to (RETURN becomes a goto
    to the end of the inlined block), so there is no call stack and a path visits each
    instruction at most once. ``max_steps`` per hook is the longest path; it must stay within
    MAX_NAT_STEPS, and LOOKUPs per path within NAT_MAX_LOOKUPS (NAT_SOCK_LOOKUPS for OUTPUT):
    the compiler refuses rule sets that need more, by name.
  * Runs of consecutive rules that each compile to one terminal instruction (a translation,
    ACCEPT, RETURN; not a jump), with at least CLASSIFY_MIN that are not simple DNAT rules
    (CLASSIFY_MIN_OUTPUT at OUTPUT, which has fewer lookups),
    become a classifier: one CLASSIFY instruction followed by the rules' instructions, and a
    tuple-space index of them (Open vSwitch's classifier). Rules are grouped by shape (which
    fields they match exactly or by prefix: -s/-d prefix lengths, -p, a single --sport/--dport,
    -i, -o, addrtype); each shape is one hash from the masked fields to the first rule with
    them. A new flow costs one lookup per shape, not one visit per rule, and the first rule
    that matches wins, as in iptables. Conditions a key cannot hold (negations, port ranges)
    stay in the instruction and are checked at the rule found. Rules of a shape with one key
    are candidates in order (the ``table`` of a classified rule points to the next, at most
    NAT_CLS_CHAIN of them); a rule whose key says everything about it ends the list (later
    rules with that key can never be first). A longer list, or more than NAT_CLS_SHAPES shapes,
    starts a new classifier, so no candidate is ever hidden.
  * Runs of consecutive "simple" DNAT rules (``-p tcp|udp --dport P [-d A/32] [[!] -i IF] -j DNAT
    --to-destination B[:Q]``, Docker's shape) become one LOOKUP instruction and entries of
    ``exact``: constant cost per packet however many such rules there are. Within a run no key
    repeats and no specific destination follows an "any" one for the same port, so the BPF
    order (specific, then any) is iptables' first-match order.

Addresses are IPv4Address/IPv4Network here; ``to_ctypes`` in control/datapath/nat_maps.py turns
them into network-order map values. Interface names resolve through ``ifindex(name)``; a name
that does not exist compiles to an ifindex no packet has (the rule cannot match yet, as in
iptables).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

from ..errors import InvalidArgument
from .rules import PROTO_NUMBERS, PortRange, Rule, Ruleset

# keep in step with ebpf/lib/consts.h and structs.h (tests/unit/test_nat_compiler.py reads both)
MAX_NAT_RULES = 131072
MAX_NAT_SHAPES = 4096
NAT_CLS_SHAPES = 32                  # shapes per classifier (NAT_SOCK_SHAPES at OUTPUT)
NAT_SOCK_SHAPES = 8
NAT_CLS_CHAIN = 4                    # candidates one key may have (rules a key cannot tell apart)
CLASSIFY_MIN = 8                     # fewer non-simple rules in a run: plain instructions (cheaper)
CLASSIFY_MIN_OUTPUT = 32             # OUTPUT has 2 lookups, not 8: classify only where visits run out
MAX_NAT_STEPS = 256
NAT_MAX_LOOKUPS = 8
NAT_SOCK_LOOKUPS = 2
NAT_SOCK_STEPS = 128                 # OUTPUT is evaluated by the socket programs, with less room
MAX_PORTS_PER_SIMPLE_RULE = 4096     # a --dport range expands to one exact entry per port

OP_GOTO, OP_ACCEPT, OP_DNAT, OP_SNAT, OP_MASQUERADE, OP_REDIRECT, OP_LOOKUP, OP_CLASSIFY = range(8)
NEG_SRC, NEG_DST, NEG_SPORT, NEG_DPORT = 0x01, 0x02, 0x04, 0x08
NEG_IIF, NEG_OIF, NEG_PROTO = 0x10, 0x20, 0x40
SRC_LOCAL, NEG_SRC_LOCAL, DST_LOCAL, NEG_DST_LOCAL = 0x100, 0x200, 0x400, 0x800
PORTS_REQUIRED = 0x1000
OPS = {"ACCEPT": OP_ACCEPT, "DNAT": OP_DNAT, "SNAT": OP_SNAT, "MASQUERADE": OP_MASQUERADE,
       "REDIRECT": OP_REDIRECT}
HOOKS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
EVALUATED_HOOKS = ("PREROUTING", "OUTPUT", "POSTROUTING")
NO_IFINDEX = 0xFFFFFFFF
ANY = ipaddress.IPv4Address(0)


@dataclass(slots=True)
class Instruction:
    """struct nat_rule, with relative pcs and Python values."""

    src: ipaddress.IPv4Network | None = None
    dst: ipaddress.IPv4Network | None = None
    sport: PortRange | None = None
    dport: PortRange | None = None
    iif: int = 0
    oif: int = 0
    proto: int = 0
    op: int = OP_GOTO
    neg: int = 0
    on_match: int = 0
    on_miss: int = 0
    to_addr: ipaddress.IPv4Address | None = None
    to_addr_hi: ipaddress.IPv4Address | None = None   # A-B: the last address
    to_ports: PortRange | None = None
    to_port_base: int | None = None                   # P-Q/BASE
    table: int = 0            # LOOKUP: exact table id; CLASSIFY: first shape slot; a classified
                              # rule: the next candidate with its key (0: none)
    shapes: int = 0           # CLASSIFY: number of shape slots
    origin: str = ""          # "CHAIN#n" of the rule it came from (listing, errors)


@dataclass(frozen=True)
class ExactKey:
    table: int
    daddr: ipaddress.IPv4Address      # ANY = any destination
    dport: int
    proto: int


@dataclass(frozen=True)
class ExactValue:
    to_addr: ipaddress.IPv4Address
    to_port: int                      # 0 = keep
    iif: int = 0
    iif_neg: bool = False


@dataclass(frozen=True)
class Shape:
    """struct nat_shape without its first pc: which fields a group of rules matches on."""

    src_plen: int = 0
    dst_plen: int = 0
    proto: bool = False
    sport: bool = False
    dport: bool = False
    iif: bool = False
    oif: bool = False
    local_mask: int = 0               # bit 0: --src-type, bit 1: --dst-type


class ClsKey(NamedTuple):
    """struct nat_cls_key, relative slot: a packet's fields under a shape's masks (ints; ports
    host order; addresses as integers of their dotted form)."""

    slot: int
    saddr: int = 0
    daddr: int = 0
    sport: int = 0
    dport: int = 0
    iif: int = 0
    oif: int = 0
    proto: int = 0
    local: int = 0


def _plen_mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def packet_key(shape: Shape, slot: int, saddr: int, daddr: int, sport: int, dport: int, iif: int, oif: int,
               proto: int, local: int) -> ClsKey:
    """A packet's key for ``shape`` (what nat_classify builds in C)."""
    return ClsKey(slot, saddr & _plen_mask(shape.src_plen), daddr & _plen_mask(shape.dst_plen),
                  sport if shape.sport else 0, dport if shape.dport else 0, iif if shape.iif else 0,
                  oif if shape.oif else 0, proto if shape.proto else 0, local & shape.local_mask)


@dataclass
class Program:
    instructions: list[Instruction] = field(default_factory=list)
    entries: dict[str, int] = field(default_factory=dict)
    exact: dict[ExactKey, ExactValue] = field(default_factory=dict)
    shapes: list[Shape] = field(default_factory=list)          # slot -> shape
    shape_first: list[int] = field(default_factory=list)       # slot -> first pc of its rules
    shape_last: set[int] = field(default_factory=set)          # each classifier's last slot
    cls: dict[ClsKey, int] = field(default_factory=dict)       # key -> pc of its first rule
    classifiers: dict[int, list[int]] = field(default_factory=dict)   # CLASSIFY pc -> its rules' pcs
    max_steps: dict[str, int] = field(default_factory=dict)
    max_lookups: dict[str, int] = field(default_factory=dict)
    managed_tables: dict[str, list[int]] = field(default_factory=dict)   # chain -> its exact tables


# ----------------------------------------------------------------------------- port sets
def _ranges_complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, lo = [], 0
    for a, b in sorted(ranges):
        if a > lo:
            out.append((lo, a - 1))
        lo = max(lo, b + 1)
    if lo <= 65535:
        out.append((lo, 65535))
    return out


def _ranges_merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [tuple(r) for r in out]


def _ranges_intersect(x: list[tuple[int, int]], y: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for a, b in x:
        for c, d in y:
            lo, hi = max(a, c), min(b, d)
            if lo <= hi:
                out.append((lo, hi))
    return _ranges_merge(out)


FULL = [(0, 65535)]


def port_set(single: PortRange | None, single_neg: bool, multi: tuple[PortRange, ...],
             multi_neg: bool) -> list[tuple[int, int]] | None:
    """The ports a rule's --sport/--dport and multiport conditions allow, as disjoint ranges
    (None: no condition at all)."""
    if single is None and not multi:
        return None
    if not multi and not single_neg:
        return [(single.lo, single.hi)]             # the common case
    allowed = FULL
    if single is not None:
        r = [(single.lo, single.hi)]
        allowed = _ranges_intersect(allowed, _ranges_complement(r) if single_neg else r)
    if multi:
        r = _ranges_merge([(p.lo, p.hi) for p in multi])
        allowed = _ranges_intersect(allowed, _ranges_complement(r) if multi_neg else r)
    return allowed


# ----------------------------------------------------------------------------- compiler
class Compiler:
    def __init__(self, ruleset: Ruleset, ifindex: Callable[[str], int | None], table_base: int = 1,
                 managed: dict[str, list] | None = None):
        ruleset.validate()
        self.rs = ruleset
        # chains whose simple DNAT rules come ready as (daddr, port, proto, ExactValue) entries
        self.managed = managed or {}
        self.ifindex = ifindex
        self.prog = Program()
        self.next_table = table_base
        self.hook = ""
        self.run: dict[tuple, ExactValue] | None = None      # the open exact-match run
        self.run_table = 0

    # -- emission helpers
    def _emit(self, ins: Instruction) -> int:
        self.prog.instructions.append(ins)
        pc = len(self.prog.instructions) - 1
        ins.on_miss = pc + 1          # default; fixed up where needed
        if len(self.prog.instructions) > MAX_NAT_RULES:
            raise InvalidArgument(f"the nat rules compile to more than {MAX_NAT_RULES} instructions "
                                  "(runs of simple DNAT rules do not count; others and inlined user chains do)")
        return pc

    def _iface(self, name: str | None) -> int:
        if name is None:
            return 0
        idx = self.ifindex(name)
        return idx if idx else NO_IFINDEX

    def _conditions(self, r: Rule) -> Instruction:
        """An instruction carrying the rule's conditions except its ports."""
        ins = Instruction(origin="")
        neg = 0
        if r.src is not None:
            ins.src = r.src
            neg |= NEG_SRC if r.src_neg else 0
        if r.dst is not None:
            ins.dst = r.dst
            neg |= NEG_DST if r.dst_neg else 0
        if r.proto is not None:
            ins.proto = PROTO_NUMBERS[r.proto]
            neg |= NEG_PROTO if r.proto_neg else 0
        if r.in_iface is not None:
            ins.iif = self._iface(r.in_iface)
            neg |= NEG_IIF if r.in_neg else 0
        if r.out_iface is not None:
            ins.oif = self._iface(r.out_iface)
            neg |= NEG_OIF if r.out_neg else 0
        if r.src_type:
            neg |= SRC_LOCAL | (NEG_SRC_LOCAL if r.src_type_neg else 0)
        if r.dst_type:
            neg |= DST_LOCAL | (NEG_DST_LOCAL if r.dst_type_neg else 0)
        ins.neg = neg
        return ins

    @staticmethod
    def _action(ins: Instruction, r: Rule) -> Instruction:
        ins.op = OPS[r.target]
        ins.to_addr = r.to_addr
        ins.to_addr_hi = r.to_addr_hi
        ins.to_ports = r.to_ports
        ins.to_port_base = r.to_port_base
        return ins

    # -- simple DNAT rules (exact-match runs)
    @staticmethod
    def _simple(r: Rule) -> bool:
        return (r.target == "DNAT" and r.to_addr is not None and r.proto in ("tcp", "udp") and not r.proto_neg
                and r.dport is not None and not r.dport_neg and r.dport.hi - r.dport.lo < MAX_PORTS_PER_SIMPLE_RULE
                and (r.to_ports is None or r.to_ports.lo == r.to_ports.hi) and r.to_addr_hi is None
                and (r.dst is None or (r.dst.prefixlen == 32 and not r.dst_neg))
                and r.src is None and r.out_iface is None and r.sport is None
                and not r.msports and not r.mdports and r.src_type is None and r.dst_type is None)

    def _run_entries(self, r: Rule) -> list[tuple[ipaddress.IPv4Address, int, int, ExactValue]]:
        daddr = r.dst.network_address if r.dst is not None else ANY
        val = ExactValue(r.to_addr, r.to_ports.lo if r.to_ports else 0,
                         self._iface(r.in_iface) if r.in_iface else 0, bool(r.in_iface and r.in_neg))
        proto = PROTO_NUMBERS[r.proto]
        return [(daddr, port, proto, val) for port in range(r.dport.lo, r.dport.hi + 1)]

    # -- chains
    def emit_chain(self, chain: str, builtin: bool) -> list[int]:
        """Emit ``chain``; return the pcs whose on_match must point at the chain's end (RETURNs)."""
        returns: list[int] = []
        if chain in self.managed:
            self._emit_managed(chain)
        rules = self.rs.chains[chain]
        n, total = 0, len(rules)
        while n < total:
            end = n
            while end < total and self._classifiable(rules[end]):
                end += 1
            segment = list(enumerate(rules[n:end], n + 1))
            threshold = CLASSIFY_MIN_OUTPUT if self.hook == "OUTPUT" else CLASSIFY_MIN
            if sum(not self._simple(r) for _, r in segment) >= max(threshold, 1):
                self._emit_classified(chain, segment, builtin, returns)
                n = end
                continue
            for num, r in segment or [(n + 1, rules[n])]:
                self._emit_plain(chain, num, r, builtin, returns)
            self.run = None
            n = max(end, n + 1)
        self.run = None
        return returns

    def _emit_plain(self, chain: str, num: int, r: Rule, builtin: bool, returns: list[int]) -> None:
        """One rule the way small rule sets compile: simple DNAT rules into exact runs, the
        others as instructions visited in order."""
        origin = f"{chain}#{num}"
        if self._simple(r):
            entries = self._run_entries(r)
            if self.run is not None and not self._fits(self.run, entries):
                self.run = None
            if self.run is None:
                self.run, self.run_table = {}, self.next_table
                self.next_table += 1
                self._emit(Instruction(op=OP_LOOKUP, table=self.run_table, origin=origin))
            for daddr, port, proto, val in entries:
                self.run[(daddr, port, proto)] = val
                self.prog.exact[ExactKey(self.run_table, daddr, port, proto)] = val
            return
        self.run = None
        self.emit_rule(r, origin, builtin, returns)

    # -- classifiers (tuple-space search)
    @staticmethod
    def _classifiable(r: Rule) -> bool:
        """The rule compiles to terminal instructions only (one per port combination)."""
        return r.target is None or r.target in OPS or r.target == "RETURN"

    def _variants(self, r: Rule, origin: str) -> list[Instruction]:
        """The rule's instructions, one per port combination, each complete (conditions and
        action), with no pcs yet."""
        sports = port_set(r.sport, r.sport_neg, r.msports, r.msports_neg)
        dports = port_set(r.dport, r.dport_neg, r.mdports, r.mdports_neg)
        if sports == [] or dports == [] or r.target is None:
            return []                                   # never matches, or matches and does nothing
        variants = [(s, d) for s in (sports or [None]) for d in (dports or [None])]
        if len(variants) > 64:
            raise InvalidArgument(f"rule {origin} expands to {len(variants)} port combinations "
                                  "(at most 64: split it)")
        base = self._conditions(r)
        base.origin = origin
        if sports is not None or dports is not None:
            base.neg |= PORTS_REQUIRED
        out = []
        for s, d in variants:
            if len(variants) == 1:
                ins = base
                ins.sport, ins.dport = (r.sport if s and r.sport and s == (r.sport.lo, r.sport.hi) else
                                        PortRange(*s) if s else None,
                                        r.dport if d and r.dport and d == (r.dport.lo, r.dport.hi) else
                                        PortRange(*d) if d else None)
            else:
                ins = replace(base, sport=PortRange(*s) if s else None, dport=PortRange(*d) if d else None)
            if r.target in OPS:
                self._action(ins, r)
            else:                                        # RETURN; a builtin's means ACCEPT
                ins.op = OP_GOTO
            out.append(ins)
        return out

    @staticmethod
    def _index(ins: Instruction) -> tuple[Shape, tuple, bool]:
        """(shape, the rule's key fields, whether the key says everything about the rule)."""
        neg = ins.neg
        exact = True
        src_plen = dst_plen = 0
        saddr = daddr = 0
        if ins.src is not None:
            if neg & NEG_SRC:
                exact = False
            else:
                src_plen, saddr = ins.src.prefixlen, int(ins.src.network_address)
        if ins.dst is not None:
            if neg & NEG_DST:
                exact = False
            else:
                dst_plen, daddr = ins.dst.prefixlen, int(ins.dst.network_address)
        proto = ins.proto if ins.proto and not neg & NEG_PROTO else 0
        exact &= not (ins.proto and neg & NEG_PROTO)
        sport = dport = None
        if neg & PORTS_REQUIRED:
            for which, rng, negbit in (("s", ins.sport, NEG_SPORT), ("d", ins.dport, NEG_DPORT)):
                if rng is None or (rng.lo == 0 and rng.hi == 65535 and not neg & negbit):
                    continue                             # no condition, or only "is TCP/UDP"
                if rng.lo == rng.hi and not neg & negbit:
                    if which == "s":
                        sport = rng.lo
                    else:
                        dport = rng.lo
                else:
                    exact = False
            exact &= proto in (6, 17)
        iif = ins.iif if ins.iif and not neg & NEG_IIF else 0
        oif = ins.oif if ins.oif and not neg & NEG_OIF else 0
        exact &= not (ins.iif and neg & NEG_IIF) and not (ins.oif and neg & NEG_OIF)
        local_mask = local = 0
        if neg & SRC_LOCAL:
            local_mask |= 1
            local |= 0 if neg & NEG_SRC_LOCAL else 1
        if neg & DST_LOCAL:
            local_mask |= 2
            local |= 0 if neg & NEG_DST_LOCAL else 2
        shape = Shape(src_plen, dst_plen, bool(proto), sport is not None, dport is not None, bool(iif),
                      bool(oif), local_mask)
        return shape, (saddr, daddr, sport or 0, dport or 0, iif, oif, proto, local), exact

    def _emit_classified(self, chain: str, segment: list[tuple[int, Rule]], builtin: bool,
                         returns: list[int]) -> None:
        self.run = None
        limit = NAT_SOCK_SHAPES if self.hook == "OUTPUT" else NAT_CLS_SHAPES
        cls = None                     # the open classifier: [CLASSIFY pc, {shape: slot}, {key: exact}]

        def open_classifier(origin: str):
            pc = self._emit(Instruction(op=OP_CLASSIFY, table=len(self.prog.shapes), origin=origin))
            self.prog.classifiers[pc] = []
            return [pc, {}, {}]

        def close(c) -> None:
            end = len(self.prog.instructions)
            head = self.prog.instructions[c[0]]
            head.on_miss = end
            head.shapes = len(c[1])
            if c[1]:
                self.prog.shape_last.add(head.table + head.shapes - 1)
            for pc in self.prog.classifiers[c[0]]:
                self.prog.instructions[pc].on_miss = end     # reached only where they match

        for num, r in segment:
            origin = f"{chain}#{num}"
            for ins in self._variants(r, origin):
                shape, fields, exact = self._index(ins)
                if cls is None:
                    cls = open_classifier(origin)
                slot = cls[1].get(shape)
                key = ClsKey(slot, *fields) if slot is not None else None
                chained = None
                if key is not None and key in cls[2]:
                    length, has_exact, tail = cls[2][key]
                    if has_exact:
                        continue                         # shadowed by an earlier rule: never first
                    if length < NAT_CLS_CHAIN:
                        chained = (length, tail)         # a further candidate for the same key
                    else:
                        close(cls)
                        cls, slot = open_classifier(origin), None
                if slot is None and len(cls[1]) >= limit:
                    close(cls)
                    cls = open_classifier(origin)
                if slot is None:
                    slot = len(self.prog.shapes)
                    if slot >= MAX_NAT_SHAPES:
                        raise InvalidArgument(f"the nat rules need more than {MAX_NAT_SHAPES} rule shapes "
                                              "(distinct combinations of matched fields and prefix lengths)")
                    cls[1][shape] = slot
                    self.prog.shapes.append(shape)
                    self.prog.shape_first.append(len(self.prog.instructions))
                key = ClsKey(slot, *fields)
                pc = self._emit(ins)
                if chained is None:
                    self.prog.cls[key] = pc
                    cls[2][key] = (1, exact, pc)
                else:
                    self.prog.instructions[chained[1]].table = pc
                    cls[2][key] = (chained[0] + 1, exact, pc)
                self.prog.classifiers[cls[0]].append(pc)
                if ins.op == OP_GOTO:                    # RETURN
                    if builtin:
                        ins.op = OP_ACCEPT
                    else:
                        returns.append(pc)
        if cls is not None:
            close(cls)

    def _emit_managed(self, chain: str) -> None:
        """A managed chain's ready entries: one LOOKUP per run, always at least one (publishing
        the first port then only writes hash entries). Where the chain is inlined again (it is
        jumped to from PREROUTING and OUTPUT) the same tables are looked up again: each entry is
        in the maps once however often the chain is inlined."""
        if chain in self.prog.managed_tables:
            for table in self.prog.managed_tables[chain]:
                self._emit(Instruction(op=OP_LOOKUP, table=table, origin=f"{chain} (published ports)"))
            return
        tables = self.prog.managed_tables[chain] = []
        run: dict | None = None
        entries = list(self.managed[chain]) or [None]
        for entry in entries:
            if run is not None and entry is not None and not self._fits(run, [entry]):
                run = None
            if run is None:
                run, table = {}, self.next_table
                self.next_table += 1
                tables.append(table)
                self._emit(Instruction(op=OP_LOOKUP, table=table, origin=f"{chain} (published ports)"))
            if entry is not None:
                daddr, port, proto, val = entry
                run[(daddr, port, proto)] = val
                self.prog.exact[ExactKey(tables[-1], daddr, port, proto)] = val

    @staticmethod
    def _fits(run: dict, entries) -> bool:
        for daddr, port, proto, _ in entries:
            if (daddr, port, proto) in run:
                return False
            if daddr != ANY and (ANY, port, proto) in run:
                return False
        return True

    def emit_rule(self, r: Rule, origin: str, builtin: bool, returns: list[int]) -> None:
        sports = port_set(r.sport, r.sport_neg, r.msports, r.msports_neg)
        dports = port_set(r.dport, r.dport_neg, r.mdports, r.mdports_neg)
        if sports == [] or dports == []:
            return                                      # can never match
        variants = [(s, d) for s in (sports or [None]) for d in (dports or [None])]
        if len(variants) > 64:
            raise InvalidArgument(f"rule {origin} expands to {len(variants)} port combinations "
                                  "(at most 64: split it)")
        base = self._conditions(r)
        base.origin = origin
        if sports is not None or dports is not None:
            base.neg |= PORTS_REQUIRED
        target = r.target
        if target is None:
            return                                      # matches, does nothing
        if len(variants) == 1:
            s, d = variants[0]
            ins = replace(base, sport=PortRange(*s) if s else None, dport=PortRange(*d) if d else None)
            self._emit_action(ins, r, builtin, returns)
            return
        # several port ranges: test each, then act once (a jump must inline its chain once)
        tests = []
        for s, d in variants:
            ins = replace(base, sport=PortRange(*s) if s else None, dport=PortRange(*d) if d else None,
                          op=OP_GOTO)
            tests.append(self._emit(ins))
        skip = self._emit(Instruction(op=OP_GOTO, origin=origin))      # none matched: skip the action
        act = Instruction(origin=origin)
        self._emit_action(act, r, builtin, returns)
        end = len(self.prog.instructions)
        for pc in tests:
            self.prog.instructions[pc].on_match = skip + 1
        self.prog.instructions[skip].on_match = end

    def _emit_action(self, ins: Instruction, r: Rule, builtin: bool, returns: list[int]) -> None:
        target = r.target
        if target in OPS:
            self._emit(self._action(ins, r))
        elif target == "RETURN":
            if builtin:
                ins.op = OP_ACCEPT
                self._emit(ins)
            else:
                ins.op = OP_GOTO
                returns.append(self._emit(ins))
        else:                                            # a jump: inline the user chain here
            ins.op = OP_GOTO
            j = self._emit(ins)
            ins.on_match = j + 1
            inner_returns = self.emit_chain(target, builtin=False)
            end = len(self.prog.instructions)
            ins.on_miss = end
            for pc in inner_returns:
                self.prog.instructions[pc].on_match = end

    def compile(self) -> Program:
        for hook in HOOKS:
            self.hook = hook
            self.prog.entries[hook] = len(self.prog.instructions)
            if hook in EVALUATED_HOOKS:
                returns = self.emit_chain(hook, builtin=True)
                end = self._emit(Instruction(op=OP_ACCEPT, origin=f"{hook} policy"))
                for pc in returns:
                    self.prog.instructions[pc].on_match = end
            else:
                self._emit(Instruction(op=OP_ACCEPT, origin=f"{hook} (not evaluated)"))
        self._check_paths()
        return self.prog

    def _check_paths(self) -> None:
        ins = self.prog.instructions
        n = len(ins)
        steps = [0] * (n + 1)
        lookups = [0] * (n + 1)
        for pc in range(n - 1, -1, -1):               # gotos are forward: one backward pass
            i = ins[pc]
            nexts = [i.on_miss]
            if i.op == OP_GOTO:
                nexts.append(i.on_match)
            if i.op == OP_LOOKUP:
                nexts = [i.on_miss]
            if i.op == OP_CLASSIFY:
                nexts = [i.on_miss] + self.prog.classifiers[pc]
            unconditional = (i.src is None and i.dst is None and i.sport is None and i.dport is None and
                             not i.iif and not i.oif and not i.proto and not i.neg)
            if unconditional and i.op not in (OP_GOTO, OP_LOOKUP, OP_CLASSIFY):
                nexts = []                             # always decides: its on_miss is never taken
            for t in nexts:
                assert pc < t <= n, f"goto from {pc} to {t} is not forward"
            steps[pc] = 1 + max((steps[t] if t < n else 0 for t in nexts), default=0)
            lookups[pc] = (i.op in (OP_LOOKUP, OP_CLASSIFY)) + max((lookups[t] if t < n else 0 for t in nexts), default=0)
        for hook in EVALUATED_HOOKS:
            e = self.prog.entries[hook]
            self.prog.max_steps[hook] = steps[e]
            self.prog.max_lookups[hook] = lookups[e]
            max_steps = NAT_SOCK_STEPS if hook == "OUTPUT" else MAX_NAT_STEPS
            if steps[e] > max_steps:
                raise InvalidArgument(f"the nat {hook} rules need {steps[e]} rule visits on one path "
                                      f"(at most {max_steps}; simple DNAT rules count once per run)")
            limit = NAT_SOCK_LOOKUPS if hook == "OUTPUT" else NAT_MAX_LOOKUPS
            if lookups[e] > limit:
                raise InvalidArgument(f"the nat {hook} rules need {lookups[e]} table lookups on one path "
                                      f"(at most {limit}; each run of simple DNAT rules and each classifier of "
                                      "other rules is one): keep such rules together")


def compile_ruleset(ruleset: Ruleset, ifindex: Callable[[str], int | None], table_base: int = 1,
                    managed: dict[str, list] | None = None) -> Program:
    """``managed``: chain -> ready exact entries placed before that chain's rules."""
    return Compiler(ruleset, ifindex, table_base, managed).compile()

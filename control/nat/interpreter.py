"""The pure-Python twin of the BPF rule interpreter (ebpf/lib/nat_rules.h): runs a compiled
``Program`` on a packet. Tests check it against ``reference.evaluate`` (iptables semantics) on
generated rule sets and packets, and the BPF programs against it.

Ports are host-order ints, addresses dotted strings; ``iif``/``oif`` are ifindexes (0 = none).
Returns (op, to_addr, to_ports) with op one of the compiler's OP_* terminal values.
"""

from __future__ import annotations

import ipaddress
from typing import Callable

from .. import protocols
from . import compiler as C
from .rules import PortRange


def _in(net, addr) -> bool:
    return ipaddress.IPv4Address(addr) in net


def matches(i: C.Instruction, saddr: str, daddr: str, proto: int, sport: int, dport: int, iif: int, oif: int,
            src_local: bool, dst_local: bool) -> bool:
    l4 = proto in protocols.PORT_NUMBERS

    def cond(holds: bool, negbit: int) -> bool:
        return holds != bool(i.neg & negbit)

    ok = True
    if i.src is not None:
        ok &= cond(_in(i.src, saddr), C.NEG_SRC)
    if i.dst is not None:
        ok &= cond(_in(i.dst, daddr), C.NEG_DST)
    ok &= cond(not i.proto or i.proto == proto, C.NEG_PROTO)
    ok &= cond(not i.iif or i.iif == iif, C.NEG_IIF)
    ok &= cond(not i.oif or i.oif == oif, C.NEG_OIF)
    if i.neg & C.PORTS_REQUIRED:
        ok &= l4
        s = i.sport or PortRange(0, 65535)
        d = i.dport or PortRange(0, 65535)
        ok &= cond(s.lo <= sport <= s.hi, C.NEG_SPORT)
        ok &= cond(d.lo <= dport <= d.hi, C.NEG_DPORT)
    if i.neg & C.SRC_LOCAL:
        ok &= cond(src_local, C.NEG_SRC_LOCAL)
    if i.neg & C.DST_LOCAL:
        ok &= cond(dst_local, C.NEG_DST_LOCAL)
    return bool(ok)


def run(prog: C.Program, hook: str, saddr: str, daddr: str, proto: int, sport: int = 0, dport: int = 0,
        iif: int = 0, oif: int = 0, is_local: Callable[[str], bool] = lambda a: False):
    """(op, to_addr, to_ports): OP_ACCEPT when nothing translates."""
    op, to_addr, _hi, to_ports, _base = decide(prog, hook, saddr, daddr, proto, sport, dport, iif, oif, is_local)
    return op, to_addr, to_ports


def decide(prog: C.Program, hook: str, saddr: str, daddr: str, proto: int, sport: int = 0, dport: int = 0,
           iif: int = 0, oif: int = 0, is_local: Callable[[str], bool] = lambda a: False):
    """(op, to_addr, to_addr_hi, to_ports, to_port_base): the whole target, ranges included
    (control/nat/select.py says what a range picks)."""
    if proto not in (6, 17):
        sport = dport = 0
    pc = prog.entries[hook]
    src_local, dst_local = is_local(saddr), is_local(daddr)
    for _ in range(C.MAX_NAT_STEPS):
        if pc >= len(prog.instructions):
            return C.OP_ACCEPT, None, None, None, None
        i = prog.instructions[pc]
        if not matches(i, saddr, daddr, proto, sport, dport, iif, oif, src_local, dst_local):
            pc = i.on_miss
            continue
        if i.op == C.OP_GOTO:
            pc = i.on_match
            continue
        if i.op == C.OP_CLASSIFY:
            hit = classify(prog, i, saddr, daddr, proto, sport, dport, iif, oif, src_local, dst_local)
            pc = hit if hit is not None else i.on_miss
            continue
        if i.op == C.OP_LOOKUP:
            hit = _exact(prog, i.table, daddr, proto, dport, iif)
            if hit is not None:
                return C.OP_DNAT, hit.to_addr, None, PortRange(hit.to_port, hit.to_port) if hit.to_port else None, None
            pc = i.on_miss
            continue
        return i.op, i.to_addr, i.to_addr_hi, i.to_ports, i.to_port_base
    raise AssertionError("evaluation exceeded MAX_NAT_STEPS")


def classify(prog: C.Program, head: C.Instruction, saddr: str, daddr: str, proto: int, sport: int, dport: int,
             iif: int, oif: int, src_local: bool, dst_local: bool) -> int | None:
    """nat_classify: the pc of the classifier's first rule that matches, by the same search
    (one key per shape, shapes in order of first rule, stop once the best precedes a shape)."""
    best = None
    s, d = int(ipaddress.IPv4Address(saddr)), int(ipaddress.IPv4Address(daddr))
    local = int(src_local) | int(dst_local) << 1
    for slot in range(head.table, head.table + head.shapes):
        if best is not None and prog.shape_first[slot] >= best:
            break
        key = C.packet_key(prog.shapes[slot], slot, s, d, sport, dport, iif, oif, proto, local)
        pc = prog.cls.get(key)
        for _ in range(C.NAT_CLS_CHAIN):
            if not pc or (best is not None and pc >= best):
                break
            rule = prog.instructions[pc]
            if matches(rule, saddr, daddr, proto, sport, dport, iif, oif, src_local, dst_local):
                best = pc
                break
            pc = rule.table                  # the next candidate with this key
    return best


def _exact(prog: C.Program, table: int, daddr: str, proto: int, dport: int, iif: int):
    if proto not in (6, 17):
        return None
    for addr in (ipaddress.IPv4Address(daddr), C.ANY):
        v = prog.exact.get(C.ExactKey(table, addr, dport, proto))
        if v is not None and ((v.iif != 0 and v.iif != iif) != v.iif_neg) is False:
            return v
    return None

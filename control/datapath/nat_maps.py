"""Writing a compiled nat ``Program`` (control/nat/compiler.py) into the pinned maps, atomically
for the packets that read it.

Contract:
  * nat_rules holds two generations of MAX_NAT_RULES instructions; nat_config.generation says
    which is live. A change of the instructions is written into the other half with fresh table
    ids and their exact entries, then nat_config flips in one map update, then the old half's
    exact entries go. A packet sees the old rules or the new ones, never a mix.
  * A change that only adds, changes or removes exact entries of an unchanged instruction
    sequence (publishing or unpublishing a port) is written in place: one map update per entry,
    which is what makes one more published port cost microseconds, not a rule-set rewrite.
  * After an agent restart the live generation is read back from the maps, so the first apply
    is incremental too.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import struct

from ..nat import compiler as C
from . import bpf_structs as S

log = logging.getLogger("dockline.nat")

TABLE_BASE = {0: 1, 1: 1 << 20}     # exact-table ids of each generation never overlap


def _addr(a) -> int:
    return S.be32(str(a)) if a is not None else 0


def _mask(net) -> tuple[int, int]:
    if net is None:
        return 0, 0
    return S.be32(str(net.network_address)), S.be32(str(net.netmask))


def to_ctypes(i: C.Instruction, base: int) -> S.NatRule:
    src, src_mask = _mask(i.src)
    dst, dst_mask = _mask(i.dst)
    return S.NatRule(src=src, src_mask=src_mask, dst=dst, dst_mask=dst_mask,
                     sport_min=i.sport.lo if i.sport else 0, sport_max=i.sport.hi if i.sport else 65535,
                     dport_min=i.dport.lo if i.dport else 0, dport_max=i.dport.hi if i.dport else 65535,
                     iif=i.iif, oif=i.oif, proto=i.proto, op=i.op, neg=i.neg,
                     on_match=base + i.on_match, on_miss=base + i.on_miss, to_addr=_addr(i.to_addr),
                     to_port_min=i.to_ports.lo if i.to_ports else 0,
                     to_port_max=i.to_ports.hi if i.to_ports else 0, table=i.table)


_KEY = struct.Struct("=I4s2sBx")       # struct nat_exact_key, bytes as in the map
_VAL = struct.Struct("=4s2sBxI")       # struct nat_exact_val
_TABLE = struct.Struct("=I")           # the table id a raw key starts with


def exact_key_raw(k: C.ExactKey) -> bytes:
    return _KEY.pack(k.table, k.daddr.packed, k.dport.to_bytes(2, "big"), k.proto)


def exact_value_raw(v: C.ExactValue) -> bytes:
    return _VAL.pack(v.to_addr.packed, v.to_port.to_bytes(2, "big"), int(v.iif_neg), v.iif)


def exact_key(k: C.ExactKey) -> S.NatExactKey:
    return S.NatExactKey.from_buffer_copy(exact_key_raw(k))


def exact_value(v: C.ExactValue) -> S.NatExactVal:
    return S.NatExactVal.from_buffer_copy(exact_value_raw(v))


def _hairpin_tuple(k: S.NatExactKey) -> tuple:
    return (S.ip_text(k.daddr), S.be16_value(k.dport), k.proto)


def _raw(ct) -> bytes:
    return bytes(ct)


class NatMaps:
    """The rule maps of one host: nat_config, nat_rules, nat_exact (loader.PinnedMap each)."""

    def __init__(self, config, rules, exact):
        self.config, self.rules, self.exact = config, rules, exact
        self._live_rules: list[bytes] | None = None     # instructions of the live generation
        self._live_exact: dict[bytes, bytes] | None = None
        self._hairpin: set | None = None                 # NAT_HAIRPIN_TABLE as last written

    def live_config(self) -> S.NatConfig:
        return self.config.lookup(0) or S.NatConfig()

    def _read_live(self, cfg: S.NatConfig):
        """The live generation's instructions and exact entries, read back from the maps."""
        if self._live_rules is not None:
            return
        base = cfg.generation * C.MAX_NAT_RULES
        rules = []
        for pc in range(base, base + C.MAX_NAT_RULES):
            r = self.rules.lookup(pc)
            if r is None or r.op == 0 and r.on_miss == 0:
                break
            rules.append(_raw(r))
        lo, hi = TABLE_BASE[cfg.generation], TABLE_BASE[cfg.generation] + (1 << 20)
        self._live_rules = rules
        self._live_exact = {_raw(k): _raw(v) for k, v in self.exact.items() if lo <= k.table < hi}

    def apply(self, compile_with_base, netns_cookie: int, port_min: int, port_max: int) -> dict:
        """Make the maps hold ``compile_with_base(table_base)``; returns what was written.

        ``compile_with_base`` compiles the current rule set with the given first table id
        (called once or twice: it must be deterministic)."""
        cfg = self.live_config()
        self._read_live(cfg)
        live = cfg.generation
        prog = compile_with_base(TABLE_BASE[live])
        base = live * C.MAX_NAT_RULES
        rules = [_raw(to_ctypes(i, base)) for i in prog.instructions]
        exact = {exact_key_raw(k): exact_value_raw(v) for k, v in prog.exact.items()}
        entries = [base + prog.entries[h] for h in C.HOOKS]
        settings_same = (cfg.netns_cookie, cfg.port_min, cfg.port_max, list(cfg.entry)) == \
            (netns_cookie, port_min, port_max, entries)
        if rules == self._live_rules and settings_same:
            return self._apply_exact_in_place(exact)
        if rules == self._live_rules:
            cfg.netns_cookie, cfg.port_min, cfg.port_max = netns_cookie, port_min, port_max
            self.config.update(0, cfg)
            return self._apply_exact_in_place(exact)
        # a new instruction sequence: the other generation, then one flip
        new = 1 - live if self._live_rules else live
        if new != live:
            prog = compile_with_base(TABLE_BASE[new])
        nbase = new * C.MAX_NAT_RULES
        new_rules = [to_ctypes(i, nbase) for i in prog.instructions]
        new_exact = {exact_key_raw(k): exact_value(v) for k, v in prog.exact.items()}
        for pc, r in enumerate(new_rules):
            self.rules.update(nbase + pc, r)
        if len(new_rules) < C.MAX_NAT_RULES:      # an all-zero slot marks the end (_read_live)
            self.rules.update(nbase + len(new_rules), S.NatRule())
        for k, v in new_exact.items():
            self.exact.update(S.NatExactKey.from_buffer_copy(k), v)
        flip = S.NatConfig(netns_cookie=netns_cookie, port_min=port_min, port_max=port_max, generation=new)
        for n, h in enumerate(C.HOOKS):
            flip.entry[n] = nbase + prog.entries[h]
        self.config.update(0, flip)
        removed = 0
        if new != live:
            for k in list(self._live_exact or {}):
                self.exact.delete(S.NatExactKey.from_buffer_copy(k))
                removed += 1
        else:
            for k in set(self._live_exact or {}) - set(new_exact):
                self.exact.delete(S.NatExactKey.from_buffer_copy(k))
                removed += 1
        self._live_rules = [_raw(r) for r in new_rules]
        self._live_exact = {k: _raw(v) for k, v in new_exact.items()}
        log.info("nat rules: generation %d live (%d instructions, %d exact entries)", new, len(new_rules),
                 len(new_exact))
        return {"generation": new, "instructions": len(new_rules), "exact_written": len(new_exact),
                "exact_removed": removed, "flipped": True}

    def apply_managed_delta(self, tables: list[int], changes) -> dict:
        """Publishing or unpublishing ports when nothing else changed: ``changes`` is an iterable
        of ``((daddr, port, proto), ExactValue or None to remove)``, written in place in each of
        the managed chain's exact tables, one map operation per change; no compile, no flip.
        Removing an entry that is not there is not an error."""
        written = removed = 0
        if len(tables) > 1:
            changes = list(changes)
        live = self._live_exact
        key, val = S.NatExactKey(), S.NatExactVal()
        kbuf, vbuf = memoryview(key).cast("B"), memoryview(val).cast("B")
        for table in tables:
            for (daddr, port, proto), v in changes:
                k = _KEY.pack(table, daddr.packed, port.to_bytes(2, "big"), proto)
                kbuf[:] = k
                if v is None:
                    self.exact.delete(key)
                    live.pop(k, None)
                    removed += 1
                else:
                    live[k] = vbuf[:] = exact_value_raw(v)
                    self.exact.update(key, val)
                    written += 1
        return {"generation": self.live_config().generation, "instructions": len(self._live_rules or []),
                "exact_written": written, "exact_removed": removed, "flipped": False, "incremental": True}

    def replace_managed(self, tables: list[int], entries: list) -> dict:
        """Make the managed chain's exact tables hold exactly ``entries`` (``[((daddr, port,
        proto), ExactValue)]``) when nothing else changed: their live entries are compared with
        them and only the difference is written, in place."""
        want = {}
        for table in tables:
            for (daddr, port, proto), val in entries:
                want[_KEY.pack(table, daddr.packed, port.to_bytes(2, "big"), proto)] = exact_value_raw(val)
        ids = set(tables)
        exact = {k: v for k, v in self._live_exact.items() if _TABLE.unpack_from(k)[0] not in ids}
        exact.update(want)
        return self._apply_exact_in_place(exact)

    def _apply_exact_in_place(self, exact: dict[bytes, bytes]) -> dict:
        have = self._live_exact
        written = removed = 0
        for k, v in exact.items():
            if have.get(k) != v:
                self.exact.update(S.NatExactKey.from_buffer_copy(k), S.NatExactVal.from_buffer_copy(v))
                written += 1
        for k in set(have) - set(exact):
            self.exact.delete(S.NatExactKey.from_buffer_copy(k))
            removed += 1
        self._live_exact = dict(exact)
        return {"generation": self.live_config().generation, "instructions": len(self._live_rules),
                "exact_written": written, "exact_removed": removed, "flipped": False}

    def sync_hairpin_targets(self, targets: set) -> int:
        """Make table NAT_HAIRPIN_TABLE hold exactly ``targets`` ({(container ip, port, proto)}):
        the published ports' targets, which a container reaching itself there is masqueraded
        for. Only the difference is written; the first call reads what the map holds (restart).
        Returns the number of map operations."""
        if self._hairpin is None:
            self._hairpin = {_hairpin_tuple(k) for k in self.exact.keys() if k.table == S.NAT_HAIRPIN_TABLE}
        ops = 0
        for ip, port, proto in targets - self._hairpin:
            key = exact_key(C.ExactKey(S.NAT_HAIRPIN_TABLE, ipaddress.IPv4Address(ip), port, proto))
            self.exact.update(key, exact_value(C.ExactValue(ipaddress.IPv4Address(ip), port)))
            ops += 1
        for ip, port, proto in self._hairpin - targets:
            self.exact.delete(exact_key(C.ExactKey(S.NAT_HAIRPIN_TABLE, ipaddress.IPv4Address(ip), port, proto)))
            ops += 1
        self._hairpin = set(targets)
        return ops

    def hairpin_delta(self, added: set, removed: set) -> int:
        """Add and remove published ports' targets ({(container ip, port, proto)}) in
        NAT_HAIRPIN_TABLE, without looking at the others (the caller knows no other published
        port has a removed target). Returns the number of map operations."""
        for ip, port, proto in removed - added:
            self.exact.delete(exact_key(C.ExactKey(S.NAT_HAIRPIN_TABLE, ipaddress.IPv4Address(ip), port, proto)))
        for ip, port, proto in added:
            key = exact_key(C.ExactKey(S.NAT_HAIRPIN_TABLE, ipaddress.IPv4Address(ip), port, proto))
            self.exact.update(key, exact_value(C.ExactValue(ipaddress.IPv4Address(ip), port)))
        if self._hairpin is not None:
            self._hairpin = (self._hairpin - removed) | added
        return len(removed - added) + len(added)

    def clear(self) -> None:
        """Empty every rule (the datapath then translates nothing new)."""
        self.config.update(0, S.NatConfig(entry=(ctypes.c_uint32 * 4)(*([0xFFFFFFFF] * 4))))
        for k in self.exact.keys():
            self.exact.delete(k)
        self._hairpin = set()
        self._live_rules, self._live_exact = [], {}

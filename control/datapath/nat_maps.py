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
  * Classifiers (tuple-space search) live in nat_shapes (two generations of MAX_NAT_SHAPES
    slots) and nat_cls (keys carry their absolute slot, so both generations' keys coexist);
    they are written with the instructions, before the flip, and the old generation's keys go
    after it. Instructions and keys are written in batches (BPF_MAP_UPDATE_BATCH): 100,000
    rules are a few system calls, not 200,000.
  * After an agent restart the live generation is read back from the maps, so the first apply
    is incremental too. The exact entries are never copied into the agent: a whole-rule-set
    apply reads the live ones back from the map.
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


def table_shift(generation: int) -> int:
    """What a Program compiled with table_base=TABLE_BASE[0] (the compiler's default) adds to its
    exact-table ids to become ``generation``'s: one compile serves both halves."""
    return TABLE_BASE[generation] - TABLE_BASE[0]


def _addr(a) -> int:
    return S.be32(str(a)) if a is not None else 0


def _mask(net) -> tuple[int, int]:
    if net is None:
        return 0, 0
    return S.be32(str(net.network_address)), S.be32(str(net.netmask))


def _table(i: C.Instruction, base: int, shape_base: int, shift: int) -> int:
    """The ``table`` operand, absolute: a classifier's first shape slot, an exact table id
    (compiled from TABLE_BASE[0], plus ``shift``: table_shift), or a classified rule's next
    candidate pc (0: none)."""
    if i.op == C.OP_CLASSIFY:
        return shape_base + i.table
    if i.op == C.OP_LOOKUP:
        return i.table + shift
    if not i.table:
        return 0
    return base + i.table


def to_ctypes(i: C.Instruction, base: int, shape_base: int = 0, shift: int = 0) -> S.NatRule:
    src, src_mask = _mask(i.src)
    dst, dst_mask = _mask(i.dst)
    return S.NatRule(src=src, src_mask=src_mask, dst=dst, dst_mask=dst_mask,
                     sport_min=i.sport.lo if i.sport else 0, sport_max=i.sport.hi if i.sport else 65535,
                     dport_min=i.dport.lo if i.dport else 0, dport_max=i.dport.hi if i.dport else 65535,
                     iif=i.iif, oif=i.oif, proto=i.proto, op=i.op, neg=i.neg,
                     on_match=base + i.on_match, on_miss=base + i.on_miss, to_addr=_addr(i.to_addr),
                     to_port_min=i.to_ports.lo if i.to_ports else 0,
                     to_port_max=i.to_ports.hi if i.to_ports else 0, table=_table(i, base, shape_base, shift),
                     shapes=i.shapes, to_addr_max=_addr(i.to_addr_hi or i.to_addr),
                     to_port_base=i.to_port_base or 0, to_flags=_to_flags(i))


def _to_flags(i: C.Instruction) -> int:
    return (S.NAT_TO_ADDR if i.to_addr is not None else 0) | (S.NAT_TO_SHIFT if i.to_port_base is not None else 0)


#: struct nat_rule as bytes (addresses and masks raw network order, the rest host order)
_RULE = S.byte_packing(S.NatRule, network_order=("src", "src_mask", "dst", "dst_mask", "to_addr", "to_addr_max"))
_ZERO4 = bytes(4)


def _net_raw(net) -> tuple[bytes, bytes]:
    if net is None:
        return _ZERO4, _ZERO4
    return net.network_address.packed, net.netmask.packed


def rule_raw(i: C.Instruction, base: int, shape_base: int, shift: int = 0) -> bytes:
    """``bytes(to_ctypes(i, base, shape_base, shift))``, several times faster (100,000 rules)."""
    src, src_mask = _net_raw(i.src)
    dst, dst_mask = _net_raw(i.dst)
    sp, dp, tp = i.sport, i.dport, i.to_ports
    return _RULE.pack(src, src_mask, dst, dst_mask, sp.lo if sp else 0, sp.hi if sp else 65535,
                      dp.lo if dp else 0, dp.hi if dp else 65535, i.iif, i.oif, i.proto, i.op, i.neg,
                      base + i.on_match, base + i.on_miss, i.to_addr.packed if i.to_addr is not None else _ZERO4,
                      tp.lo if tp else 0, tp.hi if tp else 0, _table(i, base, shape_base, shift), i.shapes,
                      (i.to_addr_hi or i.to_addr).packed if i.to_addr is not None else _ZERO4,
                      i.to_port_base or 0, _to_flags(i))


_SHAPE = S.byte_packing(S.NatShape, network_order=("src_mask", "dst_mask"))
_CLS_KEY = S.NAT_CLS_KEY_BYTES
_U32 = struct.Struct("=I")
#: the absolute shape slot of a raw nat_cls key (its first field)
_CLS_SLOT = struct.Struct("=I")


def shape_raw(shape: C.Shape, first_pc: int, last: bool) -> bytes:
    return _SHAPE.pack(C._plen_mask(shape.src_plen).to_bytes(4, "big"), C._plen_mask(shape.dst_plen).to_bytes(4, "big"),
                       0xFFFF if shape.sport else 0, 0xFFFF if shape.dport else 0,
                       0xFFFFFFFF if shape.iif else 0, 0xFFFFFFFF if shape.oif else 0,
                       0xFF if shape.proto else 0, shape.local_mask, int(last), first_pc)


def cls_key_raw(k: C.ClsKey, shape_base: int) -> bytes:
    return _CLS_KEY.pack(shape_base + k.slot, k.saddr.to_bytes(4, "big"), k.daddr.to_bytes(4, "big"),
                         k.sport, k.dport, k.iif, k.oif, k.proto, k.local)


_KEY = S.NAT_EXACT_KEY_BYTES           # struct nat_exact_key, bytes as in the map
_VAL = S.NAT_EXACT_VAL_BYTES           # struct nat_exact_val
#: the table id of a raw key (a host-order u32 at its offset in struct nat_exact_key)
_TABLE = struct.Struct(f"={S.NatExactKey.table.offset}xI")


def exact_key_raw(k: C.ExactKey, shift: int = 0) -> bytes:
    return _KEY.pack(k.table + shift, k.daddr.packed, k.dport.to_bytes(2, "big"), k.proto)


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
    """The rule maps of one host: nat_config, nat_rules, nat_exact (loader.PinnedMap each).

    The instructions of the live generation are remembered (there are at most MAX_NAT_RULES);
    the exact entries are not: with thousands of published ports a copy would be most of the
    agent's memory, so the maps are the only record of them and a whole-rule-set apply reads the
    live ones back (a few batched system calls). Publishing or unpublishing ports reads nothing."""

    def __init__(self, config, rules, exact, shapes, cls):
        self.config, self.rules, self.exact, self.shapes, self.cls = config, rules, exact, shapes, cls
        self._live_rules: list[bytes] | None = None     # instructions of the live generation

    def live_config(self) -> S.NatConfig:
        return self.config.lookup(0) or S.NatConfig()

    def _read_live(self, cfg: S.NatConfig):
        """The live generation's instructions, read back from the maps (once)."""
        if self._live_rules is not None:
            return
        base = cfg.generation * C.MAX_NAT_RULES
        rules = []
        for pc in range(base, base + C.MAX_NAT_RULES):
            r = self.rules.lookup(pc)
            if r is None or r.op == 0 and r.on_miss == 0:
                break
            rules.append(_raw(r))
        self._live_rules = rules

    def live_exact(self, generation: int, tables=None) -> dict[bytes, bytes]:
        """The exact entries of ``generation`` (of ``tables`` only, if given), raw, from the map."""
        lo, hi = TABLE_BASE[generation], TABLE_BASE[generation] + (1 << 20)
        out = {}
        for k, v in self.exact.raw_items():
            t = _TABLE.unpack_from(k)[0]
            if lo <= t < hi and (tables is None or t in tables):
                out[k] = v
        return out

    def live_cls(self, generation: int) -> list[bytes]:
        """The raw nat_cls keys of ``generation``, from the map."""
        lo = generation * C.MAX_NAT_SHAPES
        return [k for k, _ in self.cls.raw_items() if lo <= _CLS_SLOT.unpack_from(k)[0] < lo + C.MAX_NAT_SHAPES]

    def apply(self, prog: C.Program, netns_cookie: int, port_min: int, port_max: int) -> dict:
        """Make the maps hold ``prog`` (compiled with the default table_base, TABLE_BASE[0]: its
        table ids are shifted to the generation written); returns what was written."""
        cfg = self.live_config()
        self._read_live(cfg)
        live = cfg.generation
        base, shape_base = live * C.MAX_NAT_RULES, live * C.MAX_NAT_SHAPES
        shift = table_shift(live)
        rules = [rule_raw(i, base, shape_base, shift) for i in prog.instructions]
        entries = [base + prog.entries[h] for h in C.HOOKS]
        settings_same = (cfg.netns_cookie, cfg.port_min, cfg.port_max, list(cfg.entry)) == \
            (netns_cookie, port_min, port_max, entries)
        if rules == self._live_rules:
            # the same instructions: the same classifiers too (they are derived from them)
            if not settings_same:
                cfg.netns_cookie, cfg.port_min, cfg.port_max = netns_cookie, port_min, port_max
                self.config.update(0, cfg)
            exact = {exact_key_raw(k, shift): exact_value_raw(v) for k, v in prog.exact.items()}
            return self._apply_exact_in_place(exact, self.live_exact(live))
        # a new instruction sequence: the other generation, then one flip
        new = 1 - live if self._live_rules else live
        nbase, nshape_base, nshift = new * C.MAX_NAT_RULES, new * C.MAX_NAT_SHAPES, table_shift(new)
        new_rules = rules if new == live else [rule_raw(i, nbase, nshape_base, nshift) for i in prog.instructions]
        del rules
        new_exact = {exact_key_raw(k, nshift): exact_value_raw(v) for k, v in prog.exact.items()}
        new_shapes = b"".join(shape_raw(sh, nbase + first, slot in prog.shape_last)
                              for slot, (sh, first) in enumerate(zip(prog.shapes, prog.shape_first)))
        new_cls = {cls_key_raw(k, nshape_base): _U32.pack(nbase + pc) for k, pc in prog.cls.items()}
        entry = [nbase + prog.entries[h] for h in C.HOOKS]
        nshapes = len(prog.shapes)
        old = self.live_exact(live)     # before any write: a first apply may write into ``live``
        old_cls = self.live_cls(live)
        written = list(new_rules)
        if len(new_rules) < C.MAX_NAT_RULES:      # an all-zero slot marks the end (_read_live)
            written.append(bytes(ctypes.sizeof(S.NatRule)))
        self.rules.update_batch(b"".join(_U32.pack(nbase + pc) for pc in range(len(written))), b"".join(written))
        if nshapes:
            self.shapes.update_batch(b"".join(_U32.pack(nshape_base + n) for n in range(nshapes)), new_shapes)
        if new_cls:
            self.cls.update_batch(b"".join(new_cls), b"".join(new_cls.values()))
        for k, v in new_exact.items():
            self.exact.update(S.NatExactKey.from_buffer_copy(k), S.NatExactVal.from_buffer_copy(v))
        flip = S.NatConfig(netns_cookie=netns_cookie, port_min=port_min, port_max=port_max, generation=new)
        for n, e in enumerate(entry):
            flip.entry[n] = e
        self.config.update(0, flip)
        gone = list(old) if new != live else [k for k in old if k not in new_exact]
        for k in gone:
            self.exact.delete(S.NatExactKey.from_buffer_copy(k))
        cls_gone = old_cls if new != live else [k for k in old_cls if k not in new_cls]
        if cls_gone:
            self.cls.delete_batch(b"".join(cls_gone))
        self._live_rules = new_rules
        log.info("nat rules: generation %d live (%d instructions, %d exact entries, %d classifier keys in "
                 "%d shapes)", new, len(new_rules), len(new_exact), len(new_cls), nshapes)
        return {"generation": new, "instructions": len(new_rules), "exact_written": len(new_exact),
                "exact_removed": len(gone), "classifier_keys": len(new_cls), "shapes": nshapes,
                "flipped": True}

    def apply_managed_delta(self, tables: list[int], changes) -> dict:
        """Publishing or unpublishing ports when nothing else changed: ``changes`` is an iterable
        of ``((daddr, port, proto), ExactValue or None to remove)``, written in place in each of
        the managed chain's exact tables, one map operation per change; no compile, no flip, no
        read. Removing an entry that is not there is not an error."""
        written = removed = 0
        if len(tables) > 1:
            changes = list(changes)
        key, val = S.NatExactKey(), S.NatExactVal()
        kbuf, vbuf = memoryview(key).cast("B"), memoryview(val).cast("B")
        for table in tables:
            for (daddr, port, proto), v in changes:
                kbuf[:] = _KEY.pack(table, daddr.packed, port.to_bytes(2, "big"), proto)
                if v is None:
                    self.exact.delete(key)
                    removed += 1
                else:
                    vbuf[:] = exact_value_raw(v)
                    self.exact.update(key, val)
                    written += 1
        return {"generation": self.live_config().generation, "instructions": len(self._live_rules or []),
                "exact_written": written, "exact_removed": removed, "flipped": False, "incremental": True}

    def replace_managed(self, tables: list[int], entries: list) -> dict:
        """Make the managed chain's exact tables hold exactly ``entries`` (``[((daddr, port,
        proto), ExactValue)]``) when nothing else changed: their live entries are read back and
        only the difference is written, in place."""
        want = {}
        for table in tables:
            for (daddr, port, proto), val in entries:
                want[exact_key_raw(C.ExactKey(table, daddr, port, proto))] = exact_value_raw(val)
        return self._apply_exact_in_place(want, self.live_exact(self.live_config().generation, set(tables)))

    def _apply_exact_in_place(self, exact: dict[bytes, bytes], have: dict[bytes, bytes]) -> dict:
        written = removed = 0
        for k, v in exact.items():
            if have.get(k) != v:
                self.exact.update(S.NatExactKey.from_buffer_copy(k), S.NatExactVal.from_buffer_copy(v))
                written += 1
        for k in have:
            if k not in exact:
                self.exact.delete(S.NatExactKey.from_buffer_copy(k))
                removed += 1
        return {"generation": self.live_config().generation, "instructions": len(self._live_rules or []),
                "exact_written": written, "exact_removed": removed, "flipped": False}

    def hairpin_targets(self) -> set:
        """NAT_HAIRPIN_TABLE as the map holds it: {(container ip, port, proto)}."""
        return {_hairpin_tuple(S.NatExactKey.from_buffer_copy(k)) for k, _ in self.exact.raw_items()
                if _TABLE.unpack_from(k)[0] == S.NAT_HAIRPIN_TABLE}

    def sync_hairpin_targets(self, targets: set) -> int:
        """Make table NAT_HAIRPIN_TABLE hold exactly ``targets`` ({(container ip, port, proto)}):
        the published ports' targets, which a container reaching itself there is masqueraded
        for. What the map holds is read back and only the difference is written. Returns the
        number of map operations."""
        have = self.hairpin_targets()
        return self.hairpin_delta(targets - have, have - targets)

    def hairpin_delta(self, added: set, removed: set) -> int:
        """Add and remove published ports' targets ({(container ip, port, proto)}) in
        NAT_HAIRPIN_TABLE, without looking at the others (the caller knows no other published
        port has a removed target). Returns the number of map operations."""
        for ip, port, proto in removed - added:
            self.exact.delete(exact_key(C.ExactKey(S.NAT_HAIRPIN_TABLE, ipaddress.IPv4Address(ip), port, proto)))
        for ip, port, proto in added:
            key = exact_key(C.ExactKey(S.NAT_HAIRPIN_TABLE, ipaddress.IPv4Address(ip), port, proto))
            self.exact.update(key, exact_value(C.ExactValue(ipaddress.IPv4Address(ip), port)))
        return len(removed - added) + len(added)

    def clear(self) -> None:
        """Empty every rule (the datapath then translates nothing new)."""
        self.config.update(0, S.NatConfig(entry=(ctypes.c_uint32 * 4)(*([0xFFFFFFFF] * 4))))
        for k in self.exact.keys():
            self.exact.delete(k)
        keys = [k for k, _ in self.cls.raw_items()]
        if keys:
            self.cls.delete_batch(b"".join(keys))
        self._live_rules = []

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


_KEY = S.NAT_EXACT_KEY_BYTES           # struct nat_exact_key, bytes as in the map
_VAL = S.NAT_EXACT_VAL_BYTES           # struct nat_exact_val
#: the table id of a raw key (a host-order u32 at its offset in struct nat_exact_key)
_TABLE = struct.Struct(f"={S.NatExactKey.table.offset}xI")


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
    """The rule maps of one host: nat_config, nat_rules, nat_exact (loader.PinnedMap each).

    The instructions of the live generation are remembered (there are at most MAX_NAT_RULES);
    the exact entries are not: with thousands of published ports a copy would be most of the
    agent's memory, so the maps are the only record of them and a whole-rule-set apply reads the
    live ones back (a few batched system calls). Publishing or unpublishing ports reads nothing."""

    def __init__(self, config, rules, exact):
        self.config, self.rules, self.exact = config, rules, exact
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
        entries = [base + prog.entries[h] for h in C.HOOKS]
        settings_same = (cfg.netns_cookie, cfg.port_min, cfg.port_max, list(cfg.entry)) == \
            (netns_cookie, port_min, port_max, entries)
        if rules == self._live_rules:
            if not settings_same:
                cfg.netns_cookie, cfg.port_min, cfg.port_max = netns_cookie, port_min, port_max
                self.config.update(0, cfg)
            exact = {exact_key_raw(k): exact_value_raw(v) for k, v in prog.exact.items()}
            del prog
            return self._apply_exact_in_place(exact, self.live_exact(live))
        # a new instruction sequence: the other generation, then one flip
        new = 1 - live if self._live_rules else live
        if new != live:
            prog = compile_with_base(TABLE_BASE[new])
        nbase = new * C.MAX_NAT_RULES
        new_rules = [to_ctypes(i, nbase) for i in prog.instructions]
        new_exact = {exact_key_raw(k): exact_value_raw(v) for k, v in prog.exact.items()}
        entry = [nbase + prog.entries[h] for h in C.HOOKS]
        del prog
        old = self.live_exact(live)     # before any write: a first apply may write into ``live``
        for pc, r in enumerate(new_rules):
            self.rules.update(nbase + pc, r)
        if len(new_rules) < C.MAX_NAT_RULES:      # an all-zero slot marks the end (_read_live)
            self.rules.update(nbase + len(new_rules), S.NatRule())
        for k, v in new_exact.items():
            self.exact.update(S.NatExactKey.from_buffer_copy(k), S.NatExactVal.from_buffer_copy(v))
        flip = S.NatConfig(netns_cookie=netns_cookie, port_min=port_min, port_max=port_max, generation=new)
        for n, e in enumerate(entry):
            flip.entry[n] = e
        self.config.update(0, flip)
        gone = list(old) if new != live else [k for k in old if k not in new_exact]
        for k in gone:
            self.exact.delete(S.NatExactKey.from_buffer_copy(k))
        self._live_rules = [_raw(r) for r in new_rules]
        log.info("nat rules: generation %d live (%d instructions, %d exact entries)", new, len(new_rules),
                 len(new_exact))
        return {"generation": new, "instructions": len(new_rules), "exact_written": len(new_exact),
                "exact_removed": len(gone), "flipped": True}

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
        self._live_rules = []

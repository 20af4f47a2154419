"""Conntrack garbage collection and pressure, in the agent (as Cilium does it): the datapath never
deletes entries; it refreshes ``expires_ns`` on every packet. The GC removes a flow when both of
its halves have expired (a one-way flow keeps the other half alive), together, and reports how
full the table is.

Clock: ``expires_ns`` is bpf_ktime_get_ns(), i.e. CLOCK_MONOTONIC.
"""

from __future__ import annotations

import logging
import time

from .. import protocols
from ..errors import DatapathError
from . import bpf_structs as S
from . import libbpf

log = logging.getLogger("dockline.ct")


def twin_key(e: S.CtEntry, proto: int) -> S.CtKey:
    return S.CtKey(saddr=e.to_daddr, daddr=e.to_saddr, sport=e.to_dport, dport=e.to_sport, proto=proto)


def _k(k: S.CtKey) -> tuple:
    return (k.saddr, k.daddr, k.sport, k.dport, k.proto)


class ConntrackGC:
    def __init__(self, ct_map, capacity: int | None = None):
        self.ct = ct_map
        self.capacity = capacity or _max_entries(ct_map.fd)
        self.runs = 0
        self.deleted_total = 0
        self.last = {}

    def run(self, now_ns: int | None = None) -> dict:
        """Delete every flow whose both halves have expired. Returns counts."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) if now_ns is None else now_ns
        t0 = time.perf_counter()
        items = {_k(k): (k, v) for k, v in self.ct.items()}
        deleted = 0
        done = set()
        for key, (k, e) in items.items():
            if key in done or e.expires_ns > now:
                continue
            tk = twin_key(e, k.proto)
            twin = items.get(_k(tk))
            if twin is not None and twin[1].expires_ns > now:
                continue
            self.ct.delete(k)
            deleted += 1
            done.add(key)
            if twin is not None and _k(tk) not in done:
                self.ct.delete(tk)
                deleted += 1
                done.add(_k(tk))
        self.runs += 1
        self.deleted_total += deleted
        self.last = {"entries_before": len(items), "deleted": deleted,
                     "seconds": round(time.perf_counter() - t0, 4)}
        if deleted:
            log.info("conntrack GC: %d of %d entries expired and removed", deleted, len(items))
        return self.last

    def flush_address(self, addr_be: int) -> int:
        """Remove every flow translated to or from ``addr`` (network-order u32): an endpoint that
        goes away takes its flows along, so a later endpoint with the same address never gets a
        stale translation (the UDP conntrack problem kube-proxy flushes for). Returns entries
        removed."""
        n = 0
        for k, e in self.ct.items():
            if addr_be in (k.saddr, k.daddr, e.to_saddr, e.to_daddr):
                n += int(self.ct.delete(k))
        return n

    def pressure(self) -> dict:
        n = len(self.ct.keys())
        return {"entries": n, "capacity": self.capacity, "pressure": round(n / self.capacity, 4) if self.capacity else 0,
                "gc_runs": self.runs, "gc_deleted": self.deleted_total}

    def entries(self, limit: int = 1000) -> list[dict]:
        """Tracked flows, one row per ORIG half (readable: addresses and ports in host order)."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        out = []
        for k, e in self.ct.items():
            if e.dir != S.CT_DIR_ORIG:
                continue
            out.append({
                "proto": protocols.name(k.proto),
                "orig": f"{S.ip_text(k.saddr)}:{S.be16_value(k.sport)} -> {S.ip_text(k.daddr)}:{S.be16_value(k.dport)}",
                "translated": f"{S.ip_text(e.to_saddr)}:{S.be16_value(e.to_sport)} -> "
                              f"{S.ip_text(e.to_daddr)}:{S.be16_value(e.to_dport)}",
                "state": S.CT_STATES.get(e.state, str(e.state)),
                "kind": "+".join(n for b, n in ((S.CT_K_DNAT, "dnat"), (S.CT_K_SNAT, "snat"), (S.CT_K_LOCAL, "local"))
                                 if e.kind & b),
                "expires_in_s": round((e.expires_ns - now) / 1e9, 1), "packets": e.packets, "bytes": e.bytes})
            if len(out) >= limit:
                break
        return out


def _max_entries(fd: int) -> int:
    """The ct map's capacity (0 if the kernel will not say: pressure is then not reported)."""
    try:
        return libbpf.map_info(fd).max_entries
    except DatapathError:
        return 0

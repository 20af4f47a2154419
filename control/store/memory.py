"""In-memory revisioned store: the fake for unit tests without root or files.

Same semantics as the SQLite backend (the contract suite runs on both); nothing survives the
process. A lock serialises callers; ``exclusive()`` holds it across a domain transaction.
"""

from __future__ import annotations

import bisect
import contextlib
import threading

from .base import (KV, Compacted, Compare, Delete, Event, KeyValue, LeaseNotFound, Put, StoreError,
                   TxnResult, check_ttl)


class MemoryKV(KV):
    def __init__(self, clock=None):
        super().__init__(clock)
        self._kvs: dict[str, KeyValue] = {}
        self._keys: list[str] = []               # sorted, for range reads
        self._rev = 0
        self._compact_rev = 0
        self._events: list[Event] = []            # revision order
        self._event_revs: list[int] = []          # parallel to _events, for bisect
        self._leases: dict[int, list[float]] = {}  # id -> [ttl, deadline]
        self._next_lease = 1
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ helpers
    def _span(self, key, range_end):
        if range_end is None:
            return [key] if key in self._kvs else []
        lo = bisect.bisect_left(self._keys, key)
        hi = bisect.bisect_left(self._keys, range_end)
        return self._keys[lo:hi]

    def _emit(self, etype, kv):
        self._events.append(Event(etype, kv))
        self._event_revs.append(kv.mod_revision)

    def _delete_keys(self, keys, rev):
        for k in keys:
            old = self._kvs.pop(k)
            del self._keys[bisect.bisect_left(self._keys, k)]
            self._emit("delete", KeyValue(k, "", old.create_revision, rev, 0, old.lease))

    def _expire(self):
        now = self.clock()
        for lid in [lid for lid, (_, deadline) in self._leases.items() if deadline <= now]:
            self._revoke(lid)

    def _revoke(self, lid):
        del self._leases[lid]
        keys = [k for k, kv in self._kvs.items() if kv.lease == lid]
        if keys:
            self._rev += 1
            self._delete_keys(sorted(keys), self._rev)

    # ------------------------------------------------------------------ reads
    def range(self, key, range_end=None, *, limit=0, count_only=False):
        with self._lock:
            self._expire()
            keys = self._span(key, range_end)
            if count_only:
                return [], len(keys), self._rev
            picked = keys[:limit] if limit else keys
            return [self._kvs[k] for k in picked], len(keys), self._rev

    def revision(self):
        with self._lock:
            self._expire()
            return self._rev

    # ------------------------------------------------------------------ writes
    def _holds(self, c: Compare) -> bool:
        if c.range_end is None:
            return c.holds_for(self._kvs.get(c.key))
        return all(c.holds_for(self._kvs[k]) for k in self._span(c.key, c.range_end))

    def txn(self, compares, success, failure=()):
        with self._lock:
            self._expire()
            ok = all(self._holds(c) for c in compares)
            ops = success if ok else failure
            for op in ops:
                if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                    raise LeaseNotFound(op.lease)
            rev = self._rev + 1
            changed = False
            for op in ops:
                if isinstance(op, Put):
                    old = self._kvs.get(op.key)
                    if old is None:
                        bisect.insort(self._keys, op.key)
                        kv = KeyValue(op.key, op.value, rev, rev, 1, op.lease)
                    else:
                        kv = KeyValue(op.key, op.value, old.create_revision, rev, old.version + 1, op.lease)
                    self._kvs[op.key] = kv
                    self._emit("put", kv)
                    changed = True
                elif isinstance(op, Delete):
                    keys = self._span(op.key, op.range_end)
                    if keys:
                        self._delete_keys(list(keys), rev)
                        changed = True
                else:
                    raise StoreError(f"unknown txn operation {op!r}")
            if changed:
                self._rev = rev
            return TxnResult(ok, self._rev)

    @contextlib.contextmanager
    def exclusive(self):
        with self._lock:
            yield

    # ------------------------------------------------------------------ watch
    def watch(self, key, start_revision, range_end=None):
        with self._lock:
            self._expire()
            if start_revision < self._compact_rev:
                raise Compacted(start_revision, self._compact_rev, self._rev)
            i = bisect.bisect_left(self._event_revs, start_revision)
            out = []
            for e in self._events[i:]:
                k = e.kv.key
                if (k == key) if range_end is None else (key <= k < range_end):
                    out.append(e)
            return out

    def compact(self, revision):
        with self._lock:
            if revision > self._rev:
                raise StoreError(f"cannot compact at revision {revision}: the store is at {self._rev}")
            if revision <= self._compact_rev:
                return
            i = bisect.bisect_left(self._event_revs, revision)
            del self._events[:i], self._event_revs[:i]
            self._compact_rev = revision

    def compact_revision(self):
        return self._compact_rev

    # ------------------------------------------------------------------ leases
    def grant(self, ttl):
        check_ttl(ttl)
        with self._lock:
            self._expire()
            lid = self._next_lease
            self._next_lease += 1
            self._leases[lid] = [ttl, self.clock() + ttl]
            return lid

    def _lease(self, lid):
        self._expire()
        if lid not in self._leases:
            raise LeaseNotFound(lid)
        return self._leases[lid]

    def keepalive(self, lease_id):
        with self._lock:
            lease = self._lease(lease_id)
            lease[1] = self.clock() + lease[0]
            return lease[0]

    def revoke(self, lease_id):
        with self._lock:
            self._lease(lease_id)
            self._revoke(lease_id)

    def time_to_live(self, lease_id):
        with self._lock:
            return self._lease(lease_id)[1] - self.clock()

"""The revisioned store in one SQLite file (the single-host backend).

Layout: ``kv`` holds the current keys (WITHOUT ROWID, so a key range is one B-tree walk);
triggers on ``kv`` append every put and delete to ``kv_events`` (the watch log, in rowid order);
``kv_revisions`` maps each revision to its first event; ``kv_state`` holds the global revision,
the compact revision and the next lease id; ``kv_leases`` the leases with their deadlines.

Crash safety: WAL with ``synchronous=FULL``; every txn, expiry and compaction is one SQL
transaction (``BEGIN IMMEDIATE``), so a SIGKILL leaves the last committed revision and nothing of
a later one. ``exclusive()`` widens that transaction to a whole domain transaction.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading

from .base import (KV, Compacted, Delete, Event, KeyValue, LeaseNotFound, Put, StoreError, TxnResult,
                   check_ttl)

CACHE_KIB = 512
KV_SCHEMA_VERSION = 1     # PRAGMA user_version of this backend's tables
RETAIN_REVISIONS = 1000   # events of the last this many revisions are kept for watchers
COMPACT_EVERY = 100       # ... checked every this many revisions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS kv_state (
    id INTEGER PRIMARY KEY CHECK (id = 0), rev INTEGER NOT NULL, compact_rev INTEGER NOT NULL,
    next_lease INTEGER NOT NULL);
INSERT OR IGNORE INTO kv_state VALUES (0, 0, 0, 1);
CREATE TABLE IF NOT EXISTS kv_events (
    id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL,
    value TEXT NOT NULL, create_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv_revisions (rev INTEGER PRIMARY KEY, first_event INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv_leases (id INTEGER PRIMARY KEY, ttl REAL NOT NULL, deadline REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS kv_put_new AFTER INSERT ON kv BEGIN
    INSERT INTO kv_events (rev, type, key, value, create_rev, version, lease)
    VALUES (NEW.mod_rev, 'put', NEW.key, NEW.value, NEW.create_rev, NEW.version, NEW.lease); END;
CREATE TRIGGER IF NOT EXISTS kv_put_again AFTER UPDATE ON kv BEGIN
    INSERT INTO kv_events (rev, type, key, value, create_rev, version, lease)
    VALUES (NEW.mod_rev, 'put', NEW.key, NEW.value, NEW.create_rev, NEW.version, NEW.lease); END;
CREATE TRIGGER IF NOT EXISTS kv_deleted AFTER DELETE ON kv BEGIN
    INSERT INTO kv_events (rev, type, key, value, create_rev, version, lease)
    VALUES ((SELECT rev FROM kv_state WHERE id = 0), 'delete', OLD.key, '', OLD.create_rev, 0, OLD.lease); END;
"""

_UPSERT = ("INSERT INTO kv VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value, "
           "mod_rev=excluded.mod_rev, version=kv.version+1, lease=excluded.lease")
_COLS = "key, value, create_rev, mod_rev, version, lease"
_TARGET_COLUMN = {"create": "create_rev", "mod": "mod_rev", "version": "version", "value": "value"}


_PUT = _UPSERT
_DELETE_KEY = "DELETE FROM kv WHERE key = ?"
_DELETE_RANGE = "DELETE FROM kv WHERE key >= ? AND key < ?"


class SQLiteKV(KV):
    def __init__(self, path: str, clock=None, retain_revisions: int = RETAIN_REVISIONS):
        super().__init__(clock)
        self.path = path
        self.retain_revisions = retain_revisions
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        # The page cache lives in the agent's heap: SQLite's default (2 MiB) would hold all of a
        # store with 10,000 published ports. Changes read a few rows through key ranges, and the
        # kernel caches the file for the rest.
        self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._lock = threading.RLock()
        self._depth = 0          # exclusive() nesting; > 0 means a SQL transaction is open
        with self._lock:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > KV_SCHEMA_VERSION:
                raise StoreError(f"store {path} has schema {version}, newer than this dockline ({KV_SCHEMA_VERSION})")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={KV_SCHEMA_VERSION}")

    # ------------------------------------------------------------------ transactions
    @contextlib.contextmanager
    def exclusive(self):
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                self._expire()
                yield
            except BaseException:
                self._depth = 0
                self.db.execute("ROLLBACK")
                raise
            self._depth = 0
            self.db.execute("COMMIT")

    @contextlib.contextmanager
    def _write(self):
        """Run one operation inside the open exclusive() or as its own SQL transaction."""
        with self.exclusive():
            yield

    def _q(self, sql, *args):
        return self.db.execute(sql, args).fetchall()

    def _state(self):
        return self.db.execute("SELECT rev, compact_rev, next_lease FROM kv_state WHERE id = 0").fetchone()

    def _begin_revision(self):
        """Point the delete trigger at the next revision; returns (rev, first event id, changes)."""
        rev = self._state()[0] + 1
        self.db.execute("UPDATE kv_state SET rev = ? WHERE id = 0", (rev,))
        first = self.db.execute("SELECT coalesce(max(id), 0) + 1 FROM kv_events").fetchone()[0]
        return rev, first

    def _end_revision(self, rev, first):
        """Keep ``rev`` if it logged events, else give it back."""
        last = self.db.execute("SELECT coalesce(max(id), 0) FROM kv_events").fetchone()[0]
        if last >= first:
            self.db.execute("INSERT INTO kv_revisions VALUES (?, ?)", (rev, first))
            if rev % COMPACT_EVERY == 0 and rev > self.retain_revisions:
                self._compact(rev - self.retain_revisions)
            return rev
        self.db.execute("UPDATE kv_state SET rev = ? WHERE id = 0", (rev - 1,))
        return rev - 1

    # ------------------------------------------------------------------ leases (expiry first)
    def _expire(self):
        now = self.clock()
        for (lid,) in self._q("SELECT id FROM kv_leases WHERE deadline <= ? ORDER BY id", now):
            self._revoke(lid)

    def _revoke(self, lid):
        self.db.execute("DELETE FROM kv_leases WHERE id = ?", (lid,))
        rev, first = self._begin_revision()
        self.db.execute("DELETE FROM kv WHERE lease = ?", (lid,))
        self._end_revision(rev, first)

    def grant(self, ttl):
        check_ttl(ttl)
        with self._write():
            lid = self._state()[2]
            self.db.execute("UPDATE kv_state SET next_lease = ? WHERE id = 0", (lid + 1,))
            self.db.execute("INSERT INTO kv_leases VALUES (?, ?, ?)", (lid, ttl, self.clock() + ttl))
            return lid

    def _lease(self, lid):
        row = self._q("SELECT ttl, deadline FROM kv_leases WHERE id = ?", lid)
        if not row:
            raise LeaseNotFound(lid)
        return row[0]

    def keepalive(self, lease_id):
        with self._write():
            ttl, _ = self._lease(lease_id)
            self.db.execute("UPDATE kv_leases SET deadline = ? WHERE id = ?", (self.clock() + ttl, lease_id))
            return ttl

    def revoke(self, lease_id):
        with self._write():
            self._lease(lease_id)
            self._revoke(lease_id)

    def time_to_live(self, lease_id):
        with self._write():
            return self._lease(lease_id)[1] - self.clock()

    # ------------------------------------------------------------------ reads
    def _fresh(self):
        """Reads outside exclusive(): expire leases first if one is due (a write)."""
        if not self._depth:
            due = self.db.execute("SELECT min(deadline) FROM kv_leases").fetchone()[0]
            if due is not None and due <= self.clock():
                with self._write():
                    pass

    def range(self, key, range_end=None, *, limit=0, count_only=False):
        with self._lock:
            self._fresh()
            where, args = ("key = ?", (key,)) if range_end is None else ("key >= ? AND key < ?", (key, range_end))
            if self._depth == 0:
                self.db.execute("BEGIN")      # one snapshot for the rows, the count and the revision
            try:
                kvs = []
                if count_only or limit:
                    count = self.db.execute(f"SELECT count(*) FROM kv WHERE {where}", args).fetchone()[0]
                if not count_only:
                    sql = f"SELECT {_COLS} FROM kv WHERE {where} ORDER BY key" + (f" LIMIT {int(limit)}" if limit else "")
                    kvs = [KeyValue(*r) for r in self.db.execute(sql, args)]
                    if not limit:
                        count = len(kvs)
                rev = self._state()[0]
            finally:
                if self._depth == 0:
                    self.db.execute("COMMIT")
            return kvs, count, rev

    def revision(self):
        with self._lock:
            self._fresh()
            return self._state()[0]

    # ------------------------------------------------------------------ writes
    def _holds(self, c) -> bool:
        col = _TARGET_COLUMN[c.target]
        if c.range_end is None:
            row = self._q(f"SELECT {_COLS} FROM kv WHERE key = ?", c.key)
            return c.holds_for(KeyValue(*row[0]) if row else None)
        span = (c.key, c.range_end)
        if c.op == "!=":
            return self._q(f"SELECT count(*) FROM kv WHERE key >= ? AND key < ? AND {col} = ?", *span, c.value)[0][0] == 0
        lo, hi, n = self._q(f"SELECT min({col}), max({col}), count(*) FROM kv WHERE key >= ? AND key < ?", *span)[0]
        if n == 0:
            return True
        if c.op == "<":
            return hi < c.value
        if c.op == ">":
            return lo > c.value
        return lo == hi == c.value

    def txn(self, compares, success, failure=()):
        with self._write():
            ok = all(self._holds(c) for c in compares)
            ops = success if ok else failure
            if not ops:
                return TxnResult(ok, self._state()[0])
            rev = self._state()[0] + 1
            # One pass sorts the ops into runs, in order: consecutive puts go in one executemany,
            # consecutive single-key deletes in another; a range delete is one statement.
            runs: list[tuple[str, list]] = []
            leases = set()
            for op in ops:
                if type(op) is Put:
                    kind, row = _PUT, (op[0], op[1], rev, rev, op[2])
                    if op[2]:
                        leases.add(op[2])
                elif type(op) is Delete:
                    kind, row = (_DELETE_KEY, (op[0],)) if op[1] is None else (_DELETE_RANGE, (op[0], op[1]))
                else:
                    raise StoreError(f"unknown txn operation {op!r}")
                if runs and runs[-1][0] is kind and kind is not _DELETE_RANGE:
                    runs[-1][1].append(row)
                else:
                    runs.append((kind, [row]))
            for lid in sorted(leases):       # every lease exists, or nothing is written
                self._lease(lid)
            rev, first = self._begin_revision()
            for sql, rows in runs:
                if len(rows) == 1:
                    self.db.execute(sql, rows[0])
                else:
                    self.db.executemany(sql, rows)
            return TxnResult(ok, self._end_revision(rev, first))

    # ------------------------------------------------------------------ watch
    def watch(self, key, start_revision, range_end=None):
        with self._lock:
            self._fresh()
            if self._depth == 0:
                self.db.execute("BEGIN")
            try:
                rev, compact_rev, _ = self._state()
                if start_revision < compact_rev:
                    raise Compacted(start_revision, compact_rev, rev)
                row = self._q("SELECT first_event FROM kv_revisions WHERE rev >= ? ORDER BY rev LIMIT 1", start_revision)
                if not row:
                    return []
                where, args = ("key = ?", (key,)) if range_end is None else ("key >= ? AND key < ?", (key, range_end))
                rows = self.db.execute(f"SELECT type, key, value, create_rev, rev, version, lease FROM kv_events "
                                       f"WHERE id >= ? AND {where} ORDER BY id", (row[0][0], *args))
                return [Event(t, KeyValue(*r)) for t, *r in rows]
            finally:
                if self._depth == 0:
                    self.db.execute("COMMIT")

    def _compact(self, revision):
        rev, compact_rev, _ = self._state()
        if revision > rev:
            raise StoreError(f"cannot compact at revision {revision}: the store is at {rev}")
        if revision <= compact_rev:
            return
        first = self._q("SELECT first_event FROM kv_revisions WHERE rev >= ? ORDER BY rev LIMIT 1", revision)
        if first:
            self.db.execute("DELETE FROM kv_events WHERE id < ?", (first[0][0],))
        else:
            self.db.execute("DELETE FROM kv_events")
        self.db.execute("DELETE FROM kv_revisions WHERE rev < ?", (revision,))
        self.db.execute("UPDATE kv_state SET compact_rev = ? WHERE id = 0", (revision,))

    def compact(self, revision):
        with self._write():
            self._compact(revision)

    def compact_revision(self):
        with self._lock:
            return self._state()[1]

    def close(self):
        with self._lock:
            self.db.close()

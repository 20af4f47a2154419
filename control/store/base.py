"""The revisioned key-value interface every store backend implements, shaped like etcd v3.

Contract (the same on every backend; ``tests/unit/test_store_contract.py`` checks it):

* Keys and values are ``str`` (an etcd backend encodes them as UTF-8). Keys sort as code points,
  so a prefix is the half-open key range ``[prefix, prefix_end(prefix))``.
* One global revision counts every change. Each ``txn`` that changes something, and each lease
  expiry or revoke that deletes keys, takes the next revision; every key it writes gets that
  ``mod_revision``. A key records ``create_revision`` (the revision that created it, 0 for a key
  that does not exist), ``mod_revision`` and ``version`` (1 on creation, +1 per put; a delete
  resets the key, so a re-created key starts over at 1).
* ``txn(compares, success, failure)`` is compare-and-swap: if every compare holds, the ``success``
  ops are applied, else the ``failure`` ops; all at one revision, all or nothing. A writer names
  the revision it read (``Compare(key, "mod", "==", rev)``, or ``"create" == 0`` for "still
  absent"); when another writer got there first the txn reports ``succeeded=False`` and the caller
  re-reads and retries. Nothing is lost silently.
* ``watch(prefix, start_revision)`` returns the events with ``revision >= start_revision`` in
  revision order (a txn's events in the order of its ops). A watcher resumes from the last
  revision it saw + 1. After ``compact(r)`` the events before ``r`` are gone and a watch from
  ``start_revision < r`` raises ``Compacted``: the watcher re-reads (``range``) and resumes from
  the revision that read returned + 1.
* Leases: ``grant(ttl)`` returns a lease id; keys put with ``lease=id`` are deleted (with delete
  events) when the lease expires, ``ttl`` seconds after the grant or the last ``keepalive``, or on
  ``revoke``. Expiry is judged by the backend's ``clock`` (injectable; tests drive it) whenever the
  store is used.
* Scopes: keys under ``host_scope(name)`` belong to one host, keys under ``CLUSTER_SCOPE`` to the
  whole cluster. ``Scoped`` is a view that prefixes every key, so records of one scope never see
  another's. On SQLite both live in one file. An etcd backend maps them under one root,
  ``/dockline/hosts/<host>/...`` and ``/dockline/cluster/...``, by giving its client the prefix
  ``/dockline/``.

Notes for the etcd backend: ``Compare`` with ``range_end`` is etcd's Compare.range_end; ``Put``/
``Delete`` are RequestPut/RequestDeleteRange; ``exclusive()`` stays the no-op default. A domain
transaction is ONE txn, and publishing 10,000 ports makes it ~10,000 ops and ~1 MB, so the
server needs ``--max-txn-ops`` (default 128) and ``--max-request-bytes`` (default 1.5 MiB) raised
accordingly, or the engine must publish big ranges in bounded batches.
"""

from __future__ import annotations

import abc
import contextlib
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

from ..errors import DocklineError

CLUSTER_SCOPE = "cluster/"


def host_scope(host: str) -> str:
    """The key prefix of one host's records."""
    if not host or "/" in host:
        raise StoreError(f"invalid host name for a store scope: {host!r}")
    return f"hosts/{host}/"


def prefix_end(prefix: str) -> str:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    if not prefix:
        return "\U0010ffff"
    last = prefix[-1]
    if last == "\U0010ffff":
        raise StoreError(f"key prefix {prefix!r} has no range end")
    return prefix[:-1] + chr(ord(last) + 1)


# ------------------------------------------------------------------------- errors
class StoreError(DocklineError):
    """The store refused or could not do an operation; the message says which and why."""

    kind = "store"


class Compacted(StoreError):
    """A watch asked for events the store has compacted away. Re-read the keys (``range``) and
    watch again from the revision of that read + 1."""

    def __init__(self, start_revision: int, compact_revision: int, current_revision: int):
        super().__init__(f"watch from revision {start_revision} is compacted (events before "
                         f"{compact_revision} are gone; current revision {current_revision}): re-read and resume")
        self.start_revision = start_revision
        self.compact_revision = compact_revision
        self.current_revision = current_revision


class LeaseNotFound(StoreError):
    """The lease id was never granted, has expired or was revoked."""

    def __init__(self, lease_id: int):
        super().__init__(f"lease {lease_id} not found (expired or revoked)")
        self.lease_id = lease_id


class TxnConflict(StoreError):
    """A compare-and-swap commit lost: the store changed since the caller read it. Re-read and
    retry (``Store.run`` does it for domain transactions)."""


# ------------------------------------------------------------------------- records
class KeyValue(NamedTuple):
    """One key as stored. A tuple, because a range read of 10,000 keys builds 10,000 of them."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class Event(NamedTuple):
    """One change. ``type`` is "put" or "delete"; ``kv`` is the key after a put, and for a delete
    the key with ``value == ""``, ``version == 0`` and ``mod_revision`` = the delete's revision."""

    type: str
    kv: KeyValue

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


_TARGETS = ("create", "mod", "version", "value")
_OPS = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b, ">": lambda a, b: a > b}


@dataclass(frozen=True)
class Compare:
    """``target`` of ``key`` (or of every key in ``[key, range_end)``) ``op`` ``value``.

    target: "create" / "mod" (revisions), "version", or "value". A missing key has create, mod
    and version 0 and value None (which only "!=" matches). With ``range_end`` the compare holds
    when it holds for every existing key in the range (etcd semantics); "mod" "<" R+1 over a range
    read at revision R says nothing in it was put since (deletes are not seen)."""

    key: str
    target: str
    op: str
    value: int | str | None
    range_end: str | None = None

    def __post_init__(self):
        if self.target not in _TARGETS:
            raise StoreError(f"unknown compare target {self.target!r} (one of {', '.join(_TARGETS)})")
        if self.op not in _OPS:
            raise StoreError(f"unknown compare operator {self.op!r} (one of {', '.join(_OPS)})")

    def holds_for(self, kv: KeyValue | None) -> bool:
        if self.target == "value":
            actual = kv.value if kv else None
            if actual is None or self.value is None:
                return self.op == "!=" and actual != self.value
        else:
            actual = getattr(kv, self.target + ("_revision" if self.target != "version" else ""), 0) if kv else 0
        return _OPS[self.op](actual, self.value)


class Put(NamedTuple):
    """Set ``key`` to ``value``, attached to ``lease`` (0: none). (Ops are tuples: a txn that
    publishes 10,000 ports carries 20,000 of them.)"""

    key: str
    value: str
    lease: int = 0


class Delete(NamedTuple):
    """Delete ``key``, or every key in ``[key, range_end)``."""

    key: str
    range_end: str | None = None


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int       # the store's revision after the txn (unchanged when it wrote nothing)


# ------------------------------------------------------------------------- the interface
class KV(abc.ABC):
    """A revisioned key-value store (see the module docstring for the contract)."""

    def __init__(self, clock: Callable[[], float] | None = None):
        self.clock = clock or time.time

    # reads
    @abc.abstractmethod
    def range(self, key: str, range_end: str | None = None, *, limit: int = 0,
              count_only: bool = False) -> tuple[list[KeyValue], int, int]:
        """``(kvs sorted by key, count, revision)`` of ``key`` alone or ``[key, range_end)``;
        with ``count_only`` kvs is empty. ``limit`` > 0 caps kvs, not count."""

    def get(self, key: str) -> KeyValue | None:
        kvs, _, _ = self.range(key)
        return kvs[0] if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        kvs, _, rev = self.range(prefix, prefix_end(prefix))
        return kvs, rev

    @abc.abstractmethod
    def revision(self) -> int: ...

    # writes
    @abc.abstractmethod
    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult: ...

    def put(self, key: str, value: str, lease: int = 0) -> int:
        return self.txn((), (Put(key, value, lease),)).revision

    def delete(self, key: str, range_end: str | None = None) -> int:
        return self.txn((), (Delete(key, range_end),)).revision

    @contextlib.contextmanager
    def exclusive(self):
        """Hold off every other writer while the block runs (local backends: a lock, and for
        SQLite ``BEGIN IMMEDIATE`` across processes), so reads inside cannot go stale and the
        block's one ``txn`` never loses its compares. The txn is durable when the block exits; if
        the block raises, a txn issued in it is undone where the backend can (SQLite).
        A remote backend (etcd) yields at once and relies on the compares."""
        yield

    # watch
    @abc.abstractmethod
    def watch(self, key: str, start_revision: int, range_end: str | None = None) -> list[Event]:
        """Events on ``key`` (or ``[key, range_end)``) with revision >= ``start_revision``, in
        revision order. Raises Compacted when ``start_revision`` is below the compact revision."""

    def watch_prefix(self, prefix: str, start_revision: int) -> list[Event]:
        return self.watch(prefix, start_revision, prefix_end(prefix))

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Forget the events before ``revision`` (keys keep their current state)."""

    @abc.abstractmethod
    def compact_revision(self) -> int: ...

    # leases
    @abc.abstractmethod
    def grant(self, ttl: float) -> int:
        """A new lease id (> 0) that expires ``ttl`` seconds from now unless kept alive."""

    @abc.abstractmethod
    def keepalive(self, lease_id: int) -> float:
        """Restart the lease's TTL; returns the TTL. Raises LeaseNotFound."""

    @abc.abstractmethod
    def revoke(self, lease_id: int) -> None:
        """Delete the lease and its keys now. Raises LeaseNotFound."""

    @abc.abstractmethod
    def time_to_live(self, lease_id: int) -> float:
        """Seconds left; raises LeaseNotFound."""

    def close(self) -> None:
        pass


def check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise StoreError(f"lease TTL must be positive, got {ttl!r}")


class Scoped(KV):
    """A view of ``kv`` where every key is under ``prefix`` (a host's or the cluster's scope).
    Keys going in get the prefix, keys coming out lose it; leases and revisions are shared."""

    def __init__(self, kv: KV, prefix: str):
        self.kv, self.prefix = kv, prefix
        self.clock = kv.clock

    def _in(self, key: str) -> str:
        return self.prefix + key

    def _end(self, range_end: str | None) -> str | None:
        # an empty-ended scope range ("every key") is the whole scope
        return None if range_end is None else (prefix_end(self.prefix) if range_end == "\U0010ffff" else self.prefix + range_end)

    def _out(self, kv: KeyValue) -> KeyValue:
        return KeyValue(kv.key[len(self.prefix):], kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)

    def range(self, key, range_end=None, *, limit=0, count_only=False):
        kvs, count, rev = self.kv.range(self._in(key), self._end(range_end), limit=limit, count_only=count_only)
        n = len(self.prefix)
        return [KeyValue(kv[0][n:], *kv[1:]) for kv in kvs], count, rev

    def revision(self):
        return self.kv.revision()

    def _ops(self, ops):
        p = self.prefix
        return [Put(p + op[0], op[1], op[2]) if type(op) is Put else Delete(p + op[0], self._end(op[1]))
                for op in ops]

    def txn(self, compares, success, failure=()):
        cs = [Compare(self._in(c.key), c.target, c.op, c.value, self._end(c.range_end)) for c in compares]
        return self.kv.txn(cs, self._ops(success), self._ops(failure))

    def exclusive(self):
        return self.kv.exclusive()

    def watch(self, key, start_revision, range_end=None):
        return [Event(e.type, self._out(e.kv))
                for e in self.kv.watch(self._in(key), start_revision, self._end(range_end))]

    def compact(self, revision):
        self.kv.compact(revision)

    def compact_revision(self):
        return self.kv.compact_revision()

    def grant(self, ttl):
        return self.kv.grant(ttl)

    def keepalive(self, lease_id):
        return self.kv.keepalive(lease_id)

    def revoke(self, lease_id):
        self.kv.revoke(lease_id)

    def time_to_live(self, lease_id):
        return self.kv.time_to_live(lease_id)


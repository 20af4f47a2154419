"""Desired-state store: the Store interface and its embedded SQLite implementation.

Contract: every change happens inside ``with store.transaction() as tx:``; it commits as a whole
or not at all (SQLite's journal makes that true across a SIGKILL, too). Records go in and out as
the dataclasses of ``model``. A later etcd backend implements the same ``Transaction`` methods.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import sqlite3
import threading

from .errors import Conflict
from .model import Attachment, Endpoint, Network, PortMapping

SCHEMA_VERSION = 1
CACHE_KIB = 512

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS networks (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attachments (
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
    network_id TEXT NOT NULL REFERENCES networks(id),
    data TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, network_id));
CREATE TABLE IF NOT EXISTS leases (
    network_id TEXT NOT NULL, ip TEXT NOT NULL, owner TEXT NOT NULL,
    PRIMARY KEY (network_id, ip));
CREATE TABLE IF NOT EXISTS ports (
    proto TEXT NOT NULL, host_ip TEXT NOT NULL, host_port INTEGER NOT NULL,
    endpoint_id TEXT NOT NULL, container_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port));
CREATE INDEX IF NOT EXISTS ports_by_endpoint ON ports (endpoint_id);
CREATE INDEX IF NOT EXISTS ports_by_port ON ports (proto, host_port);
"""


class Transaction(abc.ABC):
    """The operations a store offers inside one atomic transaction."""

    # networks
    @abc.abstractmethod
    def put_network(self, net: Network) -> None: ...
    @abc.abstractmethod
    def delete_network(self, net_id: str) -> None: ...
    @abc.abstractmethod
    def networks(self) -> list[Network]: ...
    # endpoints
    @abc.abstractmethod
    def put_endpoint(self, ep: Endpoint) -> None: ...
    @abc.abstractmethod
    def delete_endpoint(self, ep_id: str) -> None: ...
    @abc.abstractmethod
    def endpoints(self) -> list[Endpoint]: ...
    # attachments
    @abc.abstractmethod
    def put_attachment(self, att: Attachment) -> None: ...
    @abc.abstractmethod
    def delete_attachment(self, ep_id: str, net_id: str) -> None: ...
    @abc.abstractmethod
    def attachments(self, ep_id: str | None = None, net_id: str | None = None) -> list[Attachment]: ...
    # IPAM leases
    @abc.abstractmethod
    def lease(self, net_id: str, ip: str, owner: str) -> None:
        """Record ``ip`` as taken by ``owner``; raise Conflict if someone holds it."""
    @abc.abstractmethod
    def release(self, net_id: str, ip: str) -> None: ...
    @abc.abstractmethod
    def leases(self, net_id: str | None = None) -> list[tuple[str, str, str]]:
        """[(network_id, ip, owner), ...]"""
    # port mappings
    @abc.abstractmethod
    def put_port(self, pm: PortMapping) -> None:
        """Raise Conflict if the (proto, host_ip, host_port) key is taken."""
    # (put_ports, port_count, host_ports_in: defaults in terms of the others; backends do better)
    def put_ports(self, rows) -> None:
        """Many mappings at once, as ``(endpoint_id, proto, host_ip, host_port, container_port)``
        tuples (publishing a range of thousands of ports creates no record objects)."""
        for r in rows:
            self.put_port(PortMapping(*r))
    @abc.abstractmethod
    def delete_ports(self, ep_id: str) -> None: ...
    @abc.abstractmethod
    def ports(self, ep_id: str | None = None) -> list[PortMapping]: ...
    def port_count(self) -> int:
        return len(self.ports())
    def host_ports_in(self, proto: str, lo: int, hi: int) -> list[tuple[str, int]]:
        """``(host_ip, host_port)`` of the ``proto`` mappings with ``lo <= host_port <= hi`` (what a
        new mapping in that range can collide with, without reading every mapping)."""
        return [(p.host_ip, p.host_port) for p in self.ports() if p.proto == proto and lo <= p.host_port <= hi]
    # metadata
    @abc.abstractmethod
    def get_meta(self, key: str, default: str | None = None) -> str | None: ...
    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    # convenience lookups shared by every backend
    def network(self, ref: str) -> Network | None:
        """By exact name, exact id, or unique id prefix (>= 3 chars), like Docker."""
        nets = self.networks()
        return _by_ref(nets, ref)

    def endpoint(self, ref: str) -> Endpoint | None:
        return _by_ref(self.endpoints(), ref)


def _by_ref(items, ref):
    for it in items:
        if it.name == ref or it.id == ref:
            return it
    if len(ref) >= 3:
        hits = [it for it in items if it.id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
    return None


class Store(abc.ABC):
    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Transaction]: ...

    def close(self) -> None:
        pass


class SQLiteStore(Store):
    """Single-host store in one SQLite file (WAL mode). Transactions are serialised by a lock and
    ``BEGIN IMMEDIATE``, so readers never see half an operation."""

    def __init__(self, path: str):
        self.path = path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # The page cache lives in the agent's heap: SQLite's default (2 MiB) would hold all of a
        # store with 10,000 published ports (2.2 MB with its indexes). Changes read a few rows
        # through the indexes, and the kernel caches the file for the rest.
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._lock = threading.RLock()
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @contextlib.contextmanager
    def transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTx(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _dump(rec) -> str:
    return json.dumps(rec.to_dict(), sort_keys=True)


class _SQLiteTx(Transaction):
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def _q(self, sql, *args):
        return self.db.execute(sql, args).fetchall()

    def put_network(self, net):
        try:
            self._q("INSERT INTO networks VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET name=excluded.name, "
                    "data=excluded.data", net.id, net.name, _dump(net))
        except sqlite3.IntegrityError:
            raise Conflict(f"network with name {net.name} already exists") from None

    def delete_network(self, net_id):
        self._q("DELETE FROM leases WHERE network_id=?", net_id)
        self._q("DELETE FROM networks WHERE id=?", net_id)

    def networks(self):
        return [Network(**json.loads(d)) for (d,) in self._q("SELECT data FROM networks ORDER BY rowid")]

    def put_endpoint(self, ep):
        try:
            self._q("INSERT INTO endpoints VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET name=excluded.name, "
                    "data=excluded.data", ep.id, ep.name, _dump(ep))
        except sqlite3.IntegrityError:
            raise Conflict(f"the endpoint name {ep.name} is already in use") from None

    def delete_endpoint(self, ep_id):
        self._q("DELETE FROM ports WHERE endpoint_id=?", ep_id)
        self._q("DELETE FROM attachments WHERE endpoint_id=?", ep_id)
        self._q("DELETE FROM leases WHERE owner=?", ep_id)
        self._q("DELETE FROM endpoints WHERE id=?", ep_id)

    def endpoints(self):
        return [Endpoint(**json.loads(d)) for (d,) in self._q("SELECT data FROM endpoints ORDER BY rowid")]

    def put_attachment(self, att):
        self._q("INSERT OR REPLACE INTO attachments VALUES (?, ?, ?)", att.endpoint_id, att.network_id, _dump(att))

    def delete_attachment(self, ep_id, net_id):
        self._q("DELETE FROM attachments WHERE endpoint_id=? AND network_id=?", ep_id, net_id)

    def attachments(self, ep_id=None, net_id=None):
        sql, args = "SELECT data FROM attachments WHERE 1=1", []
        if ep_id is not None:
            sql += " AND endpoint_id=?"
            args.append(ep_id)
        if net_id is not None:
            sql += " AND network_id=?"
            args.append(net_id)
        atts = [Attachment(**json.loads(d)) for (d,) in self._q(sql + " ORDER BY rowid", *args)]
        return sorted(atts, key=lambda a: (a.endpoint_id, a.index))

    def lease(self, net_id, ip, owner):
        row = self._q("SELECT owner FROM leases WHERE network_id=? AND ip=?", net_id, ip)
        if row:
            if row[0][0] == owner:
                return
            raise Conflict(f"address {ip} is already in use")
        self._q("INSERT INTO leases VALUES (?, ?, ?)", net_id, ip, owner)

    def release(self, net_id, ip):
        self._q("DELETE FROM leases WHERE network_id=? AND ip=?", net_id, ip)

    def leases(self, net_id=None):
        if net_id is None:
            return [tuple(r) for r in self._q("SELECT network_id, ip, owner FROM leases")]
        return [tuple(r) for r in self._q("SELECT network_id, ip, owner FROM leases WHERE network_id=?", net_id)]

    def put_port(self, pm):
        try:
            self._q("INSERT INTO ports VALUES (?, ?, ?, ?, ?)", pm.proto, pm.host_ip, pm.host_port,
                    pm.endpoint_id, pm.container_port)
        except sqlite3.IntegrityError:
            raise Conflict(f"bind for {pm.host_ip}:{pm.host_port}/{pm.proto} failed: port is already allocated") from None

    def put_ports(self, rows):
        try:
            self.db.executemany("INSERT INTO ports VALUES (?, ?, ?, ?, ?)",
                                ((proto, ip, port, ep, cport) for ep, proto, ip, port, cport in rows))
        except sqlite3.IntegrityError:
            raise Conflict("bind failed: a port in the range is already allocated") from None

    def delete_ports(self, ep_id):
        self._q("DELETE FROM ports WHERE endpoint_id=?", ep_id)

    def port_count(self):
        return self._q("SELECT count(*) FROM ports")[0][0]

    def host_ports_in(self, proto, lo, hi):
        return self._q("SELECT host_ip, host_port FROM ports WHERE proto=? AND host_port BETWEEN ? AND ?",
                       proto, lo, hi)

    def ports(self, ep_id=None):
        # rows one at a time (no list of 10,000 row tuples), and one endpoint id string for all
        if ep_id:
            rows = self.db.execute("SELECT proto, host_ip, host_port, container_port FROM ports WHERE "
                                   "endpoint_id=? ORDER BY rowid", (ep_id,))
            return [PortMapping(ep_id, *r) for r in rows]
        rows = self.db.execute("SELECT endpoint_id, proto, host_ip, host_port, container_port FROM ports "
                               "ORDER BY rowid")
        return [PortMapping(*r) for r in rows]

    def get_meta(self, key, default=None):
        row = self._q("SELECT value FROM meta WHERE key=?", key)
        return row[0][0] if row else default

    def set_meta(self, key, value):
        self._q("INSERT OR REPLACE INTO meta VALUES (?, ?)", key, value)

"""Migration of a store written by the table-per-record SQLite store (schema_version 1: tables
networks, endpoints, attachments, leases, ports, meta) into the revisioned key layout.

Runs on open, inside one SQL transaction: the records are written through the domain layer as one
txn and the old tables are dropped in the same transaction, so a crash mid-way leaves the old
tables intact and the next open migrates again. Lists keep their old order (rowid order becomes
the creation sequence).
"""

from __future__ import annotations

import json

from ..model import Attachment, Endpoint, Network
from .base import StoreError
from .records import SCHEMA_VERSION, Store, Transaction

LEGACY_TABLES = ("attachments", "ports", "leases", "endpoints", "networks", "meta")


def has_legacy_tables(db) -> bool:
    return bool(db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='networks'").fetchall())


def migrate_legacy(store: Store, db) -> bool:
    """Move the old tables' rows into ``store`` (whose backend is the SQLite file ``db``) and
    drop the tables. Returns True if there was something to migrate."""
    if not has_legacy_tables(db):
        return False
    with store.records.exclusive():
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema_version") != "1":
            raise StoreError(f"cannot migrate the store: old schema_version {meta.get('schema_version')!r}, expected '1'")
        tx = Transaction(store.records)
        for (data,) in db.execute("SELECT data FROM networks ORDER BY rowid").fetchall():
            tx.put_network(Network(**json.loads(data)))
        for (data,) in db.execute("SELECT data FROM endpoints ORDER BY rowid").fetchall():
            tx.put_endpoint(Endpoint(**json.loads(data)))
        for (data,) in db.execute("SELECT data FROM attachments ORDER BY rowid").fetchall():
            tx.put_attachment(Attachment(**json.loads(data)))
        for net_id, ip, owner in db.execute("SELECT network_id, ip, owner FROM leases ORDER BY rowid").fetchall():
            tx.lease(net_id, ip, owner)
        tx.put_ports(db.execute("SELECT endpoint_id, proto, host_ip, host_port, container_port FROM ports "
                                "ORDER BY rowid").fetchall())
        for key, value in meta.items():
            tx.set_meta(key, value)
        tx.set_meta("schema_version", str(SCHEMA_VERSION))
        tx.commit()
        for table in LEGACY_TABLES:
            db.execute(f"DROP TABLE {table}")
    return True

"""Desired-state store: a revisioned key-value interface shaped like etcd v3 (``base``), its
backends (``sqlite``, ``memory``; etcd with the cluster work), and the domain layer the engine
uses (``records``: ``with store.transaction() as tx: tx.put_network(...)``) built on top of any
backend.
"""

from .base import (CLUSTER_SCOPE, KV, Compacted, Compare, Delete, Event, KeyValue, LeaseNotFound, Put, Scoped,
                   StoreError, TxnConflict, TxnResult, host_scope, prefix_end)
from .memory import MemoryKV
from .records import SCHEMA_VERSION, Store, Transaction
from .sqlite import CACHE_KIB, SQLiteKV
from .sqlite_store import SQLiteStore


class MemoryStore(Store):
    """The domain store in memory (tests without files)."""

    def __init__(self, host: str = "local", clock=None):
        super().__init__(MemoryKV(clock=clock), host)


__all__ = ["CACHE_KIB", "CLUSTER_SCOPE", "KV", "Compacted", "Compare", "Delete", "Event", "KeyValue",
           "LeaseNotFound", "MemoryKV", "MemoryStore", "Put", "SCHEMA_VERSION", "SQLiteKV", "SQLiteStore",
           "Scoped", "Store", "StoreError", "Transaction", "TxnConflict", "TxnResult", "host_scope", "prefix_end"]

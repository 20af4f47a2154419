"""``SQLiteStore``: the domain store on the SQLite backend, one file per host."""

from __future__ import annotations

from .migrate import migrate_legacy
from .records import Store
from .sqlite import SQLiteKV


class SQLiteStore(Store):
    """Single-host store in one SQLite file (WAL, synchronous=FULL). A domain transaction is one
    SQL transaction (``BEGIN IMMEDIATE``), so readers never see half an operation and a SIGKILL
    leaves the last committed one. A file of the old table layout is migrated on open."""

    def __init__(self, path: str, host: str = "local", clock=None):
        self.path = path
        kv = SQLiteKV(path, clock=clock)
        try:
            Store.__init__(self, kv, host)
            migrate_legacy(self, kv.db)
        except BaseException:
            kv.close()
            raise

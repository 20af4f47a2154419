"""The contract every revisioned store backend must pass (dockline.control.store.base): revisions,
CAS conflicts, txn atomicity, watch ordering and resumption (after a gap, after compaction),
scopes, leases with an injected clock, and crash consistency under SIGKILL.

Parametrized over every backend; the etcd backend joins ``BACKENDS`` with the cluster work.
"""

import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from dockline.control.store import (CLUSTER_SCOPE, Compacted, Compare, Delete, LeaseNotFound, MemoryKV, Put,
                                    Scoped, SQLiteKV, Store, StoreError, Transaction, TxnConflict, host_scope)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Backend:
    """How to make a backend, reopen it (persistent ones), and open it in a child process."""

    def __init__(self, name, make, persistent, child_open=None):
        self.name, self.make, self.persistent, self.child_open = name, make, persistent, child_open


BACKENDS = [
    Backend("memory", lambda tmp, clock: MemoryKV(clock=clock), persistent=False),
    Backend("sqlite", lambda tmp, clock: SQLiteKV(str(tmp / "kv" / "store.db"), clock=clock), persistent=True,
            child_open="from dockline.control.store import SQLiteKV as Open\nkv = Open(sys.argv[1] + '/kv/store.db')"),
]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request):
    return request.param


#: the backends that keep their keys across a close and a crash (what the durability tests test)
PERSISTENT = [b for b in BACKENDS if b.persistent]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def kv(backend, tmp_path, clock):
    store = backend.make(tmp_path, clock)
    yield store
    store.close()


def events(kv, prefix, start):
    return [(e.type, e.kv.key, e.kv.value, e.revision) for e in kv.watch_prefix(prefix, start)]


# ------------------------------------------------------------------------- revisions
def test_one_global_revision_and_per_key_revisions(kv):
    assert kv.revision() == 0 and kv.get("a") is None
    assert kv.put("a", "1") == 1
    assert kv.put("b", "x") == 2
    assert kv.put("a", "2") == 3
    a = kv.get("a")
    assert (a.value, a.create_revision, a.mod_revision, a.version) == ("2", 1, 3, 2)
    assert kv.delete("a") == 4
    assert kv.get("a") is None
    assert kv.delete("a") == 4                       # deleting nothing takes no revision
    kv.put("a", "3")
    a = kv.get("a")
    assert (a.create_revision, a.mod_revision, a.version) == (5, 5, 1)   # a new life starts over
    kvs, count, rev = kv.range("", "\U0010ffff")
    assert [k.key for k in kvs] == ["a", "b"] and count == 2 and rev == 5


def test_range_by_prefix_sorted_with_limit_and_count(kv):
    kv.txn((), [Put(f"p/{i:02d}", str(i)) for i in (3, 1, 2)] + [Put("p0", "outside"), Put("o", "outside")])
    kvs, rev = kv.get_prefix("p/")
    assert [k.key for k in kvs] == ["p/01", "p/02", "p/03"] and rev == 1
    kvs, count, _ = kv.range("p/", "p0", limit=2)
    assert [k.key for k in kvs] == ["p/01", "p/02"] and count == 3
    kvs, count, _ = kv.range("p/", "p0", count_only=True)
    assert kvs == [] and count == 3


# ------------------------------------------------------------------------- CAS
def test_cas_conflict_one_writer_wins_the_other_retries(kv):
    kv.put("counter", "0")
    seen_by_1 = kv.get("counter")
    seen_by_2 = kv.get("counter")
    r1 = kv.txn([Compare("counter", "mod", "==", seen_by_1.mod_revision)], [Put("counter", "1")])
    assert r1.succeeded
    r2 = kv.txn([Compare("counter", "mod", "==", seen_by_2.mod_revision)], [Put("counter", "1")])
    assert not r2.succeeded and r2.revision == r1.revision      # nothing written, nothing lost
    assert kv.get("counter").value == "1"
    again = kv.get("counter")                                   # writer 2 re-reads and retries
    r3 = kv.txn([Compare("counter", "mod", "==", again.mod_revision)], [Put("counter", str(int(again.value) + 1))])
    assert r3.succeeded and kv.get("counter").value == "2"


def test_compare_targets_and_failure_branch(kv):
    kv.put("k", "v")
    assert kv.txn([Compare("missing", "create", "==", 0)], [Put("missing", "now")]).succeeded
    assert not kv.txn([Compare("missing", "create", "==", 0)], [Put("missing", "again")]).succeeded
    assert kv.txn([Compare("k", "value", "==", "v"), Compare("k", "version", "==", 1)], [Put("k", "w")]).succeeded
    r = kv.txn([Compare("k", "value", "==", "v")], [Put("k", "never")], [Put("fallback", "yes")])
    assert not r.succeeded and kv.get("k").value == "w" and kv.get("fallback").value == "yes"
    assert kv.txn([Compare("nothing", "value", "!=", "x")], []).succeeded       # absent != anything
    # a range compare: nothing in [r/, r0) was put after the revision read
    kv.put("r/1", "a")
    _, rev = kv.get_prefix("r/")
    assert kv.txn([Compare("r/", "mod", "<", rev + 1, range_end="r0")], [Put("r/2", "b")]).succeeded
    assert not kv.txn([Compare("r/", "mod", "<", rev + 1, range_end="r0")], [Put("r/3", "c")]).succeeded
    with pytest.raises(StoreError, match="unknown compare target"):
        Compare("k", "size", "==", 1)


def test_domain_transactions_are_cas_and_store_run_retries(kv):
    # Two domain transactions read the same state without exclusive() (as on a shared backend):
    # the second commit loses and raises TxnConflict; Store.run re-runs it on fresh reads.
    store = Store(kv, host="h1")
    with store.transaction() as tx:
        tx.set_meta("counter", "0")
    tx1, tx2 = Transaction(store.records), Transaction(store.records)
    for tx in (tx1, tx2):
        tx.set_meta("counter", str(int(tx.get_meta("counter")) + 1))
    tx1.commit()
    with pytest.raises(TxnConflict):
        tx2.commit()
    store.run(lambda tx: tx.set_meta("counter", str(int(tx.get_meta("counter")) + 1)))
    with store.transaction() as tx:
        assert tx.get_meta("counter") == "2"


# ------------------------------------------------------------------------- atomicity
def test_txn_is_all_or_nothing_at_one_revision(kv):
    r = kv.txn((), [Put("t/a", "1"), Put("t/b", "2"), Put("t/c", "3"), Delete("t/c")])
    kvs, _ = kv.get_prefix("t/")
    assert [k.key for k in kvs] == ["t/a", "t/b"] and {k.mod_revision for k in kvs} == {r.revision}
    before = kv.revision()
    with pytest.raises(LeaseNotFound):               # one bad op refuses the whole txn
        kv.txn((), [Put("t/d", "4"), Put("t/e", "5", lease=12345)])
    assert kv.revision() == before and kv.get("t/d") is None and events(kv, "t/", before + 1) == []
    kv.txn((), [Delete("t/", "t0")])
    assert kv.get_prefix("t/")[0] == []


# ------------------------------------------------------------------------- watch
def test_watch_returns_puts_and_deletes_in_revision_order_with_a_prefix_filter(kv):
    kv.put("w/a", "1")                                   # 1
    kv.put("other/x", "no")                              # 2
    kv.txn((), [Put("w/b", "2"), Put("w/a", "3")])       # 3: in op order
    kv.delete("w/b")                                     # 4
    kv.delete("w/", "w0")                                # 5
    assert events(kv, "w/", 1) == [("put", "w/a", "1", 1), ("put", "w/b", "2", 3), ("put", "w/a", "3", 3),
                                   ("delete", "w/b", "", 4), ("delete", "w/a", "", 5)]
    assert [e.kv.version for e in kv.watch_prefix("w/", 1)] == [1, 1, 2, 0, 0]
    assert [(e.type, e.revision) for e in kv.watch("w/a", 0)] == [("put", 1), ("put", 3), ("delete", 5)]
    assert events(kv, "other/", 0) == [("put", "other/x", "no", 2)]


def test_watch_resumes_after_a_gap(kv):
    kv.put("g/1", "a")
    seen = kv.watch_prefix("g/", 1)
    last = seen[-1].revision
    kv.put("g/2", "b")                     # the watcher was away for these
    kv.delete("g/1")
    kv.put("h/1", "not mine")
    assert events(kv, "g/", last + 1) == [("put", "g/2", "b", 2), ("delete", "g/1", "", 3)]
    assert events(kv, "g/", kv.revision() + 1) == []


def test_watch_after_compaction_raises_compacted_then_resumes_from_a_fresh_read(kv):
    for i in range(6):
        kv.put(f"c/{i % 2}", str(i))                  # revisions 1..6
    kv.compact(4)
    assert kv.compact_revision() == 4
    with pytest.raises(Compacted) as ei:
        kv.watch_prefix("c/", 2)
    assert (ei.value.compact_revision, ei.value.current_revision) == (4, 6)
    assert [e.revision for e in kv.watch_prefix("c/", 4)] == [4, 5, 6]      # from the compact revision on: kept
    kvs, rev = kv.get_prefix("c/")                                             # the re-read ...
    assert {k.key: k.value for k in kvs} == {"c/0": "4", "c/1": "5"}
    kv.put("c/2", "new")
    assert events(kv, "c/", rev + 1) == [("put", "c/2", "new", 7)]           # ... and the resumption
    kv.compact(2)                                                              # older than done: no-op
    assert kv.compact_revision() == 4
    with pytest.raises(StoreError, match="cannot compact"):
        kv.compact(99)


# ------------------------------------------------------------------------- scopes
def test_scopes_are_isolated(kv):
    a, b, cluster = Scoped(kv, host_scope("a")), Scoped(kv, host_scope("b")), Scoped(kv, CLUSTER_SCOPE)
    for view, value in ((a, "A"), (b, "B"), (cluster, "C")):
        view.txn((), [Put("networks/n1", value), Put("meta/x", value)])
    assert a.get("networks/n1").value == "A" and b.get("networks/n1").value == "B"
    assert cluster.get("networks/n1").value == "C"
    assert [k.key for k in a.range("", "\U0010ffff")[0]] == ["meta/x", "networks/n1"]
    a.delete("", "\U0010ffff")                     # host a wipes its whole scope ...
    assert a.get_prefix("")[0] == []
    assert b.get("meta/x").value == "B" and cluster.get("meta/x").value == "C"   # ... and only it
    assert [(e.type, e.kv.key) for e in a.watch_prefix("", 0)] == [
        ("put", "networks/n1"), ("put", "meta/x"), ("delete", "meta/x"), ("delete", "networks/n1")]
    assert [e.kv.value for e in b.watch_prefix("", 0)] == ["B", "B"]
    assert sorted(k.key for k in kv.get_prefix("")[0]) == [
        "cluster/meta/x", "cluster/networks/n1", "hosts/b/meta/x", "hosts/b/networks/n1"]
    with pytest.raises(StoreError, match="invalid host name"):
        host_scope("a/b")


def test_domain_stores_of_two_hosts_share_a_backend_without_seeing_each_other(kv):
    s1, s2 = Store(kv, host="h1"), Store(kv, host="h2")
    with s1.transaction() as tx:
        tx.set_meta("who", "h1")
        tx.lease("net", "10.0.0.2", "ep1")
    with s2.transaction() as tx:
        assert tx.get_meta("who") is None and tx.leases() == []
        tx.lease("net", "10.0.0.2", "ep2")            # no conflict: another host's pool
    with s1.transaction() as tx:
        assert tx.leases() == [("net", "10.0.0.2", "ep1")]


# ------------------------------------------------------------------------- leases
def test_lease_expires_after_its_ttl_and_keepalive_extends_it(kv, clock):
    lease = kv.grant(10)
    kv.txn((), [Put("l/a", "1", lease=lease), Put("l/b", "2", lease=lease), Put("l/keep", "3")])
    start = kv.revision()
    assert kv.time_to_live(lease) == pytest.approx(10)
    clock.advance(6)
    assert kv.keepalive(lease) == 10
    clock.advance(8)                                  # 14 s after the grant, 8 after the keepalive
    assert kv.get("l/a") is not None
    clock.advance(2.5)
    assert kv.get("l/a") is None and kv.get("l/b") is None and kv.get("l/keep").value == "3"
    expiry = events(kv, "l/", start + 1)
    assert [(t, k) for t, k, _, _ in expiry] == [("delete", "l/a"), ("delete", "l/b")]
    assert len({rev for *_, rev in expiry}) == 1 and expiry[0][3] == start + 1   # one revision
    for call in (kv.keepalive, kv.time_to_live, kv.revoke):
        with pytest.raises(LeaseNotFound):
            call(lease)
    with pytest.raises(LeaseNotFound):
        kv.put("l/c", "x", lease=lease)


def test_revoke_deletes_the_keys_and_watchers_see_it(kv):
    lease = kv.grant(60)
    other = kv.grant(60)
    kv.put("r/a", "1", lease=lease)
    kv.put("r/b", "2", lease=other)
    rev = kv.revision()
    kv.revoke(lease)
    assert kv.get("r/a") is None and kv.get("r/b").value == "2"
    assert events(kv, "r/", rev + 1) == [("delete", "r/a", "", rev + 1)]
    with pytest.raises(LeaseNotFound):
        kv.revoke(lease)
    with pytest.raises(StoreError, match="TTL must be positive"):
        kv.grant(0)


@pytest.mark.parametrize("backend", PERSISTENT, ids=lambda b: b.name)
def test_state_survives_reopen(backend, tmp_path, clock):
    kv = backend.make(tmp_path, clock)
    lease = kv.grant(30)
    kv.put("p/a", "1", lease=lease)
    kv.put("p/b", "2")
    kv.put("p/b", "3")
    kv.compact(2)
    kv.close()
    kv = backend.make(tmp_path, clock)
    try:
        assert kv.revision() == 3 and kv.compact_revision() == 2
        assert kv.get("p/b").version == 2 and kv.get("p/a").lease == lease
        assert [e.revision for e in kv.watch_prefix("p/", 2)] == [2, 3]
        clock.advance(31)
        assert kv.get("p/a") is None
        assert kv.grant(5) != lease                   # lease ids are never reused
    finally:
        kv.close()


# ------------------------------------------------------------------------- crash consistency
_CHILD = textwrap.dedent("""
    import sys
    {open}
    from dockline.control.store import Put, Store
    store = Store(kv, host="crash")
    i = int(kv.get("hosts/crash/next").value) if kv.get("hosts/crash/next") else 0
    print("started", flush=True)
    while True:
        # a multi-key txn: 20 keys of group i, all with the value i, and the counter
        kv.txn((), [Put(f"groups/{{i}}/{{j:02d}}", str(i)) for j in range(20)] + [Put("hosts/crash/next", str(i + 1))])
        # a domain transaction: the ports of the endpoints before removed, a range of 100 ports
        # published for endpoint i
        with store.transaction() as tx:
            for ep in {{p.endpoint_id for p in tx.ports()}}:
                tx.delete_ports(ep)
            tx.put_ports((f"ep{{i}}", "tcp", "0.0.0.0", 1000 + (i % 40) * 100 + k, 80) for k in range(100))
            tx.set_meta("last", str(i))
        i += 1
""")


def _check_consistent(kv, last_revision):
    rev = kv.revision()
    assert rev >= last_revision, "the revision went backwards"
    kvs, _ = kv.get_prefix("groups/")
    groups = {}
    for k in kvs:
        groups.setdefault(k.key.split("/")[1], []).append(k)
    for g, keys in groups.items():
        assert len(keys) == 20, f"group {g} is half written: {len(keys)} of 20 keys"
        assert {k.value for k in keys} == {g} and len({k.mod_revision for k in keys}) == 1
        assert all(k.mod_revision <= rev for k in keys)
    revs = [e.revision for e in kv.watch_prefix("", kv.compact_revision())]
    assert revs == sorted(revs) and (not revs or revs[-1] <= rev)
    # the domain indexes agree with the records
    store = Store(kv, host="crash")
    with store.transaction() as tx:
        ports = tx.ports()
        by_index = sorted((p.endpoint_id, p.host_port) for e in {p.endpoint_id for p in ports} for p in tx.ports(e))
        assert by_index == sorted((p.endpoint_id, p.host_port) for p in ports)
        assert tx.port_count() == len(ports)
        index_keys, _ = store.records.get_prefix("endpoint-ports/")
        assert {k.key.split("/")[1] for k in index_keys} == {p.endpoint_id for p in ports}
        assert len(ports) in (0, 100), "a domain transaction was half applied"
        last = tx.get_meta("last")
        assert last is None or {p.endpoint_id for p in ports} == {f"ep{last}"}
    return rev


@pytest.mark.parametrize("backend", PERSISTENT, ids=lambda b: b.name)
def test_sigkill_at_random_moments_leaves_every_txn_all_or_nothing(backend, tmp_path):
    rng = random.Random(20261203)
    os.makedirs(tmp_path / "kv", exist_ok=True)
    script = _CHILD.format(open=backend.child_open)
    last_revision = 0
    for round_ in range(5):
        child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        try:
            sel = selectors.DefaultSelector()
            sel.register(child.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=60), "child did not start in time"
            assert child.stdout.readline().strip() == "started"
            try:
                child.wait(timeout=rng.uniform(0.05, 0.6))
            except subprocess.TimeoutExpired:
                pass
            assert child.poll() is None, "the child died on its own"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=30)
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        kv = backend.make(tmp_path, None)
        try:
            new_revision = _check_consistent(kv, last_revision)
        finally:
            kv.close()
        last_revision = new_revision
    assert last_revision > 0, "the child never committed anything"
    if backend.name == "sqlite":
        check = sqlite3.connect(str(tmp_path / "kv" / "store.db"))
        try:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            check.close()

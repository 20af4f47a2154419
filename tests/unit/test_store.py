"""Unit tests for the domain store in dockline.control.store (SQLiteStore, and MemoryStore where no
file is involved): atomicity, conflicts, cascades, lookups, persistence, migration of the old
table layout and crash consistency."""

import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from dockline.control.errors import Conflict
from dockline.control.model import Attachment, Endpoint, Network, PortMapping
from dockline.control.store import SCHEMA_VERSION, MemoryStore, SQLiteStore

NET_ID = "a1b2c3d4e5f6" + "0" * 52
NET2_ID = "a1b2ffffffff" + "1" * 52
EP_ID = "e0e0e0e0e0e0" + "2" * 52
EP2_ID = "e1e1e1e1e1e1" + "3" * 52


def net(id=NET_ID, name="web", **kw):
    return Network(id=id, name=name, driver="bridge", subnet="10.1.0.0/24", gateway="10.1.0.1",
                   bridge="dl-" + id[:12], created=1.5, **kw)


def ep(id=EP_ID, name="a"):
    return Endpoint(id=id, name=name, mode="bridge", netns_path=f"/run/netns/dl-local-{name}",
                    netns_name=f"dl-local-{name}", created=2.5)


def att(ep_id=EP_ID, net_id=NET_ID, ip="10.1.0.2", index=0):
    return Attachment(endpoint_id=ep_id, network_id=net_id, ip=ip, mac="02:42:0a:01:00:02", ifname=f"eth{index}",
                      host_ifname="dlv" + ep_id[:4] + net_id[:4], aliases=["db"], index=index)


def port(ep_id=EP_ID, proto="tcp", host_ip="0.0.0.0", host_port=8080, ctr=80):
    return PortMapping(endpoint_id=ep_id, proto=proto, host_ip=host_ip, host_port=host_port, container_port=ctr)


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "state" / "store.db")


@pytest.fixture(params=["sqlite", "memory"])
def store(request, db_path):
    s = SQLiteStore(db_path) if request.param == "sqlite" else MemoryStore()
    yield s
    s.close()


def populate(store):
    """One network, two endpoints on it, a gateway lease, leases, attachments and ports."""
    with store.transaction() as tx:
        tx.put_network(net())
        tx.lease(NET_ID, "10.1.0.1", "gateway")
        for e, ip, hp in ((ep(), "10.1.0.2", 8080), (ep(EP2_ID, "b"), "10.1.0.3", 9090)):
            tx.put_endpoint(e)
            tx.lease(NET_ID, ip, e.id)
            tx.put_attachment(att(e.id, NET_ID, ip))
            tx.put_port(port(e.id, host_port=hp))
            tx.put_port(port(e.id, proto="udp", host_port=hp))


def snapshot(store):
    with store.transaction() as tx:
        return {"networks": tx.networks(), "endpoints": tx.endpoints(), "attachments": tx.attachments(),
                "leases": sorted(tx.leases()), "ports": tx.ports()}


# ------------------------------------------------------------------------- atomicity
@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_raising_transaction_leaves_nothing_behind(store, exc):
    with pytest.raises(type(exc)):
        with store.transaction() as tx:
            tx.put_network(net())
            tx.put_endpoint(ep())
            tx.lease(NET_ID, "10.1.0.2", EP_ID)
            tx.put_attachment(att())
            tx.put_port(port())
            tx.set_meta("last_ip:x", "10.1.0.2")
            assert len(tx.networks()) == 1          # visible inside the transaction ...
            raise exc
    with store.transaction() as tx:                 # ... and gone after the rollback
        assert tx.networks() == [] and tx.endpoints() == [] and tx.attachments() == []
        assert tx.leases() == [] and tx.ports() == []
        assert tx.get_meta("last_ip:x") is None


def test_conflict_aborts_the_whole_transaction(store):
    with store.transaction() as tx:
        tx.put_network(net())
    with pytest.raises(Conflict):
        with store.transaction() as tx:
            tx.put_endpoint(ep())
            tx.put_network(net(id=NET2_ID, name="web"))
    with store.transaction() as tx:
        assert tx.endpoints() == []
        assert [n.id for n in tx.networks()] == [NET_ID]


def test_store_is_usable_after_a_rollback(store):
    with pytest.raises(ValueError):
        with store.transaction() as tx:
            tx.put_network(net())
            raise ValueError
    with store.transaction() as tx:
        tx.put_network(net())
    with store.transaction() as tx:
        assert tx.networks() == [net()]


def test_transactions_are_serialised_across_threads(store):
    with store.transaction() as tx:
        tx.set_meta("counter", "0")

    def bump():
        for _ in range(50):
            with store.transaction() as tx:
                tx.set_meta("counter", str(int(tx.get_meta("counter")) + 1))

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with store.transaction() as tx:
        assert tx.get_meta("counter") == "400"


# ------------------------------------------------------------------------- conflicts
def test_duplicate_network_name_conflicts(store):
    with store.transaction() as tx:
        tx.put_network(net())
    with pytest.raises(Conflict) as ei:
        with store.transaction() as tx:
            tx.put_network(net(id=NET2_ID, name="web"))
    assert str(ei.value) == "network with name web already exists"


def test_put_network_with_same_id_updates_in_place(store):
    with store.transaction() as tx:
        tx.put_network(net())
        tx.put_network(net(name="web2", internal=True))
    with store.transaction() as tx:
        nets = tx.networks()
    assert len(nets) == 1 and nets[0].name == "web2" and nets[0].internal is True
    with store.transaction() as tx:
        assert tx.network("web") is None and tx.network("web2").id == NET_ID


def test_duplicate_endpoint_name_conflicts(store):
    with store.transaction() as tx:
        tx.put_endpoint(ep())
    with pytest.raises(Conflict, match=r"^the endpoint name a is already in use$"):
        with store.transaction() as tx:
            tx.put_endpoint(ep(EP2_ID, "a"))


def test_lease_conflict_and_same_owner_is_idempotent(store):
    with store.transaction() as tx:
        tx.put_network(net())
        tx.lease(NET_ID, "10.1.0.2", EP_ID)
        tx.lease(NET_ID, "10.1.0.2", EP_ID)            # same owner again: no error, no second row
    with pytest.raises(Conflict) as ei:
        with store.transaction() as tx:
            tx.lease(NET_ID, "10.1.0.2", EP2_ID)
    assert "address 10.1.0.2 is already in use" in str(ei.value)
    with store.transaction() as tx:
        assert tx.leases() == [(NET_ID, "10.1.0.2", EP_ID)]
        tx.lease(NET2_ID, "10.1.0.2", EP2_ID)          # same address on another network is fine
        assert tx.leases(NET2_ID) == [(NET2_ID, "10.1.0.2", EP2_ID)]


def test_release_frees_the_address(store):
    with store.transaction() as tx:
        tx.lease(NET_ID, "10.1.0.2", EP_ID)
        tx.release(NET_ID, "10.1.0.2")
        tx.lease(NET_ID, "10.1.0.2", EP2_ID)
        assert tx.leases(NET_ID) == [(NET_ID, "10.1.0.2", EP2_ID)]


def test_put_port_duplicate_conflicts(store):
    with store.transaction() as tx:
        tx.put_endpoint(ep())
        tx.put_endpoint(ep(EP2_ID, "b"))
        tx.put_port(port())
        tx.put_port(port(EP2_ID, proto="udp"))           # other protocol: another key
        tx.put_port(port(EP2_ID, host_ip="127.0.0.1"))   # other host IP: another key (engine checks overlap)
    with pytest.raises(Conflict) as ei:
        with store.transaction() as tx:
            tx.put_port(port(EP2_ID, ctr=81))
    assert str(ei.value) == "bind for 0.0.0.0:8080/tcp failed: port is already allocated"
    with store.transaction() as tx:
        assert tx.ports() == [port(), port(EP2_ID, proto="udp"), port(EP2_ID, host_ip="127.0.0.1")]
        assert tx.ports(EP_ID) == [port()]


def test_put_ports_in_bulk_and_the_reads_that_avoid_reading_them_all(store):
    with store.transaction() as tx:
        tx.put_endpoint(ep())
        tx.put_endpoint(ep(EP2_ID, "b"))
        tx.put_ports((EP_ID, "tcp", "0.0.0.0", 30000 + i, 80 + i) for i in range(1000))   # an iterator
        tx.put_port(port(EP2_ID, proto="udp", host_port=30500))
        tx.put_port(port(EP2_ID, host_ip="127.0.0.1", host_port=40000))
    with store.transaction() as tx:
        assert tx.port_count() == 1002
        assert tx.ports(EP_ID)[:2] == [port(host_port=30000, ctr=80), port(host_port=30001, ctr=81)]
        assert len(tx.ports(EP_ID)) == 1000 and tx.ports(EP2_ID) == [port(EP2_ID, proto="udp", host_port=30500),
                                                                       port(EP2_ID, host_ip="127.0.0.1", host_port=40000)]
        assert sorted(tx.host_ports_in("tcp", 30998, 40000)) == [("0.0.0.0", 30998), ("0.0.0.0", 30999),
                                                                  ("127.0.0.1", 40000)]
        assert tx.host_ports_in("udp", 30000, 30999) == [("0.0.0.0", 30500)]
        assert tx.host_ports_in("udp", 1, 29999) == []
    # one duplicate key refuses the whole batch, and the transaction with it
    with pytest.raises(Conflict):
        with store.transaction() as tx:
            tx.put_ports([(EP2_ID, "tcp", "0.0.0.0", 50000, 1), (EP2_ID, "tcp", "0.0.0.0", 30001, 1)])
    with store.transaction() as tx:
        assert tx.port_count() == 1002 and tx.host_ports_in("tcp", 50000, 50000) == []


def test_port_reads_are_key_ranges_and_the_page_cache_is_capped(db_path):
    store = SQLiteStore(db_path)
    try:
        _check_port_reads_are_key_ranges(store)
    finally:
        store.close()


def _check_port_reads_are_key_ranges(store):
    # The (proto, host_port) and by-endpoint indexes of the old tables are key ranges now: a range
    # read is one walk of the kv primary key, never a scan of every key.
    plan = " ".join(r[-1] for r in store.kv.db.execute(
        "EXPLAIN QUERY PLAN SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key", ("a", "b")))
    assert "SEARCH kv USING PRIMARY KEY" in plan
    with store.transaction() as tx:
        tx.put_endpoint(ep())
        tx.put_ports((EP_ID, "tcp", "0.0.0.0", 20000 + i, 80) for i in range(2000))
    reads = []
    real_range = store.kv.range
    store.kv.range = lambda *a, **kw: reads.append(real_range(*a, **kw)) or reads[-1]
    try:
        with store.transaction() as tx:
            assert tx.host_ports_in("tcp", 21000, 21001) == [("0.0.0.0", 21000), ("0.0.0.0", 21001)]
    finally:
        del store.kv.range
    assert [len(kvs) for kvs, _, _ in reads] == [2]      # the collision check read 2 keys, not 2,000
    assert store.kv.db.execute("PRAGMA cache_size").fetchone()[0] == -512


# ------------------------------------------------------------------------- cascades
def test_delete_endpoint_removes_its_attachments_ports_and_leases(store):
    populate(store)
    with store.transaction() as tx:
        tx.delete_endpoint(EP_ID)
    s = snapshot(store)
    assert [e.id for e in s["endpoints"]] == [EP2_ID]
    assert [a.endpoint_id for a in s["attachments"]] == [EP2_ID]
    assert {p.endpoint_id for p in s["ports"]} == {EP2_ID} and len(s["ports"]) == 2
    assert s["leases"] == sorted([(NET_ID, "10.1.0.1", "gateway"), (NET_ID, "10.1.0.3", EP2_ID)])
    assert [n.id for n in s["networks"]] == [NET_ID]


def test_delete_ports_removes_only_that_endpoints_keys_in_its_span(store):
    # delete_ports sends a whole key span as one range delete when the span holds only its
    # ports; a port of another endpoint inside the span, or one put again in the same
    # transaction, must survive.
    with store.transaction() as tx:
        tx.put_endpoint(ep())
        tx.put_endpoint(ep(EP2_ID, "b"))
        tx.put_ports((EP_ID, "tcp", "0.0.0.0", 20000 + i, 80) for i in range(1000))
        tx.put_ports((EP2_ID, "tcp", "0.0.0.0", 30000 + i, 80) for i in range(1000))
        tx.put_port(port(EP2_ID, host_ip="127.0.0.1", host_port=20500))
    with store.transaction() as tx:
        tx.delete_ports(EP_ID)                                   # a foreign key inside the span
        tx.delete_ports(EP2_ID)
        tx.put_port(port(EP_ID, host_port=30010, ctr=7))         # re-put inside a deleted span
        assert tx.ports() == [port(EP_ID, host_port=30010, ctr=7)] and tx.port_count() == 1
    with store.transaction() as tx:
        assert tx.ports() == [port(EP_ID, host_port=30010, ctr=7)] and tx.port_count() == 1
        assert tx.host_ports_in("tcp", 1, 65535) == [("0.0.0.0", 30010)]
    with store.transaction() as tx:
        tx.put_ports((EP2_ID, "tcp", "0.0.0.0", 40000 + i, 80) for i in range(500))
        tx.put_port(port(EP_ID, host_ip="127.0.0.1", host_port=40100))
    with store.transaction() as tx:
        tx.delete_ports(EP2_ID)
    with store.transaction() as tx:
        assert tx.ports() == [port(EP_ID, host_port=30010, ctr=7), port(EP_ID, host_ip="127.0.0.1", host_port=40100)]


def test_delete_network_removes_its_leases(store):
    with store.transaction() as tx:
        tx.put_network(net())
        tx.put_network(net(id=NET2_ID, name="db"))
        tx.lease(NET_ID, "10.1.0.1", "gateway")
        tx.lease(NET2_ID, "10.1.0.1", "gateway")
        tx.delete_network(NET_ID)
    with store.transaction() as tx:
        assert [n.name for n in tx.networks()] == ["db"]
        assert tx.leases() == [(NET2_ID, "10.1.0.1", "gateway")]


def test_delete_attachment_and_filters(store):
    populate(store)
    with store.transaction() as tx:
        tx.put_network(net(id=NET2_ID, name="db"))
        tx.put_attachment(att(EP_ID, NET2_ID, "10.1.0.9", index=1))
        assert [(a.endpoint_id, a.network_id) for a in tx.attachments(ep_id=EP_ID)] == \
            [(EP_ID, NET_ID), (EP_ID, NET2_ID)]
        assert [a.endpoint_id for a in tx.attachments(net_id=NET_ID)] == [EP_ID, EP2_ID]
        assert tx.attachments(ep_id=EP_ID, net_id=NET2_ID) == [att(EP_ID, NET2_ID, "10.1.0.9", index=1)]
        tx.delete_attachment(EP_ID, NET_ID)
        assert [a.network_id for a in tx.attachments(ep_id=EP_ID)] == [NET2_ID]


# ------------------------------------------------------------------------- lookups
def test_network_lookup_by_name_id_and_prefix(store):
    with store.transaction() as tx:
        tx.put_network(net())                          # id a1b2c3...
        tx.put_network(net(id=NET2_ID, name="db"))     # id a1b2ff...
        assert tx.network("web").id == NET_ID
        assert tx.network(NET_ID).name == "web"
        assert tx.network("a1b2c").name == "web"       # unique prefix
        assert tx.network("a1b2f").name == "db"
        assert tx.network("a1b") is None               # ambiguous prefix
        assert tx.network("a1") is None                # too short to be a prefix
        assert tx.network("nope") is None
        assert tx.network("") is None


def test_endpoint_lookup_by_name_id_and_prefix(store):
    with store.transaction() as tx:
        tx.put_endpoint(ep())
        tx.put_endpoint(ep(EP2_ID, "b"))
        assert tx.endpoint("b").id == EP2_ID
        assert tx.endpoint(EP_ID).name == "a"
        assert tx.endpoint("e0e").name == "a"
        assert tx.endpoint("e") is None


# ------------------------------------------------------------------------- persistence
def test_records_survive_reopen(db_path):
    s = SQLiteStore(db_path)
    populate(s)
    with s.transaction() as tx:
        tx.set_meta("last_ip:" + NET_ID, "10.1.0.3")
    before = snapshot(s)
    s.close()
    s2 = SQLiteStore(db_path)
    try:
        assert snapshot(s2) == before
        assert before["networks"] == [net()]
        assert before["endpoints"] == [ep(), ep(EP2_ID, "b")]
        with s2.transaction() as tx:
            assert tx.get_meta("last_ip:" + NET_ID) == "10.1.0.3"
            assert tx.get_meta("schema_version") == str(SCHEMA_VERSION)
            assert tx.get_meta("missing", "dflt") == "dflt"
    finally:
        s2.close()


def test_creates_the_state_directory(tmp_path):
    path = tmp_path / "deep" / "er" / "store.db"
    SQLiteStore(str(path)).close()
    assert path.is_file()
    assert (tmp_path / "deep" / "er").stat().st_mode & 0o777 == 0o700


# ------------------------------------------------------------------------- migration
# The table layout of the store before the revisioned one (schema_version 1), as its code made it.
_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE networks (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, data TEXT NOT NULL);
CREATE TABLE endpoints (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, data TEXT NOT NULL);
CREATE TABLE attachments (
    endpoint_id TEXT NOT NULL REFERENCES endpoints(id),
    network_id TEXT NOT NULL REFERENCES networks(id),
    data TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, network_id));
CREATE TABLE leases (
    network_id TEXT NOT NULL, ip TEXT NOT NULL, owner TEXT NOT NULL,
    PRIMARY KEY (network_id, ip));
CREATE TABLE ports (
    proto TEXT NOT NULL, host_ip TEXT NOT NULL, host_port INTEGER NOT NULL,
    endpoint_id TEXT NOT NULL, container_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port));
CREATE INDEX ports_by_endpoint ON ports (endpoint_id);
CREATE INDEX ports_by_port ON ports (proto, host_port);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def _write_old_store(path):
    """A store file as the old code left it: networks inserted out of id order, an endpoint with a
    published range, another with two ports, leases, attachments and metadata."""
    import json
    os.makedirs(os.path.dirname(path), exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    for n in (net(id=NET2_ID, name="db"), net()):
        db.execute("INSERT INTO networks VALUES (?, ?, ?)", (n.id, n.name, json.dumps(n.to_dict(), sort_keys=True)))
    for e in (ep(EP2_ID, "b"), ep()):
        db.execute("INSERT INTO endpoints VALUES (?, ?, ?)", (e.id, e.name, json.dumps(e.to_dict(), sort_keys=True)))
    for a in (att(EP2_ID, NET_ID, "10.1.0.3"), att(), att(EP_ID, NET2_ID, "10.1.0.9", index=1)):
        db.execute("INSERT INTO attachments VALUES (?, ?, ?)", (a.endpoint_id, a.network_id,
                                                                 json.dumps(a.to_dict(), sort_keys=True)))
    db.executemany("INSERT INTO leases VALUES (?, ?, ?)", [(NET_ID, "10.1.0.1", "gateway"), (NET_ID, "10.1.0.2", EP_ID),
                                                           (NET_ID, "10.1.0.3", EP2_ID), (NET2_ID, "10.1.0.9", EP_ID)])
    db.executemany("INSERT INTO ports VALUES (?, ?, ?, ?, ?)",
                   [("udp", "0.0.0.0", 9090, EP2_ID, 53)] + [("tcp", "0.0.0.0", 30000 + i, EP_ID, 80 + i) for i in range(300)]
                   + [("tcp", "127.0.0.1", 9090, EP2_ID, 8080)])
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("last_ip:" + NET_ID, "10.1.0.3"), ("nat_rules", "*nat\nCOMMIT\n")])
    db.commit()
    db.close()


def test_a_store_of_the_old_table_layout_is_migrated_on_open_losing_nothing(db_path):
    _write_old_store(db_path)
    s = SQLiteStore(db_path)
    try:
        with s.transaction() as tx:
            assert tx.networks() == [net(id=NET2_ID, name="db"), net()]          # old rowid order kept
            assert tx.endpoints() == [ep(EP2_ID, "b"), ep()]
            assert tx.attachments() == [att(), att(EP_ID, NET2_ID, "10.1.0.9", index=1), att(EP2_ID, NET_ID, "10.1.0.3")]
            assert sorted(tx.leases()) == sorted([(NET_ID, "10.1.0.1", "gateway"), (NET_ID, "10.1.0.2", EP_ID),
                                                  (NET_ID, "10.1.0.3", EP2_ID), (NET2_ID, "10.1.0.9", EP_ID)])
            assert tx.ports() == ([port(EP2_ID, proto="udp", host_port=9090, ctr=53)]
                                  + [port(host_port=30000 + i, ctr=80 + i) for i in range(300)]
                                  + [port(EP2_ID, host_ip="127.0.0.1", host_port=9090, ctr=8080)])
            assert tx.ports(EP2_ID) == [port(EP2_ID, proto="udp", host_port=9090, ctr=53),
                                        port(EP2_ID, host_ip="127.0.0.1", host_port=9090, ctr=8080)]
            assert tx.port_count() == 302 and tx.host_ports_in("tcp", 30299, 40000) == [("0.0.0.0", 30299)]
            assert tx.get_meta("last_ip:" + NET_ID) == "10.1.0.3" and tx.get_meta("nat_rules") == "*nat\nCOMMIT\n"
            assert tx.get_meta("schema_version") == str(SCHEMA_VERSION)
            assert tx.network("db").id == NET2_ID and tx.endpoint("e0e").name == "a"
        with pytest.raises(Conflict):                     # the uniqueness rules came along
            with s.transaction() as tx:
                tx.put_endpoint(ep(EP_ID[:-1] + "9", "b"))
        with pytest.raises(Conflict):
            with s.transaction() as tx:
                tx.put_port(port(EP2_ID, host_port=30005))
        with s.transaction() as tx:
            tx.delete_endpoint(EP_ID)
            assert tx.port_count() == 2 and tx.attachments(ep_id=EP_ID) == []
        tables = {r[0] for r in s.kv.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not tables & {"networks", "endpoints", "attachments", "leases", "ports", "meta"}
    finally:
        s.close()
    s = SQLiteStore(db_path)                              # a second open migrates nothing again
    try:
        with s.transaction() as tx:
            assert [e.name for e in tx.endpoints()] == ["b"] and tx.port_count() == 2
    finally:
        s.close()


# ------------------------------------------------------------------------- crash consistency
_CHILD = textwrap.dedent("""
    import sys, time
    from dockline.control.model import Endpoint, Network, PortMapping
    from dockline.control.store import SQLiteStore

    s = SQLiteStore(sys.argv[1])
    with s.transaction() as tx:
        tx.put_network(Network(id="c0mm1tted" + "0" * 55, name="committed", driver="bridge"))
    # The domain transaction buffers its writes and applies them at the end of its block; holding
    # the backend's SQL transaction open around it stops the kill between the apply and COMMIT.
    with s.kv.exclusive():
        with s.transaction() as tx:
            tx.put_network(Network(id="d00med" + "0" * 58, name="doomed", driver="bridge"))
            tx.lease("d00med" + "0" * 58, "10.9.0.2", "ep0")
            tx.set_meta("doomed", "yes")
            # Enough data that SQLite's page cache spills uncommitted pages into the WAL file.
            for i in range(3000):
                tx.put_endpoint(Endpoint(id=f"ep{i}", name=f"ep{i}", mode="bridge", netns_path="x" * 1000))
                tx.put_port(PortMapping(f"ep{i}", "tcp", "0.0.0.0", 10000 + i, 80))
        print("written", flush=True)
        time.sleep(120)
""")


def test_sigkill_before_commit_leaves_no_rows(db_path):
    os.makedirs(os.path.dirname(db_path))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, db_path], stdout=subprocess.PIPE, text=True)
    try:
        sel = selectors.DefaultSelector()
        sel.register(child.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=60), "child did not report its writes in time"
        assert child.stdout.readline().strip() == "written"
        # The uncommitted transaction really reached the disk (the WAL, in WAL mode), so the test
        # exercises recovery rather than a page cache that dies with the process.
        on_disk = sum(os.path.getsize(db_path + sfx) for sfx in ("", "-wal", "-journal")
                      if os.path.exists(db_path + sfx))
        assert on_disk > 1_000_000
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    s = SQLiteStore(db_path)
    try:
        with s.transaction() as tx:
            assert [n.name for n in tx.networks()] == ["committed"]
            assert tx.endpoints() == [] and tx.ports() == [] and tx.leases() == []
            assert tx.get_meta("doomed") is None
        with s.transaction() as tx:                    # usable: the doomed names are free again
            tx.put_network(Network(id="n3w" + "0" * 61, name="doomed", driver="bridge"))
            tx.put_endpoint(Endpoint(id="ep0", name="ep0", mode="bridge", netns_path=""))
        with s.transaction() as tx:
            assert [n.name for n in tx.networks()] == ["committed", "doomed"]
            assert [e.name for e in tx.endpoints()] == ["ep0"]
    finally:
        s.close()
    check = sqlite3.connect(db_path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        check.close()

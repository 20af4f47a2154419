"""The watch-driven record cache the services snapshot from agrees with a fresh read of the store
after every change, and reloads when the event log was compacted past its last read."""

import random

import pytest

from dockline.control.model import Attachment, Endpoint, Network
from dockline.control.store import MemoryStore, SQLiteStore
from dockline.control.store.records import RecordCache


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SQLiteStore(str(tmp_path / "s.db"))
    yield s
    s.close()


def fresh(store):
    with store.transaction() as tx:
        return tx.networks(), tx.endpoints(), tx.attachments(), tx.get_meta("nat_rules", "") or ""


def test_cache_follows_every_change(store):
    rnd = random.Random(3)
    cache = RecordCache(store)
    nets, eps = [], []
    for step in range(300):
        with store.transaction() as tx:
            r = rnd.random()
            if r < 0.15 or not nets:
                n = Network(id=f"n{step}", name=f"net{step}", driver="bridge", subnet=f"10.{step % 250}.0.0/24")
                tx.put_network(n)
                nets.append(n)
            elif r < 0.45 or not eps:
                e = Endpoint(id=f"e{step}", name=f"ep{step}", mode="bridge", netns_path="")
                tx.put_endpoint(e)
                eps.append(e)
                tx.put_attachment(Attachment(e.id, rnd.choice(nets).id, f"10.0.0.{step % 250}", "", "eth0", "v"))
            elif r < 0.6:
                e = rnd.choice(eps)
                e.name = f"renamed{step}"
                tx.put_endpoint(e)
            elif r < 0.8:
                tx.delete_endpoint(eps.pop(rnd.randrange(len(eps))).id)
            elif r < 0.9:
                tx.set_meta("nat_rules", f"*nat\n# {step}\nCOMMIT\n")
            else:
                tx.set_meta("last_ip:x", str(step))      # not watched, changes the revision
        if step % 7 == 0 or step > 280:
            assert cache.read() == fresh(store), step


def test_cache_reloads_after_compaction(store, monkeypatch):
    cache = RecordCache(store)
    with store.transaction() as tx:
        tx.put_network(Network(id="a", name="a", driver="bridge"))
    assert [n.id for n in cache.read()[0]] == ["a"]
    for i in "bc":
        with store.transaction() as tx:
            tx.put_network(Network(id=i, name=i, driver="bridge"))
    store.kv.compact(store.kv.revision())       # the event of "b" is gone: the cache must reload
    reloads = []
    real = cache._reload
    monkeypatch.setattr(cache, "_reload", lambda: (reloads.append(1), real()))
    assert [n.id for n in cache.read()[0]] == ["a", "b", "c"]
    assert reloads == [1]


def test_cache_index_matches_the_index_built_from_the_lists(store):
    """The index the cache hands the snapshot answers like the one DesiredState builds itself."""
    from dockline.control.datapath.base import DesiredState
    rnd = random.Random(5)
    cache = RecordCache(store)
    with store.transaction() as tx:
        for n in ("a", "b"):
            tx.put_network(Network(id=n, name=n, driver="bridge"))
    eps = []
    for step in range(200):
        with store.transaction() as tx:
            r = rnd.random()
            if r < 0.4 or not eps:
                e = Endpoint(id=f"e{step}", name=f"ep{step}", mode="bridge", netns_path="")
                if eps and rnd.random() < 0.3:
                    e.mode, e.shares = "container", rnd.choice(eps).id
                tx.put_endpoint(e)
                eps.append(e)
                for i, n in enumerate(rnd.sample(["a", "b"], rnd.randint(0, 2))):
                    tx.put_attachment(Attachment(e.id, n, f"10.0.{i}.{step}", "", f"eth{i}", "v", index=i))
            elif r < 0.6:
                e = rnd.choice(eps)
                e.name = f"renamed{step}"
                tx.put_endpoint(e)
            elif r < 0.8:
                tx.delete_attachment(rnd.choice(eps).id, rnd.choice("ab"))
            else:
                tx.delete_endpoint(eps.pop(rnd.randrange(len(eps))).id)
        nets, eps_now, atts, nat, index = cache.read_indexed()
        built = DesiredState(nets, eps_now, atts)
        adopted = DesiredState(nets, eps_now, atts)
        adopted.adopt_index(index)
        for e in eps_now:
            assert adopted.endpoint(e.id) == built.endpoint(e.id)
            assert adopted.attachments_of(e.id) == built.attachments_of(e.id), step
            assert adopted.sharers_of(e.id) == built.sharers_of(e.id), step
        for n in nets:
            assert adopted.network(n.id) == built.network(n.id)

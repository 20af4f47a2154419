"""Control-plane microbenchmarks (pytest-benchmark): pure logic first, then real agent calls.

Run: .venv/bin/python -m pytest bench/micro --benchmark-only   (CI runs them once with
--benchmark-disable, as tests that must keep working.)
"""

import itertools

from dockline.control import ipam
from dockline.control.datapath import iptables_rules
from dockline.control.model import Network, PortMapping, parse_port_spec
from dockline.control.store import SQLiteStore

_counter = itertools.count()


def test_ipam_allocate_in_a_busy_16(benchmark):
    pool = ipam.Pool("10.20.0.0/16", "10.20.0.1")
    leased = {f"10.20.{i // 250}.{i % 250 + 2}" for i in range(5000)}
    ip = benchmark(pool.allocate, leased, "bench")
    assert ip not in leased


def test_store_transaction_lease(benchmark, tmp_path):
    store = SQLiteStore(str(tmp_path / "s.db"))
    with store.transaction() as tx:
        tx.put_network(Network(id="n" * 64, name="n", driver="bridge", subnet="10.0.0.0/8", gateway="10.0.0.1"))

    def one():
        i = next(_counter)
        with store.transaction() as tx:
            tx.lease("n" * 64, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "ep")

    benchmark(one)
    store.close()


_EP = "e" * 64


def _store_with_endpoint(tmp_path):
    from dockline.control.model import Endpoint
    store = SQLiteStore(str(tmp_path / f"s{next(_counter)}.db"))
    with store.transaction() as tx:
        tx.put_endpoint(Endpoint(id=_EP, name="e", mode="bridge", netns_path=""))
    return store


def test_store_put_and_delete_10k_ports(benchmark, tmp_path):
    store = _store_with_endpoint(tmp_path)

    def one():
        with store.transaction() as tx:
            assert tx.host_ports_in("tcp", 20000, 29999) == []
            tx.put_ports((_EP, "tcp", "0.0.0.0", 20000 + i, 80) for i in range(10000))
        with store.transaction() as tx:
            tx.delete_ports(_EP)

    benchmark.pedantic(one, rounds=5, iterations=1)
    store.close()


def test_store_reads_next_to_10k_ports(benchmark, tmp_path):
    store = _store_with_endpoint(tmp_path)
    with store.transaction() as tx:
        tx.put_ports((_EP, "tcp", "0.0.0.0", 20000 + i, 80) for i in range(10000))

    def one():
        with store.transaction() as tx:
            assert tx.host_ports_in("tcp", 30000, 30000) == [] and tx.port_count() == 10000
            assert len(tx.ports(_EP)) == 10000

    benchmark(one)
    store.close()


def test_parse_10k_port_range(benchmark):
    out = benchmark(parse_port_spec, "20000-29999:30000-39999/udp")
    assert len(out) == 10000


def test_render_rules_for_10k_ports(benchmark):
    net = Network(id="a" * 64, name="n", driver="bridge", subnet="10.1.0.0/16", gateway="10.1.0.1", bridge="dl-aaaa")
    ports = [iptables_rules.PublishedPort(PortMapping("e", "tcp", "0.0.0.0", 20000 + i, 80), "10.1.0.2", "dl-aaaa")
             for i in range(10000)]
    text = benchmark(iptables_rules.render, [net], ports)
    assert text.count("-j DNAT") == 10000


def test_network_create_and_remove(benchmark, sim):
    def one():
        name = f"mb{next(_counter)}"
        sim.call("network_create", name=name)
        sim.call("network_rm", ref=name)

    benchmark.pedantic(one, rounds=10, iterations=1)


def test_endpoint_create_and_remove(benchmark, sim):
    if not any(n["name"] == "mbnet" for n in sim.call("network_ls")):
        sim.call("network_create", name="mbnet")

    def one():
        name = f"ep{next(_counter)}"
        sim.call("endpoint_create", name=name, network="mbnet")
        sim.call("endpoint_rm", ref=name)

    benchmark.pedantic(one, rounds=10, iterations=1)


def test_endpoint_with_published_port(benchmark, sim):
    if not any(n["name"] == "mbnet" for n in sim.call("network_ls")):
        sim.call("network_create", name="mbnet")

    def one():
        i = next(_counter)
        sim.call("endpoint_create", name=f"pp{i}", network="mbnet", ports=[f"{40000 + i}:80"])
        sim.call("endpoint_rm", ref=f"pp{i}")

    benchmark.pedantic(one, rounds=10, iterations=1)

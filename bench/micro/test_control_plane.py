"""Control-plane microbenchmarks (pytest-benchmark): pure logic first, then real agent calls.

Run: .venv/bin/python -m pytest bench/micro --benchmark-only   (CI runs them once with
--benchmark-disable, as tests that must keep working.)

Every benchmark also checks that what it timed did its job (the lease is in the store, the
rules are the expected ones, the endpoint and its namespace are gone again): a benchmark of
code that silently did nothing would report a great number.
"""

import ipaddress
import itertools

from dockline.control import ipam
from dockline.control.datapath import iptables_rules
from dockline.control.model import Network, PortMapping, parse_port_spec
from dockline.control.netlink import netns
from dockline.control.sim.nstools import sh
from dockline.control.store import SQLiteStore

_counter = itertools.count()


def test_ipam_allocate_in_a_busy_16(benchmark):
    pool = ipam.Pool("10.20.0.0/16", "10.20.0.1")
    leased = {f"10.20.{i // 250}.{i % 250 + 2}" for i in range(5000)}
    ip = benchmark(pool.allocate, leased, "bench")
    assert ip not in leased and ip != "10.20.0.1"
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.20.0.0/16")


def test_store_transaction_lease(benchmark, tmp_path):
    store = SQLiteStore(str(tmp_path / "s.db"))
    with store.transaction() as tx:
        tx.put_network(Network(id="n" * 64, name="n", driver="bridge", subnet="10.0.0.0/8", gateway="10.0.0.1"))

    made = []

    def one():
        i = next(_counter)
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        with store.transaction() as tx:
            tx.lease("n" * 64, ip, "ep")
        made.append(ip)

    benchmark(one)
    store.close()
    # every committed lease is in the database (read back through a fresh connection)
    reopened = SQLiteStore(str(tmp_path / "s.db"))
    with reopened.transaction() as tx:
        stored = {ip: owner for _, ip, owner in tx.leases("n" * 64)}
    reopened.close()
    assert made and set(made) <= set(stored) and {stored[ip] for ip in made} == {"ep"}


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
    # (proto, host_ip, host_port, container_port) pairs the ranges one to one, in order
    assert [(m[0], m[2], m[3]) for m in (out[0], out[-1])] == [("udp", 20000, 30000), ("udp", 29999, 39999)]
    assert {m[3] - m[2] for m in out} == {10000}


def test_render_rules_for_10k_ports(benchmark):
    net = Network(id="a" * 64, name="n", driver="bridge", subnet="10.1.0.0/16", gateway="10.1.0.1", bridge="dl-aaaa")
    ports = [iptables_rules.PublishedPort(PortMapping("e", "tcp", "0.0.0.0", 20000 + i, 80), "10.1.0.2", "dl-aaaa")
             for i in range(10000)]
    text = benchmark(iptables_rules.render, [net], ports)
    lines = text.splitlines()
    dnat = [line for line in lines if "-j DNAT" in line]
    assert dnat == [f"-A DOCKLINE -p tcp -m tcp --dport {20000 + i} -j DNAT --to-destination 10.1.0.2:80"
                    for i in range(10000)]
    assert "-A DOCKLINE-POSTROUTING -s 10.1.0.0/16 ! -o dl-aaaa -j MASQUERADE" in lines
    assert "-A DOCKLINE -d 10.1.0.2/32 ! -i dl-aaaa -o dl-aaaa -p tcp -m tcp --dport 80 -j ACCEPT" in lines
    assert lines[0] == "*nat" and lines.count("COMMIT") == 2


def _host_links(sim) -> set[str]:
    """Interface names in the simulated host's netns."""
    out = sh(sim.host_ns, "ip", "-o", "link", "show", check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_network_create_and_remove(benchmark, sim):
    made = []

    def one():
        name = f"mb{next(_counter)}"
        made.append((name, sim.call("network_create", name=name)))
        sim.call("network_rm", ref=name)

    benchmark.pedantic(one, rounds=10, iterations=1)
    assert all(net["name"] == name and net["subnet"] and net["bridge"] for name, net in made)
    # removed again: gone from the store and its bridge gone from the host
    assert not {name for name, _ in made} & {n["name"] for n in sim.call("network_ls")}
    assert not {net["bridge"] for _, net in made} & _host_links(sim)


def test_endpoint_create_and_remove(benchmark, sim):
    if not any(n["name"] == "mbnet" for n in sim.call("network_ls")):
        sim.call("network_create", name="mbnet")

    made = []

    def one():
        name = f"ep{next(_counter)}"
        made.append((name, sim.call("endpoint_create", name=name, network="mbnet")))
        sim.call("endpoint_rm", ref=name)

    benchmark.pedantic(one, rounds=10, iterations=1)
    subnet = ipaddress.ip_network(next(n["subnet"] for n in sim.call("network_ls") if n["name"] == "mbnet"))
    for name, ep in made:
        assert ep["name"] == name and ipaddress.ip_address(ep["networks"]["mbnet"]["ip"]) in subnet
    # removed again: no endpoint, no namespace, no host-side veth, no address still leased
    assert not {name for name, _ in made} & {e["name"] for e in sim.call("ps")}
    assert not {sim.ep_ns(name) for name, _ in made} & set(netns.list_netns(f"dl-{sim.name}-"))
    assert not {ep["networks"]["mbnet"]["host_ifname"] for _, ep in made} & _host_links(sim)
    assert not sim.call("network_inspect", ref="mbnet")["endpoints"].keys() & {name for name, _ in made}


def test_endpoint_with_published_port(benchmark, sim):
    if not any(n["name"] == "mbnet" for n in sim.call("network_ls")):
        sim.call("network_create", name="mbnet")

    made = []

    def one():
        i = next(_counter)
        made.append((40000 + i, sim.call("endpoint_create", name=f"pp{i}", network="mbnet", ports=[f"{40000 + i}:80"])))
        sim.call("endpoint_rm", ref=f"pp{i}")

    benchmark.pedantic(one, rounds=10, iterations=1)
    for host_port, ep in made:
        assert [(p["proto"], p["host_ip"], p["host_port"], p["container_port"]) for p in ep["ports"]] == \
            [("tcp", "0.0.0.0", host_port, 80)]
    assert sim.call("info")["published_ports"] == 0   # every port went with its endpoint

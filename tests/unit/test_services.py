"""The services driven without root, on in-memory fakes of the datapath and the sandbox.

Three things are checked here:
  * every service call does what the agent's API promises (records, kernel objects, names);
  * a failure injected at each step of each multi-step operation leaves no partial change: the
    store, the fake kernel, the namespaces and the DNS tables are as they were before the call;
  * the DNS tables kept by delta answer exactly as tables rebuilt from scratch would.
"""

from __future__ import annotations

import copy
import random

import pytest

from dockline.control.config import HostConfig
from dockline.control.errors import Conflict, DatapathError, InvalidArgument, NotSupported
from dockline.control.services import Services
from dockline.control.store import MemoryStore

from .fakes import Faults, FakeDatapath, FakeSandbox


def build(tmp_path, nat: bool = False):
    faults = Faults()
    host = HostConfig(name="unit", dns_upstreams=["192.0.2.53"], state_root=str(tmp_path / "state"),
                      run_root=str(tmp_path / "run"))
    svc = Services(host, store=MemoryStore(), datapath=FakeDatapath(host, faults, nat=nat),
                   sandbox=FakeSandbox(faults))
    svc.system.start()
    return svc, faults


def world(svc) -> dict:
    """Everything an operation can change. IPAM's round-robin cursor (meta last_ip:*) is left
    out: it is a hint for the next allocation, not state a user sees (Docker's moves on too)."""
    with svc.store.transaction() as tx:
        store = {
            "networks": sorted((n.id, n.name, n.subnet) for n in tx.networks()),
            "endpoints": sorted((e.id, e.name, e.mode, e.shares) for e in tx.endpoints()),
            "attachments": sorted((a.endpoint_id, a.network_id, a.ip, tuple(a.aliases)) for a in tx.attachments()),
            "leases": sorted(tx.leases()),
            "ports": sorted((p.endpoint_id, p.proto, p.host_ip, p.host_port, p.container_port) for p in tx.ports()),
            "nat": tx.get_meta("nat_rules", ""),
        }
    names = {k: {n: list(v) for n, v in t.items() if v} for k, t in svc.names._names.items()}
    ptr = {k: {n: list(v) for n, v in t.items() if v} for k, t in svc.names._ptr.items()}
    return {"store": store, "kernel": svc.datapath.snapshot(), "netns": svc.ctx.sandbox.snapshot(),
            "names": {k: v for k, v in names.items() if v}, "ptr": {k: v for k, v in ptr.items() if v},
            "asks": copy.deepcopy(svc.names._asks)}


def setup_world(svc):
    svc.networks.create("front", subnet="10.20.0.0/24")
    svc.networks.create("back", subnet="10.21.0.0/24")
    svc.endpoints.create("web", network="front", aliases=["www"], ports=["8080:80", "5353:53/udp"])
    svc.endpoints.create("db", network="back")
    svc.endpoints.connect("back", "web", aliases=["api"])


# ---------------------------------------------------------------------- behaviour
def test_services_build_records_kernel_objects_and_names(tmp_path):
    svc, _ = build(tmp_path)
    setup_world(svc)
    web = svc.endpoints.inspect("web")
    assert set(web["networks"]) == {"front", "back"}
    assert web["networks"]["front"]["ip"] == "10.20.0.2" and web["networks"]["back"]["ip"] == "10.21.0.3"
    assert sorted((p["host_port"], p["proto"]) for p in web["ports"]) == [(5353, "udp"), (8080, "tcp")]
    kernel = svc.datapath.snapshot()
    assert len(kernel["links"]) == 3                      # web x2, db x1
    assert {p[2] for p in kernel["policy"][1]} == {8080, 5353}
    db = svc.endpoints.inspect("db")
    db_key, web_key = db["id"], web["id"]
    assert svc.names.lookup(db_key, "web") == ["10.21.0.3"]     # db sees web on back only
    assert svc.names.lookup(db_key, "api.") == ["10.21.0.3"]
    assert svc.names.lookup(db_key, "www") is None               # front's alias is not on back
    assert svc.names.lookup(web_key, "WWW") == ["10.20.0.2"]
    assert svc.names.reverse(db_key, "10.21.0.3") == ["web"]
    assert svc.names.can_forward(db_key)
    ns = svc.ctx.sandbox.snapshot()
    assert "nameserver 127.0.0.11" in ns["dl-unit-web"]
    assert [n["name"] for n in svc.networks.ls()] == ["bridge", "host", "none", "front", "back"]


def test_disconnect_and_rm_withdraw_names(tmp_path):
    svc, _ = build(tmp_path)
    setup_world(svc)
    db_key = svc.endpoints.inspect("db")["id"]
    svc.endpoints.disconnect("back", "web")
    assert svc.names.lookup(db_key, "web") is None
    svc.endpoints.create("side", network="container:db")
    assert svc.names.lookup(db_key, "side") == ["10.21.0.2"]    # a sharer answers with db's address
    svc.endpoints.rm("side")
    assert svc.names.lookup(db_key, "side") is None
    svc.endpoints.rm("web")
    assert svc.datapath.snapshot()["policy"][1] == ()
    assert svc.system.reset() == {"endpoints": 1, "networks": 5}


def test_nat_rules_need_a_nat_engine(tmp_path):
    svc, _ = build(tmp_path)
    with pytest.raises(NotSupported, match="needs the ebpf datapath or eBPF NAT"):
        svc.nat.import_("*nat\n-A PREROUTING -p tcp --dport 99 -j DNAT --to-destination 10.20.0.9:80\nCOMMIT\n")
    with pytest.raises(NotSupported):
        svc.nat.conntrack()


def test_nat_import_refuses_managed_chains_and_keeps_the_old_rules(tmp_path):
    svc, _ = build(tmp_path, nat=True)
    svc.nat.import_("*nat\n-A PREROUTING -p tcp --dport 99 -j DNAT --to-destination 10.20.0.9:80\nCOMMIT\n")
    before = svc.nat.save()["text"]
    assert "--dport 99" in before
    with pytest.raises(InvalidArgument, match="chain DOCKLINE is managed"):
        svc.nat.import_("*nat\n:DOCKLINE - [0:0]\n-A DOCKLINE -j RETURN\nCOMMIT\n")
    assert svc.nat.save()["text"] == before


def test_publish_and_unpublish_on_a_running_endpoint(tmp_path):
    svc, _ = build(tmp_path)
    setup_world(svc)
    got = svc.endpoints.publish("web", ["9000:90", "127.0.0.1:9001:91/udp"])
    assert got["added"] == [dict(proto="tcp", host_ip="0.0.0.0", host_port=9000, container_port=90),
                            dict(proto="udp", host_ip="127.0.0.1", host_port=9001, container_port=91)]
    have = {(p["proto"], p["host_port"], p["container_port"]) for p in svc.endpoints.port("web")}
    assert have == {("tcp", 8080, 80), ("udp", 5353, 53), ("tcp", 9000, 90), ("udp", 9001, 91)}
    assert svc.endpoints.unpublish("web", ["9000:90"]) == {"removed": 1}
    have = {(p["proto"], p["host_port"]) for p in svc.endpoints.port("web")}
    assert have == {("tcp", 8080), ("udp", 5353), ("udp", 9001)}


@pytest.mark.parametrize("op,args,error,message", [
    ("publish", ("web", ["8080:81"]), Conflict, "0.0.0.0:8080/tcp failed: port is already allocated"),
    ("publish", ("db", ["9000:80", "9000:81"]), Conflict, "0.0.0.0:9000/tcp failed: port is already allocated"),
    ("publish", ("web", []), InvalidArgument, "no port to publish"),
    ("publish", ("web", ["99999:80"]), InvalidArgument, "99999"),
    ("unpublish", ("web", ["8080:81"]), Exception, "does not publish 0.0.0.0:8080:81/tcp"),
    ("unpublish", ("web", ["80"]), InvalidArgument, "needs the host port"),
])
def test_publish_bad_input_changes_nothing(tmp_path, op, args, error, message):
    svc, _ = build(tmp_path)
    setup_world(svc)
    before = world(svc)
    with pytest.raises(error) as e:
        getattr(svc.endpoints, op)(*args)
    assert message in e.value.message
    assert world(svc) == before


# ---------------------------------------------------------------------- injected failures
def _no_prep(s):
    pass


#: operation -> (preparation, the operation); the preparation runs before the failure is armed
OPERATIONS = {
    "network create": (_no_prep, lambda s: s.networks.create("extra", subnet="10.30.0.0/24")),
    "network rm": (lambda s: s.networks.create("spare", subnet="10.31.0.0/24"), lambda s: s.networks.rm("spare")),
    "endpoint create with ports": (_no_prep, lambda s: s.endpoints.create("api", network="front", aliases=["v1"],
                                                                          ports=["9000-9002:80-82"])),
    "endpoint create container:": (_no_prep, lambda s: s.endpoints.create("sidecar", network="container:web")),
    "endpoint create adopted": (_no_prep, lambda s: s.endpoints.create("adopt", network="back",
                                                                       netns_spec="/proc/4242/ns/net")),
    "connect": (_no_prep, lambda s: s.endpoints.connect("front", "db", ip="10.20.0.77", aliases=["store"])),
    "disconnect": (_no_prep, lambda s: s.endpoints.disconnect("back", "web")),
    "publish": (_no_prep, lambda s: s.endpoints.publish("web", ["9100-9101:90-91", "9153:53/udp"])),
    "unpublish": (_no_prep, lambda s: s.endpoints.unpublish("web", ["5353:53/udp"])),
    "nat import": (_no_prep, lambda s: s.nat.import_("*nat\n-A POSTROUTING -o uplink0 -j MASQUERADE\nCOMMIT\n")),
}


def _prepared(tmp_path, prep):
    svc, faults = build(tmp_path, nat=True)
    setup_world(svc)
    prep(svc)
    return svc, faults


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_a_failure_at_any_step_leaves_no_partial_change(tmp_path, name):
    prep, op = OPERATIONS[name]
    svc, faults = _prepared(tmp_path / "count", prep)
    start = len(faults.calls)
    op(svc)
    steps = len(faults.calls) - start
    assert steps >= 1, f"{name}: expected kernel steps, saw none"
    for k in range(steps):
        svc, faults = _prepared(tmp_path / f"k{k}", prep)
        before = world(svc)
        faults.fail_at = len(faults.calls) + k
        with pytest.raises(DatapathError, match="injected failure"):
            op(svc)
        failed_step = faults.calls[faults.fail_at]
        faults.fail_at = None
        assert world(svc) == before, f"{name}: partial change after a failure at step {k} ({failed_step})"


def test_rm_with_a_failing_kernel_step_removes_the_record_and_reconcile_the_rest(tmp_path):
    """Removal is committed to the store first; kernel objects whose removal failed are orphans
    that the next reconcile removes."""
    svc, faults = build(tmp_path)
    setup_world(svc)
    faults.fail_at = len(faults.calls)          # the first kernel step of the removal fails
    svc.endpoints.rm("web")
    faults.fail_at = None
    assert "web" not in [e["name"] for e in svc.endpoints.ps()]
    svc.system.start()
    kernel = svc.datapath.snapshot()
    web_links = [k for k, v in kernel["links"].items() if v[2] in ("10.20.0.2", "10.21.0.3")]
    assert web_links == [] and "dl-unit-web" not in svc.ctx.sandbox.snapshot()


def test_bad_input_changes_nothing(tmp_path):
    svc, _ = build(tmp_path)
    setup_world(svc)
    before = world(svc)
    with pytest.raises(Conflict, match="bind for 0.0.0.0:8080/tcp failed"):
        svc.endpoints.create("clash", network="front", ports=["8080:81"])
    with pytest.raises(Conflict, match="overlaps with network front"):
        svc.networks.create("dup", subnet="10.20.0.128/25")
    with pytest.raises(InvalidArgument, match="invalid address 10.99.0.5"):
        svc.endpoints.create("far", network="front", ip="10.99.0.5")
    assert world(svc) == before


# ---------------------------------------------------------------------- DNS by delta
def reference_tables(state):
    """The name tables as the engine built them before (from scratch, O(endpoints^2))."""
    names, ptr, fwd = {}, {}, {}
    by_net = {}
    for a in state.attachments:
        by_net.setdefault(a.network_id, []).append(a)
    eps = {e.id: e for e in state.endpoints}
    for ep in state.endpoints:
        if ep.shares or ep.mode != "bridge":
            continue
        table, rev = {}, {}
        dns_nets = [state.network(a.network_id) for a in state.attachments_of(ep.id)
                    if state.network(a.network_id).dns]
        for net in dns_nets:
            for a in sorted(by_net.get(net.id, []), key=lambda a: 0):
                peer = eps[a.endpoint_id]
                for n in [peer.name] + list(a.aliases) + [s.name for s in state.endpoints if s.shares == peer.id]:
                    table.setdefault(n.lower(), []).append(a.ip)
                rev.setdefault(a.ip, []).append(peer.name)
        if dns_nets:
            names[ep.id], ptr[ep.id] = table, rev
            fwd[ep.id] = any(not n.internal for n in dns_nets)
    return names, ptr, fwd


def test_dns_by_delta_answers_as_a_full_rebuild(tmp_path):
    rnd = random.Random(7)
    svc, _ = build(tmp_path)
    for i, internal in enumerate((False, False, True)):
        svc.networks.create(f"n{i}", subnet=f"10.{40 + i}.0.0/24", internal=internal)
    live: list[str] = []
    for step in range(160):
        r = rnd.random()
        try:
            if r < 0.4 or len(live) < 3:
                name = f"e{step}"
                net = rnd.choice(["n0", "n1", "n2", "bridge"] + [f"container:{x}" for x in live[:3]])
                aliases = [f"a{step}"] if rnd.random() < 0.5 and not net.startswith("container") else []
                svc.endpoints.create(name, network=net, aliases=aliases)
                live.append(name)
            elif r < 0.6:
                svc.endpoints.connect(rnd.choice(["n0", "n1", "n2"]), rnd.choice(live), aliases=[f"c{step}"])
            elif r < 0.75:
                svc.endpoints.disconnect(rnd.choice(["n0", "n1", "n2"]), rnd.choice(live))
            else:
                victim = rnd.choice(live)
                svc.endpoints.rm(victim)
                live.remove(victim)
        except (Conflict, InvalidArgument, Exception) as e:
            if isinstance(e, AssertionError):
                raise
        state = svc.ctx.snapshot()
        names, ptr, fwd = reference_tables(state)
        every = {n for t in names.values() for n in t} | {"nobody"}
        for ep in state.endpoints:
            key = ep.id
            for n in every:
                want = names.get(key, {}).get(n)
                got = svc.names.lookup(key, n)
                assert sorted(got or []) == sorted(want or []), (step, ep.name, n)
            for ip in {a.ip for a in state.attachments}:
                assert sorted(svc.names.reverse(key, ip) or []) == sorted(ptr.get(key, {}).get(ip) or [])
            assert svc.names.can_forward(key) == fwd.get(key, True)


def test_the_fake_datapath_overrides_the_whole_facade():
    """A method of the real facade that the fake did not override would run real netlink code
    (or need parts the fake has not got) inside these unit tests."""
    from dockline.control.datapath.base import Datapath
    public = {n for n, v in vars(Datapath).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    missing = sorted(n for n in public if vars(FakeDatapath).get(n) is None)
    assert missing == []

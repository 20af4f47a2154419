"""The real ``dockline`` CLI against a running agent: tables for people, --json for programs,
exec inside an endpoint, and the lease reconciliation a restart performs.

      host netns (agent) ── bridge n1 ── a, b
"""

import json
import os
import signal
import time

import pytest

from dockline.control.store import SQLiteStore

pytestmark = pytest.mark.root


def pids_running(cmdline: str) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().replace(b"\0", b" ").strip() == cmdline.encode():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def ok(host, *args):
    r = host.cli(*args)
    assert r.returncode == 0, f"dockline {' '.join(args)}: {r.stderr}"
    return r.stdout


def test_human_tables_and_json(host):
    net_id = ok(host, "network", "create", "n1", "--subnet", "10.70.0.0/24").strip()
    assert len(net_id) == 64
    ok(host, "create", "--name", "a", "--network", "n1", "--alias", "alpha", "-p", "8080:80")
    ok(host, "run", "--name", "b", "--network", "n1", "--", "sleep", "300")

    table = ok(host, "network", "ls").splitlines()
    assert table[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERNAL", "ENDPOINTS"]
    row = next(l for l in table if " n1 " in l)
    assert row.split()[:5] == [net_id[:12], "n1", "bridge", "10.70.0.0/24", "10.70.0.1"]
    # columns are aligned: every row starts its NAME column at the same offset
    assert len({l.index(l.split()[1]) for l in table[1:]}) == 1

    nets = json.loads(ok(host, "network", "ls", "--json"))
    assert {n["name"] for n in nets} == {"bridge", "host", "none", "n1"}
    eps = {e["name"]: e for e in json.loads(ok(host, "--json", "ps"))}
    assert eps["a"]["networks"] == {"n1": "10.70.0.2"} and eps["a"]["ports"] == ["80/tcp -> 0.0.0.0:8080"]
    insp = json.loads(ok(host, "inspect", "a", "--json"))[0]
    assert insp["networks"]["n1"]["aliases"] == ["alpha"]
    assert json.loads(ok(host, "port", "a", "--json"))[0]["host_port"] == 8080
    assert ok(host, "port", "a").strip() == "80/tcp -> 0.0.0.0:8080"
    ninsp = json.loads(ok(host, "network", "inspect", "n1"))[0]
    assert set(ninsp["endpoints"]) == {"a", "b"}
    info = json.loads(ok(host, "info", "--json"))
    assert info["datapath"]["name"] == host.datapath and info["probe"]["kernel"]["usable"]

    # exec runs inside the endpoint: it sees its own eth0 address
    out = ok(host, "exec", "a", "ip", "-o", "-4", "addr", "show", "eth0")
    assert "10.70.0.2/24" in out
    # the command started by `run` lives in b's namespace, and dies with it on rm
    b_ns = os.stat(f"/run/netns/{host.ep_ns('b')}").st_ino
    sleepers = [p for p in pids_running("sleep 300") if os.stat(f"/proc/{p}/ns/net").st_ino == b_ns]
    assert len(sleepers) == 1
    assert json.loads(ok(host, "rm", "a", "b", "--json"))["failed"] == []
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{sleepers[0]}") or \
        open(f"/proc/{sleepers[0]}/stat").read().split()[2] == "Z"
    assert json.loads(ok(host, "ps", "--json")) == []


def test_leaked_leases_are_released_at_start(host, tmp_path):
    host.call("network_create", name="n1", subnet="10.71.0.0/29")
    net_id = host.call("network_inspect", ref="n1")["id"]
    host.stop_agent(signal.SIGKILL)
    store = SQLiteStore(str(tmp_path / "state" / host.name / "store.db"))
    with store.transaction() as tx:   # a lease whose owner never made it into the store
        tx.lease(net_id, "10.71.0.2", "ghost-endpoint")
    store.close()
    host.start_agent()
    ep = host.call("endpoint_create", name="a", network="n1", ip="10.71.0.2")
    assert ep["networks"]["n1"]["ip"] == "10.71.0.2"

"""The Cython load generators as the benchmark runs them: each role a process inside a throwaway netns, talking over 127.0.0.1."""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from dockline.control.sim import loadgen
from dockline.control.netlink.netns import ensure_netns, exists, remove_netns

pytestmark = pytest.mark.root

IP = "127.0.0.1"
DURATION = 1.0


@pytest.fixture(scope="module")
def ns():
    """A fresh netns with only lo up; all traffic of this module stays inside it."""
    name = f"dltlg-{secrets.token_hex(3)}"
    ensure_netns(name)
    try:
        yield name
    finally:
        remove_netns(name)
        assert not exists(name)


def _has_keys(result: dict, role: str, keys: tuple[str, ...]) -> None:
    assert result["role"] == role
    missing = set(keys) - result.keys()
    assert not missing, f"{role} result lacks documented keys {sorted(missing)}: {result}"


def _latency_ordered(r: dict) -> None:
    assert 0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"], r
    assert r["mean_us"] > 0


def test_rr_counts_match_the_server(ns):
    with loadgen.Process("rr-server", ns, ip=IP) as server:
        try:
            small = loadgen.run("rr-client", ns, ip=IP, duration=DURATION)
            # A second connection with a size TCP may split: the server learns it from the
            # client's header and still counts whole transactions.
            big = loadgen.run("rr-client", ns, ip=IP, duration=0.3, size=3000)
        finally:
            served = server.stop()
    for r, size in ((small, 1), (big, 3000)):
        _has_keys(r, "rr-client", loadgen.RR_KEYS)
        assert r["size"] == size
        assert r["transactions"] > 0 and r["tps"] > 0
        assert r["duration_s"] >= 0.3
        _latency_ordered(r)
    _has_keys(served, "rr-server", loadgen.SERVER_KEYS)
    assert served == {"role": "rr-server", "connections": 2, "errors": 0,
                      "transactions": small["transactions"] + big["transactions"]}


def test_crr_without_errors(ns):
    with loadgen.Process("crr-server", ns, ip=IP) as server:
        try:
            one = loadgen.run("crr-client", ns, ip=IP, duration=DURATION)
            two = loadgen.run("crr-client", ns, ip=IP, duration=0.5, parallel=2)
        finally:
            served = server.stop()
    for r, parallel in ((one, 1), (two, 2)):
        _has_keys(r, "crr-client", loadgen.CRR_KEYS)
        assert r["parallel"] == parallel
        assert r["cps"] > 0 and r["connections"] > 0
        assert r["errors"] == 0 and r["last_error"] is None, r
        _latency_ordered(r)
    _has_keys(served, "crr-server", loadgen.SERVER_KEYS)
    total = one["connections"] + two["connections"]
    assert served["errors"] == 0
    assert served["transactions"] == served["connections"] == total


def test_udp_sink_counts_no_more_than_sent(ns):
    got = loadgen.udp_forwarding(ns, ns, IP, duration=DURATION, sink_ip=IP)
    flood, sink = got["flood"], got["sink"]
    _has_keys(flood, "udp-flood", loadgen.FLOOD_KEYS)
    _has_keys(sink, "udp-sink", loadgen.SINK_KEYS)
    assert flood["size"] == loadgen.UDP_SIZE == 18
    assert flood["sent"] > 0 and flood["pps"] > 0
    assert 0 < sink["received"] <= flood["sent"]
    assert sink["bytes"] == sink["received"] * 18
    assert sink["pps"] > 0 and 0 < sink["duration_s"] <= sink["run_s"]
    assert got["forwarded_pps"] > 0 and 0 <= got["loss"] < 1


def test_udp_sink_stops_after_its_duration(ns):
    """--duration ends the sink by itself (no signal), with a JSON line even if nothing came."""
    r = subprocess.run(loadgen.command("udp-sink", ns, ip=IP, duration=0.3), capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "ready"
    result = json.loads(lines[-1])
    _has_keys(result, "udp-sink", loadgen.SINK_KEYS)
    assert result["received"] == 0 and result["pps"] == 0 and result["run_s"] >= 0.3


def test_clients_without_a_server(ns):
    """CRR counts refused connections as errors; RR, which needs its one connection, fails."""
    crr = loadgen.run("crr-client", ns, ip=IP, port=7092, duration=0.2)
    assert crr["connections"] == 0 and crr["errors"] > 0
    assert crr["last_error"] == "Connection refused"
    with pytest.raises(RuntimeError, match="Connection refused"):
        loadgen.run("rr-client", ns, ip=IP, port=7091, duration=0.2)


def test_cli_rejects_options_that_do_not_apply(ns):
    for role, opt in (("crr-client", "--size"), ("rr-server", "--size"),
                      ("rr-client", "--parallel"), ("crr-server", "--duration")):
        r = subprocess.run(loadgen.command(role, ns) + [opt, "2"], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 2 and f"{opt} applies" in r.stderr, (role, opt, r.stderr)


def test_selftest_reports_loopback_rates(ns):
    st = loadgen.selftest(ns, duration=0.5)
    for key in ("rr_tps", "crr_cps", "udp_sent_pps", "udp_received_pps"):
        assert st[key] > 0, (key, st)
    assert st["udp_received_pps"] <= st["udp_sent_pps"]  # both are per second of flooding
    assert st["rr_server"]["transactions"] == st["rr"]["transactions"]
    assert st["crr"]["errors"] == 0

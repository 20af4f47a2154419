"""Counters end to end: ``dockline stats`` and Prometheus /metrics served by the agent in the
host netns, on both backends.

      host netns: agent with --metrics-addr 127.0.0.1:9469
         bridge n1 ── a, b
"""

import urllib.request

import pytest

from dockline.control.sim.nstools import ping
from dockline.control.sim.simhost import SimHost
from dockline.control.netlink.netns import netns_path, run_in_netns

pytestmark = pytest.mark.root


@pytest.fixture
def mhost(tmp_path, datapath):
    h = SimHost(tmp_path, datapath=datapath, extra_args=["--metrics-addr", "127.0.0.1:9469"])
    try:
        h.start_agent()
        yield h
    finally:
        h.cleanup()


def scrape(h) -> str:
    return run_in_netns(netns_path(h.host_ns), lambda: urllib.request.urlopen(
        "http://127.0.0.1:9469/metrics", timeout=5).read().decode())


def test_metrics_and_stats(mhost):
    h = mhost
    h.call("network_create", name="n1")
    h.call("endpoint_create", name="a", network="n1")
    h.call("endpoint_create", name="b", network="n1")
    b = h.call("inspect", ref="b")["networks"]["n1"]["ip"]
    assert ping(h.ep_ns("a"), b, count=3)
    text = scrape(h)
    assert "dockline_endpoints 2.0" in text and "dockline_networks 4.0" in text
    st = h.call("stats")
    assert st["datapath"] == h.datapath
    if h.datapath == "ebpf":
        assert st["verdicts"]["redirect_peer"]["packets"] >= 6
        line = next(l for l in text.splitlines()
                    if l.startswith('dockline_verdict_packets_total{') and 'verdict="redirect_peer"' in l)
        assert float(line.split()[-1]) >= 6
        assert 'dockline_endpoint_packets_total{endpoint="a",network="n1",path="redirected"}' in text
        r = h.cli("stats")
        assert r.returncode == 0 and "redirect_peer" in r.stdout
        assert "dockline_conntrack_capacity 262144.0" in text
        assert 'dockline_nat_events_total{event="ct_new"}' in text
    else:
        assert st["forward_rules"], "kernel backend exposes its FORWARD rule counters"
        assert "dockline_forward_rule_packets_total" in text

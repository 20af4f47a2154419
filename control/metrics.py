"""Prometheus text exposition of the datapath counters (``dockline daemon --metrics-addr``).

Metric names (all counters are totals since the programs were loaded):
  dockline_verdict_packets_total{verdict,code,drop}   packets per verdict / drop reason (ebpf)
  dockline_verdict_bytes_total{verdict,code,drop}
  dockline_endpoint_packets_total{endpoint,network,path}   path = redirected | passed | dropped
  dockline_endpoint_bytes_total{endpoint,network,path}
  dockline_forward_rule_packets_total{target,rule}   iptables FORWARD-chain counters (kernel)
  dockline_endpoints, dockline_networks, dockline_published_ports   current sizes (gauges)
  dockline_nat_events_total{event}        NAT events (nat_counters.h: ct_new, port_retry, ...) (ebpf)
  dockline_conntrack_entries, dockline_conntrack_capacity, dockline_conntrack_pressure   (gauges)
  dockline_conntrack_gc_deleted_total      entries the agent's GC removed
"""

from __future__ import annotations

import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("dockline.metrics")


class DatapathCollector:
    """Reads the datapath's counters and the store's counts (never its rows) on each scrape."""

    def __init__(self, services):
        self.services = services

    def collect(self):
        st = self.services.system.stats()
        labels = ["verdict", "code", "drop"]
        vp = CounterMetricFamily("dockline_verdict_packets", "Packets per datapath verdict", labels=labels)
        vb = CounterMetricFamily("dockline_verdict_bytes", "Bytes per datapath verdict", labels=labels)
        for name, v in st.get("verdicts", {}).items():
            lab = [name, str(v["code"]), "true" if v["drop"] else "false"]
            vp.add_metric(lab, v["packets"])
            vb.add_metric(lab, v["bytes"])
        ep_labels = ["endpoint", "network", "path"]
        ep_p = CounterMetricFamily("dockline_endpoint_packets", "Packets per endpoint and path", labels=ep_labels)
        ep_b = CounterMetricFamily("dockline_endpoint_bytes", "Bytes per endpoint and path", labels=ep_labels)
        for e in st.get("endpoints", []):
            for path in ("redirected", "passed", "dropped"):
                ep_p.add_metric([e["endpoint"], e["network"], path], e[path]["packets"])
                ep_b.add_metric([e["endpoint"], e["network"], path], e[path]["bytes"])
        fr = CounterMetricFamily("dockline_forward_rule_packets", "iptables FORWARD-chain rule hits",
                                 labels=["target", "rule"])
        for r in st.get("forward_rules", []):
            fr.add_metric([r["target"], r["rule"]], r["packets"])
        yield from (vp, vb, ep_p, ep_b, fr)
        if "nat" in st:
            ne = CounterMetricFamily("dockline_nat_events", "NAT events by kind", labels=["event"])
            for name, n in st["nat"].items():
                ne.add_metric([name], n)
            yield ne
            ct = st.get("conntrack", {})
            for name in ("entries", "capacity", "pressure"):
                yield GaugeMetricFamily(f"dockline_conntrack_{name}", f"Conntrack table {name}",
                                        value=ct.get(name, 0))
            yield CounterMetricFamily("dockline_conntrack_gc_deleted", "Conntrack entries removed by the GC",
                                      value=ct.get("gc_deleted", 0))
        for name, n in self.services.system.counts().items():
            yield GaugeMetricFamily(f"dockline_{name}", f"Current number of {name.replace('_', ' ')}", value=n)


def serve(services, addr: str):
    """Serve /metrics on ``addr`` ("host:port") in the agent's (host) network namespace."""
    from prometheus_client import start_http_server
    host, _, port = addr.rpartition(":")
    registry = CollectorRegistry()
    registry.register(DatapathCollector(services))
    start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    log.info("metrics on http://%s/metrics", addr)

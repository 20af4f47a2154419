"""The host as a whole: start (reconcile the kernel with the store), reset, info and stats.

Reconcile is idempotent: it creates what is missing, removes orphans of ours (links, namespaces)
and releases leases whose owner is gone, so killing the agent at any instant loses nothing.
"""

from __future__ import annotations

import logging

from ..errors import DocklineError
from . import addressing
from .endpoints import primary_index

log = logging.getLogger("dockline.system")


class SystemService:
    def __init__(self, ctx, networks, endpoints, names, fallback=None):
        self.ctx = ctx
        self.networks = networks
        self.endpoints = endpoints
        self.names = names
        self._fallback = fallback      # () -> a datapath to use when an auto-chosen one fails

    def start(self) -> dict:
        """Reconcile the kernel with the store. Safe to run any number of times."""
        ctx = self.ctx
        with ctx.lock:
            try:
                ctx.datapath.setup_host()
            except DocklineError as e:
                if self._fallback is None:
                    raise
                log.warning("datapath %s failed to start (%s); falling back to kernel", ctx.datapath.name, e)
                ctx.datapath = self._fallback()
                self._fallback = None
                ctx.datapath.setup_host()
            self.networks.ensure_builtin()
            report = self._reconcile()
            log.info("reconciled: %s", report)
            return report

    def _reconcile(self) -> dict:
        ctx = self.ctx
        dp, sandbox = ctx.datapath, ctx.sandbox
        state = ctx.snapshot()
        report = {"networks": 0, "endpoints": 0, "removed": [], "released_leases": [], "dropped_endpoints": []}
        for net in state.networks:
            dp.ensure_network(net)
            report["networks"] += 1
        dropped = []
        for ep in state.endpoints:
            if ep.owned and ep.mode != "host" and not ep.shares:
                sandbox.ensure(ep.netns_name)
            elif not sandbox.path_exists(ep.netns_path):
                # An adopted namespace whose process is gone: nothing left to network.
                log.warning("endpoint %s: adopted netns %s is gone; removing the endpoint", ep.name, ep.netns_path)
                dropped.append(ep)
                continue
            primary = primary_index(state, ep)
            for att in state.attachments_of(ep.id):
                dp.ensure_attachment(state.network(att.network_id), ep, att, att.index == primary)
            self.names.write_resolv_conf(state, ep)
            report["endpoints"] += 1
        with ctx.store.transaction() as tx:
            for ep in dropped:
                tx.delete_endpoint(ep.id)
                report["dropped_endpoints"].append(ep.name)
            owners = {e.id for e in state.endpoints if e not in dropped}
            report["released_leases"] = addressing.release_orphan_leases(tx, owners)
        if dropped or report["released_leases"]:
            state = ctx.snapshot()
        dp.sync_policy(state)
        report["removed"] = dp.remove_orphans(state)
        wanted_ns = {e.netns_name for e in state.endpoints if e.owned and e.netns_name}
        for name in sandbox.list(ctx.host.netns_prefix):
            if name not in wanted_ns:
                sandbox.remove(name)
                report["removed"].append(f"netns {name}")
        self.names.rebuild(state)
        return report

    def reset(self) -> dict:
        """Remove every endpoint and user network, then our host-wide rules (tests, demos)."""
        ctx = self.ctx
        with ctx.lock:
            state = ctx.snapshot()
            self.endpoints.remove_all(state.endpoints)
            for net in state.networks:
                with ctx.store.transaction() as tx:
                    tx.delete_network(net.id)
                ctx.datapath.remove_network(net)
            ctx.datapath.teardown_host()
            self.names.rebuild(ctx.snapshot())
            log.info("reset: removed %d endpoints and %d networks", len(state.endpoints), len(state.networks))
            return {"endpoints": len(state.endpoints), "networks": len(state.networks)}

    def info(self) -> dict:
        from ..datapath import probe
        ctx = self.ctx
        with ctx.store.transaction() as tx:
            networks, endpoints, ports = len(tx.networks()), len(tx.endpoints()), tx.port_count()
        return {"host": ctx.host.name, "host_netns": ctx.host.host_netns or "(root)",
                "datapath": ctx.datapath.info(),
                # as probed when the agent chose its datapath: probing compiles a BPF program
                "probe": {k: {"usable": ok, "reason": why} for k, (ok, why) in probe(cached=True).items()},
                "networks": networks, "endpoints": endpoints,
                "published_ports": ports, "dns_upstreams": ctx.host.dns_upstreams,
                "store": ctx.host.db_path}

    def stats(self) -> dict:
        """Datapath counters (per verdict and per endpoint for ebpf; rule counters for kernel)."""
        with self.ctx.lock:          # the snapshot's ports are read lazily: only under the lock
            return self.ctx.datapath.stats(self.ctx.snapshot())

    def counts(self) -> dict:
        """Current sizes, read as counts (a metrics scrape reads no rows)."""
        state = self.ctx.snapshot()             # the watch-driven cache: no records decoded
        with self.ctx.store.transaction() as tx:
            ports = tx.port_count()                # one counter key
        return {"endpoints": len(state.endpoints), "networks": len(state.networks), "published_ports": ports}

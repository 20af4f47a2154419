"""Endpoints ("containers"): create, remove, connect to and disconnect from networks, and the
read views (ps, inspect, port, exec).

Contract of every change: validate, write the store in one transaction, then make the kernel
match with one snapshot of the desired state; if the kernel step fails, everything the operation
applied is removed and its store change undone, so a failed call leaves no trace. If the process
dies between the two steps, the system service's reconcile finishes the job from the store.
"""

from __future__ import annotations

import logging
import time

from ..datapath.base import PortChanges
from ..datapath.drivers import driver_class
from ..errors import Conflict, DocklineError, InvalidArgument, NotFound, NotSupported
from ..model import DEFAULT_NETWORK, Endpoint, parse_ip, parse_port_spec, validate_name
from . import addressing
from .context import new_id
from .networks import find_network

log = logging.getLogger("dockline.endpoints")


def find_endpoint(tx, ref: str) -> Endpoint:
    ep = tx.endpoint(ref)
    if ep is None:
        raise NotFound(f"no such endpoint: {ref}")
    return ep


def primary_index(state, ep: Endpoint) -> int:
    """The attachment that carries the default route: the first non-internal one."""
    atts = state.attachments_of(ep.id)
    for a in atts:
        if not state.network(a.network_id).internal:
            return a.index
    return atts[0].index if atts else -1


def _refuse_extras(mode, ip, aliases, specs):
    if ip or aliases or specs:
        raise InvalidArgument(f"--ip, --alias and -p cannot be used with network mode {mode}: "
                              f"the endpoint has no interface of its own")


class EndpointService:
    def __init__(self, ctx, names):
        self.ctx = ctx
        self.names = names

    # ------------------------------------------------------------------ reads
    def ps(self) -> list[dict]:
        state = self.ctx.snapshot(ports=True)
        by_ep: dict[str, list[str]] = {}
        for p in state.ports:
            by_ep.setdefault(p.endpoint_id, []).append(str(p))
        out = []
        for ep in state.endpoints:
            nets = {state.network(a.network_id).name: a.ip for a in state.attachments_of(ep.id)}
            out.append(dict(ep.to_dict(), networks=nets, ports=by_ep.get(ep.id, [])))
        return out

    def inspect(self, ref: str) -> dict:
        with self.ctx.store.transaction() as tx:
            ep = find_endpoint(tx, ref)
            nets = {n.id: n for n in tx.networks()}
            atts = tx.attachments(ep_id=ep.id)
            ports = [p.to_dict() for p in tx.ports(ep.id)]
        d = ep.to_dict()
        d["networks"] = {nets[a.network_id].name: dict(a.to_dict(), gateway=nets[a.network_id].gateway)
                         for a in atts}
        d["ports"] = ports
        return d

    def port(self, ref: str) -> list[dict]:
        with self.ctx.store.transaction() as tx:
            return [p.to_dict() for p in tx.ports(find_endpoint(tx, ref).id)]

    # ------------------------------------------------------------------ ports of a running endpoint
    def publish(self, ref: str, ports: list[str]) -> dict:
        """Publish more ports (``-p`` syntax) on a running endpoint, without touching the rest
        of it: the new mappings are stored, then only their entries are written to the datapath
        (PortChanges). A failure there removes them again. Returns the mappings added."""
        specs = [m for p in (ports or []) for m in parse_port_spec(p)]
        if not specs:
            raise InvalidArgument("no port to publish (give one or more -p specs: [hostip:]hostport:port[/proto])")
        ctx = self.ctx
        with ctx.lock:
            with ctx.store.transaction() as tx:
                ep = find_endpoint(tx, ref)
                att, net = self._port_carrier(tx, ep)
                added = addressing.publish_records(tx, ep, net, specs)
            specs = None
            try:
                ctx.datapath.sync_policy(ctx.snapshot(), PortChanges(att.ip, added))
            except BaseException:
                self._drop_ports(ep, set(added))
                # the whole state (PortChanges.removed would also drop hairpin targets that
                # ports of this endpoint still have)
                ctx.datapath.sync_policy(ctx.snapshot(), None)
                raise
            log.info("endpoint %s: published %d more port(s)", ep.name, len(added))
            return {"added": [dict(proto=p, host_ip=h, host_port=hp, container_port=cp) for p, h, hp, cp in added]}

    def unpublish(self, ref: str, ports: list[str]) -> dict:
        """Withdraw published ports of a running endpoint (``-p`` syntax, host port required); a
        port it does not publish is an error and nothing changes."""
        specs = [m for p in (ports or []) for m in parse_port_spec(p)]
        if not specs:
            raise InvalidArgument("no port to unpublish")
        if any(s[2] is None for s in specs):
            raise InvalidArgument("unpublish needs the host port (hostport:port[/proto])")
        ctx = self.ctx
        with ctx.lock:
            with ctx.store.transaction() as tx:
                ep = find_endpoint(tx, ref)
                att, _ = self._port_carrier(tx, ep)
                have = {(p.proto, p.host_ip, p.host_port, p.container_port) for p in tx.ports(ep.id)}
            want = set(specs)
            missing = sorted(want - have)
            if missing:
                proto, host_ip, host_port, cport = missing[0]
                raise NotFound(f"endpoint {ep.name} does not publish {host_ip}:{host_port}:{cport}/{proto}")
            self._drop_ports(ep, want)
            try:
                # the whole state: PortChanges.removed means every port of the endpoint's address
                # goes (its hairpin targets with them), which is not so here
                ctx.datapath.sync_policy(ctx.snapshot(), None)
            except BaseException:
                with ctx.store.transaction() as tx:
                    tx.put_ports((ep.id, *spec) for spec in sorted(want))
                ctx.datapath.sync_policy(ctx.snapshot(), None)
                raise
            log.info("endpoint %s: unpublished %d port(s)", ep.name, len(want))
            return {"removed": len(want)}

    def _port_carrier(self, tx, ep: Endpoint):
        """The attachment (and its network) published ports land on, as port_target picks it."""
        nets = {n.id: n for n in tx.networks()}
        for a in sorted(tx.attachments(ep_id=ep.id), key=lambda a: a.index):
            net = nets[a.network_id]
            if not net.internal and driver_class(net.driver).publishes_ports:
                return a, net
        raise NotSupported(f"endpoint {ep.name} has no network that can publish ports "
                           "(bridge networks that are not internal can)")

    def _drop_ports(self, ep: Endpoint, gone: set) -> None:
        """Remove the mappings ``gone`` ((proto, host_ip, host_port, container_port)) of ``ep``
        from the store, keeping its others (one transaction)."""
        with self.ctx.store.transaction() as tx:
            keep = [(p.endpoint_id, p.proto, p.host_ip, p.host_port, p.container_port) for p in tx.ports(ep.id)
                    if (p.proto, p.host_ip, p.host_port, p.container_port) not in gone]
            tx.delete_ports(ep.id)
            if keep:
                tx.put_ports(keep)

    def exec_info(self, ref: str) -> dict:
        """What the CLI needs to run a command inside the endpoint."""
        with self.ctx.store.transaction() as tx:
            ep = find_endpoint(tx, ref)
        return {"netns_path": ep.netns_path, "netns_name": ep.netns_name if ep.owned else "",
                "mode": ep.mode, "name": ep.name}

    # ------------------------------------------------------------------ create
    def create(self, name: str, network: str = DEFAULT_NETWORK, ip: str | None = None,
               aliases: list[str] | None = None, ports: list[str] | None = None,
               netns_spec: str | None = None) -> dict:
        """Create endpoint ``name`` on ``network``: a network name, ``host``, ``none`` or
        ``container:<endpoint>``. ``netns_spec`` adopts an existing netns (path, PID or name)
        instead of creating one."""
        validate_name("endpoint", name)
        aliases = [validate_name("alias", a) for a in (aliases or [])]
        specs = [m for p in (ports or []) for m in parse_port_spec(p)]
        static_ip = str(parse_ip(ip, "--ip")) if ip else None
        ctx = self.ctx
        with ctx.lock:
            with ctx.store.transaction() as tx:
                ep, atts, changes = self._records(tx, name, network, static_ip, aliases, specs, netns_spec)
            specs = None            # thousands of tuples for a port range: not kept for the reply
            try:
                self._apply(ep, changes)
            except BaseException:
                self._undo(ep)
                raise
            changes = None
            log.info("endpoint %s created (%s mode) on %s%s", name, ep.mode, network,
                     "".join(f", {a.ip}" for a in atts))
            return self.inspect(ep.id)

    def _records(self, tx, name, network, static_ip, aliases, specs, netns_spec):
        """Store the endpoint, its attachment and its published ports (one transaction)."""
        ctx = self.ctx
        if tx.endpoint_named(name) is not None:
            raise Conflict(f"the endpoint name {name} is already in use")
        ep = Endpoint(id=new_id(), name=name, mode="bridge", netns_path="", created=time.time())
        if network.startswith("container:"):
            target = tx.endpoint(network.split(":", 1)[1])
            if target is None:
                raise NotFound(f"container:{network.split(':', 1)[1]}: no such endpoint to share a "
                               f"network namespace with")
            if target.shares:
                target = find_endpoint(tx, target.shares)
            _refuse_extras(network, static_ip, aliases, specs)
            ep.mode, ep.shares, ep.netns_path, ep.owned = "container", target.id, target.netns_path, False
            tx.put_endpoint(ep)
            return ep, [], PortChanges()
        net = find_network(tx, network)
        if net.driver == "host":
            _refuse_extras("host", static_ip, aliases, specs)
            ep.mode, ep.netns_path, ep.owned = "host", ctx.host_netns_path(), False
        else:
            if netns_spec:
                ep.netns_path, ep.owned = ctx.sandbox.resolve(netns_spec), False
            else:
                ep.netns_name = ctx.host.endpoint_netns(name)
                ep.netns_path = ctx.sandbox.path(ep.netns_name)
                if ctx.sandbox.exists(ep.netns_name):
                    raise Conflict(f"network namespace {ep.netns_name} already exists")
            if net.driver == "null":
                _refuse_extras("none", static_ip, aliases, specs)
                ep.mode = "none"
        tx.put_endpoint(ep)
        drv = driver_class(net.driver)
        if specs and not drv.publishes_ports:
            raise NotSupported(f"-p cannot be used on {net.driver} network {net.name}: its traffic never "
                               f"crosses the host, so nothing can forward a host port")
        if not drv.attachable:
            return ep, [], PortChanges()
        att = addressing.attach_record(tx, net, ep, static_ip, aliases, index=0)
        return ep, [att], PortChanges(att.ip, addressing.publish_records(tx, ep, net, specs))

    # ------------------------------------------------------------------ kernel steps
    def _apply(self, ep: Endpoint, changes: PortChanges | None = None):
        """Make the kernel match ``ep``; ``changes``: the published ports this operation changed,
        when that is all it changed about them (None: the datapath works it out from the state)."""
        ctx = self.ctx
        if ep.owned and ep.netns_name and not ctx.sandbox.exists(ep.netns_name):
            ctx.sandbox.ensure(ep.netns_name)       # (reconcile re-checks existing ones)
        state = ctx.snapshot()
        primary = primary_index(state, ep)
        for att in state.attachments_of(ep.id):
            ctx.datapath.ensure_attachment(state.network(att.network_id), ep, att, att.index == primary)
        ctx.datapath.sync_policy(state, changes)
        self.names.write_resolv_conf(state, ep)
        self.names.endpoint_changed(state, ep.id)

    def _undo(self, ep: Endpoint):
        """Remove every trace of ``ep`` from the kernel and the store (rollback and ``rm``)."""
        ctx = self.ctx
        with ctx.store.transaction() as tx:
            atts = tx.attachments(ep_id=ep.id)
            nets = {n.id: n for n in tx.networks()}
            gone = [(p.proto, p.host_ip, p.host_port, p.container_port) for p in tx.ports(ep.id)]
            tx.delete_endpoint(ep.id)
        carrier = next((a for a in atts if not nets[a.network_id].internal), None)
        state = ctx.snapshot()
        errors = []
        for att in atts:
            try:
                ctx.datapath.remove_attachment(nets[att.network_id], ep, att)
                if not ep.owned and ep.mode == "bridge":
                    ctx.sandbox.remove_interface(ep.netns_path, att.ifname)
            except DocklineError as e:
                errors.append(str(e))
        try:
            ctx.datapath.sync_policy(state, PortChanges(carrier.ip if carrier else "", removed=gone))
        except DocklineError as e:
            errors.append(str(e))
        if ep.owned and ep.netns_name:
            try:
                ctx.sandbox.remove(ep.netns_name)
            except DocklineError as e:
                errors.append(str(e))
        self.names.endpoint_removed(ep.id, ep.shares, state)
        if errors:
            log.error("cleanup of endpoint %s incomplete: %s", ep.name, "; ".join(errors))

    # ------------------------------------------------------------------ remove
    def rm(self, ref: str) -> dict:
        with self.ctx.lock:
            with self.ctx.store.transaction() as tx:
                ep = find_endpoint(tx, ref)
            sharers = [e.name for e in self.ctx.snapshot().sharers_of(ep.id)]
            if sharers:
                raise Conflict(f"endpoint {ep.name} shares its network namespace with "
                               f"{', '.join(sorted(sharers))}; remove those first")
            self._undo(ep)
            log.info("endpoint %s removed", ep.name)
            return {"removed": ep.name, "id": ep.id}

    def remove_all(self, endpoints) -> None:
        """Remove ``endpoints`` together (``system reset``): what ``rm`` does for each, with the
        per-call costs paid once: one store transaction, one snapshot, one policy sync, one scan
        of /proc, the namespaces unmounted in parallel (each umount waits out an RCU grace
        period), and the host ends of veth pairs left to die with their namespaces (the kernel
        deletes them in batches; ``rm`` deletes each, one synchronize_net apiece). Cleanup
        errors are logged, as in ``rm``, and the rest goes on."""
        ctx = self.ctx
        endpoints = list(endpoints)
        if not endpoints:
            return
        with ctx.store.transaction() as tx:
            nets = {n.id: n for n in tx.networks()}
            atts = {ep.id: tx.attachments(ep_id=ep.id) for ep in endpoints}
            for ep in endpoints:
                tx.delete_endpoint(ep.id)
        state = ctx.snapshot()
        errors = []
        for ep in endpoints:
            netns_going = bool(ep.owned and ep.netns_name)
            for att in atts[ep.id]:
                try:
                    ctx.datapath.remove_attachment(nets[att.network_id], ep, att, netns_going=netns_going)
                    if not ep.owned and ep.mode == "bridge":
                        ctx.sandbox.remove_interface(ep.netns_path, att.ifname)
                except DocklineError as e:
                    errors.append(str(e))
        try:
            ctx.datapath.sync_policy(state)
        except DocklineError as e:
            errors.append(str(e))
        errors += ctx.sandbox.remove_many([ep.netns_name for ep in endpoints if ep.owned and ep.netns_name])
        for ep in endpoints:
            self.names.endpoint_removed(ep.id, ep.shares, state)
        try:
            ctx.datapath.finish_removals()
        except DocklineError as e:
            errors.append(str(e))
        if errors:
            log.error("cleanup of %d endpoints incomplete: %s", len(endpoints), "; ".join(errors))

    # ------------------------------------------------------------------ connect / disconnect
    def connect(self, network: str, endpoint: str, ip: str | None = None, aliases: list[str] | None = None) -> dict:
        aliases = [validate_name("alias", a) for a in (aliases or [])]
        static_ip = str(parse_ip(ip, "--ip")) if ip else None
        ctx = self.ctx
        with ctx.lock:
            with ctx.store.transaction() as tx:
                net = find_network(tx, network)
                ep = find_endpoint(tx, endpoint)
                if ep.mode in ("host", "container", "none") or not driver_class(net.driver).attachable:
                    raise InvalidArgument(f"endpoint {ep.name} in {ep.mode} mode cannot be connected to "
                                          f"network {net.name}" if ep.mode != "bridge" else
                                          f"network {net.name} is a {net.driver} network; only networks with "
                                          f"interfaces of their own (bridge, macvlan) can be connected")
                current = tx.attachments(ep_id=ep.id)
                if any(a.network_id == net.id for a in current):
                    raise Conflict(f"endpoint {ep.name} is already connected to network {net.name}")
                index = max((a.index for a in current), default=-1) + 1
                att = addressing.attach_record(tx, net, ep, static_ip, aliases, index)
            try:
                self._apply(ep)
            except BaseException:
                with ctx.store.transaction() as tx:
                    tx.delete_attachment(ep.id, net.id)
                    tx.release(net.id, att.ip)
                self._restore(ep, removed=[(net, att)])
                raise
            log.info("endpoint %s connected to %s as %s (%s)", ep.name, net.name, att.ip, att.ifname)
            return self.inspect(ep.id)

    def disconnect(self, network: str, endpoint: str) -> dict:
        ctx = self.ctx
        with ctx.lock:
            with ctx.store.transaction() as tx:
                net = find_network(tx, network)
                ep = find_endpoint(tx, endpoint)
                att = next((a for a in tx.attachments(ep_id=ep.id) if a.network_id == net.id), None)
                if att is None:
                    raise NotFound(f"endpoint {ep.name} is not connected to network {net.name}")
                tx.delete_attachment(ep.id, net.id)
                tx.release(net.id, att.ip)
                remaining = tx.attachments(ep_id=ep.id)
                ports = []
                if not any(not tx.network(a.network_id).internal for a in remaining):
                    ports = tx.ports(ep.id)
                    tx.delete_ports(ep.id)   # nothing left to carry them
            try:
                ctx.datapath.remove_attachment(net, ep, att)
                if not ep.owned:
                    ctx.sandbox.remove_interface(ep.netns_path, att.ifname)
                self._apply(ep)
            except BaseException:
                with ctx.store.transaction() as tx:
                    tx.put_attachment(att)
                    tx.lease(net.id, att.ip, ep.id)
                    tx.put_ports((p.endpoint_id, p.proto, p.host_ip, p.host_port, p.container_port) for p in ports)
                self._restore(ep)
                raise
            log.info("endpoint %s disconnected from %s", ep.name, net.name)
            return self.inspect(ep.id)

    def _restore(self, ep: Endpoint, removed=()) -> None:
        """After a failed connect or disconnect whose store change was undone: take away the
        interfaces of ``removed`` ((network, attachment) pairs) and make the kernel match the
        store again. Failing here leaves the job to the next reconcile, and says so."""
        try:
            for net, att in removed:
                self.ctx.datapath.remove_attachment(net, ep, att)
            self._apply(ep)
        except DocklineError as e:
            log.error("rollback of endpoint %s incomplete: %s", ep.name, e)

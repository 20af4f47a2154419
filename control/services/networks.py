"""Networks: create, list, inspect and remove user-defined networks, and the built-in ones.

Contract of every change: validate, write the store in one transaction, then make the kernel
match; if the kernel step fails, what was applied is removed and the store change undone.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from .. import ipam
from ..config import bridge_name
from ..datapath.drivers import DRIVERS, driver_class
from ..errors import Conflict, DocklineError, InvalidArgument, NotFound, NotSupported
from ..model import (DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK, Network, parse_gateway, parse_ip_range,
                     parse_mtu, parse_subnet, validate_name)
from .context import new_id

log = logging.getLogger("dockline.networks")


def find_network(tx, ref: str) -> Network:
    net = tx.network(ref)
    if net is None:
        raise NotFound(f"network {ref} not found")
    return net


class NetworkService:
    def __init__(self, ctx):
        self.ctx = ctx

    # ------------------------------------------------------------------ reads
    def ls(self) -> list[dict]:
        with self.ctx.store.transaction() as tx:
            nets, atts = tx.networks(), tx.attachments()
        count: dict[str, int] = {}
        for a in atts:
            count[a.network_id] = count.get(a.network_id, 0) + 1
        return [dict(n.to_dict(), endpoints=count.get(n.id, 0)) for n in nets]

    def inspect(self, ref: str) -> dict:
        with self.ctx.store.transaction() as tx:
            net = find_network(tx, ref)
            atts = tx.attachments(net_id=net.id)
            names = {a.endpoint_id: tx.endpoint(a.endpoint_id).name for a in atts}
        d = net.to_dict()
        d["endpoints"] = {names[a.endpoint_id]: {"ip": a.ip, "mac": a.mac, "aliases": a.aliases,
                                                 "interface": a.ifname} for a in atts}
        return d

    # ------------------------------------------------------------------ built-in networks
    def ensure_builtin(self) -> None:
        """The default bridge (10.88.0.0/16 unless that overlaps something) and the ``host`` and
        ``none`` pseudo networks exist."""
        with self.ctx.store.transaction() as tx:
            have = {n.name for n in tx.networks()}
            if DEFAULT_NETWORK not in have:
                taken = [ipaddress.IPv4Network(n.subnet) for n in tx.networks() if n.subnet]
                routes = self.ctx.host_routes()
                subnet = ipam.DEFAULT_BRIDGE_SUBNET
                if ipam.overlapping(subnet, taken + routes):
                    subnet = ipam.pick_subnet(taken + routes)
                net = Network(id=new_id(), name=DEFAULT_NETWORK, driver="bridge", subnet=str(subnet),
                              gateway=str(subnet.network_address + 1), mtu=1500, builtin=True, dns=False,
                              bridge=bridge_name("", builtin_default=True), created=time.time())
                tx.put_network(net)
                tx.lease(net.id, net.gateway, ipam.GATEWAY_OWNER)
            for name, driver in ((HOST_NETWORK, "host"), (NONE_NETWORK, "null")):
                if name not in have:
                    tx.put_network(Network(id=new_id(), name=name, driver=driver, builtin=True, dns=False,
                                           created=time.time()))

    # ------------------------------------------------------------------ changes
    def create(self, name: str, driver: str = "bridge", subnet: str | None = None, gateway: str | None = None,
               ip_range: str | None = None, internal: bool = False, mtu=1500, options: dict | None = None) -> dict:
        validate_name("network", name)
        # the driver class checks its name and options; datapath.validate_network then checks
        # the network against the host and the other networks (neither changes anything)
        drv = driver_class(driver)
        ok, why = drv.available()
        if not ok:
            raise NotSupported(f"driver {driver} is not available: {why}")
        if not drv.creatable:
            raise InvalidArgument(f"driver {driver} networks cannot be created: choose from "
                                  f"{', '.join(n for n, d in DRIVERS.items() if d.creatable)}")
        options = drv.normalize_options(options or {})
        mtu = parse_mtu(mtu)
        ctx = self.ctx
        with ctx.lock:
            with ctx.store.transaction() as tx:
                if tx.network_named(name) is not None:
                    raise Conflict(f"network with name {name} already exists")
                taken = [(ipaddress.IPv4Network(n.subnet), n.name) for n in tx.networks() if n.subnet]
                if subnet:
                    net_cidr = parse_subnet(subnet)
                    clash = next((nm for sn, nm in taken if sn.overlaps(net_cidr)), None)
                    if clash:
                        raise Conflict(f"subnet {net_cidr} overlaps with network {clash}")
                else:
                    if gateway or ip_range:
                        raise InvalidArgument("--gateway and --ip-range need --subnet")
                    if not drv.host_device:
                        raise InvalidArgument(f"{driver} network {name} needs --subnet: the parent's segment "
                                              f"is not ours to pick")
                    net_cidr = ipam.pick_subnet([t for t, _ in taken] + ctx.host_routes())
                gw = parse_gateway(gateway, net_cidr) if gateway else net_cidr.network_address + 1
                rng = parse_ip_range(ip_range, net_cidr) if ip_range else None
                net_id = new_id()
                net = Network(id=net_id, name=name, driver=driver, subnet=str(net_cidr), gateway=str(gw),
                              ip_range=str(rng) if rng else "", internal=internal, mtu=mtu,
                              bridge=bridge_name(net_id) if drv.host_device else "", created=time.time(),
                              options=options)
                ctx.datapath.validate_network(net, tx.networks())
                tx.put_network(net)
                tx.lease(net.id, net.gateway, ipam.GATEWAY_OWNER)
            try:
                ctx.datapath.ensure_network(net)
                ctx.datapath.sync_policy(ctx.snapshot())
            except BaseException:
                self._undo_create(net)
                raise
            log.info("network %s created: %s gw %s bridge %s%s", name, net.subnet, net.gateway, net.bridge,
                     " internal" if internal else "")
            return net.to_dict()

    def _undo_create(self, net: Network) -> None:
        with self.ctx.store.transaction() as tx:
            tx.delete_network(net.id)
        try:
            self.ctx.datapath.remove_network(net)
            self.ctx.datapath.sync_policy(self.ctx.snapshot())
        except DocklineError as e:
            log.error("rollback of network %s incomplete: %s", net.name, e)

    def rm(self, ref: str) -> dict:
        ctx = self.ctx
        with ctx.lock:
            with ctx.store.transaction() as tx:
                net = find_network(tx, ref)
                if net.builtin:
                    raise Conflict(f"network {net.name} is built in and cannot be removed")
                atts = tx.attachments(net_id=net.id)
                if atts:
                    names = sorted(tx.endpoint(a.endpoint_id).name for a in atts)
                    raise Conflict(f"network {net.name} has active endpoints ({', '.join(names)})")
                leases = tx.leases(net.id)
                tx.delete_network(net.id)
            try:
                ctx.datapath.sync_policy(ctx.snapshot())
                ctx.datapath.remove_network(net)
            except BaseException:
                self._undo_rm(net, leases)
                raise
            log.info("network %s removed", net.name)
            return {"removed": net.name, "id": net.id}

    def _undo_rm(self, net: Network, leases) -> None:
        """A removal the kernel refused: the network is put back as it was."""
        with self.ctx.store.transaction() as tx:
            tx.put_network(net)
            for _, ip, owner in leases:
                tx.lease(net.id, ip, owner)
        try:
            self.ctx.datapath.ensure_network(net)
            self.ctx.datapath.sync_policy(self.ctx.snapshot())
        except DocklineError as e:
            log.error("rollback of network removal %s incomplete: %s", net.name, e)

"""The control-plane library: networks, endpoints, IPAM, port publishing and DNS names.

Contract of every mutating call: validate, then write the desired state to the store in one
transaction, then make the kernel match. If the kernel step fails, what was applied is removed and
the store change is undone, so a failed call leaves no trace. If the process dies between the two
steps, ``start()`` (reconcile) finishes the job from the store.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import signal
import threading
import time

from . import ipam
from .config import HostConfig, bridge_name, resolv_conf_dir, veth_name
from .datapath import select_datapath
from .datapath.base import DesiredState, LazyPorts, PortChanges
from .datapath.drivers import DRIVERS, driver_class
from .errors import Conflict, DocklineError, InvalidArgument, NotFound, NotSupported
from .model import (BUILTIN_NETWORKS, DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK, Attachment, Endpoint,
                    Network, PortMapping, host_ips_collide, mac_for_ip, parse_gateway, parse_ip,
                    parse_ip_range, parse_mtu, parse_port_spec, parse_subnet, validate_name)
from .netlink import netns
from .netlink.links import remove_inside
from .store import SQLiteStore, Store

log = logging.getLogger("dockline.engine")

#: Host ports handed out for ``-p CTRPORT`` (no host port given), like Docker's ephemeral range.
EPHEMERAL_PORTS = range(49153, 60999 + 1)
RESOLVER_IP = "127.0.0.11"


def _new_id() -> str:
    return secrets.token_hex(32)


def _collides(holders, host_ip: str) -> bool:
    """Does ``host_ip`` collide with the host addresses ``holders`` (None, one, or a tuple) that
    hold the same protocol and port? "0.0.0.0" collides with every address, as in Docker."""
    if holders is None:
        return False
    return any(host_ips_collide(h, host_ip) for h in ((holders,) if isinstance(holders, str) else holders))


def _take(taken: dict, key: int, host_ip: str) -> None:
    have = taken.get(key)
    taken[key] = host_ip if have is None else (have if isinstance(have, tuple) else (have,)) + (host_ip,)


NAT_RULES_KEY = "nat_rules"


class Engine:
    def __init__(self, host: HostConfig, store: Store | None = None, datapath=None, dns=None):
        self.host = host
        self.store = store or SQLiteStore(host.db_path)
        self.datapath = datapath or select_datapath(host.datapath, host)
        self.dns = dns
        self._lock = threading.RLock()
        self._names: dict[str, dict[str, list[str]]] = {}   # endpoint id -> {name: [ips]} for DNS
        self._ptr: dict[str, dict[str, list[str]]] = {}     # endpoint id -> {ip: [names]}
        self._forwardable: dict[str, bool] = {}
        self._dns_keys: set[str] = set()                     # endpoints with an open DNS listener

    # ================================================================ lifecycle
    def host_netns_path(self) -> str:
        return netns.netns_path(self.host.host_netns) if self.host.host_netns else "/proc/1/ns/net"

    def start(self) -> dict:
        """Reconcile the kernel with the store: create what is missing, remove orphans, release
        leaked leases. Safe to run any number of times."""
        with self._lock:
            try:
                self.datapath.setup_host()
            except DocklineError as e:
                if self.host.datapath not in ("auto", "") or self.datapath.name == "kernel":
                    raise
                from .datapath import build_datapath
                log.warning("datapath %s failed to start (%s); falling back to kernel", self.datapath.name, e)
                self.datapath = build_datapath("kernel", self.host)
                self.datapath.setup_host()
            self._ensure_builtin_networks()
            report = self._reconcile()
            log.info("reconciled: %s", report)
            return report

    def _ensure_builtin_networks(self):
        with self.store.transaction() as tx:
            have = {n.name for n in tx.networks()}
            if DEFAULT_NETWORK not in have:
                taken = [ipaddress.IPv4Network(n.subnet) for n in tx.networks() if n.subnet]
                subnet = ipam.DEFAULT_BRIDGE_SUBNET
                if ipam.overlapping(subnet, taken + self._host_routes()):
                    subnet = ipam.pick_subnet(taken + self._host_routes())
                net = Network(id=_new_id(), name=DEFAULT_NETWORK, driver="bridge", subnet=str(subnet),
                              gateway=str(subnet.network_address + 1), mtu=1500, builtin=True, dns=False,
                              bridge=bridge_name("", builtin_default=True), created=time.time())
                tx.put_network(net)
                tx.lease(net.id, net.gateway, ipam.GATEWAY_OWNER)
            for name, driver in ((HOST_NETWORK, "host"), (NONE_NETWORK, "null")):
                if name not in have:
                    tx.put_network(Network(id=_new_id(), name=name, driver=driver, builtin=True, dns=False,
                                           created=time.time()))

    def _host_routes(self):
        try:
            return self.datapath.host_routes()
        except Exception:   # a datapath without netlink access (unit tests)
            return []

    def _reconcile(self) -> dict:
        state = self.state()
        report = {"networks": 0, "endpoints": 0, "removed": [], "released_leases": [], "dropped_endpoints": []}
        for net in state.networks:
            self.datapath.ensure_network(net)
            report["networks"] += 1
        for ep in list(state.endpoints):
            if ep.owned and ep.mode != "host" and not ep.shares:
                netns.ensure_netns(ep.netns_name)
            elif not os.path.exists(ep.netns_path):
                # An adopted namespace whose process is gone: nothing left to network.
                log.warning("endpoint %s: adopted netns %s is gone; removing the endpoint", ep.name, ep.netns_path)
                with self.store.transaction() as tx:
                    tx.delete_endpoint(ep.id)
                report["dropped_endpoints"].append(ep.name)
                continue
            for att in state.attachments_of(ep.id):
                self.datapath.ensure_attachment(state.network(att.network_id), ep, att, att.index == self._primary_index(state, ep))
            self._write_resolv_conf(state, ep)
            report["endpoints"] += 1
        state = self.state()
        with self.store.transaction() as tx:   # leases whose owner no longer exists
            owners = {e.id for e in state.endpoints} | {ipam.GATEWAY_OWNER}
            for net_id, ip, owner in tx.leases():
                if owner not in owners:
                    tx.release(net_id, ip)
                    report["released_leases"].append(ip)
        self.datapath.sync_policy(state)
        report["removed"] = self.datapath.remove_orphans(state)
        wanted_ns = {e.netns_name for e in state.endpoints if e.owned and e.netns_name}
        for name in netns.list_netns(self.host.netns_prefix):
            if name not in wanted_ns:
                netns.remove_netns(name)
                shutil.rmtree(resolv_conf_dir(name), ignore_errors=True)
                report["removed"].append(f"netns {name}")
        self._refresh_dns(state)
        return report

    # ================================================================ reads
    def state(self, ports: bool = False) -> DesiredState:
        """The desired state. Its published ports are read on first use (``LazyPorts``): most
        changes never need them. Changes run under ``self._lock``, so nothing changes the store
        in between; a reader without the lock that needs them asks for ``ports=True`` (one
        transaction)."""
        with self.store.transaction() as tx:
            return DesiredState(tx.networks(), tx.endpoints(), tx.attachments(),
                                tx.ports() if ports else LazyPorts(self._read_ports),
                                tx.get_meta(NAT_RULES_KEY, "") or "")

    def _read_ports(self) -> list[PortMapping]:
        with self.store.transaction() as tx:
            return tx.ports()

    def _network(self, tx, ref: str) -> Network:
        net = tx.network(ref)
        if net is None:
            raise NotFound(f"network {ref} not found")
        return net

    def _endpoint(self, tx, ref: str) -> Endpoint:
        ep = tx.endpoint(ref)
        if ep is None:
            raise NotFound(f"no such endpoint: {ref}")
        return ep

    def network_ls(self) -> list[dict]:
        state = self.state()
        return [dict(n.to_dict(), endpoints=sum(1 for a in state.attachments if a.network_id == n.id))
                for n in state.networks]

    def network_inspect(self, ref: str) -> dict:
        with self.store.transaction() as tx:
            net = self._network(tx, ref)
            eps = {e.id: e for e in tx.endpoints()}
            atts = tx.attachments(net_id=net.id)
        d = net.to_dict()
        d["endpoints"] = {eps[a.endpoint_id].name: {"ip": a.ip, "mac": a.mac, "aliases": a.aliases,
                                                    "interface": a.ifname} for a in atts}
        return d

    def ps(self) -> list[dict]:
        state = self.state(ports=True)
        by_ep: dict[str, list[str]] = {}
        for p in state.ports:
            by_ep.setdefault(p.endpoint_id, []).append(str(p))
        out = []
        for ep in state.endpoints:
            nets = {state.network(a.network_id).name: a.ip for a in state.attachments_of(ep.id)}
            out.append(dict(ep.to_dict(), networks=nets, ports=by_ep.get(ep.id, [])))
        return out

    def inspect(self, ref: str) -> dict:
        with self.store.transaction() as tx:
            ep = self._endpoint(tx, ref)
            nets = {n.id: n for n in tx.networks()}
            atts = tx.attachments(ep_id=ep.id)
            ports = [p.to_dict() for p in tx.ports(ep.id)]
        d = ep.to_dict()
        d["networks"] = {nets[a.network_id].name: dict(a.to_dict(), gateway=nets[a.network_id].gateway)
                         for a in atts}
        d["ports"] = ports
        return d

    def port(self, ref: str) -> list[dict]:
        with self.store.transaction() as tx:
            ep = self._endpoint(tx, ref)
            return [p.to_dict() for p in tx.ports(ep.id)]

    def stats(self) -> dict:
        """Datapath counters (per verdict and per endpoint for ebpf; rule counters for kernel)."""
        return self.datapath.stats(self.state())

    def info(self) -> dict:
        from .datapath import probe
        with self.store.transaction() as tx:
            networks, endpoints, ports = len(tx.networks()), len(tx.endpoints()), tx.port_count()
        return {"host": self.host.name, "host_netns": self.host.host_netns or "(root)",
                "datapath": self.datapath.info(),
                # as probed when the agent chose its datapath: probing compiles a BPF program
                "probe": {k: {"usable": ok, "reason": why} for k, (ok, why) in probe(cached=True).items()},
                "networks": networks, "endpoints": endpoints,
                "published_ports": ports, "dns_upstreams": self.host.dns_upstreams,
                "store": self.host.db_path}

    # ================================================================ networks
    def network_create(self, name: str, driver: str = "bridge", subnet: str | None = None,
                       gateway: str | None = None, ip_range: str | None = None, internal: bool = False,
                       mtu=1500, options: dict | None = None) -> dict:
        validate_name("network", name)
        # [macvlan] the driver object checks its name and options; datapath.validate_network
        # checks the network against the host and the other networks (both change nothing)
        drv = driver_class(driver)
        ok, why = drv.available()
        if not ok:
            raise NotSupported(f"driver {driver} is not available: {why}")
        if not drv.creatable:
            raise InvalidArgument(f"driver {driver} networks cannot be created: choose from "
                                  f"{', '.join(n for n, d in DRIVERS.items() if d.creatable)}")
        options = drv.normalize_options(options or {})
        mtu = parse_mtu(mtu)
        with self._lock:
            with self.store.transaction() as tx:
                if any(n.name == name for n in tx.networks()):
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
                    net_cidr = ipam.pick_subnet([t for t, _ in taken] + self._host_routes())
                gw = parse_gateway(gateway, net_cidr) if gateway else net_cidr.network_address + 1
                rng = parse_ip_range(ip_range, net_cidr) if ip_range else None
                net_id = _new_id()
                net = Network(id=net_id, name=name, driver=driver, subnet=str(net_cidr), gateway=str(gw),
                              ip_range=str(rng) if rng else "", internal=internal, mtu=mtu,
                              bridge=bridge_name(net_id) if drv.host_device else "", created=time.time(),
                              options=options)
                self.datapath.validate_network(net, tx.networks())
                tx.put_network(net)
                tx.lease(net.id, net.gateway, ipam.GATEWAY_OWNER)
            try:
                self.datapath.ensure_network(net)
                self.datapath.sync_policy(self.state())
            except BaseException:
                self._undo_network(net)
                raise
            log.info("network %s created: %s gw %s bridge %s%s", name, net.subnet, net.gateway, net.bridge,
                     " internal" if internal else "")
            return net.to_dict()

    def _undo_network(self, net: Network):
        with self.store.transaction() as tx:
            tx.delete_network(net.id)
        try:
            self.datapath.remove_network(net)
            self.datapath.sync_policy(self.state())
        except DocklineError as e:
            log.error("rollback of network %s incomplete: %s", net.name, e)

    def network_rm(self, ref: str) -> dict:
        with self._lock:
            with self.store.transaction() as tx:
                net = self._network(tx, ref)
                if net.builtin:
                    raise Conflict(f"network {net.name} is built in and cannot be removed")
                atts = tx.attachments(net_id=net.id)
                if atts:
                    names = sorted(tx.endpoint(a.endpoint_id).name for a in atts)
                    raise Conflict(f"network {net.name} has active endpoints ({', '.join(names)})")
                tx.delete_network(net.id)
            self.datapath.sync_policy(self.state())
            self.datapath.remove_network(net)
            log.info("network %s removed", net.name)
            return {"removed": net.name, "id": net.id}

    # ================================================================ endpoints
    def endpoint_create(self, name: str, network: str = DEFAULT_NETWORK, ip: str | None = None,
                        aliases: list[str] | None = None, ports: list[str] | None = None,
                        netns_spec: str | None = None) -> dict:
        """Create endpoint ``name`` on ``network``: a network name, ``host``, ``none`` or
        ``container:<endpoint>``. ``netns_spec`` adopts an existing netns (path, PID or name)
        instead of creating one."""
        validate_name("endpoint", name)
        aliases = [validate_name("alias", a) for a in (aliases or [])]
        specs = [m for p in (ports or []) for m in parse_port_spec(p)]
        static_ip = str(parse_ip(ip, "--ip")) if ip else None
        with self._lock:
            with self.store.transaction() as tx:
                if any(e.name == name for e in tx.endpoints()):
                    raise Conflict(f"the endpoint name {name} is already in use")
                ep = Endpoint(id=_new_id(), name=name, mode="bridge", netns_path="", created=time.time())
                changes = PortChanges()      # what this endpoint publishes: all the datapath needs
                if network.startswith("container:"):
                    target = tx.endpoint(network.split(":", 1)[1])
                    if target is None:
                        raise NotFound(f"container:{network.split(':', 1)[1]}: no such endpoint to share a "
                                       f"network namespace with")
                    if target.shares:
                        target = self._endpoint(tx, target.shares)
                    self._refuse_extras(network, static_ip, aliases, specs)
                    ep.mode, ep.shares, ep.netns_path, ep.owned = "container", target.id, target.netns_path, False
                    tx.put_endpoint(ep)
                    atts = []
                else:
                    net = self._network(tx, network)
                    if net.driver == "host":
                        self._refuse_extras("host", static_ip, aliases, specs)
                        ep.mode, ep.netns_path, ep.owned = "host", self.host_netns_path(), False
                    else:
                        if netns_spec:
                            ep.netns_path, ep.owned = netns.resolve_netns(netns_spec), False
                        else:
                            ep.netns_name = self.host.endpoint_netns(name)
                            ep.netns_path = netns.netns_path(ep.netns_name)
                            if netns.exists(ep.netns_name):
                                raise Conflict(f"network namespace {ep.netns_name} already exists")
                        if net.driver == "null":
                            self._refuse_extras("none", static_ip, aliases, specs)
                            ep.mode = "none"
                    tx.put_endpoint(ep)
                    atts = []
                    if specs and not driver_class(net.driver).publishes_ports:     # [macvlan]
                        raise NotSupported(f"-p cannot be used on {net.driver} network {net.name}: its "
                                           f"traffic never crosses the host, so nothing can forward a host port")
                    if driver_class(net.driver).attachable:
                        atts.append(self._attach_record(tx, net, ep, static_ip, aliases, index=0))
                        changes = PortChanges(atts[0].ip, self._publish_records(tx, ep, net, specs))
            specs = None            # thousands of tuples for a port range: not kept for the reply
            try:
                self._apply_endpoint(ep, changes)
            except BaseException:
                self._undo_endpoint(ep)
                raise
            changes = None
            log.info("endpoint %s created (%s mode) on %s%s", name, ep.mode, network,
                     "".join(f", {a.ip}" for a in atts))
            return self.inspect(ep.id)

    @staticmethod
    def _refuse_extras(mode, ip, aliases, specs):
        if ip or aliases or specs:
            raise InvalidArgument(f"--ip, --alias and -p cannot be used with network mode {mode}: "
                                  f"the endpoint has no interface of its own")

    def _attach_record(self, tx, net: Network, ep: Endpoint, static_ip, aliases, index: int) -> Attachment:
        pool = ipam.Pool(net.subnet, net.gateway, net.ip_range)
        leased = {ip: owner for _, ip, owner in tx.leases(net.id)}
        if static_ip:
            pool.check_static(ipaddress.IPv4Address(static_ip), net.name)
            if static_ip in leased:
                raise Conflict(f"address {static_ip} is already in use on network {net.name}")
            addr = static_ip
        else:
            addr = pool.allocate(set(leased), net.name, tx.get_meta(f"last_ip:{net.id}"))
            tx.set_meta(f"last_ip:{net.id}", addr)
        tx.lease(net.id, addr, ep.id)
        used = {a.ifname for a in tx.attachments(ep_id=ep.id)}
        ifname = next(f"eth{i}" for i in range(64) if f"eth{i}" not in used)
        att = Attachment(endpoint_id=ep.id, network_id=net.id, ip=addr, mac=mac_for_ip(addr), ifname=ifname,
                         host_ifname=veth_name(ep.id, net.id), aliases=list(aliases), index=index)
        tx.put_attachment(att)
        return att

    def _publish_records(self, tx, ep: Endpoint, net: Network, specs) -> list[tuple]:
        """Store ``specs`` as ``ep``'s port mappings. Only the mappings in the host-port range the
        specs use are read for the collision check, so publishing one port next to 10,000 reads
        about one. Returns them as ``PortChanges.added`` (the specs themselves where they name
        their host port: a range of 10,000 ports is not copied)."""
        if not specs:
            return []
        if net.internal:
            raise InvalidArgument(f"cannot publish ports on internal network {net.name}")
        # host_port * 2 + (1 for udp) -> the host address holding it, or a tuple of several
        # ("0.0.0.0" = all of them); int keys: a range of 10,000 ports makes few objects
        taken: dict[int, str | tuple[str, ...]] = {}
        for proto in sorted({s[0] for s in specs}):
            ports = [s[2] for s in specs if s[0] == proto and s[2] is not None]
            lo, hi = (min(ports), max(ports)) if ports else (EPHEMERAL_PORTS.start, EPHEMERAL_PORTS.start)
            if len(ports) < sum(1 for s in specs if s[0] == proto):     # some need a free port
                lo, hi = min(lo, EPHEMERAL_PORTS.start), max(hi, EPHEMERAL_PORTS.stop - 1)
            del ports
            for host_ip, host_port in tx.host_ports_in(proto, lo, hi):
                _take(taken, host_port * 2 + (proto == "udp"), host_ip)
        added = []
        for spec in specs:
            proto, host_ip, host_port, ctr_port = spec
            if host_port is None:
                host_port = self._free_host_port(taken, proto, host_ip)
                spec = (proto, host_ip, host_port, ctr_port)
            key = host_port * 2 + (proto == "udp")
            if _collides(taken.get(key), host_ip):
                raise Conflict(f"bind for {host_ip}:{host_port}/{proto} failed: port is already allocated")
            _take(taken, key, host_ip)
            added.append(spec)
        del taken
        tx.put_ports((ep.id, proto, host_ip, host_port, ctr_port) for proto, host_ip, host_port, ctr_port in added)
        return added

    @staticmethod
    def _free_host_port(taken, proto, host_ip) -> int:
        for port in EPHEMERAL_PORTS:
            if not _collides(taken.get(port * 2 + (proto == "udp")), host_ip):
                return port
        raise Conflict(f"all ports are allocated ({EPHEMERAL_PORTS.start}-{EPHEMERAL_PORTS.stop - 1}/{proto})")

    def _primary_index(self, state: DesiredState, ep: Endpoint) -> int:
        """The attachment that carries the default route: the first non-internal one."""
        atts = state.attachments_of(ep.id)
        for a in atts:
            if not state.network(a.network_id).internal:
                return a.index
        return atts[0].index if atts else -1

    def _apply_endpoint(self, ep: Endpoint, changes: PortChanges | None = None):
        """Make the kernel match ``ep``; ``changes``: the published ports this operation changed,
        when that is all it changed about them (None: the datapath works it out from the state)."""
        if ep.owned and ep.netns_name:
            netns.ensure_netns(ep.netns_name)
        state = self.state()
        primary = self._primary_index(state, ep)
        for att in state.attachments_of(ep.id):
            self.datapath.ensure_attachment(state.network(att.network_id), ep, att, att.index == primary)
        self.datapath.sync_policy(state, changes)
        self._write_resolv_conf(state, ep)
        self._refresh_dns(state)

    def _undo_endpoint(self, ep: Endpoint):
        """Remove every trace of ``ep`` from the kernel and the store (rollback and ``rm``)."""
        state = self.state()
        atts = state.attachments_of(ep.id)
        carrier = next((a for a in atts if not state.network(a.network_id).internal), None)
        with self.store.transaction() as tx:
            gone = [(p.proto, p.host_ip, p.host_port, p.container_port) for p in tx.ports(ep.id)]
            tx.delete_endpoint(ep.id)
        state = self.state()
        errors = []
        for att in atts:
            try:
                self.datapath.remove_attachment(next(n for n in state.networks if n.id == att.network_id), ep, att)
                if not ep.owned and ep.mode == "bridge":
                    remove_inside(ep.netns_path, att.ifname)
            except DocklineError as e:
                errors.append(str(e))
        try:
            self.datapath.sync_policy(state, PortChanges(carrier.ip if carrier else "", removed=gone))
        except DocklineError as e:
            errors.append(str(e))
        if ep.owned and ep.netns_name:
            self._kill_netns_processes(ep.netns_name)
            netns.remove_netns(ep.netns_name)
            shutil.rmtree(resolv_conf_dir(ep.netns_name), ignore_errors=True)
        self._refresh_dns(state)
        if errors:
            log.error("cleanup of endpoint %s incomplete: %s", ep.name, "; ".join(errors))

    @staticmethod
    def _kill_netns_processes(name: str):
        """Processes started with ``dockline run … CMD`` live in the netns; stop them with it."""
        path = netns.netns_path(name)
        try:
            target = os.stat(path)
        except FileNotFoundError:
            return
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                st = os.stat(f"/proc/{pid}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and int(pid) != os.getpid():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def endpoint_rm(self, ref: str) -> dict:
        with self._lock:
            with self.store.transaction() as tx:
                ep = self._endpoint(tx, ref)
                sharers = [e.name for e in tx.endpoints() if e.shares == ep.id]
                if sharers:
                    raise Conflict(f"endpoint {ep.name} shares its network namespace with "
                                   f"{', '.join(sorted(sharers))}; remove those first")
            self._undo_endpoint(ep)
            log.info("endpoint %s removed", ep.name)
            return {"removed": ep.name, "id": ep.id}

    def connect(self, network: str, endpoint: str, ip: str | None = None, aliases: list[str] | None = None) -> dict:
        aliases = [validate_name("alias", a) for a in (aliases or [])]
        static_ip = str(parse_ip(ip, "--ip")) if ip else None
        with self._lock:
            with self.store.transaction() as tx:
                net = self._network(tx, network)
                ep = self._endpoint(tx, endpoint)
                if ep.mode in ("host", "container", "none") or not driver_class(net.driver).attachable:
                    raise InvalidArgument(f"endpoint {ep.name} in {ep.mode} mode cannot be connected to "
                                          f"network {net.name}" if ep.mode != "bridge" else
                                          f"network {net.name} is a {net.driver} network; only networks with "
                                          f"interfaces of their own (bridge, macvlan) can be connected")
                current = tx.attachments(ep_id=ep.id)
                if any(a.network_id == net.id for a in current):
                    raise Conflict(f"endpoint {ep.name} is already connected to network {net.name}")
                index = max((a.index for a in current), default=-1) + 1
                att = self._attach_record(tx, net, ep, static_ip, aliases, index)
            try:
                self._apply_endpoint(ep)
            except BaseException:
                with self.store.transaction() as tx:
                    tx.delete_attachment(ep.id, net.id)
                    tx.release(net.id, att.ip)
                try:
                    self.datapath.remove_attachment(net, ep, att)
                    self.datapath.sync_policy(self.state())
                    self._refresh_dns(self.state())
                except DocklineError as e:
                    log.error("rollback of connect %s/%s incomplete: %s", net.name, ep.name, e)
                raise
            log.info("endpoint %s connected to %s as %s (%s)", ep.name, net.name, att.ip, att.ifname)
            return self.inspect(ep.id)

    def disconnect(self, network: str, endpoint: str) -> dict:
        with self._lock:
            with self.store.transaction() as tx:
                net = self._network(tx, network)
                ep = self._endpoint(tx, endpoint)
                att = next((a for a in tx.attachments(ep_id=ep.id) if a.network_id == net.id), None)
                if att is None:
                    raise NotFound(f"endpoint {ep.name} is not connected to network {net.name}")
                tx.delete_attachment(ep.id, net.id)
                tx.release(net.id, att.ip)
                remaining = tx.attachments(ep_id=ep.id)
                if not any(not tx.network(a.network_id).internal for a in remaining):
                    tx.delete_ports(ep.id)   # nothing left to carry them
            self.datapath.remove_attachment(net, ep, att)
            if not ep.owned:
                remove_inside(ep.netns_path, att.ifname)
            self._apply_endpoint(ep)
            log.info("endpoint %s disconnected from %s", ep.name, net.name)
            return self.inspect(ep.id)

    def exec_info(self, ref: str) -> dict:
        """What the CLI needs to run a command inside the endpoint."""
        with self.store.transaction() as tx:
            ep = self._endpoint(tx, ref)
        return {"netns_path": ep.netns_path, "netns_name": ep.netns_name if ep.owned else "",
                "mode": ep.mode, "name": ep.name}

    def reset(self) -> dict:
        """Remove every endpoint and user network, then our host-wide rules (tests, demos)."""
        with self._lock:
            state = self.state()
            for ep in sorted(state.endpoints, key=lambda e: 0 if e.shares else 1):
                self._undo_endpoint(ep)
            for net in state.networks:
                with self.store.transaction() as tx:
                    tx.delete_network(net.id)
                self.datapath.remove_network(net)
            self.datapath.teardown_host()
            self._refresh_dns(self.state())
            log.info("reset: removed %d endpoints and %d networks", len(state.endpoints), len(state.networks))
            return {"endpoints": len(state.endpoints), "networks": len(state.networks)}

    # ================================================================ DNS
    # ================================================================ nat rules
    def _nat_backend(self):
        if not self.datapath.nat_rules_supported:
            raise NotSupported(f"nat rules need the ebpf datapath or eBPF NAT (this agent runs datapath "
                               f"{self.datapath.name}): start it with --datapath ebpf or --datapath kernel+ebpfnat")
        return self.datapath

    def _nat_user_ruleset(self, text: str):
        from .nat.parser import parse_save
        from .nat.rules import Ruleset
        return parse_save(text)[0] if text else Ruleset()

    def _nat_set(self, ruleset) -> dict:
        """Validate, compile and apply ``ruleset`` as the user's nat table; store it only if the
        datapath took it (a refused rule set changes nothing)."""
        from .nat.managed import MANAGED_CHAINS
        dp = self._nat_backend()
        for c in MANAGED_CHAINS:
            if c in ruleset.chains:
                raise InvalidArgument(f"chain {c} is managed by dockline (published ports, masquerade)")
        text = ruleset.save()
        state = self.state()
        old = state.nat_rules
        state.nat_rules = text
        dp.check_nat(state)                          # raises with nothing applied
        with self.store.transaction() as tx:
            tx.set_meta(NAT_RULES_KEY, text)
        try:
            applied = dp.apply_nat(state)
        except Exception:
            with self.store.transaction() as tx:
                tx.set_meta(NAT_RULES_KEY, old)
            raise
        log.info("nat rules changed: %s", applied)
        return applied

    def nat_iptables(self, argv: list[str]) -> dict:
        """One ``iptables -t nat ...`` command on the user's nat table. Listing commands (-L, -S)
        show the control plane's chains too, as iptables would show Docker's."""
        from .nat.commands import apply, is_listing
        with self._lock:
            self._nat_backend()
            user = self._nat_user_ruleset(self.state().nat_rules)
            if is_listing(argv):
                from .nat.managed import merged_ruleset, published_as_rules
                state = self.state()
                rs, published = merged_ruleset(state, state.nat_rules)
                rs.chains["DOCKLINE"] = published_as_rules(published)
                _, out = apply(rs, argv)
                return {"output": out}
            from .nat.managed import MANAGED_CHAINS
            for a in argv:
                if a in MANAGED_CHAINS:
                    raise InvalidArgument(f"chain {a} is managed by dockline (published ports, masquerade): "
                                          "use your own chains")
            new, out = apply(user, argv)
            if new.save() != user.save():
                self._nat_set(new)
            return {"output": out}

    def nat_import(self, text: str) -> dict:
        """Replace the user's nat table with ``iptables-save`` output (its *nat block)."""
        from .nat.parser import parse_save
        with self._lock:
            self._nat_backend()
            ruleset, warnings = parse_save(text)
            applied = self._nat_set(ruleset)
            chains = len(ruleset.chains)
            rules = sum(len(r) for r in ruleset.chains.values())
            return {"chains": chains, "rules": rules, "warnings": warnings, "applied": applied}

    def nat_save(self) -> dict:
        """The user's nat table as iptables-save text (restorable by ``nat import`` and by
        ``iptables-restore``)."""
        with self._lock:
            return {"text": self._nat_user_ruleset(self.state().nat_rules).save()}

    def conntrack(self, limit: int = 1000) -> dict:
        dp = self._nat_backend()
        return {"flows": dp.conntrack(limit), "table": dp.ct_pressure()}

    def conntrack_gc(self) -> dict:
        with self._lock:
            return self._nat_backend().gc_conntrack()

    def _write_resolv_conf(self, state: DesiredState, ep: Endpoint):
        """``ip netns exec`` shows /etc/netns/<name>/resolv.conf as /etc/resolv.conf inside."""
        if not (ep.owned and ep.netns_name):
            return
        uses_dns = any(state.network(a.network_id).dns for a in state.attachments_of(ep.id))
        d = resolv_conf_dir(ep.netns_name)
        os.makedirs(d, exist_ok=True)
        if uses_dns:
            text = f"# written by dockline: the embedded resolver\nnameserver {RESOLVER_IP}\noptions ndots:0\n"
        else:
            text = "# written by dockline: the host's resolvers\n" + "".join(
                f"nameserver {u.split(':')[0]}\n" for u in self.host.dns_upstreams)
        with open(os.path.join(d, "resolv.conf"), "w") as f:
            f.write(text)

    def _refresh_dns(self, state: DesiredState):
        """Rebuild the name tables the resolver reads and open/close its listeners."""
        names: dict[str, dict[str, list[str]]] = {}
        ptr: dict[str, dict[str, list[str]]] = {}
        forwardable: dict[str, bool] = {}
        by_net: dict[str, list[Attachment]] = {}
        for a in state.attachments:
            by_net.setdefault(a.network_id, []).append(a)
        ep_by_id = {e.id: e for e in state.endpoints}
        for ep in state.endpoints:
            if ep.shares or ep.mode != "bridge":
                continue
            table: dict[str, list[str]] = {}
            rev: dict[str, list[str]] = {}
            dns_nets = [state.network(a.network_id) for a in state.attachments_of(ep.id)
                        if state.network(a.network_id).dns]
            for net in dns_nets:
                for a in by_net.get(net.id, []):
                    peer = ep_by_id[a.endpoint_id]
                    for n in [peer.name] + list(a.aliases) + [s.name for s in state.endpoints if s.shares == peer.id]:
                        table.setdefault(n.lower(), []).append(a.ip)
                    rev.setdefault(a.ip, []).append(peer.name)
            if dns_nets:
                names[ep.id], ptr[ep.id] = table, rev
                forwardable[ep.id] = any(not n.internal for n in dns_nets)
        self._names, self._ptr, self._forwardable = names, ptr, forwardable
        if self.dns is None:
            return
        for key in self._dns_keys - set(names):
            self.dns.remove_listener(key)
            self._dns_keys.discard(key)
        for key in names:
            ep = ep_by_id[key]
            if key not in self._dns_keys and os.path.exists(ep.netns_path):
                try:
                    self.dns.add_listener(key, ep.netns_path, RESOLVER_IP, 53)
                    self._dns_keys.add(key)
                except DocklineError as e:
                    log.error("DNS listener for %s: %s", ep.name, e)

    def dns_lookup(self, key: str, qname: str):
        return self._names.get(key, {}).get(qname.lower().rstrip("."))

    def dns_reverse(self, key: str, ip: str):
        return self._ptr.get(key, {}).get(ip)

    def dns_can_forward(self, key: str) -> bool:
        return self._forwardable.get(key, True)

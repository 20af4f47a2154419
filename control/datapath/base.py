"""A host's datapath, composed of parts, and the desired-state snapshot it is given.

    Datapath (the facade the engine calls)
      ├─ network drivers (drivers/): bridge, macvlan ... by Network.driver: devices, links
      ├─ forwarding engine: kernel (the bridge forwards) or ebpf (TC programs, redirect_peer)
      ├─ NAT engine: iptables (Docker's DNAT/MASQUERADE) or ebpf (compiled rules, conntrack)
      └─ the host's DOCKLINE-* iptables chains (filter rules on every datapath; nat rules with
         iptables NAT) and, when an eBPF part is chosen, the loaded programs and pinned maps
         (ebpf.EbpfRuntime) that both eBPF parts use.

Every ability is declared here; what a part cannot do raises NotSupported naming what is needed.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

from ..errors import NotSupported
from ..model import Attachment, Endpoint, Network, PortMapping
from .drivers import DRIVERS, driver_class

log = logging.getLogger("dockline.datapath")


class LazyPorts(Sequence):
    """``DesiredState.ports`` read from the store on first use: most changes never look at the
    published ports (the eBPF backend is handed what changed), and at 10,000 ports reading them
    all is most of a change's cost. The engine builds its snapshots under its lock, so what is
    read later is what would have been read at once."""

    def __init__(self, load: Callable[[], list[PortMapping]]):
        self._load, self._ports = load, None

    @property
    def loaded(self) -> list[PortMapping]:
        if self._ports is None:
            self._ports = self._load()
            self._load = None
        return self._ports

    def __getitem__(self, i):
        return self.loaded[i]

    def __len__(self):
        return len(self.loaded)

    def __iter__(self):
        return iter(self.loaded)

    def __eq__(self, other):
        return list(self) == list(other)

    def __repr__(self):
        return f"LazyPorts({'not read' if self._ports is None else len(self._ports)})"


@dataclass
class PortChanges:
    """The published ports of one endpoint that appear or go with it, which the engine knows
    without reading the others: ``added`` as ``(proto, host_ip, host_port, container_port)`` (all
    of a new endpoint's), ``removed`` as the same tuples (all of an endpoint that goes), landing
    on ``container_ip`` ("" when they were not published: no attachment carries them). No other
    endpoint's port has that address as its target. A backend may apply just these when nothing
    else changed since its last apply, and must otherwise make the whole of ``state.ports`` true."""

    container_ip: str = ""
    added: list[tuple] = field(default_factory=list)
    removed: list[tuple] = field(default_factory=list)


@dataclass
class DesiredState:
    """Everything the kernel must reflect, read from the store in one transaction (``ports`` may
    be a ``LazyPorts``, read on first use)."""

    networks: list[Network] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)
    nat_rules: str = ""          # the user's nat table (iptables-save text; `dockline iptables`)

    # Lookups by id go through indexes built on first use (a snapshot of 1,000 endpoints is
    # asked about one of them many times per operation). The record lists are not changed after
    # the snapshot is taken; ``nat_rules`` may be.
    def _index(self) -> dict:
        idx = self.__dict__.get("_idx")
        if idx is None:
            atts: dict[str, list[Attachment]] = {}
            for a in self.attachments:
                atts.setdefault(a.endpoint_id, []).append(a)
            sharers: dict[str, list[Endpoint]] = {}
            for e in self.endpoints:
                if e.shares:
                    sharers.setdefault(e.shares, []).append(e)
            idx = self.__dict__["_idx"] = {
                "nets": {n.id: n for n in self.networks}, "eps": {e.id: e for e in self.endpoints},
                "atts": {k: sorted(v, key=lambda a: a.index) for k, v in atts.items()}, "sharers": sharers}
        return idx

    def adopt_index(self, index: dict) -> None:
        """Use ``index`` (the shape ``_index`` builds, made by whoever built the lists, e.g. the
        store's record cache) instead of building it from the lists on first use."""
        self.__dict__["_idx"] = index

    def network(self, net_id: str) -> Network:
        return self._index()["nets"][net_id]

    def network_by_id(self, net_id: str) -> Network | None:
        return self._index()["nets"].get(net_id)

    def endpoint(self, ep_id: str) -> Endpoint:
        return self._index()["eps"][ep_id]

    def endpoint_by_id(self, ep_id: str) -> Endpoint | None:
        return self._index()["eps"].get(ep_id)

    def attachments_of(self, ep_id: str) -> list[Attachment]:
        return list(self._index()["atts"].get(ep_id, ()))

    def sharers_of(self, ep_id: str) -> list[Endpoint]:
        """The endpoints in ``container:`` mode sharing ``ep_id``'s network namespace."""
        return list(self._index()["sharers"].get(ep_id, ()))

    def port_target(self, pm: PortMapping) -> Attachment | None:
        """The attachment a published port lands on: the endpoint's first non-internal one
        (memoised per endpoint: thousands of ports share a few endpoints)."""
        cache = self.__dict__.setdefault("_targets", {})
        if pm.endpoint_id not in cache:
            cache[pm.endpoint_id] = next((a for a in self.attachments_of(pm.endpoint_id)
                                          if not self.network(a.network_id).internal
                                          and driver_class(self.network(a.network_id).driver).publishes_ports),
                                         None)
        return cache[pm.endpoint_id]


class ForwardingEngine(abc.ABC):
    """How frames move between the endpoints of one network and between networks."""

    name = "abstract"
    fast_path = False           # True: the endpoint programs deliver same-network frames themselves
    needs_bpf = False           # True: needs the eBPF runtime (programs and maps)
    needs_nat: str | None = None  # a NAT engine this one cannot work without (by name)

    @staticmethod
    @abc.abstractmethod
    def probe() -> tuple[bool, str]:
        """(usable, one-line reason)."""

    def info(self) -> dict:
        return {}


def _nat_needed(what: str, engine: str) -> NotSupported:
    return NotSupported(f"{what} needs the ebpf datapath or eBPF NAT (this agent runs {engine} NAT): start "
                        f"the agent with --datapath ebpf or --datapath kernel+ebpfnat")


class NatEngine(abc.ABC):
    """Published ports, masquerade, the user's nat rules and conntrack. The defaults are an
    engine without any of it beyond what iptables rules render."""

    name = "abstract"
    renders_iptables_nat = False    # True: the nat rules are iptables', rendered with the chains
    needs_bpf = False
    xdp_redirects = False           # True: XDP on an uplink redirects into endpoint veths (they need GRO)

    def __init__(self, host):
        self.host = host

    @staticmethod
    @abc.abstractmethod
    def probe() -> tuple[bool, str]:
        """(usable, one-line reason)."""

    def setup_host(self, dp) -> None: ...

    def teardown_host(self, dp) -> None: ...

    def net_flags(self, net: Network) -> int:
        """Flags this engine wants in the network's net_info entry (eBPF runtime only)."""
        return 0

    def sync(self, dp, state: DesiredState, changes: PortChanges | None) -> None:
        """Make translation match ``state`` (iptables NAT: done with the chains)."""

    def remove_orphans(self, dp, state: DesiredState) -> list[str]:
        return []

    def forget_endpoint(self, att: Attachment) -> int:
        """Drop the translation state of ``att``'s flows (it leaves); returns how many entries."""
        return 0

    def link_watch_fd(self) -> int | None:
        """A descriptor that becomes readable when the host's interfaces change, for an engine
        that must follow them (None: this one need not; netfilter hooks every interface)."""
        return None

    def refresh_interfaces(self, dp) -> bool:
        """Follow the host's interfaces since the last call (see ``link_watch_fd``). True: an
        interface the nat rules name changed, and they must be applied again."""
        return False

    @property
    def nat_rules_supported(self) -> bool:
        return False

    def check_nat(self, state: DesiredState) -> None:
        raise _nat_needed("nat rules", self.name)

    def apply_nat(self, state: DesiredState) -> dict:
        raise _nat_needed("nat rules", self.name)

    def conntrack(self, limit: int) -> list[dict]:
        raise _nat_needed("the conntrack view", self.name)

    def gc_conntrack(self) -> dict:
        raise _nat_needed("conntrack GC", self.name)

    def ct_pressure(self) -> dict:
        raise _nat_needed("conntrack pressure", self.name)

    def info(self) -> dict:
        return {}

    def stats(self, state: DesiredState) -> dict:
        return {}


class Datapath:
    """A host's datapath: the drivers of its networks, a forwarding engine and a NAT engine.

    Every method is idempotent: the agent calls them again at start (reconcile) and after a
    failure midway. ``host`` is the agent's HostConfig; ``name`` is what ``--datapath`` called it.
    """

    def __init__(self, host, forwarding: ForwardingEngine, nat: NatEngine, name: str = ""):
        from pyroute2 import IPRoute

        from .kernel import IptablesChains
        if forwarding.needs_nat and forwarding.needs_nat != nat.name:
            raise NotSupported(f"{forwarding.name} forwarding needs {forwarding.needs_nat} NAT "
                               f"(its endpoint program translates in place)")
        self.host = host
        self.forwarding, self.nat = forwarding, nat
        self.name = name or f"{forwarding.name}+{nat.name}nat"
        self.ipr = IPRoute()            # the host netns (the agent's)
        self.chains = IptablesChains()
        self.drivers = {n: cls(self) for n, cls in DRIVERS.items()}
        self.bpf = None                 # ebpf.EbpfRuntime when a part needs it (made by setup_host)
        self._departing: list[str] = []  # host interfaces dying with their namespaces
        self._wants_bpf = forwarding.needs_bpf or nat.needs_bpf

    def driver(self, net: Network):
        driver_class(net.driver)        # unknown: one-line InvalidArgument
        return self.drivers[net.driver]

    # ---------------------------------------------------------------- host
    def setup_host(self) -> None:
        """Host-wide prerequisites (forwarding sysctls, base chains, programs and maps)."""
        from ..netlink import links
        links.write_sysctl("net.ipv4.ip_forward", "1")
        self.chains.setup_host()
        if self._wants_bpf:
            if self.bpf is None:
                from .ebpf import EbpfRuntime
                self.bpf = EbpfRuntime(self.host, self.ipr)
            self.bpf.setup()
        self.nat.setup_host(self)

    def teardown_host(self) -> None:
        """Remove every host-wide object of ours (used by ``dockline system reset``)."""
        self.nat.teardown_host(self)
        if self.bpf is not None:
            self.bpf.teardown()
        self.chains.teardown_host()
        if self.bpf is not None:
            self.bpf.remove_pins()

    def host_routes(self) -> list:
        """The host's IPv4 route prefixes (automatic subnets avoid them, as Docker does)."""
        from ..netlink.links import host_routes
        return host_routes(self.ipr)

    # ---------------------------------------------------------------- networks
    def validate_network(self, net: Network, networks: list[Network]) -> None:
        """Driver checks of ``net``, about to be created (``networks``: the existing ones): a
        one-line InvalidArgument/NotFound/Conflict, and nothing changed."""
        cls = driver_class(net.driver)
        ok, why = cls.available()
        if not ok:
            raise NotSupported(f"driver {net.driver} is not available: {why}")
        self.drivers[net.driver].validate_network(net, networks)

    def ensure_network(self, net: Network) -> None:
        drv = self.driver(net)
        drv.ensure_network(net)
        self._sync_net_info(net)

    def _sync_net_info(self, net: Network) -> None:
        if self.bpf is not None and self.driver(net).host_device:
            from . import bpf_structs as S
            flags = (0 if self.forwarding.fast_path else S.NET_F_KERNEL_FWD) | self.nat.net_flags(net)
            self.bpf.ensure_net_info(net, flags)

    def remove_network(self, net: Network) -> None:
        if self.bpf is not None:
            self.bpf.remove_net_info(net)
        self.driver(net).remove_network(net)

    # ---------------------------------------------------------------- endpoints
    def ensure_attachment(self, net: Network, ep: Endpoint, att: Attachment, primary: bool) -> None:
        """Connect ``ep`` to ``net`` with ``att``'s address; ``primary`` gets the default route."""
        joined = self.driver(net).ensure_attachment(net, ep, att, primary)
        if self.bpf is None:
            return
        if joined.host_ifindex is not None:
            self._sync_net_info(net)     # the bridge MAC may have changed when its first port joined
            self.bpf.attach_port(net, ep, att, joined.host_ifindex, gro=self.nat.xdp_redirects)
        elif joined.inside_ifindex is not None:
            self.bpf.guard_inside(net, ep, att, joined.inside_ifindex)

    def remove_attachment(self, net: Network, ep: Endpoint, att: Attachment, netns_going: bool = False) -> None:
        """Take ``att`` off the kernel. ``netns_going``: the endpoint's namespace is removed next,
        and what lives in it may be left to die with it; ``finish_removals`` then waits for the
        host ends that go with it."""
        flushed = self.nat.forget_endpoint(att)
        if flushed:
            log.info("endpoint %s left %s: %d conntrack entries of its flows removed", ep.name, net.name, flushed)
        if self.bpf is not None:
            self.bpf.detach(net, ep, att, guarded=not self.driver(net).host_device)
        departing = self.driver(net).remove_attachment(net, ep, att, netns_going=netns_going)
        self._departing.extend(departing or ())

    def finish_removals(self, timeout: float = 20.0) -> None:
        """Wait until the host interfaces left to die with their namespaces are gone (the kernel
        removes them from a work queue, in batches); delete what is still there at ``timeout``."""
        from ..netlink import links
        names, self._departing = self._departing, []
        deadline = time.monotonic() + timeout
        while names and time.monotonic() < deadline:
            names = [n for n in names if links.link_index(self.ipr, n) is not None]
            if names:
                time.sleep(0.05)
        for name in names:
            log.warning("interface %s outlived its namespace: deleting it", name)
            links.remove_link(self.ipr, name)

    # ---------------------------------------------------------------- policy
    def sync_policy(self, state: DesiredState, changes: PortChanges | None = None) -> None:
        """Make NAT (published ports, masquerade) and isolation match ``state`` as a whole.
        ``changes``, when given, is exactly what this operation changed in the published ports
        since the previous call (a hint: the result must be the same without it)."""
        self.chains.sync(state, with_nat=self.nat.renders_iptables_nat)
        self.nat.sync(self, state, changes)

    # ---------------------------------------------------------------- reconcile
    def remove_orphans(self, state: DesiredState) -> list[str]:
        """Delete kernel objects of ours that ``state`` does not mention; return their names."""
        from ..netlink import links
        want, prefixes = set(), ()
        for drv in self.drivers.values():
            want |= drv.wanted_host_links(state)
            prefixes += drv.host_prefixes
        removed = []
        for name in links.host_links(self.ipr, prefixes):
            if name not in want:
                links.remove_link(self.ipr, name)
                removed.append(name)
        if self.bpf is not None:
            removed += self.bpf.remove_orphans(state)
        removed += self.nat.remove_orphans(self, state)
        return removed

    # ---------------------------------------------------------------- observability
    def link_watch_fd(self) -> int | None:
        return self.nat.link_watch_fd()

    def refresh_interfaces(self) -> bool:
        return bool(self.nat.refresh_interfaces(self))

    def info(self) -> dict:
        d = {"name": self.name, "forwarding_engine": self.forwarding.name, "nat_engine": self.nat.name}
        d.update(self.forwarding.info())
        d.update(self.nat.info())
        if self.bpf is not None:
            d.update(self.bpf.info())
        return d

    def stats(self, state: DesiredState | None = None) -> dict:
        """Counters: iptables rule counters where the kernel forwards or translates; verdicts per
        reason and per endpoint, NAT counters and conntrack where eBPF runs."""
        d = {"datapath": self.name}
        if not self.forwarding.fast_path:
            d["forward_rules"] = self.chains.counters()
        if self.bpf is not None:
            d.update(self.bpf.stats(state))
        d.update(self.nat.stats(state))
        return d

    # ---------------------------------------------------------------- NAT abilities
    @property
    def nat_rules_supported(self) -> bool:
        return self.nat.nat_rules_supported

    def check_nat(self, state: DesiredState) -> None:
        """Raise InvalidArgument if the rules in ``state`` do not compile (nothing is written)."""
        self.nat.check_nat(state)

    def apply_nat(self, state: DesiredState) -> dict:
        return self.nat.apply_nat(state)

    def conntrack(self, limit: int = 1000) -> list[dict]:
        return self.nat.conntrack(limit)

    def gc_conntrack(self) -> dict:
        return self.nat.gc_conntrack()

    def ct_pressure(self) -> dict:
        return self.nat.ct_pressure()

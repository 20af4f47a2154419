"""The contract every datapath backend implements, and the desired-state snapshot it is given."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

from ..model import Attachment, Endpoint, Network, PortMapping


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
                                          if not self.network(a.network_id).internal), None)
        return cache[pm.endpoint_id]


class Datapath(abc.ABC):
    """A way of moving packets for the networks in the store.

    Every method is idempotent: the agent calls them again at start (reconcile) and after a
    failure midway. ``host`` is the agent's HostConfig.
    """

    name = "abstract"

    def __init__(self, host):
        self.host = host

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> tuple[bool, str]:
        """(usable, one-line reason)."""

    @abc.abstractmethod
    def setup_host(self) -> None:
        """Host-wide prerequisites (forwarding sysctls, base chains)."""

    def validate_network(self, net: Network, networks: list[Network]) -> None:
        """Refuse (with a one-line DocklineError, changing nothing) a network about to be created
        that this datapath cannot build next to ``networks``. Bridge networks need nothing."""

    def host_routes(self) -> list:
        """The host's IPv4 route prefixes (automatic subnets must not overlap them)."""
        from ..netlink.links import host_routes
        return host_routes(self.ipr)

    @abc.abstractmethod
    def ensure_network(self, net: Network) -> None: ...

    @abc.abstractmethod
    def remove_network(self, net: Network) -> None: ...

    @abc.abstractmethod
    def ensure_attachment(self, net: Network, ep: Endpoint, att: Attachment, primary: bool) -> None:
        """Connect ``ep`` to ``net`` with ``att``'s address; ``primary`` gets the default route."""

    @abc.abstractmethod
    def remove_attachment(self, net: Network, ep: Endpoint, att: Attachment) -> None: ...

    @abc.abstractmethod
    def sync_policy(self, state: DesiredState, changes: PortChanges | None = None) -> None:
        """Make NAT (published ports, masquerade) and isolation match ``state`` as a whole.
        ``changes``, when given, is exactly what this operation changed in the published ports
        since the previous call (a hint: the result must be the same without it)."""

    @abc.abstractmethod
    def remove_orphans(self, state: DesiredState) -> list[str]:
        """Delete kernel objects of ours that ``state`` does not mention; return their names."""

    @abc.abstractmethod
    def teardown_host(self) -> None:
        """Remove every host-wide object of ours (used by ``dockline system reset``)."""

    def info(self) -> dict:
        return {"name": self.name}

    def stats(self, state: DesiredState) -> dict:
        """Counters of this datapath (verdicts, endpoints, NAT, conntrack: what it has)."""
        return {"datapath": self.name}

    # ---------------------------------------------------------------- NAT abilities
    # Declared here for every datapath; one whose NAT engine lacks them says so by name.
    @property
    def nat_rules_supported(self) -> bool:
        """Whether ``dockline iptables -t nat`` / ``nat import`` rules can be applied."""
        return False

    def _no_nat(self, what: str):
        from ..errors import NotSupported
        raise NotSupported(f"{what}: needs the ebpf NAT engine (this agent runs {self.name})")

    def check_nat(self, state: DesiredState) -> None:
        """Raise if ``state.nat_rules`` cannot be applied, changing nothing."""
        self._no_nat("nat rules")

    def apply_nat(self, state: DesiredState) -> dict:
        """Apply ``state.nat_rules`` with the control plane's own chains; returns a summary."""
        self._no_nat("nat rules")

    def conntrack(self, limit: int = 1000) -> list[dict]:
        self._no_nat("the conntrack table")

    def gc_conntrack(self) -> dict:
        self._no_nat("conntrack GC")

    def ct_pressure(self) -> dict:
        """Conntrack entries, capacity and pressure ({} where there is no table)."""
        return {}

"""The contract every datapath backend implements, and the desired-state snapshot it is given."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from ..model import Attachment, Endpoint, Network, PortMapping


@dataclass
class DesiredState:
    """Everything the kernel must reflect, read from the store in one transaction."""

    networks: list[Network] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)
    nat_rules: str = ""          # the user's nat table (iptables-save text; `dockline iptables`)

    def network(self, net_id: str) -> Network:
        return next(n for n in self.networks if n.id == net_id)

    def endpoint(self, ep_id: str) -> Endpoint:
        return next(e for e in self.endpoints if e.id == ep_id)

    def attachments_of(self, ep_id: str) -> list[Attachment]:
        return sorted((a for a in self.attachments if a.endpoint_id == ep_id), key=lambda a: a.index)

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
    def sync_policy(self, state: DesiredState) -> None:
        """Make NAT (published ports, masquerade) and isolation match ``state`` as a whole."""

    @abc.abstractmethod
    def remove_orphans(self, state: DesiredState) -> list[str]:
        """Delete kernel objects of ours that ``state`` does not mention; return their names."""

    @abc.abstractmethod
    def teardown_host(self) -> None:
        """Remove every host-wide object of ours (used by ``dockline system reset``)."""

    def info(self) -> dict:
        return {"name": self.name}

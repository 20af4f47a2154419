"""The network-driver seam: what kind of L2 segment a network is and how an endpoint joins it.

A driver knows its own devices (a bridge and veth pairs; macvlan sub-interfaces of a parent) and
the rules of its options; it does not forward or translate: the forwarding engine and the NAT
engine of the composed datapath (base.Datapath) do that, told by the driver's class abilities
below what the network needs. Drivers get the composed datapath as ``dp`` for its netlink socket
(``dp.ipr``, the host netns).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import NotSupported


@dataclass
class Joined:
    """What ``ensure_attachment`` made: ``host_ifindex``, the endpoint's port in the host netns (a
    veth end: the forwarding engine's hook), or ``inside_ifindex``, its own interface inside its
    netns when it has no host-side end (macvlan)."""

    host_ifindex: int | None = None
    inside_ifindex: int | None = None


class NetworkDriver:
    """Base of every driver; the defaults describe a driver that can do nothing."""

    name = ""
    creatable = False       # `dockline network create -d NAME`
    attachable = False      # endpoints get an interface of their own on it
    publishes_ports = False  # -p lands on its endpoints
    masquerades = False     # its egress leaves through the host stack (masquerade, isolation chains)
    host_device = False     # a device in the host netns routes for it (Network.bridge)
    #: interface-name prefixes of host-netns objects this driver creates (orphan collection)
    host_prefixes: tuple[str, ...] = ()

    def __init__(self, dp):
        self.dp = dp

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(usable on this kernel, one-line reason)."""
        return True, "built in"

    @classmethod
    def normalize_options(cls, options: dict) -> dict:
        """The driver options of a network about to be created, checked and canonical (pure)."""
        if options:
            raise NotSupported(f"driver {cls.name} takes no options (got {', '.join(sorted(options))})")
        return {}

    def validate_network(self, net, networks) -> None:
        """Refuse ``net`` (about to be created; ``networks`` = the existing ones) with a one-line
        InvalidArgument/NotFound/Conflict; change nothing."""

    def ensure_network(self, net) -> None:
        """Make the network's own host objects exist (idempotent)."""

    def remove_network(self, net) -> None: ...

    def ensure_attachment(self, net, ep, att, primary: bool) -> Joined:
        raise NotSupported(f"network {net.name} ({self.name}) has no interfaces for endpoints")

    def remove_attachment(self, net, ep, att, netns_going: bool = False) -> list[str]:
        """Take the endpoint's interface off ``net``. ``netns_going``: its namespace is removed
        next, so what lives inside may be left to die with it. Returns the host interfaces that
        will go with the namespace (the caller waits for them), else []."""
        return []

    def wanted_host_links(self, state) -> set[str]:
        """Names (with one of ``host_prefixes``) that ``state`` needs in the host netns."""
        return set()


class PseudoDriver(NetworkDriver):
    """The built-in ``host`` and ``null`` networks: a mode, not a segment."""


class HostDriver(PseudoDriver):
    name = "host"


class NullDriver(PseudoDriver):
    name = "null"

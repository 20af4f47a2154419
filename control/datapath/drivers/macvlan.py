"""Macvlan networks: each endpoint gets a macvlan sub-interface of a parent interface of the host,
with its own MAC, on the parent's segment (Docker's macvlan driver). Nothing of the network lives
in the host netns: no bridge, no gateway address (the gateway is a router on the parent's
segment), no NAT; the kernel's macvlan driver switches between sub-interfaces of one parent.

What macvlan cannot do, by its nature (README "macvlan networks"): the host cannot reach its own
macvlan endpoints through the parent (the parent does not see its sub-interfaces' frames), ports
cannot be published (the traffic never crosses the host stack), and a passthru parent carries
exactly one sub-interface.
"""

from __future__ import annotations

from ...config import BRIDGE_PREFIX, DEFAULT_BRIDGE, VETH_PREFIX
from ...errors import Conflict, InvalidArgument, NotFound
from ...netlink import links
from .base import Joined, NetworkDriver

MODES = ("bridge", "private", "vepa", "passthru")
DEFAULT_MODE = "bridge"
TMP_PREFIX = "dlm"      # a sub-interface's name in the host netns until it moves (a crash leaves it)


class MacvlanDriver(NetworkDriver):
    name = "macvlan"
    creatable = True
    attachable = True
    host_prefixes = (TMP_PREFIX,)

    @classmethod
    def normalize_options(cls, options):
        opts = dict(options or {})
        parent = opts.pop("parent", "") or ""
        mode = opts.pop("macvlan_mode", "") or DEFAULT_MODE
        if opts:
            raise InvalidArgument(f"unknown macvlan option {sorted(opts)[0]!r}: use parent, macvlan_mode")
        if not parent:
            raise InvalidArgument("macvlan network needs a parent interface: --parent IFACE (or -o parent=IFACE)")
        if mode not in MODES:
            raise InvalidArgument(f"invalid macvlan mode {mode!r}: choose from {', '.join(MODES)}")
        return {"parent": parent, "macvlan_mode": mode}

    def validate_network(self, net, networks):
        parent, mode = net.options["parent"], net.options["macvlan_mode"]
        if not net.subnet:
            raise InvalidArgument(f"macvlan network {net.name} needs --subnet: the parent's segment is not ours to pick")
        owner = next((n for n in networks if n.bridge and n.bridge == parent), None)
        if owner is not None or parent.startswith((BRIDGE_PREFIX, VETH_PREFIX, TMP_PREFIX)) or parent == DEFAULT_BRIDGE:
            what = f"network {owner.name}'s bridge" if owner else "an interface of dockline's"
            raise InvalidArgument(f"parent {parent} is {what}: a macvlan parent must be an interface "
                                  f"towards the outside (e.g. an uplink)")
        if links.link_index(self.dp.ipr, parent) is None:
            raise NotFound(f"parent interface {parent} not found on this host")
        for n in networks:
            if n.driver != self.name or n.options.get("parent") != parent:
                continue
            theirs = n.options.get("macvlan_mode", DEFAULT_MODE)
            if theirs != mode or mode == "passthru":
                raise Conflict(f"parent {parent} is already used by network {n.name} in macvlan mode {theirs}: "
                               + ("passthru takes the parent alone" if "passthru" in (mode, theirs)
                                  else f"another network on it must use mode {theirs} too"))

    def ensure_attachment(self, net, ep, att, primary):
        plen = int(net.subnet.split("/")[1])
        gateway = net.gateway if primary and not net.internal and net.gateway else None
        idx = links.ensure_macvlan(self.dp.ipr, net.options["parent"], TMP_PREFIX + att.host_ifname[3:],
                                   net.options["macvlan_mode"], ep.netns_path, att.ifname, att.mac,
                                   f"{att.ip}/{plen}", net.mtu, gateway)
        return Joined(inside_ifindex=idx)

    def remove_attachment(self, net, ep, att, netns_going=False):
        if not netns_going:         # otherwise it dies with the namespace
            links.remove_inside(ep.netns_path, att.ifname)
        links.remove_link(self.dp.ipr, TMP_PREFIX + att.host_ifname[3:])   # a crash's leftover
        return []


class IpvlanDriver(NetworkDriver):
    """Named so that ``-d ipvlan`` is refused with the reason, not as an unknown driver."""

    name = "ipvlan"

    @classmethod
    def available(cls):
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            ok, why = links.kind_supported(ipr, "ipvlan")
        return (False, why) if not ok else (False, "ipvlan networks are not implemented yet")


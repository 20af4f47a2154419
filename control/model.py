"""Desired-state records (networks, endpoints, attachments, port mappings) and the parsers that
turn user input into them. Pure: no I/O, no kernel, so every rule here is unit-tested directly."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field

from .errors import InvalidArgument

#: Names of networks that always exist, as in Docker: the default bridge plus the pseudo networks
#: that select the ``host`` and ``none`` modes.
DEFAULT_NETWORK = "bridge"
HOST_NETWORK = "host"
NONE_NETWORK = "none"
BUILTIN_NETWORKS = (DEFAULT_NETWORK, HOST_NETWORK, NONE_NETWORK)

MODES = ("bridge", "host", "none", "container")

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
_DIGITS = re.compile(r"[0-9]{1,5}")
MIN_MTU, MAX_MTU = 68, 65535


def validate_name(kind: str, name: str) -> str:
    """Docker's name rule: starts alphanumeric, then ``[a-zA-Z0-9_.-]``, at most 63 characters."""
    if not name or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid {kind} name {name!r}: use 1-63 characters [a-zA-Z0-9_.-], starting with a letter or digit")
    return name


@dataclass
class Network:
    """A layer-2 segment with one IPv4 subnet. ``bridge`` is the host-side device name."""

    id: str
    name: str
    driver: str                 # a name in datapath.drivers.DRIVERS: "bridge", "macvlan", or
                                # "host"/"null" (the built-in pseudo networks)
    subnet: str = ""            # canonical CIDR, e.g. "10.89.0.0/24"
    gateway: str = ""           # address of the bridge, inside subnet
    ip_range: str = ""          # sub-CIDR that dynamic allocation draws from ("" = whole subnet)
    internal: bool = False      # no egress masquerade, no traffic to or from other networks/outside
    mtu: int = 1500
    bridge: str = ""            # host-side bridge device name (<= 15 chars; "" when the driver has none)
    builtin: bool = False       # created by the agent; cannot be removed
    dns: bool = True            # embedded DNS by name; Docker's default bridge has none
    created: float = 0.0
    # the driver's own settings, canonical (macvlan: {"parent": IFACE, "macvlan_mode": MODE});
    # records stored before drivers had options load with {}
    options: dict = field(default_factory=dict)

    @property
    def is_pseudo(self) -> bool:
        return self.driver in ("host", "null")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Attachment:
    """One endpoint's interface on one network."""

    endpoint_id: str
    network_id: str
    ip: str
    mac: str
    ifname: str                 # name inside the endpoint's netns (eth0, eth1, ...)
    host_ifname: str            # host-side veth peer, a bridge port
    aliases: list = field(default_factory=list)
    index: int = 0              # attach order; the lowest non-internal one carries published ports

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def host_ips_collide(a: str, b: str) -> bool:
    """Two mappings of the same protocol and host port collide when they share the host address,
    or either is "0.0.0.0" (all addresses), as in Docker."""
    return "0.0.0.0" in (a, b) or a == b


@dataclass(slots=True)
class PortMapping:
    """One published port: host_ip:host_port/proto -> endpoint:container_port.
    ``host_ip`` "0.0.0.0" means every host address. (Slots: there can be tens of thousands.)"""

    endpoint_id: str
    proto: str
    host_ip: str
    host_port: int
    container_port: int

    def key(self) -> tuple:
        return (self.proto, self.host_ip, self.host_port)

    def collides_with(self, other: "PortMapping") -> bool:
        if self.proto != other.proto or self.host_port != other.host_port:
            return False
        return host_ips_collide(self.host_ip, other.host_ip)

    def __str__(self) -> str:
        return f"{self.container_port}/{self.proto} -> {self.host_ip}:{self.host_port}"

    def to_dict(self) -> dict:
        return {"endpoint_id": self.endpoint_id, "proto": self.proto, "host_ip": self.host_ip,
                "host_port": self.host_port, "container_port": self.container_port}


@dataclass
class Endpoint:
    """A network namespace that dockline networks ("a container").

    ``owned`` netns were created by dockline (named ``netns_name`` under /run/netns) and are removed
    with the endpoint; adopted ones (``--netns PATH|PID``) are left alone on removal.
    """

    id: str
    name: str
    mode: str                   # bridge | host | none | container
    netns_path: str             # path usable with setns(2); "" for host mode
    netns_name: str = ""        # name under /run/netns when dockline created it
    owned: bool = True
    shares: str = ""            # container mode: id of the endpoint whose netns is shared
    created: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Parsers for user input. Each raises InvalidArgument naming the field and the value.

def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise InvalidArgument(f"invalid subnet {text!r}: not an IPv4 CIDR like 10.1.0.0/24") from None
    if iface.version != 4:
        raise InvalidArgument(f"invalid subnet {text!r}: only IPv4 is supported")
    net = iface.network
    if iface.ip != net.network_address:
        raise InvalidArgument(f"invalid subnet {text}: it should be {net} (host bits are set)")
    if net.prefixlen > 30:
        raise InvalidArgument(f"invalid subnet {text}: network {net} is too small to allocate from")
    return net


def parse_gateway(text: str, subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    try:
        gw = ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidArgument(f"invalid gateway {text!r}: not an IPv4 address") from None
    if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(f"invalid gateway {gw}: not a host address of subnet {subnet}")
    return gw


def parse_ip_range(text: str, subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    try:
        rng = ipaddress.IPv4Network(text, strict=True)
    except ValueError:
        raise InvalidArgument(f"invalid ip-range {text!r}: not an IPv4 CIDR without host bits") from None
    if not rng.subnet_of(subnet):
        raise InvalidArgument(f"invalid ip-range {rng}: parent subnet {subnet} does not contain it")
    return rng


def parse_mtu(value) -> int:
    try:
        mtu = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"invalid MTU {value!r}: not a number") from None
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise InvalidArgument(f"invalid MTU {mtu}: must be between {MIN_MTU} and {MAX_MTU}")
    return mtu


def parse_ip(text: str, what: str = "address") -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text!r}: not an IPv4 address") from None


def _port_range(text: str, what: str, spec: str) -> list[int]:
    lo, sep, hi = text.partition("-")
    if not _DIGITS.fullmatch(lo) or (sep and not _DIGITS.fullmatch(hi)):
        raise InvalidArgument(f"invalid port spec {spec!r}: {what} port {text!r} is not a number")
    a = int(lo)
    b = int(hi) if sep else a
    for p in (a, b):
        if not 1 <= p <= 65535:
            raise InvalidArgument(f"invalid port spec {spec!r}: {what} port {p} is outside 1-65535")
    if b < a:
        raise InvalidArgument(f"invalid port spec {spec!r}: {what} port range {text} runs backwards")
    return list(range(a, b + 1))


def parse_port_spec(spec: str) -> list[tuple[str, str, int | None, int]]:
    """Parse Docker's ``-p [hostip:][hostport:]ctrport[/proto]`` (ports may be ranges).

    Returns ``[(proto, host_ip, host_port or None, container_port), ...]``; a host port of None
    means "pick a free one". Ranges must have equal lengths, as in Docker.
    """
    body, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp"):
        raise InvalidArgument(f"invalid port spec {spec!r}: unknown protocol {proto!r} (use tcp or udp)")
    parts = body.split(":")
    if len(parts) == 1:
        host_ip, host_part, ctr_part = "0.0.0.0", "", parts[0]
    elif len(parts) == 2:
        host_ip, host_part, ctr_part = "0.0.0.0", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host_part, ctr_part = parts[0] or "0.0.0.0", parts[1], parts[2]
    else:
        raise InvalidArgument(f"invalid port spec {spec!r}: expected [hostip:][hostport:]ctrport[/proto]")
    host_ip = str(parse_ip(host_ip, f"host IP in port spec {spec!r}:"))
    ctr_ports = _port_range(ctr_part, "container", spec)
    if not host_part:
        return [(proto, host_ip, None, c) for c in ctr_ports]
    host_ports = _port_range(host_part, "host", spec)
    if len(host_ports) != len(ctr_ports):
        raise InvalidArgument(
            f"invalid port spec {spec!r}: host range has {len(host_ports)} ports, container range {len(ctr_ports)}")
    return [(proto, host_ip, h, c) for h, c in zip(host_ports, ctr_ports)]


def mac_for_ip(ip: str) -> str:
    """Docker's rule: a locally administered MAC 02:42 followed by the four IPv4 bytes."""
    b = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{x:02x}" for x in b)

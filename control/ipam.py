"""Host-local IPAM: subnet pools for new networks and address allocation inside a network.

Pure logic over the leases the store holds; the caller runs it inside a store transaction so the
check-then-lease is atomic. Reserved in every subnet: the network address, the broadcast address
and the gateway (leased to the owner "gateway").
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from .errors import Conflict, Exhausted, InvalidArgument

#: Address space for networks created without --subnet, carved into /24s in order (podman's
#: defaults; Docker's 172.17/16 is left to a Docker engine that may share the host).
DEFAULT_POOL = ipaddress.IPv4Network("10.89.0.0/16")
DEFAULT_POOL_PREFIX = 24
#: Subnet of the built-in default network ("bridge", like docker0).
DEFAULT_BRIDGE_SUBNET = ipaddress.IPv4Network("10.88.0.0/16")

GATEWAY_OWNER = "gateway"


def overlapping(subnet: ipaddress.IPv4Network, taken: Iterable[ipaddress.IPv4Network]):
    """The first network in ``taken`` that overlaps ``subnet``, or None."""
    for other in taken:
        if subnet.overlaps(other):
            return other
    return None


def pick_subnet(taken: Iterable[ipaddress.IPv4Network],
                pool: ipaddress.IPv4Network = DEFAULT_POOL,
                prefix: int = DEFAULT_POOL_PREFIX) -> ipaddress.IPv4Network:
    """The first /prefix of ``pool`` that overlaps nothing in ``taken``."""
    taken = list(taken)
    for cand in pool.subnets(new_prefix=prefix):
        if overlapping(cand, taken) is None:
            return cand
    raise Exhausted(f"all predefined address pools have been fully subnetted ({pool} in /{prefix}s); "
                    f"pass --subnet")


class Pool:
    """The allocatable addresses of one network."""

    def __init__(self, subnet: str, gateway: str, ip_range: str = ""):
        self.subnet = ipaddress.IPv4Network(subnet)
        self.gateway = ipaddress.IPv4Address(gateway)
        self.range = ipaddress.IPv4Network(ip_range) if ip_range else self.subnet

    def check_static(self, ip: ipaddress.IPv4Address, network_name: str) -> None:
        """Reject a requested address that can never be leased (Docker's messages)."""
        if ip not in self.subnet:
            raise InvalidArgument(f"invalid address {ip}: it does not belong to subnet {self.subnet} "
                                  f"of network {network_name}")
        if ip == self.gateway:
            raise InvalidArgument(f"invalid address {ip}: it is the gateway of network {network_name}")
        if ip in (self.subnet.network_address, self.subnet.broadcast_address):
            raise InvalidArgument(f"invalid address {ip}: it is the network or broadcast address of {self.subnet}")

    def allocate(self, leased: set[str], network_name: str, last: str | None = None) -> str:
        """The next free address in the range, scanning round-robin after ``last`` (as CNI
        host-local does, so a released address is not handed out again at once)."""
        # Every address of the range is a candidate (Docker hands out a range's edges too); the
        # subnet's network, broadcast and gateway addresses are skipped below.
        first = int(self.range.network_address)
        end = int(self.range.broadcast_address)
        size = end - first + 1
        start = first
        if last:
            li = int(ipaddress.IPv4Address(last))
            if first <= li <= end:
                start = li + 1 if li < end else first
        reserved = {int(self.gateway), int(self.subnet.network_address), int(self.subnet.broadcast_address)}
        for i in range(size):
            cand = first + (start - first + i) % size
            if cand in reserved:
                continue
            s = str(ipaddress.IPv4Address(cand))
            if s not in leased:
                return s
        raise Exhausted(f"no available IPv4 addresses on network {network_name}: range {self.range} is fully leased")


def ensure_free(ip: str, leased_by: dict[str, str]) -> None:
    owner = leased_by.get(ip)
    if owner is not None:
        raise Conflict(f"address {ip} is already in use (by {owner})")

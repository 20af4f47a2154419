"""The network drivers, by the name ``network create -d`` takes and ``Network.driver`` stores."""

from __future__ import annotations

from ...errors import InvalidArgument
from .base import HostDriver, Joined, NetworkDriver, NullDriver
from .bridge import BridgeDriver
from .macvlan import IpvlanDriver, MacvlanDriver

DRIVERS: dict[str, type[NetworkDriver]] = {
    d.name: d for d in (BridgeDriver, MacvlanDriver, IpvlanDriver, HostDriver, NullDriver)}


def driver_class(name: str) -> type[NetworkDriver]:
    cls = DRIVERS.get(name)
    if cls is None:
        creatable = ", ".join(n for n, d in DRIVERS.items() if d.creatable)
        raise InvalidArgument(f"unknown driver {name!r}: choose from {creatable}")
    return cls


__all__ = ["DRIVERS", "Joined", "NetworkDriver", "driver_class"]

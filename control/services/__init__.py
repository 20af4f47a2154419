"""The control plane as services, each with one job, over one store and one datapath.

  networks    create / rm / ls / inspect, the built-in networks        (networks.py)
  endpoints   create / rm / connect / disconnect, ps / inspect / port    (endpoints.py)
  addressing  IPAM leases and published-port records, inside a txn      (addressing.py)
  names       embedded DNS tables by delta, resolv.conf                  (names.py)
  nat         the user's nat table, conntrack                            (nat.py)
  system      start (reconcile), reset, info, stats                     (system.py)

``Services`` is the composition root: the agent, the CLI (through the agent) and later adapters
(the Docker remote driver, CNI) call these services, never their internals. Unit tests build it
with in-memory fakes of the store, the datapath and the sandbox (tests/unit/fakes.py).
"""

from __future__ import annotations

from ..config import HostConfig
from .context import ServiceContext
from .endpoints import EndpointService
from .names import NameService
from .nat import NatService
from .networks import NetworkService
from .system import SystemService


def _kernel_datapath(host):
    from ..datapath import build_datapath
    return build_datapath("kernel", host)


class Services:
    def __init__(self, host: HostConfig, store=None, datapath=None, sandbox=None, dns=None):
        fallback = None
        if store is None:
            from ..store import SQLiteStore
            store = SQLiteStore(host.db_path)
        if datapath is None:
            from ..datapath import select_datapath
            datapath = select_datapath(host.datapath, host)
            if host.datapath in ("auto", "") and datapath.name != "kernel":
                fallback = lambda: _kernel_datapath(host)   # noqa: E731 (an auto choice may fall back)
        self.ctx = ServiceContext(host, store, datapath, sandbox)
        self.names = NameService(self.ctx, dns)
        self.networks = NetworkService(self.ctx)
        self.endpoints = EndpointService(self.ctx, self.names)
        self.nat = NatService(self.ctx)
        self.system = SystemService(self.ctx, self.networks, self.endpoints, self.names, fallback)

    @property
    def host(self) -> HostConfig:
        return self.ctx.host

    @property
    def datapath(self):
        return self.ctx.datapath

    @property
    def store(self):
        return self.ctx.store

    def set_dns(self, dns) -> None:
        """The resolver is made after the services (it asks ``names`` for its answers)."""
        self.names.dns = dns

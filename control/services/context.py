"""What every service shares: the host, the store, the datapath, the endpoint sandboxes, one lock.

Contract: a mutating service call holds ``ctx.lock`` from its first read to its last kernel step,
so the store does not change under it; the desired state it hands the datapath is read once per
operation with ``snapshot()``. Nothing here knows about one service in particular.
"""

from __future__ import annotations

import secrets
import threading

from ..config import HostConfig
from ..datapath.base import DesiredState, LazyPorts
from ..netlink import netns
from ..store.records import RecordCache
from .sandbox import NetnsSandbox

#: meta key holding the user's nat table (iptables-save text)
NAT_RULES_KEY = "nat_rules"


def new_id() -> str:
    """A record id as Docker makes them: 64 hex digits."""
    return secrets.token_hex(32)


class ServiceContext:
    def __init__(self, host: HostConfig, store, datapath, sandbox=None):
        self.host = host
        self.store = store
        self.datapath = datapath
        self.sandbox = sandbox or NetnsSandbox()
        self.lock = threading.RLock()
        self._cache = RecordCache(store)
        self._cache_lock = threading.Lock()

    def host_netns_path(self) -> str:
        return netns.netns_path(self.host.host_netns) if self.host.host_netns else "/proc/1/ns/net"

    def snapshot(self, ports: bool = False) -> DesiredState:
        """The desired state as of the store's latest revision. Networks, endpoints and attachments
        come from a cache the store's watch keeps current (its records are shared: never mutate
        them). The published ports are read on first use (``LazyPorts``) unless ``ports``: most
        changes never look at them; a caller without the lock that needs them asks for
        ``ports=True`` (everything read in one transaction)."""
        if ports:
            with self.store.transaction() as tx:
                return DesiredState(tx.networks(), tx.endpoints(), tx.attachments(), tx.ports(),
                                    tx.get_meta(NAT_RULES_KEY, "") or "")
        with self._cache_lock:      # the cache follows the store's watch: O(changes since the last)
            nets, eps, atts, nat, index = self._cache.read_indexed()
        state = DesiredState(nets, eps, atts, LazyPorts(self._read_ports), nat)
        state.adopt_index(index)
        return state

    def _read_ports(self):
        with self.store.transaction() as tx:
            return tx.ports()

    def host_routes(self):
        """The host's IPv4 route prefixes (automatic subnets avoid them); none where the datapath
        has no netlink access (unit tests)."""
        try:
            return self.datapath.host_routes()
        except Exception:
            return []

"""Per-host configuration: where a host's state, socket and pins live, and its tunables.

A "host" is the root network namespace in production, or a netns that a test or a multi-host
simulation made (design.md §2). Everything host-scoped is derived from the host name here, so two
agents on one machine never share a file, a socket or a device name.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from .errors import InvalidArgument

DEFAULT_HOST = "local"
STATE_ROOT = os.environ.get("DOCKLINE_STATE_ROOT", "/var/lib/dockline")
RUN_ROOT = os.environ.get("DOCKLINE_RUN_ROOT", "/run/dockline")
BPF_ROOT = "/sys/fs/bpf/dockline"

_HOST_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,31}")


def default_upstreams() -> list[str]:
    """The host's own resolvers (from /etc/resolv.conf), skipping loopback stubs."""
    ups = []
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith("127."):
                    ups.append(parts[1])
    except OSError:
        pass
    return ups


@dataclass
class HostConfig:
    name: str = DEFAULT_HOST
    host_netns: str = ""                 # "" = the agent's own (root) netns
    datapath: str = "auto"
    uplink_xdp: str = ""                 # uplink to get native XDP even if the probe says TC ("" = none)
    uplinks: list[str] = field(default_factory=list)   # interfaces that must have eBPF NAT (and may get XDP)
    nat_interfaces: str = "all"          # eBPF NAT on every interface ("all") or on these ("a,b")
    nat_exclude: list[str] = field(default_factory=list)   # names (globs) eBPF NAT stays off
    ct_gc_interval: float = 10.0         # seconds between conntrack GC runs (eBPF backend)
    metrics_addr: str = ""               # host:port for Prometheus /metrics ("" = off)
    dns_upstreams: list[str] = field(default_factory=default_upstreams)
    state_root: str = STATE_ROOT
    run_root: str = RUN_ROOT

    def __post_init__(self):
        if not _HOST_RE.fullmatch(self.name):
            raise InvalidArgument(f"invalid host name {self.name!r}: use 1-32 characters [a-zA-Z0-9_-]")

    # ---- paths
    @property
    def state_dir(self) -> str:
        return os.path.join(self.state_root, self.name)

    @property
    def db_path(self) -> str:
        return os.path.join(self.state_dir, "store.db")

    @property
    def socket_path(self) -> str:
        return socket_path(self.name, self.run_root)

    @property
    def bpf_dir(self) -> str:
        return os.path.join(BPF_ROOT, self.name)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.state_dir, "logs")

    # ---- kernel object names (<= 15 characters for interfaces)
    def endpoint_netns(self, endpoint_name: str) -> str:
        return f"dl-{self.name}-{endpoint_name}"

    @property
    def netns_prefix(self) -> str:
        return f"dl-{self.name}-"


def socket_path(host: str, run_root: str = RUN_ROOT) -> str:
    return os.path.join(run_root, f"{host}.sock")


BRIDGE_PREFIX = "dl-"
DEFAULT_BRIDGE = "dockline0"
VETH_PREFIX = "dlv"


def bridge_name(net_id: str, builtin_default: bool = False) -> str:
    return DEFAULT_BRIDGE if builtin_default else BRIDGE_PREFIX + net_id[:12]


def veth_name(ep_id: str, net_id: str) -> str:
    return VETH_PREFIX + hashlib.sha1((ep_id + net_id).encode()).hexdigest()[:11]


def resolv_conf_dir(netns_name: str) -> str:
    """``ip netns exec`` bind-mounts files from here over /etc inside the namespace."""
    return os.path.join("/etc/netns", netns_name)

"""Every pinned map, defined once for Python: the agent (ebpf.py), the rule writer (nat_maps.py),
the program tests (tests/ebpf) and the benchmarks (bench/prog_cost.py) open maps through it.

The C declarations (ebpf/lib/maps.h, and ebpf/lib/nat.h for the NAT stages' own maps) are the
definition; this module says, for each map, what Python needs and cannot read from a pin:

  * ``name``: the map's name in C, which is also its pin file under ``pin_root(bpf_dir)``;
  * ``handle``: the short name the agent's ``EbpfDatapath.maps`` and the tests' ``Maps`` use;
  * ``kind``, ``c_key``, ``c_value``: the map type and the C key and value types exactly as the
    declaration writes them (tests/ebpf/test_layout.py reads the headers and compares);
  * ``key``, ``value``: the ctypes mirrors of those C types (``MIRRORS``, bpf_structs.py), or
    ``value=None`` where Python has no mirror (nat_scratch: only the NAT stages use it);
  * ``percpu``: follows from the kind (a per-CPU map's value is read as one value per CPU).

test_layout.py checks every entry against the headers, against what bcc compiled (its Key and
Leaf types) and against the kernel's key_size/value_size of the pinned maps, and every mirror of
``MIRRORS`` against ebpf/layout_check.c.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from . import bpf_structs as S
from .loader import PinnedMap

#: C type as the headers write it -> its ctypes mirror ("be" types hold network-order bytes)
MIRRORS: dict[str, type] = {
    "__u8": ctypes.c_uint8,
    "__u32": ctypes.c_uint32,
    "__be32": ctypes.c_uint32,
    "__u64": ctypes.c_uint64,
    "struct endpoint_info": S.EndpointInfo,
    "struct ip_endpoint": S.IpEndpoint,
    "struct subnet_key": S.SubnetKey,
    "struct counter": S.Counter,
    "struct endpoint_stats": S.EndpointStats,
    "struct net_info": S.NetInfo,
    "struct ct_key": S.CtKey,
    "struct ct_entry": S.CtEntry,
    "struct nat_config": S.NatConfig,
    "struct nat_rule": S.NatRule,
    "struct nat_shape": S.NatShape,
    "struct nat_cls_key": S.NatClsKey,
    "struct nat_exact_key": S.NatExactKey,
    "struct nat_exact_val": S.NatExactVal,
    "struct frag_key": S.FragKey,
    "struct frag_ports": S.FragPorts,
    "struct sock_xlate": S.SockXlate,
}

#: C struct -> the byte packings (bpf_structs.byte_packing) derived from its mirror
PACKINGS = {
    "struct nat_exact_key": S.NAT_EXACT_KEY_BYTES,
    "struct nat_exact_val": S.NAT_EXACT_VAL_BYTES,
    "struct nat_cls_key": S.NAT_CLS_KEY_BYTES,
}

#: map kinds whose entries are slots, not keys: they cannot be deleted, only overwritten
ARRAY_KINDS = frozenset({"array", "percpu_array", "prog"})


@dataclass(frozen=True)
class MapSpec:
    name: str
    handle: str
    kind: str
    c_key: str
    c_value: str
    header: str = "maps.h"
    mirrored: bool = True       # False: no ctypes mirror of the value (read with bcc's type)

    @property
    def key(self) -> type:
        return MIRRORS[self.c_key]

    @property
    def value(self) -> type | None:
        return MIRRORS[self.c_value] if self.mirrored else None

    @property
    def percpu(self) -> bool:
        return self.kind.startswith("percpu_")

    @property
    def is_array(self) -> bool:
        return self.kind in ARRAY_KINDS

    def open(self, root: str | Path, value: type | None = None) -> PinnedMap:
        """The map pinned under ``root`` (``pin_root(bpf_dir)``), read and written with its
        mirrors (``value`` for a map without one: nat_scratch)."""
        value = value or self.value
        if value is None:
            raise TypeError(f"map {self.name} has no ctypes mirror of its value: pass value=")
        return PinnedMap(f"{root}/{self.name}", self.key, value, percpu=self.percpu)


MAPS: tuple[MapSpec, ...] = (
    MapSpec("endpoints_by_ifindex", "by_ifindex", "hash", "__u32", "struct endpoint_info"),
    MapSpec("endpoints_by_ip", "by_ip", "hash", "__be32", "struct ip_endpoint"),
    MapSpec("guarded_endpoints", "guarded", "hash", "__u32", "struct endpoint_info"),
    MapSpec("local_subnets", "subnets", "lpm_trie", "struct subnet_key", "__u8"),
    MapSpec("verdicts", "verdicts", "percpu_array", "__u32", "struct counter"),
    MapSpec("endpoint_stats", "ep_stats", "percpu_hash", "__u32", "struct endpoint_stats"),
    MapSpec("net_info", "net_info", "hash", "__u32", "struct net_info"),
    MapSpec("ct", "ct", "lru_hash", "struct ct_key", "struct ct_entry"),
    MapSpec("nat_config", "nat_config", "array", "__u32", "struct nat_config"),
    MapSpec("nat_rules", "nat_rules", "array", "__u32", "struct nat_rule"),
    MapSpec("nat_shapes", "nat_shapes", "array", "__u32", "struct nat_shape"),
    MapSpec("nat_cls", "nat_cls", "hash", "struct nat_cls_key", "__u32"),
    MapSpec("nat_exact", "nat_exact", "hash", "struct nat_exact_key", "struct nat_exact_val"),
    MapSpec("nat_ifaddr", "nat_ifaddr", "hash", "__u32", "__be32"),
    MapSpec("local_addrs", "local_addrs", "lpm_trie", "struct subnet_key", "__u8"),
    MapSpec("route_src", "route_src", "lpm_trie", "struct subnet_key", "__be32"),
    MapSpec("loopback_srcs", "loopback_srcs", "lpm_trie", "struct subnet_key", "__u8"),
    MapSpec("frag_ports", "frag_ports", "lru_hash", "struct frag_key", "struct frag_ports"),
    MapSpec("sock_xlate", "sock_xlate", "lru_hash", "__u64", "struct sock_xlate"),
    MapSpec("nat_counters", "nat_counters", "percpu_array", "__u32", "__u64"),
    # the NAT stages' own maps (lib/nat.h): per-flow scratch, and the tail-call program arrays
    # (values are program fds when written, program ids when read)
    MapSpec("nat_scratch", "nat_scratch", "percpu_array", "__u32", "struct nat_scratch", "nat.h",
            mirrored=False),
    MapSpec("nat_cls_search", "nat_cls_search", "percpu_array", "__u32", "struct nat_cls_search", "nat_rules.h",
            mirrored=False),
    MapSpec("nat_tail", "nat_tail", "prog", "__u32", "__u32", "nat.h"),
    MapSpec("nat_tail_xdp", "nat_tail_xdp", "prog", "__u32", "__u32", "nat.h"),
)

BY_NAME = {m.name: m for m in MAPS}
BY_HANDLE = {m.handle: m for m in MAPS}
#: the maps the control plane keeps state in (maps.h): what the agent and the tests open
DATA_MAPS = tuple(m for m in MAPS if m.header == "maps.h")


def pin_root(bpf_dir: str | Path) -> Path:
    """Where a host's maps are pinned: ``<bpf dir>/v<LAYOUT_VERSION>`` (loader.Programs.root)."""
    return Path(bpf_dir) / f"v{S.LAYOUT_VERSION}"


def open_map(root: str | Path, name: str, value: type | None = None) -> PinnedMap:
    """The pinned map ``name`` (its C name) under ``root``."""
    return BY_NAME[name].open(root, value)


def open_maps(root: str | Path, specs=DATA_MAPS) -> dict[str, PinnedMap]:
    """handle -> PinnedMap of every map of ``specs`` under ``root``; none stays open if one
    cannot be opened."""
    opened: dict[str, PinnedMap] = {}
    try:
        for spec in specs:
            opened[spec.handle] = spec.open(root)
    except BaseException:
        for m in opened.values():
            m.close()
        raise
    return opened

"""The ctypes mirrors of control/datapath/bpf_structs.py against what bcc compiled:

  * every key/value struct of ebpf/lib/structs.h, instantiated in ebpf/layout_check.c: size and
    every field's offset, size and type shape, recursively;
  * the real pinned maps of maps.h (from the session compile): bcc's Key/Leaf types and the
    kernel's key_size/value_size against the mirror types the control plane opens them with;
  * ebpf/lib/drop_reasons.h against bpf_structs.Verdict, DROP_BASE and NR_VERDICTS, both ways.
"""

from __future__ import annotations

import ctypes
import re

import pytest

from dockline.control.datapath import bpf_structs as S
from dockline.control.datapath import loader

pytestmark = pytest.mark.root

U8, U32 = ctypes.c_uint8, ctypes.c_uint32

#: layout_check.c table -> (mirror of its key, mirror of its value)
CHECK_TABLES = {
    "check_endpoint_info": (U32, S.EndpointInfo),
    "check_ip_endpoint": (U32, S.IpEndpoint),
    "check_subnet_key": (S.SubnetKey, U8),
    "check_counter": (U32, S.Counter),
    "check_endpoint_stats": (U32, S.EndpointStats),
    "check_net_info": (U32, S.NetInfo),
    "check_ct": (S.CtKey, S.CtEntry),
    "check_nat_config": (U32, S.NatConfig),
    "check_nat_rule": (U32, S.NatRule),
    "check_nat_exact": (S.NatExactKey, S.NatExactVal),
    "check_frag": (S.FragKey, S.FragPorts),
    "check_sock_xlate": (ctypes.c_uint64, S.SockXlate),
}

#: maps.h map -> (key mirror, value mirror) as control/datapath/ebpf.py opens them
PINNED_MAPS = {
    "endpoints_by_ifindex": (U32, S.EndpointInfo),
    "endpoints_by_ip": (U32, S.IpEndpoint),
    "guarded_endpoints": (U32, S.EndpointInfo),
    "local_subnets": (S.SubnetKey, U8),
    "verdicts": (U32, S.Counter),
    "endpoint_stats": (U32, S.EndpointStats),
    "net_info": (U32, S.NetInfo),
    "ct": (S.CtKey, S.CtEntry),
    "nat_config": (U32, S.NatConfig),
    "nat_rules": (U32, S.NatRule),
    "nat_exact": (S.NatExactKey, S.NatExactVal),
    "nat_ifaddr": (U32, U32),
    "local_addrs": (S.SubnetKey, U8),
    "frag_ports": (S.FragKey, S.FragPorts),
    "sock_xlate": (ctypes.c_uint64, S.SockXlate),
    "nat_counters": (U32, ctypes.c_uint64),
}


def shape(t) -> tuple:
    """A comparable description of a ctypes type: size, and per field its name, offset, size and
    shape (bcc's explicit __pad_* fields are layout, not members, and are left out)."""
    if isinstance(t, type) and issubclass(t, ctypes.Structure):
        fields = []
        for name, ftype, *_ in t._fields_:
            if name.startswith("__pad"):
                continue
            desc = getattr(t, name)
            fields.append((name, desc.offset, desc.size, shape(ftype)))
        return ("struct", ctypes.sizeof(t), tuple(fields))
    if isinstance(t, type) and issubclass(t, ctypes.Array):
        return ("array", t._length_, shape(t._type_))
    return ("scalar", ctypes.sizeof(t), "unsigned" if t(-1).value > 0 else "signed")


@pytest.fixture(scope="module")
def layout_bpf():
    from bcc import BPF
    b = BPF(src_file=str(loader.EBPF_DIR / "layout_check.c").encode(), cflags=[f"-I{loader.EBPF_DIR}"])
    try:
        yield b
    finally:
        b.cleanup()


@pytest.mark.parametrize("table", sorted(CHECK_TABLES))
def test_mirror_matches_compiled_layout(layout_bpf, table):
    key_mirror, value_mirror = CHECK_TABLES[table]
    t = layout_bpf[table.encode()]
    assert shape(t.Key) == shape(key_mirror), f"{table} key"
    assert shape(t.Leaf) == shape(value_mirror), f"{table} value"
    assert ctypes.sizeof(t.Key) == ctypes.sizeof(key_mirror)
    assert ctypes.sizeof(t.Leaf) == ctypes.sizeof(value_mirror)


def test_every_struct_and_mirror_is_checked():
    structs_h = (loader.EBPF_DIR / "lib" / "structs.h").read_text()
    layout_c = (loader.EBPF_DIR / "layout_check.c").read_text()
    structs = set(re.findall(r"^struct\s+(\w+)\s*\{", structs_h, re.M))
    instantiated = set(re.findall(r"struct\s+(\w+)", " ".join(re.findall(r"BPF_HASH\((.*?)\);", layout_c))))
    assert structs == instantiated, "every struct of structs.h must appear in layout_check.c"
    mirrors = {v for v in vars(S).values()
               if isinstance(v, type) and issubclass(v, ctypes.Structure) and v.__module__ == S.__name__}
    checked = {t for pair in CHECK_TABLES.values() for t in pair if issubclass(t, ctypes.Structure)}
    assert mirrors == checked, "every ctypes mirror must be compared"
    tables = set(re.findall(r"BPF_HASH\((\w+),", layout_c))
    assert tables == set(CHECK_TABLES)


def test_shape_sees_a_wrong_offset():
    """The comparison itself catches a mirror with a swapped or resized field."""
    class Swapped(ctypes.Structure):
        _fields_ = [("mac", ctypes.c_ubyte * 6), ("flags", ctypes.c_uint16), ("net_id", ctypes.c_uint32),
                    ("ip", ctypes.c_uint32)]

    class Narrow(ctypes.Structure):
        _fields_ = [("mac", ctypes.c_ubyte * 6), ("flags", ctypes.c_uint8), ("ip", ctypes.c_uint32),
                    ("net_id", ctypes.c_uint32)]

    assert shape(Swapped) != shape(S.EndpointInfo)
    assert shape(Narrow) != shape(S.EndpointInfo)
    assert ctypes.sizeof(Narrow) == ctypes.sizeof(S.EndpointInfo)   # same size, still caught


# ---------------------------------------------------------------- the real pinned maps
class BpfMapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (uapi/linux/bpf.h); the kernel fills min(len, its size)."""

    _fields_ = [("type", U32), ("id", U32), ("key_size", U32), ("value_size", U32),
                ("max_entries", U32), ("map_flags", U32), ("name", ctypes.c_char * 16)]


def map_info(fd: int) -> BpfMapInfo:
    from bcc import libbcc
    fn = libbcc.lib.bpf_obj_get_info_by_fd
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(U32)]
    fn.restype = ctypes.c_int
    info = BpfMapInfo()
    n = U32(ctypes.sizeof(info))
    assert fn(fd, ctypes.byref(info), ctypes.byref(n)) == 0
    return info


@pytest.mark.parametrize("name", sorted(PINNED_MAPS))
def test_pinned_map_matches_mirror(bpf_env, name):
    key_mirror, value_mirror = PINNED_MAPS[name]
    t = bpf_env.bcc_table(name)
    assert shape(t.Key) == shape(key_mirror), f"{name} key"
    leaf = getattr(t, "sLeaf", t.Leaf)   # per-CPU tables: Leaf is sLeaf * ncpus
    assert shape(leaf) == shape(value_mirror), f"{name} value"
    fd = loader.obj_get(str(bpf_env.root / name))
    try:
        info = map_info(fd)
    finally:
        import os
        os.close(fd)
    assert (info.key_size, info.value_size) == (ctypes.sizeof(key_mirror), ctypes.sizeof(value_mirror))
    assert info.name.decode() == name[:15]


def test_every_pinned_map_is_mirrored():
    maps_h = (loader.EBPF_DIR / "lib" / "maps.h").read_text()
    declared = set(re.findall(r"BPF_TABLE_PINNED7?\(\s*\"\w+\",[^,]+,[^,]+,\s*(\w+)", maps_h))
    assert declared == set(PINNED_MAPS)


# ---------------------------------------------------------------- drop_reasons.h
def drop_reason_defines() -> dict[str, int]:
    text = (loader.EBPF_DIR / "lib" / "drop_reasons.h").read_text()
    return {m[0]: int(m[1], 0) for m in re.findall(r"^#define\s+((?:VERDICT|DROP|NR)_\w+)\s+(\w+)", text, re.M)}


def test_drop_reasons_match_verdict_enum_both_ways():
    defines = drop_reason_defines()
    assert defines.pop("DROP_BASE") == S.DROP_BASE
    assert defines.pop("NR_VERDICTS") == S.NR_VERDICTS
    from_c = {re.sub(r"^(VERDICT|DROP)_", "", k): v for k, v in defines.items()}
    assert len(from_c) == len(defines), "a VERDICT_X and a DROP_X share a name"
    from_py = {v.name: int(v) for v in S.Verdict}
    assert from_c == from_py
    # drops are exactly the DROP_* names, and every code indexes the counter array
    drops_c = {re.sub(r"^DROP_", "", k) for k in defines if k.startswith("DROP_")}
    assert drops_c == {v.name for v in S.Verdict if v.is_drop}
    assert all(0 <= v < S.NR_VERDICTS for v in from_c.values())
    assert len(set(from_c.values())) == len(from_c), "a verdict code is used twice"

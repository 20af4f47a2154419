"""Every hand-written mirror of a C layout against what bcc compiled, and the map schema against
the C declarations:

  * every struct of ebpf/lib/structs.h, instantiated in ebpf/layout_check.c, against its ctypes
    mirror (control/datapath/map_schema.MIRRORS, bpf_structs.py): size and every field's offset,
    size and type shape, recursively; and the byte packings derived from them (map_schema.PACKINGS,
    nat_maps.py's exact entries) item by item, and by a round trip through bcc's type;
  * the kernel UAPI structs the control plane mirrors (libbpf.BpfProgInfo/BpfMapInfo,
    prog_run.SkBuff/XdpMd), also instantiated in layout_check.c, field by field;
  * map_schema.MAPS against the BPF_TABLE_PINNED declarations of ebpf/lib/*.h (name, kind, key and
    value C types) and against the maps of the session compile: bcc's Key/Leaf types and the
    kernel's key_size/value_size against the mirrors the control plane opens them with;
  * ebpf/lib/drop_reasons.h against bpf_structs.Verdict, DROP_BASE and NR_VERDICTS, both ways.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct

import pytest

from dockline.control.datapath import bpf_structs as S
from dockline.control.datapath import libbpf, loader, map_schema, prog_run

pytestmark = pytest.mark.root

#: kernel structs (uapi/linux/bpf.h) -> the mirror of their head the control plane passes the kernel
UAPI_MIRRORS = {
    "struct bpf_prog_info": libbpf.BpfProgInfo,
    "struct bpf_map_info": libbpf.BpfMapInfo,
    "struct __sk_buff": prog_run.SkBuff,
    "struct xdp_md": prog_run.XdpMd,
}
#: ctypes structs that mirror no header bcc can compile, and what checks them instead
UNCHECKABLE = {
    prog_run.BpfTestRunOpts: "libbpf's userspace struct (bpf/bpf.h, not installed): its size is "
                             "asserted at import, and every test run exercises it",
    libbpf.BpfProgLoadOpts: "libbpf's userspace struct (bpf/bpf.h, not installed): its size and "
                            "offsets are asserted at import, and every compile-cache load exercises it",
    libbpf.BpfMapCreateOpts: "libbpf's userspace struct (bpf/bpf.h, not installed): its size and "
                             "offsets are asserted at import; a compile-cache load into a fresh "
                             "folder exercises it",
}


def shape(t) -> tuple:
    """A comparable description of a ctypes type: size, and per field its name, offset, size and
    shape (bcc's explicit __pad_* fields are layout, not members, and are left out)."""
    if isinstance(t, type) and issubclass(t, ctypes.Structure | ctypes.Union):
        fields = []
        for name, ftype, *_ in t._fields_:
            if name.startswith("__pad"):
                continue
            desc = getattr(t, name)
            fields.append((name, desc.offset, desc.size, shape(ftype)))
        return ("struct" if issubclass(t, ctypes.Structure) else "union", ctypes.sizeof(t), tuple(fields))
    if isinstance(t, type) and issubclass(t, ctypes.Array):
        return ("array", t._length_, shape(t._type_))
    if t is ctypes.c_char:
        return ("scalar", 1, "char")
    return ("scalar", ctypes.sizeof(t), "unsigned" if t(-1).value > 0 else "signed")


def layout_tables() -> dict[str, tuple[str, str]]:
    """layout_check.c table -> (C key type, C value type)."""
    text = (loader.EBPF_DIR / "layout_check.c").read_text()
    return {name: (k.strip(), v.strip())
            for name, k, v in re.findall(r"^BPF_HASH\((\w+),\s*([^,]+),\s*([^,]+),\s*1\);", text, re.M)}


def pinned_declarations() -> set[tuple]:
    """(name, kind, C key, C value, file) of every BPF_TABLE_PINNED[7] under ebpf/, with
    the pin file name checked against the map name."""
    out = set()
    decl = re.compile(r'BPF_TABLE_PINNED7?\(\s*"(\w+)",\s*([^,]+?),\s*([^,]+?),\s*(\w+),[^;]*?'
                      r'PIN_DIR\s+"/(\w+)"', re.S)
    for path in sorted(loader.EBPF_DIR.rglob("*.[ch]")):
        for kind, key, value, name, pin in decl.findall(path.read_text()):
            assert pin == name, f"{path.name}: map {name} is pinned as {pin}"
            out.add((name, kind, key, value, path.name))
    return out


@pytest.fixture(scope="module")
def layout_bpf():
    from bcc import BPF
    b = BPF(src_file=str(loader.EBPF_DIR / "layout_check.c").encode(), cflags=[f"-I{loader.EBPF_DIR}"])
    try:
        yield b
    finally:
        b.cleanup()


def compiled_type(layout_bpf, c_type: str):
    """bcc's ctypes type of ``c_type`` from the first layout_check.c table that holds it."""
    for table, (k, v) in layout_tables().items():
        if c_type in (k, v):
            t = layout_bpf[table.encode()]
            return t.Key if k == c_type else t.Leaf
    raise KeyError(f"{c_type} is in no table of layout_check.c")


# ---------------------------------------------------------------- structs.h
OUR_TABLES = sorted(t for t, kv in layout_tables().items() if not set(kv) & set(UAPI_MIRRORS))


@pytest.mark.parametrize("table", OUR_TABLES)
def test_mirror_matches_compiled_layout(layout_bpf, table):
    c_key, c_value = layout_tables()[table]
    t = layout_bpf[table.encode()]
    for what, c_type, compiled in (("key", c_key, t.Key), ("value", c_value, t.Leaf)):
        mirror = map_schema.MIRRORS[c_type]
        assert shape(compiled) == shape(mirror), f"{table} {what}: {c_type} and its mirror {mirror.__name__} differ"
        assert ctypes.sizeof(compiled) == ctypes.sizeof(mirror)


def packing_items(packing: struct.Struct) -> list[tuple[int, int, str]]:
    """(offset, size, code) of every item of a "="-format struct.Struct (pad bytes are no item)."""
    assert packing.format.startswith("="), packing.format
    items, offset = [], 0
    for count, code in re.findall(r"(\d*)([xBHIQs])", packing.format[1:]):
        n = int(count or 1)
        if code in "xs":            # n pad bytes / one n-byte string
            if code == "s":
                items.append((offset, n, code))
            offset += n
            continue
        for _ in range(n):
            items.append((offset, struct.calcsize("=" + code), code))
            offset += struct.calcsize("=" + code)
    assert offset == packing.size
    return items


@pytest.mark.parametrize("c_struct", sorted(map_schema.PACKINGS))
def test_byte_packing_matches_compiled_layout(layout_bpf, c_struct):
    """nat_maps.py builds exact-table keys and values as bytes: its packings must put every
    member where bcc's compiled struct has it, and nothing where it has padding."""
    packing = map_schema.PACKINGS[c_struct]
    compiled = compiled_type(layout_bpf, c_struct)
    members = [(name, getattr(compiled, name)) for name, *_ in compiled._fields_
               if not name.startswith("__pad") and not name.startswith("pad")]
    items = packing_items(packing)
    assert packing.size == ctypes.sizeof(compiled), f"{c_struct}: packing {packing.format}"
    assert [(o, s) for o, s, _ in items] == [(d.offset, d.size) for _, d in members], (
        f"{c_struct}: packing {packing.format} does not place the members {[n for n, _ in members]} as compiled")
    # round trip: distinct values packed, read back through bcc's type
    values, expect = [], {}
    for (offset, size, code), (name, _) in zip(items, members):
        raw = bytes((offset * 16 + i + 1) & 0xFF for i in range(size))
        values.append(raw if code == "s" else int.from_bytes(raw, "little"))
        expect[name] = int.from_bytes(raw, "little")    # what a host-order slot holding it reads
    back = compiled.from_buffer_copy(packing.pack(*values))
    assert {name: getattr(back, name) for name in expect} == expect


def test_every_struct_and_mirror_is_checked():
    structs_h = (loader.EBPF_DIR / "lib" / "structs.h").read_text()
    structs = {f"struct {s}" for s in re.findall(r"^struct\s+(\w+)\s*\{", structs_h, re.M)}
    instantiated = {c for kv in layout_tables().values() for c in kv if c.startswith("struct ")}
    assert instantiated - structs == set(UAPI_MIRRORS), "layout_check.c instantiates an unknown struct"
    assert structs <= instantiated, f"structs of structs.h missing from layout_check.c: {structs - instantiated}"
    assert {c for c in map_schema.MIRRORS if c.startswith("struct ")} == structs, "every struct needs a mirror"
    mirrors = {v for v in vars(S).values()
               if isinstance(v, type) and issubclass(v, ctypes.Structure) and v.__module__ == S.__name__}
    assert mirrors == {m for c, m in map_schema.MIRRORS.items() if c.startswith("struct ")}
    packings = {id(v) for v in vars(S).values() if isinstance(v, struct.Struct)}
    assert packings == {id(p) for p in map_schema.PACKINGS.values()}, "every byte packing must be checked"
    assert set(map_schema.PACKINGS) <= structs
    for module in (libbpf, prog_run):
        others = {v for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, ctypes.Structure) and v.__module__ == module.__name__}
        assert others == {m for m in UAPI_MIRRORS.values() if m.__module__ == module.__name__} | \
            {m for m in UNCHECKABLE if m.__module__ == module.__name__}, f"an unchecked mirror in {module.__name__}"


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


def test_packing_items_see_a_moved_member():
    """The packing comparison itself: a format that shifts a member gives other items."""
    good = S.NAT_EXACT_KEY_BYTES
    assert [(o, s) for o, s, _ in packing_items(good)] == [(0, 4), (4, 4), (8, 2), (10, 1)]
    assert packing_items(struct.Struct("=I4sxs2s")) != packing_items(good)


# ---------------------------------------------------------------- kernel UAPI mirrors
def compiled_members(t) -> list[tuple]:
    """(name, offset, size, shape) of bcc's type's members up to its first bitfield: bcc's ctypes
    types place the members after a bitfield wrongly (ctypes opens a new storage unit)."""
    out = []
    for f in t._fields_:
        if len(f) == 3:
            break
        name = f[0]
        if not name.startswith("__pad"):
            d = getattr(t, name)
            out.append((name, d.offset, d.size, shape(f[1])))
    return out


@pytest.mark.parametrize("c_struct", sorted(UAPI_MIRRORS))
def test_uapi_mirror_matches_kernel_header(layout_bpf, c_struct):
    """A mirror of a kernel struct's head: every member the kernel header has within the mirror's
    size (up to bcc's first bitfield) is there with its name, offset, size and shape; a union
    (__bpf_md_ptr, bcc's __anon*) only by place and size; no mirror member lies elsewhere."""
    mirror = UAPI_MIRRORS[c_struct]
    compiled = compiled_type(layout_bpf, c_struct)
    want = [m for m in compiled_members(compiled) if m[1] < ctypes.sizeof(mirror)]
    assert want, f"{c_struct}: nothing compared"
    have = {getattr(mirror, name).offset: (name, getattr(mirror, name).offset, getattr(mirror, name).size,
                                           shape(ftype)) for name, ftype in mirror._fields_}
    for name, offset, size, shp in want:
        got = have.pop(offset, None)
        assert got is not None, f"{c_struct}.{name} (offset {offset}): no member of {mirror.__name__} there"
        if name.startswith("__anon"):
            assert got[2] == size, f"{c_struct}: {got[0]} is {got[2]} bytes, the union at {offset} {size}"
        else:
            assert got == (name, offset, size, shp), f"{c_struct}.{name}"
    compared_to = want[-1][1] + want[-1][2]
    assert not [m for off, m in have.items() if off < compared_to], f"{mirror.__name__} has members the header lacks"


# ---------------------------------------------------------------- the schema and the real pinned maps
def test_schema_matches_the_declarations():
    declared = pinned_declarations()
    schema = {(m.name, m.kind, m.c_key, m.c_value, m.header) for m in map_schema.MAPS}
    assert schema == declared, f"only in the schema: {schema - declared}; only in C: {declared - schema}"
    assert len(map_schema.BY_HANDLE) == len(map_schema.MAPS), "two maps share a handle"
    assert all(m.percpu == m.kind.startswith("percpu_") for m in map_schema.MAPS)
    for m in map_schema.MAPS:
        assert m.c_key in map_schema.MIRRORS and (not m.mirrored or m.c_value in map_schema.MIRRORS), m.name
    assert map_schema.pin_root("/x") == loader.Programs("/x").root


@pytest.mark.parametrize("name", [m.name for m in map_schema.MAPS])
def test_pinned_map_matches_mirror(bpf_env, name):
    spec = map_schema.BY_NAME[name]
    if spec.mirrored:
        t = bpf_env.bcc_table(name)
        assert shape(t.Key) == shape(spec.key), f"{name} key"
        leaf = getattr(t, "sLeaf", t.Leaf)   # per-CPU tables: Leaf is sLeaf * ncpus
        assert shape(leaf) == shape(spec.value), f"{name} value"
        value_size = ctypes.sizeof(spec.value)
    else:
        value_size = ctypes.sizeof(bpf_env.bcc_leaf_type(name))
    fd = libbpf.obj_get(str(map_schema.pin_root(bpf_env.folder) / name))
    try:
        info = libbpf.map_info(fd)
    finally:
        os.close(fd)
    assert (info.key_size, info.value_size) == (ctypes.sizeof(spec.key), value_size)
    assert info.name.decode() == name[:15]


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

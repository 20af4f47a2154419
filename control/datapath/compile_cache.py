"""A cache of what bcc compiled, shared across processes, so that a new host loads the entry
programs without running clang/LLVM again while keeping its own maps.

Why it works: the C side names each map's pin path with PIN_DIR (ebpf/lib/maps.h), and bcc turns
every map access into an ``ld_imm64 rX, <map fd>`` (src_reg BPF_PSEUDO_MAP_FD) holding the fd of
the map it created or opened for that path. PIN_DIR appears nowhere else in the instructions, so
two hosts' compiles differ only in those immediates. An entry keeps the instructions with those
immediates zeroed, which slot holds which map, and every map's definition; a new host opens its
own pinned maps (creating and pinning the missing ones from the definitions), writes their fds
into the slots and loads each function with BPF_PROG_LOAD (libbpf's ``bpf_prog_load``). Every call
into libbpf goes through libbpf.py, the one set of bindings.

Contract:
  * ``entry_key`` covers everything that changes the instructions except the pin folder: the
    digest of every ebpf source file and of the cflags other than PIN_DIR, the layout version, the
    program table, bcc's version and the kernel's release and build string. A change to any of
    them is a miss.
  * ``CompileCache.load`` either returns one loaded program fd per function or raises CacheMiss
    with a one-line reason (no entry, unreadable, corrupt, a pinned map that differs from the
    entry, the kernel refusing a program); it closes every fd it opened on the way. The caller
    then compiles as before. Maps it created stay pinned: a compile would create the same ones.
  * Entries are one JSON file per key, written to a temporary file and renamed (readers never
    see half an entry), with a sha256 of the payload that is checked on every read.
  * The instructions go into the kernel as root, so the cache directory must belong to the
    caller and be writable by nobody else; otherwise it is not used (CacheMiss).
  * Byte order: instructions are kept exactly as bcc produced them (host order, as the kernel
    wants them); the immediates written into the slots are host-order s32 like bcc's.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import json
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatapathError, InvalidArgument
from . import libbpf

#: where the entries live; "off" disables the cache (every new pin folder compiles)
CACHE_ENV = "DOCKLINE_BPF_CACHE"
DEFAULT_CACHE_DIR = "/var/cache/dockline/bpf"
#: bump when the entry layout or what it means changes: older entries then simply miss
FORMAT = 1

#: struct bpf_insn (uapi/linux/bpf.h): u8 code, u8 dst_reg:4 src_reg:4, s16 off, s32 imm
INSN = struct.Struct("=BBhi")
BPF_LD_IMM64 = 0x18          # BPF_LD | BPF_DW | BPF_IMM, the first half of a 16-byte insn
BPF_PSEUDO_MAP_FD = 1        # src_reg of an ld_imm64 whose imm is a map fd
#: map types whose maps cannot be rebuilt from (type, key, value, max_entries, flags) alone
_UNREBUILDABLE_MAPS = {12: "array_of_maps", 13: "hash_of_maps", 26: "struct_ops", 30: "bloom_filter"}


class CacheMiss(DatapathError):
    """The cache cannot serve this load; the message says why in one line."""


# ---------------------------------------------------------------- the kernel, through libbpf.py
def _map_info(fd: int) -> libbpf.BpfMapInfo:
    """libbpf.map_info, failing as CacheMiss: whatever the cache cannot read, it does not serve."""
    try:
        return libbpf.map_info(fd)
    except DatapathError as e:
        raise CacheMiss(str(e)) from None


def _is_map_fd(fd: int) -> bool:
    """Whether ``fd`` is a BPF map (its fdinfo has a map_type line; a program's has prog_type)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            return any(line.startswith("map_type:") for line in f)
    except OSError:
        return False


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# ---------------------------------------------------------------- entries
@dataclass(frozen=True)
class MapDef:
    """What it takes to create one host's copy of a map (all pinned under PIN_DIR)."""

    pin: str              # file name under the host's map folder
    name: str             # the kernel object name bcc gave it
    type: int
    key_size: int
    value_size: int       # per CPU for per-CPU maps, as the kernel counts it
    max_entries: int
    flags: int

    @classmethod
    def of(cls, pin: str, info: libbpf.BpfMapInfo) -> "MapDef":
        return cls(pin, info.name.decode(), info.type, info.key_size, info.value_size,
                   info.max_entries, info.map_flags)

    def shape(self) -> tuple:
        return (self.type, self.key_size, self.value_size, self.max_entries, self.flags)


@dataclass(frozen=True)
class FuncImage:
    """One function as bcc relocated it, ready to load once its map slots are filled."""

    name: str
    prog_type: int
    attach_type: int      # expected attach type, -1 for none (as bcc's load_func takes it)
    insns: bytes          # struct bpf_insn[], every map slot's imm zeroed
    slots: tuple          # ((instruction index of an ld_imm64, map pin name), ...)


@dataclass(frozen=True)
class Entry:
    key: str
    license: str
    kern_version: int
    maps: dict            # pin name -> MapDef
    funcs: dict           # function name -> FuncImage

    def to_payload(self) -> dict:
        return {"key": self.key, "license": self.license, "kern_version": self.kern_version,
                "maps": {p: vars(m) for p, m in sorted(self.maps.items())},
                "funcs": {n: {"prog_type": f.prog_type, "attach_type": f.attach_type,
                              "insns": base64.b64encode(f.insns).decode(), "slots": [list(s) for s in f.slots]}
                          for n, f in sorted(self.funcs.items())}}

    @classmethod
    def from_payload(cls, p: dict) -> "Entry":
        maps = {pin: MapDef(**m) for pin, m in p["maps"].items()}
        funcs = {}
        for name, f in p["funcs"].items():
            img = FuncImage(name, int(f["prog_type"]), int(f["attach_type"]), base64.b64decode(f["insns"]),
                            tuple((int(i), str(pin)) for i, pin in f["slots"]))
            _check_slots(img, maps)
            funcs[name] = img
        return cls(str(p["key"]), str(p["license"]), int(p["kern_version"]), maps, funcs)


def _checksum(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _ld_imm64_slots(insns: bytes):
    """(index, src_reg, imm) of every ld_imm64 in ``insns`` (a 16-byte insn: its second half is
    skipped, it is not an instruction of its own)."""
    i, n = 0, len(insns) // INSN.size
    while i < n:
        code, regs, _off, imm = INSN.unpack_from(insns, i * INSN.size)
        if code == BPF_LD_IMM64:
            yield i, regs >> 4, imm
            i += 2
        else:
            i += 1


def _check_slots(img: FuncImage, maps: dict) -> None:
    """The slots are exactly the map ld_imm64s of the instructions, each naming a known map."""
    if len(img.insns) % INSN.size or not img.insns:
        raise CacheMiss(f"cached {img.name} is not a whole number of instructions")
    found = {i for i, src, _ in _ld_imm64_slots(img.insns) if src == BPF_PSEUDO_MAP_FD}
    if found != {i for i, _ in img.slots}:
        raise CacheMiss(f"cached {img.name}: map slots do not match its instructions")
    missing = {pin for _, pin in img.slots} - set(maps)
    if missing:
        raise CacheMiss(f"cached {img.name} uses maps with no definition: {', '.join(sorted(missing))}")


def capture(name: str, prog_type: int, attach_type: int, insns: bytes, maps_by_id: dict) -> tuple:
    """(FuncImage, {pin: MapDef}) of one function just compiled in this process: ``insns`` is
    bcc's ``dump_func`` (its map immediates are fds of this process), ``maps_by_id`` maps a
    kernel map id to its (pin name, MapDef). Raises CacheMiss for code the cache cannot rebuild:
    a map that is not pinned under the host's folder, a map of a type that needs more than its
    definition, or an ld_imm64 of another kind than a map fd."""
    buf = bytearray(insns)
    slots, used = [], {}
    for i, src, imm in _ld_imm64_slots(insns):
        if src == 0:
            continue
        if src != BPF_PSEUDO_MAP_FD:
            raise CacheMiss(f"{name} has an ld_imm64 of kind {src}, which the cache cannot relocate")
        mid = _map_info(imm).id
        if mid not in maps_by_id:
            raise CacheMiss(f"{name} uses a map (id {mid}) that is not pinned in the host's folder")
        pin, mdef = maps_by_id[mid]
        if mdef.type in _UNREBUILDABLE_MAPS:
            raise CacheMiss(f"{name} uses map {pin} of type {_UNREBUILDABLE_MAPS[mdef.type]}, "
                            f"which the cache cannot rebuild")
        INSN.pack_into(buf, i * INSN.size, *INSN.unpack_from(buf, i * INSN.size)[:3], 0)
        slots.append((i, pin))
        used[pin] = mdef
    return FuncImage(name, prog_type, attach_type, bytes(buf), tuple(slots)), used


def pinned_maps_by_id(map_dir: Path) -> dict:
    """kernel map id -> (pin name, MapDef) of every map pinned directly in ``map_dir``."""
    out = {}
    for p in sorted(map_dir.iterdir()) if map_dir.exists() else []:
        if not p.is_file():
            continue
        fd = libbpf.obj_get_if_pinned(str(p))
        if fd is None:
            continue
        try:
            if not _is_map_fd(fd):
                continue
            info = _map_info(fd)
        finally:
            os.close(fd)
        out[info.id] = (p.name, MapDef.of(p.name, info))
    return out


def entry_key(source_digest: str, layout_version: int, programs: dict) -> str:
    """The cache key: ``source_digest`` (ebpf sources + cflags other than PIN_DIR), the layout
    version, the program table (function, type, attach type), bcc's and the kernel's identity."""
    import bcc
    u = os.uname()
    ident = json.dumps([FORMAT, source_digest, layout_version, sorted(programs.items()),
                        getattr(bcc, "__version__", "?"), u.release, u.version, u.machine])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


# ---------------------------------------------------------------- the cache
def cache_dir_from_env(env=os.environ) -> Path | None:
    """The cache directory DOCKLINE_BPF_CACHE names (default DEFAULT_CACHE_DIR), or None when it
    says ``off``."""
    raw = env.get(CACHE_ENV)
    if raw is None:
        return Path(DEFAULT_CACHE_DIR)
    if raw.strip().lower() in ("off", "0", "no", "none", ""):
        return None
    if not os.path.isabs(raw):
        raise InvalidArgument(f"{CACHE_ENV} must be an absolute directory or 'off', not {raw!r}")
    return Path(raw)


class CompileCache:
    """One directory of entries, ``<dir>/<key>.json``."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    @classmethod
    def from_env(cls) -> "CompileCache | None":
        d = cache_dir_from_env()
        return cls(d) if d is not None else None

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def _check_dir(self, create: bool) -> None:
        """The directory exists (made 0700 when ``create``), is ours and nobody else can write it."""
        if create:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            st = self.dir.stat()
        except FileNotFoundError:
            raise CacheMiss(f"no cache directory {self.dir}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise CacheMiss(f"cache path {self.dir} is not a directory")
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise CacheMiss(f"cache directory {self.dir} is not ours alone (owner uid {st.st_uid}, "
                            f"mode {stat.S_IMODE(st.st_mode):o}); not using it")

    # ---- read
    def read(self, key: str) -> Entry:
        self._check_dir(create=False)
        path = self.path(key)
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise CacheMiss(f"no entry {path.name}") from None
        except (OSError, ValueError) as e:
            raise CacheMiss(f"entry {path.name} is unreadable ({type(e).__name__}: {e})") from None
        try:
            if doc.get("format") != FORMAT:
                raise CacheMiss(f"entry {path.name} has format {doc.get('format')!r}, not {FORMAT}")
            payload = doc["payload"]
            if _checksum(payload) != doc.get("sha256"):
                raise CacheMiss(f"entry {path.name} is corrupt (checksum mismatch)")
            entry = Entry.from_payload(payload)
        except CacheMiss:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CacheMiss(f"entry {path.name} is corrupt ({type(e).__name__}: {e})") from None
        if entry.key != key:
            raise CacheMiss(f"entry {path.name} holds key {entry.key}")
        return entry

    # ---- write
    def store(self, entry: Entry) -> Path:
        """Write ``entry`` atomically (temporary file in the same directory, then rename)."""
        self._check_dir(create=True)
        payload = entry.to_payload()
        data = json.dumps({"format": FORMAT, "sha256": _checksum(payload), "payload": payload},
                          sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{entry.key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(entry.key))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return self.path(entry.key)

    # ---- load
    def load(self, key: str, map_dir: Path, functions: list[str]) -> dict:
        """Load ``functions`` from the entry for ``key`` against the maps pinned in ``map_dir``
        (creating and pinning the missing ones): {function: program fd}. Raises CacheMiss; on
        any failure every fd it opened is closed again."""
        entry = self.read(key)
        absent = [fn for fn in functions if fn not in entry.funcs]
        if absent:
            raise CacheMiss(f"entry {key} lacks {', '.join(absent)}")
        needed = {pin for fn in functions for _, pin in entry.funcs[fn].slots}
        map_fds: dict[str, int] = {}
        progs: dict[str, int] = {}
        try:
            for pin in sorted(needed):
                map_fds[pin] = _open_or_create_map(map_dir, entry.maps[pin])
            for fn in functions:
                progs[fn] = _load_function(entry, entry.funcs[fn], map_fds)
        except BaseException:
            _close_all(progs.values())
            raise
        finally:
            _close_all(map_fds.values())   # the programs hold their own references
        return progs


def _open_or_create_map(map_dir: Path, m: MapDef) -> int:
    """An fd of this host's map ``m.pin``: the pinned one if its shape matches the entry, else a
    new map created from the definition and pinned (the same thing bcc does for a fresh folder)."""
    path = map_dir / m.pin
    for _attempt in range(2):
        fd = libbpf.obj_get_if_pinned(str(path))
        if fd is not None:
            try:
                have = MapDef.of(m.pin, _map_info(fd))
            except BaseException:
                os.close(fd)
                raise
            if have.shape() != m.shape():
                os.close(fd)
                raise CacheMiss(f"pinned map {path} is (type, key, value, max, flags) {have.shape()}, "
                                f"the cache entry has {m.shape()}")
            return fd
        opts = libbpf.BpfMapCreateOpts(sz=ctypes.sizeof(libbpf.BpfMapCreateOpts), map_flags=m.flags)
        fd = libbpf.lib().bpf_map_create(m.type, m.name.encode(), m.key_size, m.value_size,
                                         m.max_entries, ctypes.byref(opts))
        if fd < 0:
            raise CacheMiss(f"creating map {m.pin} failed: {os.strerror(libbpf.last_error(fd))}")
        rc = libbpf.lib().bpf_obj_pin(fd, str(path).encode())
        if rc == 0:
            return fd
        err = libbpf.last_error(rc)
        os.close(fd)
        if err != errno.EEXIST:     # EEXIST: another process pinned it first; open that
            raise CacheMiss(f"pinning map {path} failed: {os.strerror(err)}")
    raise CacheMiss(f"pinned map {path} appeared and vanished")


def _load_function(entry: Entry, img: FuncImage, map_fds: dict) -> int:
    buf = bytearray(img.insns)
    for i, pin in img.slots:
        head = INSN.unpack_from(buf, i * INSN.size)[:3]
        INSN.pack_into(buf, i * INSN.size, *head, map_fds[pin])
    insns = bytes(buf)
    name = img.name[:libbpf.BPF_OBJ_NAME_LEN - 1].encode()     # what bcc names it (bpftool, detach_named)
    opts = libbpf.BpfProgLoadOpts(sz=ctypes.sizeof(libbpf.BpfProgLoadOpts), kern_version=entry.kern_version,
                                  expected_attach_type=max(img.attach_type, 0))
    load = libbpf.lib().bpf_prog_load
    fd = load(img.prog_type, name, entry.license.encode(), insns, len(insns) // INSN.size, ctypes.byref(opts))
    if fd >= 0:
        return fd
    err = libbpf.last_error(fd)
    log = ctypes.create_string_buffer(1 << 20)       # once more with the verifier's log, for the reason
    opts.log_level, opts.log_size, opts.log_buf = 1, len(log), ctypes.cast(log, ctypes.c_char_p)
    fd = load(img.prog_type, name, entry.license.encode(), insns, len(insns) // INSN.size, ctypes.byref(opts))
    if fd >= 0:
        return fd
    last = next((ln for ln in reversed(log.value.decode(errors="replace").splitlines()) if ln.strip()), "")
    raise CacheMiss(f"the kernel refused cached {img.name}: {os.strerror(err)}" + (f" ({last})" if last else ""))

"""The only module that imports bcc: compiles ebpf/*.c, pins programs and maps, reopens them.

Contract:
  * Maps live at ``<bpf dir>/v<LAYOUT_VERSION>/<map>`` (the C side gets the folder as PIN_DIR).
  * Programs are pinned at ``<bpf dir>/v<LAYOUT_VERSION>/progs/<digest>/<function>``, where the
    digest covers every source file and the cflags. If the pins for the current digest exist,
    ``load_programs`` reopens them and compiles nothing (a restart with unchanged sources must
    not recompile on the data path).
  * Map access after a restart goes through ``PinnedMap`` (raw bpf syscalls on the pinned fd with
    the ctypes mirrors of bpf_structs.py), so it needs no compile either.
  * bcc rewrites map calls (``m.lookup(&k)``) only in the text it is handed, not in included
    files, so ``spliced_source`` inlines every ``#include "lib/..."`` (each file once, include
    guards kept) before compiling: shared code with map access can live in ebpf/lib/*.h.
  * A new pin folder first tries the compile cache (compile_cache.py, DOCKLINE_BPF_CACHE): what
    bcc compiled for another folder with the same sources and cflags, loaded against this
    folder's own maps without clang. A miss compiles and fills the cache. ``origin`` says which
    of the three happened: "pins", "cache" or "compiled".
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatapathError
from . import compile_cache
from .bpf_structs import LAYOUT_VERSION
from .libbpf import lib as _lib, obj_get  # noqa: F401  (the bindings: libbpf.py)

log = logging.getLogger("dockline.loader")

EBPF_DIR = Path(__file__).resolve().parents[2] / "ebpf"
if not (EBPF_DIR / "tc_endpoint.c").exists():   # installed layout: dockline/ebpf beside control
    from ... import ebpf as _ebpf_pkg
    EBPF_DIR = Path(_ebpf_pkg.SRC_DIR)

#: bpf_attach_type values (uapi/linux/bpf.h) of the socket-layer programs
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_INET4_GETPEERNAME = 29
BPF_CGROUP_INET4_GETSOCKNAME = 31

#: nat_tail slots (ebpf/lib/nat.h NAT_TAIL_*): the tail-called stages of a new flow's NAT
NAT_TAIL = {0: "tc_nat_eval", 1: "tc_nat_route", 2: "tc_nat_commit", 3: "tc_nat_classify"}
#: the same slots of nat_tail_xdp (a program array holds one program type): the XDP stages
NAT_TAIL_XDP = {0: "xdp_nat_eval", 1: "xdp_nat_route", 2: "xdp_nat_commit", 3: "xdp_nat_classify"}

#: entry file -> [(function, program type, expected attach type or -1)]
PROGRAMS = {
    "tc_endpoint.c": [("tc_from_endpoint", "SCHED_CLS", -1), ("tc_to_endpoint", "SCHED_CLS", -1),
                      ("tc_guard_endpoint", "SCHED_CLS", -1)],
    "tc_uplink.c": [("tc_uplink_ingress", "SCHED_CLS", -1), ("tc_uplink_egress", "SCHED_CLS", -1)],
    "tc_loopback.c": [("tc_loopback", "SCHED_CLS", -1)],
    "tc_nat.c": [("tc_nat_eval", "SCHED_CLS", -1), ("tc_nat_route", "SCHED_CLS", -1),
                 ("tc_nat_commit", "SCHED_CLS", -1), ("tc_nat_classify", "SCHED_CLS", -1)],
    "xdp_uplink.c": [("xdp_uplink", "XDP", -1)],
    "xdp_nat.c": [("xdp_nat_eval", "XDP", -1), ("xdp_nat_route", "XDP", -1), ("xdp_nat_commit", "XDP", -1),
                  ("xdp_nat_classify", "XDP", -1)],
    "cgroup_sock.c": [("sock_connect4", "CGROUP_SOCK_ADDR", BPF_CGROUP_INET4_CONNECT),
                      ("sock_sendmsg4", "CGROUP_SOCK_ADDR", BPF_CGROUP_UDP4_SENDMSG),
                      ("sock_recvmsg4", "CGROUP_SOCK_ADDR", BPF_CGROUP_UDP4_RECVMSG),
                      ("sock_getpeername4", "CGROUP_SOCK_ADDR", BPF_CGROUP_INET4_GETPEERNAME),
                      ("sock_getsockname4", "CGROUP_SOCK_ADDR", BPF_CGROUP_INET4_GETSOCKNAME)],
}

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


def spliced_source(path: Path, _seen: set | None = None) -> str:
    """The text of ``path`` with every local ``#include "..."`` replaced by that file's spliced
    text (each file once), so that bcc sees all code, and rewrites its map calls, in one text."""
    seen = set() if _seen is None else _seen
    path = path.resolve()
    seen.add(path)

    def inline(m):
        inc = (path.parent / m.group(1)).resolve()
        if inc in seen:
            return f"/* {m.group(1)}: spliced above */"
        return f"/* ---- {m.group(1)} */\n" + spliced_source(inc, seen)

    return _LOCAL_INCLUDE.sub(inline, path.read_text())


def ensure_bpffs(root: str = "/sys/fs/bpf") -> None:
    """Mount bpffs at ``root`` unless it is mounted already (idempotent)."""
    with open("/proc/mounts") as f:
        if any(line.split()[1] == root and line.split()[2] == "bpf" for line in f):
            return
    r = subprocess.run(["mount", "-t", "bpf", "bpf", root], capture_output=True, text=True)
    if r.returncode != 0:
        raise DatapathError(f"cannot mount bpffs at {root}: {r.stderr.strip()}")


def source_digest(cflags: list[str]) -> str:
    h = hashlib.sha256()
    for p in sorted(EBPF_DIR.rglob("*.[ch]")):
        h.update(p.relative_to(EBPF_DIR).as_posix().encode() + b"\0" + p.read_bytes())
    h.update("\0".join(cflags).encode())
    return h.hexdigest()[:16]


@dataclass
class LoadedProgram:
    name: str
    fd: int
    compiled: bool   # False when reopened from a pin or loaded from the compile cache


#: Programs.origin values
ORIGIN_PINS, ORIGIN_CACHE, ORIGIN_COMPILED = "pins", "cache", "compiled"


class Programs:
    """Compiled-or-adopted programs of one host."""

    def __init__(self, bpf_dir: str, cflags: list[str] | None = None, *, read_cache: bool = True):
        """``read_cache=False`` compiles even when the compile cache has the programs (for callers
        that need bcc's objects, like the program tests' table types); the compile still fills
        the cache, and pins of the current digest are still adopted."""
        self.root = Path(bpf_dir) / f"v{LAYOUT_VERSION}"
        self.cflags = list(cflags or [])
        self.read_cache = read_cache
        self.digest = ""
        self.progs: dict[str, LoadedProgram] = {}
        self.compiled = False
        self.origin = ""            # ORIGIN_*: how this load got its programs
        self._bpf_objects = []

    def all_cflags(self) -> list[str]:
        return [f'-DPIN_DIR="{self.root}"'] + self.shared_cflags()

    def shared_cflags(self) -> list[str]:
        """The cflags other than PIN_DIR: what every host with these sources compiles alike."""
        return [f"-I{EBPF_DIR}"] + self.cflags

    def cache_key(self) -> str:
        return compile_cache.entry_key(source_digest(self.shared_cflags()), LAYOUT_VERSION, PROGRAMS)

    def load(self) -> "Programs":
        ensure_bpffs()
        self.root.mkdir(parents=True, exist_ok=True)
        self.digest = source_digest(self.all_cflags())
        pin_dir = self.root / "progs" / self.digest
        wanted = [fn for fns in PROGRAMS.values() for fn, _, _ in fns]
        if all((pin_dir / fn).exists() for fn in wanted):
            for fn in wanted:
                self.progs[fn] = LoadedProgram(fn, obj_get(str(pin_dir / fn)), compiled=False)
            self._fill_tail_calls()
            self.origin = ORIGIN_PINS
            log.info("BPF programs adopted from %s (sources unchanged, nothing compiled)", pin_dir)
            return self
        cache = compile_cache.CompileCache.from_env()
        key = self.cache_key() if cache else ""
        pin_dir.mkdir(parents=True, exist_ok=True)
        if cache and self.read_cache and self._load_from_cache(cache, key, pin_dir, wanted):
            return self
        self._compile(pin_dir, cache, key)
        return self

    def _load_from_cache(self, cache, key: str, pin_dir: Path, wanted: list[str]) -> bool:
        """Load and pin every program from the cache entry ``key``; False (logged, nothing
        loaded kept) on a miss."""
        try:
            fds = cache.load(key, self.root, wanted)
        except compile_cache.CacheMiss as e:
            log.info("BPF compile cache %s: %s; compiling", cache.dir, e)
            return False
        try:
            for fn in wanted:
                _pin(fds[fn], pin_dir / fn, fn)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        self.progs = {fn: LoadedProgram(fn, fds[fn], compiled=False) for fn in wanted}
        self._fill_tail_calls()
        self.origin = ORIGIN_CACHE
        log.info("BPF programs loaded from the compile cache (%s, nothing compiled) and pinned at %s",
                 cache.path(key), pin_dir)
        return True

    def _compile(self, pin_dir: Path, cache, key: str) -> None:
        from bcc import BPF, lib
        images, maps, license_, kern_version, why_not = {}, {}, "", 0, ""
        for src, fns in PROGRAMS.items():
            try:
                b = BPF(text=spliced_source(EBPF_DIR / src).encode(), cflags=self.all_cflags())
            except Exception as e:
                raise DatapathError(f"compiling {src} failed: {e}") from None
            self._bpf_objects.append(b)
            by_id = compile_cache.pinned_maps_by_id(self.root) if cache and not why_not else {}
            for fn, kind, attach in fns:
                try:
                    f = b.load_func(fn, getattr(BPF, kind), attach_type=attach)
                except Exception as e:
                    raise DatapathError(f"loading {fn} ({src}) failed: {str(e).splitlines()[0]}") from None
                _pin(f.fd, pin_dir / fn, fn)
                self.progs[fn] = LoadedProgram(fn, f.fd, compiled=True)
                if cache and not why_not:
                    try:
                        img, used = compile_cache.capture(fn, getattr(BPF, kind), attach,
                                                          b.dump_func(fn.encode()), by_id)
                    except compile_cache.CacheMiss as e:
                        why_not = str(e)
                        continue
                    images[fn] = img
                    maps.update(used)
                    license_ = lib.bpf_module_license(b.module).decode()
                    kern_version = lib.bpf_module_kern_version(b.module)
        self.compiled = True
        self.origin = ORIGIN_COMPILED
        self._fill_tail_calls()
        stored = ""
        if cache and why_not:
            stored = f"; not cached: {why_not}"
        elif cache:
            try:
                path = cache.store(compile_cache.Entry(key, license_, kern_version, maps, images))
                stored = f"; cached as {path}"
            except (OSError, compile_cache.CacheMiss) as e:
                stored = f"; could not write the compile cache {cache.dir}: {e}"
        log.info("BPF programs compiled and pinned at %s%s", pin_dir, stored)

    def _fill_tail_calls(self):
        """Point nat_tail's and nat_tail_xdp's slots at this digest's stages (idempotent; the
        maps are pinned). The maps are opened through the map schema, the one place that names
        map layouts (imported here: map_schema imports this module)."""
        from . import map_schema
        for name, slots in (("nat_tail", NAT_TAIL), ("nat_tail_xdp", NAT_TAIL_XDP)):
            tail = map_schema.open_map(self.root, name)
            try:
                for slot, fn in slots.items():
                    tail.update(slot, tail.value_type(self.progs[fn].fd))   # a program fd when written
            finally:
                tail.close()

    def remove_stale(self) -> list[str]:
        """Drop program pins of older digests (call after every filter uses the new ones)."""
        gone = []
        progs = self.root / "progs"
        for d in progs.iterdir() if progs.exists() else []:
            if d.name != self.digest:
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
        return gone


def _pin(fd: int, target: Path, what: str) -> None:
    """Pin ``fd`` at ``target``, replacing what is pinned there."""
    if target.exists():
        target.unlink()
    if _lib().bpf_obj_pin(fd, str(target).encode()) != 0:
        raise DatapathError(f"pinning {what} at {target} failed")


class PinnedMap:
    """A pinned map opened by path, read and written with ctypes key/value types."""

    def __init__(self, path: str, key_type, value_type, percpu: bool = False):
        self.path = path
        self.key_type = key_type
        self.value_type = value_type
        self.percpu = percpu
        self.fd = obj_get(path)
        self.ncpus = _possible_cpus() if percpu else 1
        vsize = ctypes.sizeof(value_type)
        self._slot = (vsize + 7) // 8 * 8 if percpu else vsize

    def _key(self, key):
        return key if isinstance(key, ctypes._SimpleCData | ctypes.Structure) else self.key_type(key)

    def update(self, key, value) -> None:
        k = self._key(key)
        if self.percpu:
            buf = (ctypes.c_ubyte * (self._slot * self.ncpus))()
            for cpu in range(self.ncpus):
                ctypes.memmove(ctypes.byref(buf, cpu * self._slot), ctypes.byref(value), ctypes.sizeof(value))
            ptr = ctypes.byref(buf)
        else:
            ptr = ctypes.byref(value)
        if _lib().bpf_update_elem(self.fd, ctypes.byref(k), ptr, 0) != 0:
            raise DatapathError(f"writing map {os.path.basename(self.path)} failed: "
                                f"{os.strerror(ctypes.get_errno() or errno.EIO)}")

    def delete(self, key) -> bool:
        return _lib().bpf_delete_elem(self.fd, ctypes.byref(self._key(key))) == 0

    def lookup(self, key):
        """The value, or for per-CPU maps the list of per-CPU values; None if absent."""
        k = self._key(key)
        buf = (ctypes.c_ubyte * (self._slot * self.ncpus))()
        if _lib().bpf_lookup_elem(self.fd, ctypes.byref(k), ctypes.byref(buf)) != 0:
            return None
        vals = [self.value_type.from_buffer_copy(bytes(buf[c * self._slot:c * self._slot + ctypes.sizeof(self.value_type)]))
                for c in range(self.ncpus)]
        return vals if self.percpu else vals[0]

    def keys(self) -> list:
        out, prev = [], None
        nxt = self.key_type()
        while _lib().bpf_get_next_key(self.fd, ctypes.byref(prev) if prev is not None else None,
                                      ctypes.byref(nxt)) == 0:
            out.append(self.key_type.from_buffer_copy(bytes(nxt)))
            prev = out[-1]
            nxt = self.key_type()
        return out

    def items(self) -> list:
        return [(k, v) for k in self.keys() if (v := self.lookup(k)) is not None]

    def raw_items(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        """Every (key bytes, value bytes) of a map that is not per-CPU, read with
        BPF_MAP_LOOKUP_BATCH ``chunk`` entries per system call (a hash of 10,000 entries in a few
        calls, not 20,000); one entry at a time where the kernel does not batch this map."""
        assert not self.percpu
        ks, vs = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        keys, vals = ctypes.create_string_buffer(ks * chunk), ctypes.create_string_buffer(vs * chunk)
        token, count = ctypes.c_uint32(0), ctypes.c_uint32(0)
        lib, out = _lib(), []
        while True:
            count.value = chunk
            rc = lib.bpf_lookup_batch(self.fd, ctypes.byref(token) if out else None, ctypes.byref(token),
                                      keys, vals, ctypes.byref(count))
            err = ctypes.get_errno() if rc != 0 else 0
            if rc != 0 and err != errno.ENOENT:     # not batchable (or a bucket over ``chunk``)
                return [(bytes(k), bytes(v)) for k, v in self.items()]
            kb, vb = keys.raw, vals.raw
            out += [(kb[i * ks:(i + 1) * ks], vb[i * vs:(i + 1) * vs]) for i in range(count.value)]
            if rc != 0 or count.value == 0:
                return out

    def update_batch(self, keys: bytes, values: bytes, chunk: int = 16384) -> None:
        """Write many entries of a map that is not per-CPU: ``keys`` and ``values`` are the
        entries' bytes back to back (key_size and value_size each), written with
        BPF_MAP_UPDATE_BATCH ``chunk`` at a time (100,000 rule instructions in a few calls)."""
        assert not self.percpu
        ks, vs = ctypes.sizeof(self.key_type), ctypes.sizeof(self.value_type)
        n = len(keys) // ks
        assert len(keys) == n * ks and len(values) == n * vs
        lib, count = _lib(), ctypes.c_uint32(0)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            kb = ctypes.create_string_buffer(keys[start * ks:(start + m) * ks], m * ks)
            vb = ctypes.create_string_buffer(values[start * vs:(start + m) * vs], m * vs)
            count.value = m
            if lib.bpf_update_batch(self.fd, kb, vb, ctypes.byref(count)) != 0:
                raise DatapathError(f"writing map {os.path.basename(self.path)} failed: "
                                    f"{os.strerror(ctypes.get_errno() or errno.EIO)}")

    def delete_batch(self, keys: bytes, chunk: int = 16384) -> None:
        """Delete many keys (bytes back to back) of a hash map; keys that are absent are skipped
        one by one (the batch call stops at the first one)."""
        ks = ctypes.sizeof(self.key_type)
        n = len(keys) // ks
        lib, count = _lib(), ctypes.c_uint32(0)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            kb = ctypes.create_string_buffer(keys[start * ks:(start + m) * ks], m * ks)
            count.value = m
            if lib.bpf_delete_batch(self.fd, kb, ctypes.byref(count)) != 0:
                for i in range(count.value, m):
                    lib.bpf_delete_elem(self.fd, ctypes.byref(kb, i * ks))

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _possible_cpus() -> int:
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        a, _, b = part.partition("-")
        n += int(b or a) - int(a) + 1
    return n


#: the probe program: a TC program calling bpf_redirect_peer (the helper the datapath needs most)
PROBE_SOURCE = ("#include <uapi/linux/pkt_cls.h>\nint p(struct __sk_buff *s) "
                "{ return bpf_redirect_peer(s->ifindex, 0); }")
PROBE_PROGRAMS = {"probe": [("p", "SCHED_CLS", -1)]}


def probe() -> tuple[bool, str]:
    """Can this machine run the eBPF backend? Loads a trivial TC program: compiled by bcc, or
    from the compile cache when the same bcc and kernel compiled it before (every agent start
    probes, and a compile costs about a second)."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False, "bcc is not importable (install python3-bpfcc)"
    if not Path(f"/lib/modules/{os.uname().release}/build").exists():
        return False, f"no kernel headers at /lib/modules/{os.uname().release}/build (run setup.sh)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return False, "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
    try:
        ensure_bpffs()
        how = _load_probe_program()
    except Exception as e:
        return False, f"a TC program with bpf_redirect_peer does not load: {str(e).splitlines()[0]}"
    return True, f"{how}, bpffs is mounted, TC programs with bpf_redirect_peer load"


def _load_probe_program() -> str:
    """Load (and unload) the probe program; says whether bcc compiled it or the cache had it."""
    try:
        cache = compile_cache.CompileCache.from_env()
    except Exception:
        cache = None                  # a bad DOCKLINE_BPF_CACHE is reported by Programs.load
    key = compile_cache.entry_key(hashlib.sha256(PROBE_SOURCE.encode()).hexdigest()[:16], 0, PROBE_PROGRAMS)
    if cache:
        try:
            fd = cache.load(key, Path("/nonexistent"), ["p"])["p"]     # no maps: no map folder
        except compile_cache.CacheMiss as e:
            log.debug("probe program not in the compile cache (%s); compiling", e)
        else:
            os.close(fd)
            return "bcc compiled it before (compile cache)"
    from bcc import BPF, lib
    b = BPF(text=PROBE_SOURCE)
    try:
        b.load_func("p", BPF.SCHED_CLS)
        if cache:
            try:
                img, _ = compile_cache.capture("p", BPF.SCHED_CLS, -1, b.dump_func(b"p"), {})
                cache.store(compile_cache.Entry(key, lib.bpf_module_license(b.module).decode(),
                                                lib.bpf_module_kern_version(b.module), {}, {"p": img}))
            except (OSError, compile_cache.CacheMiss) as e:
                log.info("could not cache the probe program in %s: %s", cache.dir, e)
    finally:
        b.cleanup()
    return "bcc compiles"

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
from .bpf_structs import LAYOUT_VERSION

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

#: nat_tail slots (ebpf/lib/nat.h NAT_TAIL_*): the tail-called stages of a new flow's NAT
NAT_TAIL = {0: "tc_nat_eval", 1: "tc_nat_route", 2: "tc_nat_commit"}
#: the same slots of nat_tail_xdp (a program array holds one program type): the XDP stages
NAT_TAIL_XDP = {0: "xdp_nat_eval", 1: "xdp_nat_route", 2: "xdp_nat_commit"}

#: entry file -> [(function, program type, expected attach type or -1)]
PROGRAMS = {
    "tc_endpoint.c": [("tc_from_endpoint", "SCHED_CLS", -1), ("tc_to_endpoint", "SCHED_CLS", -1),
                      ("tc_guard_endpoint", "SCHED_CLS", -1)],
    "tc_uplink.c": [("tc_uplink_ingress", "SCHED_CLS", -1), ("tc_uplink_egress", "SCHED_CLS", -1)],
    "tc_loopback.c": [("tc_loopback", "SCHED_CLS", -1)],
    "tc_nat.c": [("tc_nat_eval", "SCHED_CLS", -1), ("tc_nat_route", "SCHED_CLS", -1),
                 ("tc_nat_commit", "SCHED_CLS", -1)],
    "xdp_uplink.c": [("xdp_uplink", "XDP", -1)],
    "xdp_nat.c": [("xdp_nat_eval", "XDP", -1), ("xdp_nat_route", "XDP", -1), ("xdp_nat_commit", "XDP", -1)],
    "cgroup_sock.c": [("sock_connect4", "CGROUP_SOCK_ADDR", BPF_CGROUP_INET4_CONNECT),
                      ("sock_sendmsg4", "CGROUP_SOCK_ADDR", BPF_CGROUP_UDP4_SENDMSG),
                      ("sock_recvmsg4", "CGROUP_SOCK_ADDR", BPF_CGROUP_UDP4_RECVMSG),
                      ("sock_getpeername4", "CGROUP_SOCK_ADDR", BPF_CGROUP_INET4_GETPEERNAME)],
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


def _lib():
    from bcc import libbcc
    lib = libbcc.lib
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    lib.bpf_obj_get.restype = ctypes.c_int
    lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    lib.bpf_obj_pin.restype = ctypes.c_int
    return lib


def obj_get(path: str) -> int:
    fd = _lib().bpf_obj_get(path.encode())
    if fd < 0:
        err = ctypes.get_errno() or errno.ENOENT
        raise DatapathError(f"cannot open pinned BPF object {path}: {os.strerror(err)}")
    return fd


@dataclass
class LoadedProgram:
    name: str
    fd: int
    compiled: bool   # False when reopened from a pin


class Programs:
    """Compiled-or-adopted programs of one host."""

    def __init__(self, bpf_dir: str, cflags: list[str] | None = None):
        self.root = Path(bpf_dir) / f"v{LAYOUT_VERSION}"
        self.cflags = list(cflags or [])
        self.digest = ""
        self.progs: dict[str, LoadedProgram] = {}
        self.compiled = False
        self._bpf_objects = []

    def all_cflags(self) -> list[str]:
        return [f'-DPIN_DIR="{self.root}"', f"-I{EBPF_DIR}"] + self.cflags

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
            log.info("BPF programs adopted from %s (sources unchanged, nothing compiled)", pin_dir)
            return self
        from bcc import BPF
        pin_dir.mkdir(parents=True, exist_ok=True)
        for src, fns in PROGRAMS.items():
            try:
                b = BPF(text=spliced_source(EBPF_DIR / src).encode(), cflags=self.all_cflags())
            except Exception as e:
                raise DatapathError(f"compiling {src} failed: {e}") from None
            self._bpf_objects.append(b)
            for fn, kind, attach in fns:
                try:
                    f = b.load_func(fn, getattr(BPF, kind), attach_type=attach)
                except Exception as e:
                    raise DatapathError(f"loading {fn} ({src}) failed: {str(e).splitlines()[0]}") from None
                target = pin_dir / fn
                if target.exists():
                    target.unlink()
                if _lib().bpf_obj_pin(f.fd, str(target).encode()) != 0:
                    raise DatapathError(f"pinning {fn} at {target} failed")
                self.progs[fn] = LoadedProgram(fn, f.fd, compiled=True)
        self.compiled = True
        self._fill_tail_calls()
        log.info("BPF programs compiled and pinned at %s", pin_dir)
        return self

    def _fill_tail_calls(self):
        """Point nat_tail's and nat_tail_xdp's slots at this digest's stages (idempotent; the
        maps are pinned)."""
        for name, slots in (("nat_tail", NAT_TAIL), ("nat_tail_xdp", NAT_TAIL_XDP)):
            tail = PinnedMap(str(self.root / name), ctypes.c_uint32, ctypes.c_uint32)
            try:
                for slot, fn in slots.items():
                    tail.update(slot, ctypes.c_uint32(self.progs[fn].fd))
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


def probe() -> tuple[bool, str]:
    """Can this machine run the eBPF backend? Compiles and loads a trivial TC program."""
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
        from bcc import BPF
        b = BPF(text="#include <uapi/linux/pkt_cls.h>\nint p(struct __sk_buff *s) "
                     "{ return bpf_redirect_peer(s->ifindex, 0); }")
        b.load_func("p", BPF.SCHED_CLS)
        b.cleanup()
    except Exception as e:
        return False, f"a TC program with bpf_redirect_peer does not load: {str(e).splitlines()[0]}"
    return True, "bcc compiles, bpffs is mounted, TC programs with bpf_redirect_peer load"

"""Attaching the socket-layer NAT programs (ebpf/cgroup_sock.c) to the cgroup v2 root, and the
host facts they need.

Contract: programs are attached with BPF_F_ALLOW_MULTI, so several dockline hosts (each in its
own netns, each acting only on its own netns' sockets: nat_config.netns_cookie) and other users
coexist. Legacy cgroup attachments outlive the agent process, so a restart keeps translating;
``attach`` is idempotent (EEXIST is success) and ``detach`` is called with the program fds that
were attached (from their pins).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket

from ..errors import DatapathError
from . import libbpf

BPF_F_ALLOW_MULTI = 2
SO_NETNS_COOKIE = 71


def cgroup2_root() -> str:
    """Where cgroup v2 is mounted (/sys/fs/cgroup on unified hosts, .../unified on hybrid ones)."""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    raise DatapathError("cgroup v2 is not mounted: socket-layer NAT for host processes needs it")


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program (struct bpf_prog_info.id)."""
    return libbpf.prog_info(prog_fd).id


def attached_ids(cgroup_fd: int, attach_type: int) -> set[int]:
    fn = libbpf.lib().bpf_prog_query
    ids = (ctypes.c_uint32 * 256)()
    cnt = ctypes.c_uint32(256)
    flags = ctypes.c_uint32(0)
    if fn(cgroup_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)) != 0:
        return set()
    return set(ids[:cnt.value])


def attach(prog_fd: int, attach_type: int, cgroup: str | None = None) -> None:
    fd = os.open(cgroup or cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        if prog_id(prog_fd) in attached_ids(fd, attach_type):
            return          # a restart with unchanged programs: already translating
        rc = libbpf.lib().bpf_prog_attach(prog_fd, fd, attach_type, BPF_F_ALLOW_MULTI)
        err = ctypes.get_errno()
        if rc != 0 and abs(rc) != errno.EEXIST and err != errno.EEXIST:
            raise DatapathError(f"attaching a socket program (type {attach_type}) to the cgroup root failed: "
                                f"{os.strerror(abs(rc) if rc < -1 else err or errno.EIO)}")
    finally:
        os.close(fd)


def detach(prog_fd: int, attach_type: int, cgroup: str | None = None) -> bool:
    fd = os.open(cgroup or cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        return libbpf.lib().bpf_prog_detach2(prog_fd, fd, attach_type) == 0
    finally:
        os.close(fd)


def netns_cookie() -> int:
    """The cookie of the calling thread's network namespace (SO_NETNS_COOKIE, Linux 5.14+)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def _prog_name(prog_fd: int) -> str:
    """struct bpf_prog_info.name ("" if the kernel will not say)."""
    try:
        return libbpf.prog_info(prog_fd).name.decode(errors="replace")
    except DatapathError:
        return ""


def detach_named(names: set[str], attach_types: tuple[int, ...], keep_ids: frozenset = frozenset()) -> int:
    """Detach every program on the cgroup root whose name is in ``names`` (the kernel keeps 15
    characters of a name; test clean-up: agents killed without a reset leave theirs attached),
    except the programs whose ids are in ``keep_ids``. Returns how many were detached."""
    lib = libbpf.lib()
    fd = os.open(cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    n = 0
    try:
        for t in attach_types:
            for pid in attached_ids(fd, t) - set(keep_ids):
                pfd = lib.bpf_prog_get_fd_by_id(pid)
                if pfd < 0:
                    continue
                try:
                    if _prog_name(pfd) in {x[:15] for x in names} and lib.bpf_prog_detach2(pfd, fd, t) == 0:
                        n += 1
                finally:
                    os.close(pfd)
    finally:
        os.close(fd)
    return n

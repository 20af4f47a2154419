"""Network namespaces: create, remove, resolve, and run a function inside one.

Thread rule (as in CNI's pkg/ns): setns(2) changes only the calling thread. We never call it on a
long-lived thread; ``run_in_netns`` spawns a fresh thread, enters the namespace there, runs the
function and lets the thread die. Sockets created inside keep their namespace for life, which is
how the agent listens on 127.0.0.11 inside each endpoint.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading

from ..errors import DatapathError, NotFound

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_SHARED = 0x1000, 0x4000, 1 << 20
MNT_DETACH = 2
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def ensure_netns(name: str) -> str:
    """Create the named netns (idempotent), bring its loopback up, return its path.

    The namespace is made in a throwaway thread: unshare(CLONE_NEWNET) there, then a bind mount
    of that thread's namespace on /run/netns/<name> (what ``ip netns add`` does, without the
    process pyroute2 forks per namespace, which grows with the agent). The thread is then inside
    it and brings lo up before it ends."""
    path = netns_path(name)
    if not exists(name):
        _share_run_dir()
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        except FileExistsError:
            pass
        else:
            try:
                _run_in_thread(_unshare_and_bind, path)
            except OSError as e:
                try:
                    os.unlink(path)
                except OSError:
                    pass
                raise DatapathError(f"cannot create network namespace {name}: {e.strerror}") from None
            return path
    run_in_netns(path, _loopback_up)
    return path


_run_dir_shared = False


def _share_run_dir() -> None:
    """Make /run/netns a shared mount of its own, once per process (as iproute2 does), so the
    namespace mounts under it reach every mount namespace. iproute2 repeats this (recursively)
    for every namespace; with 1,000 mounts below, that walk is what grows."""
    global _run_dir_shared
    if _run_dir_shared:
        return
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    d = NETNS_RUN_DIR.encode()
    if _libc.mount(b"none", d, None, MS_SHARED | MS_REC, None) != 0:
        if _libc.mount(d, d, b"none", MS_BIND | MS_REC, None) != 0:
            err = ctypes.get_errno()
            raise DatapathError(f"cannot bind {NETNS_RUN_DIR} on itself: {os.strerror(err)}")
        if _libc.mount(b"none", d, None, MS_SHARED | MS_REC, None) != 0:
            err = ctypes.get_errno()
            raise DatapathError(f"cannot make {NETNS_RUN_DIR} a shared mount: {os.strerror(err)}")
    _run_dir_shared = True


def _unshare_and_bind(path: str) -> None:
    """In the calling (throwaway) thread: a new netns, bound at ``path``, with lo up.
    /proc/thread-self: /proc/self/ns/net is the thread group leader's namespace."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _loopback_up()


def _loopback_up() -> None:
    """lo up in the calling thread's netns (a thread that entered it), by SIOC[GS]IFFLAGS on a
    socket made there: struct ifreq {char name[16]; short flags; ...} in host byte order."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0).ljust(40, b"\0")
        flags = struct.unpack_from("16sh", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP).ljust(40, b"\0"))


def remove_netns(name: str) -> None:
    """Remove the named netns (idempotent). Interfaces inside die with it once no process holds it."""
    path = netns_path(name)
    if exists(name):
        if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.ENOENT, errno.EINVAL):
            err = ctypes.get_errno()
            raise DatapathError(f"cannot remove network namespace {name}: {os.strerror(err)}")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise DatapathError(f"cannot remove network namespace {name}: {e.strerror}") from None


def list_netns(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def resolve_netns(spec: str) -> str:
    """Turn a user's ``--netns`` value (a path, a PID, or a name under /run/netns) into a path."""
    if spec.isdigit():
        path = f"/proc/{spec}/ns/net"
        if not os.path.exists(path):
            raise NotFound(f"no process with PID {spec} to adopt the network namespace of")
        return path
    path = spec if "/" in spec else netns_path(spec)
    if not os.path.exists(path):
        raise NotFound(f"network namespace {spec} does not exist")
    return path


def same_netns(path_a: str, path_b: str) -> bool:
    a, b = os.stat(path_a), os.stat(path_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def setns_current_thread(path: str) -> None:
    """Move the *calling thread* into the netns at ``path``. Only for a fresh thread or a process
    that is still single-threaded (the agent does this once at start for ``--host-netns``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise DatapathError(f"setns into {path} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(path: str, fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` in a throwaway thread inside netns ``path``; return its result
    or re-raise its exception in the caller."""
    return _run_in_thread(_entered, path, fn, args, kwargs)


def _entered(path, fn, args, kwargs):
    setns_current_thread(path)
    return fn(*args, **kwargs)


def _run_in_thread(fn, *args):
    """``fn(*args)`` in a throwaway thread (whose netns may change: it dies afterwards)."""
    box: dict = {}

    def worker():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=worker, name="netns-worker", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")

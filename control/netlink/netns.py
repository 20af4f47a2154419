"""Network namespaces: create, remove, resolve, and run a function inside one.

Thread rule (as in CNI's pkg/ns): setns(2) changes only the calling thread. We never call it on a
long-lived thread; ``run_in_netns`` spawns a fresh thread, enters the namespace there, runs the
function and lets the thread die. Sockets created inside keep their namespace for life, which is
how the agent listens on 127.0.0.11 inside each endpoint.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading

from pyroute2 import netns as _pr_netns

from ..errors import DatapathError, NotFound

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def ensure_netns(name: str) -> str:
    """Create the named netns (idempotent), bring its loopback up, return its path."""
    if not exists(name):
        try:
            _pr_netns.create(name)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise DatapathError(f"cannot create network namespace {name}: {e.strerror}") from None
    run_in_netns(netns_path(name), _loopback_up)
    return netns_path(name)


def _loopback_up() -> None:
    """lo up in the calling thread's netns (a thread that entered it: pyroute2's
    ``IPRoute(netns=...)`` forks a helper process for every call instead)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ipr.link("set", index=1, state="up")


def remove_netns(name: str) -> None:
    """Remove the named netns (idempotent). Interfaces inside die with it once no process holds it."""
    if exists(name):
        try:
            _pr_netns.remove(name)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EINVAL):
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
    box: dict = {}

    def worker():
        try:
            setns_current_thread(path)
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=worker, name="netns-worker", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")

"""Endpoint sandboxes: the network namespaces endpoints live in, and the files that go with them.

The services never touch /run/netns, /etc/netns or /proc directly: they ask a sandbox. The real
one (``NetnsSandbox``) does it on this machine; unit tests hand the services an in-memory one
(tests/unit/fakes.py) and drive every operation, and its rollback, without root.
"""

from __future__ import annotations

import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor

from ..config import resolv_conf_dir
from ..errors import DocklineError
from ..netlink import netns
from ..netlink.links import remove_inside


class NetnsSandbox:
    """Named network namespaces under /run/netns, with /etc/netns/<name>/resolv.conf."""

    def path(self, name: str) -> str:
        return netns.netns_path(name)

    def exists(self, name: str) -> bool:
        return netns.exists(name)

    def path_exists(self, path: str) -> bool:
        return os.path.exists(path)

    def resolve(self, spec: str) -> str:
        """An existing netns named by path, PID or name (``--netns``) as a path."""
        return netns.resolve_netns(spec)

    def ensure(self, name: str) -> None:
        netns.ensure_netns(name)

    def remove(self, name: str) -> None:
        """Stop what runs inside (``dockline run … CMD``), then remove the netns and its files."""
        self._kill_processes([name])
        netns.remove_netns(name)
        _remove_resolv_dir(name)

    def remove_many(self, names: list[str]) -> list[str]:
        """``remove`` for each of ``names``, with one scan of /proc and the unmounts run side by
        side (each waits out an RCU grace period; waiting together, they share them). Returns
        the errors (each namespace is tried)."""
        if not names:
            return []
        self._kill_processes(names)
        errors: list[str] = []

        def one(name):
            try:
                netns.remove_netns(name)
            except DocklineError as e:
                errors.append(str(e))
            _remove_resolv_dir(name)

        with ThreadPoolExecutor(max_workers=min(16, len(names)), thread_name_prefix="netns-rm") as pool:
            list(pool.map(one, names))
        return errors

    def list(self, prefix: str) -> list[str]:
        return netns.list_netns(prefix)

    def write_resolv_conf(self, name: str, text: str) -> None:
        """``ip netns exec`` shows /etc/netns/<name>/resolv.conf as /etc/resolv.conf inside."""
        d = resolv_conf_dir(name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "resolv.conf"), "w") as f:
            f.write(text)

    def remove_interface(self, netns_path: str, ifname: str) -> None:
        """Remove our interface from an adopted namespace (which itself stays)."""
        remove_inside(netns_path, ifname)

    @staticmethod
    def _kill_processes(names: list[str]) -> None:
        """SIGKILL every process (but this one) inside the namespaces ``names``: one /proc scan."""
        targets = set()
        for name in names:
            try:
                st = os.stat(netns.netns_path(name))
            except FileNotFoundError:
                continue
            targets.add((st.st_dev, st.st_ino))
        if not targets:
            return
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                st = os.stat(f"/proc/{pid}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in targets and int(pid) != os.getpid():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _remove_resolv_dir(name: str) -> None:
    """/etc/netns/<name>: the resolv.conf we wrote, then the folder (anything else a user put
    there: the whole tree)."""
    d = resolv_conf_dir(name)
    try:
        os.unlink(os.path.join(d, "resolv.conf"))
        os.rmdir(d)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(d, ignore_errors=True)

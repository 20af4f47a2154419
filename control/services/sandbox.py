"""Endpoint sandboxes: the network namespaces endpoints live in, and the files that go with them.

The services never touch /run/netns, /etc/netns or /proc directly: they ask a sandbox. The real
one (``NetnsSandbox``) does it on this machine; unit tests hand the services an in-memory one
(tests/unit/fakes.py) and drive every operation, and its rollback, without root.
"""

from __future__ import annotations

import os
import shutil
import signal

from ..config import resolv_conf_dir
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
        self._kill_processes(name)
        netns.remove_netns(name)
        shutil.rmtree(resolv_conf_dir(name), ignore_errors=True)

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
    def _kill_processes(name: str) -> None:
        path = netns.netns_path(name)
        try:
            target = os.stat(path)
        except FileNotFoundError:
            return
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                st = os.stat(f"/proc/{pid}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and int(pid) != os.getpid():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

"""The agent: one long-running process per host that owns the services and serves the CLI.

API: a unix stream socket (mode 0600, and the peer must be uid 0, checked with SO_PEERCRED).
Each request is one JSON line ``{"op": "...", "args": {...}}``; each reply is one JSON line
``{"ok": result}`` or ``{"error": {"kind": ..., "message": ...}}``. Stopping the agent leaves the
kernel state alone, so the data plane keeps forwarding while the control plane is down.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time

from .config import HostConfig
from .errors import DocklineError
from .netlink import netns
from .services import Services

log = logging.getLogger("dockline.agent")

#: op name -> (service, method). Only these are reachable over the socket.
OPS = {
    "info": ("system", "info"), "reconcile": ("system", "start"), "reset": ("system", "reset"),
    "stats": ("system", "stats"),
    "network_create": ("networks", "create"), "network_ls": ("networks", "ls"),
    "network_inspect": ("networks", "inspect"), "network_rm": ("networks", "rm"),
    "endpoint_create": ("endpoints", "create"), "endpoint_rm": ("endpoints", "rm"),
    "connect": ("endpoints", "connect"), "disconnect": ("endpoints", "disconnect"),
    "ps": ("endpoints", "ps"), "inspect": ("endpoints", "inspect"), "port": ("endpoints", "port"),
    "exec_info": ("endpoints", "exec_info"),
    "nat_iptables": ("nat", "iptables"), "nat_import": ("nat", "import_"), "nat_save": ("nat", "save"),
    "nat_restore": ("nat", "restore"),
    "publish": ("endpoints", "publish"), "unpublish": ("endpoints", "unpublish"),
    "conntrack": ("nat", "conntrack"), "conntrack_gc": ("nat", "gc"),
}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        creds = self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != 0:
            self._reply({"error": {"kind": "error", "message": "permission denied: the dockline API is root only"}})
            return
        for line in self.rfile:
            try:
                req = json.loads(line)
                service, name = OPS[req["op"]]
                method = getattr(getattr(self.server.services, service), name)
                result = method(**req.get("args", {}))
                reply = {"ok": result}
            except DocklineError as e:
                log.info("%s refused: %s", line.strip()[:200].decode(errors="replace"), e.message)
                reply = {"error": e.to_dict()}
            except (KeyError, TypeError, ValueError) as e:
                reply = {"error": {"kind": "invalid", "message": f"bad request: {e}"}}
            except Exception as e:   # a bug: keep serving, say what happened
                log.exception("op failed")
                reply = {"error": {"kind": "error", "message": f"internal error: {type(e).__name__}: {e}"}}
            self._reply(reply)

    def _reply(self, obj):
        self.wfile.write(json.dumps(obj).encode() + b"\n")
        self.wfile.flush()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    services: Services


def _take_lock(host: HostConfig):
    os.makedirs(host.state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(host.state_dir, "agent.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DocklineError(f"another agent is already running for host {host.name}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _start_ct_gc(services: Services, interval: float):
    """Conntrack GC every ``interval`` seconds (the datapath never deletes entries itself)."""
    def loop():
        while True:
            time.sleep(interval)
            try:
                services.nat.gc()
            except Exception:   # keep collecting; the next run may succeed
                log.exception("conntrack GC failed")
    threading.Thread(target=loop, name="ct-gc", daemon=True).start()


def _start_link_watch(services: Services):
    """NAT follows the host's interfaces as they come and go (an eBPF NAT on every interface):
    wake on the datapath's link-watch socket and let the NAT service look. The socket is asked
    for again on every round: a reset and a new setup replace it."""
    import select

    def loop():
        while True:
            fd = services.datapath.link_watch_fd()
            if fd is None:
                time.sleep(1.0)
                continue
            try:
                readable, _, _ = select.select([fd], [], [], 5.0)
            except (OSError, ValueError):   # closed meanwhile (teardown): ask again
                time.sleep(0.1)
                continue
            if not readable:
                continue
            time.sleep(0.05)                # a burst of events (a new bridge and its ports) at once
            try:
                services.nat.interfaces_changed()
            except Exception:
                log.exception("following the host's interfaces failed")
                time.sleep(1.0)
    threading.Thread(target=loop, name="link-watch", daemon=True).start()


def _fix_malloc_thresholds():
    """glibc raises its mmap threshold to the size of the largest block freed so far (up to
    32 MiB) and the trim threshold to twice that: after one large temporary (the reply listing
    10,000 published ports is 1.6 MB of JSON) every later temporary below that size is carved
    from a heap that is then rarely given back. A long-running agent keeps the defaults fixed
    instead (setting them turns the adjustment off): large temporaries get their own mappings,
    returned when freed. No effect where the C library has no mallopt."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # <malloc.h>


def run_agent(host: HostConfig, ready_fd: int | None = None) -> int:
    """Enter the host netns, reconcile, serve until SIGTERM/SIGINT. Returns an exit code."""
    _fix_malloc_thresholds()
    if host.host_netns:
        # The process is still single-threaded here, so every thread made later inherits this.
        netns.setns_current_thread(netns.netns_path(host.host_netns))
    lock_fd = _take_lock(host)
    from .dns import EmbeddedDNS
    services = Services(host)
    dns = EmbeddedDNS(services.names.lookup, host.dns_upstreams, reverse=services.names.reverse,
                      can_forward=services.names.can_forward)
    services.set_dns(dns)
    dns.start()
    report = services.system.start()
    if host.metrics_addr:
        from .metrics import serve
        serve(services, host.metrics_addr)
    log.info("agent for host %s up (datapath %s, %d networks, %d endpoints)", host.name,
             services.datapath.name, report["networks"], report["endpoints"])
    if services.datapath.nat_rules_supported and host.ct_gc_interval > 0:
        _start_ct_gc(services, host.ct_gc_interval)
    if services.datapath.link_watch_fd() is not None:
        _start_link_watch(services)

    os.makedirs(os.path.dirname(host.socket_path), mode=0o755, exist_ok=True)
    if os.path.exists(host.socket_path):
        os.unlink(host.socket_path)
    old_umask = os.umask(0o177)
    try:
        server = _Server(host.socket_path, _Handler)
    finally:
        os.umask(old_umask)
    os.chmod(host.socket_path, 0o600)
    server.services = services

    def stop(signum, _frame):
        log.info("signal %d: stopping the agent; the data plane stays up", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    print(f"dockline agent ready on {host.socket_path}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        try:
            os.unlink(host.socket_path)
        except FileNotFoundError:
            pass
        dns.stop()
        os.close(lock_fd)
    return 0

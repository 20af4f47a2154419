"""Load generators for the benchmarks (TCP RR, TCP CRR, UDP packet rate): Python API, command line, and netns process helpers.

The packet loops live in the Cython module ``_loadgen`` (GIL released, no Python objects per
packet); this module validates arguments, names the result keys and runs processes.

Command line: ``python -m dockline.control.sim.loadgen <role> [--ip A] [--port N] [--duration S]
[--size B] [--parallel K] [--bind A[:P]]``

  rr-server, crr-server   listen (on --bind, else --ip, else 0.0.0.0), print ``ready``, serve until
                          SIGTERM/SIGINT, then print one JSON line (SERVER_KEYS).
  udp-sink                bind likewise, print ``ready``, count datagrams until SIGTERM/SIGINT or
                          --duration seconds (default: until a signal), then print one JSON line
                          (SINK_KEYS).
  rr-client, crr-client,  send to --ip (default 127.0.0.1) from --bind (default: kernel's choice)
  udp-flood               for --duration seconds (default 5), then print one JSON line (RR_KEYS,
                          CRR_KEYS, FLOOD_KEYS).

Every JSON line also carries ``"role"``. Latencies are full round trips in microseconds, read
from a histogram with 100 ns buckets up to 10 ms (a percentile beyond 10 ms reads as the exact
maximum). Like netperf, clients and servers block in the kernel rather than busy-poll, so RR and
CRR latencies include the scheduler's wake-ups. An RR connection opens with the client's message
size (4 bytes, big-endian), so rr-server needs no --size and counts whole transactions.

UDP payload size: the default of 18 bytes makes the smallest legal Ethernet frame,
14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 18 (payload) + 4 (FCS) = 64 bytes, the conventional
"small packet" for packet-rate numbers. --size changes it (0..65507).

Ports default to DEFAULT_PORTS[<metric>]; the processes must be started inside the namespace
they are meant to use (``ip netns exec`` / ``nsenter --net=``): they never switch namespaces.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import subprocess
import sys
import threading
import time

try:
    from . import _loadgen
except ImportError as e:  # built by setup.py's cythonize list; DOCKLINE_NO_EXTENSIONS=1 skips it
    raise ImportError(f"dockline.control.sim._loadgen is not built ({e}); "
                      "run `pip install --no-build-isolation -e .` in the repository") from e

ROLES = ("rr-server", "rr-client", "crr-server", "crr-client", "udp-sink", "udp-flood")
DEFAULT_PORTS = {"rr": 7001, "crr": 7002, "udp": 7003}   # the benchmark harness's ports
UDP_SIZE = 18            # -> 64-byte Ethernet frames, see the module docstring
CLIENT_DURATION = 5.0
CRR_ACCEPTORS = 2        # acceptor threads of crr-server unless --parallel says otherwise

#: The documented keys of each role's JSON line (besides "role"); tests hold the code to them.
LATENCY_KEYS = ("mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us")
RR_KEYS = ("transactions", "duration_s", "tps", "size") + LATENCY_KEYS
CRR_KEYS = ("connections", "duration_s", "cps", "errors", "addr_busy", "last_error",
            "parallel") + LATENCY_KEYS
FLOOD_KEYS = ("sent", "bytes", "duration_s", "pps", "errors", "size")
SINK_KEYS = ("received", "bytes", "duration_s", "pps", "run_s")
SERVER_KEYS = ("connections", "transactions", "errors")

_SIGNALS = {signal.SIGTERM, signal.SIGINT}


# ---------------------------------------------------------------------------------------------
# In-process API. Each call uses the caller's network namespace.

def rr_client(ip: str = "127.0.0.1", port: int = DEFAULT_PORTS["rr"],
              duration: float = CLIENT_DURATION, size: int = 1, bind: str | None = None) -> dict:
    """One TCP_NODELAY connection doing back-to-back ``size``-byte request/response for
    ``duration`` s; returns RR_KEYS (tps = transactions per second). Raises OSError when the
    server cannot be reached or stops answering (2 s)."""
    return _loadgen.rr_client(ip, port, duration, size, bind)


def crr_client(ip: str = "127.0.0.1", port: int = DEFAULT_PORTS["crr"],
               duration: float = CLIENT_DURATION, parallel: int = 1,
               bind: str | None = None) -> dict:
    """``parallel`` threads each looping connect, 1-byte request, 1-byte reply, close for
    ``duration`` s; returns CRR_KEYS. cps counts completed connections; ``errors`` failed ones;
    ``addr_busy`` connect() attempts that found no free ephemeral port (each waits 1 ms and is
    not an error); latency is socket() to close()."""
    return _loadgen.crr_client(ip, port, duration, parallel, bind)


def udp_flood(ip: str = "127.0.0.1", port: int = DEFAULT_PORTS["udp"],
              duration: float = CLIENT_DURATION, size: int = UDP_SIZE,
              bind: str | None = None) -> dict:
    """Blast ``size``-byte datagrams in sendmmsg batches of 64 for ``duration`` s; returns
    FLOOD_KEYS. ``sent`` is what the kernel accepted, not what arrived: compare with a sink."""
    return _loadgen.udp_flood(ip, port, duration, size, bind)


def tcp_server(mode: str, ip: str = "0.0.0.0", port: int | None = None, acceptors: int = 1):
    """A started RR (``mode="rr"``) or CRR (``mode="crr"``) server, already listening;
    ``.stop()`` ends it and returns SERVER_KEYS. The RR server learns each connection's message
    size from the client (a 4-byte header), so it takes no size."""
    port = DEFAULT_PORTS[mode] if port is None else port
    return _loadgen.TcpServer(ip, port, mode, acceptors).start()


def udp_sink(ip: str = "0.0.0.0", port: int = DEFAULT_PORTS["udp"]):
    """A bound UDP sink; ``.run(duration)`` (0: until ``.stop()`` from another thread) counts
    datagrams and returns SINK_KEYS: pps is over the interval datagrams were arriving."""
    return _loadgen.UdpSink(ip, port)


# ---------------------------------------------------------------------------------------------
# Processes inside a network namespace

def ns_prefix(netns: str | None) -> list[str]:
    """argv prefix that runs a command in ``netns``: a path (``nsenter --net=``), a name under
    /run/netns (``ip netns exec``), or None for the caller's own namespace."""
    if netns is None:
        return []
    if "/" in netns:
        return ["nsenter", f"--net={netns}"]
    return ["ip", "netns", "exec", netns]


def command(role: str, netns: str | None = None, **opts) -> list[str]:
    """argv for ``role`` in ``netns``; opts are the long options without dashes (ip=, port=,
    duration=, size=, parallel=, bind=); None values are left out."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    argv = ns_prefix(netns) + [sys.executable, "-m", "dockline.control.sim.loadgen", role]
    for key, value in opts.items():
        if value is not None:
            argv += [f"--{key}", str(value)]
    return argv


class Process:
    """A server or sink process that has printed ``ready``. ``stop()`` sends SIGTERM and returns
    its final JSON line as a dict; always call it (or use ``with``) so nothing is left running."""

    def __init__(self, role: str, netns: str | None = None, ready_timeout: float = 15.0, **opts):
        self.role = role
        self.proc = subprocess.Popen(command(role, netns, **opts), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + ready_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self._kill()
                err = self.proc.stderr.read().strip()
                raise RuntimeError(f"{role} did not become ready: {err[-500:]}")
            readable, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if readable and self.proc.stdout.readline().strip() == "ready":
                return

    def stop(self, timeout: float = 10.0) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise RuntimeError(f"{self.role} ignored SIGTERM for {timeout} s") from None
        lines = out.strip().splitlines()
        if self.proc.returncode != 0 or not lines:
            raise RuntimeError(f"{self.role} failed ({self.proc.returncode}): {err.strip()[-500:]}")
        return json.loads(lines[-1])

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self._kill()


def run(role: str, netns: str | None = None, timeout: float | None = None, **opts) -> dict:
    """Run a client role (rr-client, crr-client, udp-flood) to completion; return its JSON."""
    if timeout is None:
        timeout = float(opts.get("duration") or CLIENT_DURATION) + 30
    r = subprocess.run(command(role, netns, **opts), capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{role} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def udp_forwarding(flood_netns: str | None, sink_netns: str | None, ip: str, *,
                   port: int = DEFAULT_PORTS["udp"], duration: float = CLIENT_DURATION,
                   size: int = UDP_SIZE, sink_ip: str = "0.0.0.0", bind: str | None = None,
                   drain: float = 0.2) -> dict:
    """Forwarding rate: a sink in ``sink_netns``, a flood to ``ip`` from ``flood_netns``, then
    the sink's count. Returns {"flood", "sink", "sent_pps", "forwarded_pps", "loss"}, where
    forwarded_pps = datagrams the sink received / seconds the flood ran. (The sink's own pps is
    over its receiving interval, which outlasts the flood while it drains its queue; the sink
    is stopped ``drain`` s after the flood ends.)"""
    with Process("udp-sink", sink_netns, ip=sink_ip, port=port) as sink:
        try:
            flood = run("udp-flood", flood_netns, ip=ip, port=port, duration=duration, size=size,
                        bind=bind)
        finally:
            time.sleep(drain)       # datagrams still in flight or queued at the sink
            got = sink.stop()
    sent = flood["sent"]
    return {"flood": flood, "sink": got, "sent_pps": flood["pps"],
            "forwarded_pps": got["received"] / flood["duration_s"],
            "loss": 1 - got["received"] / sent if sent else 0.0}


def selftest(netns: str, duration: float = 1.0, ip: str = "127.0.0.1") -> dict:
    """Each server/client pair over ``ip`` (loopback) inside one ``netns``, as processes: the
    generators' own ceiling, to set beside measured numbers. Returns {"rr_tps", "crr_cps",
    "udp_sent_pps", "udp_received_pps", "rr", "rr_server", "crr", "crr_server", "udp"}."""
    with Process("rr-server", netns, ip=ip) as srv:
        try:
            rr = run("rr-client", netns, ip=ip, duration=duration)
        finally:
            rr_server = srv.stop()
    with Process("crr-server", netns, ip=ip) as srv:
        try:
            crr = run("crr-client", netns, ip=ip, duration=duration)
        finally:
            crr_server = srv.stop()
    udp = udp_forwarding(netns, netns, ip, duration=duration, sink_ip=ip)
    return {"rr_tps": rr["tps"], "crr_cps": crr["cps"], "udp_sent_pps": udp["sent_pps"],
            "udp_received_pps": udp["forwarded_pps"], "rr": rr, "rr_server": rr_server,
            "crr": crr, "crr_server": crr_server, "udp": udp}


# ---------------------------------------------------------------------------------------------
# Command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dockline.control.sim.loadgen",
                                description="Cython load generators: TCP RR, TCP CRR, UDP rate.")
    p.add_argument("role", choices=ROLES)
    p.add_argument("--ip", help="clients: server address (default 127.0.0.1); "
                                "servers/sink: listen address unless --bind (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="default: %s" % DEFAULT_PORTS)
    p.add_argument("--duration", type=float,
                   help=f"clients: seconds to run (default {CLIENT_DURATION}); "
                        "udp-sink: stop after this long (default: at SIGTERM/SIGINT)")
    p.add_argument("--size", type=int,
                   help=f"rr-client: bytes each way (default 1); udp-flood: payload bytes "
                        f"(default {UDP_SIZE})")
    p.add_argument("--parallel", type=int,
                   help=f"crr-client: threads (default 1); crr-server: acceptor threads "
                        f"(default {CRR_ACCEPTORS})")
    p.add_argument("--bind", help="clients: source address ip[:port]; servers/sink: listen address")
    return p


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    metric = a.role.split("-")[0]
    if a.size is not None and a.role not in ("rr-client", "udp-flood"):
        p.error("--size applies to rr-client and udp-flood only (rr-server learns it from the "
                "client; crr is always 1 byte each way)")
    if a.parallel is not None and metric != "crr":
        p.error("--parallel applies to crr-client and crr-server only")
    if a.duration is not None and a.role in ("rr-server", "crr-server"):
        p.error("--duration applies to clients and udp-sink only (servers run until a signal)")


def _wait_for_signal(poll=None) -> None:
    """Block until SIGTERM/SIGINT (blocked by main(), so it is taken here, not by a handler), or
    until ``poll()`` turns true (checked every 0.1 s)."""
    while True:
        if signal.sigtimedwait(_SIGNALS, 0.1) is not None:
            return
        if poll is not None and poll():
            return


def _serve(a: argparse.Namespace, listen_ip: str) -> dict:
    metric = a.role.split("-")[0]
    port = a.port if a.port is not None else DEFAULT_PORTS[metric]
    if metric == "udp":
        sink = udp_sink(listen_ip, port)
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(sink.run(a.duration or 0)), daemon=True)
        print("ready", flush=True)
        t.start()
        _wait_for_signal(poll=lambda: not t.is_alive())
        sink.stop()
        t.join()
        if not box:
            raise RuntimeError("udp-sink failed; see the traceback above")
        return box
    acceptors = a.parallel if a.parallel is not None else (CRR_ACCEPTORS if metric == "crr" else 1)
    server = tcp_server(metric, listen_ip, port, acceptors)
    print("ready", flush=True)
    _wait_for_signal()
    return server.stop()


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    _check(p, a)
    try:
        result = _run_role(a)
    except ValueError as e:  # out-of-range size, not an IPv4 address, ...
        p.error(str(e))
    except OSError as e:     # unreachable server, address in use, ...: one line, not a traceback
        print(f"loadgen {a.role}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"role": a.role, **result}), flush=True)
    return 0


def _run_role(a: argparse.Namespace) -> dict:
    if a.role.endswith("-server") or a.role == "udp-sink":
        # Servers take SIGTERM/SIGINT synchronously (sigtimedwait); block them before any thread
        # exists so every thread inherits the mask and none is interrupted by a handler. Clients
        # keep the default dispositions: SIGTERM ends them at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        return _serve(a, a.bind or a.ip or "0.0.0.0")
    metric = a.role.split("-")[0]
    port = a.port if a.port is not None else DEFAULT_PORTS[metric]
    ip = a.ip or "127.0.0.1"
    duration = a.duration if a.duration is not None else CLIENT_DURATION
    if a.role == "rr-client":
        return rr_client(ip, port, duration, 1 if a.size is None else a.size, a.bind)
    if a.role == "crr-client":
        return crr_client(ip, port, duration, 1 if a.parallel is None else a.parallel, a.bind)
    return udp_flood(ip, port, duration, UDP_SIZE if a.size is None else a.size, a.bind)


if __name__ == "__main__":
    sys.exit(main())

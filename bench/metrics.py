"""The measurements: each runs a server in one namespace and a client in another (``nsenter``),
with client and server pinned to different CPUs, and returns a dict of numbers.

Tools: iperf3 for TCP throughput; dockline's Cython load generators (control/sim/_loadgen.pyx via
``python -m dockline.control.sim.loadgen``) for request/response, connect rate and small-packet rate.
CPU cost is the machine's busy CPU time (/proc/stat) during the run, per GB moved.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from .targets import Endpoints

IPERF_PORT = 5201
RR_PORT = 7001
CRR_PORT = 7002
UDP_PORT = 7003
#: CPU placement. Bulk transfers put client and server on different CPUs (as iperf3 runs are
#: usually done). Latency-bound loops (RR, CRR, small UDP) share one CPU: on this 2-vCPU VM a
#: wake-up across vCPUs costs ~50 µs and makes RR measure the hypervisor (80k/s on one CPU
#: against 15-19k/s across CPUs over loopback, with a p99 near 1 ms).
SERVER_CPU, CLIENT_CPU = "0", "1"
SHARED_CPU = "1"
LOADGEN = [sys.executable, "-m", "dockline.control.sim.loadgen"]


def _in_ns(ns_path: str, argv: list[str], cpu: str | None = None) -> list[str]:
    pin = ["taskset", "-c", cpu] if cpu is not None and (os.cpu_count() or 1) > 1 else []
    return ["nsenter", f"--net={ns_path}"] + pin + argv


class Server:
    """A server process inside a netns; ``ready_line`` on stdout (or a delay) says it listens."""

    def __init__(self, ns_path: str, argv: list[str], ready_line: str | None = "ready", settle: float = 0.3,
                 cpu: str = SERVER_CPU):
        self.proc = subprocess.Popen(_in_ns(ns_path, argv, cpu), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        if ready_line is None:
            time.sleep(settle)
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{' '.join(argv)} exited: {self.proc.stderr.read().strip()}")
            r, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if r and ready_line in self.proc.stdout.readline():
                return
        self.stop()
        raise RuntimeError(f"{' '.join(argv)} did not become ready")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read() if self.proc.stdout else ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _client(ns_path: str, argv: list[str], timeout: float, cpu: str = CLIENT_CPU) -> str:
    r = subprocess.run(_in_ns(ns_path, argv, cpu), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r.stdout


def _busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def tcp_throughput(ep: Endpoints, streams: int = 1, duration: float = 3.0) -> dict:
    """iperf3 TCP bulk transfer, ``streams`` parallel connections."""
    port = ep.dial_port or IPERF_PORT
    with Server(ep.server_ns, ["iperf3", "-s", "-p", str(IPERF_PORT), "-1"], ready_line=None):
        busy0 = _busy_seconds()
        out = _client(ep.client_ns, ["iperf3", "-c", ep.dial_ip, "-p", str(port), "-t", str(duration),
                                     "-P", str(streams), "-J"], timeout=duration + 30)
        busy = _busy_seconds() - busy0
    end = json.loads(out)["end"]
    moved = end["sum_received"]["bytes"]
    return {"gbit_s": end["sum_received"]["bits_per_second"] / 1e9, "bytes": moved,
            "cpu_s_per_gb": busy / (moved / 1e9) if moved else float("inf"),
            "retransmits": end["sum_sent"].get("retransmits", 0)}


def _loadgen_pair(ep: Endpoints, server_role: str, client_role: str, port: int, duration: float,
                  extra: list[str] = ()) -> dict:
    dial = ep.dial_port or port
    with Server(ep.server_ns, LOADGEN + [server_role, "--port", str(port)], cpu=SHARED_CPU):
        out = _client(ep.client_ns, LOADGEN + [client_role, "--ip", ep.dial_ip, "--port", str(dial),
                                               "--duration", str(duration), *extra], timeout=duration + 30,
                      cpu=SHARED_CPU)
    return json.loads(out.strip().splitlines()[-1])


def request_response(ep: Endpoints, duration: float = 3.0, size: int = 1) -> dict:
    """One TCP connection, ``size``-byte ping-pong: transactions/s and latency percentiles."""
    return _loadgen_pair(ep, "rr-server", "rr-client", RR_PORT, duration, ["--size", str(size)])


def connect_rate(ep: Endpoints, duration: float = 3.0) -> dict:
    """connect, 1-byte request, 1-byte reply, close: connections/s. A run in which no connection
    completed is an error (the round becomes NaN with the client's last error), not a rate of 0."""
    out = _loadgen_pair(ep, "crr-server", "crr-client", CRR_PORT, duration)
    if not out.get("connections"):
        raise RuntimeError(f"no connection completed to {ep.dial_ip}:{ep.dial_port or CRR_PORT} in {duration} s: "
                           f"{out.get('errors')} errors, last: {out.get('last_error')}")
    return out


def udp_rate(ep: Endpoints, duration: float = 3.0, size: int = 18) -> dict:
    """Small UDP datagrams blasted from client to a counting sink: packets/s received."""
    port = ep.dial_port or UDP_PORT
    sink = Server(ep.server_ns, LOADGEN + ["udp-sink", "--port", str(UDP_PORT), "--duration", str(duration + 5)],
                  cpu=SHARED_CPU)
    try:
        sent = json.loads(_client(ep.client_ns, LOADGEN + ["udp-flood", "--ip", ep.dial_ip, "--port", str(port),
                                                          "--duration", str(duration), "--size", str(size)],
                                  timeout=duration + 30, cpu=SHARED_CPU).strip().splitlines()[-1])
    finally:
        got = sink.stop()
    received = json.loads(got.strip().splitlines()[-1])
    return {"sent": sent, "received": received}

"""Restarts under traffic: a TCP stream and a UDP stream between two endpoints keep flowing
through 5 SIGTERM and 5 SIGKILL agent restarts, with no reset and no gap over 1 s.

      host netns (agent restarted 10 times)
         bridge n1 ── client ══TCP+UDP══► server
"""

import signal
import socket
import threading
import time

import pytest

from dockline.control.sim.nstools import _socket_in

pytestmark = [pytest.mark.root, pytest.mark.slow]

INTERVAL = 0.02     # one message every 20 ms in each flow


class Flow:
    """Sends a numbered message every INTERVAL; records when each echo came back."""

    def __init__(self, client_ns, server_ns, server_ip, proto, port):
        self.proto, self.arrivals, self.error = proto, [], None
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        self.srv = _socket_in(server_ns, kind)
        self.srv.bind(("0.0.0.0", port))
        if proto == "tcp":
            self.srv.listen(1)
        self.cli = _socket_in(client_ns, kind)
        self.cli.connect((server_ip, port))
        if proto == "tcp":
            self.conn, _ = self.srv.accept()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._echo, self._send, self._recv)]
        for t in self.threads:
            t.start()

    def _echo(self):
        try:
            while not self.stop.is_set():
                if self.proto == "tcp":
                    data = self.conn.recv(4096)
                    if not data:
                        return
                    self.conn.sendall(data)
                else:
                    self.srv.settimeout(0.2)
                    try:
                        data, peer = self.srv.recvfrom(4096)
                    except socket.timeout:
                        continue
                    self.srv.sendto(data, peer)
        except OSError as e:
            self.error = self.error or f"server: {e}"

    def _send(self):
        seq = 0
        try:
            while not self.stop.is_set():
                self.cli.send(b"%08d" % seq)
                seq += 1
                time.sleep(INTERVAL)
        except OSError as e:
            self.error = self.error or f"client send: {e}"

    def _recv(self):
        self.cli.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = self.cli.recv(4096)
            except socket.timeout:
                continue
            except OSError as e:   # ECONNRESET and friends
                self.error = self.error or f"client recv: {e}"
                return
            if not data and self.proto == "tcp":
                self.error = self.error or "connection closed"
                return
            self.arrivals.append(time.monotonic())

    def max_gap(self):
        a = self.arrivals
        return max((y - x for x, y in zip(a, a[1:])), default=float("inf"))

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2)
        for s in (self.cli, self.srv) + ((self.conn,) if self.proto == "tcp" else ()):
            s.close()


def test_streams_survive_ten_agent_restarts(host):
    host.call("network_create", name="n1")
    host.call("endpoint_create", name="client", network="n1")
    host.call("endpoint_create", name="server", network="n1")
    ip = host.call("inspect", ref="server")["networks"]["n1"]["ip"]
    flows = [Flow(host.ep_ns("client"), host.ep_ns("server"), ip, p, 7100 + i)
             for i, p in enumerate(("tcp", "udp"))]
    try:
        time.sleep(0.5)
        for sig in [signal.SIGTERM] * 5 + [signal.SIGKILL] * 5:
            host.stop_agent(sig)
            time.sleep(0.2)
            host.start_agent()
            assert host.call("ps"), "state lost across the restart"
        time.sleep(0.5)
    finally:
        for f in flows:
            f.close()
    for f in flows:
        assert f.error is None, f"{f.proto} flow broke: {f.error}"
        assert len(f.arrivals) > 100, f"{f.proto} flow carried only {len(f.arrivals)} messages"
        assert f.max_gap() < 1.0, f"{f.proto} flow stalled for {f.max_gap():.2f} s"

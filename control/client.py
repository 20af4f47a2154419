"""Client side of the agent's unix-socket API (used by the CLI and the tests)."""

from __future__ import annotations

import json
import socket

from .config import DEFAULT_HOST, RUN_ROOT, socket_path
from .errors import AgentUnavailable, error_from_dict


class Client:
    def __init__(self, host: str = DEFAULT_HOST, run_root: str = RUN_ROOT, timeout: float = 120.0):
        self.path = socket_path(host, run_root)
        self.host = host
        self.timeout = timeout

    def call(self, op: str, **args):
        """Send one request; return its result or raise the DocklineError the agent reported."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            raise AgentUnavailable(f"cannot reach the dockline agent for host {self.host} at {self.path}: "
                                   f"is `dockline daemon --host {self.host}` running?") from None
        try:
            with s, s.makefile("rwb") as f:
                f.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
                f.flush()
                line = f.readline()
        except OSError as e:
            raise AgentUnavailable(f"the dockline agent for host {self.host} hung up: {e}") from None
        if not line:
            raise AgentUnavailable(f"the dockline agent for host {self.host} closed the connection")
        reply = json.loads(line)
        if "error" in reply:
            raise error_from_dict(reply["error"])
        return reply["ok"]

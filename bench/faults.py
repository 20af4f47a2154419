"""Deliberate, real slowdowns for proving that the regression gate catches them.

``inject_delay`` adds a netem delay on the host side of the candidate's server endpoints (the
packets still cross the real datapath, they just wait), sized from a quick request/response probe
so that the request/response rate drops by about the asked fraction.
"""

from __future__ import annotations

import subprocess

from . import metrics


def netem_delay(host_ns_path: str, ifname: str, delay_us: int) -> None:
    r = subprocess.run(["nsenter", f"--net={host_ns_path}", "tc", "qdisc", "replace", "dev", ifname, "root",
                        "netem", "delay", f"{delay_us}us"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"netem on {ifname}: {r.stderr.strip()}")


def inject_delay(target, fraction: float, results: dict) -> int:
    """Make ``target`` slower by about ``fraction`` on request/response; returns the delay (µs)."""
    probe = metrics.request_response(target.c2c(), duration=1.0)
    rtt_us = 1e6 / probe["tps"]
    delay_us = max(1, int(rtt_us * fraction / (1 - fraction)))
    target.delay_us = delay_us
    target.apply_delay()
    results.setdefault("injected", {})[target.name] = {"fraction": fraction, "netem_delay_us": delay_us,
                                                       "probe_tps": probe["tps"]}
    return delay_us

"""Datapath backends and the choice between them.

``kernel`` (Linux bridge + veth + iptables, the docker0-equivalent) is the reference model and the
fallback. ``select_datapath`` is the one place that picks a backend; later backends (ebpf) register
here with a probe that says why they can or cannot run.
"""

from __future__ import annotations

import logging

from ..errors import InvalidArgument
from .base import Datapath, DesiredState
from .ebpf import EbpfDatapath
from .kernel import KernelDatapath

log = logging.getLogger("dockline.datapath")

#: Ordered best first: "auto" takes the first whose probe passes.
BACKENDS = {"ebpf": EbpfDatapath, "kernel": KernelDatapath}


_probed: dict = {}


def probe(cached: bool = False) -> dict:
    """{backend name: (usable, reason)} for every known backend. The eBPF probe compiles and
    loads a program (hundreds of ms, and LLVM's memory stays with the process), so ``cached``
    answers with the last result this process got, probing only if it has none."""
    if cached and _probed:
        return dict(_probed)
    results = {name: cls.probe() for name, cls in BACKENDS.items()}
    _probed.clear()
    _probed.update(results)
    return results


def select_datapath(requested: str | None, host) -> Datapath:
    """The backend ``requested`` (``--datapath``/config), or the best one the probe allows."""
    results = probe()
    if requested and requested != "auto":
        if requested not in BACKENDS:
            raise InvalidArgument(f"unknown datapath {requested!r}: choose from {', '.join(BACKENDS)} or auto")
        ok, why = results[requested]
        if not ok:
            raise InvalidArgument(f"datapath {requested} is not usable here: {why}")
        log.info("datapath %s (requested)", requested)
        return BACKENDS[requested](host)
    for name in BACKENDS:   # ordered best first
        ok, why = results[name]
        if ok:
            log.info("datapath %s chosen by probe: %s", name, why)
            return BACKENDS[name](host)
    raise InvalidArgument("no datapath is usable: " + "; ".join(f"{n}: {w}" for n, (_, w) in results.items()))

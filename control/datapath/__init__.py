"""Datapaths, composed from a forwarding engine and a NAT engine, and the choice between them.

The names ``--datapath`` takes:

  kernel            kernel forwarding (Linux bridge) + iptables NAT: the docker0-equivalent, the
                    reference model and the fallback
  ebpf              eBPF forwarding (TC, bpf_redirect_peer) + eBPF NAT
  kernel+ebpfnat    kernel forwarding + eBPF NAT (published ports, masquerade and the user's nat
                    rules in compiled maps; the bridge forwards)
  auto              the first of ebpf, kernel whose probe passes

``FWD+NATnat`` spells any combination (``ebpf+ebpfnat`` is ``ebpf``, ``kernel+iptablesnat`` is
``kernel``); eBPF forwarding with iptables NAT is refused: its endpoint program translates.
``select_datapath`` is the one place that picks; a requested datapath probes only its own parts.
"""

from __future__ import annotations

import logging

from ..errors import InvalidArgument
from .base import Datapath, DesiredState  # noqa: F401
from .ebpf import EbpfForwarding, EbpfNat
from .kernel import IptablesNat, KernelForwarding

log = logging.getLogger("dockline.datapath")

FORWARDING = {"kernel": KernelForwarding, "ebpf": EbpfForwarding}
NAT = {"iptables": IptablesNat, "ebpf": EbpfNat}

#: The named datapaths, ordered best first: "auto" takes the first whose probe passes.
BACKENDS = {"ebpf": ("ebpf", "ebpf"), "kernel": ("kernel", "iptables")}
#: Further combinations with a name of their own.
COMBINATIONS = {"kernel+ebpfnat": ("kernel", "ebpf")}

_probed: dict = {}


def parts_of(name: str) -> tuple[str, str]:
    """(forwarding, nat) of a datapath name; an unknown name is a one-line InvalidArgument."""
    if name in BACKENDS:
        return BACKENDS[name]
    if name in COMBINATIONS:
        return COMBINATIONS[name]
    fwd, _, nat = name.partition("+")
    if fwd in FORWARDING and nat.endswith("nat") and nat[:-3] in NAT:
        return fwd, nat[:-3]
    raise InvalidArgument(f"unknown datapath {name!r}: choose from {', '.join([*BACKENDS, *COMBINATIONS])} "
                          f"or auto (or FORWARDING+NATnat, e.g. kernel+ebpfnat)")


def canonical_name(fwd: str, nat: str) -> str:
    for table in (BACKENDS, COMBINATIONS):
        for name, parts in table.items():
            if parts == (fwd, nat):
                return name
    return f"{fwd}+{nat}nat"


def _probe_parts(fwd: str, nat: str) -> tuple[bool, str]:
    """Probe the two parts (each probe is run once even when both parts share it)."""
    checks = dict.fromkeys((FORWARDING[fwd].probe, NAT[nat].probe))
    reasons = []
    for check in checks:
        ok, why = check()
        if not ok:
            return False, why
        reasons.append(why)
    return True, "; ".join(dict.fromkeys(reasons))


def probe(cached: bool = False) -> dict:
    """{backend name: (usable, reason)} for every named backend. The eBPF probe compiles and
    loads a program (hundreds of ms, and LLVM's memory stays with the process), so ``cached``
    answers with the last result this process got, probing only if it has none."""
    if cached and _probed:
        out = {}
        for name, parts in BACKENDS.items():
            if name in _probed:
                out[name] = _probed[name]
            elif not any(p.needs_bpf for p in (FORWARDING[parts[0]], NAT[parts[1]])):
                out[name] = _probe_parts(*parts)    # cheap: no program is compiled
            else:
                out[name] = (None, "not probed: the agent was started with a requested datapath")
        return out
    results = {name: _probe_parts(*parts) for name, parts in BACKENDS.items()}
    _probed.clear()
    _probed.update(results)
    return results


def build_datapath(name: str, host) -> Datapath:
    """The datapath ``name`` (no probe)."""
    fwd, nat = parts_of(name)
    return Datapath(host, FORWARDING[fwd](), NAT[nat](host), name=canonical_name(fwd, nat))


def select_datapath(requested: str | None, host) -> Datapath:
    """The datapath ``requested`` (``--datapath``/config), probing only its parts, or the best
    one the probe allows."""
    if requested and requested != "auto":
        fwd, nat = parts_of(requested)
        if FORWARDING[fwd].needs_nat and FORWARDING[fwd].needs_nat != nat:
            raise InvalidArgument(f"datapath {requested}: {fwd} forwarding needs {FORWARDING[fwd].needs_nat} NAT "
                                  f"(its endpoint program translates in place)")
        ok, why = _probe_parts(fwd, nat)
        _probed.setdefault(canonical_name(fwd, nat), (ok, why))
        if not ok:
            raise InvalidArgument(f"datapath {requested} is not usable here: {why}")
        log.info("datapath %s (requested)", requested)
        return build_datapath(requested, host)
    results = probe()
    for name in BACKENDS:   # ordered best first
        ok, why = results[name]
        if ok:
            log.info("datapath %s chosen by probe: %s", name, why)
            return build_datapath(name, host)
    raise InvalidArgument("no datapath is usable: " + "; ".join(f"{n}: {w}" for n, (_, w) in results.items()))

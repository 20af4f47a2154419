"""The kernel parts of a datapath: the host's DOCKLINE-* iptables chains (every datapath keeps
their filter rules, the isolation fence for what reaches the stack), kernel forwarding (the Linux
bridge forwards between a network's endpoints), and iptables NAT (DNAT of published ports,
masquerade), Docker's bridge-driver shapes.

Kernel forwarding with iptables NAT is the ``kernel`` datapath: both the fallback and the
reference model the eBPF parts are tested and measured against.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from ..errors import DatapathError
from . import iptables_rules as rules
from .base import DesiredState, ForwardingEngine, NatEngine, PortChanges

log = logging.getLogger("dockline.kernel")


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True)


def probe_iptables() -> tuple[bool, str]:
    missing = [t for t in ("iptables", "iptables-restore", "bridge") if shutil.which(t) is None]
    if missing:
        return False, "missing tools: " + ", ".join(missing)
    return True, "Linux bridge, veth and iptables are available"


class IptablesChains:
    """Our chains in the host's iptables: the jumps into them (installed once) and their content
    (rewritten atomically, only when it changed)."""

    def __init__(self):
        self._last_rules = None     # the text last restored: an unchanged rule set is not rewritten

    def setup_host(self):
        for table, chain, spec in rules.JUMPS:
            self._ensure_chain(table, spec[-1])
            if _run(["iptables", "-w", "-t", table, "-C", chain] + spec).returncode != 0:
                r = _run(["iptables", "-w", "-t", table, "-I", chain, "1"] + spec)
                if r.returncode != 0:
                    raise DatapathError(f"installing jump {table}/{chain} -> {spec[-1]} failed: {r.stderr.strip()}")

    @staticmethod
    def _ensure_chain(table, chain):
        if _run(["iptables", "-w", "-t", table, "-S", chain]).returncode != 0:
            _run(["iptables", "-w", "-t", table, "-N", chain])

    def teardown_host(self):
        self._last_rules = None
        self._restore(rules.render_teardown())
        for table, chain, spec in rules.JUMPS:
            while _run(["iptables", "-w", "-t", table, "-D", chain] + spec).returncode == 0:
                pass
        for table, chain in (("nat", rules.NAT_CHAIN), ("nat", rules.NAT_POST_CHAIN),
                             ("filter", rules.FWD_CHAIN), ("filter", rules.FILTER_CHAIN),
                             ("filter", rules.ISO1_CHAIN), ("filter", rules.ISO2_CHAIN)):
            _run(["iptables", "-w", "-t", table, "-X", chain])

    def sync(self, state: DesiredState, with_nat: bool):
        """The whole rule set is rendered and, if it differs, restored. Without NAT (eBPF NAT
        translates) the published ports are not even read."""
        published = []
        for pm in state.ports if with_nat else ():
            target = state.port_target(pm)
            if target is None:
                continue
            net = state.network(target.network_id)
            published.append(rules.PublishedPort(pm, target.ip, net.bridge))
        text = rules.render(state.networks, published, with_nat=with_nat)
        if text != self._last_rules:
            self._restore(text)
            self._last_rules = text

    def _restore(self, text: str):
        r = _run(["iptables-restore", "-w", "--noflush"], stdin=text)
        if r.returncode != 0:
            raise DatapathError(f"iptables-restore failed: {r.stderr.strip()}")

    @staticmethod
    def counters() -> list[dict]:
        """Packet counters of DOCKLINE-FORWARD."""
        r = _run(["iptables", "-w", "-t", "filter", "-L", rules.FWD_CHAIN, "-v", "-x", "-n"])
        rows = []
        for line in r.stdout.splitlines()[2:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0].isdigit():
                rows.append({"packets": int(parts[0]), "bytes": int(parts[1]), "target": parts[2],
                             "rule": " ".join(parts[3:])})
        return rows


class KernelForwarding(ForwardingEngine):
    """The Linux bridge forwards between a network's endpoints, iptables isolates networks. With
    eBPF NAT the endpoint programs still run (they translate), told by NET_F_KERNEL_FWD to leave
    every frame they do not translate to the bridge."""

    name = "kernel"
    fast_path = False

    @staticmethod
    def probe():
        return probe_iptables()

    def info(self):
        return {"forwarding": "Linux bridge (iptables isolation)"}


class IptablesNat(NatEngine):
    """Docker's iptables NAT: DNAT of published ports in DOCKLINE, masquerade in
    DOCKLINE-POSTROUTING. It has no nat-rule front end, no conntrack view of its own and no GC:
    those abilities keep the base's NotSupported answers."""

    name = "iptables"
    renders_iptables_nat = True

    @staticmethod
    def probe():
        return probe_iptables()

    def info(self):
        return {"rules": "iptables (DOCKLINE-* chains)",
                "nat_interfaces": {"*": "iptables: netfilter hooks every interface"}}

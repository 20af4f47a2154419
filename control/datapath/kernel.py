"""The kernel backend: Linux bridge + veth + iptables, the docker0-equivalent.

It is both the fallback datapath and the reference model the eBPF path is tested and measured
against, so it writes the same devices, sysctls and rule shapes Docker's bridge driver does.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess

from pyroute2 import IPRoute

from ..config import BRIDGE_PREFIX, DEFAULT_BRIDGE, VETH_PREFIX
from ..errors import DatapathError
from ..netlink import links
from . import iptables_rules as rules
from .base import Datapath, DesiredState, PortChanges

log = logging.getLogger("dockline.kernel")


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True)


class KernelDatapath(Datapath):
    name = "kernel"
    does_nat = True         # iptables DNAT/MASQUERADE (the eBPF backend translates in its programs)

    @classmethod
    def probe(cls):
        missing = [t for t in ("iptables", "iptables-restore", "bridge") if shutil.which(t) is None]
        if missing:
            return False, "missing tools: " + ", ".join(missing)
        return True, "Linux bridge, veth and iptables are available"

    def __init__(self, host):
        super().__init__(host)
        self.ipr = IPRoute()
        self._last_rules = None     # the text last restored: an unchanged rule set is not rewritten

    # ---------------------------------------------------------------- host
    def setup_host(self):
        links.write_sysctl("net.ipv4.ip_forward", "1")
        for table, chain, spec in rules.JUMPS:
            self._ensure_chain(table, spec[-1])
            if _run(["iptables", "-w", "-t", table, "-C", chain] + spec).returncode != 0:
                r = _run(["iptables", "-w", "-t", table, "-I", chain, "1"] + spec)
                if r.returncode != 0:
                    raise DatapathError(f"installing jump {table}/{chain} -> {spec[-1]} failed: {r.stderr.strip()}")

    def _ensure_chain(self, table, chain):
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

    # ---------------------------------------------------------------- networks
    def ensure_network(self, net):
        if net.driver != "bridge":
            return
        plen = ipaddress.IPv4Network(net.subnet).prefixlen
        links.ensure_bridge(self.ipr, net.bridge, net.mtu, f"{net.gateway}/{plen}")
        # Host-originated connections to published ports keep source 127.0.0.1 until POSTROUTING
        # masquerades them; the bridge must accept routing such packets (Docker does the same).
        links.write_sysctl(f"net.ipv4.conf.{net.bridge}.route_localnet", "1")

    def remove_network(self, net):
        if net.driver == "bridge":
            links.remove_link(self.ipr, net.bridge)

    # ---------------------------------------------------------------- endpoints
    def ensure_attachment(self, net, ep, att, primary):
        br = links.link_index(self.ipr, net.bridge)
        if br is None:
            self.ensure_network(net)
            br = links.link_index(self.ipr, net.bridge)
        plen = ipaddress.IPv4Network(net.subnet).prefixlen
        gateway = net.gateway if primary and not net.internal else None
        links.ensure_veth(self.ipr, att.host_ifname, br, ep.netns_path, att.ifname, att.mac,
                          f"{att.ip}/{plen}", net.mtu, gateway)
        links.set_hairpin(att.host_ifname)

    def remove_attachment(self, net, ep, att):
        links.remove_link(self.ipr, att.host_ifname)

    # ---------------------------------------------------------------- policy
    def sync_policy(self, state: DesiredState, changes: PortChanges | None = None):
        """The whole rule set is rendered and, if it differs, restored: ``changes`` is not used.
        Without NAT (the eBPF backend's filter rules) the published ports are not even read."""
        published = []
        for pm in state.ports if self.does_nat else ():
            target = state.port_target(pm)
            if target is None:
                continue
            net = state.network(target.network_id)
            published.append(rules.PublishedPort(pm, target.ip, net.bridge))
        text = rules.render(state.networks, published, with_nat=self.does_nat)
        if text != self._last_rules:
            self._restore(text)
            self._last_rules = text

    def _restore(self, text: str):
        r = _run(["iptables-restore", "-w", "--noflush"], stdin=text)
        if r.returncode != 0:
            raise DatapathError(f"iptables-restore failed: {r.stderr.strip()}")

    # ---------------------------------------------------------------- reconcile
    def remove_orphans(self, state):
        want = {n.bridge for n in state.networks if n.driver == "bridge"}
        want |= {a.host_ifname for a in state.attachments}
        removed = []
        for name in links.host_links(self.ipr, (BRIDGE_PREFIX, VETH_PREFIX, "dlp", DEFAULT_BRIDGE)):
            if name not in want:
                links.remove_link(self.ipr, name)
                removed.append(name)
        return removed

    def info(self):
        return {"name": self.name, "rules": "iptables (DOCKLINE-* chains)"}

    def stats(self, state=None) -> dict:
        """Packet counters of our iptables chains (the kernel backend has no BPF counters)."""
        r = _run(["iptables", "-w", "-t", "filter", "-L", rules.FWD_CHAIN, "-v", "-x", "-n"])
        rows = []
        for line in r.stdout.splitlines()[2:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0].isdigit():
                rows.append({"packets": int(parts[0]), "bytes": int(parts[1]), "target": parts[2],
                             "rule": " ".join(parts[3:])})
        return {"datapath": self.name, "forward_rules": rows}

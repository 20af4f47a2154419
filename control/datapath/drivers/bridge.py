"""Bridge networks: a Linux bridge per network in the host netns, the gateway address on it, and
a veth pair per endpoint whose host end is a bridge port (Docker's bridge driver)."""

from __future__ import annotations

import ipaddress

from ...config import BRIDGE_PREFIX, DEFAULT_BRIDGE, VETH_PREFIX
from ...netlink import links
from .base import Joined, NetworkDriver


class BridgeDriver(NetworkDriver):
    name = "bridge"
    creatable = True
    attachable = True
    publishes_ports = True
    masquerades = True
    host_device = True
    # "dlp": a veth peer's temporary name before it moves into the endpoint (a crash leaves it)
    host_prefixes = (BRIDGE_PREFIX, VETH_PREFIX, "dlp", DEFAULT_BRIDGE)

    def ensure_network(self, net):
        plen = ipaddress.IPv4Network(net.subnet).prefixlen
        links.ensure_bridge(self.dp.ipr, net.bridge, net.mtu, f"{net.gateway}/{plen}")
        # Host-originated connections to published ports keep source 127.0.0.1 until POSTROUTING
        # masquerades them; the bridge must accept routing such packets (Docker does the same).
        links.write_sysctl(f"net.ipv4.conf.{net.bridge}.route_localnet", "1")

    def remove_network(self, net):
        links.remove_link(self.dp.ipr, net.bridge)

    def ensure_attachment(self, net, ep, att, primary):
        ipr = self.dp.ipr
        br = links.link_index(ipr, net.bridge)
        if br is None:
            self.ensure_network(net)
            br = links.link_index(ipr, net.bridge)
        plen = ipaddress.IPv4Network(net.subnet).prefixlen
        gateway = net.gateway if primary and not net.internal else None
        idx = links.ensure_veth(ipr, att.host_ifname, br, ep.netns_path, att.ifname, att.mac,
                                f"{att.ip}/{plen}", net.mtu, gateway)
        links.set_hairpin(att.host_ifname)
        return Joined(host_ifindex=idx)

    def remove_attachment(self, net, ep, att, netns_going=False):
        if netns_going:             # the pair dies with its inside end: the kernel batches that
            return [att.host_ifname]
        links.remove_link(self.dp.ipr, att.host_ifname)
        return []

    def wanted_host_links(self, state):
        want = {n.bridge for n in state.networks if n.driver == self.name}
        return want | {a.host_ifname for a in state.attachments if state.network(a.network_id).driver == self.name}

"""The eBPF backend: TC programs on every endpoint's host-side veth (ebpf/tc_endpoint.c) do
anti-spoofing, network isolation and same-network forwarding with bpf_redirect_peer; native XDP
on the uplink (ebpf/xdp_uplink.c) drops spoofed and broken packets early.

It builds on the kernel backend: the bridge stays for ARP, broadcast and the gateway, and
iptables still does NAT until eBPF NAT lands. The control plane owns the maps: they hold
exactly what the store says, so learning never creates state (anti-spoofing, design §3.2).
"""

from __future__ import annotations

import logging
import os
import shutil
import zlib

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import DatapathError
from ..netlink import links
from . import bpf_structs as S
from . import loader
from .kernel import KernelDatapath

log = logging.getLogger("dockline.ebpf")

TC_PRIO = 10            # our filter's priority on clsact ingress (fault injection uses 1)
TC_HANDLE = ":1"
INGRESS = "ffff:fff2"
XDP_FLAGS_DRV_MODE = 1 << 2


def net_number(net_id: str) -> int:
    """The u32 network number the programs compare (stable for a network's life)."""
    return (zlib.crc32(net_id.encode()) & 0x7FFFFFFF) or 1


class EbpfDatapath(KernelDatapath):
    name = "ebpf"

    @classmethod
    def probe(cls):
        ok, why = KernelDatapath.probe()
        if not ok:
            return ok, why
        return loader.probe()

    def __init__(self, host):
        super().__init__(host)
        self.programs: loader.Programs | None = None
        self.maps: dict[str, loader.PinnedMap] = {}
        self.uplink_xdp = getattr(host, "uplink_xdp", "")

    # ---------------------------------------------------------------- host
    def setup_host(self):
        super().setup_host()
        self.programs = loader.Programs(self.host.bpf_dir).load()
        root = str(self.programs.root)
        self.maps = {
            "by_ifindex": loader.PinnedMap(f"{root}/endpoints_by_ifindex", S.ctypes.c_uint32, S.EndpointInfo),
            "by_ip": loader.PinnedMap(f"{root}/endpoints_by_ip", S.ctypes.c_uint32, S.IpEndpoint),
            "published": loader.PinnedMap(f"{root}/published_ports", S.PublishedKey, S.ctypes.c_uint8),
            "subnets": loader.PinnedMap(f"{root}/local_subnets", S.SubnetKey, S.ctypes.c_uint8),
            "verdicts": loader.PinnedMap(f"{root}/verdicts", S.ctypes.c_uint32, S.Counter, percpu=True),
            "ep_stats": loader.PinnedMap(f"{root}/endpoint_stats", S.ctypes.c_uint32, S.EndpointStats, percpu=True),
        }
        if self.uplink_xdp:
            self._attach_xdp(self.uplink_xdp)

    def teardown_host(self):
        if self.uplink_xdp:
            idx = links.link_index(self.ipr, self.uplink_xdp)
            if idx is not None:
                try:
                    self.ipr.link("set", index=idx, xdp_fd=-1)
                except NetlinkError:
                    pass
        for m in self.maps.values():
            m.close()
        self.maps = {}
        super().teardown_host()
        shutil.rmtree(self.host.bpf_dir, ignore_errors=True)

    def _attach_xdp(self, ifname: str):
        """Native (driver) XDP only; generic XDP is never attached outside tests."""
        idx = links.link_index(self.ipr, ifname)
        if idx is None:
            raise DatapathError(f"uplink {ifname} does not exist")
        fd = self.programs.progs["xdp_uplink"].fd
        try:
            self.ipr.link("set", index=idx, xdp_fd=fd, xdp_flags=XDP_FLAGS_DRV_MODE)
        except NetlinkError as e:
            log.warning("native XDP on %s is not supported (%s): uplink early drops are off", ifname, e)
            return
        log.info("native XDP attached on uplink %s", ifname)

    # ---------------------------------------------------------------- endpoints
    def ensure_attachment(self, net, ep, att, primary):
        super().ensure_attachment(net, ep, att, primary)
        idx = links.link_index(self.ipr, att.host_ifname)
        info = S.EndpointInfo(mac=S.mac_bytes(att.mac), flags=0, ip=S.be32(att.ip), net_id=net_number(net.id))
        self.maps["by_ifindex"].update(idx, info)
        self.maps["by_ip"].update(S.be32(att.ip), S.IpEndpoint(ifindex=idx, net_id=net_number(net.id),
                                                               mac=S.mac_bytes(att.mac), flags=0))
        self._attach_tc(idx, att.host_ifname)

    def _attach_tc(self, idx: int, ifname: str):
        prog = self.programs.progs["tc_from_endpoint"]
        try:
            try:
                self.ipr.tc("add", "clsact", idx)
            except NetlinkError as e:
                if e.code != 17:   # EEXIST
                    raise
            # replace is atomic: a restart re-attaching the same program drops nothing
            self.ipr.tc("replace-filter", "bpf", idx, TC_HANDLE, fd=prog.fd, name=prog.name,
                        parent=INGRESS, classid=1, direct_action=True, prio=TC_PRIO)
        except NetlinkError as e:
            raise DatapathError(f"attaching tc_from_endpoint to {ifname} failed: {e}") from None

    def remove_attachment(self, net, ep, att):
        idx = links.link_index(self.ipr, att.host_ifname)
        if idx is not None:
            self.maps["by_ifindex"].delete(idx)
            self.maps["ep_stats"].delete(idx)
        cur = self.maps["by_ip"].lookup(S.be32(att.ip))
        if cur is not None and (idx is None or cur.ifindex == idx):
            self.maps["by_ip"].delete(S.be32(att.ip))
        super().remove_attachment(net, ep, att)

    # ---------------------------------------------------------------- policy
    def sync_policy(self, state):
        super().sync_policy(state)
        want_pub = set()
        for pm in state.ports:
            target = state.port_target(pm)
            if target is not None:
                want_pub.add((S.be32(target.ip), S.be16(pm.container_port), 6 if pm.proto == "tcp" else 17))
        self._sync_set(self.maps["published"], want_pub,
                       lambda k: (k.ip, k.port, k.proto), lambda t: S.PublishedKey(t[0], t[1], t[2], 0))
        want_nets = set()
        for n in state.networks:
            if n.subnet:
                addr, plen = n.subnet.split("/")
                want_nets.add((int(plen), S.be32(addr)))
        self._sync_set(self.maps["subnets"], want_nets, lambda k: (k.prefixlen, k.addr),
                       lambda t: S.SubnetKey(t[0], t[1]))

    @staticmethod
    def _sync_set(m, want: set, to_tuple, to_key):
        have = {to_tuple(k) for k in m.keys()}
        for t in have - want:
            m.delete(to_key(t))
        for t in want - have:
            m.update(to_key(t), S.ctypes.c_uint8(1))

    def remove_orphans(self, state):
        removed = super().remove_orphans(state)
        live = {}
        for a in state.attachments:
            idx = links.link_index(self.ipr, a.host_ifname)
            if idx is not None:
                live[idx] = a
        for k in self.maps["by_ifindex"].keys():
            if k.value not in live:
                self.maps["by_ifindex"].delete(k)
                removed.append(f"map entry ifindex {k.value}")
        ips = {S.be32(a.ip) for a in live.values()}
        for k in self.maps["by_ip"].keys():
            if k.value not in ips:
                self.maps["by_ip"].delete(k)
                removed.append(f"map entry {S.ip_text(k.value)}")
        for k in self.maps["ep_stats"].keys():
            if k.value not in live:
                self.maps["ep_stats"].delete(k)
        gone = self.programs.remove_stale()
        removed += [f"stale programs {d}" for d in gone]
        return removed

    # ---------------------------------------------------------------- observability
    def stats(self, state=None) -> dict:
        verdicts = {}
        for code in S.Verdict:
            vals = self.maps["verdicts"].lookup(int(code)) or []
            pk, by = sum(v.packets for v in vals), sum(v.bytes for v in vals)
            if pk:
                verdicts[code.name.lower()] = {"code": int(code), "packets": pk, "bytes": by, "drop": code.is_drop}
        names = {}
        if state is not None:
            for a in state.attachments:
                idx = links.link_index(self.ipr, a.host_ifname)
                if idx is not None:
                    names[idx] = (state.endpoint(a.endpoint_id).name, state.network(a.network_id).name)
        endpoints = []
        for k, vals in self.maps["ep_stats"].items():
            ep, net = names.get(k.value, ("?", "?"))
            row = {"ifindex": k.value, "endpoint": ep, "network": net}
            for f in ("redirected", "passed", "dropped"):
                row[f] = {"packets": sum(getattr(v, f).packets for v in vals),
                          "bytes": sum(getattr(v, f).bytes for v in vals)}
            endpoints.append(row)
        return {"datapath": self.name, "verdicts": verdicts, "endpoints": endpoints}

    def info(self):
        p = self.programs
        return {"name": self.name, "rules": "TC clsact programs + iptables NAT",
                "programs_digest": p.digest if p else "", "compiled_this_start": bool(p and p.compiled),
                "pins": str(p.root) if p else "", "uplink_xdp": self.uplink_xdp or "off",
                "endpoints_in_map": len(self.maps["by_ifindex"].keys()) if self.maps else 0}

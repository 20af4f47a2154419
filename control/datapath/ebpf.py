"""The eBPF parts of a datapath, and the programs and maps they share.

  * EbpfRuntime: the programs (compiled once, pinned), the maps, the TC filters on endpoint
    ports, the per-network and per-endpoint map entries, and the guard of macvlan endpoints
    (tc_guard_endpoint on their own interface: anti-spoofing counted by reason).
  * EbpfForwarding: the endpoint programs deliver same-network frames with bpf_redirect_peer and
    drop cross-network ones (ebpf/tc_endpoint.c). Needs eBPF NAT: the same program translates.
  * EbpfNat: one NAT engine for everything. The control plane's published ports and masquerade
    are nat rules (Docker's shapes, in chains DOCKLINE and DOCKLINE-POSTROUTING,
    control/nat/managed.py) compiled together with the rules users give ``dockline iptables -t
    nat`` (control/nat/compiler.py) into maps (nat_maps.py); TC on each uplink
    (ebpf/tc_uplink.c), native XDP there where a probe says it pays (ebpf/xdp_uplink.c), socket-
    layer DNAT for the host's own processes (ebpf/cgroup_sock.c), tc_loopback on lo when a rule
    could translate host-local traffic. iptables does no NAT then; it keeps the filter rules.
    With kernel forwarding, the endpoint programs still translate, and leave every other frame to
    the bridge (NET_F_KERNEL_FWD).

The control plane owns the maps: they hold exactly what the store says, so learning never
creates state (anti-spoofing, design §3.2). Conntrack entries are the datapath's; the agent only
deletes expired ones (ct_gc.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import time
import zlib

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import protocols
from ..errors import DatapathError
from ..nat import compiler as nat_compiler
from ..nat.managed import exact_entry, exact_key, ip_of, merged_identity, merged_rules, published_ports
from ..nat.reach import bridged_nat_bridges, loopback_may_translate, loopback_sources
from ..nat import wildcards
from ..nat.rules import Ruleset, iface_matches, is_iface_wildcard
from ..netlink import links
from ..netlink.netns import run_in_netns
from ..netlink.source_choice import route_sources
from ..netlink.watch import AddressWatch, LinkWatch
from . import bpf_structs as S
from . import cgroup_attach, loader, map_schema
from .base import ForwardingEngine, NatEngine, PortChanges
from .ct_gc import ConntrackGC
from .drivers import driver_class
from .kernel import probe_iptables
from .nat_interfaces import NatInterfaces
from .nat_maps import NatMaps, table_shift

log = logging.getLogger("dockline.ebpf")

TC_PRIO = 10            # our filter's priority on clsact (fault injection uses 1)
TC_HANDLE = ":1"
INGRESS = "ffff:fff2"
EGRESS = "ffff:fff3"
XDP_FLAGS_DRV_MODE = 1 << 2
NAT_PORT_RANGE = (61000, 65535)    # masquerade source ports: outside the host's ip_local_port_range

SOCK_PROGRAMS = (("sock_connect4", loader.BPF_CGROUP_INET4_CONNECT),
                 ("sock_sendmsg4", loader.BPF_CGROUP_UDP4_SENDMSG),
                 ("sock_recvmsg4", loader.BPF_CGROUP_UDP4_RECVMSG),
                 ("sock_getpeername4", loader.BPF_CGROUP_INET4_GETPEERNAME),
                 ("sock_getsockname4", loader.BPF_CGROUP_INET4_GETSOCKNAME))


def net_number(net_id: str) -> int:
    """The u32 network number the programs compare (stable for a network's life)."""
    return (zlib.crc32(net_id.encode()) & 0x7FFFFFFF) or 1


def probe() -> tuple[bool, str]:
    """Can the eBPF parts run here? (iptables too: its filter rules stay the isolation fence.)"""
    ok, why = probe_iptables()
    if not ok:
        return ok, why
    return loader.probe()


def loopback_masquerade_source(addrs, lo_index: int | None) -> str | None:
    """The source MASQUERADE gives a packet leaving by lo, as the kernel picks it
    (inet_select_addr(lo, ..., RT_SCOPE_UNIVERSE)): a primary universe-scope address of lo if
    it has one, else the first primary universe-scope address of any interface (by index);
    127.0.0.1 has host scope and never qualifies. ``addrs``: pyroute2 IPv4 address messages."""
    def usable(a):
        return a["scope"] == 0 and not a["flags"] & 0x01          # RT_SCOPE_UNIVERSE, !IFA_F_SECONDARY
    cands = sorted((a for a in addrs if usable(a)), key=lambda a: (a["index"] != lo_index, a["index"]))
    return cands[0].get_attr("IFA_ADDRESS") if cands else None


def _iface_names(rs: Ruleset) -> set[str]:
    return {n for rules in rs.chains.values() for r in rules for n in (r.in_iface, r.out_iface) if n}


def _named_by(names: set[str], link: str) -> bool:
    """Whether a rule naming ``names`` (exact or PREFIX+) cares about interface ``link``."""
    return any(iface_matches(n, link) for n in names)




def tc_attach(ipr, idx: int, ifname: str, prog, parent: str) -> None:
    """``prog`` as the direct-action filter on ``parent`` (INGRESS/EGRESS) of ``idx``, through
    ``ipr`` (the netns the device lives in). ``replace`` is atomic: a restart re-attaching the
    same program drops nothing."""
    try:
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as e:
            if e.code != 17:   # EEXIST
                raise
        ipr.tc("replace-filter", "bpf", idx, TC_HANDLE, fd=prog.fd, name=prog.name,
               parent=parent, classid=1, direct_action=True, prio=TC_PRIO)
    except NetlinkError as e:
        raise DatapathError(f"attaching {prog.name} to {ifname} failed: {e}") from None


class EbpfRuntime:
    """The loaded programs and pinned maps of a host, and the map entries and filters of its
    networks and endpoints. Made by the composed datapath when a part needs it."""

    def __init__(self, host, ipr: IPRoute):
        self.host, self.ipr = host, ipr
        self.programs: loader.Programs | None = None
        self.maps: dict[str, loader.PinnedMap] = {}

    def setup(self) -> None:
        self.programs = loader.Programs(self.host.bpf_dir).load()
        self.maps = map_schema.open_maps(self.programs.root)     # every map of maps.h, by handle

    def teardown(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps = {}

    def remove_pins(self) -> None:
        shutil.rmtree(self.host.bpf_dir, ignore_errors=True)

    def tc_filter(self, idx: int, ifname: str, fn: str, parent: str) -> None:
        """Program ``fn`` on a device of the host netns."""
        tc_attach(self.ipr, idx, ifname, self.programs.progs[fn], parent)

    # ---------------------------------------------------------------- networks
    def ensure_net_info(self, net, flags: int) -> None:
        idx = links.link_index(self.ipr, net.bridge)
        if idx is None:
            return
        mac = self.ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        self.maps["net_info"].update(net_number(net.id), S.NetInfo(
            bridge_ifindex=idx, gateway=S.be32(net.gateway), gw_mac=S.mac_bytes(mac), flags=flags))

    def remove_net_info(self, net) -> None:
        self.maps["net_info"].delete(net_number(net.id))

    # ---------------------------------------------------------------- endpoints
    def attach_port(self, net, ep, att, idx: int, gro: bool) -> None:
        """The endpoint's host-side port ``idx``: its map entries and both TC programs. ``gro``:
        XDP on an uplink redirects into the host end; the frame lands in the container end's
        NAPI ring, which exists only with GRO on (without it: silently dropped)."""
        flags = S.EP_F_INTERNAL if net.internal else 0
        info = S.EndpointInfo(mac=S.mac_bytes(att.mac), flags=flags, ip=S.be32(att.ip), net_id=net_number(net.id))
        self.maps["by_ifindex"].update(idx, info)
        self.maps["by_ip"].update(S.be32(att.ip), S.IpEndpoint(ifindex=idx, net_id=net_number(net.id),
                                                               mac=S.mac_bytes(att.mac), flags=flags))
        self.tc_filter(idx, att.host_ifname, "tc_from_endpoint", INGRESS)
        self.tc_filter(idx, att.host_ifname, "tc_to_endpoint", EGRESS)
        if gro:
            links.set_gro(ep.netns_path, att.ifname, True)

    def guard_inside(self, net, ep, att, idx: int) -> None:
        """A macvlan endpoint's own interface ``idx`` (inside its netns): its map entry and
        tc_guard_endpoint on its egress. The program's fd is this process's, so the filter is
        attached from a thread that entered the netns."""
        info = S.EndpointInfo(mac=S.mac_bytes(att.mac), flags=S.EP_F_INTERNAL if net.internal else 0,
                              ip=S.be32(att.ip), net_id=net_number(net.id))
        self.maps["guarded"].update(idx, info)
        prog = self.programs.progs["tc_guard_endpoint"]

        def attach():
            with IPRoute() as ipr:
                tc_attach(ipr, idx, f"{att.ifname} of {ep.name}", prog, EGRESS)
        run_in_netns(ep.netns_path, attach)

    def detach(self, net, ep, att, guarded: bool) -> None:
        if guarded:
            for k, v in self.maps["guarded"].items():
                if v.ip == S.be32(att.ip) and v.net_id == net_number(net.id):
                    self.maps["guarded"].delete(k)
            return
        idx = links.link_index(self.ipr, att.host_ifname)
        if idx is not None:
            self.maps["by_ifindex"].delete(idx)
            self.maps["ep_stats"].delete(idx)
        cur = self.maps["by_ip"].lookup(S.be32(att.ip))
        if cur is not None and (idx is None or cur.ifindex == idx):
            self.maps["by_ip"].delete(S.be32(att.ip))

    # ---------------------------------------------------------------- reconcile
    def remove_orphans(self, state) -> list[str]:
        removed = []
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
        guarded = {(S.be32(a.ip), net_number(a.network_id)) for a in state.attachments}
        for k, v in self.maps["guarded"].items():
            if (v.ip, v.net_id) not in guarded:
                self.maps["guarded"].delete(k)
                removed.append(f"guard entry {S.ip_text(v.ip)}")
        for k in self.maps["ep_stats"].keys():
            if k.value not in live:
                self.maps["ep_stats"].delete(k)
        nets = {net_number(n.id) for n in state.networks}
        for k in self.maps["net_info"].keys():
            if k.value not in nets:
                self.maps["net_info"].delete(k)
        return removed

    def remove_stale_programs(self) -> list[str]:
        """Pins of older program digests (the socket programs among them detached first)."""
        self.detach_stale_sock_programs(keep=self.programs.digest)
        return [f"stale programs {d}" for d in self.programs.remove_stale()]

    def detach_stale_sock_programs(self, keep: str | None):
        """Detach socket programs pinned under older digests (before their pins go)."""
        progs = self.programs.root / "progs"
        for d in progs.iterdir() if progs.exists() else []:
            if d.name == keep:
                continue
            for fn, kind in SOCK_PROGRAMS:
                pin = d / fn
                if pin.exists():
                    fd = loader.obj_get(str(pin))
                    try:
                        cgroup_attach.detach(fd, kind)
                    finally:
                        os.close(fd)

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
        nat = {c.name.lower(): sum(v.value for v in (self.maps["nat_counters"].lookup(int(c)) or []))
               for c in S.NatCounter}
        return {"verdicts": verdicts, "endpoints": endpoints, "nat": nat}

    def info(self) -> dict:
        p = self.programs
        return {"programs_digest": p.digest if p else "", "compiled_this_start": bool(p and p.compiled),
                # "pins" (adopted, a restart), "cache" (compile cache) or "compiled" (bcc ran)
                "programs_origin": p.origin if p else "",
                "pins": str(p.root) if p else "",
                "endpoints_in_map": len(self.maps["by_ifindex"].keys()) if self.maps else 0}


class EbpfForwarding(ForwardingEngine):
    """Same-network frames go straight into the peer's netns (bpf_redirect_peer), cross-network
    ones are dropped, by tc_from_endpoint; it translates too, so eBPF NAT comes with it."""

    name = "ebpf"
    fast_path = True
    needs_bpf = True
    needs_nat = "ebpf"

    probe = staticmethod(probe)     # the module's probe: one object, so it runs once for both parts

    def info(self):
        return {"forwarding": "TC programs on endpoint ports (bpf_redirect_peer)"}


class EbpfNat(NatEngine):
    """Compiled nat rules and conntrack in maps, run by TC (and XDP) programs; see the module
    docstring. Set up after the runtime (``dp.bpf``)."""

    name = "ebpf"
    needs_bpf = True

    probe = staticmethod(probe)     # the module's probe: one object, so it runs once for both parts

    def __init__(self, host):
        self.host = host
        self.bpf: EbpfRuntime | None = None
        self.ipr: IPRoute | None = None
        self.uplink_xdp = getattr(host, "uplink_xdp", "")
        self.xdp_attached: dict[str, str] = {}       # uplink -> why XDP runs there
        self.xdp_declined: dict[str, str] = {}       # uplink -> why it stays at TC only
        self.uplinks: list[str] = []                 # where the uplink programs run now
        self.interfaces: NatInterfaces | None = None  # which ones they go on (setup_host)
        self._link_watch: LinkWatch | None = None
        self.nat: NatMaps | None = None
        self.gc: ConntrackGC | None = None
        self.cookie = 0
        self.last_nat_apply: dict = {}
        self._last_compile: dict | None = None     # what apply_nat compiled last (fast path)
        self._checked: tuple | None = None          # (key, Program) check_nat compiled, for apply_nat
        self._rule_ifaces: set[str] = set()         # the -i/-o names (PREFIX+ too) of the last compile
        self._rule_iface_idx: set[int] = set()      # ... and the ifindexes they resolved to
        self._bridged: set[str] = set()             # bridges with NET_F_BRIDGED_NAT
        self._bridged_key = None
        self._local_prefixes: set[str] = set()     # the host's local routes ("a.b.c.d/len")
        self._loopback_attached: bool | None = None  # tc_loopback on lo (None: not known yet)
        self._loopback_key = None
        self._synced_subnets: set | None = None    # what local_subnets was last made to hold
        self._addr_watch: AddressWatch | None = None

    @property
    def xdp_redirects(self) -> bool:
        return bool(self.xdp_attached)

    @property
    def maps(self) -> dict:
        return self.bpf.maps

    @property
    def programs(self):
        return self.bpf.programs

    def _tc_filter(self, idx, ifname, fn, parent):
        self.bpf.tc_filter(idx, ifname, fn, parent)

    # ---------------------------------------------------------------- host
    def setup_host(self, dp):
        self.bpf, self.ipr, self._dp = dp.bpf, dp.ipr, dp
        self.nat = NatMaps(self.maps["nat_config"], self.maps["nat_rules"], self.maps["nat_exact"],
                           self.maps["nat_shapes"], self.maps["nat_cls"])
        self.cookie = cgroup_attach.netns_cookie()
        self.gc = ConntrackGC(self.maps["ct"])
        self._last_compile = self._synced_subnets = None
        if self._addr_watch is None:
            self._addr_watch = AddressWatch()
        self._addr_watch.invalidate()
        own = tuple(p for drv in dp.drivers.values() for p in drv.host_prefixes)
        self.interfaces = NatInterfaces(getattr(self.host, "nat_interfaces", "all"),
                                        getattr(self.host, "nat_exclude", ()),
                                        list(getattr(self.host, "uplinks", []) or [])
                                        + ([self.uplink_xdp] if self.uplink_xdp else []), own)
        if self._link_watch is None:
            self._link_watch = LinkWatch()      # before the dump: nothing falls between the two
        self.uplinks = []
        self._attach_interfaces()
        for up in self.interfaces.named():
            self._maybe_attach_xdp(up, forced=up == self.uplink_xdp)
        for fn, kind in SOCK_PROGRAMS:
            cgroup_attach.attach(self.programs.progs[fn].fd, kind)
        log.info("socket-layer NAT attached to the cgroup root (host netns cookie %d)", self.cookie)

    def teardown_host(self, dp):
        self.bpf, self.ipr = dp.bpf, dp.ipr
        for up in dict.fromkeys(list(self.xdp_attached) + self.uplinks + ([self.uplink_xdp] if self.uplink_xdp else [])):
            idx = links.link_index(self.ipr, up)
            if idx is not None:
                try:
                    self.ipr.link("set", index=idx, xdp_fd=-1)
                except NetlinkError:
                    pass
        self.xdp_attached = {}
        if self._link_watch is not None:
            self._link_watch.close()
            self._link_watch = None
        for up in self.uplinks:
            idx = links.link_index(self.ipr, up)
            if idx is not None:
                for parent in (INGRESS, EGRESS):
                    try:
                        self.ipr.tc("del-filter", "bpf", idx, TC_HANDLE, parent=parent, prio=TC_PRIO)
                    except NetlinkError:
                        pass
        if self.bpf and self.bpf.programs:
            for fn, kind in SOCK_PROGRAMS:
                cgroup_attach.detach(self.programs.progs[fn].fd, kind)
            self.bpf.detach_stale_sock_programs(keep=None)
        self._detach_loopback()
        self._last_compile = self._synced_subnets = None
        if self._addr_watch is not None:
            self._addr_watch.close()
            self._addr_watch = None

    def _maybe_attach_xdp(self, ifname: str, forced: bool):
        """Native XDP on an uplink's ingress (ebpf/xdp_uplink.c: early drops, then NAT for flows
        into endpoints), where a probe says it pays: a device of a virtual kind (veth, bridge...)
        stays at TC, because native XDP on a veth takes GSO from its peer and its frames carry
        partial checksums (technical notes §1.1, §1.6), unless ``forced`` (--uplink-xdp). A
        driver without native XDP stays at TC. Generic XDP is never attached."""
        idx = links.link_index(self.ipr, ifname)
        if idx is None:
            raise DatapathError(f"uplink {ifname} does not exist")
        kind = links.link_kind(self.ipr, idx)
        if kind and not forced:
            self.xdp_declined[ifname] = (f"{kind} device: native XDP would cost its peer GSO and checksum "
                                         f"offload (pass --uplink-xdp {ifname} to force it)")
            log.info("uplink %s stays at TC: %s", ifname, self.xdp_declined[ifname])
            return
        fd = self.programs.progs["xdp_uplink"].fd
        try:
            self.ipr.link("set", index=idx, xdp_fd=fd, xdp_flags=XDP_FLAGS_DRV_MODE)
        except NetlinkError as e:
            self.xdp_declined[ifname] = f"the driver has no native XDP ({e})"
            log.warning("uplink %s stays at TC: %s", ifname, self.xdp_declined[ifname])
            return
        self.xdp_attached[ifname] = "forced" if forced else "probe"
        self.xdp_declined.pop(ifname, None)
        log.info("native XDP attached on uplink %s (early drops, NAT into endpoints)%s", ifname,
                 " as asked" if forced else "")

    def _attach_uplink(self, ifname: str, idx: int | None = None):
        idx = idx if idx is not None else links.link_index(self.ipr, ifname)
        if idx is None:
            raise DatapathError(f"uplink {ifname} does not exist")
        self._tc_filter(idx, ifname, "tc_uplink_ingress", INGRESS)
        self._tc_filter(idx, ifname, "tc_uplink_egress", EGRESS)
        self.interfaces.attached[ifname] = idx
        self.interfaces.skipped.pop(ifname, None)
        if ifname not in self.uplinks:
            self.uplinks.append(ifname)
        log.info("NAT attached on %s (tc ingress and egress)", ifname)

    # ---------------------------------------------------------------- which interfaces
    def _attach_interfaces(self) -> None:
        """Put the uplink programs on every interface the policy picks (module nat_interfaces),
        from a dump of the host's links; a named one that is missing is an error, any other
        that fails is recorded and logged."""
        for name in self.interfaces.named():
            if links.link_index(self.ipr, name) is None:
                raise DatapathError(f"uplink {name} does not exist")
        found = {}
        for link in self.ipr.get_links():
            found[link["index"]] = (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MASTER") or 0)
        for idx, (name, master) in sorted(found.items()):
            self._consider(idx, name, master, found)

    def _consider(self, idx: int, name: str, master: int, found: dict | None = None) -> None:
        master_name = ""
        if master:
            master_name = (found or {}).get(master, (None,))[0] or ""
            if not master_name:
                try:
                    master_name = socket.if_indextoname(master)
                except OSError:
                    master_name = ""
        is_bridge_port = bool(master) and self._is_bridge(master)
        why = self.interfaces.decide(name, is_bridge_port, master_name)
        if why is not None:
            if name in self.interfaces.attached:
                self._detach_uplink(name)
            self.interfaces.skipped[name] = why
            return
        if self.interfaces.attached.get(name) == idx:
            return
        try:
            self._attach_uplink(name, idx)
        except (DatapathError, NetlinkError, OSError) as e:
            if name in self.interfaces.named():
                raise
            self.interfaces.skipped[name] = f"attaching failed: {e}"
            log.warning("NAT not attached on %s: %s; published ports are not reachable through it", name, e)

    def _is_bridge(self, index: int) -> bool:
        try:
            return links.link_kind(self.ipr, index) == "bridge"
        except NetlinkError:
            return False

    def _detach_uplink(self, name: str) -> None:
        idx = self.interfaces.attached.pop(name, None)
        if name in self.uplinks:
            self.uplinks.remove(name)
        if idx is None:
            return
        for parent in (INGRESS, EGRESS):
            try:
                self.ipr.tc("del-filter", "bpf", idx, TC_HANDLE, parent=parent, prio=TC_PRIO)
            except NetlinkError:
                pass
        log.info("NAT detached from %s", name)

    def link_watch_fd(self) -> int | None:
        return self._link_watch.fileno() if self._link_watch is not None else None

    def refresh_interfaces(self, dp) -> bool:
        """Follow the host's interfaces since the last look (the agent's link-watch thread calls
        this when the watch socket is readable): new ones get NAT if the policy says so, gone
        ones are forgotten; lost events mean a full dump. Returns whether an interface that
        the nat rules name (exactly or by a PREFIX+ wildcard) appeared, went or was renamed:
        then the rules must be compiled again (the caller applies them)."""
        if self._link_watch is None or self.interfaces is None:
            return False
        events = self._link_watch.events()
        self._sync_host_addresses()     # an address on a new interface: published ports answer there
        if events is None:
            self._attach_interfaces()
            return bool(self._rule_ifaces)
        latest: dict[int, tuple[str, int, str]] = {}
        for kind, idx, name, master in events:
            latest[idx] = (kind, name, master)
        named = any(idx in self._rule_iface_idx or _named_by(self._rule_ifaces, name)
                    for idx, (kind, name, master) in latest.items())
        self._follow_links(latest)
        if not named or self._last_compile is None:
            return named
        # an event about a named interface (a bridge gaining a port, a link going up) matters
        # only if what the names resolve to changed since the last compile
        return self._binding_of(self._rule_ifaces) != self._last_compile["fingerprint"][1]

    def _follow_links(self, latest: dict) -> None:
        for idx, (kind, name, master) in latest.items():
            if kind == "del":
                if self.interfaces.attached.get(name) == idx:
                    self.interfaces.attached.pop(name, None)
                    if name in self.uplinks:
                        self.uplinks.remove(name)
                    log.info("interface %s is gone", name)
                self.interfaces.skipped.pop(name, None)
                continue
            # renamed: forget the old name of this index
            for old, i in list(self.interfaces.attached.items()):
                if i == idx and old != name:
                    self.interfaces.attached.pop(old)
                    if old in self.uplinks:
                        self.uplinks.remove(old)
            if name.startswith(self.interfaces.own_prefixes):
                continue                # endpoint churn: nothing to decide, nothing to ask
            self._consider(idx, name, master)

    def net_flags(self, net) -> int:
        return S.NET_F_BRIDGED_NAT if net.bridge in self._bridged else 0

    def remove_orphans(self, dp, state) -> list[str]:
        return self.bpf.remove_stale_programs()

    def forget_endpoint(self, att) -> int:
        return self.gc.flush_address(S.be32(att.ip)) if self.gc else 0

    # ---------------------------------------------------------------- policy
    def sync(self, dp, state, changes: PortChanges | None = None):
        want_nets = set()
        for n in state.networks:
            if n.subnet:
                addr, plen = n.subnet.split("/")
                want_nets.add((int(plen), S.be32(addr)))
        if want_nets != self._synced_subnets:
            self._synced_subnets = None
            self._sync_set(self.maps["subnets"], want_nets, lambda k: (k.prefixlen, k.addr),
                           lambda t: S.SubnetKey(t[0], t[1]))
            self._synced_subnets = want_nets
        self._sync_host_addresses()
        self.apply_nat(state, changes)

    def apply_nat(self, state, changes: PortChanges | None = None) -> dict:
        """Compile the control plane's and the user's nat rules and write them (atomically).

        Fast paths, when the rules around the published ports, the networks and the interfaces
        they name are as last time: with ``changes`` (what this operation published or
        unpublished) only those exact entries are written, without reading the other ports;
        without, the published ports of ``state`` are compared with the live entries and the
        difference written in place. Anything else compiles the whole rule set. The result (also
        in ``info()["nat"]``) carries the seconds this took."""
        t0 = time.perf_counter()
        try:
            result = self._apply_nat(state, changes)
        except BaseException:
            self._last_compile = None   # the maps may hold part of it: the next apply is a full one
            raise
        result["seconds"] = round(time.perf_counter() - t0, 6)
        return result

    def _ifindex(self, name: str) -> int | None:
        """An interface of the host netns by name (the agent's threads all live there): an ioctl,
        not a netlink round trip, since every change checks the names its nat rules use."""
        try:
            return socket.if_nametoindex(name)
        except OSError:
            return None

    def _apply_nat(self, state, changes: PortChanges | None) -> dict:
        user_text = getattr(state, "nat_rules", "")
        rs = merged_rules(state.networks, user_text)
        text = merged_identity(state.networks, user_text)   # the rule set's identity for the checks below
        result = self._apply_nat_rules(rs, text, state, changes)
        if changes is not None and result.get("incremental"):
            # a new endpoint's targets appear, a removed endpoint's go (no other port has them)
            result["hairpin_ops"] = self.nat.hairpin_delta(
                {(changes.container_ip, cport, protocols.number(proto)) for proto, _, _, cport in changes.added},
                {(changes.container_ip, cport, protocols.number(proto)) for proto, _, _, cport in changes.removed}
                if changes.container_ip else set())
        else:
            result["hairpin_ops"] = self.nat.sync_hairpin_targets(
                {(ip, cport, proto) for (_, _, proto), (ip, cport) in published_ports(state).items()})
        self._sync_bridged_nat(rs, text, state)
        self._sync_loopback_nat(rs, text)
        return result

    def _sync_loopback_nat(self, rs: Ruleset, text: str) -> None:
        """tc_loopback on lo's egress while some POSTROUTING rule could translate host-local
        traffic (control/nat/reach.py), detached otherwise: it tracks every host-local flow."""
        key = (text, tuple(sorted(self._local_prefixes)))
        if key == self._loopback_key:
            return
        self._loopback_key = key
        want = loopback_may_translate(rs, self._local_prefixes)
        if want:
            srcs = loopback_sources(rs, self._local_prefixes)
            want_srcs = {(0, 0)} if srcs is None else {(n.prefixlen, S.be32(str(n.network_address))) for n in srcs}
            self._sync_set(self.maps["loopback_srcs"], want_srcs, lambda k: (k.prefixlen, k.addr),
                           lambda t: S.SubnetKey(t[0], t[1]))
        if want == self._loopback_attached:
            return
        if want:
            self._tc_filter(self._ifindex("lo"), "lo", "tc_loopback", EGRESS)
        else:
            self._detach_loopback()
        self._loopback_attached = want
        log.info("host-local traffic: %s", "NAT on lo egress (a POSTROUTING rule could match it)" if want
                 else "no NAT (no POSTROUTING rule could match it)")

    def _detach_loopback(self) -> None:
        idx = self._ifindex("lo")
        try:
            self.ipr.tc("del-filter", "bpf", idx, TC_HANDLE, parent=EGRESS, prio=TC_PRIO)
        except NetlinkError:
            pass

    def _sync_bridged_nat(self, rs: Ruleset, text: str, state) -> None:
        """Set NET_F_BRIDGED_NAT on the networks whose bridged frames a rule could translate
        (control/nat/reach.py); recomputed only when the rules or the networks changed."""
        nets = [n for n in state.networks if driver_class(n.driver).host_device and not n.internal]
        key = (text, tuple(sorted((n.bridge, n.subnet) for n in nets)))
        if key == self._bridged_key:
            return
        want = bridged_nat_bridges(rs, nets)
        changed = want ^ self._bridged
        self._bridged, self._bridged_key = want, key
        for n in nets:
            if n.bridge in changed:
                self._dp.ensure_network(n)     # its net_info flags
                log.info("network %s: frames between its endpoints are %s by the nat rules", n.name,
                         "judged" if n.bridge in want else "no longer judged")

    def _apply_nat_rules(self, rs: Ruleset, text: str, state, changes: PortChanges | None) -> dict:
        fingerprint = (text, self._iface_binding(rs))
        last = self._last_compile
        if (last and last["fingerprint"] == fingerprint
                and self.nat.live_config().generation == last["generation"]):
            if changes is not None:     # streamed: 10,000 ports become no list of entries
                delta = itertools.chain(
                    ((exact_key(proto, host_ip, port), None) for proto, host_ip, port, _ in changes.removed),
                    ((exact_key(proto, host_ip, port), nat_compiler.ExactValue(ip_of(changes.container_ip), cport))
                     for proto, host_ip, port, cport in changes.added))
                self.last_nat_apply = self.nat.apply_managed_delta(last["tables"], delta)
            else:
                entries = [exact_entry(k, v) for k, v in published_ports(state).items()]
                self.last_nat_apply = self.nat.replace_managed(last["tables"], [(e[:3], e[3]) for e in entries])
            return self.last_nat_apply
        prog = self._compile(rs, text, state)
        self.last_nat_apply = self.nat.apply(prog, self.cookie, *NAT_PORT_RANGE)
        generation = self.nat.live_config().generation
        self._last_compile = {"fingerprint": fingerprint,
                              "tables": [t + table_shift(generation) for t in prog.managed_tables.get("DOCKLINE", [])],
                              "generation": generation}
        return self.last_nat_apply

    def _compile_key(self, text: str, rs: Ruleset, published: dict) -> tuple:
        return (text, self._iface_binding(rs), tuple(published.items()))

    def _link_names(self) -> list[str]:
        """The host's interface names a rule's -i/-o can see (endpoints' veths never are: their
        traffic's interface is the bridge)."""
        return [n for _, n in socket.if_nameindex() if not n.startswith(self._own_prefixes())]

    def _own_prefixes(self) -> tuple[str, ...]:
        return self.interfaces.own_prefixes if self.interfaces is not None else ()

    def _iface_binding(self, rs: Ruleset) -> tuple:
        """What the rules' interface names resolve to now: an exact name's ifindex, a PREFIX+
        wildcard's matching names and their ifindexes. Part of the compile's identity, and
        kept (self._rule_ifaces) for the link watch to tell which changes matter."""
        return self._binding_of(_iface_names(rs))

    def _binding_of(self, names: set[str]) -> tuple:
        links = None
        out, bound = [], set()
        for n in sorted(names):
            if is_iface_wildcard(n):
                if links is None:
                    links = [(i, nm) for i, nm in socket.if_nameindex() if not nm.startswith(self._own_prefixes())]
                hits = tuple(sorted((nm, i) for i, nm in links if iface_matches(n, nm)))
                bound.update(i for _, i in hits)
                out.append((n, hits))
            else:
                idx = self._ifindex(n)
                if idx:
                    bound.add(idx)
                out.append((n, idx))
        self._rule_ifaces, self._rule_iface_idx = names, bound
        return tuple(out)

    def _compile(self, rs: Ruleset, text: str, state) -> nat_compiler.Program:
        """``rs`` with the published ports as DOCKLINE's exact entries, compiled once: the
        Program check_nat made for the same rules, ports and interfaces is taken, not made again
        (an import of 100,000 rules compiles once)."""
        checked, self._checked = self._checked, None
        if checked is not None and checked[0] == self._compile_key(text, rs, published_ports(state)):
            return checked[1]
        return self._compile_fresh(rs, state)

    def _compile_fresh(self, rs: Ruleset, state) -> nat_compiler.Program:
        if wildcards.has_wildcards(rs):
            rs = wildcards.expand(rs, self._link_names())
        return nat_compiler.compile_ruleset(
            rs, self._ifindex, managed={"DOCKLINE": [exact_entry(k, v) for k, v in published_ports(state).items()]})

    def check_nat(self, state) -> None:
        """Raise InvalidArgument if the rules in ``state`` do not compile (nothing is written);
        the Program is kept for the apply_nat that follows."""
        user_text = getattr(state, "nat_rules", "")
        rs = merged_rules(state.networks, user_text)
        self._checked = None
        key = self._compile_key(merged_identity(state.networks, user_text), rs, published_ports(state))
        self._checked = (key, self._compile_fresh(rs, state))

    def _sync_host_addresses(self):
        """nat_ifaddr: every interface's first IPv4 address (MASQUERADE leaving by it, REDIRECT
        arriving by it); local_addrs: the host's local routing table (addrtype LOCAL). Dumped
        only when the host's IPv4 addresses or routes may have changed since the last time."""
        if self._addr_watch is not None and not self._addr_watch.changed():
            return
        try:
            self._dump_host_addresses()
        except BaseException:
            if self._addr_watch is not None:
                self._addr_watch.invalidate()
            raise

    def _dump_host_addresses(self):
        want_if = {}
        addrs = self.ipr.get_addr(family=2)
        for a in addrs:
            idx = a["index"]
            if idx not in want_if:
                want_if[idx] = S.be32(a.get_attr("IFA_ADDRESS"))
        lo = self._ifindex("lo")
        masq = loopback_masquerade_source(addrs, lo)
        if lo is not None and masq:
            want_if[lo] = S.be32(masq)
        have = {k.value: v.value for k, v in self.maps["nat_ifaddr"].items()}
        for idx in set(have) - set(want_if):
            self.maps["nat_ifaddr"].delete(idx)
        for idx, addr in want_if.items():
            if have.get(idx) != addr:
                self.maps["nat_ifaddr"].update(idx, S.ctypes.c_uint32(addr))
        want_local = set()
        for r in self.ipr.get_routes(family=2, table=255):
            if r["type"] == 2:     # RTN_LOCAL
                want_local.add((r["dst_len"], S.be32(r.get_attr("RTA_DST"))))
        self._local_prefixes = {f"{S.ip_text(a)}/{plen}" for plen, a in want_local}
        self._sync_set(self.maps["local_addrs"], want_local, lambda k: (k.prefixlen, k.addr),
                       lambda t: S.SubnetKey(t[0], t[1]))
        want_src = {(plen, S.be32(dst)): S.be32(src) for (plen, dst), src in
                    route_sources(self.ipr.get_routes(family=2, table=254), addrs).items()}
        m = self.maps["route_src"]
        have_src = {(k.prefixlen, k.addr): v.value for k, v in m.items()}
        for t in set(have_src) - set(want_src):
            m.delete(S.SubnetKey(*t))
        for t, src in want_src.items():
            if have_src.get(t) != src:
                m.update(S.SubnetKey(*t), S.ctypes.c_uint32(src))

    @staticmethod
    def _sync_set(m, want: set, to_tuple, to_key):
        have = {to_tuple(k) for k in m.keys()}
        for t in have - want:
            m.delete(to_key(t))
        for t in want - have:
            m.update(to_key(t), S.ctypes.c_uint8(1))

    # ---------------------------------------------------------------- conntrack
    @property
    def nat_rules_supported(self) -> bool:
        return True

    def gc_conntrack(self) -> dict:
        return self.gc.run() if self.gc else {}

    def ct_pressure(self) -> dict:
        return self.gc.pressure() if self.gc else {}

    def conntrack(self, limit: int = 1000) -> list[dict]:
        return self.gc.entries(limit) if self.gc else []

    # ---------------------------------------------------------------- observability
    def stats(self, state=None) -> dict:
        return {"conntrack": self.ct_pressure()}

    def info(self):
        return {"rules": "TC clsact programs, eBPF NAT (iptables: filter only)",
                "uplink_xdp": self.uplink_xdp or "off",
                "xdp": {"attached": dict(self.xdp_attached), "tc_only": dict(self.xdp_declined)},
                "uplinks": self.uplinks, "nat": self.last_nat_apply,
                "nat_interfaces": self.interfaces.view() if self.interfaces else {},
                "host_local_nat": ("tc_loopback on lo egress (a POSTROUTING rule could match host-local traffic)"
                                   if self._loopback_attached else "none")}

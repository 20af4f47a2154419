"""The eBPF backend.

  * TC on every endpoint's host-side veth (ebpf/tc_endpoint.c): anti-spoofing, NAT with
    conntrack, network isolation, same-network forwarding with bpf_redirect_peer.
  * TC on each uplink (ebpf/tc_uplink.c): NAT of what arrives from outside (published ports,
    replies of masqueraded flows) and of tracked flows leaving; native XDP on the uplink
    (ebpf/xdp_uplink.c, optional) drops spoofed and broken packets early.
  * Socket-layer DNAT for the host's own processes (ebpf/cgroup_sock.c on the cgroup v2 root).
  * One NAT engine for everything: the control plane's published ports and masquerade are nat
    rules (Docker's shapes, in chains DOCKLINE and DOCKLINE-POSTROUTING) compiled together with
    the rules users give ``dockline iptables -t nat`` (control/nat/compiler.py) into maps
    (control/datapath/nat_maps.py). iptables keeps only the filter rules, for what reaches the
    stack; it does no NAT on this backend.

The control plane owns the maps: they hold exactly what the store says, so learning never
creates state (anti-spoofing, design §3.2). Conntrack entries are the datapath's; the agent only
deletes expired ones (ct_gc.py).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import shutil
import socket
import time
import zlib

from pyroute2.netlink.exceptions import NetlinkError

from .. import protocols
from ..errors import DatapathError
from ..nat import compiler as nat_compiler
from ..nat.reach import bridged_nat_bridges, loopback_may_translate
from ..nat.parser import parse_save
from ..nat.rules import PortRange, Rule, Ruleset
from ..netlink import links
from . import bpf_structs as S
from . import cgroup_attach, loader, map_schema
from .base import PortChanges
from .ct_gc import ConntrackGC
from .kernel import KernelDatapath
from .nat_maps import NatMaps

log = logging.getLogger("dockline.ebpf")

TC_PRIO = 10            # our filter's priority on clsact (fault injection uses 1)
TC_HANDLE = ":1"
INGRESS = "ffff:fff2"
EGRESS = "ffff:fff3"
XDP_FLAGS_DRV_MODE = 1 << 2
NAT_PORT_RANGE = (61000, 65535)    # masquerade source ports: outside the host's ip_local_port_range

MANAGED_CHAINS = ("DOCKLINE", "DOCKLINE-POSTROUTING")

SOCK_PROGRAMS = (("sock_connect4", loader.BPF_CGROUP_INET4_CONNECT),
                 ("sock_sendmsg4", loader.BPF_CGROUP_UDP4_SENDMSG),
                 ("sock_recvmsg4", loader.BPF_CGROUP_UDP4_RECVMSG),
                 ("sock_getpeername4", loader.BPF_CGROUP_INET4_GETPEERNAME))


def net_number(net_id: str) -> int:
    """The u32 network number the programs compare (stable for a network's life)."""
    return (zlib.crc32(net_id.encode()) & 0x7FFFFFFF) or 1


def control_plane_chains(networks) -> Ruleset:
    """The control plane's own nat rules, Docker's shapes (userland proxy off), as a Ruleset with
    the jumps and masquerade rules; chain DOCKLINE holds no rules here: the published ports are
    ``published_ports``. A container reaching its own published port is SNATed to its gateway by
    the datapath itself (the hairpin rule Docker writes per port: the published ports' targets
    in NAT_HAIRPIN_TABLE)."""
    rs = Ruleset()
    rs.chains["DOCKLINE"] = []
    rs.chains["DOCKLINE-POSTROUTING"] = []
    rs.chains["PREROUTING"].append(Rule(dst_type="LOCAL", target="DOCKLINE"))
    rs.chains["OUTPUT"].append(Rule(dst_type="LOCAL", target="DOCKLINE"))
    rs.chains["POSTROUTING"].append(Rule(target="DOCKLINE-POSTROUTING"))
    for n in networks:
        if n.driver == "bridge" and not n.internal:
            rs.chains["DOCKLINE-POSTROUTING"].append(
                Rule(src=ipaddress.IPv4Network(n.subnet), out_iface=n.bridge, out_neg=True, target="MASQUERADE"))
    return rs


def published_ports(state) -> dict:
    """The published ports for chain DOCKLINE as plain ``{(host_ip, host_port, proto number):
    (container ip, container port)}``: thousands of ports never become Rule objects. Memoised
    on ``state`` (a whole apply needs them for the rules and for the hairpin targets)."""
    memo = getattr(state, "__dict__", {})
    if "_published" in memo:
        return memo["_published"]
    published = {}
    for pm in state.ports:
        target = state.port_target(pm)
        if target is not None:
            published[(pm.host_ip, pm.host_port, protocols.number(pm.proto))] = (target.ip, pm.container_port)
    memo["_published"] = published
    return published


def published_as_rules(published: dict) -> list[Rule]:
    """The published ports as the DNAT rules Docker would write (for listings only: the datapath
    gets them as exact entries, never as Rule objects)."""
    return [Rule(dst=None if host_ip == "0.0.0.0" else ipaddress.IPv4Network(f"{host_ip}/32"),
                 proto=protocols.name(proto), dport=PortRange(port, port), target="DNAT",
                 to_addr=_ip(ip), to_ports=PortRange(cport, cport))
            for (host_ip, port, proto), (ip, cport) in published.items()]


def _host_daddr(host_ip: str):
    """A published port's host address as the compiler keys it (0.0.0.0: any destination)."""
    return nat_compiler.ANY if host_ip == "0.0.0.0" else _ip(host_ip)


def exact_entry(key, value) -> tuple:
    """A published port as the compiler's (daddr, port, proto, ExactValue)."""
    host_ip, port, proto = key
    return (_host_daddr(host_ip), port, proto, nat_compiler.ExactValue(_ip(value[0]), value[1]))


def _user_rules(text: str) -> Ruleset | None:
    """The user's nat table parsed (the last text is remembered: it changes rarely, and every
    change of anything else compares the rule set). Never mutated by its users."""
    if not text:
        return None
    if _user_cache.get("text") != text:
        _user_cache["rules"] = parse_save(text)[0]
        _user_cache["text"] = text
    return _user_cache["rules"]


_user_cache: dict = {}


def merged_rules(networks, user_text: str) -> Ruleset:
    """Control-plane chains first (their jumps lead each built-in chain), then the user's rules."""
    rs = control_plane_chains(networks)
    user = _user_rules(user_text)
    if user is not None:
        for chain, rules in user.chains.items():
            rs.chains.setdefault(chain, [])
            rs.chains[chain].extend(rules)
    return rs


def merged_ruleset(state, user_text: str) -> tuple[Ruleset, dict]:
    """``merged_rules`` and the published ports of ``state``."""
    return merged_rules(state.networks, user_text), published_ports(state)


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



def _exact_key(proto: str, host_ip: str, port: int) -> tuple:
    """A published port's (daddr, port, proto number), as ``exact_entry`` keys it."""
    return (_host_daddr(host_ip), port, protocols.number(proto))


class AddressWatch:
    """Whether the host's IPv4 addresses or routes may have changed since the last look: a
    netlink socket subscribed to their groups (opened in the host netns) is drained, and anything
    read, or an overflow, means they may have. Nothing is parsed: the caller dumps again."""

    GROUPS = 0x10 | 0x40            # RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, self.GROUPS))
        self.sock.setblocking(False)
        self.fresh = False          # nothing seen yet: the first look says "changed"

    def changed(self) -> bool:
        changed = not self.fresh
        while True:
            try:
                self.sock.recv(65536)
                changed = True
            except BlockingIOError:
                break
            except OSError as e:    # ENOBUFS: events were lost
                changed = True
                if e.errno != errno.ENOBUFS:
                    break
        self.fresh = True
        return changed

    def invalidate(self) -> None:
        """The caller could not act on the last answer: say "changed" next time."""
        self.fresh = False

    def close(self) -> None:
        self.sock.close()


_addr_cache: dict[str, ipaddress.IPv4Address] = {}


def _ip(text: str) -> ipaddress.IPv4Address:
    a = _addr_cache.get(text)
    if a is None:
        a = _addr_cache[text] = ipaddress.IPv4Address(text)
    return a


class EbpfDatapath(KernelDatapath):
    name = "ebpf"
    does_nat = False        # iptables does no NAT on this backend (KernelDatapath renders filter only)

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
        self.xdp_attached: dict[str, str] = {}       # uplink -> why XDP runs there
        self.xdp_declined: dict[str, str] = {}       # uplink -> why it stays at TC only
        self.uplinks = list(getattr(host, "uplinks", []) or [])
        self.nat: NatMaps | None = None
        self.gc: ConntrackGC | None = None
        self.cookie = 0
        self.last_nat_apply: dict = {}
        self._last_compile: dict | None = None     # what apply_nat compiled last (fast path)
        self._bridged: set[str] = set()             # bridges with NET_F_BRIDGED_NAT
        self._bridged_key = None
        self._local_prefixes: set[str] = set()     # the host's local routes ("a.b.c.d/len")
        self._loopback_attached: bool | None = None  # tc_loopback on lo (None: not known yet)
        self._loopback_key = None
        self._synced_subnets: set | None = None    # what local_subnets was last made to hold
        self._addr_watch: AddressWatch | None = None

    # ---------------------------------------------------------------- host
    def setup_host(self):
        super().setup_host()
        self.programs = loader.Programs(self.host.bpf_dir).load()
        self.maps = map_schema.open_maps(self.programs.root)     # every map of maps.h, by handle
        self.nat = NatMaps(self.maps["nat_config"], self.maps["nat_rules"], self.maps["nat_exact"])
        self.cookie = cgroup_attach.netns_cookie()
        self.gc = ConntrackGC(self.maps["ct"])
        self._last_compile = self._synced_subnets = None
        if self._addr_watch is None:
            self._addr_watch = AddressWatch()
        self._addr_watch.invalidate()
        for up in self.uplinks:
            self._attach_uplink(up)
        for up in dict.fromkeys(self.uplinks + ([self.uplink_xdp] if self.uplink_xdp else [])):
            self._maybe_attach_xdp(up, forced=up == self.uplink_xdp)
        for fn, kind in SOCK_PROGRAMS:
            cgroup_attach.attach(self.programs.progs[fn].fd, kind)
        log.info("socket-layer NAT attached to the cgroup root (host netns cookie %d)", self.cookie)

    def teardown_host(self):
        for up in dict.fromkeys(list(self.xdp_attached) + self.uplinks + ([self.uplink_xdp] if self.uplink_xdp else [])):
            idx = links.link_index(self.ipr, up)
            if idx is not None:
                try:
                    self.ipr.link("set", index=idx, xdp_fd=-1)
                except NetlinkError:
                    pass
        self.xdp_attached = {}
        for up in self.uplinks:
            idx = links.link_index(self.ipr, up)
            if idx is not None:
                for parent in (INGRESS, EGRESS):
                    try:
                        self.ipr.tc("del-filter", "bpf", idx, TC_HANDLE, parent=parent, prio=TC_PRIO)
                    except NetlinkError:
                        pass
        if self.programs:
            for fn, kind in SOCK_PROGRAMS:
                cgroup_attach.detach(self.programs.progs[fn].fd, kind)
            self._detach_stale_sock_programs(keep=None)
        self._detach_loopback()
        for m in self.maps.values():
            m.close()
        self.maps = {}
        self._last_compile = self._synced_subnets = None
        if self._addr_watch is not None:
            self._addr_watch.close()
            self._addr_watch = None
        super().teardown_host()
        shutil.rmtree(self.host.bpf_dir, ignore_errors=True)

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

    def _attach_uplink(self, ifname: str):
        idx = links.link_index(self.ipr, ifname)
        if idx is None:
            raise DatapathError(f"uplink {ifname} does not exist")
        self._tc_filter(idx, ifname, "tc_uplink_ingress", INGRESS)
        self._tc_filter(idx, ifname, "tc_uplink_egress", EGRESS)
        log.info("NAT attached on uplink %s (tc ingress and egress)", ifname)

    def _tc_filter(self, idx: int, ifname: str, fn: str, parent: str):
        prog = self.programs.progs[fn]
        try:
            try:
                self.ipr.tc("add", "clsact", idx)
            except NetlinkError as e:
                if e.code != 17:   # EEXIST
                    raise
            # replace is atomic: a restart re-attaching the same program drops nothing
            self.ipr.tc("replace-filter", "bpf", idx, TC_HANDLE, fd=prog.fd, name=prog.name,
                        parent=parent, classid=1, direct_action=True, prio=TC_PRIO)
        except NetlinkError as e:
            raise DatapathError(f"attaching {fn} to {ifname} failed: {e}") from None

    # ---------------------------------------------------------------- networks
    def ensure_network(self, net):
        super().ensure_network(net)
        if net.driver != "bridge":
            return
        idx = links.link_index(self.ipr, net.bridge)
        if idx is None:
            return
        mac = self.ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        flags = S.NET_F_BRIDGED_NAT if net.bridge in self._bridged else 0
        self.maps["net_info"].update(net_number(net.id), S.NetInfo(
            bridge_ifindex=idx, gateway=S.be32(net.gateway), gw_mac=S.mac_bytes(mac), flags=flags))

    def remove_network(self, net):
        self.maps["net_info"].delete(net_number(net.id))
        super().remove_network(net)

    # ---------------------------------------------------------------- endpoints
    def ensure_attachment(self, net, ep, att, primary):
        super().ensure_attachment(net, ep, att, primary)
        self.ensure_network(net)     # the bridge MAC may have changed when its first port joined
        idx = links.link_index(self.ipr, att.host_ifname)
        flags = S.EP_F_INTERNAL if net.internal else 0
        info = S.EndpointInfo(mac=S.mac_bytes(att.mac), flags=flags, ip=S.be32(att.ip), net_id=net_number(net.id))
        self.maps["by_ifindex"].update(idx, info)
        self.maps["by_ip"].update(S.be32(att.ip), S.IpEndpoint(ifindex=idx, net_id=net_number(net.id),
                                                               mac=S.mac_bytes(att.mac), flags=flags))
        self._tc_filter(idx, att.host_ifname, "tc_from_endpoint", INGRESS)
        self._tc_filter(idx, att.host_ifname, "tc_to_endpoint", EGRESS)
        if self.xdp_attached:
            # XDP on the uplink redirects into the host end; the frame lands in the container
            # end's NAPI ring, which exists only with GRO on (without it: silently dropped)
            links.set_gro(ep.netns_path, att.ifname, True)

    def remove_attachment(self, net, ep, att):
        flushed = self.gc.flush_address(S.be32(att.ip)) if self.gc else 0
        if flushed:
            log.info("endpoint %s left %s: %d conntrack entries of its flows removed", ep.name, net.name, flushed)
        idx = links.link_index(self.ipr, att.host_ifname)
        if idx is not None:
            self.maps["by_ifindex"].delete(idx)
            self.maps["ep_stats"].delete(idx)
        cur = self.maps["by_ip"].lookup(S.be32(att.ip))
        if cur is not None and (idx is None or cur.ifindex == idx):
            self.maps["by_ip"].delete(S.be32(att.ip))
        super().remove_attachment(net, ep, att)

    # ---------------------------------------------------------------- policy
    def sync_policy(self, state, changes: PortChanges | None = None):
        super().sync_policy(state)      # filter rules only (does_nat = False)
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
        rs = merged_rules(state.networks, getattr(state, "nat_rules", ""))
        text = rs.save()            # the rule set's identity for the three checks below
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
        nets = [n for n in state.networks if n.driver == "bridge" and not n.internal]
        key = (text, tuple(sorted((n.bridge, n.subnet) for n in nets)))
        if key == self._bridged_key:
            return
        want = bridged_nat_bridges(rs, nets)
        changed = want ^ self._bridged
        self._bridged, self._bridged_key = want, key
        for n in nets:
            if n.bridge in changed:
                self.ensure_network(n)
                log.info("network %s: frames between its endpoints are %s by the nat rules", n.name,
                         "judged" if n.bridge in want else "no longer judged")

    def _apply_nat_rules(self, rs: Ruleset, text: str, state, changes: PortChanges | None) -> dict:
        fingerprint = (text, tuple(sorted((n, self._ifindex(n)) for n in _iface_names(rs))))
        last = self._last_compile
        if (last and last["fingerprint"] == fingerprint
                and self.nat.live_config().generation == last["generation"]):
            if changes is not None:     # streamed: 10,000 ports become no list of entries
                delta = itertools.chain(
                    ((_exact_key(proto, host_ip, port), None) for proto, host_ip, port, _ in changes.removed),
                    ((_exact_key(proto, host_ip, port), nat_compiler.ExactValue(_ip(changes.container_ip), cport))
                     for proto, host_ip, port, cport in changes.added))
                self.last_nat_apply = self.nat.apply_managed_delta(last["tables"], delta)
            else:
                entries = [exact_entry(k, v) for k, v in published_ports(state).items()]
                self.last_nat_apply = self.nat.replace_managed(last["tables"], [(e[:3], e[3]) for e in entries])
            return self.last_nat_apply
        entries = [exact_entry(k, v) for k, v in published_ports(state).items()]
        progs = []

        def compile_and_keep(base):
            progs.append(nat_compiler.compile_ruleset(rs, self._ifindex, base, managed={"DOCKLINE": entries}))
            return progs[-1]

        self.last_nat_apply = self.nat.apply(compile_and_keep, self.cookie, *NAT_PORT_RANGE)
        self._last_compile = {"fingerprint": fingerprint,
                              "tables": progs[-1].managed_tables.get("DOCKLINE", []),
                              "generation": self.nat.live_config().generation}
        return self.last_nat_apply

    def check_nat(self, state) -> None:
        """Raise InvalidArgument if the rules in ``state`` do not compile (nothing is written)."""
        rs, published = merged_ruleset(state, getattr(state, "nat_rules", ""))
        nat_compiler.compile_ruleset(rs, self._ifindex, 1,
                                     managed={"DOCKLINE": [exact_entry(k, v) for k, v in published.items()]})

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
        nets = {net_number(n.id) for n in state.networks}
        for k in self.maps["net_info"].keys():
            if k.value not in nets:
                self.maps["net_info"].delete(k)
        self._detach_stale_sock_programs(keep=self.programs.digest)
        gone = self.programs.remove_stale()
        removed += [f"stale programs {d}" for d in gone]
        return removed

    def _detach_stale_sock_programs(self, keep: str | None):
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
        ct = self.gc.pressure() if self.gc else {}
        return {"datapath": self.name, "verdicts": verdicts, "endpoints": endpoints, "nat": nat,
                "conntrack": ct}

    def info(self):
        p = self.programs
        return {"name": self.name, "rules": "TC clsact programs, eBPF NAT (iptables: filter only)",
                "programs_digest": p.digest if p else "", "compiled_this_start": bool(p and p.compiled),
                # "pins" (adopted, a restart), "cache" (compile cache) or "compiled" (bcc ran)
                "programs_origin": p.origin if p else "",
                "pins": str(p.root) if p else "", "uplink_xdp": self.uplink_xdp or "off",
                "xdp": {"attached": dict(self.xdp_attached), "tc_only": dict(self.xdp_declined)},
                "uplinks": self.uplinks, "nat": self.last_nat_apply,
                "endpoints_in_map": len(self.maps["by_ifindex"].keys()) if self.maps else 0}

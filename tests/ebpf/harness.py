"""BPF_PROG_TEST_RUN harness for the dockline programs: the kernel runs a loaded program on a
buffer we hand it; nothing is attached to any interface and nothing is sent.

Empirical facts this harness relies on (kernel 6.18, see tests/ebpf/test_tc_endpoint.py::
test_harness_*):
  * SCHED_CLS test runs build an skb on the loopback device of the caller's netns, so without a
    ctx the program sees ``skb->ifindex == 1`` (lo is ifindex 1 in every netns) and
    ``skb->ingress_ifindex == 0``. A ``struct __sk_buff`` ctx may set ``ifindex``: a value > 1
    selects that (existing) device, a missing one fails with ENODEV.
  * Both SCHED_CLS and XDP test runs refuse buffers shorter than ETH_HLEN (14) with EINVAL.
  * libbpf 1.x ``bpf_prog_test_run_opts`` returns ``-errno``.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import struct
from dataclasses import dataclass

from dockline.control.datapath import bpf_structs as S
from dockline.control.datapath import libbpf, map_schema

#: what the program sees as skb->ifindex in a test run without a ctx (the netns loopback)
TEST_RUN_IFINDEX = 1

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
XDP_DROP = 1
XDP_PASS = 2
XDP_REDIRECT = 4


from dockline.control.datapath.prog_run import (OUT_MAX, BpfTestRunOpts, RunRefused, RunResult,  # noqa: E402,F401
                                                 SkBuff, XdpMd, bench, prog_test_run, run)


# ---------------------------------------------------------------- maps
@dataclass(frozen=True)
class Endpoint:
    name: str
    ifindex: int
    ip: str
    mac: str
    net_id: int


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@dataclass(frozen=True)
class Tuple:
    """A conntrack tuple in plain values (ports host order; ICMP echo: the id in sport of a
    request, dport of a reply). ``key()`` is the struct ct_key the program looks up."""

    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int

    def key(self) -> S.CtKey:
        return S.CtKey(S.be32(self.saddr), S.be32(self.daddr), S.be16(self.sport), S.be16(self.dport),
                       self.proto)

    def reverse(self) -> "Tuple":
        return Tuple(self.daddr, self.saddr, self.dport, self.sport, self.proto)

    @classmethod
    def of_key(cls, k: S.CtKey) -> "Tuple":
        assert bytes(k.pad) == bytes(3), f"ct key with a non-zero pad: {bytes(k)!r}"
        return cls(S.ip_text(k.saddr), S.ip_text(k.daddr), S.be16_value(k.sport), S.be16_value(k.dport),
                   k.proto)

    @classmethod
    def to_of(cls, e: S.CtEntry, proto: int) -> "Tuple":
        """The translated tuple a ct entry holds."""
        return cls(S.ip_text(e.to_saddr), S.ip_text(e.to_daddr), S.be16_value(e.to_sport),
                   S.be16_value(e.to_dport), proto)


#: nat_config as control/datapath/nat_maps.NatMaps.clear() leaves it: no hook has an instruction
def reset_nat_config() -> S.NatConfig:
    return S.NatConfig(entry=(ctypes.c_uint32 * 4)(*([0xFFFFFFFF] * 4)))


class Maps:
    """The pinned maps of one private pin folder (every map of maps.h), opened through
    map_schema with the same ctypes mirrors the agent uses, one attribute per map handle
    (``by_ifindex``, ``ct``, ``nat_exact``...: map_schema.MAPS)."""

    def __init__(self, root: str):
        self.root = root
        self._maps = map_schema.open_maps(root)
        for handle, m in self._maps.items():
            setattr(self, handle, m)
        #: the maps whose entries are keys (emptied by clear()); the arrays are zeroed instead
        self.hashes = [m for h, m in self._maps.items() if not map_schema.BY_HANDLE[h].is_array]
        #: 2 * MAX_NAT_RULES (consts.h), as the kernel sized the map
        self.nat_rule_slots = libbpf.map_info(self.nat_rules.fd).max_entries
        self._rules_written = True      # unknown at open: zero every slot on the first clear

    def all(self):
        return list(self._maps.values())

    def close(self):
        for m in self.all():
            m.close()

    # -- reset
    def clear(self):
        for m in self.hashes:
            for k in m.keys():
                m.delete(k)
        for code in range(S.NR_VERDICTS):
            self.verdicts.update(code, S.Counter(0, 0))
        for idx in range(S.NR_NAT_COUNTERS):
            self.nat_counters.update(idx, ctypes.c_uint64(0))
        if self._rules_written or bytes(self.nat_config.lookup(0)) != bytes(reset_nat_config()):
            slots = range(self.nat_rule_slots)
            self.nat_rules.update_batch(b"".join(struct.pack("=I", n) for n in slots),
                                        bytes(ctypes.sizeof(S.NatRule) * len(slots)))
            self._rules_written = False
        self.nat_config.update(0, reset_nat_config())

    def _rule_slots_to_check(self) -> tuple:
        """The first two slots of each generation (an all-zero slot ends a generation)."""
        half = self.nat_rule_slots // 2
        return (0, 1, half, half + 1)

    def is_empty(self) -> bool:
        return (all(not m.keys() for m in self.hashes)
                and all(self.verdict(c) == (0, 0) for c in range(S.NR_VERDICTS))
                and all(self.nat_counter(c) == 0 for c in range(S.NR_NAT_COUNTERS))
                and bytes(self.nat_config.lookup(0)) == bytes(reset_nat_config())
                and all(bytes(self.nat_rules.lookup(s)) == bytes(S.NatRule()) for s in self._rule_slots_to_check()))

    # -- writes, as control/datapath/ebpf.py does them
    def add_endpoint(self, ep: Endpoint, *, by_ifindex: bool = True, by_ip: bool = True):
        if by_ifindex:
            self.by_ifindex.update(ep.ifindex, S.EndpointInfo(mac=S.mac_bytes(ep.mac), flags=0,
                                                              ip=S.be32(ep.ip), net_id=ep.net_id))
        if by_ip:
            self.by_ip.update(S.be32(ep.ip), S.IpEndpoint(ifindex=ep.ifindex, net_id=ep.net_id,
                                                          mac=S.mac_bytes(ep.mac), flags=0))

    def add_subnet(self, cidr: str):
        n = ipaddress.IPv4Network(cidr)
        self.subnets.update(S.SubnetKey(n.prefixlen, S.be32(str(n.network_address))), ctypes.c_uint8(1))

    def add_net_info(self, net_id: int, bridge_ifindex: int, gateway: str, gw_mac: str, flags: int = 0):
        self.net_info.update(net_id, S.NetInfo(bridge_ifindex=bridge_ifindex, gateway=S.be32(gateway),
                                               gw_mac=S.mac_bytes(gw_mac), flags=flags))

    def add_local_addr(self, cidr: str):
        n = ipaddress.IPv4Network(cidr)
        self.local_addrs.update(S.SubnetKey(n.prefixlen, S.be32(str(n.network_address))), ctypes.c_uint8(1))

    def set_ifaddr(self, ifindex: int, ip: str):
        self.nat_ifaddr.update(ifindex, ctypes.c_uint32(S.be32(ip)))

    def add_ct_pair(self, orig: Tuple, to: Tuple, *, kind: int, state: int = S.CT_ST_NEW, flags: int = 0,
                    expires_ns: int = 0, twin_checked_ns: int = 0):
        """Both halves of a flow, as ct_create writes them: ORIG orig -> to, REPLY reverse(to) ->
        reverse(orig)."""
        assert orig.proto == to.proto
        common = dict(state=state, flags=flags, kind=kind, expires_ns=expires_ns, twin_checked_ns=twin_checked_ns)
        self.ct.update(orig.key(), ct_entry(to, dir=S.CT_DIR_ORIG, **common))
        self.ct.update(to.reverse().key(), ct_entry(orig.reverse(), dir=S.CT_DIR_REPLY, **common))

    def apply_nat(self, save_text: str, ifindex=lambda name: None, *, port_min: int = 32768,
                  port_max: int = 60999, netns_cookie: int = 0, published: dict | None = None):
        """Compile an iptables-save text and write it as the agent does (NatMaps.apply); returns
        the compiled Program (relative pcs, table ids from 1: what interpreter.run takes).
        ``published``: the control plane's published ports ({(host ip, port, proto): (ip, port)},
        as managed.published_ports makes them) for a chain DOCKLINE the text declares."""
        from dockline.control.datapath.nat_maps import NatMaps
        from dockline.control.nat.compiler import compile_ruleset
        from dockline.control.nat.parser import parse_save

        from dockline.control.nat.managed import exact_entry

        rs, _ = parse_save(save_text)
        managed = {"DOCKLINE": [exact_entry(k, v) for k, v in published.items()]} if published else None
        self._rules_written = True
        nat = NatMaps(self.nat_config, self.nat_rules, self.nat_exact, self.nat_shapes, self.nat_cls)
        prog = compile_ruleset(rs, ifindex, managed=managed)
        nat.apply(prog, netns_cookie, port_min, port_max)
        nat.sync_hairpin_targets({(ip, cport, proto) for (_, _, proto), (ip, cport) in (published or {}).items()})
        self.sync_loopback_sources(rs)
        return prog

    def sync_loopback_sources(self, rs) -> None:
        """loopback_srcs as the agent writes it (control/datapath/ebpf.py _sync_loopback_nat)."""
        from dockline.control.nat.reach import loopback_sources
        local = [f"{S.ip_text(k.addr)}/{k.prefixlen}" for k in self.local_addrs.keys()]
        srcs = loopback_sources(rs, local)
        for k in self.loopback_srcs.keys():
            self.loopback_srcs.delete(k)
        for n in ([ipaddress.IPv4Network("0.0.0.0/0")] if srcs is None else srcs):
            self.loopback_srcs.update(S.SubnetKey(n.prefixlen, S.be32(str(n.network_address))), ctypes.c_uint8(1))

    # -- reads (per-CPU values summed)
    def verdict(self, code: int) -> tuple[int, int]:
        vals = self.verdicts.lookup(int(code)) or []
        return sum(v.packets for v in vals), sum(v.bytes for v in vals)

    def verdict_table(self) -> dict[int, tuple[int, int]]:
        return {c: self.verdict(c) for c in range(S.NR_VERDICTS)}

    def moved_verdicts(self) -> dict[str, tuple[int, int]]:
        """The non-zero verdict counters by name: (packets, bytes)."""
        return {_name(c): v for c, v in self.verdict_table().items() if v != (0, 0)}

    def nat_counter(self, idx: int) -> int:
        return sum(v.value for v in self.nat_counters.lookup(int(idx)) or [])

    def nat_counter_table(self) -> dict[str, int]:
        """The non-zero NAT counters by name."""
        out = {}
        for idx in range(S.NR_NAT_COUNTERS):
            n = self.nat_counter(idx)
            if n:
                out[_nat_name(idx)] = n
        return out

    def ct_table(self) -> dict[Tuple, S.CtEntry]:
        return {Tuple.of_key(k): v for k, v in self.ct.items()}

    def endpoint_stats(self, ifindex: int) -> dict[str, tuple[int, int]] | None:
        vals = self.ep_stats.lookup(ifindex)
        if vals is None:
            return None
        return {f: (sum(getattr(v, f).packets for v in vals), sum(getattr(v, f).bytes for v in vals))
                for f in ("redirected", "passed", "dropped")}


def ct_entry(to: Tuple, *, dir: int, state: int = S.CT_ST_NEW, flags: int = 0, kind: int = 0,
             expires_ns: int = 0, twin_checked_ns: int = 0) -> S.CtEntry:
    return S.CtEntry(to_saddr=S.be32(to.saddr), to_daddr=S.be32(to.daddr), to_sport=S.be16(to.sport),
                     to_dport=S.be16(to.dport), dir=dir, state=state, flags=flags, kind=kind,
                     expires_ns=expires_ns, twin_checked_ns=twin_checked_ns)


def _nat_name(idx: int) -> str:
    try:
        return S.NatCounter(idx).name
    except ValueError:
        return f"nat{idx}"


# ---------------------------------------------------------------- one table case, fully checked
def stats_bucket(code: int) -> str:
    """Which endpoint_stats counter count_endpoint() (ebpf/lib/endpoint.h) bumps for a verdict."""
    if code in (S.Verdict.REDIRECT_PEER, S.Verdict.NAT_REDIRECT):
        return "redirected"
    return "dropped" if code >= S.DROP_BASE else "passed"


def verdict_delta(before: dict, after: dict) -> dict[str, tuple[int, int]]:
    out = {}
    for code in after:
        d = (after[code][0] - before[code][0], after[code][1] - before[code][1])
        if d != (0, 0):
            out[_name(code)] = d
    return out


def _name(code: int) -> str:
    try:
        return S.Verdict(code).name
    except ValueError:
        return f"code{code}"


def check_case(case, maps: Maps, prog_fd: int, *, stats_ifindex: int | None = None, **run_kw):
    """Set up the maps, run the case's packet once, and check the return value, the output bytes,
    that exactly one verdict counter moved by (1 packet, len bytes) and, for TC
    (``stats_ifindex``), that exactly one endpoint_stats counter of that device moved the same
    way. A case with ``expected_errno`` must be refused by the kernel and count nothing."""
    case.setup(maps)
    pkt = case.build()
    before = maps.verdict_table()
    stats_before = maps.endpoint_stats(stats_ifindex) if stats_ifindex is not None else None
    zero = {"redirected": (0, 0), "passed": (0, 0), "dropped": (0, 0)}
    if case.expected_errno is not None:
        try:
            r = prog_test_run(prog_fd, pkt, **run_kw)
        except RunRefused as e:
            assert e.errno == case.expected_errno, f"refused with {e}, expected errno {case.expected_errno}"
        else:
            raise AssertionError(f"{len(pkt)}-byte buffer was run (retval {r.retval}); expected the "
                                 f"kernel to refuse it with errno {case.expected_errno}")
        assert verdict_delta(before, maps.verdict_table()) == {}, "a refused run counted a verdict"
        return
    retval, out = run(prog_fd, pkt, **run_kw)
    got = verdict_delta(before, maps.verdict_table())
    want = {_name(case.expected_verdict_code): (1, len(pkt))}
    assert (got, retval) == (want, case.expected_retval), (
        f"{case.id}: verdict counters moved {got} with return value {retval}; "
        f"expected {want} with {case.expected_retval}")
    expected_out = pkt if case.expected_out is None else case.expected_out
    assert out == expected_out, f"{case.id}: the program changed the packet"
    if stats_ifindex is not None:
        after = maps.endpoint_stats(stats_ifindex)
        assert after is not None, f"no endpoint_stats entry for ifindex {stats_ifindex}"
        base = stats_before or zero
        delta = {f: (after[f][0] - base[f][0], after[f][1] - base[f][1]) for f in zero}
        want_stats = dict(zero, **{stats_bucket(case.expected_verdict_code): (1, len(pkt))})
        assert delta == want_stats, f"{case.id}: endpoint_stats moved {delta}, expected {want_stats}"

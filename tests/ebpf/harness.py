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
from dataclasses import dataclass

from dockline.control.datapath import bpf_structs as S
from dockline.control.datapath import loader

#: what the program sees as skb->ifindex in a test run without a ctx (the netns loopback)
TEST_RUN_IFINDEX = 1

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
XDP_DROP = 1
XDP_PASS = 2


from dockline.control.datapath.prog_run import (OUT_MAX, BpfTestRunOpts, RunRefused, RunResult,  # noqa: E402,F401
                                                 SkBuff, bench, prog_test_run, run)


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


class Maps:
    """The six pinned maps of one private pin folder, opened through loader.PinnedMap (the same
    ctypes mirrors the agent uses)."""

    def __init__(self, root: str):
        U32 = ctypes.c_uint32
        self.by_ifindex = loader.PinnedMap(f"{root}/endpoints_by_ifindex", U32, S.EndpointInfo)
        self.by_ip = loader.PinnedMap(f"{root}/endpoints_by_ip", U32, S.IpEndpoint)
        self.published = loader.PinnedMap(f"{root}/published_ports", S.PublishedKey, ctypes.c_uint8)
        self.subnets = loader.PinnedMap(f"{root}/local_subnets", S.SubnetKey, ctypes.c_uint8)
        self.verdicts = loader.PinnedMap(f"{root}/verdicts", U32, S.Counter, percpu=True)
        self.ep_stats = loader.PinnedMap(f"{root}/endpoint_stats", U32, S.EndpointStats, percpu=True)
        self.hashes = [self.by_ifindex, self.by_ip, self.published, self.subnets, self.ep_stats]

    def all(self):
        return self.hashes + [self.verdicts]

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

    def is_empty(self) -> bool:
        return (all(not m.keys() for m in self.hashes)
                and all(self.verdict(c) == (0, 0) for c in range(S.NR_VERDICTS)))

    # -- writes, as control/datapath/ebpf.py does them
    def add_endpoint(self, ep: Endpoint, *, by_ifindex: bool = True, by_ip: bool = True):
        if by_ifindex:
            self.by_ifindex.update(ep.ifindex, S.EndpointInfo(mac=S.mac_bytes(ep.mac), flags=0,
                                                              ip=S.be32(ep.ip), net_id=ep.net_id))
        if by_ip:
            self.by_ip.update(S.be32(ep.ip), S.IpEndpoint(ifindex=ep.ifindex, net_id=ep.net_id,
                                                          mac=S.mac_bytes(ep.mac), flags=0))

    def publish(self, ip: str, port: int, proto: int):
        self.published.update(S.PublishedKey(S.be32(ip), S.be16(port), proto, 0), ctypes.c_uint8(1))

    def add_subnet(self, cidr: str):
        n = ipaddress.IPv4Network(cidr)
        self.subnets.update(S.SubnetKey(n.prefixlen, S.be32(str(n.network_address))), ctypes.c_uint8(1))

    # -- reads (per-CPU values summed)
    def verdict(self, code: int) -> tuple[int, int]:
        vals = self.verdicts.lookup(int(code)) or []
        return sum(v.packets for v in vals), sum(v.bytes for v in vals)

    def verdict_table(self) -> dict[int, tuple[int, int]]:
        return {c: self.verdict(c) for c in range(S.NR_VERDICTS)}

    def endpoint_stats(self, ifindex: int) -> dict[str, tuple[int, int]] | None:
        vals = self.ep_stats.lookup(ifindex)
        if vals is None:
            return None
        return {f: (sum(getattr(v, f).packets for v in vals), sum(getattr(v, f).bytes for v in vals))
                for f in ("redirected", "passed", "dropped")}


# ---------------------------------------------------------------- one table case, fully checked
def stats_bucket(code: int) -> str:
    """Which endpoint_stats counter tc_from_endpoint's count() bumps for a verdict code."""
    if code == S.Verdict.REDIRECT_PEER:
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

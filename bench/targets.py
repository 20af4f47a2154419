"""Benchmark targets: the datapaths measured side by side, each able to build the benchmark
topologies in fresh namespaces and tear them down.

A target answers, per topology, "where does the client run, where does the server run, and which
address does the client dial" (``Endpoints``). Namespaces are given as paths usable with
``nsenter --net=``. Servers are started by the metrics module, not here.

    c2c        client container  ──bridge──►  server container          (P1, P2, P5)
    published  outside netns ──uplink──► host:PORT ──DNAT──► container  (P3)
    egress     client container ──masquerade──► outside netns           (egress throughput)
    loopback   one netns, 127.0.0.1                                    (the physical ceiling)
    macvlan    client container ──macvlan (bridge mode) on one parent──► server container
               (MacvlanTarget; c2c only: its ratios are against ``ratio_against``, Docker's own
               macvlan driver and the bridge path of the same datapath)
"""

from __future__ import annotations

import abc
import os
import pathlib
from dataclasses import dataclass

from ..control.config import BPF_ROOT
from ..control.netlink import netns
from ..control.sim.simhost import HOST_IP, OUTSIDE_IP, SimHost

#: Container port of the CRR server behind the published port, and the published host port.
PUBLISHED_CTR_PORT = 7002
PUBLISHED_HOST_PORT = 8000
#: Host ports used to fill the NAT table ahead of the measured mapping.
FILLER_BASE = 20000


@dataclass
class Endpoints:
    client_ns: str      # netns path of the client
    server_ns: str      # netns path of the server
    dial_ip: str        # address the client connects to
    dial_port: int | None = None   # port the client dials when it differs from the server's


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split between the processes that map them, so a
    sum over many processes (docker-proxy) does not count shared libraries once per process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def bpf_maps_kib(pin_dir: str) -> int:
    """Kernel memory of the BPF maps pinned under ``pin_dir`` (the ``memlock`` line of each
    map's fdinfo; for a hash map without preallocation it follows the entries in it)."""
    from ..control.datapath.libbpf import obj_get
    total = 0
    for root, _, files in os.walk(pin_dir):
        for f in files:
            try:
                fd = obj_get(os.path.join(root, f))
            except Exception:
                continue
            try:
                with open(f"/proc/self/fdinfo/{fd}") as info:
                    fields = dict(line.split(":", 1) for line in info if ":" in line)
                if "map_type" in fields:
                    total += int(fields.get("memlock", "0").strip()) // 1024
            finally:
                os.close(fd)
    return total


class Target(abc.ABC):
    name = "abstract"
    kind = "abstract"       # "baseline", "candidate", "ceiling" or "reference" (a baseline of some rows)
    #: names of the targets this candidate's ratios are taken against, instead of the baseline
    ratio_against: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.name

    @abc.abstractmethod
    def build(self, tmpdir: pathlib.Path) -> None: ...

    @abc.abstractmethod
    def teardown(self) -> None: ...

    @abc.abstractmethod
    def c2c(self) -> Endpoints: ...

    def published(self, mappings: int) -> Endpoints | None:
        return None

    def egress(self) -> Endpoints | None:
        return None

    def publish_cost(self, n: int) -> dict | None:
        return None

    def server_veths(self) -> list[tuple[str, str]]:
        """(host netns path, host-side veth) of the server endpoints, for fault injection."""
        raise NotImplementedError(f"{self.name} does not support fault injection")


class LoopbackTarget(Target):
    """Client and server in one namespace over 127.0.0.1: no bridge, no veth, no NAT."""

    name = "loopback"
    kind = "ceiling"

    def build(self, tmpdir):
        self.ns = "dlb" + os.urandom(3).hex() + "-lo"
        netns.ensure_netns(self.ns)

    def teardown(self):
        netns.remove_netns(self.ns)

    def c2c(self):
        p = netns.netns_path(self.ns)
        return Endpoints(p, p, "127.0.0.1")


class DocklineTarget(Target):
    """A dockline agent with the given backend on a simulated host (control/sim/simhost.py)."""

    kind = "candidate"

    def __init__(self, datapath: str = "kernel", name: str | None = None, kind: str | None = None,
                 description: str | None = None):
        self.datapath = datapath
        self.name = name or datapath
        self.kind = kind or self.kind
        self._description = description or f"dockline, {datapath} backend"
        self.host: SimHost | None = None
        self._mappings = None
        self.burn_iters = 0          # fault injection (bench/faults.py) on server veths

    def describe(self):
        return self._description

    def build(self, tmpdir):
        self.host = SimHost(pathlib.Path(tmpdir) / self.name, datapath=self.datapath)
        self.host.start_agent()
        self.host.call("network_create", name="bench")
        self.host.call("endpoint_create", name="srv", network="bench")
        self.host.call("endpoint_create", name="cli", network="bench")
        self.srv_ip = self.host.call("inspect", ref="srv")["networks"]["bench"]["ip"]

    def teardown(self):
        if self.host:
            self.host.cleanup()
            self.host = None

    def _ns(self, ep):
        return netns.netns_path(self.host.ep_ns(ep))

    def c2c(self):
        return Endpoints(self._ns("cli"), self._ns("srv"), self.srv_ip)

    def egress(self):
        return Endpoints(self._ns("cli"), netns.netns_path(self.host.out_ns), OUTSIDE_IP)

    def published(self, mappings):
        if self._mappings != mappings:
            self._reset_published()
            if mappings > 1:   # filler mappings come first, so the measured rule is the last one
                last = FILLER_BASE + mappings - 2
                self.host.call("endpoint_create", name="filler", network="bench",
                               ports=[f"{FILLER_BASE}-{last}:{FILLER_BASE}-{last}"])
            self.host.call("endpoint_create", name="pub", network="bench",
                           ports=[f"{PUBLISHED_HOST_PORT}:{PUBLISHED_CTR_PORT}"])
            self._mappings = mappings
            if self.burn_iters:
                from .faults import apply_burn
                apply_burn(self, self.burn_iters)
        return Endpoints(netns.netns_path(self.host.out_ns), self._ns("pub"), HOST_IP, PUBLISHED_HOST_PORT)

    def publish_cost(self, n):
        """Time, memory and processes to publish ``n`` ports on one endpoint, then one more
        (bench/publishing.py). A published topology of the CRR metrics is removed first, so the
        cost is measured on a host with nothing else published."""
        from . import publishing
        self._reset_published()
        agent = self.host.agent.pid
        host_ns = netns.netns_path(self.host.host_ns)
        bpf_dir = os.path.join(BPF_ROOT, self.host.name)

        def create(name, ports):
            self.host.call("endpoint_create", name=name, network="bench", **({"ports": ports} if ports else {}))

        def remove(*names):
            have = {e["name"] for e in self.host.call("ps")}
            for name in names:
                if name in have:
                    self.host.call("endpoint_rm", ref=name)

        def owned():
            table = publishing.process_table()
            return publishing.descendants(table, [agent]) | publishing.net_ns_members(host_ns)

        return publishing.measure(n, publishing.Callbacks(
            create=create, remove=remove, memory_kib=lambda: rss_kib(agent), owned_pids=owned,
            extra_kib=lambda: {"bpf_maps_memlock": bpf_maps_kib(bpf_dir)} if os.path.isdir(bpf_dir) else {},
            last_apply=lambda: self.host.call("info")["datapath"].get("nat")))

    def _reset_published(self):
        for ep in ("pub", "filler"):
            if any(e["name"] == ep for e in self.host.call("ps")):
                self.host.call("endpoint_rm", ref=ep)
        self._mappings = None

    def server_veths(self):
        """(host netns path, host-side veth) of every server endpoint, for fault injection."""
        out = []
        for e in self.host.call("ps"):
            if e["name"] in ("srv", "pub"):
                veth = self.host.call("inspect", ref=e["name"])["networks"]["bench"]["host_ifname"]
                out.append((netns.netns_path(self.host.host_ns), veth))
        return out


#: The macvlan topology: a parent veth in the host netns (its peer in the outside netns gives it a
#: carrier) and a subnet on its segment.
MACVLAN_PARENT = "mvl0"
MACVLAN_SUBNET = "10.91.0.0/24"


def add_macvlan_parent(host_ns: str, out_ns: str, name: str = MACVLAN_PARENT) -> None:
    """The parent veth ``name`` in ``host_ns``, its peer in ``out_ns``, both up, no address."""
    from pyroute2 import IPRoute
    with IPRoute(netns=host_ns) as ipr:
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": name + "x", "net_ns_fd": out_ns})
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    with IPRoute(netns=out_ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=name + "x")[0], state="up")


class MacvlanTarget(DocklineTarget):
    """Two endpoints of a dockline macvlan network on one parent of a simulated host (P12)."""

    def __init__(self, datapath: str = "kernel", bridge_target: str | None = None):
        super().__init__(datapath, name=f"macvlan-{datapath}",
                         description=f"dockline macvlan network (bridge mode), {datapath} datapath")
        self.ratio_against = ("docker-macvlan", bridge_target or datapath)

    def build(self, tmpdir):
        self.host = SimHost(pathlib.Path(tmpdir) / self.name, datapath=self.datapath)
        add_macvlan_parent(self.host.host_ns, self.host.out_ns)
        self.host.start_agent()
        self.host.call("network_create", name="bench", driver="macvlan", subnet=MACVLAN_SUBNET,
                       options={"parent": MACVLAN_PARENT, "macvlan_mode": "bridge"})
        self.host.call("endpoint_create", name="srv", network="bench")
        self.host.call("endpoint_create", name="cli", network="bench")
        self.srv_ip = self.host.call("inspect", ref="srv")["networks"]["bench"]["ip"]

    def egress(self):
        return None          # nothing is masqueraded on macvlan

    def published(self, mappings):
        return None          # -p is refused on macvlan

    def publish_cost(self, n):
        return None

    def server_veths(self):
        raise NotImplementedError("macvlan endpoints have no host-side veth")

"""The docker0 baseline: a real Docker engine (confined to its own netns, bench/docker_host.py)
when one can run here, otherwise the docker0-equivalent (dockline's kernel backend, which writes
Docker's bridge and iptables rules). The report names which one was used and why."""

from __future__ import annotations

import logging
import pathlib

from ..control.sim.simhost import HOST_IP, OUTSIDE_IP
from .targets import (FILLER_BASE, PUBLISHED_CTR_PORT, PUBLISHED_HOST_PORT, DocklineTarget, Endpoints, Target,
                      pss_kib, rss_kib)

log = logging.getLogger("dockline.bench")


#: Docker cannot publish 10,000 ports here: with the userland proxy each port costs two
#: docker-proxy processes of ~7 threads and the machine's pid_max (32768) runs out near 2,200
#: mappings; without it, setting up 10,000 took 28 minutes (measured, see bench/README.md).
#: Beyond this many mappings the report uses the docker0-equivalent rules instead.
DOCKER_MAX_MAPPINGS = 1000


class DockerTarget(Target):
    name = "docker0"
    kind = "baseline"

    def __init__(self, userland_proxy: bool = True):
        self.userland_proxy = userland_proxy
        self.dh = None
        self._mappings = None

    def describe(self):
        v = self.version if self.dh else "?"
        return (f"real Docker {v} (dockerd in its own netns, default bridge docker0, "
                f"userland-proxy {'on' if self.userland_proxy else 'off'})")

    def build(self, tmpdir):
        from .docker_host import DockerHost
        self.dh = DockerHost(pathlib.Path(tmpdir) / "docker", userland_proxy=self.userland_proxy)
        self.dh.start()
        self.version = self.dh.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        self.dh.ensure_image()
        self.srv = self.dh.run_container("srv")
        self.cli = self.dh.run_container("cli")

    def teardown(self):
        if self.dh:
            self.dh.cleanup(fast=True)   # Docker deletes 1000s of rules one by one otherwise
            self.dh = None

    def c2c(self):
        return Endpoints(self.cli["netns_path"], self.srv["netns_path"], self.srv["ip"])

    def egress(self):
        return Endpoints(self.cli["netns_path"], self.dh.out_ns_path, OUTSIDE_IP)

    def published(self, mappings):
        if mappings > DOCKER_MAX_MAPPINGS:
            return None
        if self._mappings != mappings:
            self.dh.rm("pub", "filler")
            if mappings > 1:   # equal ranges: Docker maps a host range onto one port as "any one"
                last = FILLER_BASE + mappings - 2
                self.dh.run_container("filler", ports=[f"{FILLER_BASE}-{last}:{FILLER_BASE}-{last}"])
            self.pub = self.dh.run_container("pub", ports=[f"{PUBLISHED_HOST_PORT}:{PUBLISHED_CTR_PORT}"])
            self._mappings = mappings
        return Endpoints(self.dh.out_ns_path, self.pub["netns_path"], HOST_IP, PUBLISHED_HOST_PORT)

    def publish_cost(self, n):
        """bench/publishing.py with Docker's containers. Docker's memory is dockerd's RSS plus the
        PSS of its docker-proxy processes (PSS: their shared pages are not counted once each)."""
        from . import publishing
        n = min(n, DOCKER_MAX_MAPPINGS)
        self.dh.rm("pub", "filler")   # ~2,000 docker-proxy processes: free them (pid_max) first
        self._mappings = None
        daemon = self.dh.proc.pid

        def create(name, ports):
            self.dh.run_container(name, ports=ports)

        def memory():   # only this engine's docker-proxy processes, not another Docker's on the machine
            ours = set(self.dh.our_pids())
            return rss_kib(daemon) + sum(pss_kib(p) for p in _pids_named("docker-proxy") if p in ours)

        return publishing.measure(n, publishing.Callbacks(
            create=create, remove=lambda *names: self.dh.rm(*names), memory_kib=memory,
            owned_pids=lambda: set(self.dh.our_pids())))


class DockerMacvlanTarget(Target):
    """Docker's own macvlan driver (real dockerd, confined as for docker0): two containers of a
    ``-d macvlan -o parent=mvl0`` network on one parent veth. Measured with the c2c metrics; the
    macvlan candidates' ratios are taken against it (P12)."""

    name = "docker-macvlan"
    kind = "reference"

    def __init__(self):
        self.dh = None

    def describe(self):
        v = self.version if self.dh else "?"
        return f"real Docker {v}, macvlan network (bridge mode) on a parent veth"

    def build(self, tmpdir):
        from .docker_host import DockerHost
        from .targets import MACVLAN_PARENT, MACVLAN_SUBNET, add_macvlan_parent
        self.dh = DockerHost(pathlib.Path(tmpdir) / "docker-macvlan")
        add_macvlan_parent(self.dh.host_ns, self.dh.out_ns)
        self.dh.start()
        self.version = self.dh.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        self.dh.ensure_image()
        self.dh.create_network("mv", "-d", "macvlan", "-o", f"parent={MACVLAN_PARENT}", "-o", "macvlan_mode=bridge",
                               "--subnet", MACVLAN_SUBNET)
        self.srv = self.dh.run_container("srv", network="mv")
        self.cli = self.dh.run_container("cli", network="mv")

    def teardown(self):
        if self.dh:
            self.dh.cleanup(fast=True)
            self.dh = None

    def c2c(self):
        return Endpoints(self.cli["netns_path"], self.srv["netns_path"], self.srv["ip"])


def macvlan_targets(candidates, baseline: str = "auto") -> list[Target]:
    """The macvlan row: Docker's macvlan driver when a Docker engine can run (``baseline``
    "equivalent" never starts one) and a dockline macvlan target per candidate datapath."""
    from .targets import MacvlanTarget
    out: list[Target] = []
    if baseline != "equivalent":
        from .docker_host import DockerHost
        ok, why = DockerHost.available()
        if ok:
            out.append(DockerMacvlanTarget())
        else:
            log.warning("macvlan row: no Docker engine (%s); ratios against the bridge path only", why)
    return out + [MacvlanTarget(c) for c in candidates]


def _pids_named(comm: str) -> list[int]:
    import os
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == comm:
                    out.append(int(pid))
        except OSError:
            pass
    return out


def docker_baseline(mode: str = "auto") -> Target:
    """``auto``: real Docker if it can run, else the equivalent; ``docker``: real Docker or fail;
    ``equivalent``: always the equivalent."""
    if mode != "equivalent":
        from .docker_host import DockerHost
        ok, why = DockerHost.available()
        if ok:
            return DockerTarget()
        if mode == "docker":
            raise RuntimeError(f"no Docker engine can run here: {why}")
        log.warning("docker0 baseline: no Docker engine (%s); using the docker0-equivalent", why)
    else:
        why = "requested"
    return DocklineTarget("kernel", name="docker0", kind="baseline",
                          description=f"docker0-equivalent: Linux bridge + veth + Docker's iptables rules "
                                      f"(dockline kernel backend); real Docker not used: {why}")

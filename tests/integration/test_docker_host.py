"""The docker0 baseline: a real Docker engine confined to a netns (bench/docker_host.py).

      outside netns  198.18.0.2 ──veth── 198.18.0.1 uplink0   host netns (dockerd, containerd,
                                                     │ docker0 172.17.0.1/16   iptables, docker-proxy)
                                                   ca   cb   web (-p 8080:80)
Checks that Docker's bridge, rules and proxies live only in the host netns, that the datapath
works (container to container, outside to a published port), and that cleanup leaves nothing.
"""

import os
import re
import subprocess

import pytest

from dockline.bench.docker_host import DockerHost, pid_alive
from dockline.control.sim.nstools import Server, request, sh
from dockline.control.sim.simhost import HOST_IP, OUTSIDE_IP
from dockline.control.netlink import netns

pytestmark = pytest.mark.root

AVAILABLE, WHY = DockerHost.available() if os.geteuid() == 0 else (False, "needs root")
needs_docker = pytest.mark.skipif(not AVAILABLE, reason=f"no Docker engine: {WHY}")


def root_links() -> str:
    """`ip -o link` in the root netns (read only)."""
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def root_iptables() -> list[str]:
    """The root netns's ruleset (read only), without counters."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return [re.sub(r"\[\d+:\d+\]", "", l) for l in out.splitlines() if l and not l.startswith("#")]


ROOT_SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "net/ipv4/conf/all/route_localnet")


def root_sysctls() -> dict:
    """Sysctls dockerd sets in its own netns, read in the root netns (this process's)."""
    values = {}
    for name in ROOT_SYSCTLS:
        try:
            with open(f"/proc/sys/{name}") as f:
                values[name] = f.read().strip()
        except FileNotFoundError:
            values[name] = None
    return values


def has_link(links: str, name: str) -> bool:
    return any(l.split(":")[1].strip().split("@")[0] == name for l in links.splitlines() if ":" in l)


def proxies(dh: DockerHost, port: int) -> list[int]:
    """docker-proxy processes of this engine publishing ``port``."""
    found = []
    for pid in dh.our_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode().split("\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == "docker-proxy" and str(port) in argv \
                and argv[argv.index(str(port)) - 1] == "-host-port":
            found.append(pid)
    return found


def our_mounts(path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [l.split()[4] for l in f if l.split()[4].startswith(str(path))]


@needs_docker
def test_docker_datapath_in_its_own_netns(tmp_path):
    iptables_before, sysctls_before = root_iptables(), root_sysctls()
    dh = DockerHost(tmp_path)
    cleaned = False
    server = None
    try:
        dh.start()
        assert dh.ensure_image() == "dockline-bench/busybox"
        ca = dh.run_container("ca")
        cb = dh.run_container("cb")
        web = dh.run_container("web", ports=["8080:80"])
        engine = dh.our_pids()
        assert len(engine) >= 5, engine        # dockerd, containerd, shims, docker-proxy, ...

        # (a) docker0 exists in the host netns only; the root netns is as it was.
        assert not has_link(root_links(), "docker0")
        assert has_link(sh(dh.host_ns, "ip", "-o", "link", check=True).stdout, "docker0")
        assert root_iptables() == iptables_before
        assert root_sysctls() == sysctls_before

        # (b) container to container by IP on the default bridge.
        assert ca["ip"].startswith("172.17.") and cb["ip"].startswith("172.17.")
        r = subprocess.run(["nsenter", f"--net={ca['netns_path']}", "ping", "-n", "-c1", "-W1", cb["ip"]],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stdout + r.stderr

        # (c) outside -> 198.18.0.1:8080 -> web:80, client address kept (DNAT, no masquerade).
        server = Server(web["netns_path"], 80)
        seen = request(dh.out_ns, HOST_IP, 8080)
        assert seen is not None, "no answer through the published port"
        assert seen.split(":")[0] == OUTSIDE_IP

        # (d) Docker's DNAT rule for 8080, in the host netns.
        nat = sh(dh.host_ns, "iptables", "-t", "nat", "-S", "DOCKER", check=True).stdout
        assert any("--dport 8080" in l and f"--to-destination {web['ip']}:80" in l and "DNAT" in l
                   for l in nat.splitlines()), nat

        # (e) cleanup leaves no process, netns or mount.
        server.close()
        server = None
        dh.cleanup()
        cleaned = True
        alive = [p for p in engine if pid_alive(p)]
        assert not alive, alive
        assert not dh.our_pids()
        assert not netns.exists(dh.host_ns) and not netns.exists(dh.out_ns)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert dh.tag not in listed
        assert not our_mounts(tmp_path)
        assert not dh.root.exists()
        assert root_iptables() == iptables_before
    finally:
        if server:
            server.close()
        if not cleaned:
            dh.cleanup()


@needs_docker
@pytest.mark.parametrize("userland_proxy", [True, False], ids=["proxy", "noproxy"])
def test_userland_proxy_setting(tmp_path, userland_proxy):
    dh = DockerHost(tmp_path, userland_proxy=userland_proxy)
    server = None
    try:
        dh.start()
        web = dh.run_container("web", ports=["8080:80"])
        found = proxies(dh, 8080)
        if userland_proxy:
            assert found, "no docker-proxy for the published port"
        else:
            assert not found, found
        # The published port works either way from outside (DNAT in the host netns).
        server = Server(web["netns_path"], 80)
        assert request(dh.out_ns, HOST_IP, 8080) is not None
    finally:
        if server:
            server.close()
        dh.cleanup()
    assert not dh.our_pids() and not netns.exists(dh.host_ns) and not our_mounts(tmp_path)


@needs_docker
def test_user_network_and_fast_cleanup(tmp_path):
    """A user-defined bridge network works, and cleanup(fast=True) (SIGKILL, no orderly removal:
    what the benchmark uses after thousands of published ports) still leaves nothing behind."""
    dh = DockerHost(tmp_path, userland_proxy=True)
    try:
        dh.start()
        dh.create_network("n1", "--subnet", "172.30.0.0/24")
        a = dh.run_container("na", network="n1")
        b = dh.run_container("nb", network="n1", ports=["9090:80"])
        assert a["ip"].startswith("172.30.0.") and b["ip"].startswith("172.30.0.")
        r = subprocess.run(["nsenter", f"--net={a['netns_path']}", "ping", "-n", "-c1", "-W1", b["ip"]],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stdout + r.stderr
        engine = dh.our_pids()
        assert proxies(dh, 9090)
    finally:
        dh.cleanup(fast=True)
    assert not [p for p in engine if pid_alive(p)]
    assert not dh.our_pids() and not netns.exists(dh.host_ns) and not netns.exists(dh.out_ns)
    assert not our_mounts(tmp_path) and not dh.root.exists()

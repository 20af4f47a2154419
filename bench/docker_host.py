"""Real Docker as the ``docker0`` baseline datapath, confined to network namespaces the bench owns.

      outside (<tag>-out)          198.18.0.2/24 on up0      remote clients
          |  veth
      host    (<tag>-host)         198.18.0.1/24 on uplink0  dockerd + containerd + docker-proxy,
          |  docker0 (172.17.0.1/16), user bridges          docker0 and Docker's iptables rules
      containers                                             netns of each container's init process

The same layout as :class:`dockline.control.sim.simhost.SimHost`, with Docker's engine in place of dockline's agent.
Nothing happens in the root network namespace: dockerd is started with ``nsenter --net=`` (not
``ip netns exec``, which remounts /sys in a private mount namespace, and with it the cgroup mounts
under /sys/fs/cgroup vanish and dockerd fails). dockerd starts its own containerd as a child, so
containerd, its shims and every docker-proxy inherit the host netns. All state lives under the
directory given to the constructor (data-root, exec-root, containerd's root/state/socket, the
daemon.json and the trust key), with three exceptions that Docker 20.10 and containerd 1.6 hard-code:
the empty dirs /run/docker/plugins and /run/containerd/s (shim sockets, removed by each shim when it
exits); ``stop()`` removes those dirs again when this host created them and they are empty.

``cleanup()`` removes the containers, stops dockerd (SIGTERM, then SIGKILL), kills whatever of ours
survived (any process in the host netns, or in the cgroup of one of our containers), unmounts
everything under the state directory, deletes both namespaces and the state; it raises if a process
or a mount was left behind. dockerd's log stays at ``<tmpdir>/dockerd.log``.

The harness enters a container with ``nsenter --net=/proc/<pid>/ns/net`` (``run_container`` returns
that path) or passes the path to ``dockline.control.sim.nstools`` helpers, which accept paths starting with "/".
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time

from dockline.control.netlink import netns

from ..control.sim.nstools import link_namespaces
from ..control.sim.simhost import HOST_IP, OUTSIDE_IP

IMAGE = "dockline-bench/busybox"
BUSYBOX = "/bin/busybox"
BRIDGE_IP = "172.17.0.1/16"
#: Hard-coded by dockerd (plugin sockets) and containerd's shims (their sockets), outside our state.
HARDCODED_DIRS = ("/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd")
#: A unix socket path is limited to 108 bytes; containerd's longest one under the exec-root.
_LONGEST_SOCKET = "exec/containerd/containerd-debug.sock"


def _find(*candidates: str) -> str | None:
    for c in candidates:
        if os.path.isabs(c):
            if os.access(c, os.X_OK):
                return c
        elif (p := shutil.which(c)):
            return p
    return None


#: The CLI that matches Debian's dockerd comes first: this machine also has a newer
#: /usr/local/bin/docker ahead of it on PATH.
DOCKER_CLI = _find("/usr/bin/docker", "docker")
DOCKERD = _find("/usr/sbin/dockerd", "/usr/bin/dockerd", "dockerd")


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a PT_INTERP program header (needs no dynamic loader)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:      # ELF64 only (amd64/arm64)
                return False
            order = "little" if head[5] == 1 else "big"
            phoff = int.from_bytes(head[0x20:0x28], order)
            phentsize = int.from_bytes(head[0x36:0x38], order)
            phnum = int.from_bytes(head[0x38:0x3A], order)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(int.from_bytes(table[i:i + 4], order) != 3  # PT_INTERP
               for i in range(0, len(table), phentsize))


def _ns_id(path: str) -> tuple[int, int] | None:
    """Identity of a namespace file (/proc/<pid>/ns/net or a bind mount under /run/netns)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (our orphans are reaped by PID 1, later)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _mounts_under(*roots: pathlib.Path) -> list[str]:
    prefixes = [str(r) for r in roots]
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if any(mp == p or mp.startswith(p + "/") for p in prefixes):
                found.append(mp)
    return found


class DockerHost:
    """A Docker engine confined to its own network namespace (docker0, its iptables rules and
    docker-proxy live there) with the same uplink/outside layout as SimHost."""

    def __init__(self, tmpdir: pathlib.Path, userland_proxy: bool = True, bip: str = BRIDGE_IP):
        self.tmpdir = pathlib.Path(tmpdir)
        self.tag = "dkr" + secrets.token_hex(3)
        self.host_ns = f"{self.tag}-host"
        self.out_ns = f"{self.tag}-out"
        self.host_ns_path = netns.netns_path(self.host_ns)
        self.out_ns_path = netns.netns_path(self.out_ns)
        self.userland_proxy = userland_proxy
        self.bip = bip
        self.root = self.tmpdir / "docker"             # everything the engine writes
        self.data_root = self.root / "data"
        # Sockets live under the exec-root; a long tmpdir (pytest's) can push them past the
        # 108-byte limit, so the exec-root and the API socket then move to a short private dir.
        if len(str(self.root / _LONGEST_SOCKET)) < 100:
            self.run_dir = self.root
        else:
            self.run_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))
        self.exec_root = self.run_dir / "exec"
        self.sock = self.run_dir / "docker.sock"
        self.pidfile = self.root / "docker.pid"
        self.log_path = self.tmpdir / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.container_ids: set[str] = set()
        self._created_dirs: list[str] = []
        self._image_ready = False
        self.cli_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self.cli_env["DOCKER_CONFIG"] = str(self.root / "cli")   # not ~/.docker of whoever runs us
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            netns.ensure_netns(self.host_ns)
            netns.ensure_netns(self.out_ns)
            link_namespaces(self.host_ns, "uplink0", f"{HOST_IP}/24", self.out_ns, "up0", f"{OUTSIDE_IP}/24")
        except BaseException:
            self._remove_namespaces()
            if self.run_dir != self.root:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ checks
    @staticmethod
    def available() -> tuple[bool, str]:
        """Whether a Docker engine can be run here, and if not, why."""
        if os.geteuid() != 0:
            return False, "needs root"
        missing = [n for n, p in (("dockerd", DOCKERD), ("docker CLI", DOCKER_CLI),
                                  ("containerd", _find("containerd")), ("runc", _find("runc")),
                                  ("nsenter", _find("nsenter")), ("ip", _find("ip")),
                                  ("iptables", _find("iptables"))) if not p]
        if missing:
            return False, "missing " + ", ".join(missing) + " (setup.sh installs docker.io)"
        if not _is_static_elf(BUSYBOX):
            return False, f"{BUSYBOX} is missing or not static (setup.sh installs busybox-static)"
        if not os.path.isdir("/sys/fs/cgroup") or not os.listdir("/sys/fs/cgroup"):
            return False, "no cgroup filesystem at /sys/fs/cgroup"
        return True, f"dockerd at {DOCKERD}, CLI at {DOCKER_CLI}"

    # ------------------------------------------------------------------ daemon
    def start(self, timeout: float = 60):
        ok, why = self.available()
        if not ok:
            raise RuntimeError(f"cannot start Docker: {why}")
        for d in HARDCODED_DIRS:
            if not os.path.exists(d):
                self._created_dirs.append(d)
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        # Our own config file, so that /etc/docker/daemon.json never applies, and the trust key
        # (default /etc/docker/key.json; only settable from the file) stays in our state.
        config = self.root / "daemon.json"
        config.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        cmd = ["nsenter", f"--net={self.host_ns_path}", "--", DOCKERD,
               "--config-file", str(config),
               "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
               "-H", f"unix://{self.sock}", "--pidfile", str(self.pidfile),
               f"--userland-proxy={'true' if self.userland_proxy else 'false'}",
               "--bip", self.bip, "--iptables=true", "--ip-forward=true",
               "--shutdown-timeout", "5"]
        log = open(self.log_path, "ab")
        try:
            # nsenter execs dockerd, so this PID is dockerd's. A session of its own keeps a ^C to
            # the test runner from reaching it before cleanup() does.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.sock.exists() and self.docker("info", "--format", "{{.ID}}", timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def docker(self, *args: str, timeout: float = 120, input: bytes | None = None,
               check: bool = False) -> subprocess.CompletedProcess:
        """The docker CLI against this engine (the CLI itself runs in the root netns: it only
        talks to the API socket)."""
        r = subprocess.run([DOCKER_CLI, "-H", f"unix://{self.sock}", *args], env=self.cli_env,
                           input=input, capture_output=True, timeout=timeout)
        r.stdout = r.stdout.decode(errors="replace")
        r.stderr = r.stderr.decode(errors="replace")
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    # ------------------------------------------------------------------ image, containers
    def _rootfs_tar(self) -> pathlib.Path:
        """A minimal rootfs: static busybox plus a symlink per applet (sh, sleep, nc, ...)."""
        path = self.root / "busybox-rootfs.tar"
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        with tarfile.open(path, "w") as tf:
            for d, mode in (("bin", 0o755), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555),
                            ("dev", 0o755), ("tmp", 0o1777), ("root", 0o700)):
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode = tarfile.DIRTYPE, mode
                tf.addfile(ti)
            tf.add(BUSYBOX, "bin/busybox")
            for a in applets:
                if a != "busybox":
                    ti = tarfile.TarInfo(f"bin/{a}")
                    ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
                    tf.addfile(ti)
        return path

    def ensure_image(self) -> str:
        """Import the busybox rootfs once as ``dockline-bench/busybox``; return the image name."""
        if self._image_ready or self.docker("image", "inspect", IMAGE).returncode == 0:
            self._image_ready = True
            return IMAGE
        tar = self._rootfs_tar()
        self.docker("import", "--change", 'CMD ["sh"]', str(tar), IMAGE, check=True)
        tar.unlink()
        self._image_ready = True
        return IMAGE

    def inspect(self, name: str) -> dict:
        return json.loads(self.docker("inspect", "--type", "container", name, check=True).stdout)[0]

    def run_container(self, name: str, ports: list[str] = (), network: str = "bridge",
                      cmd: tuple[str, ...] = ("sleep", "1000000"), extra: tuple[str, ...] = (),
                      timeout: float = 600) -> dict:
        """``docker run -d`` a busybox container; returns its name, id, init PID, the path of its
        netns (``/proc/<pid>/ns/net``, for nsenter --net= or dockline.control.sim.nstools) and its IP on
        ``network``. Container names need at least two characters (Docker's rule)."""
        image = self.ensure_image()
        args = ["run", "-d", "--name", name, "--network", network]
        for p in ports:
            args += ["-p", p]
        r = self.docker(*args, *extra, image, *cmd, timeout=timeout, check=True)
        cid = r.stdout.strip()
        self.container_ids.add(cid)
        info = self.inspect(cid)
        pid = info["State"]["Pid"]
        return {"name": name, "id": cid, "pid": pid, "netns_path": f"/proc/{pid}/ns/net",
                "ip": info["NetworkSettings"]["Networks"][network]["IPAddress"]}

    def create_network(self, name: str, *args: str) -> str:
        """``docker network create [args] name`` (a bridge network); returns the network's id."""
        return self.docker("network", "create", *args, name, check=True).stdout.strip()

    def rm(self, *names: str, timeout: float = 600):
        if names:
            self.docker("rm", "-f", *names, timeout=timeout, check=True)

    # ------------------------------------------------------------------ teardown
    def _daemon_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _known_container_ids(self) -> set[str]:
        ids = set(self.container_ids)
        if self._daemon_alive():
            r = self.docker("ps", "-aq", "--no-trunc", timeout=30)
            if r.returncode == 0:
                ids.update(r.stdout.split())
        tasks = self.exec_root / "containerd" / "daemon" / "io.containerd.runtime.v2.task" / "moby"
        if tasks.is_dir():
            ids.update(p.name for p in tasks.iterdir())
        return ids

    def our_pids(self, container_ids: set[str] | None = None) -> list[int]:
        """Live processes that belong to this engine: anything in the host netns (dockerd,
        containerd, shims, docker-proxy), anything naming our state dir, anything in one of our
        containers' cgroups."""
        host_ns = _ns_id(self.host_ns_path) if netns.exists(self.host_ns) else None
        ids = self.container_ids if container_ids is None else container_ids
        markers = (str(self.root), str(self.run_dir))
        me = os.getpid()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            pid = int(entry)
            try:
                if host_ns and _ns_id(f"/proc/{pid}/ns/net") == host_ns:
                    pids.append(pid)
                    continue
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().decode(errors="replace")
                if any(m in cmdline for m in markers):
                    pids.append(pid)
                    continue
                if ids:
                    with open(f"/proc/{pid}/cgroup") as f:
                        cg = f.read()
                    if any(i in cg for i in ids):
                        pids.append(pid)
            except OSError:
                continue
        return [p for p in pids if pid_alive(p)]

    def stop(self, timeout: float = 30, fast: bool = False):
        """Remove our containers, stop dockerd (SIGTERM, then SIGKILL), kill what survived,
        unmount everything under our state. Idempotent.

        ``fast`` skips the orderly part (``docker rm -f``, SIGTERM) and SIGKILLs the engine at once:
        Docker removes its iptables rules one ``iptables`` call at a time, which takes minutes for
        thousands of published ports, while deleting the host netns drops them all at once."""
        ids = self._known_container_ids()
        seen = set(self.our_pids(ids))
        if fast and self._daemon_alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._daemon_alive() and ids:
            try:
                self.docker("rm", "-f", *sorted(ids), timeout=300)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        # containerd, shims, docker-proxy (reparented when dockerd was killed), container inits.
        for sig, wait in ((signal.SIGKILL, 5.0),) if fast else ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            pids = self.our_pids(ids)
            seen.update(pids)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
                time.sleep(0.05)
        self.proc = None
        # Orphans are reaped by PID 1, which may take a moment: wait so that a `pgrep` right after
        # cleanup does not show their zombies (not an error if PID 1 is slower than that).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in seen):
            time.sleep(0.05)
        for mp in sorted(set(_mounts_under(self.root, self.run_dir)), key=len, reverse=True):
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)
        # A shim that was SIGKILLed leaves its socket in /run/containerd/s (containerd 1.6 names
        # it sha256("<containerd address>/<namespace>/<container id>")).
        address = self.exec_root / "containerd" / "containerd.sock"
        for cid in ids:
            digest = hashlib.sha256(f"{address}/moby/{cid}".encode()).hexdigest()
            try:
                os.unlink(f"/run/containerd/s/{digest}")
            except OSError:
                pass
        for d in self._created_dirs:                  # deepest first, only if empty
            try:
                os.rmdir(d)
            except OSError:
                pass
        self._created_dirs = []

    def _remove_namespaces(self):
        netns.remove_netns(self.host_ns)
        netns.remove_netns(self.out_ns)

    def cleanup(self, fast: bool = False):
        """stop(), delete both namespaces and the engine's state. Raises if a process or a mount
        of ours was left behind."""
        try:
            self.stop(fast=fast)
        finally:
            leftovers = self.our_pids()
            mounts = _mounts_under(self.root, self.run_dir)
            self._remove_namespaces()
            if not mounts:
                shutil.rmtree(self.root, ignore_errors=True)
                if self.run_dir != self.root:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
        if leftovers or mounts:
            raise AssertionError(f"Docker left processes {leftovers} and mounts {mounts} behind")

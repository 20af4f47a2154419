"""pytest configuration: root/netns gating and the simulated-host fixtures."""

from __future__ import annotations

import glob
import os
import shutil

import pytest

from dockline.control.sim.simhost import SimHost

#: Backends the end-to-end tests run on, with identical expectations (design.md §2: the kernel
#: backend is the reference model). Later backends join this list.
DATAPATHS = ["kernel", "ebpf"]


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    skip = pytest.mark.skip(reason="needs root and iproute2 (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DATAPATHS)
def datapath(request):
    return request.param


@pytest.fixture
def host(tmp_path, datapath):
    """A simulated host with a running agent; torn down (and checked for leftovers) afterwards."""
    h = SimHost(tmp_path, datapath=datapath)
    try:
        h.start_agent()
        yield h
    finally:
        h.cleanup()


@pytest.fixture(scope="session", autouse=True)
def detach_leftover_socket_programs():
    """Agents killed without a reset leave their socket-layer programs on the machine's cgroup
    root (attachments outlive processes by design); no agent of this session is alive once it
    ends, so every dockline socket program left there is detached, except those still pinned
    under a host's BPF folder: a host that still exists (another session's, running at the same
    time) keeps its programs."""
    yield
    if os.geteuid() != 0:
        return
    try:
        from dockline.control.datapath import cgroup_attach, ebpf, loader
        from dockline.control.config import BPF_ROOT
    except ImportError:
        return
    names = {fn for fn, _ in ebpf.SOCK_PROGRAMS}
    keep = set()
    for pin in glob.glob(os.path.join(BPF_ROOT, "*", "v*", "progs", "*", "sock_*")):
        try:
            fd = loader.obj_get(pin)
        except Exception:
            continue
        try:
            keep.add(cgroup_attach.prog_id(fd))
        finally:
            os.close(fd)
    try:
        cgroup_attach.detach_named(names, tuple(t for _, t in ebpf.SOCK_PROGRAMS), frozenset(keep))
    except Exception as e:   # clean-up must not turn a green session red
        print(f"warning: could not detach leftover socket programs: {e}")

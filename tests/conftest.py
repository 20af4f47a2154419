"""pytest configuration: root/netns gating and the simulated-host fixtures."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import tempfile
import warnings

import pytest

from dockline.control.sim.simhost import SimHost

#: Backends the end-to-end tests run on, with identical expectations (design.md §2: the kernel
#: backend is the reference model). Later backends join this list.
DATAPATHS = ["kernel", "ebpf"]


#: the compile cache directory this session made (removed at its end); None if it used the caller's
_session_bpf_cache: str | None = None


def pytest_configure(config):
    """One compile cache (control/datapath/compile_cache.py) for the whole session: every agent a
    SimHost starts inherits DOCKLINE_BPF_CACHE, so the entry programs are compiled once per set of
    cflags, not once per host. A DOCKLINE_BPF_CACHE the caller set (a directory, or ``off``) is
    used as it is and left alone."""
    global _session_bpf_cache
    from dockline.control.datapath.compile_cache import CACHE_ENV
    if CACHE_ENV not in os.environ:
        _session_bpf_cache = tempfile.mkdtemp(prefix="dockline-bpf-cache-")
        os.environ[CACHE_ENV] = _session_bpf_cache


def pytest_unconfigure(config):
    global _session_bpf_cache
    if _session_bpf_cache is not None:
        from dockline.control.datapath.compile_cache import CACHE_ENV
        shutil.rmtree(_session_bpf_cache, ignore_errors=True)
        if os.environ.get(CACHE_ENV) == _session_bpf_cache:
            del os.environ[CACHE_ENV]
        _session_bpf_cache = None


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    skip = pytest.mark.skip(reason="needs root and iproute2 (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bpf_compile_cache_warm():
    """The session's compile cache holds the default entry programs before the first agent needs
    them: compiled here, in the test process, when nothing filled it yet (tests/ebpf's bpf_env
    does when it ran first), so that no agent spends its start-up timeout in clang. Best effort:
    a machine that cannot compile leaves the agents to say so."""
    from dockline.control.datapath import compile_cache, loader
    try:
        cache = compile_cache.CompileCache.from_env()
    except Exception:
        return
    if cache is None or os.geteuid() != 0:
        return
    folder = os.path.join("/sys/fs/bpf", f"dockline-test-{os.getpid()}-{secrets.token_hex(4)}")
    programs = loader.Programs(folder)
    if cache.path(programs.cache_key()).exists():
        return
    try:
        with warnings.catch_warnings():   # bcc 0.26 warns on every str argument the loader passes
            warnings.filterwarnings("ignore", "not a bytes object", DeprecationWarning)
            programs.load()
    except Exception as e:
        print(f"warning: could not fill the BPF compile cache: {e}")
    finally:
        for b in programs._bpf_objects:
            b.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _warm_bpf_compile_cache(request):
    """Every root test of tests/integration starts agents: the cache is filled first."""
    if "root" in request.keywords and "integration" in request.node.path.parts:
        request.getfixturevalue("bpf_compile_cache_warm")


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
        from dockline.control.datapath import cgroup_attach, ebpf, libbpf
        from dockline.control.config import BPF_ROOT
    except ImportError:
        return
    names = {fn for fn, _ in ebpf.SOCK_PROGRAMS}
    keep = set()
    for pin in glob.glob(os.path.join(BPF_ROOT, "*", "v*", "progs", "*", "sock_*")):
        try:
            fd = libbpf.obj_get(pin)
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

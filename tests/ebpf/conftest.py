"""Fixtures of the BPF program tests: the programs compiled once per session into a private pin
folder under /sys/fs/bpf (removed at teardown), fresh maps for every test, and the
BPF_PROG_TEST_RUN helper (tests/ebpf/harness.py). Nothing is attached, nothing is sent."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import harness

BPFFS = "/sys/fs/bpf"
TEST_DIR_PREFIX = "dockline-test-"


@dataclass
class BpfEnv:
    folder: Path          # the private pin folder (removed at teardown)
    root: Path            # <folder>/v<LAYOUT_VERSION>: maps and progs/<digest>/
    programs: object      # loader.Programs
    maps: harness.Maps
    tc_fd: int
    xdp_fd: int

    def bcc_table(self, name: str):
        """bcc's view of a map (its generated Key/Leaf ctypes types), from the compile."""
        for b in self.programs._bpf_objects:
            try:
                return b[name.encode()]
            except KeyError:
                continue
        raise KeyError(name)

    def fd(self, prog: str) -> int:
        return self.programs.progs[prog].fd

    def bcc_leaf_type(self, name: str):
        """bcc's ctypes type of a map's value, straight from the compile's description (bcc's
        Table refuses per-CPU values that are not a multiple of 8 bytes, like nat_scratch)."""
        import json
        from bcc import BPF, lib
        for b in self.programs._bpf_objects:
            desc = lib.bpf_table_leaf_desc(b.module, name.encode())
            if desc:
                return BPF._decode_table_type(json.loads(desc.decode()))
        raise KeyError(name)


class Scratch:
    """nat_scratch (lib/nat.h, per CPU), read with bcc's compiled type of struct nat_scratch (it
    has no mirror: only the NAT stages use it). Zeroed before a run, it shows afterwards whether
    the tail-called stages ran: tc_nat_route sets ``state`` (CT_ST_NEW or ESTABLISHED), nothing
    before it does."""

    def __init__(self, env: BpfEnv):
        from dockline.control.datapath import map_schema
        self.type = env.bcc_leaf_type("nat_scratch")
        self.map = map_schema.open_map(env.root, "nat_scratch", value=self.type)

    def zero(self):
        self.map.update(0, self.type())

    def values(self) -> list:
        return self.map.lookup(0)

    def route_stage_ran(self) -> bool:
        return any(v.state != 0 for v in self.values())

    def close(self):
        self.map.close()


def remove_stale_test_folders():
    """Pin folders of earlier test sessions that died before their teardown (pid gone)."""
    for d in Path(BPFFS).glob(f"{TEST_DIR_PREFIX}*"):
        m = re.fullmatch(rf"{TEST_DIR_PREFIX}(\d+)-[0-9a-f]{{8}}", d.name)
        if m and int(m.group(1)) != os.getpid() and not Path(f"/proc/{m.group(1)}").exists():
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def bpf_env():
    from dockline.control.datapath import loader

    loader.ensure_bpffs()
    remove_stale_test_folders()
    folder = Path(BPFFS) / f"{TEST_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    programs = None
    maps = None
    try:
        with warnings.catch_warnings():   # bcc 0.26 warns on every str argument the loader passes
            warnings.filterwarnings("ignore", "not a bytes object", DeprecationWarning)
            # compiled even when the compile cache has them: bcc_table needs bcc's objects
            programs = loader.Programs(str(folder), read_cache=False).load()
        assert programs.compiled, "a fresh pin folder must compile, not adopt"
        maps = harness.Maps(str(programs.root))
        yield BpfEnv(folder, programs.root, programs, maps,
                     programs.progs["tc_from_endpoint"].fd, programs.progs["xdp_uplink"].fd)
    finally:
        if maps is not None:
            maps.close()
        if programs is not None:
            for b in programs._bpf_objects:
                b.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
        assert not folder.exists(), f"test pin folder {folder} left behind"


@pytest.fixture
def maps(bpf_env):
    """Every map emptied (hash maps) or zeroed (verdict array) before and after the test."""
    bpf_env.maps.clear()
    assert bpf_env.maps.is_empty()
    yield bpf_env.maps
    bpf_env.maps.clear()


@pytest.fixture
def tc_fd(bpf_env):
    return bpf_env.tc_fd


@pytest.fixture
def scratch(bpf_env):
    s = Scratch(bpf_env)
    s.zero()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def xdp_fd(bpf_env):
    return bpf_env.xdp_fd


# ---------------------------------------------------------------- NAT tests (tests/ebpf/natenv.py)
@pytest.fixture(scope="session")
def natns():
    """The NAT tests' private network namespace (created once, entered per test by ``world``)."""
    from .natenv import NatNetns
    ns = NatNetns()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def world(bpf_env, maps, natns):
    """The host of tests/ebpf/natenv.py installed in fresh maps, the test running inside the
    private netns (left again at teardown)."""
    from .natenv import World
    w = World(maps, natns, {name: p.fd for name, p in bpf_env.programs.progs.items()})
    natns.enter()
    try:
        w.install()
        yield w
    finally:
        natns.leave()

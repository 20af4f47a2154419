"""The compile cache (control/datapath/compile_cache.py): hosts loaded from one entry run the same
code as a compile, each against its own pinned maps; anything wrong with an entry means a compile.

The entry comes from this session's cache (tests/conftest.py), which bpf_env's compile filled.
Every host here is a pin folder of its own under /sys/fs/bpf (removed at teardown); nothing is
attached, nothing is sent."""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import os
import secrets
import shutil
import warnings
from pathlib import Path

import pytest

from dockline.control.datapath import bpf_structs as S
from dockline.control.datapath import compile_cache as cc
from dockline.control.datapath import libbpf, loader

from .conftest import BPFFS, TEST_DIR_PREFIX
from .harness import TC_ACT_SHOT, Maps, RunRefused, prog_test_run, verdict_delta
from .packets import A1, TC_CASES, frame, with_variants

pytestmark = pytest.mark.root


def _ids(cases):
    return [c.id for c in cases]


@pytest.fixture(scope="module")
def session_cache(bpf_env) -> cc.CompileCache:
    """The session's cache with the entry of bpf_env's compile (default cflags) in it."""
    d = cc.cache_dir_from_env()
    if d is None:
        pytest.skip(f"{cc.CACHE_ENV}=off: no compile cache in this session")
    cache = cc.CompileCache(d)
    assert cache.path(bpf_env.programs.cache_key()).exists(), "bpf_env's compile wrote no cache entry"
    return cache


class Hosts:
    """Pin folders loaded with loader.Programs, each removed (and checked gone) at close."""

    def __init__(self):
        self.made: list[tuple[Path, loader.Programs | None]] = []

    def folder(self) -> Path:
        f = Path(BPFFS) / f"{TEST_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.made.append((f, None))
        return f

    def load(self, folder: Path | None = None, cflags=None) -> loader.Programs:
        folder = folder or self.folder()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "not a bytes object", DeprecationWarning)
            p = loader.Programs(str(folder), cflags=cflags).load()
        self.made.append((folder, p))
        return p

    def close(self):
        for folder, p in self.made:
            if p is None:
                continue
            if p._bpf_objects:          # compiled: bcc owns (and closes) the program fds
                for b in p._bpf_objects:
                    b.cleanup()
            else:
                for prog in p.progs.values():
                    os.close(prog.fd)
        for folder in {f for f, _ in self.made}:
            shutil.rmtree(folder, ignore_errors=True)
            assert not folder.exists(), f"test pin folder {folder} left behind"


@pytest.fixture
def hosts():
    h = Hosts()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def cached_host(session_cache):
    """One host loaded from the session's cache, with harness maps on its own pinned maps."""
    h = Hosts()
    maps = None
    try:
        p = h.load()
        maps = Maps(str(p.root))
        yield p, maps
    finally:
        if maps is not None:
            maps.close()
        h.close()


def _map_ids(root: Path) -> dict[str, int]:
    return {pin: mdef_id for mdef_id, (pin, _) in cc.pinned_maps_by_id(root).items()}


# ---------------------------------------------------------------- same code, own maps
def test_a_cache_load_compiles_nothing_and_matches_the_compile(bpf_env, cached_host):
    p, _ = cached_host
    assert p.origin == loader.ORIGIN_CACHE and not p.compiled and not p._bpf_objects
    assert set(p.progs) == set(bpf_env.programs.progs)
    for fn, prog in p.progs.items():
        mine, compiled = libbpf.prog_info(prog.fd), libbpf.prog_info(bpf_env.fd(fn))
        # the tag hashes the instructions with map fds zeroed: same tag, same code
        assert (bytes(mine.tag), mine.type, mine.name, mine.xlated_prog_len) == \
            (bytes(compiled.tag), compiled.type, compiled.name, compiled.xlated_prog_len), fn
        assert mine.id != compiled.id
    mine, compiled = _map_ids(p.root), _map_ids(bpf_env.root)
    assert set(mine) == set(compiled) and len(mine) >= 17
    assert not set(mine.values()) & set(compiled.values()), "a cache-loaded host shares a map"


def test_two_hosts_from_one_cache_have_their_own_maps(session_cache, hosts):
    a, b = hosts.load(), hosts.load()
    assert a.origin == b.origin == loader.ORIGIN_CACHE
    assert not set(_map_ids(a.root).values()) & set(_map_ids(b.root).values())
    ma, mb = Maps(str(a.root)), Maps(str(b.root))
    try:
        ma.clear(), mb.clear()
        ma.add_endpoint(A1)
        assert ma.by_ifindex.lookup(A1.ifindex) is not None and mb.by_ifindex.lookup(A1.ifindex) is None
        # and each host's program reads its own map: A knows the sender, B drops it as unknown
        pkt = frame()
        ra = prog_test_run(a.progs["tc_from_endpoint"].fd, pkt)
        rb = prog_test_run(b.progs["tc_from_endpoint"].fd, pkt)
        assert ra.retval != TC_ACT_SHOT and rb.retval == TC_ACT_SHOT
        assert ma.verdict(S.Verdict.UNKNOWN_ENDPOINT) == (0, 0)
        assert mb.verdict(S.Verdict.UNKNOWN_ENDPOINT) == (1, len(pkt))
    finally:
        ma.close(), mb.close()


@pytest.mark.parametrize("case", list(with_variants(TC_CASES)), ids=_ids(list(with_variants(TC_CASES))))
def test_cache_loaded_program_gives_the_compiled_verdict_and_bytes(case, maps, tc_fd, cached_host):
    """The same table case on the compiled tc_from_endpoint (bpf_env) and on the cache-loaded one
    (own maps, set up the same way): same return value, output bytes and verdict counters."""
    p, theirs = cached_host
    results = []
    for m, fd in ((maps, tc_fd), (theirs, p.progs["tc_from_endpoint"].fd)):
        m.clear()
        case.setup(m)
        before = m.verdict_table()
        try:
            r = prog_test_run(fd, case.build())
            results.append((r.retval, r.out, verdict_delta(before, m.verdict_table())))
        except RunRefused as e:
            results.append(("refused", e.errno))
    theirs.clear()
    assert results[0] == results[1], case.id


# ---------------------------------------------------------------- restart, misses, corruption
def test_restart_of_a_cache_loaded_host_adopts_its_pins(session_cache, hosts):
    a = hosts.load()
    again = hosts.load(Path(str(a.root)).parent)
    assert (a.origin, again.origin) == (loader.ORIGIN_CACHE, loader.ORIGIN_PINS)
    assert again.digest == a.digest


def test_changed_sources_or_cflags_change_the_key(bpf_env, tmp_path, monkeypatch):
    base = bpf_env.programs.cache_key()
    assert loader.Programs(str(tmp_path / "x"), cflags=["-DMAX_CT=64"]).cache_key() != base
    # the pin folder is not part of it: every host shares one entry
    assert loader.Programs(str(tmp_path / "another-host")).cache_key() == base
    src = tmp_path / "ebpf"
    shutil.copytree(loader.EBPF_DIR, src)
    consts = src / "lib" / "consts.h"
    consts.write_text(consts.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(loader, "EBPF_DIR", src)
    changed = loader.Programs(str(tmp_path / "x")).cache_key()
    monkeypatch.undo()
    assert changed != base and loader.Programs(str(tmp_path / "x")).cache_key() == base


def test_a_key_with_no_entry_misses_and_pins_nothing(session_cache, hosts):
    folder = hosts.folder()
    root = folder / "v1"
    root.mkdir(parents=True)
    with pytest.raises(cc.CacheMiss, match="no entry"):
        session_cache.load("0" * 32, root, ["tc_from_endpoint"])
    assert list(root.iterdir()) == []


def _private_copy(session_cache, key, tmp_path) -> cc.CompileCache:
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    shutil.copy(session_cache.path(key), d / f"{key}.json")
    return cc.CompileCache(d)


def _rewrite(cache, key, edit, fix_checksum: bool):
    path = cache.path(key)
    doc = json.loads(path.read_text())
    edit(doc["payload"])
    if fix_checksum:
        doc["sha256"] = cc._checksum(doc["payload"])
    path.write_text(json.dumps(doc))


def _flip_a_byte(payload):
    f = payload["funcs"]["tc_from_endpoint"]
    raw = bytearray(base64.b64decode(f["insns"]))
    raw[9] ^= 0xFF
    f["insns"] = base64.b64encode(bytes(raw)).decode()


def _exit_without_r0(payload):
    """A program the verifier refuses (R0 is never set), with no map slots."""
    f = payload["funcs"]["tc_from_endpoint"]
    f["insns"], f["slots"] = base64.b64encode(cc.INSN.pack(0x95, 0, 0, 0)).decode(), []


def _misplace_a_slot(payload):
    slots = payload["funcs"]["tc_from_endpoint"]["slots"]
    slots[0][0] += 1


@pytest.mark.parametrize("damage, reason", [
    (lambda c, k: c.path(k).write_text(c.path(k).read_text()[:1000]), "unreadable"),
    (lambda c, k: _rewrite(c, k, _flip_a_byte, fix_checksum=False), "checksum mismatch"),
    (lambda c, k: _rewrite(c, k, _misplace_a_slot, fix_checksum=True), "map slots do not match"),
    (lambda c, k: _rewrite(c, k, lambda p: p["funcs"].pop("xdp_uplink"), fix_checksum=True), "lacks xdp_uplink"),
    (lambda c, k: c.path(k).write_text("[]"), "corrupt"),
    (lambda c, k: _rewrite(c, k, _exit_without_r0, fix_checksum=True), "the kernel refused cached tc_from_endpoint"),
], ids=["truncated", "bit-flip", "bad-slot", "missing-function", "not-an-entry", "verifier-refuses"])
def test_a_damaged_entry_misses_and_leaves_no_program(bpf_env, session_cache, tmp_path, hosts, damage, reason):
    key = bpf_env.programs.cache_key()
    cache = _private_copy(session_cache, key, tmp_path)
    damage(cache, key)
    root = hosts.folder() / "v1"
    root.mkdir(parents=True)
    wanted = [fn for fns in loader.PROGRAMS.values() for fn, _, _ in fns]
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(cc.CacheMiss, match=reason):
        cache.load(key, root, wanted)
    assert set(os.listdir("/proc/self/fd")) <= fds_before, "a failed cache load leaked fds"


def test_a_pinned_map_of_another_shape_misses(bpf_env, session_cache, hosts):
    """A stale host folder whose ``ct`` is not what the entry says (bcc would reuse it blindly)."""
    key = bpf_env.programs.cache_key()
    root = hosts.folder() / "v1"
    root.mkdir(parents=True)
    opts = libbpf.BpfMapCreateOpts(sz=ctypes.sizeof(libbpf.BpfMapCreateOpts))
    fd = libbpf.lib().bpf_map_create(1, b"ct", 4, 4, 16, ctypes.byref(opts))     # a small plain hash
    assert fd >= 0
    try:
        assert libbpf.lib().bpf_obj_pin(fd, str(root / "ct").encode()) == 0
    finally:
        os.close(fd)
    with pytest.raises(cc.CacheMiss, match=r"pinned map .*/ct is"):
        session_cache.load(key, root, ["tc_from_endpoint"])


def test_a_cache_directory_others_can_write_is_not_used(bpf_env, session_cache, tmp_path):
    key = bpf_env.programs.cache_key()
    cache = _private_copy(session_cache, key, tmp_path)
    os.chmod(cache.dir, 0o777)
    with pytest.raises(cc.CacheMiss, match="not ours alone"):
        cache.read(key)
    with pytest.raises(cc.CacheMiss, match="not ours alone"):
        cache.store(cc.Entry(key, "GPL", 0, {}, {}))


@pytest.mark.slow
def test_a_corrupt_entry_falls_back_to_compiling_and_is_rewritten(bpf_env, session_cache, tmp_path, hosts,
                                                                  monkeypatch, caplog):
    key = bpf_env.programs.cache_key()
    cache = _private_copy(session_cache, key, tmp_path)
    _rewrite(cache, key, _flip_a_byte, fix_checksum=False)
    monkeypatch.setenv(cc.CACHE_ENV, str(cache.dir))
    with caplog.at_level(logging.INFO, logger="dockline.loader"):
        p = hosts.load()
    assert p.origin == loader.ORIGIN_COMPILED and p.compiled
    text = caplog.text
    assert "is corrupt (checksum mismatch); compiling" in text and "cached as" in text
    assert cache.read(key).funcs.keys() == {fn for fns in loader.PROGRAMS.values() for fn, _, _ in fns}
    # and the rewritten entry serves the next host
    assert hosts.load().origin == loader.ORIGIN_CACHE


def test_the_probe_program_is_compiled_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    """Every agent start probes; only the first compiles."""
    d = tmp_path / "cache"
    monkeypatch.setenv(cc.CACHE_ENV, str(d))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "not a bytes object", DeprecationWarning)
        first, second = loader.probe(), loader.probe()
    assert first[0] and first[1].startswith("bcc compiles,"), first
    assert second[0] and second[1].startswith("bcc compiled it before (compile cache),"), second
    assert len(list(d.glob("*.json"))) == 1
    monkeypatch.setenv(cc.CACHE_ENV, "off")
    assert loader.probe()[1].startswith("bcc compiles,")

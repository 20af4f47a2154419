"""Where the BPF compile cache lives (DOCKLINE_BPF_CACHE) and how an entry's instructions are
scanned for map slots; no kernel needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockline.control.datapath import compile_cache as cc
from dockline.control.errors import InvalidArgument


def test_unset_means_the_default_directory():
    assert cc.cache_dir_from_env({}) == Path(cc.DEFAULT_CACHE_DIR) == Path("/var/cache/dockline/bpf")


@pytest.mark.parametrize("value", ["off", "OFF", "0", ""])
def test_off_disables_it(value):
    assert cc.cache_dir_from_env({cc.CACHE_ENV: value}) is None


def test_an_absolute_directory_is_used():
    assert cc.cache_dir_from_env({cc.CACHE_ENV: "/tmp/x"}) == Path("/tmp/x")


def test_a_relative_directory_is_refused_by_name():
    with pytest.raises(InvalidArgument, match=r"DOCKLINE_BPF_CACHE must be an absolute directory.*'rel/dir'"):
        cc.cache_dir_from_env({cc.CACHE_ENV: "rel/dir"})


def _insn(code, src=0, dst=0, off=0, imm=0) -> bytes:
    return cc.INSN.pack(code, (src << 4) | dst, off, imm)


def test_ld_imm64_slots_skip_the_second_half():
    # r1 = map fd 7 (two slots); r0 = 0x42 (plain ld_imm64); exit
    prog = (_insn(0x18, src=1, dst=1, imm=7) + _insn(0, imm=0) + _insn(0x18, dst=0, imm=0x42)
            + _insn(0, imm=0x18) + _insn(0x95))
    assert list(cc._ld_imm64_slots(prog)) == [(0, 1, 7), (2, 0, 0x42)]


def test_an_entry_whose_slots_do_not_match_its_instructions_is_refused():
    prog = _insn(0x18, src=1, dst=1) + _insn(0) + _insn(0x95)
    mdef = cc.MapDef("m", "m", 1, 4, 4, 1, 0)
    cc._check_slots(cc.FuncImage("f", 3, -1, prog, ((0, "m"),)), {"m": mdef})
    with pytest.raises(cc.CacheMiss, match="map slots do not match"):
        cc._check_slots(cc.FuncImage("f", 3, -1, prog, ((1, "m"),)), {"m": mdef})
    with pytest.raises(cc.CacheMiss, match="no definition: m"):
        cc._check_slots(cc.FuncImage("f", 3, -1, prog, ((0, "m"),)), {})

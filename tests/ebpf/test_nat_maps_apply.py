"""control/datapath/nat_maps.NatMaps keeps no copy of the exact entries: publishing and
unpublishing write straight to nat_exact, and a whole-rule-set apply (in place, or a flip to the
other generation) reads the live entries back from the map. After every step the map must hold
exactly the compiled program's entries of the live generation, and nothing of the other one.
Fresh maps of the session's compile; nothing is attached, no packet is sent."""

from __future__ import annotations

import ipaddress

import pytest

from dockline.control.datapath import bpf_structs as S
from dockline.control.datapath.nat_maps import TABLE_BASE, NatMaps, exact_key_raw, exact_value_raw
from dockline.control.nat import compiler as C
from dockline.control.nat.parser import parse_save

pytestmark = pytest.mark.root

ANY = C.ANY
A, B = ipaddress.IPv4Address("10.0.0.2"), ipaddress.IPv4Address("10.0.0.3")


def ruleset(extra: str = ""):
    return parse_save("*nat\n:DOCKLINE - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKLINE\n"
                      + extra + "COMMIT\n")[0]


def compiler_for(rs, published: dict):
    entries = [(ANY, port, 6, C.ExactValue(ip, cport)) for port, (ip, cport) in published.items()]
    return lambda base: C.compile_ruleset(rs, lambda n: None, base, managed={"DOCKLINE": entries})


def map_entries(maps) -> dict:
    return {bytes(k): bytes(v) for k, v in maps.nat_exact.items()}


def expected(compile_with_base, generation: int) -> dict:
    prog = compile_with_base(TABLE_BASE[generation])
    return {exact_key_raw(k): exact_value_raw(v) for k, v in prog.exact.items()}


def test_raw_items_reads_what_items_reads(maps):
    for i in range(5000):
        maps.nat_exact.update(S.NatExactKey(table=1, daddr=i, dport=i & 0xFFFF, proto=6), S.NatExactVal(to_addr=i))
    raw = dict(maps.nat_exact.raw_items(chunk=700))     # several batches
    assert raw == map_entries(maps) and len(raw) == 5000


def test_deltas_in_place_applies_and_flips_leave_exactly_the_live_entries(maps):
    nat = NatMaps(maps.nat_config, maps.nat_rules, maps.nat_exact, maps.nat_shapes, maps.nat_cls)
    published = {8080: (A, 80), 8081: (A, 81)}
    rs = ruleset()
    r = nat.apply(compiler_for(rs, published)(TABLE_BASE[0]), 0, 61000, 65535)
    gen = nat.live_config().generation
    assert map_entries(maps) == expected(compiler_for(rs, published), gen)
    table = C.compile_ruleset(rs, lambda n: None, TABLE_BASE[gen],
                              managed={"DOCKLINE": []}).managed_tables["DOCKLINE"]

    # publish two, unpublish one: written in place, nothing read back
    r = nat.apply_managed_delta(table, iter([((ANY, 9000, 6), C.ExactValue(B, 90)), ((ANY, 9001, 6), C.ExactValue(B, 91)),
                                             ((ANY, 8081, 6), None)]))
    assert (r["exact_written"], r["exact_removed"], r["flipped"]) == (2, 1, False)
    published = {8080: (A, 80), 9000: (B, 90), 9001: (B, 91)}
    assert map_entries(maps) == expected(compiler_for(rs, published), gen)

    # the same rules again with one port changed and one gone: compared with the map, in place
    published = {8080: (A, 8080), 9000: (B, 90)}
    r = nat.apply(compiler_for(rs, published)(TABLE_BASE[0]), 0, 61000, 65535)
    assert (r["exact_written"], r["exact_removed"], r["flipped"]) == (1, 1, False)
    assert map_entries(maps) == expected(compiler_for(rs, published), gen)

    # replace_managed: the managed tables made to hold exactly the given entries
    r = nat.replace_managed(table, [((ANY, 8080, 6), C.ExactValue(A, 80)), ((ANY, 7000, 6), C.ExactValue(A, 70))])
    assert (r["exact_written"], r["exact_removed"]) == (2, 1)
    published = {8080: (A, 80), 7000: (A, 70)}
    assert map_entries(maps) == expected(compiler_for(rs, published), gen)

    # a user rule with its own simple DNAT run: a new instruction sequence, flipped; the old
    # generation's entries are read back from the map and removed
    rs2 = ruleset("-A PREROUTING -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.3:5353\n")
    r = nat.apply(compiler_for(rs2, published)(TABLE_BASE[0]), 0, 61000, 65535)
    assert r["flipped"] and r["exact_removed"] == 2 and nat.live_config().generation == 1 - gen
    assert map_entries(maps) == expected(compiler_for(rs2, published), 1 - gen)

    # a fresh NatMaps (an agent restart) goes on from what the maps say
    again = NatMaps(maps.nat_config, maps.nat_rules, maps.nat_exact, maps.nat_shapes, maps.nat_cls)
    r = again.apply(compiler_for(rs2, published)(TABLE_BASE[0]), 0, 61000, 65535)
    assert (r["exact_written"], r["exact_removed"], r["flipped"]) == (0, 0, False)
    assert map_entries(maps) == expected(compiler_for(rs2, published), 1 - gen)


def test_hairpin_targets_by_whole_set_and_by_delta_read_the_map_not_a_copy(maps):
    nat = NatMaps(maps.nat_config, maps.nat_rules, maps.nat_exact, maps.nat_shapes, maps.nat_cls)
    assert nat.sync_hairpin_targets({("10.0.0.2", 80, 6), ("10.0.0.2", 53, 17)}) == 2
    assert nat.hairpin_targets() == {("10.0.0.2", 80, 6), ("10.0.0.2", 53, 17)}
    # an endpoint comes, another goes: only their targets are touched
    assert nat.hairpin_delta({("10.0.0.3", 8080, 6)}, set()) == 1
    assert nat.hairpin_delta(set(), {("10.0.0.2", 80, 6), ("10.0.0.2", 53, 17)}) == 2
    assert nat.hairpin_targets() == {("10.0.0.3", 8080, 6)}
    # a fresh NatMaps (a restart) compares with what the map holds
    again = NatMaps(maps.nat_config, maps.nat_rules, maps.nat_exact, maps.nat_shapes, maps.nat_cls)
    assert again.sync_hairpin_targets({("10.0.0.3", 8080, 6), ("10.0.0.4", 1, 6)}) == 1
    assert again.hairpin_targets() == {("10.0.0.3", 8080, 6), ("10.0.0.4", 1, 6)}


def classified(n: int, port_base: int) -> str:
    """``n`` -s/--dport rules of two shapes: one classifier."""
    return "".join(f"-A PREROUTING -s 10.9.{i // 250}.{i % 250}/32 -p tcp -m tcp --dport {port_base + i} "
                   f"-j DNAT --to-destination 10.0.0.2\n" if i % 2 else
                   f"-A PREROUTING -d 10.8.{i // 250}.{i % 250}/32 -p udp -j DNAT --to-destination 10.0.0.3\n"
                   for i in range(n))


def cls_keys(maps) -> set:
    return {k for k, _ in maps.nat_cls.raw_items()}


def expected_cls(rs, generation: int) -> set:
    from dockline.control.datapath.nat_maps import cls_key_raw
    prog = C.compile_ruleset(rs, lambda n: None, TABLE_BASE[generation], managed={"DOCKLINE": []})
    return {cls_key_raw(k, generation * C.MAX_NAT_SHAPES) for k in prog.cls}


def test_classifier_keys_follow_the_live_generation(maps):
    """nat_cls holds exactly the live generation's keys after each flip, and nothing once the
    rules have no classifier; the fast instruction packer writes what the ctypes mirror says."""
    from dockline.control.datapath.nat_maps import rule_raw, to_ctypes
    nat = NatMaps(maps.nat_config, maps.nat_rules, maps.nat_exact, maps.nat_shapes, maps.nat_cls)
    sets = [ruleset(classified(300, 2000)), ruleset(classified(500, 3000)), ruleset()]
    for rs in sets:
        nat.apply(compiler_for(rs, {})(TABLE_BASE[0]), 0, 61000, 65535)
        gen = nat.live_config().generation
        assert cls_keys(maps) == expected_cls(rs, gen)
        prog = C.compile_ruleset(rs, lambda n: None, TABLE_BASE[gen], managed={"DOCKLINE": []})
        base, shape_base = gen * C.MAX_NAT_RULES, gen * C.MAX_NAT_SHAPES
        for pc, i in enumerate(prog.instructions):
            assert rule_raw(i, base, shape_base) == bytes(to_ctypes(i, base, shape_base))
            assert bytes(maps.nat_rules.lookup(base + pc)) == bytes(to_ctypes(i, base, shape_base))
        for slot, first in enumerate(prog.shape_first):
            sh = maps.nat_shapes.lookup(shape_base + slot)
            assert sh.first_pc == base + first and sh.last == (slot in prog.shape_last)
    assert cls_keys(maps) == set()

"""A full conntrack table: the programs compiled with -DMAX_CT=64 into a pin folder of their own
(32 flows fill the LRU hash), run in the private netns with Docker's host rules.

What happens (measured on kernel 6.18, the test pinned to one CPU so that the LRU's per-CPU free
lists do not blur it):
  * creating a flow never fails for lack of room: the LRU evicts the least recently used entries
    in batches (the table drops from 64 to ~50 entries, then refills), and every new flow gets
    both halves;
  * an idle flow simply disappears, usually both halves together (they were written together),
    sometimes only one (the eviction batch boundary falls between them);
  * a flow whose client keeps sending keeps its original half (each hit marks it referenced) but
    its reply half, never looked up while the server is silent, is evicted like an idle entry; the
    next client packet after CT_TWIN_CHECK_NS (1 s) re-creates it (twin repair);
  * the client's next packet of an evicted DNAT flow goes through the rules again and is picked
    up mid-stream (ESTABLISHED, LOOSE) with the same translation;
  * but the server's next packet of an evicted DNAT flow is a conntrack miss too, and with
    Docker's MASQUERADE rule it becomes a new, masqueraded flow from host:80 instead of host:8080
    (the client sees a packet of a connection it does not know): eviction of a busy published
    port's entries breaks its connections, which is why MAX_CT must be sized for the load.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import warnings
from pathlib import Path

import pytest
from scapy.layers.inet import TCP

from dockline.control.datapath import bpf_structs as S

from .conftest import BPFFS, TEST_DIR_PREFIX
from .harness import TC_ACT_REDIRECT, Maps, Tuple
from .natenv import (C1, CLIENT, DOCKER_HOST, HOST_IP, TCP_P, World, assert_bytes, ct_tuples, from_c1,
                     from_outside, to_c1, to_outside)

pytestmark = pytest.mark.root

MAX_CT = 64
FLOWS = 200
TWIN_CHECK_NS = 1_000_000_000     # consts.h CT_TWIN_CHECK_NS


@pytest.fixture(scope="module")
def small(bpf_env, natns):
    """Programs and maps compiled with MAX_CT=64 (removed at teardown)."""
    from dockline.control.datapath import loader
    folder = Path(BPFFS) / f"{TEST_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    programs = maps = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "not a bytes object", DeprecationWarning)
            programs = loader.Programs(str(folder), cflags=[f"-DMAX_CT={MAX_CT}"]).load()
        maps = Maps(str(programs.root))
        yield programs, maps
    finally:
        if maps is not None:
            maps.close()
        for b in programs._bpf_objects if programs is not None else []:
            b.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
        assert not folder.exists()


@pytest.fixture
def full(small, natns):
    """A World on the small programs, inside the netns, on one CPU."""
    programs, maps = small
    maps.clear()
    w = World(maps, natns, {name: p.fd for name, p in programs.progs.items()})
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    natns.enter()
    try:
        w.install()
        w.rules(DOCKER_HOST)
        yield w
    finally:
        natns.leave()
        os.sched_setaffinity(0, cpus)
        maps.clear()


def orig(i: int) -> Tuple:
    return Tuple(CLIENT, HOST_IP, 20000 + i, 8080, TCP_P)


def reply(i: int) -> Tuple:
    return Tuple(C1.ip, CLIENT, 80, 20000 + i, TCP_P)


def syn(i: int):
    return from_outside(TCP(sport=20000 + i, dport=8080, flags="S"))


def test_the_small_table_is_small(small):
    from dockline.control.datapath import libbpf
    programs, _ = small
    fd = libbpf.obj_get(str(programs.root / "ct"))
    try:
        assert libbpf.map_info(fd).max_entries == MAX_CT
    finally:
        os.close(fd)


def test_new_flows_are_created_when_the_table_is_full(full):
    m = full.maps
    sizes = []
    for i in range(FLOWS):
        rv, out = full.uplink(bytes(syn(i)))
        assert rv == TC_ACT_REDIRECT, f"flow {i}: {m.moved_verdicts()}"
        assert_bytes(out, to_c1(syn(i), dst=C1.ip, dport=80))
        keys = m.ct_table()
        assert orig(i) in keys and reply(i) in keys, f"flow {i} is missing a half right after creation"
        sizes.append(len(keys))
    assert m.nat_counter_table() == {"CT_NEW": FLOWS}
    assert m.moved_verdicts() == {"NAT_REDIRECT": (FLOWS, FLOWS * len(syn(0)))}
    assert max(sizes) == MAX_CT and sizes[:MAX_CT // 2] == list(range(2, MAX_CT + 1, 2))
    assert min(sizes[MAX_CT:]) >= MAX_CT // 2, "an eviction emptied most of the table"
    # least recently used first: whatever survives belongs to the newest flows
    survivors = {k.sport - 20000 if k.saddr == CLIENT else k.dport - 20000 for k in m.ct_table()}
    assert min(survivors) >= FLOWS - MAX_CT and FLOWS - 1 in survivors
    assert orig(0) not in m.ct_table() and reply(0) not in m.ct_table()


def test_after_eviction(full):
    """What the packets of evicted and half-evicted flows meet (see the module docstring)."""
    m = full.maps
    live = 999                                      # a flow whose client keeps sending
    rv, _ = full.uplink(bytes(syn(live)))
    assert rv == TC_ACT_REDIRECT
    created = m.ct.lookup(orig(live).key()).twin_checked_ns
    for i in range(FLOWS):
        full.uplink(bytes(syn(i)))
        if i % 5 == 0:
            full.uplink(bytes(from_outside(TCP(sport=20000 + live, dport=8080, flags="A"))))
    table = m.ct_table()
    assert orig(live) in table and reply(live) not in table, "the live flow's halves"

    # twin repair, once CT_TWIN_CHECK_NS has passed since the flow last checked
    while time.monotonic_ns() < created + TWIN_CHECK_NS + 10_000_000:
        time.sleep(0.05)
    ack = from_outside(TCP(sport=20000 + live, dport=8080, flags="A"))
    rv, out = full.uplink(bytes(ack))
    assert rv == TC_ACT_REDIRECT
    assert m.nat_counter_table()["CT_TWIN_REPAIR"] == 1
    assert ct_tuples(m)[reply(live)] == orig(live).reverse()
    ans = from_c1(TCP(sport=80, dport=20000 + live, flags="A"))
    rv, out = full.endpoint(bytes(ans))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_outside(ans, src=HOST_IP, sport=8080))

    # flow 0 is gone: its server's packet becomes a new masqueraded flow from host:80
    assert orig(0) not in m.ct_table() and reply(0) not in m.ct_table()
    ans0 = from_c1(TCP(sport=80, dport=20000, flags="A"))
    rv, out = full.endpoint(bytes(ans0))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_outside(ans0, src=HOST_IP))        # source port 80, not 8080
    assert m.ct_table()[reply(0)].kind == S.CT_K_SNAT

    # flow 1 is gone too: its client's packet is picked up again with the same translation
    ack1 = from_outside(TCP(sport=20001, dport=8080, flags="A"))
    rv, out = full.uplink(bytes(ack1))
    assert rv == TC_ACT_REDIRECT
    assert_bytes(out, to_c1(ack1, dst=C1.ip, dport=80))
    e = m.ct_table()[orig(1)]
    assert (e.state, e.flags, e.kind) == (S.CT_ST_ESTABLISHED, S.CT_F_LOOSE, S.CT_K_DNAT)


"""xdp_uplink (ebpf/xdp_uplink.c) run by the kernel on buffers (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import pytest

from dockline.control.datapath.bpf_structs import Verdict

from . import harness
from .harness import check_case, prog_test_run
from .packets import XDP_CASES, params, standard, up

pytestmark = pytest.mark.root


@pytest.mark.parametrize("case", params(XDP_CASES))
def test_xdp_uplink(case, maps, xdp_fd):
    check_case(case, maps, xdp_fd)
    assert maps.ep_stats.keys() == [], "the uplink program must not touch endpoint_stats"


def test_subnet_removal_applies_to_the_next_packet(maps, xdp_fd):
    standard(maps)
    spoofed = up(src="10.1.0.9")
    assert harness.run(xdp_fd, spoofed)[0] == harness.XDP_DROP
    for k in maps.subnets.keys():
        maps.subnets.delete(k)
    assert harness.run(xdp_fd, spoofed)[0] == harness.XDP_PASS
    assert maps.verdict(Verdict.UPLINK_SPOOFED)[0] == 1 and maps.verdict(Verdict.XDP_PASS)[0] == 1


def test_repeat_runs_count_every_repetition(maps, xdp_fd):
    standard(maps)
    pkt = up(src="10.2.3.4")
    r = prog_test_run(xdp_fd, pkt, repeat=500)
    assert (r.retval, r.out) == (harness.XDP_DROP, pkt)
    assert maps.verdict(Verdict.UPLINK_SPOOFED) == (500, 500 * len(pkt))

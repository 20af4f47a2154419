"""Fixtures for the microbenchmarks: one simulated host (agent in its own netns) per module."""

import os

import pytest

from dockline.control.sim.simhost import SimHost


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root and network namespaces")
    h = SimHost(tmp_path_factory.mktemp("micro"), datapath=os.environ.get("DOCKLINE_DATAPATH", "kernel"))
    try:
        h.start_agent()
        yield h
    finally:
        h.cleanup()

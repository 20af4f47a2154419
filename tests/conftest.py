"""pytest configuration: root/netns gating and the simulated-host fixtures."""

from __future__ import annotations

import os
import shutil

import pytest

from dockline.bench.simhost import SimHost

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

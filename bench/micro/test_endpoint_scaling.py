"""What an endpoint costs as endpoints accumulate (issue: creating and removing one with 1,000
present must take at most 1.2x what it takes with none; removing 1,000 under 30 s).

Run: .venv/bin/python -m pytest bench/micro/test_endpoint_scaling.py --benchmark-only
(compare the two rows' medians). DOCKLINE_MICRO_POPULATION sets the larger population
(default 1,000; CI runs it once, smaller, with --benchmark-disable, as a test that must work).
Each round creates an endpoint, checks that it got an address and resolves by name from a
resident endpoint, and removes it again.
"""

import itertools
import os

import pytest

POPULATION = int(os.environ.get("DOCKLINE_MICRO_POPULATION", "1000"))
_counter = itertools.count()


@pytest.fixture(scope="module", params=[0, POPULATION], ids=lambda n: f"{n}-present")
def populated(request, sim):
    n = request.param
    net = f"scale{n}"
    sim.call("network_create", name=net, subnet=f"10.{60 + (n > 0)}.0.0/20")
    names = [f"r{n}x{i}" for i in range(n)]
    for name in names:
        sim.call("endpoint_create", name=name, network=net)
    yield net, n
    for name in names:
        sim.call("endpoint_rm", ref=name)
    sim.call("network_rm", ref=net)


def test_endpoint_create_and_remove_among(benchmark, sim, populated):
    net, n = populated

    def one():
        name = f"churn{next(_counter)}"
        ep = sim.call("endpoint_create", name=name, network=net)
        sim.call("endpoint_rm", ref=name)
        return ep

    ep = benchmark.pedantic(one, rounds=10, iterations=1)
    assert ep["networks"][net]["ip"].startswith(f"10.{60 + (n > 0)}.")
    assert sum(1 for e in sim.call("ps") if e["name"].startswith(f"r{n}x")) == n
    assert not any(e["name"].startswith("churn") for e in sim.call("ps"))

"""Unit tests for host-local IPAM in dockline.control.ipam: address allocation, static checks and subnet picking."""

import ipaddress

import pytest

from dockline.control import ipam
from dockline.control.errors import Conflict, Exhausted, InvalidArgument
from dockline.control.ipam import Pool, ensure_free, overlapping, pick_subnet

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


# ------------------------------------------------------------------------- Pool.allocate
def test_allocate_first_address_after_the_gateway():
    assert Pool("10.1.0.0/24", "10.1.0.1").allocate(set(), "web") == "10.1.0.2"


def test_allocate_never_hands_out_network_broadcast_or_gateway():
    # /29: .0 network, .7 broadcast, gateway in the middle at .3 -> usable .1 .2 .4 .5 .6
    pool = Pool("10.1.0.0/29", "10.1.0.3")
    leased, order = set(), []
    for _ in range(5):
        ip = pool.allocate(leased, "web")
        leased.add(ip)
        order.append(ip)
    assert order == ["10.1.0.1", "10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]


def test_allocate_skips_leased_addresses():
    pool = Pool("10.1.0.0/24", "10.1.0.1")
    assert pool.allocate({"10.1.0.2", "10.1.0.3", "10.1.0.5"}, "web") == "10.1.0.4"


def test_allocate_exhausted_names_the_network_and_range():
    pool = Pool("10.1.0.0/29", "10.1.0.1")
    leased = {f"10.1.0.{i}" for i in range(2, 7)}
    with pytest.raises(Exhausted) as ei:
        pool.allocate(leased, "tiny")
    assert str(ei.value) == "no available IPv4 addresses on network tiny: range 10.1.0.0/29 is fully leased"
    assert isinstance(ei.value, Conflict) and ei.value.exit_code == 4


def test_allocate_slash30_has_exactly_one_address():
    pool = Pool("10.1.0.4/30", "10.1.0.5")
    assert pool.allocate(set(), "p2p") == "10.1.0.6"
    with pytest.raises(Exhausted, match="network p2p"):
        pool.allocate({"10.1.0.6"}, "p2p")


def test_allocate_respects_ip_range():
    pool = Pool("10.1.0.0/24", "10.1.0.1", ip_range="10.1.0.16/29")
    leased, got = set(), []
    while True:
        try:
            ip = pool.allocate(leased, "web")
        except Exhausted as e:
            assert "range 10.1.0.16/29 is fully leased" in str(e)
            break
        leased.add(ip)
        got.append(ip)
    assert all(A(ip) in N("10.1.0.16/29") for ip in got)
    # As in Docker's IPAM, the range's edges are handed out when they are hosts of the subnet.
    assert got == [f"10.1.0.{i}" for i in range(16, 24)]


def test_allocate_ip_range_containing_the_gateway_skips_it():
    pool = Pool("10.1.0.0/24", "10.1.0.18", ip_range="10.1.0.16/29")
    assert pool.allocate({"10.1.0.16", "10.1.0.17"}, "web") == "10.1.0.19"


def test_allocate_round_robin_after_last():
    pool = Pool("10.1.0.0/24", "10.1.0.1")
    # 10.1.0.2 was released just now, but the scan continues after the last handed-out address.
    assert pool.allocate({"10.1.0.3"}, "web", last="10.1.0.3") == "10.1.0.4"
    assert pool.allocate(set(), "web", last="10.1.0.9") == "10.1.0.10"


def test_allocate_round_robin_wraps_around():
    pool = Pool("10.1.0.0/29", "10.1.0.1")
    assert pool.allocate(set(), "web", last="10.1.0.6") == "10.1.0.2"       # .6 is the last usable
    assert pool.allocate({"10.1.0.2"}, "web", last="10.1.0.5") == "10.1.0.6"
    assert pool.allocate({"10.1.0.6"}, "web", last="10.1.0.5") == "10.1.0.2"  # wrapped, skipping the gateway .1


def test_allocate_last_outside_the_range_starts_at_the_beginning():
    pool = Pool("10.1.0.0/24", "10.1.0.1", ip_range="10.1.0.64/26")
    assert pool.allocate(set(), "web", last="10.1.0.200") == "10.1.0.64"
    assert pool.allocate(set(), "web", last="10.1.0.70") == "10.1.0.71"


def test_allocate_exhausted_even_with_last():
    pool = Pool("10.1.0.0/29", "10.1.0.1")
    with pytest.raises(Exhausted, match="network tiny"):
        pool.allocate({f"10.1.0.{i}" for i in range(2, 7)}, "tiny", last="10.1.0.4")


# ------------------------------------------------------------------------- Pool.check_static
def test_check_static_accepts_a_host_address_even_outside_ip_range():
    pool = Pool("10.1.0.0/24", "10.1.0.1", ip_range="10.1.0.128/25")
    assert pool.check_static(A("10.1.0.50"), "web") is None
    assert pool.check_static(A("10.1.0.254"), "web") is None


@pytest.mark.parametrize("ip, message", [
    ("10.2.0.5", "invalid address 10.2.0.5: it does not belong to subnet 10.1.0.0/24 of network web"),
    ("10.1.0.1", "invalid address 10.1.0.1: it is the gateway of network web"),
    ("10.1.0.0", "invalid address 10.1.0.0: it is the network or broadcast address of 10.1.0.0/24"),
    ("10.1.0.255", "invalid address 10.1.0.255: it is the network or broadcast address of 10.1.0.0/24"),
])
def test_check_static_errors(ip, message):
    with pytest.raises(InvalidArgument) as ei:
        Pool("10.1.0.0/24", "10.1.0.1").check_static(A(ip), "web")
    assert str(ei.value) == message


# ------------------------------------------------------------------------- subnets
def test_pick_subnet_first_free_of_the_default_pool():
    assert pick_subnet([]) == N("10.89.0.0/24")
    assert pick_subnet([N("10.89.0.0/24")]) == N("10.89.1.0/24")


def test_pick_subnet_skips_taken_and_overlapping():
    pool = N("10.0.0.0/22")
    # 10.0.0.0/24 is taken exactly, 10.0.1.0/24 overlaps a taken /25; unrelated space is ignored.
    taken = [N("10.0.0.0/24"), N("10.0.1.128/25"), N("192.168.0.0/16")]
    assert pick_subnet(taken, pool=pool, prefix=24) == N("10.0.2.0/24")
    assert pick_subnet([N("10.0.0.0/23")], pool=pool, prefix=24) == N("10.0.2.0/24")
    assert pick_subnet([N("10.0.0.0/8")], pool=N("172.16.0.0/23"), prefix=24) == N("172.16.0.0/24")


def test_pick_subnet_honours_prefix():
    assert pick_subnet([N("10.0.0.0/26")], pool=N("10.0.0.0/24"), prefix=26) == N("10.0.0.64/26")


def test_pick_subnet_exhausted_mentions_subnet_flag():
    pool = N("10.0.0.0/23")
    with pytest.raises(Exhausted) as ei:
        pick_subnet([N("10.0.0.0/24"), N("10.0.1.5/32")], pool=pool, prefix=24)
    msg = str(ei.value)
    assert "10.0.0.0/23 in /24s" in msg
    assert msg.endswith("pass --subnet")


def test_pick_subnet_accepts_a_generator():
    assert pick_subnet((n for n in [N("10.0.0.0/24")]), pool=N("10.0.0.0/23"), prefix=24) == N("10.0.1.0/24")


def test_overlapping_returns_the_first_clash():
    taken = [N("192.168.0.0/24"), N("10.0.0.0/8"), N("10.1.0.0/16")]
    assert overlapping(N("10.1.2.0/24"), taken) == N("10.0.0.0/8")
    assert overlapping(N("172.16.0.0/12"), taken) is None


def test_defaults_do_not_overlap_each_other():
    assert not ipam.DEFAULT_POOL.overlaps(ipam.DEFAULT_BRIDGE_SUBNET)


def test_ensure_free():
    ensure_free("10.1.0.2", {"10.1.0.3": "ep1"})
    with pytest.raises(Conflict) as ei:
        ensure_free("10.1.0.3", {"10.1.0.3": "ep1"})
    assert str(ei.value) == "address 10.1.0.3 is already in use (by ep1)"

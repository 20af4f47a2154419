"""control/netlink/source_choice.py: the source the kernel gives a connection, per route. The
fakes carry what pyroute2's route and address messages carry; the real table is read in
tests/integration/test_nat_differential.py, where an OUTPUT DNAT of a routed destination must
leave with the source iptables gives it."""

from dockline.control.netlink.source_choice import route_sources


class Msg(dict):
    def __init__(self, attrs, **fields):
        super().__init__(**fields)
        self.attrs = attrs

    def get_attr(self, name):
        return self.attrs.get(name)


def addr(index, ip, plen, secondary=False, scope=0):
    return Msg({"IFA_ADDRESS": ip}, index=index, prefixlen=plen, flags=1 if secondary else 0, scope=scope)


def route(dst, plen, oif=None, gw=None, prefsrc=None, kind=1):
    return Msg({"RTA_DST": dst, "RTA_OIF": oif, "RTA_GATEWAY": gw, "RTA_PREFSRC": prefsrc}, dst_len=plen, type=kind)


ADDRS = [addr(2, "198.18.0.1", 24), addr(2, "203.0.113.7", 24), addr(2, "198.18.0.9", 24, secondary=True),
         addr(3, "10.77.0.1", 24), addr(1, "127.0.0.1", 8, scope=254)]


def test_default_route_takes_the_address_on_the_gateway_subnet():
    got = route_sources([route(None, 0, oif=2, gw="203.0.113.1")], ADDRS)
    assert got == {(0, "0.0.0.0"): "203.0.113.7"}


def test_link_route_takes_the_address_whose_subnet_holds_it_else_the_first():
    got = route_sources([route("198.18.0.0", 24, oif=2), route("10.96.0.0", 16, oif=2),
                         route("10.77.0.0", 24, oif=3)], ADDRS)
    assert got == {(24, "198.18.0.0"): "198.18.0.1", (16, "10.96.0.0"): "198.18.0.1",
                   (24, "10.77.0.0"): "10.77.0.1"}


def test_prefsrc_wins_and_odd_routes_are_left_out():
    got = route_sources([route("192.0.2.0", 24, oif=2, prefsrc="203.0.113.7"),
                         route("192.0.3.0", 24, oif=9),               # no address on that interface
                         route("192.0.4.0", 24, kind=6),              # blackhole
                         route("192.0.5.0", 24)], ADDRS)              # no output interface
    assert got == {(24, "192.0.2.0"): "203.0.113.7"}

"""Which interfaces get eBPF NAT (control/datapath/nat_interfaces.py), and the link events that
tell the agent an interface came, changed or went (control/netlink/watch.py: LinkWatch.parse),
without root: the policy is pure, and the events are parsed from bytes built here as the kernel
lays them out (struct nlmsghdr + struct ifinfomsg + rtattrs, host byte order)."""

import struct

import pytest

from dockline.control.datapath.nat_interfaces import NatInterfaces
from dockline.control.netlink.watch import LinkWatch

OWN = ("dl-", "dlv", "dlp", "dockline0")


@pytest.mark.parametrize("name, port_of, want", [
    ("eth1", "", None),
    ("br0", "", None),                              # a bridge made by hand: NAT on the bridge
    ("veth12ab", "br0", "port of bridge br0"),      # its ports: -i/-o name the bridge
    ("lo", "", "loopback"),
    ("dl-0123456789ab", "", "dockline's own"),
    ("dlv0123456789a", "dl-0123456789ab", "dockline's own"),
    ("eth0", "", "excluded"),
    ("docker0", "", "excluded"),                    # by glob
])
def test_the_default_takes_every_interface_but_these(name, port_of, want):
    pol = NatInterfaces("all", exclude=["eth0", "dock*"], own_prefixes=OWN)
    why = pol.decide(name, bool(port_of), port_of)
    assert (why is None) if want is None else (why is not None and want in why), why


def test_a_list_takes_only_the_listed_and_the_required():
    pol = NatInterfaces("eth1,eth2", required=["up0"], own_prefixes=OWN)
    assert pol.named() == ["eth1", "eth2", "up0"]
    assert pol.decide("eth1", False) is None and pol.decide("up0", False) is None
    assert "not listed" in pol.decide("eth3", False)
    # a named interface gets NAT even if a glob would exclude it
    assert NatInterfaces("all", exclude=["eth*"], required=["eth1"]).decide("eth1", False) is None


def test_the_view_leaves_dockline_s_own_out():
    pol = NatInterfaces("all", own_prefixes=OWN)
    pol.attached["eth1"] = 2
    pol.skipped.update({"lo": pol.decide("lo", False), "dlv01": pol.decide("dlv01", False)})
    assert pol.view() == {"eth1": "eBPF (tc ingress and egress)",
                          "lo": "none: loopback: host-local traffic is NATed at the socket layer"}


def _nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _link_msg(msg_type: int, index: int, name: str, master: int = 0) -> bytes:
    attrs = _nla(3, name.encode() + b"\0") + (_nla(10, struct.pack("I", master)) if master else b"")
    attrs += _nla(0x8000 | 18, _nla(1, b"veth\0"))     # a nested IFLA_LINKINFO: skipped
    body = struct.pack("BBHiII", 0, 0, 1, index, 0, 0) + attrs
    return struct.pack("IHHII", 16 + len(body), msg_type, 0, 0, 0) + body


def test_link_events_are_parsed_from_the_kernel_s_layout():
    addr = struct.pack("IHHII", 16 + 8, 20, 0, 0, 0) + b"\0" * 8     # RTM_NEWADDR: not a link event
    data = (_link_msg(16, 7, "side0") + addr + _link_msg(16, 8, "lanp", master=5)
            + _link_msg(17, 7, "side0"))
    assert LinkWatch.parse(data) == [("new", 7, "side0", 0), ("new", 8, "lanp", 5), ("del", 7, "side0", 0)]


def test_a_truncated_message_ends_the_parse_without_an_error():
    data = _link_msg(16, 7, "side0")
    assert LinkWatch.parse(data + data[:20]) == [("new", 7, "side0", 0)]
    assert LinkWatch.parse(b"") == []

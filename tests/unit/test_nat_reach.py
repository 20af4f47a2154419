"""control/nat/reach.py: which networks' bridged frames, and whether host-local traffic, a rule set
could translate."""

from types import SimpleNamespace

import pytest

from dockline.control.nat.reach import bridged_nat_bridges, loopback_may_translate, loopback_sources
from dockline.control.nat.parser import parse_save

NETS = [SimpleNamespace(bridge="br-a", subnet="10.1.0.0/24"), SimpleNamespace(bridge="br-b", subnet="10.2.0.0/24")]


def _rs(body: str):
    rs, _ = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                       ":POSTROUTING ACCEPT [0:0]\n" + body + "COMMIT\n")
    return rs


def bridges(body: str) -> set:
    return bridged_nat_bridges(_rs(body), NETS)


DOCKER = """:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 10.1.0.0/24 ! -o br-a -j MASQUERADE
-A POSTROUTING -s 10.2.0.0/24 ! -o br-b -j MASQUERADE
-A POSTROUTING -s 10.1.0.2/32 -d 10.1.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i br-a -j RETURN
-A DOCKER ! -i br-a -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.0.2:80
"""


@pytest.mark.parametrize("body, want", [
    (DOCKER, set()),                                                              # Docker's own: none
    ("-A POSTROUTING -s 10.1.0.2/32 -d 10.1.0.3/32 -p tcp -m tcp --dport 81 -j MASQUERADE\n", {"br-a"}),
    ("-A POSTROUTING -j MASQUERADE\n", {"br-a", "br-b"}),                           # unconditional
    ("-A POSTROUTING -o br-b -j MASQUERADE\n", {"br-b"}),
    ("-A POSTROUTING ! -o br-b -j MASQUERADE\n", {"br-a"}),
    ("-A PREROUTING -i br-a -p udp -m udp --dport 53 -j DNAT --to-destination 10.9.9.9\n", {"br-a"}),
    ("-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.1.0.5:80\n", set()),
    ("-A PREROUTING -s 10.0.0.0/8 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.1.0.5:80\n",
     {"br-a", "br-b"}),
    ("-A POSTROUTING ! -s 10.0.0.0/8 -j MASQUERADE\n", set()),                     # negation covers both
    ("-A POSTROUTING -m addrtype --src-type LOCAL -j MASQUERADE\n", set()),
    ("-A POSTROUTING -j ACCEPT\n", set()),                                          # nothing translates
    (":X - [0:0]\n-A POSTROUTING -o br-a -j X\n-A X -j SNAT --to-source 1.2.3.4\n", {"br-a"}),   # via a jump
    (":X - [0:0]\n-A POSTROUTING -o br-z -j X\n-A X -j SNAT --to-source 1.2.3.4\n", set()),      # jump excluded
], ids=["docker", "c2c-rule", "unconditional", "o-bridge", "not-o-bridge", "prerouting-i", "clusterip",
        "prerouting-s", "neg-src", "src-local", "accept", "jump", "jump-excluded"])
def test_bridged_nat_bridges(body, want):
    assert bridges(body) == want


#: the host's local prefixes: its addresses (uplink, the two gateways) and loopback
LOCAL = ["198.18.0.1/32", "10.1.0.1/32", "10.2.0.1/32", "127.0.0.0/8"]


@pytest.mark.parametrize("body, want", [
    (DOCKER, True),            # "-s 10.1.0.0/24 ! -o br-a -j MASQUERADE" matches host -> 10.1.0.1 (from 10.1.0.1)
    ("-A POSTROUTING -s 10.9.0.0/24 -j MASQUERADE\n", False),             # no local address there
    ("-A POSTROUTING -o br-a -j MASQUERADE\n", False),
    ("-A POSTROUTING ! -o lo -j MASQUERADE\n", False),
    ("-A POSTROUTING -o lo -j SNAT --to-source 10.1.0.1\n", True),
    ("-A POSTROUTING ! -s 0.0.0.0/1 -j MASQUERADE\n", True),              # 198.18.0.1 is outside 0/1
    ("-A POSTROUTING -s 127.0.0.0/8 -d 10.9.0.0/24 -j MASQUERADE\n", False),  # not a local destination
    ("-A POSTROUTING -m addrtype ! --src-type LOCAL -j MASQUERADE\n", False),
    ("-A PREROUTING -j DNAT --to-destination 10.1.0.5\n", False),         # PREROUTING: not for lo
    ("-A OUTPUT -d 198.18.0.1/32 -p tcp -m tcp --dport 7778 -j REDIRECT --to-ports 7070\n", True),
    ("-A OUTPUT -d 10.9.9.9/32 -p tcp -m tcp --dport 7778 -j REDIRECT --to-ports 7070\n", False),
    ("-A OUTPUT -d 198.18.0.1/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.0.2:80\n", False),
    ("", False),
], ids=["docker", "other-subnet", "o-bridge", "not-o-lo", "o-lo", "neg-src", "dst-not-local", "not-local", "prerouting",
        "output-redirect", "output-redirect-elsewhere", "output-dnat", "empty"])
def test_loopback_may_translate(body, want):
    assert loopback_may_translate(_rs(body), LOCAL) == want


@pytest.mark.parametrize("body, want", [
    (DOCKER, ("10.1.0.0/24", "10.2.0.0/24")),                              # gateways, never 127.0.0.1
    ("-A POSTROUTING -o lo -j SNAT --to-source 10.1.0.1\n", None),        # any source
    ("-A POSTROUTING ! -s 0.0.0.0/1 -j MASQUERADE\n", None),              # a negated source: any
    ("-A OUTPUT -d 198.18.0.1/32 -p tcp -m tcp --dport 7778 -j REDIRECT --to-ports 7070\n", None),
    (":U - [0:0]\n-A POSTROUTING -s 10.1.0.0/25 -j U\n-A U -s 10.1.0.0/26 -j MASQUERADE\n"
     "-A U -s 127.0.0.2/32 -j MASQUERADE\n", ("10.1.0.0/26", "127.0.0.2/32")),
    (":U - [0:0]\n-A POSTROUTING -j U\n-A U -j MASQUERADE\n", None),
    ("", ()),
], ids=["docker", "o-lo", "neg-src", "output-redirect", "chain", "chain-any", "empty"])
def test_loopback_sources(body, want):
    got = loopback_sources(_rs(body), LOCAL)
    assert (None if got is None else tuple(str(n) for n in got)) == want

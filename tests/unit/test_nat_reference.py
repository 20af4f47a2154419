"""The reference evaluator: iptables' first-match semantics as truth tables (Docker's rules,
jumps and RETURN, negations, rules without a target, fall-through to the policy)."""

import pytest

from dockline.control.errors import InvalidArgument
from dockline.control.nat import Decision, Packet, Rule, evaluate, parse_rule_args, parse_save
from dockline.control.nat.reference import matches

from .test_nat_parser import CORPUS, HEAD

HOST_ADDRS = {"192.168.1.10", "127.0.0.1", "172.17.0.1"}


def is_local(addr):
    return addr in HOST_ADDRS


def table(body):
    return parse_save(HEAD + body + "COMMIT\n")[0]


def decide(rs, hook, **pkt):
    return evaluate(rs, hook, Packet(**pkt), is_local)


# -- Docker's rules -----------------------------------------------------------------------------

DOCKER = parse_save(CORPUS["docker"])[0]
DNAT_RULE = DOCKER.chains["DOCKER"][1]
MASQ_RULE, HAIRPIN_RULE = DOCKER.chains["POSTROUTING"]


@pytest.mark.parametrize("hook,pkt,action,rule", [
    # published port from outside
    ("PREROUTING", dict(saddr="8.8.8.8", daddr="192.168.1.10", proto="tcp", sport=5555, dport=8080, iif="eth0"),
     "DNAT", DNAT_RULE),
    # same port from the bridge: DOCKER RETURNs, PREROUTING falls through to the policy
    ("PREROUTING", dict(saddr="172.17.0.3", daddr="192.168.1.10", proto="tcp", dport=8080, iif="docker0"),
     "ACCEPT", None),
    ("PREROUTING", dict(saddr="8.8.8.8", daddr="192.168.1.10", proto="tcp", dport=8081, iif="eth0"), "ACCEPT", None),
    ("PREROUTING", dict(saddr="8.8.8.8", daddr="192.168.1.10", proto="udp", dport=8080, iif="eth0"), "ACCEPT", None),
    ("PREROUTING", dict(saddr="8.8.8.8", daddr="192.168.1.10", proto="icmp", iif="eth0"), "ACCEPT", None),
    # not addressed to the host: addrtype LOCAL fails
    ("PREROUTING", dict(saddr="8.8.8.8", daddr="10.9.9.9", proto="tcp", dport=8080, iif="eth0"), "ACCEPT", None),
    # host-originated: no iif, so "! -i docker0" holds; 127/8 is excluded in OUTPUT
    ("OUTPUT", dict(saddr="192.168.1.10", daddr="192.168.1.10", proto="tcp", dport=8080), "DNAT", DNAT_RULE),
    ("OUTPUT", dict(saddr="127.0.0.1", daddr="127.0.0.1", proto="tcp", dport=8080), "ACCEPT", None),
    # egress masquerade, but not back out of the bridge
    ("POSTROUTING", dict(saddr="172.17.0.5", daddr="1.1.1.1", proto="udp", dport=53, oif="eth0"), "MASQUERADE", MASQ_RULE),
    ("POSTROUTING", dict(saddr="172.17.0.5", daddr="172.17.0.6", proto="tcp", dport=80, oif="docker0"), "ACCEPT", None),
    # hairpin: a container reaching its own published port
    ("POSTROUTING", dict(saddr="172.17.0.2", daddr="172.17.0.2", proto="tcp", dport=80, oif="docker0"),
     "MASQUERADE", HAIRPIN_RULE),
    ("POSTROUTING", dict(saddr="172.17.0.2", daddr="172.17.0.2", proto="udp", dport=80, oif="docker0"), "ACCEPT", None),
])
def test_docker_truth_table(hook, pkt, action, rule):
    d = decide(DOCKER, hook, **pkt)
    assert (d.action, d.rule) == (action, rule)
    assert d.chain == (None if rule is None else ("DOCKER" if rule is DNAT_RULE else "POSTROUTING"))


# -- jumps, RETURN, first match -----------------------------------------------------------------

JUMPS = table(""":A - [0:0]
:B - [0:0]
-A PREROUTING -p icmp -j RETURN
-A PREROUTING -j A
-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.99
-A PREROUTING -j ACCEPT
-A A -s 10.0.0.1/32 -j RETURN
-A A -j B
-A A -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.80
-A A -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.81
-A B -p udp -j ACCEPT
-A B -p tcp -m tcp --dport 22
-A B -p tcp -m tcp --dport 22 -j REDIRECT --to-ports 2222
""")
PRE, A, B = JUMPS.chains["PREROUTING"], JUMPS.chains["A"], JUMPS.chains["B"]


@pytest.mark.parametrize("pkt,action,chain,rule", [
    (dict(saddr="10.0.0.1", daddr="10.0.0.2", proto="tcp", dport=80), "DNAT", "PREROUTING", PRE[2]),  # RETURN from A
    (dict(saddr="10.0.0.5", daddr="10.0.0.2", proto="udp", dport=80), "ACCEPT", "B", B[0]),            # ACCEPT deep down
    (dict(saddr="10.0.0.5", daddr="10.0.0.2", proto="tcp", dport=80), "DNAT", "A", A[2]),              # off B's end, first of two
    (dict(saddr="10.0.0.5", daddr="10.0.0.2", proto="tcp", dport=22), "REDIRECT", "B", B[2]),          # no-target rule continues
    (dict(saddr="10.0.0.5", daddr="10.0.0.2", proto="tcp", dport=23), "DNAT", "PREROUTING", PRE[2]),
    (dict(saddr="10.0.0.5", daddr="10.0.0.2", proto="icmp"), "ACCEPT", None, None),                    # RETURN in a built-in
    (dict(saddr="10.0.0.1", daddr="10.0.0.2", proto="udp"), "ACCEPT", "PREROUTING", PRE[3]),
])
def test_jump_return_first_match(pkt, action, chain, rule):
    d = decide(JUMPS, "PREROUTING", **pkt)
    assert d == Decision(action, rule, chain)
    assert d.rule is rule


def test_empty_chain_and_unmatched_packet_take_the_policy():
    for hook in ("PREROUTING", "OUTPUT", "POSTROUTING"):
        assert decide(table(""), hook, saddr="1.1.1.1", daddr="2.2.2.2", proto="tcp") == Decision("ACCEPT", None, None)


def test_input_is_never_evaluated():
    with pytest.raises(InvalidArgument, match='hook "INPUT" is not evaluated'):
        decide(DOCKER, "INPUT", saddr="1.1.1.1", daddr="2.2.2.2", proto="tcp")
    with pytest.raises(InvalidArgument, match='packet protocol "sctp"'):
        decide(DOCKER, "PREROUTING", saddr="1.1.1.1", daddr="2.2.2.2", proto="sctp")


# -- single-rule truth tables -------------------------------------------------------------------

TCP22 = dict(saddr="10.1.1.1", daddr="192.168.1.10", proto="tcp", sport=40000, dport=22, iif="eth0")
TCP80 = dict(TCP22, dport=80)
UDP22 = dict(TCP22, proto="udp")
ICMP = dict(saddr="10.1.1.1", daddr="192.168.1.10", proto="icmp", iif="eth0")
NOIF = dict(TCP22, iif=None)
REMOTE = dict(TCP22, saddr="8.8.8.8", daddr="9.9.9.9")


@pytest.mark.parametrize("spec,pkt,expected", [
    ("", ICMP, True),
    ("! -p tcp", TCP22, False), ("! -p tcp", UDP22, True), ("! -p tcp", ICMP, True),
    ("-p icmp", ICMP, True), ("-p icmp", TCP22, False),
    ("-p tcp ! --dport 22", TCP22, False), ("-p tcp ! --dport 22", TCP80, True),
    ("-p tcp ! --dport 22", UDP22, False), ("-p tcp ! --dport 22", ICMP, False),
    ("-p udp --dport 22", UDP22, True), ("-p udp --dport 22", TCP22, False),
    ("-p tcp --dport 20:30", TCP22, True), ("-p tcp ! --dport 20:30", TCP22, False),
    ("-p tcp --sport 1024:65535 --dport 22", TCP22, True), ("-p tcp ! --sport 1024:65535", TCP22, False),
    ("-p tcp -m tcp", TCP22, True), ("-p tcp -m tcp", UDP22, False),
    ("-p tcp -m multiport --dports 80,443", TCP80, True), ("-p tcp -m multiport --dports 80,443", TCP22, False),
    ("-p tcp -m multiport ! --dports 80,443", TCP22, True), ("-p tcp -m multiport ! --dports 80,443", TCP80, False),
    ("-p tcp -m multiport --dports 1:21,23", TCP22, False), ("-p tcp -m multiport --dports 1:22", TCP22, True),
    ("-p tcp -m multiport --sports 40000 -m multiport ! --dports 80", TCP22, True),
    ("-s 10.0.0.0/8", TCP22, True), ("! -s 10.0.0.0/8", TCP22, False), ("! -s 10.0.0.0/8", REMOTE, True),
    ("-d 192.168.1.10", TCP22, True), ("! -d 192.168.1.10", TCP22, False),
    ("-i eth0", TCP22, True), ("-i eth1", TCP22, False), ("! -i eth1", TCP22, True),
    ("-i eth0", NOIF, False), ("! -i eth0", NOIF, True),
    ("-m addrtype --dst-type LOCAL", TCP22, True), ("-m addrtype --dst-type LOCAL", REMOTE, False),
    ("-m addrtype ! --dst-type LOCAL", REMOTE, True), ("-m addrtype --src-type LOCAL", TCP22, False),
    ("-m addrtype ! --src-type LOCAL --dst-type LOCAL", TCP22, True),
    ("-m comment --comment anything", ICMP, True),
    ("-s 10.1.1.1 -d 192.168.1.10 -i eth0 -p tcp --dport 22 -m addrtype --dst-type LOCAL", TCP22, True),
    ("-s 10.1.1.1 -d 192.168.1.10 -i eth0 -p tcp --dport 23 -m addrtype --dst-type LOCAL", TCP22, False),
])
def test_match_truth_table(spec, pkt, expected):
    rule = parse_rule_args(spec.split())
    assert matches(rule, Packet(**pkt), is_local) is expected
    # the same rule as the only one of PREROUTING: a match decides, a non-match takes the policy
    decision = decide(table(f"-A PREROUTING {spec} -j DNAT --to-destination 10.0.0.9\n"), "PREROUTING", **pkt)
    assert decision.action == ("DNAT" if expected else "ACCEPT")


def test_output_chain_interface_semantics():
    rs = table("-A OUTPUT -o lo -j ACCEPT\n-A OUTPUT ! -o eth0 -p tcp -j DNAT --to-destination 10.0.0.1\n")
    lo = decide(rs, "OUTPUT", saddr="127.0.0.1", daddr="127.0.0.1", proto="tcp", oif="lo")
    assert lo == Decision("ACCEPT", rs.chains["OUTPUT"][0], "OUTPUT")
    eth1 = decide(rs, "OUTPUT", saddr="127.0.0.1", daddr="1.1.1.1", proto="tcp", oif="eth1")
    assert eth1.action == "DNAT" and eth1.rule is rs.chains["OUTPUT"][1]
    eth0 = decide(rs, "OUTPUT", saddr="127.0.0.1", daddr="1.1.1.1", proto="tcp", oif="eth0")
    assert eth0 == Decision("ACCEPT", None, None)


def test_rule_objects_identify_the_decision():
    rule = Rule(proto="udp", target="ACCEPT")
    rs = table("")
    rs.chains["PREROUTING"].append(rule)
    assert decide(rs, "PREROUTING", saddr="1.1.1.1", daddr="2.2.2.2", proto="udp").rule is rule

"""Unit tests for the user-input parsers and small record helpers in dockline.control.model."""

import ipaddress

import pytest

from dockline.control.config import HostConfig
from dockline.control.errors import InvalidArgument
from dockline.control.model import (
    PortMapping,
    mac_for_ip,
    parse_gateway,
    parse_ip,
    parse_ip_range,
    parse_mtu,
    parse_port_spec,
    parse_subnet,
    validate_name,
)

SUBNET = ipaddress.IPv4Network("10.1.0.0/24")


# ------------------------------------------------------------------------- parse_port_spec
@pytest.mark.parametrize("spec, expected", [
    ("80", [("tcp", "0.0.0.0", None, 80)]),
    ("80/tcp", [("tcp", "0.0.0.0", None, 80)]),
    ("53/udp", [("udp", "0.0.0.0", None, 53)]),
    ("53/UDP", [("udp", "0.0.0.0", None, 53)]),
    ("8080:80", [("tcp", "0.0.0.0", 8080, 80)]),
    ("8080:80/udp", [("udp", "0.0.0.0", 8080, 80)]),
    ("127.0.0.1:8080:80", [("tcp", "127.0.0.1", 8080, 80)]),
    ("127.0.0.1:8080:80/udp", [("udp", "127.0.0.1", 8080, 80)]),
    ("127.0.0.1::80", [("tcp", "127.0.0.1", None, 80)]),
    ("::80", [("tcp", "0.0.0.0", None, 80)]),
    ("1:65535", [("tcp", "0.0.0.0", 1, 65535)]),
    ("8000-8002:80-82", [("tcp", "0.0.0.0", 8000, 80), ("tcp", "0.0.0.0", 8001, 81),
                         ("tcp", "0.0.0.0", 8002, 82)]),
    ("10.0.0.5:9000-9001:90-91/udp", [("udp", "10.0.0.5", 9000, 90), ("udp", "10.0.0.5", 9001, 91)]),
    ("80-81", [("tcp", "0.0.0.0", None, 80), ("tcp", "0.0.0.0", None, 81)]),
    ("7-7:7", [("tcp", "0.0.0.0", 7, 7)]),
])
def test_parse_port_spec_valid_forms(spec, expected):
    assert parse_port_spec(spec) == expected


@pytest.mark.parametrize("spec, fragments", [
    ("80/sctp", ["'80/sctp'", "unknown protocol 'sctp'", "use tcp or udp"]),
    ("80/tcp/udp", ["unknown protocol 'tcp/udp'"]),
    ("0", ["container port 0 is outside 1-65535"]),
    ("65536", ["container port 65536 is outside 1-65535"]),
    ("0:80", ["host port 0 is outside 1-65535"]),
    ("65536:80", ["host port 65536 is outside 1-65535"]),
    ("8080:0", ["container port 0 is outside 1-65535"]),
    ("80-65536", ["container port 65536 is outside 1-65535"]),
    ("http", ["container port 'http' is not a number"]),
    ("abc:80", ["host port 'abc' is not a number"]),
    ("8080:x80", ["container port 'x80' is not a number"]),
    ("", ["container port '' is not a number"]),
    ("-80", ["container port '-80' is not a number"]),
    ("80-", ["container port '80-' is not a number"]),
    ("80-81-82", ["container port '80-81-82' is not a number"]),
    ("82-80", ["container port range 82-80 runs backwards"]),
    ("8002-8000:80-82", ["host port range 8002-8000 runs backwards"]),
    ("8000-8001:80-82", ["host range has 2 ports, container range 3"]),
    ("8000-8002:80", ["host range has 3 ports, container range 1"]),
    ("8080:80-81", ["host range has 1 ports, container range 2"]),
    ("1.2.3.4:8080:80:90", ["expected [hostip:][hostport:]ctrport[/proto]"]),
    ("[::1]:8080:80", ["expected [hostip:][hostport:]ctrport[/proto]"]),
    ("1.2.3:8080:80", ["host IP in port spec '1.2.3:8080:80'", "'1.2.3'", "not an IPv4 address"]),
    ("localhost:8080:80", ["'localhost'", "not an IPv4 address"]),
    ("256.0.0.1::80", ["'256.0.0.1'", "not an IPv4 address"]),
])
def test_parse_port_spec_invalid_forms_name_the_value(spec, fragments):
    with pytest.raises(InvalidArgument) as ei:
        parse_port_spec(spec)
    msg = str(ei.value)
    assert msg.startswith(f"invalid port spec {spec!r}") or msg.startswith("invalid host IP in port spec")
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert "\n" not in msg
    assert ei.value.exit_code == 2


@pytest.mark.parametrize("spec", ["8_0", "+80", "8080: 80", "\uff18\uff10"])
def test_parse_port_spec_rejects_non_decimal_numbers(spec):
    with pytest.raises(InvalidArgument, match="is not a number"):
        parse_port_spec(spec)


# ------------------------------------------------------------------------- parse_subnet
@pytest.mark.parametrize("text, expected", [
    ("10.1.0.0/24", "10.1.0.0/24"),
    (" 10.1.0.0/24 ", "10.1.0.0/24"),
    ("172.20.0.0/16", "172.20.0.0/16"),
    ("192.168.5.4/30", "192.168.5.4/30"),
])
def test_parse_subnet_valid(text, expected):
    net = parse_subnet(text)
    assert isinstance(net, ipaddress.IPv4Network)
    assert str(net) == expected


def test_parse_subnet_host_bits_set_suggests_the_network():
    with pytest.raises(InvalidArgument) as ei:
        parse_subnet("10.1.0.5/24")
    assert str(ei.value) == "invalid subnet 10.1.0.5/24: it should be 10.1.0.0/24 (host bits are set)"


@pytest.mark.parametrize("text, net", [("10.1.0.0/31", "10.1.0.0/31"), ("10.1.0.7/32", "10.1.0.7/32"),
                                       ("10.1.0.0", "10.1.0.0/32")])
def test_parse_subnet_too_small(text, net):
    with pytest.raises(InvalidArgument, match=f"network {net} is too small to allocate from"):
        parse_subnet(text)


@pytest.mark.parametrize("text", ["fd00::/64", "2001:db8::/48"])
def test_parse_subnet_refuses_ipv6(text):
    with pytest.raises(InvalidArgument) as ei:
        parse_subnet(text)
    assert str(ei.value) == f"invalid subnet {text!r}: only IPv4 is supported"


@pytest.mark.parametrize("text", ["garbage", "10.1.0.0/33", "10.1.0/24", "300.1.0.0/24", ""])
def test_parse_subnet_garbage(text):
    with pytest.raises(InvalidArgument) as ei:
        parse_subnet(text)
    assert str(ei.value) == f"invalid subnet {text!r}: not an IPv4 CIDR like 10.1.0.0/24"


# ------------------------------------------------------------------------- gateway, ip-range, mtu, ip
def test_parse_gateway_valid():
    assert parse_gateway("10.1.0.254", SUBNET) == ipaddress.IPv4Address("10.1.0.254")


@pytest.mark.parametrize("text", ["10.1.0.0", "10.1.0.255", "10.1.1.1"])
def test_parse_gateway_not_a_host_of_the_subnet(text):
    with pytest.raises(InvalidArgument) as ei:
        parse_gateway(text, SUBNET)
    assert str(ei.value) == f"invalid gateway {text}: not a host address of subnet 10.1.0.0/24"


@pytest.mark.parametrize("text", ["10.1.0", "gw", "10.1.0.1/24", ""])
def test_parse_gateway_not_an_address(text):
    with pytest.raises(InvalidArgument) as ei:
        parse_gateway(text, SUBNET)
    assert str(ei.value) == f"invalid gateway {text!r}: not an IPv4 address"


@pytest.mark.parametrize("text", ["10.1.0.128/25", "10.1.0.0/24", "10.1.0.8/29"])
def test_parse_ip_range_valid(text):
    assert str(parse_ip_range(text, SUBNET)) == text


def test_parse_ip_range_with_host_bits():
    with pytest.raises(InvalidArgument) as ei:
        parse_ip_range("10.1.0.129/25", SUBNET)
    assert str(ei.value) == "invalid ip-range '10.1.0.129/25': not an IPv4 CIDR without host bits"


@pytest.mark.parametrize("text", ["10.2.0.0/25", "10.1.0.0/23", "10.0.0.0/8"])
def test_parse_ip_range_outside_subnet(text):
    with pytest.raises(InvalidArgument) as ei:
        parse_ip_range(text, SUBNET)
    assert str(ei.value) == f"invalid ip-range {text}: parent subnet 10.1.0.0/24 does not contain it"


def test_parse_ip_range_garbage():
    with pytest.raises(InvalidArgument, match=r"invalid ip-range 'nope': not an IPv4 CIDR"):
        parse_ip_range("nope", SUBNET)


@pytest.mark.parametrize("value, expected", [("1500", 1500), (9000, 9000), ("68", 68), (65535, 65535)])
def test_parse_mtu_valid(value, expected):
    assert parse_mtu(value) == expected


@pytest.mark.parametrize("value", [67, "0", 65536, -1])
def test_parse_mtu_out_of_range(value):
    with pytest.raises(InvalidArgument) as ei:
        parse_mtu(value)
    assert str(ei.value) == f"invalid MTU {int(value)}: must be between 68 and 65535"


@pytest.mark.parametrize("value", ["jumbo", None, "1500.0", ""])
def test_parse_mtu_not_a_number(value):
    with pytest.raises(InvalidArgument) as ei:
        parse_mtu(value)
    assert str(ei.value) == f"invalid MTU {value!r}: not a number"


def test_parse_ip_names_what_and_value():
    assert parse_ip("10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    with pytest.raises(InvalidArgument) as ei:
        parse_ip("10.0.0.300", "--ip")
    assert str(ei.value) == "invalid --ip '10.0.0.300': not an IPv4 address"


# ------------------------------------------------------------------------- names and MACs
@pytest.mark.parametrize("name", ["a", "web", "Web-1", "x.y_z", "9lives", "a" * 63])
def test_validate_name_accepts(name):
    assert validate_name("network", name) == name


@pytest.mark.parametrize("name", ["", "-web", "_web", ".web", "a" * 64, "has space", "slash/no", "ümlaut",
                                  "we\nb"])
def test_validate_name_rejects(name):
    with pytest.raises(InvalidArgument) as ei:
        validate_name("endpoint", name)
    assert str(ei.value).startswith(f"invalid endpoint name {name!r}: use 1-63 characters")


@pytest.mark.parametrize("ip, mac", [
    ("10.88.0.2", "02:42:0a:58:00:02"),
    ("172.17.0.255", "02:42:ac:11:00:ff"),
    ("0.0.0.0", "02:42:00:00:00:00"),
    ("255.255.255.255", "02:42:ff:ff:ff:ff"),
])
def test_mac_for_ip_is_docker_rule(ip, mac):
    assert mac_for_ip(ip) == mac


def test_validate_name_rejects_trailing_newline():
    with pytest.raises(InvalidArgument):
        validate_name("network", "web\n")


def test_host_name_rejects_trailing_newline():
    with pytest.raises(InvalidArgument):
        HostConfig(name="h1\n", dns_upstreams=[])


# ------------------------------------------------------------------------- PortMapping
def pm(proto="tcp", host_ip="0.0.0.0", host_port=8080, ep="e1", ctr=80):
    return PortMapping(endpoint_id=ep, proto=proto, host_ip=host_ip, host_port=host_port, container_port=ctr)


@pytest.mark.parametrize("a, b, collide", [
    (pm(), pm(ep="e2", ctr=81), True),                                         # same key
    (pm(host_ip="0.0.0.0"), pm(host_ip="127.0.0.1"), True),                    # wildcard vs specific
    (pm(host_ip="127.0.0.1"), pm(host_ip="0.0.0.0"), True),                    # ... either way round
    (pm(host_ip="127.0.0.1"), pm(host_ip="127.0.0.1"), True),
    (pm(host_ip="127.0.0.1"), pm(host_ip="10.0.0.1"), False),                  # two specific addresses
    (pm(proto="tcp"), pm(proto="udp"), False),                                 # protocol differs
    (pm(proto="tcp", host_ip="127.0.0.1"), pm(proto="udp", host_ip="0.0.0.0"), False),
    (pm(host_port=8080), pm(host_port=8081), False),                           # port differs
])
def test_port_mapping_collides_with(a, b, collide):
    assert a.collides_with(b) is collide
    assert b.collides_with(a) is collide


def test_port_mapping_key_and_str():
    m = pm(proto="udp", host_ip="127.0.0.1", host_port=5353, ctr=53)
    assert m.key() == ("udp", "127.0.0.1", 5353)
    assert str(m) == "53/udp -> 127.0.0.1:5353"
    assert m.to_dict() == {"endpoint_id": "e1", "proto": "udp", "host_ip": "127.0.0.1", "host_port": 5353,
                           "container_port": 53}

"""Bad input through the real CLI: every refusal exits with the code of its kind (2 invalid,
3 not found, 4 conflict), prints exactly one ``Error: `` line naming the offending value, and
changes nothing (store, host links, iptables, namespaces), even when it failed half-way.

      host netns:   bridge n1 (10.50.0.0/24, gw .1)              bridge nint (internal)
                      |                     |
                    eth0 10.50.0.5        eth0 (dynamic)
                  [ a ]                  [ b ]                   (endpoint netns made by the agent)
                  -p 8080:80
                  -p 198.18.0.1:9090:90

      refused commands aim at this world; afterwards it must look exactly as before.
"""

import json
import re

import pytest

from dockline.control.sim.nstools import sh
from dockline.control.errors import Conflict, Exhausted
from dockline.control.netlink import netns

pytestmark = pytest.mark.root

INVALID, NOT_FOUND, CONFLICT = 2, 3, 4



# ----------------------------------------------------------------------------- helpers
def _ok(host, *args) -> str:
    r = host.cli(*args)
    assert r.returncode == 0, f"dockline {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}"
    return r.stdout


def snapshot(host) -> dict:
    """Everything a refused command must leave alone: the agent's view (ids included), the host
    netns's links and iptables rules (counters stripped), and our endpoint namespaces."""
    links = sh(host.host_ns, "ip", "-o", "link", check=True).stdout.splitlines()
    rules = sh(host.host_ns, "iptables-save", check=True).stdout.splitlines()
    return {
        "networks": json.loads(_ok(host, "network", "ls", "--json")),
        "endpoints": json.loads(_ok(host, "ps", "--json")),
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links),
        "iptables": [re.sub(r"\[\d+:\d+\]", "", line).rstrip() for line in rules if not line.startswith("#")],
        "netns": netns.list_netns(f"dl-{host.name}-"),
    }


def _names(value: str, message: str) -> bool:
    """``value`` appears in ``message`` as a whole token (not as part of a longer name/number)."""
    return re.search(rf"(?<![\w.]){re.escape(value)}(?!\w|\.\d)", message) is not None


def refused(host, args, exit_code, *named) -> str:
    """Run a CLI command that must be refused; return its error message.

    Checks, in this order: one ``Error: `` line on stderr that names every value in ``named``,
    nothing on stdout, no change at all, and last the exit code.
    """
    before = snapshot(host)
    r = host.cli(*args)
    after = snapshot(host)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), \
        f"dockline {' '.join(args)}: want one 'Error: ' line, got stderr {r.stderr!r} (rc {r.returncode})"
    message = lines[0][len("Error: "):]
    for value in named:
        assert _names(value, message), f"dockline {' '.join(args)}: {message!r} does not name {value!r}"
    assert r.stdout == "", f"dockline {' '.join(args)}: unexpected stdout {r.stdout!r}"
    for key in before:
        assert after[key] == before[key], f"dockline {' '.join(args)} changed {key}"
    assert r.returncode == exit_code, \
        f"dockline {' '.join(args)}: exit {r.returncode}, want {exit_code} ({message})"
    return message


@pytest.fixture
def world(host):
    """n1 with endpoints a (static IP, two published ports) and b; an internal network nint."""
    host.call("network_create", name="n1", subnet="10.50.0.0/24")
    host.call("network_create", name="nint", internal=True)
    host.call("endpoint_create", name="a", network="n1", ip="10.50.0.5",
              ports=["8080:80", "198.18.0.1:9090:90"])
    host.call("endpoint_create", name="b", network="n1")
    return host


def case(id_, args, code, *named, marks=()):
    return pytest.param(list(args), code, list(named), id=id_, marks=marks)



# ----------------------------------------------------------------------------- network create
NETWORK_CREATE = [
    case("overlap-supernet", ["network", "create", "n2", "--subnet", "10.50.0.0/16"], CONFLICT,
         "10.50.0.0/16", "n1"),
    case("overlap-inside", ["network", "create", "n2", "--subnet", "10.50.0.128/25"], CONFLICT,
         "10.50.0.128/25", "n1"),
    case("subnet-not-cidr", ["network", "create", "n2", "--subnet", "foo"], INVALID, "foo"),
    case("subnet-prefix-33", ["network", "create", "n2", "--subnet", "10.51.0.0/33"], INVALID, "10.51.0.0/33"),
    case("subnet-octet-300", ["network", "create", "n2", "--subnet", "300.1.2.0/24"], INVALID, "300.1.2.0/24"),
    case("subnet-ipv6", ["network", "create", "n2", "--subnet", "fd00::/64"], INVALID, "fd00::/64"),
    case("subnet-host-bits", ["network", "create", "n2", "--subnet", "10.51.0.1/24"], INVALID, "10.51.0.1/24"),
    case("subnet-slash31", ["network", "create", "n2", "--subnet", "10.51.0.0/31"], INVALID, "10.51.0.0/31"),
    case("subnet-slash32", ["network", "create", "n2", "--subnet", "10.51.0.0/32"], INVALID, "10.51.0.0/32"),
    case("gateway-outside", ["network", "create", "n2", "--subnet", "10.51.0.0/24", "--gateway", "10.52.0.1"],
         INVALID, "10.52.0.1"),
    case("gateway-is-network-addr", ["network", "create", "n2", "--subnet", "10.51.0.0/24",
                                     "--gateway", "10.51.0.0"], INVALID, "10.51.0.0"),
    case("ip-range-outside", ["network", "create", "n2", "--subnet", "10.51.0.0/24", "--ip-range", "10.52.0.0/25"],
         INVALID, "10.52.0.0/25"),
    case("ip-range-larger", ["network", "create", "n2", "--subnet", "10.51.0.0/24", "--ip-range", "10.51.0.0/23"],
         INVALID, "10.51.0.0/23"),
    case("mtu-0", ["network", "create", "n2", "--mtu", "0"], INVALID, "0"),
    case("mtu-70000", ["network", "create", "n2", "--mtu", "70000"], INVALID, "70000"),
    case("mtu-abc", ["network", "create", "n2", "--mtu", "abc"], INVALID, "abc"),
    case("duplicate-name", ["network", "create", "n1", "--subnet", "10.51.0.0/24"], CONFLICT, "n1"),
    case("name-leading-dash", ["network", "create", "--", "-bad"], INVALID, "-bad"),
    case("name-with-space", ["network", "create", "a b"], INVALID, "a b"),
    case("gateway-without-subnet", ["network", "create", "n2", "--gateway", "10.51.0.1"], INVALID, "--gateway"),
    case("ip-range-without-subnet", ["network", "create", "n2", "--ip-range", "10.51.0.0/25"], INVALID,
         "--ip-range"),
    case("unknown-driver", ["network", "create", "n2", "-d", "overlay"], INVALID, "overlay"),
]


@pytest.mark.parametrize("args,code,named", NETWORK_CREATE)
def test_network_create_refused(world, args, code, named):
    refused(world, args, code, *named)


# ----------------------------------------------------------------------------- endpoint create
ENDPOINT_CREATE = [
    # static addresses
    case("ip-outside-subnet", ["create", "--name", "x", "--network", "n1", "--ip", "10.60.0.5"], INVALID,
         "10.60.0.5"),
    case("ip-in-use", ["create", "--name", "x", "--network", "n1", "--ip", "10.50.0.5"], CONFLICT, "10.50.0.5"),
    case("ip-is-gateway", ["create", "--name", "x", "--network", "n1", "--ip", "10.50.0.1"], INVALID, "10.50.0.1"),
    case("ip-is-network-addr", ["create", "--name", "x", "--network", "n1", "--ip", "10.50.0.0"], INVALID,
         "10.50.0.0"),
    case("ip-is-broadcast", ["create", "--name", "x", "--network", "n1", "--ip", "10.50.0.255"], INVALID,
         "10.50.0.255"),
    case("ip-not-an-address", ["create", "--name", "x", "--network", "n1", "--ip", "10.50.0.300"], INVALID,
         "10.50.0.300"),
    # names
    case("duplicate-endpoint-name", ["create", "--name", "a", "--network", "n1"], CONFLICT, "a"),
    case("endpoint-name-with-space", ["create", "--name", "x y", "--network", "n1"], INVALID, "x y"),
    # port specs
    case("port-99999", ["create", "--name", "x", "--network", "n1", "-p", "99999:80"], INVALID, "99999"),
    case("port-abc", ["create", "--name", "x", "--network", "n1", "-p", "abc"], INVALID, "abc"),
    case("port-sctp", ["create", "--name", "x", "--network", "n1", "-p", "80:80/sctp"], INVALID, "sctp"),
    case("port-range-length-mismatch", ["create", "--name", "x", "--network", "n1", "-p", "8000-8002:80-81"],
         INVALID, "8000-8002:80-81"),
    # unknown targets
    case("unknown-network", ["create", "--name", "x", "--network", "nope"], NOT_FOUND, "nope"),
    case("container-missing", ["create", "--name", "x", "--network", "container:nope"], NOT_FOUND,
         "container:nope"),
    # modes without an interface of their own
    case("internal-publish", ["create", "--name", "x", "--network", "nint", "-p", "8081:80"], INVALID, "nint"),
    case("host-with-ip", ["create", "--name", "x", "--network", "host", "--ip", "10.50.0.9"], INVALID, "host"),
    case("host-with-port", ["create", "--name", "x", "--network", "host", "-p", "8082:80"], INVALID, "host"),
    case("none-with-ip", ["create", "--name", "x", "--network", "none", "--ip", "10.50.0.9"], INVALID, "none"),
    case("none-with-port", ["create", "--name", "x", "--network", "none", "-p", "8082:80"], INVALID, "none"),
    case("container-with-ip", ["create", "--name", "x", "--network", "container:a", "--ip", "10.50.0.9"],
         INVALID, "container:a"),
    case("container-with-port", ["create", "--name", "x", "--network", "container:a", "-p", "8082:80"],
         INVALID, "container:a"),
]


@pytest.mark.parametrize("args,code,named", ENDPOINT_CREATE)
def test_endpoint_create_refused(world, args, code, named):
    refused(world, args, code, *named)
    assert not netns.exists(world.ep_ns("x"))


PORT_CLASHES = [
    case("same-port", ["-p", "8080:80"], CONFLICT, "8080"),
    case("specific-ip-vs-any", ["-p", "198.18.0.1:8080:80"], CONFLICT, "8080"),
    case("any-vs-specific-ip", ["-p", "9090:90"], CONFLICT, "9090"),
    case("same-specific-ip", ["-p", "198.18.0.1:9090:90"], CONFLICT, "9090"),
    case("range-overlaps-one", ["-p", "8079-8081:80-82"], CONFLICT, "8080"),
    case("twice-in-one-command", ["-p", "7000:80", "-p", "7000:81"], CONFLICT, "7000"),
]


@pytest.mark.parametrize("args,code,named", PORT_CLASHES)
def test_host_port_already_published(world, args, code, named):
    ports_before = _ok(world, "port", "a")
    refused(world, ["create", "--name", "x", "--network", "n1", *args], code, *named)
    assert _ok(world, "port", "a") == ports_before
    assert ports_before.splitlines() == ["80/tcp -> 0.0.0.0:8080", "90/tcp -> 198.18.0.1:9090"]


def test_exhausted_pool(host):
    """10.77.0.0/30: .1 is the gateway, .2 the only address left; the second endpoint gets none."""
    host.call("network_create", name="small", subnet="10.77.0.0/30")
    _ok(host, "create", "--name", "s1", "--network", "small")
    assert host.call("inspect", ref="s1")["networks"]["small"]["ip"] == "10.77.0.2"
    message = refused(host, ["create", "--name", "s2", "--network", "small"], CONFLICT, "small")
    assert "no available" in message
    assert not netns.exists(host.ep_ns("s2"))
    with pytest.raises(Exhausted, match=re.escape(message)) as err:
        host.call("endpoint_create", name="s2", network="small")
    assert err.value.kind == "exhausted"
    assert not netns.exists(host.ep_ns("s2"))


def test_failed_multi_port_create_rolls_back(world):
    """The second -p collides after the first was recorded: nothing of x may remain, so the same
    --ip and the first host port are free for the next create."""
    refused(world, ["create", "--name", "x", "--network", "n1", "--ip", "10.50.0.9",
                    "-p", "9000:80", "-p", "8080:81"], CONFLICT, "8080")
    assert not netns.exists(world.ep_ns("x"))
    _ok(world, "create", "--name", "x", "--network", "n1", "--ip", "10.50.0.9", "-p", "9000:80")
    assert world.call("inspect", ref="x")["networks"]["n1"]["ip"] == "10.50.0.9"
    assert _ok(world, "port", "x").splitlines() == ["80/tcp -> 0.0.0.0:9000"]
    assert netns.exists(world.ep_ns("x"))


# ----------------------------------------------------------------------------- other verbs
OTHER = [
    case("network-rm-unknown", ["network", "rm", "nope"], NOT_FOUND, "nope"),
    case("network-connect-unknown-network", ["network", "connect", "nope", "a"], NOT_FOUND, "nope"),
    case("rm-unknown-endpoint", ["rm", "nope"], NOT_FOUND, "nope"),
    case("inspect-unknown-endpoint", ["inspect", "nope"], NOT_FOUND, "nope"),
    case("exec-unknown-endpoint", ["exec", "nope", "--", "true"], NOT_FOUND, "nope"),
    case("port-unknown-endpoint", ["port", "nope"], NOT_FOUND, "nope"),
    case("network-connect-unknown-endpoint", ["network", "connect", "n1", "nope"], NOT_FOUND, "nope"),
    case("network-rm-in-use", ["network", "rm", "n1"], CONFLICT, "n1", "a", "b"),
    case("network-rm-builtin-bridge", ["network", "rm", "bridge"], CONFLICT, "bridge"),
    case("network-rm-builtin-host", ["network", "rm", "host"], CONFLICT, "host"),
    case("network-rm-builtin-none", ["network", "rm", "none"], CONFLICT, "none"),
    case("network-connect-already-on", ["network", "connect", "n1", "a"], CONFLICT, "a", "n1"),
]


@pytest.mark.parametrize("args,code,named", OTHER)
def test_other_verbs_refused(world, args, code, named):
    refused(world, args, code, *named)


def test_network_rm_in_use_lists_endpoints(world):
    """Independent of the exit code: the message lists the endpoints still attached, sorted."""
    r = world.cli("network", "rm", "n1")
    assert r.returncode != 0
    assert r.stderr.splitlines() == ["Error: network n1 has active endpoints (a, b)"]


# ----------------------------------------------------------------------------- API = CLI
def test_api_raises_the_same_error_as_the_cli(world):
    message = refused(world, ["network", "create", "n2", "--subnet", "10.50.0.0/16"], CONFLICT, "10.50.0.0/16")
    with pytest.raises(Conflict, match=f"^{re.escape(message)}$") as err:
        world.call("network_create", name="n2", subnet="10.50.0.0/16")
    assert type(err.value) is Conflict and err.value.kind == "conflict" and err.value.exit_code == CONFLICT

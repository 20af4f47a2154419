"""Unit tests for the dockline CLI: option placement, `run -- CMD` handling, exit codes and error output, with no agent running."""

import json
import socket

import pytest

from dockline.control import cli
from dockline.control.client import Client
from dockline.control.errors import Conflict, InvalidArgument, NotFound


@pytest.fixture(autouse=True)
def no_host_env(monkeypatch):
    monkeypatch.delenv("DOCKLINE_HOST", raising=False)


class FakeClient:
    """Stands in for the agent: replies from ``replies`` (a value, or an exception to raise)."""

    calls = []

    def __init__(self, host, replies):
        self.host, self.replies = host, replies

    def call(self, op, **args):
        FakeClient.calls.append((self.host, op, args))
        r = self.replies[op]
        if callable(r):
            r = r(**args)
        if isinstance(r, Exception):
            raise r
        return r


@pytest.fixture
def fake(monkeypatch):
    """Install a FakeClient; returns the dict of replies to fill and the list of calls made."""
    replies = {}
    FakeClient.calls = []
    monkeypatch.setattr(cli, "Client", lambda host: FakeClient(host, replies))
    return replies, FakeClient.calls


# ------------------------------------------------------------------------- parser
@pytest.mark.parametrize("argv", [
    ["--host", "h1", "network", "ls"],
    ["network", "ls", "--host", "h1"],
    ["network", "--host", "h1", "ls"],
    ["--host=h1", "network", "ls"],
])
def test_host_before_or_after_the_verb(argv):
    a = cli.build_parser().parse_args(argv)
    assert (a.host, a.cmd, a.netcmd, a.json) == ("h1", "network", "ls", False)
    assert a.func is cli.cmd_network_ls


@pytest.mark.parametrize("argv", [
    ["--json", "network", "ls"],
    ["network", "ls", "--json"],
    ["--json", "ps"],
    ["ps", "--json"],
    ["system", "reset", "--json"],
])
def test_json_before_or_after_the_verb(argv):
    a = cli.build_parser().parse_args(argv)
    assert a.json is True and a.host == "local"


def test_global_option_before_the_verb_is_not_reset_by_the_subparser():
    a = cli.build_parser().parse_args(["--json", "--host", "h1", "system", "reconcile"])
    assert (a.json, a.host, a.func) == (True, "h1", cli.cmd_reconcile)


def test_defaults_without_global_options():
    a = cli.build_parser().parse_args(["ps"])
    assert (a.json, a.host) == (False, "local")


def test_host_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DOCKLINE_HOST", "envhost")
    assert cli.build_parser().parse_args(["ps"]).host == "envhost"
    assert cli.build_parser().parse_args(["ps", "--host", "h2"]).host == "h2"


def test_create_options():
    a = cli.build_parser().parse_args(["create", "--name", "a", "--net", "web", "--ip", "10.1.0.9",
                                       "--alias", "db", "--alias", "pg", "-p", "80", "--publish", "53:53/udp"])
    assert (a.name, a.network, a.ip, a.alias, a.publish, a.netns) == \
        ("a", "web", "10.1.0.9", ["db", "pg"], ["80", "53:53/udp"], None)
    assert a.func is cli.cmd_create


@pytest.mark.parametrize("argv", [[], ["network"], ["create"], ["network", "rm"], ["bogus"]])
def test_incomplete_commands_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.build_parser().parse_args(argv)
    assert ei.value.code == 2
    assert "usage: dockline" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out == f"dockline {cli.__version__}\n"


# ------------------------------------------------------------------------- run -- CMD
@pytest.mark.parametrize("argv, command", [
    (["run", "--name", "a", "-p", "80", "--", "sleep", "1"], ["sleep", "1"]),
    (["run", "--name", "a", "sleep", "1"], ["sleep", "1"]),
    (["--host", "h1", "run", "--name", "a", "--", "sh", "-c", "--", "x"], ["sh", "-c", "--", "x"]),
    (["run", "--name", "a", "--", "nc", "-l", "--json"], ["nc", "-l", "--json"]),
])
def test_run_passes_the_command_without_the_separator(fake, monkeypatch, capsys, argv, command):
    replies, calls = fake
    replies["endpoint_create"] = {"id": "f" * 64, "name": "a", "netns_name": "dl-local-a", "owned": True}
    spawned = []
    monkeypatch.setattr(cli, "_spawn_in", lambda ep, cmd, host: spawned.append((ep["name"], cmd, host)))
    assert cli.main(argv) == 0
    host = "h1" if "h1" in argv else "local"
    assert spawned == [("a", command, host)]
    assert calls[0][:2] == (host, "endpoint_create")
    assert calls[0][2]["name"] == "a" and calls[0][2]["network"] == "bridge"
    assert calls[0][2]["ports"] == (["80"] if "-p" in argv else [])
    assert capsys.readouterr().out == "f" * 64 + "\n"


def test_run_without_a_command_starts_nothing(fake, monkeypatch):
    replies, _ = fake
    replies["endpoint_create"] = {"id": "f" * 64, "name": "a"}
    monkeypatch.setattr(cli, "_spawn_in", lambda *a: pytest.fail("nothing to spawn"))
    assert cli.main(["run", "--name", "a", "--json"]) == 0


def test_netns_argv():
    assert cli._netns_argv({"netns_name": "dl-local-a", "owned": True, "netns_path": "/run/netns/dl-local-a"}) == \
        ["ip", "netns", "exec", "dl-local-a"]
    assert cli._netns_argv({"netns_name": "", "owned": False, "netns_path": "/proc/42/ns/net"}) == \
        ["nsenter", "--net=/proc/42/ns/net"]


# ------------------------------------------------------------------------- errors and exit codes
def unreachable_client(tmp_path):
    return lambda host: Client(host, run_root=str(tmp_path), timeout=5)


@pytest.mark.parametrize("argv", [["network", "ls"], ["--json", "ps"], ["inspect", "a"]])
def test_unreachable_agent_exits_6_with_one_line(monkeypatch, capsys, tmp_path, argv):
    monkeypatch.setattr(cli, "Client", unreachable_client(tmp_path))
    assert cli.main(["--host", "ghost"] + argv) == 6
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"Error: cannot reach the dockline agent for host ghost at {tmp_path}/ghost.sock: "
                   f"is `dockline daemon --host ghost` running?\n")


def test_stale_socket_file_is_unreachable_too(monkeypatch, capsys, tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "stale.sock"))
    s.close()                                   # the file stays; connecting is refused
    monkeypatch.setattr(cli, "Client", unreachable_client(tmp_path))
    assert cli.main(["ps", "--host", "stale"]) == 6
    err = capsys.readouterr().err
    assert err.startswith("Error: cannot reach the dockline agent for host stale at ") and err.count("\n") == 1


@pytest.mark.parametrize("exc, code", [(InvalidArgument("invalid subnet 'x': bad"), 2),
                                       (NotFound("network nope not found"), 3),
                                       (Conflict("network with name web already exists"), 4)])
def test_agent_errors_map_to_exit_codes(fake, capsys, exc, code):
    replies, _ = fake
    replies["network_create"] = exc
    assert cli.main(["network", "create", "web"]) == code
    out, err = capsys.readouterr()
    assert out == "" and err == f"Error: {exc.message}\n"


def test_network_create_sends_every_option(fake, capsys):
    replies, calls = fake
    replies["network_create"] = {"id": "c" * 64}
    assert cli.main(["network", "create", "web", "--subnet", "10.1.0.0/24", "--gateway", "10.1.0.254",
                     "--ip-range", "10.1.0.128/25", "--internal", "--mtu", "9000"]) == 0
    assert calls == [("local", "network_create", {"name": "web", "driver": "bridge", "subnet": "10.1.0.0/24",
                                                  "gateway": "10.1.0.254", "ip_range": "10.1.0.128/25",
                                                  "internal": True, "mtu": "9000"})]
    assert capsys.readouterr().out == "c" * 64 + "\n"


def test_bulk_remove_reports_each_failure_and_exits_with_the_first_code(fake, capsys):
    failures = {"b": NotFound("network b not found"), "d": Conflict("network d has active endpoints")}
    replies, calls = fake
    replies["network_rm"] = lambda ref: failures.get(ref, {"name": ref})
    assert cli.main(["network", "rm", "a", "b", "c", "d"]) == 3
    out, err = capsys.readouterr()
    assert out == "a\nc\n"
    assert err == "Error: network b not found\nError: network d has active endpoints\n"
    assert [c[2]["ref"] for c in calls] == ["a", "b", "c", "d"]
    assert cli.main(["network", "rm", "d", "b"]) == 4


def test_bulk_remove_json(fake, capsys):
    replies, _ = fake
    replies["endpoint_rm"] = lambda ref: NotFound(f"endpoint {ref} not found") if ref == "b" else {"name": ref}
    assert cli.main(["rm", "a", "b", "--json"]) == 3
    out, err = capsys.readouterr()
    assert json.loads(out) == {"removed": [{"name": "a"}], "failed": [{"name": "b", "error": "endpoint b not found"}]}
    assert err == "Error: endpoint b not found\n"


def test_bulk_remove_all_ok_exits_0(fake, capsys):
    replies, _ = fake
    replies["endpoint_rm"] = lambda ref: {"name": ref}
    assert cli.main(["rm", "a", "b"]) == 0
    assert capsys.readouterr() == ("a\nb\n", "")


def test_keyboard_interrupt_exits_130(fake):
    def interrupted():
        raise KeyboardInterrupt

    replies, _ = fake
    replies["ps"] = interrupted
    assert cli.main(["ps"]) == 130


# ----------------------------------------------------------------------------- demo and bench defaults
def test_demo_takes_the_probes_choice_unless_told(monkeypatch):
    """`dockline demo` defaults to auto (the probe picks, as the daemon does); --datapath and
    DOCKLINE_DATAPATH override it, and the choice reaches run_demo."""
    from dockline.control.sim import demo
    got = []
    monkeypatch.setattr(demo, "run_demo", lambda datapath: got.append(datapath) or 0)
    monkeypatch.delenv("DOCKLINE_DATAPATH", raising=False)
    a = cli.build_parser().parse_args(["demo"])
    assert a.datapath == "auto"
    a.func(a)
    a = cli.build_parser().parse_args(["demo", "--datapath", "kernel"])
    a.func(a)
    monkeypatch.setenv("DOCKLINE_DATAPATH", "ebpf")
    a = cli.build_parser().parse_args(["demo"])
    a.func(a)
    assert got == ["auto", "kernel", "ebpf"]


@pytest.mark.parametrize("requested, info, said", [
    ("auto", {"datapath": {"name": "ebpf"}, "probe": {"ebpf": {"usable": True, "reason": "TC loads"}}},
     "ebpf (chosen by the probe: TC loads)"),
    ("auto", {"datapath": {"name": "kernel"}, "probe": {"kernel": {"usable": True, "reason": "always"}}},
     "kernel (chosen by the probe: always)"),
    ("kernel", {"datapath": {"name": "kernel"}, "probe": {}}, "kernel (requested)"),
    ("auto", {"datapath": {"name": "kernel"}, "probe": {"ebpf": {"usable": True, "reason": "TC loads"},
                                                        "kernel": {"usable": True, "reason": "always"}}},
     "kernel (the probe chose ebpf, which failed to start: see the agent's log)"),
    ("auto", {"datapath": {"name": "kernel"}, "probe": {"ebpf": {"usable": False, "reason": "no BTF"},
                                                        "kernel": {"usable": True, "reason": "always"}}},
     "kernel (chosen by the probe: always)"),
])
def test_demo_says_which_datapath_ran(requested, info, said):
    from dockline.control.sim.demo import datapath_ran
    assert datapath_ran(info, requested) == said


def test_bench_help_and_code_agree_on_the_default_candidates(monkeypatch, capsys):
    """Without --datapath the candidates are every backend whose probe passes, and --help says so."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: every backend whose probe passes here" in help_text
    assert "default: kernel" not in help_text

    from dockline.bench import main

    class Stop(Exception):
        pass

    def default_targets(candidates, baseline, macvlan=False):
        raise Stop(candidates)

    monkeypatch.setattr(main, "usable_candidates", lambda: ["ebpf", "kernel"])
    monkeypatch.setattr(main, "default_targets", default_targets)
    a = cli.build_parser().parse_args(["bench", "--out", "/nonexistent"])
    with pytest.raises(Stop) as e:
        a.func(a)
    assert e.value.args[0] == ("ebpf", "kernel")
    a = cli.build_parser().parse_args(["bench", "--datapath", "kernel"])
    with pytest.raises(Stop) as e:
        a.func(a)
    assert e.value.args[0] == ("kernel",)

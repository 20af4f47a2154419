"""The ``dockline`` command: Docker-like verbs over the agent's API. Parses and prints only; the
work happens in the agent (``dockline daemon``). Every command takes ``--json``."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from . import __version__, output
from . import iptables_compat as compat
from .client import Client
from .config import DEFAULT_HOST, HostConfig
from .errors import DocklineError, InvalidArgument


def _short(i: str) -> str:
    return i[:12]


# ----------------------------------------------------------------------------- commands
def cmd_daemon(a):
    from .agent import run_agent
    logging.basicConfig(level=getattr(logging, a.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pyroute2 logs every netlink message it decodes at DEBUG (a repr of each attribute: a fifth
    # of an endpoint's creation at 1,000 endpoints); dockline's own debug lines say what it did
    if not os.environ.get("DOCKLINE_NETLINK_DEBUG"):
        logging.getLogger("pyroute2").setLevel(max(logging.INFO, logging.getLogger().level))
    # asyncio says which selector it picked for every event loop (pyroute2 makes one per socket)
    logging.getLogger("asyncio").setLevel(max(logging.INFO, logging.getLogger().level))
    host = HostConfig(name=a.host, host_netns=a.host_netns or "", datapath=a.datapath,
                      uplink_xdp=a.uplink_xdp or "", metrics_addr=a.metrics_addr or "",
                      uplinks=a.uplink, ct_gc_interval=a.ct_gc_interval,
                      nat_interfaces=a.nat_interfaces, nat_exclude=a.nat_exclude)
    if a.dns_upstream is not None:
        host.dns_upstreams = a.dns_upstream
    return run_agent(host)


def cmd_demo(a):
    from .sim.demo import run_demo
    return run_demo(a.datapath)


def cmd_bench(a):
    from ..bench.main import run_bench
    return run_bench(a.out, quick=a.quick, rounds=a.rounds, duration=a.duration, metrics=a.metric,
                     candidates=a.datapath, baseline=a.baseline, check=a.check, tolerance=a.tolerance,
                     write_baseline=a.write_baseline, inject_slowdown=a.inject_slowdown, as_json=a.json,
                     macvlan=a.macvlan, endpoints=a.endpoints, nat_box=a.nat_box, host_local=a.host_local)


def cmd_info(a, c):
    info = c.call("info")
    if a.json:
        return output.emit_json(info)
    nat_ifaces = info.get("datapath", {}).get("nat_interfaces", {})
    output.kv({k: ({dk: dv for dk, dv in v.items() if dk != "nat_interfaces"} if k == "datapath" else v)
               for k, v in info.items() if k != "probe"})
    if nat_ifaces:
        output.table(["INTERFACE", "NAT"], [[k, v] for k, v in nat_ifaces.items()])
    output.table(["DATAPATH", "USABLE", "REASON"],
                 [[k, "not probed" if v["usable"] is None else "yes" if v["usable"] else "no", v["reason"]]
                  for k, v in info["probe"].items()])


def driver_options(a) -> dict:
    """``-o KEY=VALUE`` (Docker's spelling) merged with the named flags (--parent,
    --macvlan-mode), which win; a malformed -o is a one-line error."""
    opts = {}
    for o in a.opt or []:
        key, sep, value = o.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"invalid driver option {o!r}: use -o KEY=VALUE (e.g. -o parent=eth1)")
        opts[key] = value
    if a.parent:
        opts["parent"] = a.parent
    if a.macvlan_mode:
        opts["macvlan_mode"] = a.macvlan_mode
    return opts


def cmd_network_create(a, c):
    extra = {"options": opts} if (opts := driver_options(a)) else {}
    net = c.call("network_create", name=a.name, driver=a.driver, subnet=a.subnet, gateway=a.gateway,
                 ip_range=a.ip_range, internal=a.internal, mtu=a.mtu, **extra)
    output.emit_json(net) if a.json else print(net["id"])


def cmd_network_ls(a, c):
    nets = c.call("network_ls")
    if a.json:
        return output.emit_json(nets)
    output.table(["NETWORK ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERNAL", "ENDPOINTS"],
                 [[_short(n["id"]), n["name"], n["driver"], n["subnet"], n["gateway"],
                   "yes" if n["internal"] else "", n["endpoints"]] for n in nets])


def cmd_network_inspect(a, c):
    output.emit_json([c.call("network_inspect", ref=r) for r in a.names])


def cmd_network_rm(a, c):
    return _each(a, c, "network_rm", a.names)


def cmd_network_connect(a, c):
    r = c.call("connect", network=a.network, endpoint=a.endpoint, ip=a.ip, aliases=a.alias)
    output.emit_json(r) if a.json else None


def cmd_network_disconnect(a, c):
    r = c.call("disconnect", network=a.network, endpoint=a.endpoint)
    output.emit_json(r) if a.json else None


def _each(a, c, op, refs):
    """Docker-style bulk removal: try every name, report each failure; the exit code is that of
    the first failure (0 if none)."""
    done, failed, code = [], [], 0
    for ref in refs:
        try:
            done.append(c.call(op, ref=ref))
            if not a.json:
                print(ref)
        except DocklineError as e:
            failed.append({"name": ref, "error": e.message})
            output.error(e.message)
            code = code or e.exit_code
    if a.json:
        output.emit_json({"removed": done, "failed": failed})
    return code


def cmd_create(a, c, start_cmd=False):
    ep = c.call("endpoint_create", name=a.name, network=a.network, ip=a.ip, aliases=a.alias,
                ports=a.publish, netns_spec=a.netns)
    if start_cmd and a.command:
        _spawn_in(ep, a.command, a.host)
    if a.json:
        return output.emit_json(ep)
    print(ep["id"])


def _spawn_in(ep, command, host):
    """Start ``command`` detached inside the endpoint (``dockline run … -- CMD``); its output
    goes to <state dir>/logs/<name>.log."""
    cfg = HostConfig(name=host)
    os.makedirs(cfg.log_dir, exist_ok=True)
    log = open(os.path.join(cfg.log_dir, f"{ep['name']}.log"), "ab")
    subprocess.Popen(_netns_argv(ep) + command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                     start_new_session=True)


def _netns_argv(ep) -> list[str]:
    if ep.get("netns_name") and ep.get("owned", True):
        return ["ip", "netns", "exec", ep["netns_name"]]
    return ["nsenter", f"--net={ep['netns_path']}"]


def cmd_ps(a, c):
    eps = c.call("ps")
    if a.json:
        return output.emit_json(eps)
    output.table(["ENDPOINT ID", "NAME", "MODE", "NETWORKS", "PORTS"],
                 [[_short(e["id"]), e["name"], e["mode"] if not e["shares"] else "container",
                   ", ".join(f"{n}={ip}" for n, ip in e["networks"].items()), ", ".join(e["ports"])] for e in eps])


def cmd_inspect(a, c):
    output.emit_json([c.call("inspect", ref=r) for r in a.names])


def cmd_rm(a, c):
    return _each(a, c, "endpoint_rm", a.names)


def cmd_port(a, c):
    ports = c.call("port", ref=a.name)
    if a.json:
        return output.emit_json(ports)
    for p in ports:
        print(f"{p['container_port']}/{p['proto']} -> {p['host_ip']}:{p['host_port']}")


def cmd_publish(a, c):
    r = c.call("publish", ref=a.name, ports=a.ports)
    if a.json:
        return output.emit_json(r)
    for p in r["added"]:
        print(f"{p['container_port']}/{p['proto']} -> {p['host_ip']}:{p['host_port']}")


def cmd_unpublish(a, c):
    r = c.call("unpublish", ref=a.name, ports=a.ports)
    output.emit_json(r) if a.json else print(f"unpublished {r['removed']} port(s)")


def cmd_exec(a, c):
    info = c.call("exec_info", ref=a.name)
    argv = _netns_argv({"netns_name": info["netns_name"], "netns_path": info["netns_path"],
                        "owned": bool(info["netns_name"])}) + a.command
    os.execvp(argv[0], argv)


def cmd_stats(a, c):
    st = c.call("stats")
    if a.json:
        return output.emit_json(st)
    if "verdicts" in st:
        output.table(["VERDICT", "CODE", "PACKETS", "BYTES"],
                     [[k, v["code"], v["packets"], v["bytes"]] for k, v in sorted(st["verdicts"].items(),
                                                                                key=lambda kv: kv[1]["code"])])
        output.table(["ENDPOINT", "NETWORK", "REDIRECTED", "PASSED", "DROPPED"],
                     [[e["endpoint"], e["network"], e["redirected"]["packets"], e["passed"]["packets"],
                       e["dropped"]["packets"]] for e in st["endpoints"]])
        if st.get("nat"):
            output.table(["NAT EVENT", "COUNT"], [[k, v] for k, v in st["nat"].items() if v])
            ct = st.get("conntrack", {})
            print(f"conntrack: {ct.get('entries', 0)} of {ct.get('capacity', 0)} entries "
                  f"({100 * ct.get('pressure', 0):.1f}% full), GC removed {ct.get('gc_deleted', 0)}")
    else:
        output.table(["PACKETS", "BYTES", "TARGET", "RULE"],
                     [[r["packets"], r["bytes"], r["target"], r["rule"]] for r in st["forward_rules"]])


def cmd_nat_import(a, c):
    text = sys.stdin.read() if a.file == "-" else open(a.file).read()
    r = c.call("nat_import", text=text)
    if a.json:
        return output.emit_json(r)
    for w in r["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"imported {r['rules']} rules in {r['chains']} chains")


def cmd_nat_save(a, c):
    r = c.call("nat_save")
    output.emit_json(r) if a.json else sys.stdout.write(r["text"])


def cmd_nat_conntrack(a, c):
    r = c.call("conntrack", limit=a.limit)
    if a.json:
        return output.emit_json(r)
    output.table(["PROTO", "ORIGINAL", "TRANSLATED", "STATE", "KIND", "EXPIRES", "PACKETS"],
                 [[f["proto"], f["orig"], f["translated"], f["state"], f["kind"], f["expires_in_s"], f["packets"]]
                  for f in r["flows"]])
    t = r["table"]
    print(f"{t.get('entries', 0)} entries of {t.get('capacity', 0)} ({100 * t.get('pressure', 0):.1f}% full)")


def cmd_nat_gc(a, c):
    r = c.call("conntrack_gc")
    output.emit_json(r) if a.json else output.kv(r)


def run_iptables(host: str, as_json: bool, argv: list[str]) -> int:
    """``dockline iptables ARGS``: the arguments go to the agent untouched (iptables syntax)."""
    try:
        r = Client(host).call("nat_iptables", argv=argv)
    except DocklineError as e:
        output.error(e.message)
        return e.exit_code
    if as_json:
        output.emit_json(r)
    elif r["output"]:
        sys.stdout.write(r["output"] if r["output"].endswith("\n") else r["output"] + "\n")
    return 0


def run_iptables_restore(host: str, as_json: bool, argv: list[str]) -> int:
    """``dockline iptables-restore``: iptables-restore -T nat on dockline's NAT (iptables_compat)."""
    try:
        a = compat.parse_restore_args(argv)
        text = compat.read_input(a.file)
        r = Client(host).call("nat_restore", text=text, noflush=a.noflush, test=a.test)
    except DocklineError as e:
        output.error(e.message)
        return e.exit_code
    if as_json:
        return output.emit_json(r) or 0
    for w in r["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if a.verbose and "rules" in r:
        print(f"{'checked' if a.test else 'restored'} {r['rules']} rules in {r['chains']} chains")
    return 0


def run_iptables_save(host: str, as_json: bool, argv: list[str]) -> int:
    """``dockline iptables-save``: iptables-save -t nat of dockline's NAT (iptables_compat)."""
    try:
        a = compat.parse_save_args(argv)
        r = Client(host).call("nat_save")
    except DocklineError as e:
        output.error(e.message)
        return e.exit_code
    if as_json:
        return output.emit_json(r) or 0
    text = compat.render_save(r["text"], a.counters)
    if a.file is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(a.file, "w") as f:
            f.write(text)
    except OSError as e:
        output.error(f'iptables-save: cannot write "{a.file}": {e.strerror}')
        return 1
    return 0


#: verbs that take iptables' own argument syntax, and who runs them
_IPTABLES_TOOLS = {"iptables": run_iptables, "iptables-restore": run_iptables_restore,
                   "iptables-save": run_iptables_save}


def _split_iptables(argv: list[str]):
    """(runner, host, json, args) if the command is one of ``_IPTABLES_TOOLS``, else None."""
    host, as_json, i = os.environ.get("DOCKLINE_HOST", DEFAULT_HOST), False, 0
    while i < len(argv):
        a = argv[i]
        if a == "--json":
            as_json = True
        elif a == "--host" and i + 1 < len(argv):
            host = argv[i + 1]
            i += 1
        elif a.startswith("--host="):
            host = a.split("=", 1)[1]
        elif a in _IPTABLES_TOOLS:
            return _IPTABLES_TOOLS[a], host, as_json, argv[i + 1:]
        else:
            return None
        i += 1
    return None


def cmd_reset(a, c):
    r = c.call("reset")
    output.emit_json(r) if a.json else print(f"removed {r['endpoints']} endpoints and {r['networks']} networks")


def cmd_reconcile(a, c):
    r = c.call("reconcile")
    output.emit_json(r) if a.json else output.kv(r)


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before or after the verb; the copies on sub-parsers use
    # SUPPRESS so that an option given before the verb is not reset by the sub-parser's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--host", default=argparse.SUPPRESS, help="which host's agent to talk to")
    p = argparse.ArgumentParser(prog="dockline", description="Container networking with an eBPF data plane.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--host", default=os.environ.get("DOCKLINE_HOST", DEFAULT_HOST),
                   help="which host's agent to talk to (default: %(default)s)")
    p.add_argument("--version", action="version", version=f"dockline {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    d = sub.add_parser("daemon", parents=[common], help="run the agent for a host")
    d.add_argument("--host-netns", help="the host is this network namespace (tests, simulations)")
    d.add_argument("--datapath", default=os.environ.get("DOCKLINE_DATAPATH", "auto"),
                   help="ebpf (eBPF forwarding + eBPF NAT) | kernel (Linux bridge + iptables NAT) | "
                        "kernel+ebpfnat (Linux bridge forwarding + eBPF NAT) | auto: the first of ebpf, "
                        "kernel whose probe passes (default: %(default)s). A requested datapath probes only "
                        "itself")
    d.add_argument("--dns-upstream", action="append", metavar="IP[:PORT]",
                   help="resolver for names dockline does not know (repeatable; default: the host's)")
    d.add_argument("--uplink-xdp", metavar="IFNAME", help="attach native XDP (early drops, NAT into endpoints) to this uplink even where the probe would keep it at TC (veth); its senders must not use checksum offload")
    d.add_argument("--uplink", action="append", default=[], metavar="IFNAME",
                   help="an interface towards the outside that must have eBPF NAT (published ports, masquerade); "
                        "the probe may put native XDP on it (repeatable)")
    d.add_argument("--nat-interfaces", default="all", metavar="all|IF1,IF2",
                   help="where eBPF NAT runs: every interface of the host but loopback, dockline's own, bridge "
                        "ports (NAT runs on their bridge) and --nat-exclude (all, the default, as netfilter "
                        "hooks every interface), or only these")
    d.add_argument("--nat-exclude", action="append", default=[], metavar="IFNAME",
                   help="keep eBPF NAT off this interface (a name or a shell glob; repeatable); published "
                        "ports are then not reachable through it on the eBPF NAT")
    d.add_argument("--ct-gc-interval", type=float, default=10.0, metavar="SECONDS",
                   help="conntrack garbage collection period (default: %(default)s)")
    d.add_argument("--metrics-addr", metavar="HOST:PORT", help="serve Prometheus /metrics here")
    d.add_argument("--log-level", default="info")
    d.set_defaults(func=cmd_daemon, raw=True)

    d = sub.add_parser("demo", parents=[common], help="build a throwaway host and show it all working")
    d.add_argument("--datapath", default=os.environ.get("DOCKLINE_DATAPATH", "auto"),
                   help="ebpf | kernel | auto: the probe's choice, as the daemon makes it (default: %(default)s)")
    d.set_defaults(func=cmd_demo, raw=True)

    b = sub.add_parser("bench", parents=[common], help="benchmark against docker0 and the loopback ceiling")
    b.add_argument("--out", default="bench/out", help="report folder (default: %(default)s)")
    b.add_argument("--quick", action="store_true", help="the regression gate's subset: 3 rounds of 1 s")
    b.add_argument("--rounds", type=int)
    b.add_argument("--duration", type=float, help="seconds per measurement")
    b.add_argument("--metric", action="append", help="only these metric ids (repeatable)")
    b.add_argument("--datapath", action="append",
                   help="a candidate dockline backend (repeatable; default: every backend whose probe passes here)")
    b.add_argument("--baseline", default="auto", choices=("auto", "docker", "equivalent"),
                   help="docker0: real Docker if it answers (auto), required (docker), or the equivalent")
    b.add_argument("--check", metavar="BASELINE.json", help="fail if a ratio regressed against this file")
    b.add_argument("--tolerance", type=float, help="allowed fractional drop (default: the file's)")
    b.add_argument("--write-baseline", metavar="FILE", help="write this run's ratios as a gate baseline")
    b.add_argument("--macvlan", action="store_true",
                   help="add the macvlan row (P12): container to container on one parent, against Docker's own "
                        "macvlan driver (real dockerd) and against the bridge path")
    b.add_argument("--nat-box", nargs="?", const="1,1000,10000,100000", default=None, metavar="COUNTS",
                   help="add the NAT-box row: new connections/s through the host with this many nat rules "
                        "(comma-separated; default 1,1000,10000,100000), eBPF against iptables-nft")
    b.add_argument("--host-local", action="store_true",
                   help="add the host-local row (P11): RR, CRR and TCP over 127.0.0.1 on a dockline host "
                        "against a plain netns with no dockline on the machine")
    b.add_argument("--endpoints", type=int, default=0, metavar="N",
                   help="add the endpoint-cost row: create+rm with 0 and with N endpoints present, and the "
                        "reset of N, per candidate (N = 1000 takes a few minutes per candidate)")
    b.add_argument("--inject-slowdown", type=float, default=0.0, metavar="FRACTION",
                   help="slow the candidates down for real (netem) to prove the gate catches it")
    b.set_defaults(func=cmd_bench, raw=True)

    sub.add_parser("info", parents=[common], help="datapath choice, probe results, counts").set_defaults(func=cmd_info)

    net = sub.add_parser("network", parents=[common], help="manage networks")
    ns = net.add_subparsers(dest="netcmd", required=True, metavar="COMMAND")
    c = ns.add_parser("create", parents=[common], help="create a network")
    c.add_argument("name")
    c.add_argument("-d", "--driver", default="bridge", help="bridge (default) | macvlan")
    c.add_argument("--parent", metavar="IFACE", help="macvlan: the host interface endpoints hang off")
    c.add_argument("--macvlan-mode", choices=("bridge", "private", "vepa", "passthru"),
                   help="macvlan: how sub-interfaces of one parent reach each other (default: bridge)")
    c.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE",
                   help="driver option, as Docker spells them (parent=IFACE, macvlan_mode=MODE)")
    c.add_argument("--subnet")
    c.add_argument("--gateway")
    c.add_argument("--ip-range")
    c.add_argument("--internal", action="store_true", help="no traffic to or from outside the network")
    c.add_argument("--mtu", default=1500)
    c.set_defaults(func=cmd_network_create)
    ns.add_parser("ls", parents=[common], help="list networks").set_defaults(func=cmd_network_ls)
    i = ns.add_parser("inspect", parents=[common], help="show networks in detail")
    i.add_argument("names", nargs="+")
    i.set_defaults(func=cmd_network_inspect)
    r = ns.add_parser("rm", parents=[common], help="remove networks")
    r.add_argument("names", nargs="+")
    r.set_defaults(func=cmd_network_rm)
    for verb, fn in (("connect", cmd_network_connect), ("disconnect", cmd_network_disconnect)):
        x = ns.add_parser(verb, parents=[common], help=f"{verb} an endpoint to/from a network")
        x.add_argument("network")
        x.add_argument("endpoint")
        if verb == "connect":
            x.add_argument("--ip")
            x.add_argument("--alias", action="append", default=[])
        x.set_defaults(func=fn)

    for verb, helptext in (("create", "create an endpoint (a network namespace)"),
                           ("run", "create an endpoint and start a command in it")):
        x = sub.add_parser(verb, parents=[common], help=helptext)
        x.add_argument("--name", required=True)
        x.add_argument("--network", "--net", default="bridge",
                       help="network name, host, none or container:<endpoint>")
        x.add_argument("--ip")
        x.add_argument("--alias", action="append", default=[])
        x.add_argument("-p", "--publish", action="append", default=[],
                       metavar="[HOSTIP:][HOSTPORT:]PORT[/PROTO]")
        x.add_argument("--netns", help="adopt an existing netns: a path, a PID or a name")
        if verb == "run":
            x.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS… to start inside")
            x.set_defaults(func=lambda a, c: cmd_create(a, c, start_cmd=True))
        else:
            x.set_defaults(func=cmd_create)

    sub.add_parser("ps", parents=[common], help="list endpoints").set_defaults(func=cmd_ps)
    sub.add_parser("stats", parents=[common], help="datapath counters by verdict and endpoint").set_defaults(
        func=cmd_stats)
    x = sub.add_parser("inspect", parents=[common], help="show endpoints in detail")
    x.add_argument("names", nargs="+")
    x.set_defaults(func=cmd_inspect)
    x = sub.add_parser("rm", parents=[common], help="remove endpoints")
    x.add_argument("names", nargs="+")
    x.set_defaults(func=cmd_rm)
    x = sub.add_parser("port", parents=[common], help="list an endpoint's published ports")
    x.add_argument("name")
    x.set_defaults(func=cmd_port)
    x = sub.add_parser("publish", parents=[common], help="publish more ports on a running endpoint (-p syntax)")
    x.add_argument("name")
    x.add_argument("ports", nargs="+", metavar="PORT", help="[hostip:][hostport:]port[/proto], ranges allowed")
    x.set_defaults(func=cmd_publish)
    x = sub.add_parser("unpublish", parents=[common], help="withdraw published ports of a running endpoint")
    x.add_argument("name")
    x.add_argument("ports", nargs="+", metavar="PORT", help="[hostip:]hostport:port[/proto]")
    x.set_defaults(func=cmd_unpublish)
    x = sub.add_parser("exec", parents=[common], help="run a command inside an endpoint's netns")
    x.add_argument("name")
    x.add_argument("command", nargs=argparse.REMAINDER)
    x.set_defaults(func=cmd_exec)

    sub.add_parser("iptables", help="iptables -t nat syntax on dockline's eBPF NAT (e.g. dockline iptables -t nat -S)")
    sub.add_parser("iptables-restore", help="iptables-restore -T nat on dockline's NAT (--noflush, --test; FILE or stdin)")
    sub.add_parser("iptables-save", help="iptables-save -t nat of dockline's NAT (the user's rules)")
    nat = sub.add_parser("nat", parents=[common], help="the eBPF NAT: import/save rules, conntrack")
    nx = nat.add_subparsers(dest="natcmd", required=True, metavar="COMMAND")
    x = nx.add_parser("import", parents=[common], help="replace the nat rules with iptables-save output")
    x.add_argument("file", nargs="?", default="-", help="iptables-save -t nat output (default: stdin)")
    x.set_defaults(func=cmd_nat_import)
    nx.add_parser("save", parents=[common], help="print the nat rules as iptables-save text").set_defaults(
        func=cmd_nat_save)
    x = nx.add_parser("conntrack", parents=[common], help="list translated flows")
    x.add_argument("--limit", type=int, default=1000)
    x.set_defaults(func=cmd_nat_conntrack)
    nx.add_parser("gc", parents=[common], help="remove expired conntrack entries now").set_defaults(func=cmd_nat_gc)

    sy = sub.add_parser("system", parents=[common], help="whole-host operations")
    ss = sy.add_subparsers(dest="syscmd", required=True, metavar="COMMAND")
    ss.add_parser("reset", parents=[common], help="remove every endpoint, network and rule").set_defaults(func=cmd_reset)
    ss.add_parser("reconcile", parents=[common], help="make the kernel match the store now").set_defaults(func=cmd_reconcile)
    return p


def main(argv=None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    ipt = _split_iptables(raw)
    if ipt is not None:
        runner, *rest = ipt
        return runner(*rest)
    args = build_parser().parse_args(raw)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        if getattr(args, "raw", False):
            return args.func(args) or 0
        return args.func(args, Client(args.host)) or 0
    except DocklineError as e:
        output.error(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``dockline demo``: build a throwaway host with two networks and show traffic, DNS, isolation,
a published port and egress masquerade working, then remove everything."""

from __future__ import annotations

import pathlib
import tempfile

from dnslib import DNSRecord
from rich.console import Console
from rich.table import Table

from ..netlink.netns import netns_path, run_in_netns
from .nstools import Server, ping, request
from .simhost import HOST_IP, OUTSIDE_IP, SimHost


def datapath_ran(info: dict, requested: str) -> str:
    """What ``dockline demo`` says about the datapath, from the agent's ``info``: the backend that
    actually runs (an ``auto`` agent may also have fallen back to kernel at start) and why."""
    name = info["datapath"]["name"]
    probe = info.get("probe", {})       # ordered best first, as the agent chooses
    if requested not in ("auto", ""):
        return f"{name} (requested)"
    best = next((b for b, r in probe.items() if r.get("usable")), name)
    if best != name:
        return f"{name} (the probe chose {best}, which failed to start: see the agent's log)"
    return f"{name} (chosen by the probe: {probe.get(name, {}).get('reason', 'no reason given')})"


def run_demo(datapath: str = "auto") -> int:
    """``datapath``: a backend name, or ``auto`` for the probe's choice (as the daemon does)."""
    console = Console()
    results: list[tuple[str, str, bool]] = []

    def check(what: str, detail: str, ok: bool):
        results.append((what, detail, ok))
        console.print(f"  {'[green]ok[/]' if ok else '[red]FAIL[/]'}  {what}: {detail}")

    with tempfile.TemporaryDirectory(prefix="dockline-demo-") as tmp:
        h = SimHost(pathlib.Path(tmp), datapath=datapath)
        servers = []
        ran = f"{datapath} (the agent did not start)"
        try:
            with console.status("starting an agent in a fresh host namespace"):
                h.start_agent()
            ran = datapath_ran(h.call("info"), datapath)
            console.print(f"[bold]host[/] {h.host_ns} (uplink {HOST_IP}), outside {h.out_ns} ({OUTSIDE_IP}), "
                          f"datapath {ran}")
            with console.status("creating networks front, back and four endpoints"):
                h.call("network_create", name="front")
                h.call("network_create", name="back", subnet="10.90.0.0/24")
                h.call("endpoint_create", name="web", network="front", aliases=["www"], ports=["8080:80"])
                h.call("endpoint_create", name="client", network="front")
                h.call("endpoint_create", name="db", network="back")
                h.call("connect", network="back", endpoint="web")
            ip = {e["name"]: e["networks"] for e in h.call("ps")}
            servers += [Server(h.ep_ns("web"), 80), Server(h.ep_ns("db"), 5432), Server(h.out_ns, 443)]

            seen = request(h.ep_ns("client"), ip["web"]["front"], 80)
            check("traffic", f"client -> web:80 on front, web saw {seen}", seen is not None)
            check("ping", f"web -> db over back ({ip['db']['back']})", ping(h.ep_ns("web"), ip["db"]["back"]))
            wire = run_in_netns(netns_path(h.ep_ns("client")), DNSRecord.question("www").send,
                                "127.0.0.11", 53, timeout=3)
            got = [str(r.rdata) for r in DNSRecord.parse(wire).rr]
            check("DNS", f"client resolves www -> {got}", got == [ip["web"]["front"]])
            blocked = request(h.ep_ns("client"), ip["db"]["back"], 5432, timeout=1) is None
            check("isolation", "client (front) cannot reach db (back)", blocked)
            seen = request(h.out_ns, HOST_IP, 8080)
            check("published port", f"outside -> {HOST_IP}:8080 -> web:80, web saw {seen}",
                  seen is not None and seen.startswith(OUTSIDE_IP))
            seen = request(h.ep_ns("db"), OUTSIDE_IP, 443)
            check("egress", f"db -> outside:443, outside saw {seen} (masqueraded)",
                  seen is not None and seen.startswith(HOST_IP))

            t = Table(title="dockline ps")
            for col in ("NAME", "NETWORKS", "PORTS"):
                t.add_column(col)
            for e in h.call("ps"):
                t.add_row(e["name"], ", ".join(f"{n}={a}" for n, a in e["networks"].items()), ", ".join(e["ports"]))
            console.print(t)
        finally:
            for s in servers:
                s.close()
            with console.status("removing everything"):
                h.cleanup()
        failed = [r for r in results if not r[2]]
        console.print(f"[bold]{len(results) - len(failed)}/{len(results)} checks passed[/] on datapath {ran}; "
                      "everything removed")
        return 1 if failed else 0

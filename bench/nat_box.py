"""The NAT-box row (``dockline bench --nat-box``, issue 11 P10): new connections per second
through a host whose nat table holds 1, 1,000, 10,000 and 100,000 rules of mixed shapes, on
dockline's eBPF NAT and on iptables (the kernel backend: iptables-nft, as Debian ships it), side
by side in one run.

The iptables side is a host of the kernel backend with the same rules in its nat table (see
``_Box.load``): the kernel backend takes no user rule set of its own.

Topology, per datapath, on a simulated host of its own (control/sim/simhost.py): a client in the
outside netns connects to the host's uplink address, port ``DIALED``; the last rule of
PREROUTING DNATs that to a server endpoint on the host. The rules before it are fillers of six
shapes (``-s``/32, ``-d``/32 with ``--dport``, ``-i`` with a UDP ``--dport``, ``-s``/24 with
``-d``/16, ``--sport`` with ``-d``/24, a negated ``! -s``/8 with ``--dport``) that never match the
client's connections, so every new connection is judged against the whole table: the worst
case of a linear rule walk, and the case a classifier must keep flat.

Per rule count: the rule set is imported into both hosts (``nat import``; the time is kept),
then ``rounds`` rounds measure CRR on each, alternating the two hosts within each round. At the
largest count, established flows are measured the same way: RR (one connection, 1-byte
ping-pong, dialed at ``DIALED_RR``) and TCP throughput (iperf3, ``DIALED_TCP``), both DNATed by
rules after the fillers (an established flow never meets the rules again, on either side).
Targets (issue 11 P10): dockline flat within 10 % from 1 to 100,000 rules; at least 50x
iptables at 100,000; established RR and throughput at least 1.1x iptables.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .metrics import CRR_PORT, IPERF_PORT, RR_PORT, connect_rate, request_response, tcp_throughput
from .targets import Endpoints

RULE_COUNTS = (1, 1000, 10000, 100000)
DIALED = 18080
DIALED_RR = 18081
DIALED_TCP = 18082
FLAT_TARGET = 0.10
VS_IPTABLES_TARGET = 50.0
ESTABLISHED_TARGET = 1.1
DATAPATHS = ("ebpf", "kernel")


def filler(i: int) -> str:
    """Rule ``i`` of the fillers: six shapes in turn, none matching the measured connections
    (client 198.18.0.2 -> 198.18.0.1:DIALED over TCP)."""
    a = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    port = 1000 + i % 17000                 # never DIALED
    return (f"-s {a}/32 -p tcp -j DNAT --to-destination 10.255.0.1:80",
            f"-d {a}/32 -p tcp -m tcp --dport {port} -j DNAT --to-destination 10.255.0.2",
            f"-i uplink0 -p udp -m udp --dport {port} -j DNAT --to-destination 10.255.0.3:53",
            f"-s 172.16.{(i >> 8) & 255}.0/24 -d 10.{i & 255}.0.0/16 -j DNAT --to-destination 10.255.0.4",
            f"-p tcp -m tcp --sport {port} -d 192.0.{i & 255}.0/24 -j DNAT --to-destination 10.255.0.5",
            f"! -s 198.18.0.0/16 -p tcp -m tcp --dport {port} -j DNAT --to-destination 10.255.0.6")[i % 6]


def rules(n: int, server_ip: str, chain: str = "PREROUTING") -> list[str]:
    out = [f"-A {chain} {filler(i)}" for i in range(n - 1)]
    for dialed, port in ((DIALED, CRR_PORT), (DIALED_RR, RR_PORT), (DIALED_TCP, IPERF_PORT)):
        out.append(f"-A {chain} -d 198.18.0.1/32 -p tcp -m tcp --dport {dialed} "
                   f"-j DNAT --to-destination {server_ip}:{port}")
    return out


def ruleset(n: int, server_ip: str) -> str:
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]"] + rules(n, server_ip)
    return "\n".join(lines + ["COMMIT"]) + "\n"


class _Box:
    def __init__(self, datapath: str):
        from ..control.netlink import netns
        from ..control.sim.simhost import SimHost
        self.datapath = datapath
        self._jumped = False
        self.host = SimHost(Path(tempfile.mkdtemp(prefix=f"dl-natbox-{datapath}-")), datapath=datapath)
        self.host.start_agent()
        self.host.call("network_create", name="box", subnet="10.77.0.0/24")
        self.host.call("endpoint_create", name="srv", network="box")
        self.server_ip = self.host.call("inspect", ref="srv")["networks"]["box"]["ip"]
        out, srv = netns.netns_path(self.host.out_ns), netns.netns_path(self.host.ep_ns("srv"))
        self.ep = Endpoints(out, srv, "198.18.0.1", DIALED)
        self.ep_rr = Endpoints(out, srv, "198.18.0.1", DIALED_RR)
        self.ep_tcp = Endpoints(out, srv, "198.18.0.1", DIALED_TCP)

    def load(self, n: int) -> float:
        """Make the host's nat table hold the ``n`` rules; returns the seconds it took. eBPF:
        ``nat import``. Kernel backend (iptables NAT, which takes no user rule set): the same
        rules in a chain BENCH of the host's own nat table, jumped to at the end of PREROUTING
        (after the agent's own jump), with iptables-restore --noflush (the chain line empties
        BENCH first), as a router's scripts would."""
        t = time.perf_counter()
        if self.datapath == "kernel":
            from ..control.sim.nstools import sh
            text = "\n".join(["*nat", ":BENCH - [0:0]"] + rules(n, self.server_ip, "BENCH") + ["COMMIT"]) + "\n"
            r = subprocess.run(["ip", "netns", "exec", self.host.host_ns, "iptables-restore", "-w", "--noflush"],
                               input=text, text=True, capture_output=True)
            if r.returncode:
                raise RuntimeError(f"iptables-restore failed: {r.stderr.strip()}")
            if not self._jumped:
                sh(self.host.host_ns, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-j", "BENCH", check=True)
                # the filter rule Docker writes for a published port (the backend's FORWARD
                # policy admits only its own published ports)
                sh(self.host.host_ns, "iptables", "-w", "-I", "FORWARD", "-d", f"{self.server_ip}/32", "-p", "tcp",
                   "--dport", str(CRR_PORT), "-j", "ACCEPT", check=True)
                self._jumped = True
            return time.perf_counter() - t
        got = self.host.call("nat_import", text=ruleset(n, self.server_ip))
        took = time.perf_counter() - t
        if got.get("rules") != n + 2:
            raise RuntimeError(f"{self.datapath}: imported {got.get('rules')} rules, not {n + 2}")
        return took

    def close(self):
        self.host.cleanup()


def measure(rule_counts=RULE_COUNTS, rounds: int = 3, duration: float = 2.0, console=None) -> dict:
    from rich.progress import Progress
    boxes = {}
    out = {"rule_counts": list(rule_counts), "rounds": rounds, "duration_s": duration, "rows": {}}
    try:
        for dp in DATAPATHS:
            boxes[dp] = _Box(dp)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("NAT box", total=len(rule_counts) * (1 + rounds) + rounds)
            for n in rule_counts:
                row = {"import_s": {}, "crr": {dp: [] for dp in boxes}}
                for dp, box in boxes.items():
                    progress.update(task, description=f"NAT box: importing {n:,} rules ({dp})")
                    row["import_s"][dp] = box.load(n)
                progress.advance(task)
                for r in range(rounds):
                    order = list(boxes) if r % 2 == 0 else list(reversed(boxes))
                    for dp in order:
                        progress.update(task, description=f"NAT box: {n:,} rules, round {r + 1} ({dp})")
                        row["crr"][dp].append(connect_rate(boxes[dp].ep, duration)["cps"])
                    progress.advance(task)
                row["median"] = {dp: statistics.median(v) for dp, v in row["crr"].items()}
                out["rows"][str(n)] = row
            out["established"] = _established(boxes, rounds, duration, progress, task, rule_counts[-1])
    finally:
        for box in boxes.values():
            box.close()
    rows = out["rows"]
    first, last = str(rule_counts[0]), str(rule_counts[-1])
    ebpf = [rows[str(n)]["median"]["ebpf"] for n in rule_counts]
    out["flatness"] = min(ebpf) / max(ebpf) if ebpf else None
    out["ebpf_last_vs_first"] = rows[last]["median"]["ebpf"] / rows[first]["median"]["ebpf"]
    out["vs_iptables_at_max"] = rows[last]["median"]["ebpf"] / rows[last]["median"]["kernel"]
    out["flat_verdict"] = "PASS" if out["flatness"] >= 1 - FLAT_TARGET else "MISS"
    out["vs_iptables_verdict"] = ("PASS" if out["vs_iptables_at_max"] >= VS_IPTABLES_TARGET else "MISS") \
        if int(last) >= 100000 else "n/a (the target is at 100,000 rules)"
    est = out["established"]
    for metric in ("rr_tps", "tcp_gbit_s"):
        ratio = statistics.median(est[metric]["ebpf"]) / statistics.median(est[metric]["kernel"])
        est[f"{metric}_ratio"] = ratio
        est[f"{metric}_verdict"] = "PASS" if ratio >= ESTABLISHED_TARGET else "MISS"
    return out


def _established(boxes: dict, rounds: int, duration: float, progress, task, n: int) -> dict:
    """RR and TCP throughput of established flows through each box, alternating within rounds."""
    est = {"rules": n, "rr_tps": {dp: [] for dp in boxes}, "tcp_gbit_s": {dp: [] for dp in boxes}}
    for r in range(rounds):
        order = list(boxes) if r % 2 == 0 else list(reversed(boxes))
        for dp in order:
            progress.update(task, description=f"NAT box: established flows, round {r + 1} ({dp})")
            est["rr_tps"][dp].append(request_response(boxes[dp].ep_rr, duration)["tps"])
            est["tcp_gbit_s"][dp].append(tcp_throughput(boxes[dp].ep_tcp, duration=duration)["gbit_s"])
        progress.advance(task)
    return est


def table(results: dict) -> list[str]:
    r = results.get("nat_box")
    if not r:
        return []
    lines = ["", "## NAT box: new connections/s through the host by rule count (issue 11 P10)", "",
             "| rules | dockline eBPF conn/s | iptables-nft conn/s | eBPF / iptables | import eBPF | import iptables |",
             "|---|---|---|---|---|---|"]
    for n, row in r["rows"].items():
        e, k = row["median"]["ebpf"], row["median"]["kernel"]
        lines.append(f"| {int(n):,} | {e:,.0f} | {k:,.0f} | {e / k:.1f}x | {row['import_s']['ebpf']:.1f} s "
                     f"| {row['import_s']['kernel']:.1f} s |")
    lines.append(f"\neBPF lowest/highest across rule counts: {r['flatness']:.2f} (target ≥ {1 - FLAT_TARGET:.2f}): "
                 f"{r['flat_verdict']}. eBPF/iptables at the largest count: {r['vs_iptables_at_max']:.1f}x "
                 f"(target ≥ {VS_IPTABLES_TARGET:.0f}x): {r['vs_iptables_verdict']}. Medians of {r['rounds']} "
                 f"rounds of {r['duration_s']:.0f} s, the two hosts alternating within each round. Import "
                 "times are the whole `nat import` call (parse, compile, write).")
    est = r.get("established")
    if est:
        lines += ["", f"Established flows through the box at {est['rules']:,} rules (medians; target ≥ "
                      f"{ESTABLISHED_TARGET:.1f}x iptables):", "",
                  "| metric | dockline eBPF | iptables-nft | eBPF / iptables | verdict |", "|---|---|---|---|---|"]
        for metric, label, fmt in (("rr_tps", "RR transactions/s", "{:,.0f}"), ("tcp_gbit_s", "TCP Gbit/s", "{:.2f}")):
            e, k = (statistics.median(est[metric][dp]) for dp in ("ebpf", "kernel"))
            lines.append(f"| {label} | {fmt.format(e)} | {fmt.format(k)} | {est[metric + '_ratio']:.2f}x "
                         f"| {est[metric + '_verdict']} |")
    return lines


def plot(results: dict, outdir: Path) -> Path | None:
    r = results.get("nat_box")
    if not r:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    counts = [int(n) for n in r["rows"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for dp, label in (("ebpf", "dockline eBPF"), ("kernel", "iptables-nft")):
        ax.plot(counts, [r["rows"][str(n)]["median"][dp] for n in counts], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nat rules (mixed shapes, the matching one last)")
    ax.set_ylabel("new connections/s")
    ax.set_title("NAT box: CRR through the host")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    path = outdir / "nat_box.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

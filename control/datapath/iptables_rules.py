"""Render the kernel backend's iptables rules: the same shapes Docker's bridge driver writes with
the userland proxy disabled (hairpin mode), under DOCKLINE-* chain names so a Docker engine on the
same host keeps its own.

One deliberate difference from Docker: connections DNATed to a published port are accepted
before the isolation chains, so other (non-internal) networks reach published ports through the
host address, as the reliability suite expects; container addresses stay isolated. Internal
networks are fenced off first of all, so they reach nothing outside their subnet.

Pure: takes the desired state, returns ``iptables-restore`` text. The whole rule set of our chains
is rewritten atomically on every change (``iptables-restore --noflush`` flushes each chain it
declares); only the jumps from the built-in chains are installed one by one, once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import Network, PortMapping
from .drivers import driver_class

NAT_CHAIN = "DOCKLINE"                       # nat: DNAT of published ports
NAT_POST_CHAIN = "DOCKLINE-POSTROUTING"      # nat: masquerade (egress, localhost, hairpin to self)
FWD_CHAIN = "DOCKLINE-FORWARD"               # filter: entry from FORWARD
FILTER_CHAIN = "DOCKLINE"                    # filter: accept published ports
ISO1_CHAIN = "DOCKLINE-ISOLATION-STAGE-1"    # filter: leaving a network for another
ISO2_CHAIN = "DOCKLINE-ISOLATION-STAGE-2"    # filter: ... is dropped at the other network

#: (table, built-in chain, rule spec) jumps that lead into our chains, inserted at position 1.
JUMPS = (
    ("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", NAT_CHAIN]),
    # Without a userland proxy, host-originated connections (127.0.0.1 included) are DNATed too.
    ("nat", "OUTPUT", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", NAT_CHAIN]),
    ("nat", "POSTROUTING", ["-j", NAT_POST_CHAIN]),
    ("filter", "FORWARD", ["-j", FWD_CHAIN]),
)


@dataclass
class PublishedPort:
    """A port mapping joined with the address and bridge it lands on."""

    mapping: PortMapping
    container_ip: str
    bridge: str


def render(networks: list[Network], ports: list[PublishedPort], with_nat: bool = True) -> str:
    """The complete content of our chains for ``iptables-restore --noflush``. ``with_nat=False`` (the
    eBPF backend, which translates in its programs) leaves the nat chains empty and the filter
    rules without per-port entries: translated flows never reach the stack there."""
    if not with_nat:
        ports = []
    # networks whose traffic crosses the host stack through a device of ours (the bridge); a
    # macvlan network's leaves by its parent and never meets these chains
    bridged = [n for n in networks if driver_class(n.driver).host_device]
    nat, post, fence, pre, fwd, flt, iso1, iso2 = [], [], [], [], [], [], [], []
    for n in bridged:
        br, sub = n.bridge, n.subnet
        if n.internal:
            # First of all: nothing enters or leaves an internal network's subnet.
            fence.append(f"! -s {sub} -o {br} -j DROP")
            fence.append(f"! -d {sub} -i {br} -j DROP")
        else:
            if with_nat:
                post.append(f"-s {sub} ! -o {br} -j MASQUERADE")
                # Connections from the host itself (127.0.0.1 included) get the bridge address.
                post.append(f"-o {br} -m addrtype --src-type LOCAL -j MASQUERADE")
            # Before isolation: replies, and connections DNATed to a published port, which other
            # networks may reach through the host address (never by container address).
            pre.append(f"-o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
            pre.append(f"-o {br} -m conntrack --ctstate DNAT -j {FILTER_CHAIN}")
            fwd.append(f"-o {br} -j {FILTER_CHAIN}")
        if not n.internal:
            fwd.append(f"-i {br} ! -o {br} -j ACCEPT")
        fwd.append(f"-i {br} -o {br} -j ACCEPT")
        # Docker's FORWARD policy is DROP; we drop only what enters our bridges unaccepted, so the
        # host's own policy is left alone.
        fwd.append(f"-o {br} -j DROP")
        if not n.internal:
            iso1.append(f"-i {br} ! -o {br} -j {ISO2_CHAIN}")
            iso2.append(f"-o {br} -j DROP")
    for p in ports:
        m = p.mapping
        dst = f"-d {m.host_ip}/32 " if m.host_ip != "0.0.0.0" else ""
        nat.append(f"{dst}-p {m.proto} -m {m.proto} --dport {m.host_port} "
                   f"-j DNAT --to-destination {p.container_ip}:{m.container_port}")
        flt.append(f"-d {p.container_ip}/32 ! -i {p.bridge} -o {p.bridge} -p {m.proto} -m {m.proto} "
                   f"--dport {m.container_port} -j ACCEPT")
        # A container reaching its own published port: the reply must come from the host address.
        post.append(f"-s {p.container_ip}/32 -d {p.container_ip}/32 -p {m.proto} -m {m.proto} "
                    f"--dport {m.container_port} -j MASQUERADE")
    iso1.append("-j RETURN")
    iso2.append("-j RETURN")
    fwd = fence + pre + [f"-j {ISO1_CHAIN}"] + fwd

    out = ["*nat", f":{NAT_CHAIN} - [0:0]", f":{NAT_POST_CHAIN} - [0:0]"]
    out += [f"-A {NAT_CHAIN} {r}" for r in nat]
    out += [f"-A {NAT_POST_CHAIN} {r}" for r in post]
    out += ["COMMIT", "*filter", f":{FWD_CHAIN} - [0:0]", f":{FILTER_CHAIN} - [0:0]",
            f":{ISO1_CHAIN} - [0:0]", f":{ISO2_CHAIN} - [0:0]"]
    out += [f"-A {FWD_CHAIN} {r}" for r in fwd]
    out += [f"-A {FILTER_CHAIN} {r}" for r in flt]
    out += [f"-A {ISO1_CHAIN} {r}" for r in iso1]
    out += [f"-A {ISO2_CHAIN} {r}" for r in iso2]
    out += ["COMMIT", ""]
    return "\n".join(out)


def render_teardown() -> str:
    """Flush our chains (the jumps are removed separately, then the chains deleted)."""
    return "\n".join(["*nat", f":{NAT_CHAIN} - [0:0]", f":{NAT_POST_CHAIN} - [0:0]", "COMMIT",
                      "*filter", f":{FWD_CHAIN} - [0:0]", f":{FILTER_CHAIN} - [0:0]",
                      f":{ISO1_CHAIN} - [0:0]", f":{ISO2_CHAIN} - [0:0]", "COMMIT", ""])

"""Which host interfaces the eBPF NAT runs on, and keeping that true as interfaces come and go.

Netfilter hooks every interface, so a drop-in NAT has to as well. By default (``--nat-interfaces
all``) the uplink programs (ebpf/tc_uplink.c, TC ingress and egress) go on every interface of
the host netns except:
  * loopback (host-local traffic is the socket layer's and tc_loopback's);
  * dockline's own bridges and endpoint veths (they carry programs of their own);
  * ports of a bridge: iptables' ``-i``/``-o`` name the bridge, so the programs go on the bridge
    device, where traffic going up to the host arrives with the bridge's ifindex;
  * interfaces excluded by name (``--nat-exclude``, shell globs: ``eth0``, ``docker*``).
``--nat-interfaces IF1,IF2`` runs it on those alone (each must exist). ``--uplink`` names an
interface that must have NAT (and may get native XDP) in either mode.

An interface where attaching fails is reported with the reason (``dockline info``, and a warning
in the log); published ports are then not reachable through it on the eBPF NAT.
"""

from __future__ import annotations

import fnmatch
import logging

log = logging.getLogger("dockline.nat")

ALL = "all"


class NatInterfaces:
    """The policy and the record: ``decide`` says whether an interface gets NAT and why not;
    ``attached`` (name -> ifindex) and ``skipped`` (name -> reason) say what was done."""

    def __init__(self, mode, exclude=(), required=(), own_prefixes=()):
        self.mode = ALL if mode in (None, "", ALL) else "list"
        self.listed = [] if self.mode == ALL else [n for n in (mode.split(",") if isinstance(mode, str) else mode) if n]
        self.exclude = list(exclude)
        self.required = list(dict.fromkeys(required))
        self.own_prefixes = tuple(own_prefixes)
        self.attached: dict[str, int] = {}
        self.skipped: dict[str, str] = {}

    def named(self) -> list[str]:
        """Interfaces that must exist and get NAT (a missing one is an error)."""
        return list(dict.fromkeys(self.listed + self.required))

    def decide(self, name: str, master_is_bridge: bool, master_name: str = "") -> str | None:
        """None: NAT goes on ``name``; else the reason it does not."""
        if name in self.named():
            return None
        if any(fnmatch.fnmatchcase(name, pat) for pat in self.exclude):
            return "excluded (--nat-exclude)"
        if name == "lo":
            return "loopback: host-local traffic is NATed at the socket layer"
        if name.startswith(self.own_prefixes):
            return "dockline's own (programs of its own)"
        if master_is_bridge:
            return f"port of bridge {master_name or '?'}: NAT runs on the bridge, as -i/-o name it"
        if self.mode != ALL:
            return "not listed in --nat-interfaces"
        return None

    def view(self) -> dict:
        """For ``dockline info``: every interface seen, and how NAT runs there (dockline's own
        left out)."""
        out = {n: "eBPF (tc ingress and egress)" for n in self.attached}
        out.update({n: f"none: {why}" for n, why in self.skipped.items()
                    if not why.startswith("dockline's own")})
        return dict(sorted(out.items()))

"""The control plane's own nat rules (Docker's shapes, userland proxy off) and their merge with
the user's nat table: what the eBPF NAT compiles and what ``dockline iptables -t nat -S`` lists.

Chains DOCKLINE (published ports) and DOCKLINE-POSTROUTING (masquerade) are managed: users cannot
edit them. Which networks masquerade is the network driver's call (``masquerades``): a bridge
network's traffic leaves through the host stack, a macvlan network's leaves by its parent
directly and is never translated.
"""

from __future__ import annotations

import ipaddress

from .. import protocols
from . import compiler as nat_compiler
from .parser import parse_save
from .rules import PortRange, Rule, Ruleset

MANAGED_CHAINS = ("DOCKLINE", "DOCKLINE-POSTROUTING")

def _masquerades(net) -> bool:
    from ..datapath.drivers import driver_class
    return driver_class(net.driver).masquerades and not net.internal


def control_plane_chains(networks) -> Ruleset:
    """The control plane's own nat rules, Docker's shapes (userland proxy off), as a Ruleset with
    the jumps and masquerade rules; chain DOCKLINE holds no rules here: the published ports are
    ``published_ports``. A container reaching its own published port is SNATed to its gateway by
    the datapath itself (the hairpin rule Docker writes per port: the published ports' targets
    in NAT_HAIRPIN_TABLE)."""
    rs = Ruleset()
    rs.chains["DOCKLINE"] = []
    rs.chains["DOCKLINE-POSTROUTING"] = []
    rs.chains["PREROUTING"].append(Rule(dst_type="LOCAL", target="DOCKLINE"))
    rs.chains["OUTPUT"].append(Rule(dst_type="LOCAL", target="DOCKLINE"))
    rs.chains["POSTROUTING"].append(Rule(target="DOCKLINE-POSTROUTING"))
    for n in networks:
        if _masquerades(n):
            post = rs.chains["DOCKLINE-POSTROUTING"]
            post.append(Rule(src=ipaddress.IPv4Network(n.subnet), out_iface=n.bridge, out_neg=True,
                             target="MASQUERADE"))
            # a host connection DNATed into the network keeps the host address it asked for
            # (the socket layer binds it, as iptables keeps it); leaving into the bridge it
            # becomes the gateway, so that the reply comes back through the host
            post.append(Rule(out_iface=n.bridge, src_type="LOCAL", target="MASQUERADE"))
    return rs


def published_ports(state) -> dict:
    """The published ports for chain DOCKLINE as plain ``{(host_ip, host_port, proto number):
    (container ip, container port)}``: thousands of ports never become Rule objects. Memoised
    on ``state`` (a whole apply needs them for the rules and for the hairpin targets)."""
    memo = getattr(state, "__dict__", {})
    if "_published" in memo:
        return memo["_published"]
    published = {}
    for pm in state.ports:
        target = state.port_target(pm)
        if target is not None:
            published[(pm.host_ip, pm.host_port, protocols.number(pm.proto))] = (target.ip, pm.container_port)
    memo["_published"] = published
    return published


def published_as_rules(published: dict) -> list[Rule]:
    """The published ports as the DNAT rules Docker would write (for listings only: the datapath
    gets them as exact entries, never as Rule objects)."""
    return [Rule(dst=None if host_ip == "0.0.0.0" else ipaddress.IPv4Network(f"{host_ip}/32"),
                 proto="tcp" if proto == 6 else "udp", dport=PortRange(port, port), target="DNAT",
                 to_addr=ip_of(ip), to_ports=PortRange(cport, cport))
            for (host_ip, port, proto), (ip, cport) in published.items()]


def host_daddr(host_ip: str):
    """A published port's host address as the compiler keys it (0.0.0.0: any destination)."""
    return nat_compiler.ANY if host_ip == "0.0.0.0" else ip_of(host_ip)


def exact_entry(key, value) -> tuple:
    """A published port as the compiler's (daddr, port, proto, ExactValue)."""
    host_ip, port, proto = key
    return (host_daddr(host_ip), port, proto, nat_compiler.ExactValue(ip_of(value[0]), value[1]))


def exact_key(proto: str, host_ip: str, port: int) -> tuple:
    """A published port's (daddr, port, proto number), as ``exact_entry`` keys it."""
    return (host_daddr(host_ip), port, protocols.number(proto))


def _user_rules(text: str) -> Ruleset | None:
    """The user's nat table parsed (the last text is remembered: it changes rarely, and every
    change of anything else compares the rule set). Never mutated by its users."""
    if not text:
        return None
    if _user_cache.get("text") != text:
        _user_cache["rules"] = parse_save(text)[0]
        _user_cache["text"] = text
    return _user_cache["rules"]


_user_cache: dict = {}


def merged_rules(networks, user_text: str) -> Ruleset:
    """Control-plane chains first (their jumps lead each built-in chain), then the user's rules."""
    rs = control_plane_chains(networks)
    user = _user_rules(user_text)
    if user is not None:
        for chain, rules in user.chains.items():
            rs.chains.setdefault(chain, [])
            rs.chains[chain].extend(rules)
    return rs


def user_rules(text: str) -> Ruleset:
    """The user's nat table parsed from its stored text (memoised, as for ``merged_rules``):
    never mutate the result; ``Ruleset.copy`` it."""
    return _user_rules(text) or Ruleset()


def remember_user_rules(text: str, ruleset: Ruleset) -> None:
    """``ruleset`` is what ``text`` parses to (a caller that parsed it already: an import of
    100,000 rules then parses once). ``ruleset`` must not be mutated afterwards."""
    _user_cache["rules"], _user_cache["text"] = ruleset, text


def merged_identity(networks, user_text: str) -> str:
    """A string that is equal for two calls exactly when ``merged_rules`` would give equal rule
    sets: the control plane's chains as text, then the user's text (cheap: 100,000 user rules
    are not rendered again)."""
    return control_plane_chains(networks).save() + "\0" + (user_text or "")


def merged_ruleset(state, user_text: str) -> tuple[Ruleset, dict]:
    """``merged_rules`` and the published ports of ``state``."""
    return merged_rules(state.networks, user_text), published_ports(state)


_addr_cache: dict[str, ipaddress.IPv4Address] = {}


def ip_of(text: str) -> ipaddress.IPv4Address:
    """``IPv4Address(text)``, memoised: 10,000 published ports share a few container addresses."""
    a = _addr_cache.get(text)
    if a is None:
        a = _addr_cache[text] = ipaddress.IPv4Address(text)
    return a

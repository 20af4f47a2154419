"""Names: the embedded DNS tables (names and aliases inside user-defined networks) and each
endpoint's resolv.conf.

The tables are kept per network and changed by delta: adding, changing or removing one endpoint
touches only the entries it contributes (its name, aliases and the names of endpoints sharing its
netns, on each DNS-enabled network it is attached to), so an update costs O(that endpoint's
attachments), not O(endpoints). A query from endpoint K for a name looks it up in each DNS
network K is attached to, in attachment order (the resolver thread reads these dicts while the
agent changes them: every changed entry is replaced by a new list, never mutated in place).
"""

from __future__ import annotations

import logging

from ..errors import DocklineError

log = logging.getLogger("dockline.names")

RESOLVER_IP = "127.0.0.11"


class NameService:
    def __init__(self, ctx, dns=None):
        self.ctx = ctx
        self.dns = dns                                       # EmbeddedDNS, or None (no listeners)
        self._names: dict[str, dict[str, list[str]]] = {}    # network id -> {name: [ips]}
        self._ptr: dict[str, dict[str, list[str]]] = {}      # network id -> {ip: [endpoint names]}
        self._given: dict[str, list[tuple[str, str, str, str]]] = {}   # endpoint id -> its entries
        self._asks: dict[str, tuple[list[str], bool]] = {}  # endpoint id -> (dns networks, forwardable)
        self._listening: set[str] = set()                    # endpoints with an open listener

    # ------------------------------------------------------------------ queries (resolver thread)
    def lookup(self, key: str, qname: str):
        asks = self._asks.get(key)
        if asks is None:
            return None
        name = qname.lower().rstrip(".")
        ips = [ip for net in asks[0] for ip in self._names.get(net, {}).get(name, ())]
        return ips or None

    def reverse(self, key: str, ip: str):
        asks = self._asks.get(key)
        if asks is None:
            return None
        names = [n for net in asks[0] for n in self._ptr.get(net, {}).get(ip, ())]
        return names or None

    def can_forward(self, key: str) -> bool:
        asks = self._asks.get(key)
        return True if asks is None else asks[1]

    # ------------------------------------------------------------------ changes (under ctx.lock)
    def rebuild(self, state) -> None:
        """Every table from ``state`` (at start)."""
        for ep_id in list(self._given):
            self._withdraw(ep_id)
        self._asks.clear()
        for ep in state.endpoints:
            self.endpoint_changed(state, ep.id)
        for key in self._listening - set(self._asks):
            self._close(key)

    def endpoint_changed(self, state, ep_id: str) -> None:
        """``ep_id`` appeared or changed (attachments, aliases, sharers) in ``state``."""
        ep = state.endpoint_by_id(ep_id)
        if ep is None:
            self.endpoint_removed(ep_id)
            return
        if ep.shares:                    # its name is an entry of the endpoint it shares with
            self._give(state, state.endpoint_by_id(ep.shares))
            return
        self._give(state, ep)
        if ep.mode != "bridge":
            self._asks.pop(ep.id, None)
            self._close(ep.id)
            return
        dns_nets = [a.network_id for a in state.attachments_of(ep.id) if state.network(a.network_id).dns]
        if not dns_nets:
            self._asks.pop(ep.id, None)
            self._close(ep.id)
            return
        self._asks[ep.id] = (dns_nets, any(not state.network(n).internal for n in dns_nets))
        self._open(ep)

    def endpoint_removed(self, ep_id: str, shared_with: str | None = None, state=None) -> None:
        """``ep_id`` is gone; ``shared_with`` (with ``state``): the endpoint whose netns it
        shared, whose entries carried its name."""
        self._withdraw(ep_id)
        self._asks.pop(ep_id, None)
        self._close(ep_id)
        if shared_with and state is not None and state.endpoint_by_id(shared_with) is not None:
            self._give(state, state.endpoint_by_id(shared_with))

    def _give(self, state, ep) -> None:
        """Replace ``ep``'s entries (as a peer others resolve) with what ``state`` says."""
        if ep is None:
            return
        self._withdraw(ep.id)
        if ep.mode != "bridge":
            return
        entries = []
        names = [ep.name] + [s.name for s in state.sharers_of(ep.id)]
        for a in state.attachments_of(ep.id):
            if not state.network(a.network_id).dns:
                continue
            for n in names + list(a.aliases):
                entries.append((a.network_id, n.lower(), a.ip, ""))
            entries.append((a.network_id, "", a.ip, ep.name))
        for net, name, ip, ptr in entries:
            if name:
                table = self._names.setdefault(net, {})
                table[name] = table.get(name, []) + [ip]
            else:
                table = self._ptr.setdefault(net, {})
                table[ip] = table.get(ip, []) + [ptr]
        self._given[ep.id] = entries

    def _withdraw(self, ep_id: str) -> None:
        for net, name, ip, ptr in self._given.pop(ep_id, ()):
            table, key, item = (self._names, name, ip) if name else (self._ptr, ip, ptr)
            entries = table.get(net, {})
            rest = list(entries.get(key, ()))
            if item in rest:
                rest.remove(item)
            if rest:
                entries[key] = rest
            else:
                entries.pop(key, None)

    def _open(self, ep) -> None:
        if self.dns is None or ep.id in self._listening or not self.ctx.sandbox.path_exists(ep.netns_path):
            return
        try:
            self.dns.add_listener(ep.id, ep.netns_path, RESOLVER_IP, 53)
            self._listening.add(ep.id)
        except DocklineError as e:
            log.error("DNS listener for %s: %s", ep.name, e)

    def _close(self, ep_id: str) -> None:
        if ep_id in self._listening:
            self._listening.discard(ep_id)
            if self.dns is not None:
                self.dns.remove_listener(ep_id)

    # ------------------------------------------------------------------ resolv.conf
    def write_resolv_conf(self, state, ep) -> None:
        """An owned endpoint's resolv.conf: the embedded resolver where one of its networks has
        DNS by name, else the host's resolvers."""
        if not (ep.owned and ep.netns_name):
            return
        if any(state.network(a.network_id).dns for a in state.attachments_of(ep.id)):
            text = f"# written by dockline: the embedded resolver\nnameserver {RESOLVER_IP}\noptions ndots:0\n"
        else:
            text = "# written by dockline: the host's resolvers\n" + "".join(
                f"nameserver {u.split(':')[0]}\n" for u in self.ctx.host.dns_upstreams)
        self.ctx.sandbox.write_resolv_conf(ep.netns_name, text)

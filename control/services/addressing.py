"""Addressing: IPAM leases and published-port records, written inside the caller's store
transaction (so the check and the lease are one atomic step).

Nothing here touches the kernel; the endpoint service calls it while it builds an endpoint's
records, and the datapath later makes the kernel match them.
"""

from __future__ import annotations

import ipaddress

from .. import ipam
from ..config import veth_name
from ..errors import Conflict, InvalidArgument
from ..model import Attachment, Endpoint, Network, host_ips_collide, mac_for_ip

#: Host ports handed out for ``-p CTRPORT`` (no host port given), like Docker's ephemeral range.
EPHEMERAL_PORTS = range(49153, 60999 + 1)


def attach_record(tx, net: Network, ep: Endpoint, static_ip: str | None, aliases, index: int) -> Attachment:
    """Lease an address on ``net`` for ``ep`` (``static_ip`` or the next free one, round-robin)
    and store the attachment: interface ``eth<n>`` inside, veth peer named after both ids."""
    pool = ipam.Pool(net.subnet, net.gateway, net.ip_range)
    leased = _Leased(tx, net.id)
    if static_ip:
        pool.check_static(ipaddress.IPv4Address(static_ip), net.name)
        if static_ip in leased:
            raise Conflict(f"address {static_ip} is already in use on network {net.name}")
        addr = static_ip
    else:
        addr = pool.allocate(leased, net.name, tx.get_meta(f"last_ip:{net.id}"))
        tx.set_meta(f"last_ip:{net.id}", addr)
    tx.lease(net.id, addr, ep.id)
    used = {a.ifname for a in tx.attachments(ep_id=ep.id)}
    ifname = next(f"eth{i}" for i in range(64) if f"eth{i}" not in used)
    att = Attachment(endpoint_id=ep.id, network_id=net.id, ip=addr, mac=mac_for_ip(addr), ifname=ifname,
                     host_ifname=veth_name(ep.id, net.id), aliases=list(aliases), index=index)
    tx.put_attachment(att)
    return att


class _Leased:
    """The addresses leased on one network, as ``in`` asks about them: one key read per address
    asked (round-robin allocation asks about one or a few), switching to one read of all the
    network's leases after ``POINT_READS`` (a nearly full range would otherwise cost a read per
    address). Both kinds of read join the transaction's conflict check."""

    POINT_READS = 32

    def __init__(self, tx, net_id: str):
        self.tx, self.net_id, self.asked, self.all = tx, net_id, 0, None

    def __contains__(self, ip: str) -> bool:
        if self.all is None:
            self.asked += 1
            if self.asked <= self.POINT_READS:
                return self.tx.lease_holder(self.net_id, ip) is not None
            self.all = {leased for _, leased, _ in self.tx.leases(self.net_id)}
        return ip in self.all


def _collides(holders, host_ip: str) -> bool:
    """Does ``host_ip`` collide with the host addresses ``holders`` (None, one, or a tuple) that
    hold the same protocol and port? "0.0.0.0" collides with every address, as in Docker."""
    if holders is None:
        return False
    return any(host_ips_collide(h, host_ip) for h in ((holders,) if isinstance(holders, str) else holders))


def _take(taken: dict, key: int, host_ip: str) -> None:
    have = taken.get(key)
    taken[key] = host_ip if have is None else (have if isinstance(have, tuple) else (have,)) + (host_ip,)


def publish_records(tx, ep: Endpoint, net: Network, specs) -> list[tuple]:
    """Store ``specs`` (``(proto, host_ip, host_port or None, container_port)``) as ``ep``'s port
    mappings. Only the mappings in the host-port range the specs use are read for the collision
    check, so publishing one port next to 10,000 reads about one. Returns them as
    ``PortChanges.added`` (the specs themselves where they name their host port: a range of
    10,000 ports is not copied)."""
    if not specs:
        return []
    if net.internal:
        raise InvalidArgument(f"cannot publish ports on internal network {net.name}")
    # host_port * 2 + (1 for udp) -> the host address holding it, or a tuple of several
    # ("0.0.0.0" = all of them); int keys: a range of 10,000 ports makes few objects
    taken: dict[int, str | tuple[str, ...]] = {}
    for proto in sorted({s[0] for s in specs}):
        ports = [s[2] for s in specs if s[0] == proto and s[2] is not None]
        lo, hi = (min(ports), max(ports)) if ports else (EPHEMERAL_PORTS.start, EPHEMERAL_PORTS.start)
        if len(ports) < sum(1 for s in specs if s[0] == proto):     # some need a free port
            lo, hi = min(lo, EPHEMERAL_PORTS.start), max(hi, EPHEMERAL_PORTS.stop - 1)
        del ports
        for host_ip, host_port in tx.host_ports_in(proto, lo, hi):
            _take(taken, host_port * 2 + (proto == "udp"), host_ip)
    added = []
    for spec in specs:
        proto, host_ip, host_port, ctr_port = spec
        if host_port is None:
            host_port = _free_host_port(taken, proto, host_ip)
            spec = (proto, host_ip, host_port, ctr_port)
        key = host_port * 2 + (proto == "udp")
        if _collides(taken.get(key), host_ip):
            raise Conflict(f"bind for {host_ip}:{host_port}/{proto} failed: port is already allocated")
        _take(taken, key, host_ip)
        added.append(spec)
    del taken
    tx.put_ports((ep.id, proto, host_ip, host_port, ctr_port) for proto, host_ip, host_port, ctr_port in added)
    return added


def _free_host_port(taken, proto, host_ip) -> int:
    for port in EPHEMERAL_PORTS:
        if not _collides(taken.get(port * 2 + (proto == "udp")), host_ip):
            return port
    raise Conflict(f"all ports are allocated ({EPHEMERAL_PORTS.start}-{EPHEMERAL_PORTS.stop - 1}/{proto})")


def release_orphan_leases(tx, owners: set[str]) -> list[str]:
    """Release the leases whose owner is neither an endpoint in ``owners`` nor the gateway
    (leak reconciliation at start); returns the released addresses."""
    gone = []
    for net_id, ip, owner in tx.leases():
        if owner not in owners and owner != ipam.GATEWAY_OWNER:
            tx.release(net_id, ip)
            gone.append(ip)
    return gone

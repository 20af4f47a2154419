"""Which source address the kernel gives a connection to a destination, by prefix of the main
routing table: what the socket layer needs to bind a socket that the OUTPUT chain DNATs, since
iptables picks the source for the destination the socket asked for (ebpf/cgroup_sock.c reads it
from the ``route_src`` map).

Contract: ``route_sources(routes, addrs) -> {(prefixlen, dst): src}``, over pyroute2 messages of
the main table (``get_routes(table=254)``) and of every IPv4 address. Dotted strings. Per unicast
route: its ``RTA_PREFSRC`` if it has one (``ip route ... src``); else the primary address of its
output interface whose subnet holds the gateway (or, for a link route, the destination), else the
interface's first primary address (the kernel's ``inet_select_addr``); routes without an output
interface (multipath, blackhole) or on an interface without an address are left out, and such a
destination then gets no binding (the kernel's own pick stands).
"""

from __future__ import annotations

import ipaddress

RTN_UNICAST = 1
IFA_F_SECONDARY = 0x01


def route_sources(routes, addrs) -> dict[tuple[int, str], str]:
    by_if: dict[int, list[ipaddress.IPv4Interface]] = {}
    for a in addrs:
        if a["flags"] & IFA_F_SECONDARY or a["scope"] != 0:
            continue
        by_if.setdefault(a["index"], []).append(
            ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
    out = {}
    for r in routes:
        if r["type"] != RTN_UNICAST:
            continue
        dst = r.get_attr("RTA_DST") or "0.0.0.0"
        key = (r["dst_len"], str(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False).network_address))
        prefsrc = r.get_attr("RTA_PREFSRC")
        if prefsrc:
            out[key] = prefsrc
            continue
        oif = r.get_attr("RTA_OIF")
        cands = by_if.get(oif, [])
        if not cands:
            continue
        via = r.get_attr("RTA_GATEWAY") or dst
        near = [c for c in cands if ipaddress.IPv4Address(via) in c.network]
        out[key] = str((near or cands)[0].ip)
    return out

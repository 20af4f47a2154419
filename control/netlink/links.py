"""Idempotent link plumbing with pyroute2: bridges, veth pairs into endpoint namespaces, addresses
and routes. Every ``ensure_*`` may be called again on a half-built state and finishes the job;
every ``remove_*`` tolerates a missing object. Errors name the device.

Host-side calls run in the agent's netns (the host); endpoint-side calls run through
``run_in_netns`` so they work for named and adopted (``/proc/PID/ns/net``) namespaces alike.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import Conflict, DatapathError
from . import rawlink
from .netns import run_in_netns


def _fail(obj: str, what: str, e: Exception) -> DatapathError:
    msg = getattr(e, "strerror", None) or str(e)
    return DatapathError(f"{what} {obj} failed: {msg}")


def link_index(ipr: IPRoute, name: str) -> int | None:
    """The ifindex of ``name`` in ``ipr``'s netns (the calling thread's: every IPRoute here is
    opened in the netns its thread is in), or None. if_nametoindex asks the kernel's name hash;
    pyroute2's lookups by name dump every link (O(links): 1,000 endpoints are 1,000 veths)."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def link_kind(ipr: IPRoute, index: int) -> str | None:
    (link,) = ipr.get_links(index)
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def ensure_bridge(ipr: IPRoute, name: str, mtu: int, address: str) -> int:
    """A bridge ``name`` with exactly ``address`` (CIDR) on it, MTU set, up. Returns its ifindex."""
    idx = link_index(ipr, name)
    try:
        if idx is None:
            ipr.link("add", ifname=name, kind="bridge")
            idx = link_index(ipr, name)
        elif link_kind(ipr, idx) != "bridge":
            raise Conflict(f"interface {name} already exists but is not a bridge")
        ipr.link("set", index=idx, mtu=mtu)
        iface = ipaddress.IPv4Interface(address)
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)}
        for addr, plen in have - {(str(iface.ip), iface.network.prefixlen)}:
            ipr.addr("del", index=idx, address=addr, prefixlen=plen)
        if (str(iface.ip), iface.network.prefixlen) not in have:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ipr.link("set", index=idx, state="up")
    except NetlinkError as e:
        raise _fail(name, "configuring bridge", e) from None
    return idx


def remove_link(ipr: IPRoute, name: str) -> None:
    idx = link_index(ipr, name)
    if idx is None:
        return
    try:
        ipr.link("del", index=idx)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise _fail(name, "removing", e) from None


def host_links(ipr: IPRoute, prefix: str | tuple[str, ...]) -> list[str]:
    """Names of links in the host netns starting with ``prefix`` (one or several; one dump)."""
    names = (l.get_attr("IFLA_IFNAME") for l in ipr.get_links())
    return sorted(n for n in names if n and n.startswith(prefix))


def set_hairpin(name: str, on: bool = True) -> None:
    """Let a bridge port send frames back out of itself (a container reaching its own published
    port). One raw RTM_SETLINK (pyroute2 0.9 has no AF_BRIDGE protinfo setter; iproute2's
    ``bridge link set`` dumps every link first, which grows with the endpoints)."""
    index = _index_of(name)
    if index is None:
        raise DatapathError(f"setting hairpin on {name} failed: no such interface")
    try:
        rawlink.set_bridge_port_hairpin(index, on)
    except OSError as e:
        raise DatapathError(f"setting hairpin on {name} failed: {e.strerror}") from None


SIOCETHTOOL = 0x8946
ETHTOOL_GGRO = 0x0000002b
ETHTOOL_SGRO = 0x0000002c


def _ethtool_value(ifname: str, cmd: int, value: int = 0) -> int:
    """One ETHTOOL_{G,S}* ioctl with a struct ethtool_value {u32 cmd; u32 data} (in this netns)."""
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, value))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    return struct.unpack("II", buf.raw[:8])[1]


def set_gro(netns_path: str | None, ifname: str, on: bool = True) -> None:
    """Turn GRO on (or off) on ``ifname`` in ``netns_path`` (None: this netns). On a veth this is
    what gives it a NAPI ring, which XDP_REDIRECT into its peer needs (technical notes D3)."""
    def _set():
        if bool(_ethtool_value(ifname, ETHTOOL_GGRO)) != on:
            _ethtool_value(ifname, ETHTOOL_SGRO, int(on))
    try:
        run_in_netns(netns_path, _set) if netns_path else _set()
    except OSError as e:
        raise DatapathError(f"setting GRO {'on' if on else 'off'} on {ifname} failed: {e.strerror}") from None


def ensure_veth(ipr: IPRoute, host_ifname: str, bridge_index: int | None, netns_path: str,
                ifname: str, mac: str, address: str, mtu: int, gateway: str | None) -> int:
    """A veth pair whose host end ``host_ifname`` is a port of ``bridge_index`` (if given) and whose
    other end is ``ifname`` inside ``netns_path`` with ``mac``, ``address`` (CIDR), ``mtu``, up, and
    a default route via ``gateway`` when one is given. Returns the host end's ifindex.

    A new pair is made in one request (MTU, master and up set on creation) and finished inside
    the namespace by one thread (rename and configure): every extra request and thread is paid
    per endpoint."""
    idx = link_index(ipr, host_ifname)
    if idx is not None and not run_in_netns(netns_path, _has_link, ifname):
        # Half-built (crash between create and move): start over.
        remove_link(ipr, host_ifname)
        idx = None
    tmp = None
    try:
        if idx is None:
            tmp = "dlp" + host_ifname[3:]
            remove_link(ipr, tmp)
            extra = {"master": bridge_index} if bridge_index is not None else {}
            ipr.link("add", ifname=host_ifname, kind="veth", mtu=mtu, state="up",
                     peer={"ifname": tmp, "mtu": mtu, "address": mac}, **extra)
            idx = link_index(ipr, host_ifname)
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                ipr.link("set", index=link_index(ipr, tmp), net_ns_fd=fd)
            finally:
                os.close(fd)
        else:
            (link,) = ipr.get_links(idx)
            if link.get_attr("IFLA_MTU") != mtu:
                ipr.link("set", index=idx, mtu=mtu)
            if bridge_index is not None and link.get_attr("IFLA_MASTER") != bridge_index:
                ipr.link("set", index=idx, master=bridge_index)
            ipr.link("set", index=idx, state="up")
    except NetlinkError as e:
        raise _fail(host_ifname, "creating veth", e) from None
    run_in_netns(netns_path, _rename_and_configure, tmp, ifname, mac, address, mtu, gateway)
    return idx


def _has_link(name: str) -> bool:
    return link_index(None, name) is not None


def _rename(old: str, new: str) -> None:
    with IPRoute() as ipr:
        _rename_with(ipr, old, new)


def _rename_with(ipr: IPRoute, old: str, new: str) -> None:
    idx = link_index(ipr, old)
    if link_index(ipr, new) is not None:
        raise Conflict(f"interface {new} already exists in the endpoint's network namespace")
    ipr.link("set", index=idx, ifname=new)


def _rename_and_configure(tmp: str | None, ifname: str, mac: str, address: str, mtu: int,
                          gateway: str | None) -> None:
    with IPRoute() as ipr:
        if tmp is not None:
            try:
                _rename_with(ipr, tmp, ifname)
            except NetlinkError as e:
                raise _fail(ifname, "renaming endpoint interface", e) from None
        _configure_with(ipr, ifname, mac, address, mtu, gateway)


def _configure_inside(ifname: str, mac: str, address: str, mtu: int, gateway: str | None) -> None:
    """Bring ``ifname`` to the wanted state, touching only what differs: a reconcile after an
    agent restart must not bounce a working interface (that would flush its routes)."""
    with IPRoute() as ipr:
        _configure_with(ipr, ifname, mac, address, mtu, gateway)


def _configure_with(ipr: IPRoute, ifname: str, mac: str, address: str, mtu: int, gateway: str | None) -> None:
    iface = ipaddress.IPv4Interface(address)
    idx = link_index(ipr, ifname)
    try:
        (link,) = ipr.get_links(idx)
        if link.get_attr("IFLA_ADDRESS") != mac.lower():
            ipr.link("set", index=idx, state="down")   # a new MAC only while down
            ipr.link("set", index=idx, address=mac)
        if link.get_attr("IFLA_MTU") != mtu:
            ipr.link("set", index=idx, mtu=mtu)
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)}
        want = (str(iface.ip), iface.network.prefixlen)
        for addr, plen in have - {want}:
            ipr.addr("del", index=idx, address=addr, prefixlen=plen)
        if want not in have:
            ipr.addr("add", index=idx, address=want[0], prefixlen=want[1])
        ipr.link("set", index=idx, state="up")
        lo = link_index(ipr, "lo")
        ipr.link("set", index=lo, state="up")
        if gateway:
            ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=idx)
    except NetlinkError as e:
        raise _fail(ifname, "configuring endpoint interface", e) from None


def remove_inside(netns_path: str, ifname: str) -> None:
    """Delete ``ifname`` inside an endpoint netns (its veth peer on the host goes with it)."""
    def _rm():
        with IPRoute() as ipr:
            remove_link(ipr, ifname)
    if os.path.exists(netns_path):
        run_in_netns(netns_path, _rm)


def host_routes(ipr: IPRoute) -> list[ipaddress.IPv4Network]:
    """IPv4 prefixes the host already routes (automatic subnets must avoid them, as Docker does)."""
    nets = []
    for r in ipr.get_routes(family=2, table=254):
        dst = r.get_attr("RTA_DST")
        if dst and r["dst_len"] > 0:
            nets.append(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
    return nets


def write_sysctl(path: str, value: str) -> None:
    """Write /proc/sys/<path> of the calling thread's netns (net.* sysctls are per netns)."""
    with open(os.path.join("/proc/sys", path.replace(".", "/")), "w") as f:
        f.write(value)


#: IFLA_MACVLAN_MODE values (uapi if_link.h: enum macvlan_mode)
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}


def ensure_macvlan(ipr: IPRoute, parent: str, tmp_name: str, mode: str, netns_path: str, ifname: str,
                   mac: str, address: str, mtu: int, gateway: str | None) -> int:
    """A macvlan sub-interface of host interface ``parent`` in ``mode``, living as ``ifname``
    inside ``netns_path`` with ``mac``, ``address`` (CIDR), ``mtu``, up, and a default route via
    ``gateway`` when one is given. It is created in the host netns as ``tmp_name`` and moved (a
    macvlan must be created where its parent is). Returns its ifindex inside the netns."""
    if not run_in_netns(netns_path, _has_link, ifname):
        parent_idx = link_index(ipr, parent)
        if parent_idx is None:
            raise DatapathError(f"creating macvlan on {parent} failed: the parent interface is gone")
        try:
            remove_link(ipr, tmp_name)      # half-built (crash between create and move)
            ipr.link("add", ifname=tmp_name, kind="macvlan", link=parent_idx,
                     macvlan_mode=MACVLAN_MODES[mode], mtu=mtu)
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                ipr.link("set", index=link_index(ipr, tmp_name), net_ns_fd=fd)
            finally:
                os.close(fd)
        except NetlinkError as e:
            remove_link(ipr, tmp_name)
            raise _fail(f"{ifname} on {parent} ({mode})", "creating macvlan", e) from None
        run_in_netns(netns_path, _rename, tmp_name, ifname)
    run_in_netns(netns_path, _configure_inside, ifname, mac, address, mtu, gateway)
    return run_in_netns(netns_path, _index_of, ifname)


def _index_of(name: str) -> int | None:
    """The ifindex of ``name`` in the calling thread's netns, or None."""
    return link_index(None, name)


def kind_supported(ipr: IPRoute, kind: str) -> tuple[bool, str]:
    """Does this kernel know link kind ``kind``? Asked by creating a link of that kind without the
    attributes it needs: a known kind refuses the request as invalid (EINVAL), an unknown one as
    not supported (EOPNOTSUPP). Nothing is created either way."""
    try:
        ipr.link("add", ifname="dlprobe0", kind=kind)
    except NetlinkError as e:
        if e.code == errno.EOPNOTSUPP:
            return False, f"this kernel has no {kind} support (CONFIG_{kind.upper()} is not set)"
        return True, f"the kernel knows {kind} links"
    remove_link(ipr, "dlprobe0")        # cannot happen for a kind that needs a parent; be safe
    return True, f"the kernel knows {kind} links"

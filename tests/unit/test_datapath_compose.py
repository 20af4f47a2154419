"""Choosing and composing a datapath: names map to parts, a requested datapath probes only its
own parts, and what a part cannot do is refused with NotSupported naming what is needed."""

import pytest

from dockline.control import datapath as dp
from dockline.control.config import HostConfig
from dockline.control.datapath import ebpf, kernel
from dockline.control.datapath.drivers import DRIVERS, driver_class
from dockline.control.errors import InvalidArgument, NotSupported


def test_names_map_to_parts():
    assert dp.parts_of("kernel") == ("kernel", "iptables")
    assert dp.parts_of("ebpf") == ("ebpf", "ebpf")
    assert dp.parts_of("kernel+ebpfnat") == ("kernel", "ebpf")
    assert dp.canonical_name(*dp.parts_of("ebpf+ebpfnat")) == "ebpf"
    with pytest.raises(InvalidArgument, match="unknown datapath 'fast'"):
        dp.parts_of("fast")


def test_a_requested_kernel_datapath_never_probes_ebpf(monkeypatch):
    def boom():
        raise AssertionError("the eBPF probe ran for a kernel datapath")
    monkeypatch.setattr(ebpf.loader, "probe", boom)
    monkeypatch.setattr(kernel, "probe_iptables", lambda: (True, "fake"))
    monkeypatch.setattr(kernel.KernelForwarding, "probe", staticmethod(lambda: (True, "fake")))
    monkeypatch.setattr(kernel.IptablesNat, "probe", staticmethod(lambda: (True, "fake")))
    monkeypatch.setattr(dp, "_probed", {})
    d = dp.select_datapath("kernel", HostConfig(name="unit"))
    assert (d.name, d.forwarding.name, d.nat.name) == ("kernel", "kernel", "iptables")
    assert dp.probe(cached=True)["ebpf"][0] is None        # reported as not probed, not probed


def test_ebpf_forwarding_with_iptables_nat_is_refused_by_name():
    with pytest.raises(InvalidArgument, match="ebpf forwarding needs ebpf NAT"):
        dp.select_datapath("ebpf+iptablesnat", HostConfig(name="unit"))


@pytest.mark.parametrize("call", [
    lambda n: n.check_nat(None), lambda n: n.apply_nat(None), lambda n: n.conntrack(10),
    lambda n: n.gc_conntrack(), lambda n: n.ct_pressure()])
def test_iptables_nat_declares_what_it_cannot_do(call):
    nat = kernel.IptablesNat(HostConfig(name="unit"))
    assert nat.nat_rules_supported is False
    with pytest.raises(NotSupported, match="needs the ebpf datapath or eBPF NAT .*--datapath kernel\\+ebpfnat"):
        call(nat)


def test_driver_registry_and_abilities():
    assert {"bridge", "macvlan", "ipvlan", "host", "null"} <= set(DRIVERS)
    assert driver_class("bridge").publishes_ports and not driver_class("macvlan").publishes_ports
    assert driver_class("bridge").masquerades and not driver_class("macvlan").masquerades
    assert not driver_class("host").attachable and driver_class("macvlan").attachable
    with pytest.raises(InvalidArgument, match="unknown driver 'overlay': choose from bridge, macvlan"):
        driver_class("overlay")
    assert driver_class("macvlan").normalize_options({"parent": "eth1"}) == {"parent": "eth1",
                                                                            "macvlan_mode": "bridge"}
    with pytest.raises(InvalidArgument, match="invalid macvlan mode 'l3'"):
        driver_class("macvlan").normalize_options({"parent": "eth1", "macvlan_mode": "l3"})


def test_macvlan_networks_get_no_nat_and_no_iptables_chains():
    from dockline.control.datapath import iptables_rules
    from dockline.control.model import Network
    from dockline.control.nat.managed import control_plane_chains
    br = Network(id="b" * 64, name="br", driver="bridge", subnet="10.1.0.0/24", gateway="10.1.0.1",
                 bridge="dl-bbbbbbbbbbbb")
    mv = Network(id="m" * 64, name="mv", driver="macvlan", subnet="10.2.0.0/24", gateway="10.2.0.1",
                 options={"parent": "eth1", "macvlan_mode": "bridge"})
    post = control_plane_chains([br, mv]).chains["DOCKLINE-POSTROUTING"]
    assert [r.to_text() for r in post] == ["-s 10.1.0.0/24 ! -o dl-bbbbbbbbbbbb -j MASQUERADE",
                                           "-o dl-bbbbbbbbbbbb -m addrtype --src-type LOCAL -j MASQUERADE"]
    text = iptables_rules.render([br, mv], [])
    assert "10.1.0.0/24" in text and "10.2.0.0/24" not in text

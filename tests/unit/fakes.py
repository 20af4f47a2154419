"""In-memory fakes of the datapath and of the endpoint sandbox, for driving the services without
root (tests/unit/test_services.py).

Both record what "the kernel" holds in plain dicts, so a test can compare the whole of it before
and after an operation. A shared ``Faults`` counts every mutating call and can make the n-th one
fail once (with DatapathError, as the kernel would refuse), which is how each step of a
multi-step operation gets its injected failure.
"""

from __future__ import annotations

import copy

from dockline.control.datapath.base import Datapath
from dockline.control.errors import DatapathError, DocklineError


class Faults:
    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at
        self.calls: list[str] = []

    def step(self, what: str) -> None:
        self.calls.append(what)
        if self.fail_at is not None and len(self.calls) - 1 == self.fail_at:
            raise DatapathError(f"injected failure at step {self.fail_at} ({what})")


class FakeDatapath(Datapath):
    """Every method of the composed datapath's facade, over dicts (no parts, no netlink)."""

    name = "fake"

    def __init__(self, host=None, faults: Faults | None = None, nat: bool = False):
        self.host = host
        self.faults = faults or Faults()
        self.kernel = {"networks": {}, "links": {}, "policy": None, "nat": ""}
        self._departing: list[str] = []
        self._nat = nat

    @classmethod
    def probe(cls):
        return True, "in memory"

    def host_routes(self):
        return []

    def validate_network(self, net, networks):
        pass

    def driver(self, net):
        from dockline.control.datapath.drivers import driver_class
        return driver_class(net.driver)

    def info(self):
        return {"name": self.name}

    def stats(self, state=None):
        return {"datapath": self.name}

    def setup_host(self):
        self.faults.step("setup_host")

    def teardown_host(self):
        self.faults.step("teardown_host")
        self.kernel["policy"] = None

    def ensure_network(self, net):
        self.faults.step(f"ensure_network {net.name}")
        if net.driver == "bridge":
            self.kernel["networks"][net.id] = (net.name, net.subnet, net.gateway)

    def remove_network(self, net):
        self.faults.step(f"remove_network {net.name}")
        self.kernel["networks"].pop(net.id, None)

    def ensure_attachment(self, net, ep, att, primary):
        self.faults.step(f"ensure_attachment {ep.name}/{net.name}")
        if net.id not in self.kernel["networks"]:
            raise DatapathError(f"no bridge for network {net.name}")
        self.kernel["links"][att.host_ifname] = (net.id, ep.id, att.ip, att.ifname, primary)

    def remove_attachment(self, net, ep, att, netns_going=False):
        self.faults.step(f"remove_attachment {ep.name}/{net.name}")
        if netns_going:          # the interface dies with the namespace: gone once it goes
            self._departing.append(att.host_ifname)
        else:
            self.kernel["links"].pop(att.host_ifname, None)

    def link_watch_fd(self):
        return None                 # the fake follows no interfaces

    def refresh_interfaces(self):
        self.faults.step("refresh_interfaces")
        return False

    def finish_removals(self):
        self.faults.step("finish_removals")
        for name in self._departing:
            self.kernel["links"].pop(name, None)
        self._departing = []

    def sync_policy(self, state, changes=None):
        self.faults.step("sync_policy")
        ports = sorted((p.proto, p.host_ip, p.host_port, state.port_target(p).ip, p.container_port)
                       for p in state.ports if state.port_target(p) is not None)
        self.kernel["policy"] = (tuple(sorted(n.id for n in state.networks)), tuple(ports))

    def remove_orphans(self, state):
        want = {a.host_ifname for a in state.attachments}
        gone = [k for k in self.kernel["links"] if k not in want]
        for k in gone:
            del self.kernel["links"][k]
        nets = {n.id for n in state.networks}
        for k in [k for k in self.kernel["networks"] if k not in nets]:
            del self.kernel["networks"][k]
        return gone

    @property
    def nat_rules_supported(self):
        return self._nat

    def _refuse(self):
        from dockline.control.datapath.base import _nat_needed
        raise _nat_needed("nat rules", "iptables")

    def check_nat(self, state):
        if not self._nat:
            self._refuse()

    def apply_nat(self, state):
        if not self._nat:
            self._refuse()
        self.faults.step("apply_nat")
        self.kernel["nat"] = state.nat_rules
        return {"rules": state.nat_rules.count("\n-A ")}

    def conntrack(self, limit=1000):
        if not self._nat:
            self._refuse()
        return []

    def gc_conntrack(self):
        if not self._nat:
            self._refuse()
        return {}

    def ct_pressure(self):
        return {}

    def snapshot(self) -> dict:
        return copy.deepcopy(self.kernel)


class FakeSandbox:
    """Network namespaces and their resolv.conf files, in memory."""

    def __init__(self, faults: Faults):
        self.faults = faults
        self.namespaces: dict[str, str] = {}          # name -> resolv.conf text ("" none yet)
        self.adopted = {"/proc/4242/ns/net"}           # paths that "exist" for --netns

    def path(self, name):
        return f"/run/netns/{name}"

    def exists(self, name):
        return name in self.namespaces

    def path_exists(self, path):
        return path in self.adopted or any(self.path(n) == path for n in self.namespaces)

    def resolve(self, spec):
        if spec in self.adopted:
            return spec
        from dockline.control.errors import NotFound
        raise NotFound(f"no network namespace {spec}")

    def ensure(self, name):
        if name not in self.namespaces:
            self.faults.step(f"netns add {name}")
            self.namespaces[name] = ""

    def remove(self, name):
        self.faults.step(f"netns rm {name}")
        self.namespaces.pop(name, None)

    def remove_many(self, names):
        errors = []
        for name in names:
            try:
                self.remove(name)
            except DocklineError as e:
                errors.append(str(e))
        return errors

    def list(self, prefix):
        return [n for n in self.namespaces if n.startswith(prefix)]

    def write_resolv_conf(self, name, text):
        self.faults.step(f"resolv.conf {name}")
        self.namespaces[name] = text

    def remove_interface(self, netns_path, ifname):
        self.faults.step(f"remove {ifname} in {netns_path}")

    def snapshot(self) -> dict:
        return dict(self.namespaces)

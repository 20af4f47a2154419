"""The iptables-compatible NAT front end end to end, on the eBPF backend: rules given with
``dockline iptables -t nat`` and ``dockline nat import`` translate real traffic; ``nat save``
round-trips; bad input is refused by name with nothing applied; conntrack is visible and its GC
removes expired flows; the agent's own chains are listed like Docker's and protected.

      outside 198.18.0.2 ──── 198.18.0.1 uplink0   host (agent)
                                       │ bridge n1
                                      web 10.x (servers on 80, 81, 53/udp)
"""

import json
import subprocess
import time

import pytest

from dockline.control.sim.nstools import Server, open_stream, request
from dockline.control.sim.simhost import DOCKLINE, HOST_IP, OUTSIDE_IP

pytestmark = pytest.mark.root


@pytest.fixture
def nat_host(tmp_path):
    from dockline.control.sim.simhost import SimHost
    h = SimHost(tmp_path, datapath="ebpf", extra_args=["--ct-gc-interval", "0"])
    try:
        h.start_agent()
        assert h.call("info")["datapath"]["name"] == "ebpf"
        h.call("network_create", name="n1")
        h.call("endpoint_create", name="web", network="n1")
        ns = h.ep_ns("web")
        h.servers = [Server(ns, 80), Server(ns, 81), Server(ns, 53, "udp")]
        h.web_ip = h.call("inspect", ref="web")["networks"]["n1"]["ip"]
        yield h
    finally:
        for s in getattr(h, "servers", []):
            s.close()
        h.cleanup()


def ipt(h, *args):
    return h.cli("iptables", *args)


def nat_import(h, text: str):
    """``dockline nat import -`` with ``text`` on stdin."""
    return subprocess.run(DOCKLINE + ["--host", h.name, "nat", "import", "-"], input=text, env=h.env,
                          capture_output=True, text=True, timeout=60)


def save(h) -> str:
    r = h.cli("nat", "save")
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_dnat_rule_added_with_iptables_syntax_translates_traffic(nat_host):
    h = nat_host
    assert request(h.out_ns, HOST_IP, 9000, timeout=1) is None
    r = ipt(h, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9000", "-j", "DNAT",
            "--to-destination", f"{h.web_ip}:80")
    assert r.returncode == 0, r.stderr
    seen = request(h.out_ns, HOST_IP, 9000)
    assert seen is not None and seen.split(":")[0] == OUTSIDE_IP
    # and it is gone again after -D
    assert ipt(h, "-t", "nat", "-D", "PREROUTING", "1").returncode == 0
    assert request(h.out_ns, HOST_IP, 9000, timeout=1) is None


def test_generic_rule_with_source_match_and_user_chain(nat_host):
    h = nat_host
    for args in (["-N", "WEB"],
                 ["-A", "WEB", "-s", "10.255.0.0/16", "-j", "RETURN"],
                 ["-A", "WEB", "-p", "tcp", "-m", "multiport", "--dports", "9100,9200:9210", "-j", "DNAT",
                  "--to-destination", f"{h.web_ip}:81"],
                 ["-A", "PREROUTING", "-i", "uplink0", "-j", "WEB"]):
        r = ipt(h, "-t", "nat", *args)
        assert r.returncode == 0, (args, r.stderr)
    assert request(h.out_ns, HOST_IP, 9100) is not None
    assert request(h.out_ns, HOST_IP, 9205) is not None
    assert request(h.out_ns, HOST_IP, 9211, timeout=1) is None


def test_container_egress_is_masqueraded_to_the_uplink_address(nat_host):
    h = nat_host
    out = Server(h.out_ns, 7000)
    try:
        seen = request(h.ep_ns("web"), OUTSIDE_IP, 7000)
        assert seen is not None and seen.split(":")[0] == HOST_IP       # dockline's own masquerade
    finally:
        out.close()


def test_import_then_save_round_trips_and_listing_shows_managed_chains(nat_host):
    h = nat_host
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            ":POSTROUTING ACCEPT [0:0]\n:SVC - [0:0]\n"
            "-A PREROUTING -m addrtype --dst-type LOCAL -j SVC\n"
            f"-A SVC -p udp -m udp --dport 5300 -j DNAT --to-destination {h.web_ip}:53\n"
            f"-A SVC -p tcp -m tcp --dport 9300 -j DNAT --to-destination {h.web_ip}:80\n"
            "COMMIT\n")
    r = nat_import(h, text)
    assert r.returncode == 0, r.stderr
    assert "imported 3 rules in 5 chains" in r.stdout
    assert save(h) == text
    assert request(h.out_ns, HOST_IP, 5300, "udp") is not None
    assert request(h.out_ns, HOST_IP, 9300) is not None
    listing = ipt(h, "-t", "nat", "-S")
    assert listing.returncode == 0
    assert "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKLINE" in listing.stdout
    assert "-j SVC" in listing.stdout
    # the agent's chains are its own
    r = ipt(h, "-t", "nat", "-A", "DOCKLINE", "-p", "tcp", "--dport", "1", "-j", "ACCEPT")
    assert r.returncode == 2 and "managed by dockline" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["-t", "nat", "-A", "PREROUTING", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"], '"-m conntrack"'),
    (["-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE", "--random"], '"--random"'),
    (["-t", "filter", "-A", "FORWARD", "-j", "ACCEPT"], "only the nat table"),
    (["-t", "nat", "-A", "NOPE", "-j", "ACCEPT"], "NOPE"),
    (["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "70000", "-j", "ACCEPT"], "70000"),
])
def test_bad_rules_are_refused_by_name_and_change_nothing(nat_host, args, needle):
    h = nat_host
    before = save(h)
    r = ipt(h, *args)
    assert r.returncode in (2, 3), r
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert save(h) == before


def test_a_rule_set_beyond_the_datapath_limits_is_refused_whole(nat_host):
    h = nat_host
    before = save(h)
    # jumps end classifiers: 300 jumps to a chain that can fall through put 600 visits on one path
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]", ":U - [0:0]", "-A U -p udp -j ACCEPT"]
    lines += [f"-A PREROUTING -s 10.{i // 200}.{i % 200}.0/24 -p tcp -j U" for i in range(300)]
    lines.append("COMMIT")
    r = nat_import(h, "\n".join(lines) + "\n")
    assert r.returncode == 2 and "rule visits" in r.stderr, r.stderr
    assert save(h) == before


def test_conntrack_lists_flows_and_gc_removes_expired_ones(nat_host):
    h = nat_host
    ipt(h, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9400", "-j", "DNAT",
        "--to-destination", f"{h.web_ip}:80")
    s = open_stream(h.out_ns, HOST_IP, 9400)
    try:
        s.sendall(b"x")
        assert s.recv(100)
        r = h.cli("--json", "nat", "conntrack")
        flows = json.loads(r.stdout)["flows"]
        mine = [f for f in flows if f["orig"].endswith(f"{HOST_IP}:9400")]
        assert len(mine) == 1 and mine[0]["state"] == "established" and mine[0]["kind"] == "dnat"
        assert mine[0]["translated"].endswith(f"{h.web_ip}:80")
        # an established flow is not expired: GC keeps it
        gc = json.loads(h.cli("--json", "nat", "gc").stdout)
        assert gc["deleted"] == 0
    finally:
        s.close()
    st = json.loads(h.cli("--json", "stats").stdout)
    assert st["nat"]["ct_new"] >= 1 and st["conntrack"]["entries"] >= 2


def test_rst_closes_the_flow_and_it_expires(nat_host):
    """After a reset the pair is CLOSED with the close timeout; the GC removes it once expired
    (the GC clock is checked by making the agent collect again after the timeout)."""
    h = nat_host
    ipt(h, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9500", "-j", "DNAT",
        "--to-destination", f"{h.web_ip}:80")
    import socket
    import struct
    s = open_stream(h.out_ns, HOST_IP, 9500)
    s.sendall(b"x")
    s.recv(100)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()                       # RST
    time.sleep(0.3)
    flows = json.loads(h.cli("--json", "nat", "conntrack").stdout)["flows"]
    mine = [f for f in flows if f["orig"].endswith(f"{HOST_IP}:9500")]
    assert mine and mine[0]["state"] == "closed" and mine[0]["expires_in_s"] <= 10
    time.sleep(max(0.0, mine[0]["expires_in_s"]) + 0.5)
    gc = json.loads(h.cli("--json", "nat", "gc").stdout)
    assert gc["deleted"] >= 2
    flows = json.loads(h.cli("--json", "nat", "conntrack").stdout)["flows"]
    assert not [f for f in flows if f["orig"].endswith(f"{HOST_IP}:9500")]


def test_kernel_backend_refuses_the_front_end(tmp_path):
    from dockline.control.sim.simhost import SimHost
    h = SimHost(tmp_path, datapath="kernel")
    try:
        h.start_agent()
        r = h.cli("iptables", "-t", "nat", "-S")
        assert r.returncode == 2 and "needs the ebpf datapath or eBPF NAT" in r.stderr
    finally:
        h.cleanup()


def test_removing_a_rule_keeps_live_flows_and_refuses_new_ones(nat_host):
    """Documented behaviour: like netfilter, a translation is decided when a flow starts; deleting
    the rule leaves established flows translated until they end or expire, new flows are not."""
    h = nat_host
    ipt(h, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9600", "-j", "DNAT",
        "--to-destination", f"{h.web_ip}:80")
    s = open_stream(h.out_ns, HOST_IP, 9600)
    try:
        s.sendall(b"one")
        assert s.recv(100)
        assert ipt(h, "-t", "nat", "-F", "PREROUTING").returncode == 0
        s.sendall(b"two")
        assert s.recv(100)                                     # the live flow still works
        assert request(h.out_ns, HOST_IP, 9600, timeout=1) is None   # a new one is not translated
    finally:
        s.close()


def test_removing_an_endpoint_flushes_its_flows(nat_host):
    h = nat_host
    h.call("endpoint_create", name="udp", network="n1", ports=["5400:53/udp"])
    srv = Server(h.ep_ns("udp"), 53, "udp")
    try:
        assert request(h.out_ns, HOST_IP, 5400, "udp") is not None
        ip = h.call("inspect", ref="udp")["networks"]["n1"]["ip"]
        flows = json.loads(h.cli("--json", "nat", "conntrack").stdout)["flows"]
        assert [f for f in flows if ip in f["translated"]]
    finally:
        srv.close()
    h.call("endpoint_rm", ref="udp")
    flows = json.loads(h.cli("--json", "nat", "conntrack").stdout)["flows"]
    assert not [f for f in flows if ip in f["translated"] or ip in f["orig"]]


def tool(h, name: str, *args, stdin: str | None = None):
    """``dockline iptables-restore|iptables-save ARGS`` (the drop-ins) with ``stdin``."""
    return subprocess.run(DOCKLINE + ["--host", h.name, name, *args], input=stdin, env=h.env,
                          capture_output=True, text=True, timeout=60)


def test_iptables_restore_and_save_drop_ins(nat_host, tmp_path):
    h = nat_host
    table = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
             ":POSTROUTING ACCEPT [0:0]\n:SVC - [0:0]\n-A PREROUTING -j SVC\n"
             f"-A SVC -p tcp -m tcp --dport 9400 -j DNAT --to-destination {h.web_ip}:80\nCOMMIT\n")
    r = tool(h, "iptables-restore", "-T", "nat", stdin=table)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert request(h.out_ns, HOST_IP, 9400) is not None
    # --noflush adds to the table; the declared chain SVC is flushed and refilled, as iptables does
    more = f"*nat\n:SVC - [0:0]\n-A SVC -p tcp -m tcp --dport 9401 -j DNAT --to-destination {h.web_ip}:81\nCOMMIT\n"
    path = tmp_path / "more.rules"
    path.write_text(more)
    r = tool(h, "iptables-restore", "--noflush", str(path))
    assert r.returncode == 0, r.stderr
    assert request(h.out_ns, HOST_IP, 9401) is not None
    assert request(h.out_ns, HOST_IP, 9400, timeout=1) is None
    # --test checks without applying; bad input names its line and changes nothing
    before = save(h)
    assert tool(h, "iptables-restore", "--test", stdin=table).returncode == 0
    assert save(h) == before
    r = tool(h, "iptables-restore", "-n", stdin="*nat\n-A SVC -m conntrack --ctstate NEW -j ACCEPT\nCOMMIT\n")
    assert r.returncode == 2 and r.stderr.strip().startswith("Error: line 2:") and "conntrack" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert tool(h, "iptables-restore", "-T", "filter", stdin=table).returncode != 0
    assert save(h) == before
    # iptables-save prints what iptables-save prints, which both restores take back
    r = tool(h, "iptables-save", "-t", "nat")
    assert r.returncode == 0, r.stderr
    body = [ln for ln in r.stdout.splitlines() if not ln.startswith("#")]
    assert "\n".join(body) + "\n" == before
    assert r.stdout.startswith("# Generated by dockline iptables-save") and "# Completed on" in r.stdout
    real = subprocess.run(["unshare", "-n", "iptables-restore", "--test"], input=r.stdout, capture_output=True,
                          text=True, timeout=30)
    assert real.returncode == 0, real.stderr
    assert tool(h, "iptables-restore", stdin=r.stdout).returncode == 0
    assert save(h) == before


def test_interface_wildcards_and_interfaces_that_appear_later(nat_host):
    """-i PREFIX+ matches by prefix, as iptables does; a rule naming an interface that does not
    exist yet (exactly or by prefix) starts to match when it appears, and stops when it goes."""
    from dockline.control.netlink import netns
    from dockline.control.sim.nstools import link_namespaces, sh
    h = nat_host
    late_ns = f"{h.tag}-late"
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            f"-A PREROUTING -i upl+ -p tcp -m tcp --dport 9500 -j DNAT --to-destination {h.web_ip}:80\n"
            f"-A PREROUTING ! -i upl+ -p tcp -m tcp --dport 9501 -j DNAT --to-destination {h.web_ip}:80\n"
            f"-A PREROUTING -i late0 -p tcp -m tcp --dport 9502 -j DNAT --to-destination {h.web_ip}:81\n"
            f"-A PREROUTING -i lat+ -p tcp -m tcp --dport 9503 -j DNAT --to-destination {h.web_ip}:80\nCOMMIT\n")
    assert nat_import(h, text).returncode == 0
    assert request(h.out_ns, HOST_IP, 9500) is not None          # uplink0 is upl+
    assert request(h.out_ns, HOST_IP, 9501, timeout=1) is None   # ... so ! -i upl+ is not
    try:
        netns.ensure_netns(late_ns)
        link_namespaces(h.host_ns, "late0", "198.19.5.1/24", late_ns, "l0", "198.19.5.2/24")

        def late(port):
            return request(late_ns, "198.19.5.1", port, timeout=1)
        deadline = time.monotonic() + 10
        while late(9502) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert late(9502) is not None                             # -i late0: it exists now
        assert late(9503) is not None                             # -i lat+
        assert late(9501) is not None                             # ! -i upl+
        assert late(9500) is None                                 # -i upl+ is not late0
        sh(h.host_ns, "ip", "link", "set", "late0", "name", "other0", check=True)
        sh(h.host_ns, "ip", "link", "set", "other0", "up", check=True)
        deadline = time.monotonic() + 10
        while late(9502) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert late(9502) is None and late(9503) is None          # renamed: neither names it now
        assert late(9501) is not None
    finally:
        netns.remove_netns(late_ns)

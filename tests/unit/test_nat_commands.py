"""``iptables -t nat ...`` commands applied to a Ruleset: edge cases, errors, exact ``-L``/``-S``
output, and a differential run of the same command sequences against real iptables inside a
throwaway network namespace."""

import os
import shlex
import shutil
import subprocess

import pytest

from dockline.control.errors import Conflict, InvalidArgument, NotFound
from dockline.control.nat import Rule, Ruleset, apply, parse_save

from .test_nat_parser import CORPUS


def run(rs, cmdline):
    """Apply one command given as a shell-like string (after ``iptables``)."""
    return apply(rs, shlex.split(cmdline))


def run_all(rs, *cmdlines):
    for c in cmdlines:
        rs, _ = run(rs, c)
    return rs


def spec_lines(rs, chain=None):
    return run(rs, "-t nat -S" + (f" {chain}" if chain else ""))[1].splitlines()


@pytest.fixture
def docker():
    return parse_save(CORPUS["docker"])[0]


# -- basic contract -----------------------------------------------------------------------------

def test_apply_never_mutates_its_input(docker):
    before = docker.save()
    new, out = run(docker, "-t nat -A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080")
    assert out == ""
    assert docker.save() == before
    assert new.chains["PREROUTING"][-1].to_text() == "-p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080"
    new2, _ = run(docker, "-t nat -F")
    assert docker.save() == before and new2.save() == CORPUS["empty"].replace("COMMIT", ":DOCKER - [0:0]\nCOMMIT")


@pytest.mark.parametrize("cmdline", ["-A PREROUTING -j ACCEPT", "-t filter -A FORWARD -j ACCEPT",
                                     "-t mangle -L", "--table raw -S", "-L -t", "-t filter -A",
                                     "-A FORWARD -j ACCEPT -t filter", "-t nat -t filter -L", "--table=filter -L"])
def test_only_the_nat_table(cmdline):
    with pytest.raises(InvalidArgument, match=r"^only the nat table is supported \(-t nat\)$"):
        run(Ruleset(), cmdline)


@pytest.mark.parametrize("cmdline,message", [
    ("-t nat", "no command given"),
    ("-t nat -A PREROUTING -j ACCEPT -D PREROUTING 1", "only one command per call (got -A and -D)"),
    ("-t nat -L -S", "only one command per call (got -L and -S)"),
    ("-t nat -A", 'option "-A" needs a chain name'),
    ("-t nat -A -j ACCEPT", 'option "-A" needs a chain name'),
    ("-t nat -R PREROUTING", 'option "-R" needs a chain name and a rule number'),
    ("-t nat -P PREROUTING", 'option "-P" needs a chain name and a policy'),
    ("-t nat -E DOCKER OTHER", 'unsupported command "-E"'),
    ("-t nat -Z", 'unsupported command "-Z"'),
    ("-t nat -F PREROUTING extra", 'unexpected argument "extra" for -F'),
    ("-t nat -L PREROUTING x", 'invalid rule number "x"'),
    ("-t nat -I PREROUTING 0 -j ACCEPT", 'invalid rule number "0"'),
    ("-t nat -I PREROUTING x -j ACCEPT", 'invalid rule number "x"'),
    ("-t nat -D PREROUTING 0", 'invalid rule number "0"'),
    ("-t nat -D PREROUTING 1 -j ACCEPT", 'unexpected argument "-j" for -D'),
    ("-t nat -A PREROUTING -m conntrack --ctstate NEW -j ACCEPT", 'unsupported match "-m conntrack"'),
    ("-t nat -A POSTROUTING -j MASQUERADE --random", 'unsupported option "--random" for target MASQUERADE'),
    ("-t nat -A POSTROUTING -i eth0 -j MASQUERADE", "-i is not allowed in chain POSTROUTING"),
    ("-t nat -A PREROUTING -j SNAT --to-source 1.2.3.4", "SNAT is not allowed in chain PREROUTING"),
    ("-t nat -P PREROUTING DROP", 'unsupported policy "DROP" (the nat table only allows ACCEPT)'),
    ("-t nat -P DOCKER ACCEPT", "cannot set the policy of user chain DOCKER"),
    ("-t nat -N DNAT", 'chain name "DNAT" clashes with a target name'),
    ("-t nat -N LOG", 'chain name "LOG" clashes with a target name'),
    ("-t nat -N abcdefghijklmnopqrstuvwxyz012", 'chain name "abcdefghijklmnopqrstuvwxyz012" too long'),
    ("-t nat -N '-foo'", 'option "-N" needs a chain name'),
    ("-t nat -N 'a b'", 'chain name "a b" contains whitespace'),
    ("-t nat -X PREROUTING", "cannot delete built-in chain PREROUTING"),
    ("-t nat -A DOCKER -j DOCKER", "jump loop: DOCKER -> DOCKER"),
    ("-t nat -A POSTROUTING -j DOCKER", 'DNAT in chain "DOCKER" is reachable from POSTROUTING'),
])
def test_invalid_commands(docker, cmdline, message):
    with pytest.raises(InvalidArgument) as e:
        run(docker, cmdline)
    assert message in e.value.message


@pytest.mark.parametrize("cmdline,message", [
    ("-t nat -A NOPE -j ACCEPT", 'chain "NOPE" does not exist'),
    ("-t nat -A PREROUTING -j NOPE", 'chain "NOPE" does not exist (jump target)'),
    ("-t nat -F NOPE", 'chain "NOPE" does not exist'),
    ("-t nat -X NOPE", 'chain "NOPE" does not exist'),
    ("-t nat -L NOPE", 'chain "NOPE" does not exist'),
    ("-t nat -S NOPE", 'chain "NOPE" does not exist'),
    ("-t nat -C NOPE -j ACCEPT", 'chain "NOPE" does not exist'),
    ("-t nat -C PREROUTING -j ACCEPT", "no matching rule in chain PREROUTING"),
    ("-t nat -D PREROUTING -j ACCEPT", "no matching rule in chain PREROUTING"),
    ("-t nat -D PREROUTING 2", "rule number 2 does not exist in chain PREROUTING"),
    ("-t nat -R DOCKER 3 -j RETURN", "rule number 3 does not exist in chain DOCKER"),
    ("-t nat -I PREROUTING 3 -j ACCEPT", "index of insertion too big"),
    ("-t nat -P NOPE ACCEPT", 'chain "NOPE" does not exist'),
])
def test_not_found(docker, cmdline, message):
    with pytest.raises(NotFound) as e:
        run(docker, cmdline)
    assert message in e.value.message and e.value.exit_code == 3


@pytest.mark.parametrize("cmdline,message", [
    ("-t nat -N DOCKER", 'chain "DOCKER" already exists'),
    ("-t nat -N PREROUTING", 'chain "PREROUTING" already exists'),
    ("-t nat -X DOCKER", 'chain "DOCKER" is not empty'),
    ("-t nat -X", 'chain "DOCKER" is not empty'),
])
def test_conflicts(docker, cmdline, message):
    with pytest.raises(Conflict) as e:
        run(docker, cmdline)
    assert message in e.value.message and e.value.exit_code == 4


# -- rule positions -----------------------------------------------------------------------------

def test_insert_delete_replace_positions():
    rs = run_all(Ruleset(), "-t nat -A PREROUTING -s 1.1.1.1 -j ACCEPT", "-t nat -A PREROUTING -s 2.2.2.2 -j ACCEPT")
    rs = run_all(rs, "-t nat -I PREROUTING -s 0.0.0.0/32 -j ACCEPT")       # default position 1
    rs = run_all(rs, "-t nat -I PREROUTING 4 -s 3.3.3.3 -j ACCEPT")        # one past the end is allowed
    rs = run_all(rs, "-t nat -I PREROUTING 2 -s 9.9.9.9 -j ACCEPT")
    srcs = [str(r.src.network_address) for r in rs.chains["PREROUTING"]]
    assert srcs == ["0.0.0.0", "9.9.9.9", "1.1.1.1", "2.2.2.2", "3.3.3.3"]
    rs = run_all(rs, "-t nat -D PREROUTING 2", "-t nat -R PREROUTING 1 -s 8.8.8.8 -j RETURN")
    assert spec_lines(rs, "PREROUTING") == [
        "-P PREROUTING ACCEPT", "-A PREROUTING -s 8.8.8.8/32 -j RETURN", "-A PREROUTING -s 1.1.1.1/32 -j ACCEPT",
        "-A PREROUTING -s 2.2.2.2/32 -j ACCEPT", "-A PREROUTING -s 3.3.3.3/32 -j ACCEPT"]


def test_delete_by_spec_removes_first_equal_rule_only():
    rs = run_all(Ruleset(), "-t nat -N X", "-t nat -A X -j ACCEPT", "-t nat -A X -j RETURN", "-t nat -A X -j ACCEPT")
    rs = run_all(rs, "-t nat -D X -j ACCEPT")
    assert spec_lines(rs, "X") == ["-N X", "-A X -j RETURN", "-A X -j ACCEPT"]


def test_delete_and_check_by_normalised_spec(docker):
    """-C/-D compare the normalised rule: spelling differences that iptables-save erases don't matter."""
    spec = "! -i docker0 -p 6 --destination-port 8080 -j DNAT --to-destination 172.17.0.2:80-80"
    assert run(docker, f"-t nat -C DOCKER {spec}") == (docker, "")
    rs, _ = run(docker, f"-t nat -D DOCKER {spec}")
    assert spec_lines(rs, "DOCKER") == ["-N DOCKER", "-A DOCKER -i docker0 -j RETURN"]
    with pytest.raises(NotFound):     # a different match order is a different rule, as in iptables-nft
        run(docker, "-t nat -C DOCKER -p tcp -m comment --comment x --dport 1 -j ACCEPT")


def test_check_reports_presence_without_change(docker):
    new, out = run(docker, "-t nat -C PREROUTING -m addrtype --dst-type LOCAL -j DOCKER")
    assert out == "" and new == docker


# -- chains -------------------------------------------------------------------------------------

def test_new_chain_flush_and_delete(docker):
    rs = run_all(docker, "-t nat -N ZZZ", "-t nat -N AAA", "-t nat -A ZZZ -j RETURN")
    assert rs.user_chains() == ["DOCKER", "ZZZ", "AAA"]            # creation order
    assert [l for l in spec_lines(rs) if l.startswith("-N")] == ["-N AAA", "-N DOCKER", "-N ZZZ"]  # sorted
    with pytest.raises(Conflict, match='chain "ZZZ" is not empty'):
        run(rs, "-t nat -X ZZZ")
    rs = run_all(rs, "-t nat -F ZZZ")
    assert rs.chains["ZZZ"] == [] and rs.chains["DOCKER"] != []    # -F CHAIN flushes only that chain
    rs = run_all(rs, "-t nat -X ZZZ")
    assert rs.user_chains() == ["DOCKER", "AAA"]


def test_delete_referenced_chain_is_a_conflict(docker):
    rs = run_all(docker, "-t nat -F DOCKER")
    with pytest.raises(Conflict) as e:
        run(rs, "-t nat -X DOCKER")
    assert e.value.message == 'chain "DOCKER" is in use: jumped to from PREROUTING, OUTPUT'


def test_delete_all_chains_is_all_or_nothing():
    rs = run_all(Ruleset(), "-t nat -N A", "-t nat -N B", "-t nat -N C", "-t nat -A PREROUTING -j B")
    with pytest.raises(Conflict, match='chain "B" is in use'):
        run(rs, "-t nat -X")
    rs = run_all(rs, "-t nat -F PREROUTING", "-t nat -X")
    assert rs.user_chains() == []


def test_user_chain_jumps_and_reachability():
    rs = run_all(Ruleset(), "-t nat -N A", "-t nat -N B", "-t nat -A A -j B",
                 "-t nat -A B -j DNAT --to-destination 10.0.0.1", "-t nat -A PREROUTING -j A")
    with pytest.raises(InvalidArgument, match='DNAT in chain "B" is reachable from POSTROUTING'):
        run(rs, "-t nat -A POSTROUTING -j A")
    with pytest.raises(InvalidArgument, match="jump loop: A -> B -> A"):
        run(rs, "-t nat -A B -j A")
    with pytest.raises(InvalidArgument, match='MASQUERADE in chain "B" is reachable from PREROUTING'):
        run(rs, "-t nat -A B -j MASQUERADE")


def test_policy_accept_is_a_no_op(docker):
    assert run(docker, "-t nat -P POSTROUTING ACCEPT") == (docker, "")


def test_flags_and_long_forms(docker):
    rs, out = apply(docker, ["--table", "nat", "--append", "PREROUTING", "--protocol", "udp",
                             "--destination-port", "53", "--jump", "REDIRECT", "--to-ports", "5353", "-w", "5",
                             "--wait", "-W", "100", "-n", "-v", "-x"])
    assert out == "" and rs.chains["PREROUTING"][-1].to_text() == "-p udp -m udp --dport 53 -j REDIRECT --to-ports 5353"
    rs, _ = apply(rs, ["-tnat", "--delete", "PREROUTING", "2"])
    assert len(rs.chains["PREROUTING"]) == 1
    for argv in (["-t", "nat", "-nvL"], ["-t", "nat", "--list", "--numeric", "--verbose"], ["-nvL", "-t", "nat"]):
        assert apply(rs, argv)[1] == apply(rs, ["-t", "nat", "-L", "-n", "-v"])[1]


def test_rule_option_values_are_not_read_as_commands():
    rs, _ = run(Ruleset(), "-t nat -A PREROUTING -m comment --comment -L -j ACCEPT")
    assert rs.chains["PREROUTING"] == [Rule(comment="-L", target="ACCEPT")]
    rs, _ = run(Ruleset(), "-t nat -A PREROUTING -m comment --comment -nvL -j ACCEPT")
    assert rs.chains["PREROUTING"][0].comment == "-nvL"


# -- listing ------------------------------------------------------------------------------------

DOCKER_LIST = """\
Chain PREROUTING (policy ACCEPT)
target     prot opt source               destination         
DOCKER     0    --  0.0.0.0/0            0.0.0.0/0            ADDRTYPE match dst-type LOCAL

Chain INPUT (policy ACCEPT)
target     prot opt source               destination         

Chain OUTPUT (policy ACCEPT)
target     prot opt source               destination         
DOCKER     0    --  0.0.0.0/0           !127.0.0.0/8          ADDRTYPE match dst-type LOCAL

Chain POSTROUTING (policy ACCEPT)
target     prot opt source               destination         
MASQUERADE  0    --  172.17.0.0/16        0.0.0.0/0           
MASQUERADE  6    --  172.17.0.2           172.17.0.2           tcp dpt:80

Chain DOCKER (2 references)
target     prot opt source               destination         
RETURN     0    --  0.0.0.0/0            0.0.0.0/0           
DNAT       6    --  0.0.0.0/0            0.0.0.0/0            tcp dpt:8080 to:172.17.0.2:80
"""

DOCKER_LIST_V = """\
Chain DOCKER (2 references)
num      pkts      bytes target     prot opt in     out     source               destination         
1           0        0 RETURN     0    --  docker0 *       0.0.0.0/0            0.0.0.0/0           
2           0        0 DNAT       6    --  !docker0 *       0.0.0.0/0            0.0.0.0/0            tcp dpt:8080 to:172.17.0.2:80
"""


def test_list_output_shape(docker):
    assert run(docker, "-t nat -L -n")[1] == DOCKER_LIST
    assert run(docker, "-t nat -L DOCKER -n -v -x --line-numbers")[1] == DOCKER_LIST_V
    assert run(docker, "-t nat -L DOCKER 2")[1] == (
        "DNAT       6    --  0.0.0.0/0            0.0.0.0/0            tcp dpt:8080 to:172.17.0.2:80\n")
    assert run(docker, "-t nat -L DOCKER 9")[1] == ""


def test_list_rules_output_shape(docker):
    assert run(docker, "-t nat -S")[1] == (
        "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n-N DOCKER\n"
        + "".join(l + "\n" for l in CORPUS["docker"].splitlines() if l.startswith("-A")))
    assert run(docker, "-t nat -S DOCKER")[1] == (
        "-N DOCKER\n-A DOCKER -i docker0 -j RETURN\n"
        "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n")
    assert run(docker, "-t nat -S INPUT")[1] == "-P INPUT ACCEPT\n"
    assert run(docker, "-t nat -S DOCKER 1")[1] == "-A DOCKER -i docker0 -j RETURN\n"


# -- differential runs against real iptables ------------------------------------------------------

needs_iptables = pytest.mark.skipif(
    not (os.geteuid() == 0 and shutil.which("iptables") and shutil.which("unshare")),
    reason="needs root, iptables and unshare (runs in a throwaway netns)")

MARK = "@@dockline-rc="


def real_run(setup_text, cmdlines):
    """Run ``iptables`` command lines in one fresh network namespace after restoring
    ``setup_text``; return ``[(returncode, stdout)]`` per command line."""
    script = "iptables-restore <<'EOF'\n" + setup_text + "EOF\n"
    for c in cmdlines:
        script += f"iptables {c} 2>/dev/null; echo \"{MARK}$?\"\n"
    p = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    results, buf = [], []
    for line in p.stdout.splitlines(keepends=True):
        if line.startswith(MARK):
            results.append((int(line[len(MARK):]), "".join(buf)))
            buf = []
        else:
            buf.append(line)
    assert len(results) == len(cmdlines)
    return results


def ours_run(setup_text, cmdlines):
    rs, results = parse_save(setup_text)[0], []
    for c in cmdlines:
        try:
            rs, out = run(rs, c)
            results.append((0, out))
        except (InvalidArgument, NotFound, Conflict) as e:
            results.append((e.exit_code, ""))
    return results


LISTINGS = ["-t nat -S", "-t nat -L -n", "-t nat -L -n -v", "-t nat -L -n -v -x --line-numbers",
            "-t nat -nvL DOCKER"]

SEQUENCES = {
    "docker_lifecycle": [
        "-t nat -N DOCKER2", "-t nat -A DOCKER2 -i br0 -j RETURN",
        "-t nat -A DOCKER2 ! -i br0 -p udp -m udp --dport 53 -j DNAT --to-destination 10.1.0.2:53",
        "-t nat -I PREROUTING -m addrtype --dst-type LOCAL -j DOCKER2",
        "-t nat -I POSTROUTING 2 -s 10.1.0.0/24 ! -o br0 -j MASQUERADE",
        "-t nat -C DOCKER2 ! -i br0 -p udp -m udp --dport 53 -j DNAT --to-destination 10.1.0.2:53",
        "-t nat -C DOCKER2 -i br1 -j RETURN",
        "-t nat -D DOCKER2 -i br0 -j RETURN", "-t nat -R DOCKER 1 -i docker0 -p tcp -j RETURN",
        "-t nat -D POSTROUTING 1", "-t nat -X DOCKER2", "-t nat -D PREROUTING 1", "-t nat -F DOCKER2",
        "-t nat -X DOCKER2", "-t nat -N DOCKER", "-t nat -I DOCKER 9 -j RETURN", "-t nat -D DOCKER 7",
        "-t nat -P PREROUTING ACCEPT", "-t nat -S DOCKER 2", "-t nat -L DOCKER 2 -n",
    ],
    "listing_shapes": [
        "-t nat -N ZZZ", "-t nat -N AAA", "-t nat -N a!b",
        "-t nat -A AAA -p tcp -m multiport ! --sports 1,2:5 -m multiport --dports 7 -j REDIRECT --to-ports 8080-8090",
        "-t nat -A AAA -p udp ! --sport 81:90 -j DNAT --to-destination 1.2.3.4:80-90",
        "-t nat -A AAA ! -p tcp -s 10.0.0.1 -j RETURN",
        "-t nat -A AAA -m addrtype ! --src-type LOCAL ! --dst-type LOCAL -m comment --comment 'hello world' -j ACCEPT",
        "-t nat -A AAA -m comment --comment \"it's \\\"q\\\" \\\\b\" -j ACCEPT",
        "-t nat -A AAA -p icmp -j ACCEPT", "-t nat -A AAA -i eth0", "-t nat -A AAA -p tcp -m tcp",
        "-t nat -A AAA ! -i eth0 -s 1.0.0.0/8 ! -d 2.2.2.2 -p tcp --sport 3 ! --dport 4:5",
        "-t nat -A a!b -o eth0 -p udp -j SNAT --to-source 1.1.1.1:1000-2000",
        "-t nat -A a!b -p tcp -j MASQUERADE --to-ports 1000-2000", "-t nat -A a!b -p udp -j MASQUERADE --to-ports 7",
        "-t nat -A a!b -j SNAT --to-source 1.1.1.1", "-t nat -A a!b ! -o abcdefghijklmno -j ACCEPT",
        "-t nat -A PREROUTING -j AAA", "-t nat -A OUTPUT -j AAA", "-t nat -A POSTROUTING -j a!b",
        "-t nat -A ZZZ -j AAA",
    ],
    "refusals_agree": [
        "-t nat -N DOCKER", "-t nat -X PREROUTING", "-t nat -X NOPE", "-t nat -F NOPE", "-t nat -A NOPE -j ACCEPT",
        "-t nat -A PREROUTING -j NOPE", "-t nat -I PREROUTING 3 -j ACCEPT", "-t nat -D PREROUTING 5",
        "-t nat -R PREROUTING 2 -j ACCEPT", "-t nat -D PREROUTING -p udp -j ACCEPT", "-t nat -X DOCKER",
        "-t nat -X", "-t nat -A POSTROUTING -j DOCKER", "-t nat -A POSTROUTING -i eth0 -j ACCEPT",
        "-t nat -A PREROUTING -o eth0 -j ACCEPT", "-t nat -A INPUT -j MASQUERADE", "-t nat -A INPUT -j SNAT --to-source 1.2.3.4",
        "-t nat -A PREROUTING -j MASQUERADE", "-t nat -A OUTPUT -j REDIRECT", "-t nat -N LOG",
        "-t nat -N abcdefghijklmnopqrstuvwxyz01", "-t nat -N abcdefghijklmnopqrstuvwxyz012", "-t nat -P PREROUTING DROP",
        "-t nat -A PREROUTING -p tcp --dport 70000 -j ACCEPT", "-t nat -A PREROUTING -p tcp -m multiport --dports 5:5",
        "-t nat -A PREROUTING -j DROP", "-t nat -A PREROUTING -p icmp --dport 1", "-t nat -A PREROUTING -j DNAT",
        "-t nat -A POSTROUTING -j MASQUERADE --to-ports 5", "-t nat -A PREROUTING -p tcp -j REDIRECT --to-ports 1:2",
        "-t nat -A PREROUTING -m addrtype -j ACCEPT", "-t nat -A PREROUTING -m comment -j ACCEPT",
        "-t nat -C PREROUTING -m addrtype --dst-type LOCAL -j DOCKER", "-t nat -C NOPE -j ACCEPT",
        "-t nat -L NOPE -n",
    ],
}


@needs_iptables
@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_same_results_as_real_iptables(name):
    """Each command succeeds or fails like real iptables, and every listing is identical."""
    cmdlines = []
    for c in SEQUENCES[name]:
        cmdlines += [c] + LISTINGS
    real = real_run(CORPUS["docker"], cmdlines)
    ours = ours_run(CORPUS["docker"], cmdlines)
    for c, (rrc, rout), (orc, oout) in zip(cmdlines, real, ours):
        assert (rrc == 0) == (orc == 0), f"{c}: iptables rc={rrc}, dockline rc={orc}"
        assert oout == rout, c


@needs_iptables
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_listings_match_real_iptables(name):
    cmdlines = LISTINGS[:4] + ["-t nat -L -n --line-numbers"] + [
        f"-t nat {cmd} {c}" for c in parse_save(CORPUS[name])[0].user_chains() for cmd in ("-S", "-L -n")]
    real = real_run(CORPUS[name], cmdlines)
    ours = ours_run(CORPUS[name], cmdlines)
    for c, r, o in zip(cmdlines, real, ours):
        assert o == r, c


@pytest.mark.parametrize("argv,want", [
    (["-t", "nat", "-S"], True), (["-t", "nat", "-nvL"], True), (["-t", "nat", "--list-rules", "PREROUTING"], True),
    (["-t", "nat", "-A", "PREROUTING", "-j", "ACCEPT"], False), (["-t", "nat", "-N", "LS"], False),
    (["-t", "nat", "-L", "-A", "X"], False),
])
def test_is_listing_tells_reads_from_changes(argv, want):
    from dockline.control.nat.commands import is_listing
    assert is_listing(argv) is want

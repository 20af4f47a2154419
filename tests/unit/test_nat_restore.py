"""``iptables-restore -T nat`` semantics (control/nat/restore.py) and the drop-in commands'
option parsing (control/iptables_compat.py). Each restore case runs through real
iptables-restore too, inside a throwaway network namespace, and both tables must save alike."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dockline.control import iptables_compat as compat
from dockline.control.errors import InvalidArgument, NotFound
from dockline.control.nat import parse_save
from dockline.control.nat.restore import restore
from dockline.control.nat.rules import Ruleset

needs_iptables = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("iptables-restore") is None,
                                    reason="needs root and iptables-restore")

HEAD = ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"

BEFORE = "*nat\n" + HEAD + """:KEEP - [0:0]
:WEB - [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -j WEB
-A PREROUTING -j KEEP
-A OUTPUT -d 10.9.9.9/32 -j ACCEPT
-A KEEP -s 192.0.2.0/24 -j RETURN
-A WEB -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080
COMMIT
"""

#: (name, restore input, noflush)
CASES = [
    ("replace", "*nat\n:PREROUTING ACCEPT [0:0]\n:NEW - [0:0]\n-A PREROUTING -j NEW\n"
                "-A NEW -p udp -j DNAT --to-destination 10.0.0.3\nCOMMIT\n", False),
    ("noflush-append", "*nat\n-A PREROUTING -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.0.0.4\n"
                       "-A OUTPUT -d 10.9.9.8/32 -j ACCEPT\nCOMMIT\n", True),
    # a declared user chain that exists is flushed; a new one is created; built-ins keep theirs
    ("noflush-declared", "*nat\n:PREROUTING ACCEPT [0:0]\n:WEB - [0:0]\n:EXTRA - [0:0]\n"
                         "-A WEB -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.5:81\n"
                         "-A EXTRA -j RETURN\n-A PREROUTING -j EXTRA\nCOMMIT\n", True),
    # other commands than -A, as iptables-restore takes them
    ("noflush-commands", "*nat\n-D PREROUTING -j KEEP\n-I PREROUTING 1 -s 198.51.100.0/24 -j ACCEPT\n"
                         "-F KEEP\n-X KEEP\n-R OUTPUT 1 -d 10.9.9.7/32 -j ACCEPT\n-N LATE\n-A LATE -j RETURN\n"
                         "[5:300] -A POSTROUTING -o eth9 -j MASQUERADE\nCOMMIT\n", True),
    # a jump to a chain whose rules come further down (iptables-save's own order)
    ("jump-down", "*nat\n:PREROUTING ACCEPT [0:0]\n:LATER - [0:0]\n-A PREROUTING -j LATER\n"
                  "-A LATER -p tcp -j REDIRECT --to-ports 3128\nCOMMIT\n", False),
    ("other-tables", "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n"
                     "-A POSTROUTING -s 10.0.0.0/24 -j MASQUERADE\nCOMMIT\n", True),
]


def _current() -> Ruleset:
    return parse_save(BEFORE)[0]


def real(before: str, text: str, noflush: bool) -> str:
    """iptables-save -t nat after restoring ``before`` and then ``text`` in a throwaway netns."""
    p = subprocess.run(["unshare", "-n", "sh", "-c", f"printf '%s' \"$B\" | iptables-restore -T nat && "
                        f"iptables-restore -T nat {'--noflush' if noflush else ''} && iptables-save -t nat"],
                       input=text, env={**os.environ, "B": before}, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return "".join(line + "\n" for line in p.stdout.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize("name,text,noflush", CASES, ids=[c[0] for c in CASES])
def test_restore_gives_what_it_is_given_semantics(name, text, noflush):
    new, warnings = restore(_current(), text, noflush)
    assert new is not None
    if name == "replace":
        assert "KEEP" not in new.chains and "WEB" not in new.chains     # the table was flushed
    if name == "noflush-append":
        assert [r.to_text() for r in new.chains["OUTPUT"]] == ["-d 10.9.9.9/32 -j ACCEPT", "-d 10.9.9.8/32 -j ACCEPT"]
    if name == "noflush-declared":
        assert [r.to_text() for r in new.chains["WEB"]] == [
            "-p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.5:81"]
        assert len(new.chains["PREROUTING"]) == 3                           # kept, plus one
    if name == "other-tables":
        assert warnings == ["line 1: skipped table *filter (dockline handles only the nat table)"]


#: the cases real iptables-restore -T nat can take in a bare netns (not the *filter one)
REAL_CASES = [c for c in CASES if c[0] != "other-tables"]


@needs_iptables
@pytest.mark.parametrize("name,text,noflush", REAL_CASES, ids=[c[0] for c in REAL_CASES])
def test_restore_matches_real_iptables_restore(name, text, noflush):
    new, _ = restore(_current(), text, noflush)
    assert new.save() == real(BEFORE, text, noflush)


def test_current_table_is_not_changed():
    cur = _current()
    before = cur.save()
    restore(cur, CASES[1][1], True)
    assert cur.save() == before


def test_no_nat_block_changes_nothing():
    new, warnings = restore(_current(), "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", False)
    assert new is None and warnings


@pytest.mark.parametrize("text,error,message", [
    ("*nat\n-A NOPE -j ACCEPT\nCOMMIT\n", NotFound, 'line 2: chain "NOPE" does not exist'),
    ("*nat\n-A PREROUTING -j GONE\nCOMMIT\n", NotFound, 'line 2: chain "GONE" does not exist (jump target)'),
    ("*nat\n-A PREROUTING -j ACCEPT\n", InvalidArgument, "line 1: *nat has no COMMIT"),
    ("*nat\n-L PREROUTING\nCOMMIT\n", InvalidArgument, 'line 2: "-L PREROUTING" is not a restore command'),
    ("*nat\n:PREROUTING DROP [0:0]\nCOMMIT\n", InvalidArgument, 'line 2: unsupported policy "DROP" for PREROUTING'),
    ("*nat\n-D PREROUTING -s 1.2.3.4 -j ACCEPT\nCOMMIT\n", NotFound, "line 2: no matching rule in chain PREROUTING"),
    ("*nat\n-A PREROUTING -m bogus -j ACCEPT\nCOMMIT\n", InvalidArgument, "line 2:"),
])
def test_restore_errors_name_the_line(text, error, message):
    with pytest.raises(error) as e:
        restore(_current(), text, True)
    assert e.value.message.startswith(message), e.value.message


def test_restore_args_like_iptables_restore():
    a = compat.parse_restore_args(["-n", "--test", "-T", "nat", "-c", "-w", "5", "-W", "100", "rules.txt"])
    assert (a.noflush, a.test, a.file) == (True, True, "rules.txt")
    assert compat.parse_restore_args(["--noflush", "-"]).file is None
    for argv, msg in ((["-T", "filter"], 'table "filter" is not handled by dockline'),
                      (["--bogus"], 'unknown option "--bogus"'), (["a", "b"], "one input file only"),
                      (["-T"], "needs a table name")):
        with pytest.raises(InvalidArgument) as e:
            compat.parse_restore_args(argv)
        assert msg in e.value.message


def test_save_args_and_framing():
    a = compat.parse_save_args(["-t", "nat", "-c", "-f", "/tmp/x"])
    assert (a.counters, a.file) == (True, "/tmp/x")
    with pytest.raises(InvalidArgument):
        compat.parse_save_args(["-t", "mangle"])
    out = compat.render_save(BEFORE, counters=True, now=0)
    lines = out.splitlines()
    assert lines[0].startswith("# Generated by dockline iptables-save on ") and lines[-1].startswith("# Completed on ")
    assert "[0:0] -A WEB -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080" in lines
    # what it prints is what iptables-restore (and dockline's) reads back
    assert restore(Ruleset(), out, False)[0].save() == BEFORE

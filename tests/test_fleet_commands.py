"""Fleets beyond deploy, prepare, rollback and status: list, verify, doctor, prune, recover,
adopt and activate over several roots, and the live table of a fleet deploy on a terminal.
Against real sshd test hosts (tests/sshlab.py); every test checks each host's disk."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import cli_env, make_build, run_cli
from fleetlab import APP, cli, current, dests, env
from sshlab import Host, SSHLab

SRC = str(Path(__file__).resolve().parent.parent / "src")


def releases(h: Host) -> list[str]:
    return sorted(n for n in os.listdir(h.path(APP) / "releases") if not n.startswith("."))


def deploy(hosts: list[Host], build: Path, version: str) -> str:
    r = cli("deploy", make_build(build, version=version), *dests(hosts), "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["release"])


def by_host(r: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """Stdout's lines, grouped by the host each is prefixed with."""
    out: dict[str, list[str]] = {}
    for line in r.stdout.splitlines():
        host, _, rest = line.partition(": ")
        out.setdefault(host, []).append(rest)
    return out


def test_list_verify_and_doctor_run_on_every_host(lab: SSHLab, hosts: list[Host],
                                                  tmp_path: Path) -> None:
    v1 = deploy(hosts, tmp_path / "v1", "v1")
    r = cli("list", *dests(hosts))
    assert r.returncode == 0, r.stderr
    lines = by_host(r)
    assert list(lines) == dests(hosts)  # every line prefixed, hosts in the order given
    assert all(any(v1 in ln and "current" in ln for ln in rows) for rows in lines.values())

    r = cli("list", *dests(hosts), "--json")
    d = json.loads(r.stdout)
    assert r.returncode == 0 and d["ok"] is True and d["exit_code"] == 0
    assert [h["host"] for h in d["hosts"]] == dests(hosts)
    assert all(h["result"]["releases"][0]["id"] == v1 for h in d["hosts"])

    (hosts[1].path(APP) / "current" / "version.txt").write_text("hot-patched\n")
    r = cli("verify", *dests(hosts))
    assert r.returncode == 1, r.stderr  # a finding on one host: verify's own exit 1
    lines = by_host(r)
    assert "matches its manifest" in lines[hosts[0].dest(APP)][-1]
    assert "differs from its manifest" in lines[hosts[1].dest(APP)][-1]
    assert "matches its manifest" in lines[hosts[2].dest(APP)][-1]
    assert "error" not in r.stderr
    r = cli("verify", *dests(hosts), "--release", v1, "--json")
    d = json.loads(r.stdout)
    assert r.returncode == 1 and d["exit_code"] == 1 and d["ok"] is True
    assert [h["result"]["clean"] for h in d["hosts"]] == [True, False, True]

    r = cli("doctor", *dests(hosts[:2]), "--json")
    d = json.loads(r.stdout)
    assert r.returncode == d["exit_code"] and r.returncode in (0, 1)
    for h in d["hosts"]:
        checks = {c["name"]: c for c in h["result"]["checks"]}
        assert h["result"]["root"] == APP and checks["transfer"]["status"] == "ok"

    # A host that cannot be reached: the others still answer; the exit code is its 2.
    lab.add_alias("down", lab.unused_port())
    r = cli("list", *dests(hosts[:2]), f"down:{APP}", "--connect-timeout", "5")
    assert r.returncode == 2
    assert set(by_host(r)) == set(dests(hosts[:2]))
    assert f"down:{APP}: error: " in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("atomic-deploy: error: list failed on 1 of 3 hosts") and "down" in last


def test_prune_recover_and_adopt_on_every_host(hosts: list[Host], tmp_path: Path) -> None:
    ids = [deploy(hosts, tmp_path / v, v) for v in ("v1", "v2", "v3")]
    r = cli("prune", *dests(hosts), "--keep", "1", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert all(h["result"]["deleted"] == [ids[0]] for h in d["hosts"])
    for h in hosts:  # each host keeps its own current and rollback target
        assert releases(h) == ids[1:] and current(h) == f"releases/{ids[2]}"

    # web2 killed in the middle of an activate: its journal waits for recovery.
    web2 = hosts[1]
    run = web2.run(["env", f"PYTHONPATH={SRC}", "ATOMIC_DEPLOY_FAULT=switched:KILL",
                    sys.executable, "-m", "atomic_deploy", "activate", web2.remote_path(APP),
                    ids[1]])
    assert run.returncode == -9, run.stderr
    assert (web2.path(APP) / ".atomic-deploy" / "journal.json").exists()
    r = cli("recover", *dests(hosts))
    assert r.returncode == 0, r.stderr
    lines = by_host(r)
    assert lines[hosts[0].dest(APP)] == ["nothing to recover"]
    assert lines[web2.dest(APP)][0].startswith(f"recovered interrupted activate of {ids[1]}")
    assert not (web2.path(APP) / ".atomic-deploy" / "journal.json").exists()
    # Each host by its own rules: web2's switch had happened, so it was completed.
    assert [current(h) for h in hosts] == [f"releases/{i}" for i in (ids[2], ids[1], ids[2])]
    assert cli("status", *dests(hosts)).returncode == 1  # and the fleet is mixed

    # adopt: every host's folder gets one and the same release id.
    fresh = [h.path("/srv/legacy") for h in hosts]
    for i, app in enumerate(fresh):
        (app / "current").mkdir(parents=True)
        (app / "current" / "index.html").write_text(f"legacy {i}")
    r = cli("adopt", *(h.dest("/srv/legacy") for h in hosts), "--json")
    assert r.returncode == 0, r.stderr
    got = {h["result"]["release"] for h in json.loads(r.stdout)["hosts"]}
    assert len(got) == 1
    (rid,) = got
    for i, app in enumerate(fresh):
        assert os.readlink(app / "current") == f"releases/{rid}"
        assert (app / "current" / "index.html").read_text() == f"legacy {i}"
    r = cli("adopt", *(h.dest("/srv/legacy") for h in hosts))  # nothing left to adopt
    assert r.returncode == 2
    assert "adopt failed on 3 of 3 hosts" in r.stderr.splitlines()[-1]


def test_activate_over_a_fleet_is_all_or_nothing(hosts: list[Host], tmp_path: Path) -> None:
    v1 = deploy(hosts, tmp_path / "v1", "v1")
    v2 = deploy(hosts, tmp_path / "v2", "v2")
    # Two roots without --to: the form is ROOT RELEASE_ID, and a root is no release id.
    r = cli("activate", *dests(hosts[:2]))
    assert r.returncode == 2 and "--to RELEASE_ID" in r.stderr
    r = cli("activate", *dests(hosts), "--to", "20990101000000")
    assert r.returncode == 2 and "is not on" in r.stderr
    # One host fails its health check on v1: every host switched back to v2.
    hosts[2].path("/srv/unhealthy").write_text("")
    told = "echo $ATOMIC_DEPLOY_RELEASE >> /srv/told"
    r = cli("activate", *dests(hosts), "--to", v1, "--health-check",
            "test ! -e /srv/unhealthy", "--health-retries", "0", "--after-switch", told,
            "--json")
    assert r.returncode == 4, r.stderr
    assert json.loads(r.stdout)["outcome"] == "switched back"
    for h in hosts:
        assert current(h) == f"releases/{v2}"
        assert h.path("/srv/told").read_text().split() == [v1, v2]
    for h in hosts[:2]:  # switched back because another host failed: v1 is not bad here
        states = {x["id"]: x["state"] for x in
                  json.loads(cli("list", h.dest(APP), "--json").stdout)["releases"]}
        assert states[v1] != "bad", (h.alias, states)
    states = {x["id"]: x["state"] for x in  # where it failed: bad, as a single-host activate
              json.loads(cli("list", hosts[2].dest(APP), "--json").stdout)["releases"]}
    assert states[v1] == "bad", states
    hosts[2].path("/srv/unhealthy").unlink()
    r = cli("activate", *dests(hosts), "--to", v1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"activated {v1} on 3 hosts")
    assert {current(h) for h in hosts} == {f"releases/{v1}"}
    # The one-root form is unchanged, and takes --to too.
    assert cli("activate", hosts[0].dest(APP), v2).returncode == 0
    assert cli("activate", hosts[1].dest(APP), "--to", v2).returncode == 0
    assert [current(h) for h in hosts] == [f"releases/{v2}"] * 2 + [f"releases/{v1}"]
    # A mixed fleet converges: hosts already there are left as they are.
    r = cli("activate", *dests(hosts), "--to", v2)
    assert r.returncode == 0 and f"web1:{APP}: already on {v2}" in r.stderr
    assert {current(h) for h in hosts} == {f"releases/{v2}"}


def test_hosts_already_on_the_target_are_in_the_result(hosts: list[Host],
                                                        tmp_path: Path) -> None:
    """rollback --to / activate --to over a partly converged fleet: the hosts left alone
    are in --json's hosts (phase unchanged, where they are), in the order given."""
    v1 = deploy(hosts, tmp_path / "v1", "v1")
    v2 = deploy(hosts, tmp_path / "v2", "v2")
    assert cli("rollback", hosts[1].dest(APP), "--to", v1).returncode == 0
    r = cli("rollback", *dests(hosts), "--to", v1, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [h["host"] for h in d["hosts"]] == dests(hosts)
    assert [h["phase"] for h in d["hosts"]] == ["committed", "unchanged", "committed"]
    assert all(h["release"] == v1 and h["ok"] for h in d["hosts"])
    assert d["hosts"][1]["note"] == f"already on {v1}; nothing changed here"
    assert {current(h) for h in hosts} == {f"releases/{v1}"}

    assert cli("activate", hosts[0].dest(APP), v2).returncode == 0
    r = cli("activate", *dests(hosts), "--to", v2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"activated {v2} on 2 hosts; 1 already on it ("), r.stdout
    assert f"(already on {v2}; nothing changed here)" in r.stdout.splitlines()[1]
    r = cli("rollback", *dests(hosts), "--to", v2, "--json")  # every host already there
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["outcome"] == "unchanged"
    assert [(h["host"], h["phase"], h["release"]) for h in d["hosts"]] == [
        (dest, "unchanged", v2) for dest in dests(hosts)]
    assert {current(h) for h in hosts} == {f"releases/{v2}"}


# -- the live table ----------------------------------------------------------------------------

def on_a_terminal(*args: Any, columns: int = 150) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal: (exit code, stdout, what the terminal
    got)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "atomic_deploy", *map(str, args)],
                         env=cli_env(env()), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=slave)
    os.close(slave)
    got: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            got.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    assert p.stdout is not None
    out = p.stdout.read()
    p.wait(timeout=180)
    reader.join(timeout=30)
    os.close(master)
    return p.returncode, out.decode(), b"".join(got).decode()


def screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: text, CR, LF, cursor up (CSI n A), erase below
    (CSI J) and to the end of the line (CSI K); colours ignored."""
    lines, row, col, i = [""], 0, 0, 0
    while i < len(raw):
        m = re.match(r"\x1b\[(\d*)([A-Za-z])", raw[i:])
        if m:
            n = int(m.group(1) or 1)
            if m.group(2) == "A":
                row = max(0, row - n)
            elif m.group(2) == "J":
                del lines[row + 1:]
                lines[row] = lines[row][:col]
            elif m.group(2) == "K":
                lines[row] = lines[row][:col]
            i += len(m.group(0))
            continue
        c = raw[i]
        if c == "\r":
            col = 0
        elif c == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        else:
            text = lines[row].ljust(col)
            lines[row] = text[:col] + c + text[col + 1:]
            col += 1
        i += 1
    return [ln.rstrip() for ln in lines]


def test_a_live_table_on_a_terminal_and_lines_elsewhere(hosts: list[Host], tmp_path: Path) -> None:
    fleet = dests(hosts[:2])
    code, out, raw = on_a_terminal("deploy", make_build(tmp_path / "v1", version="v1"), *fleet)
    assert code == 0, raw
    release = out.split()[1]
    assert out.startswith(f"deployed {release} to 2 hosts")  # stdout as without a terminal
    assert raw.count("\x1b[") > 2  # redrawn in place
    shown = screen(raw)
    heads = [ln for ln in shown if ln.startswith("host ")]
    assert len(heads) == 1 and heads[0].split() == ["host", "phase", "bytes", "time", "result"]
    for host in fleet:
        rows = [ln for ln in shown if ln.startswith(host + " ")]
        assert len(rows) == 1, shown  # one row per host: earlier frames were overwritten
        assert rows[0].split()[1] == "committed" and rows[0].endswith(f"on {release}")
    assert any(ln.startswith("deployed: 2 hosts (2 committed); switch skew ") for ln in shown)
    # The hosts' lines stay, above the table.
    assert shown.index(heads[0]) > max(i for i, ln in enumerate(shown)
                                       if ln.startswith(fleet[1] + ": prepared "))

    # A terminal nobody sized (0 columns, as under script(1)): 80, never cut to the host name.
    code, out, raw = on_a_terminal("deploy", make_build(tmp_path / "v1b", version="v1b"),
                                   *fleet, columns=0)
    assert code == 0, raw
    for host in fleet:
        rows = [ln for ln in screen(raw) if ln.startswith(host + " ")]
        assert len(rows) == 1 and rows[0].split()[1] == "committed", screen(raw)

    # Not a terminal: one whole line per host per phase, no escape sequences.
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *fleet)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr and r.stderr
    assert all(line.split(": ", 1)[0] in fleet for line in r.stderr.splitlines())
    for phase in (": prepared ", ": switched\n", ": committed: on "):
        assert {line.split(": ", 1)[0] for line in r.stderr.splitlines()
                if phase in line + "\n"} == set(fleet), (phase, r.stderr)

    # A failure: the table ends on it.
    hosts[1].path("/srv/broken").write_text("")
    code, out, raw = on_a_terminal("rollback", *fleet, "--health-check",
                                   "test ! -e /srv/broken", "--health-retries", "0")
    assert code == 4, raw
    shown = screen(raw)
    row = next(ln for ln in shown if ln.startswith(fleet[1] + " "))
    assert row.split()[1] == "failed"
    row = next(ln for ln in shown if ln.startswith(fleet[0] + " "))
    assert row.split()[1] == "undone"  # switched back because web2 failed
    assert any(ln.startswith("switched back: 2 hosts (1 failed, 1 undone); ") for ln in shown)
    assert [ln for ln in shown if ln][-1].startswith("atomic-deploy: error: ")


@pytest.mark.parametrize("argv", [
    ["activate", "web1:/srv/app", "20261201140317", "web2:/srv/app"],
    ["activate", "--hosts", "hosts.txt", "/srv/app", "20261201140317"],
    ["verify", "web1:/srv/app", "20261201140317", "web2:/srv/app"],
])
def test_a_release_id_among_several_roots_is_refused_not_guessed(argv: list[str]) -> None:
    r = run_cli(*argv)
    flag = "--to" if argv[0] == "activate" else "--release"
    assert r.returncode == 2
    assert f"with several roots give the release with {flag} RELEASE_ID" in r.stderr

"""--dry-run on remote roots and fleets: the plan the local command prints, the host named, and
the host's disk byte-for-byte unchanged (every entry's inode, mode, size, mtime and ctime, and
every file's bytes, compared before and after). Against real sshd test hosts (tests/sshlab.py).
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

from conftest import error_line, make_build
from fleetlab import APP, cli, dests
from sshlab import Host, SSHLab


def listing(top: Path) -> dict[str, Any]:
    """Every entry under ``top`` (``top`` too), without following symlinks."""
    out: dict[str, Any] = {}
    if not os.path.lexists(top):
        return out
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [".", *dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                body: Any = os.readlink(p)
            elif os.path.isfile(p):
                body = Path(p).read_bytes()
            else:
                body = None
            out[os.path.relpath(p, top)] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns,
                                            st.st_ctime_ns, st.st_nlink, body)
    return out


def plan_of(r: Any, host: str) -> list[str]:
    """The steps of a remote dry run's text output, after checking its head names the host."""
    lines = r.stdout.splitlines()
    assert lines[0] == f"dry run on {host}, nothing changed; would:", r.stdout
    return [ln.strip() for ln in lines[1:]]


def test_every_command_dry_run_on_a_remote_root_changes_nothing(lab: SSHLab,
                                                                tmp_path: Path) -> None:
    web1 = lab.add_host("web1")
    dest = web1.dest(APP)
    ids = []
    for v in ("v1", "v2"):
        r = cli("deploy", make_build(tmp_path / v, version=v), dest, "--json")
        assert r.returncode == 0, r.stderr
        ids.append(json.loads(r.stdout)["release"])
    srv = web1.path("/srv")
    before = listing(srv)
    v3 = make_build(tmp_path / "v3", {"a.txt": "a", "b.txt": "b"}, version="v3")

    r = cli("deploy", v3, dest, "--dry-run", "--after-switch", "echo hi", "--keep", "1")
    assert r.returncode == 0, r.stderr
    steps = plan_of(r, dest)
    assert any(s.startswith(f"send {v3} (2 files) from ") and "releases/" in s for s in steps)
    assert any("content digests" in s and "hard-linked there, not sent" in s for s in steps)
    assert f"switch current from releases/{ids[1]} to releases/" in "\n".join(steps)
    assert "run after-switch hook: sh -c 'echo hi'" in steps
    assert any(s.startswith("prune to 1: delete ") and ids[0] in s for s in steps)
    assert listing(srv) == before

    r = cli("prepare", v3, dest, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True and d["dry_run"] is True and d["host"] == dest
    assert d["command"] == "prepare" and not any("switch current" in s for s in d["plan"])
    assert listing(srv) == before

    r = cli("activate", dest, ids[0], "--dry-run")
    assert r.returncode == 0, r.stderr
    assert f"switch current from releases/{ids[1]} to releases/{ids[0]}" in plan_of(r, dest)
    r = cli("rollback", dest, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"][:2] == [
        f"switch current from releases/{ids[1]} to releases/{ids[0]}", f"mark {ids[1]} bad"]
    r = cli("prune", dest, "--dry-run", "--keep", "1")
    assert r.returncode == 0, r.stderr
    assert plan_of(r, dest) == [f"keep {ids[0]}, {ids[1]}"]  # current and rollback target
    r = cli("recover", dest, "--dry-run")
    assert (r.returncode, r.stdout) == (0, f"dry run on {dest}: nothing to recover\n")
    # A refusal is the local command's: one line, its exit code.
    r = cli("activate", dest, "20990101000000", "--dry-run")
    assert r.returncode == 2 and "unknown release id" in error_line(r), r.stderr
    assert r.stdout == ""
    assert listing(srv) == before
    assert len(os.listdir(web1.path(APP) / "releases")) == 2


def test_dry_run_on_a_new_host_uploads_nothing(lab: SSHLab, tmp_path: Path) -> None:
    """No root and no tool there: the plan comes from the tool run from memory; the host's
    /srv stays exactly as it was (no ROOT, no ROOT/.atomic-deploy/bin)."""
    web1 = lab.add_host("web1")
    srv = web1.path("/srv")
    before = listing(srv)
    build = make_build(tmp_path / "b")
    r = cli("deploy", build, web1.dest(APP), "--dry-run")
    assert r.returncode == 0, r.stderr
    steps = plan_of(r, web1.dest(APP))
    assert steps[0] == "create ROOT /srv/app"
    assert "switch current from nothing to releases/" in "\n".join(steps)
    assert listing(srv) == before and not web1.path(APP).exists()
    # A tarball is read here (its member list), a URL with --pull is the host's to fetch.
    tar = tmp_path / "b.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(build, arcname=".")
    r = cli("deploy", tar, web1.dest(APP), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert any(s.startswith(f"extract {tar} on ") for s in plan_of(r, web1.dest(APP)))
    r = cli("deploy", f"file://{tar}", web1.dest(APP), "--pull", "--dry-run", "--json",
            "--sha256", "0" * 64)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"][1].startswith(f"have the host fetch file://{tar}")
    assert listing(srv) == before


def test_dry_run_on_an_unreachable_host_is_one_line_exit_2(lab: SSHLab,
                                                          tmp_path: Path) -> None:
    lab.add_alias("dead", lab.unused_port())
    for args in (("deploy", make_build(tmp_path / "b"), "dead:/srv/app"),
                 ("rollback", "dead:/srv/app"), ("prune", "dead:/srv/app")):
        r = cli(*args, "--dry-run")
        assert r.returncode == 2, r.stderr
        assert "nothing listens for ssh on dead" in error_line(r)
        assert r.stderr.count("\n") == 1 and r.stdout == ""


def test_fleet_dry_run_gives_each_hosts_plan(lab: SSHLab, hosts: list[Host],
                                             tmp_path: Path) -> None:
    ids = []
    for v in ("v1", "v2"):
        r = cli("deploy", make_build(tmp_path / v, version=v), *dests(hosts), "--json")
        assert r.returncode == 0, r.stderr
        ids.append(json.loads(r.stdout)["release"])
    before = [listing(h.path("/srv")) for h in hosts]
    v3 = make_build(tmp_path / "v3", version="v3")

    r = cli("deploy", v3, *dests(hosts), "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for d in dests(hosts):
        mine = [ln[len(d) + 2:] for ln in lines if ln.startswith(f"{d}: ")]
        assert mine[0] == "dry run, nothing changed; would:", r.stdout
        assert any(f"switch current from releases/{ids[1]}" in ln for ln in mine)
    # hosts in the order given
    assert [ln.split(": ")[0] for ln in lines if ln.endswith("would:")] == dests(hosts)

    r = cli("rollback", *dests(hosts), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True and d["dry_run"] is True and d["exit_code"] == 0
    assert [h["host"] for h in d["hosts"]] == dests(hosts)
    for h in d["hosts"]:
        assert h["result"]["plan"][0] == (f"switch current from releases/{ids[1]} to "
                                          f"releases/{ids[0]}")
    r = cli("activate", *dests(hosts), "--to", ids[0], "--dry-run", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["hosts"]) == 3, r.stderr
    r = cli("prune", *dests(hosts), "--dry-run", "--keep", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"keep {ids[0]}, {ids[1]}") == 3  # the rollback target is kept
    assert [listing(h.path("/srv")) for h in hosts] == before

    # One host unreachable: its one line, the others' plans, exit 2 (the highest).
    lab.add_alias("dead", lab.unused_port())
    r = cli("deploy", v3, *dests(hosts[:2]), "dead:/srv/app", "--dry-run", "--json")
    assert r.returncode == 2, r.stderr
    d = json.loads(r.stdout)
    assert [h["exit_code"] for h in d["hosts"]] == [0, 0, 2]
    assert "nothing listens for ssh on dead" in d["hosts"][2]["error"]
    assert "dead:/srv/app: error: nothing listens" in r.stderr
    assert r.stderr.splitlines()[-1].startswith(
        "atomic-deploy: error: deploy --dry-run gave no plan on 1 of 3 hosts"), r.stderr
    # A fleet rollback's or activate's target needs every host's releases: one line, no plan.
    for args in (("rollback",), ("activate", "--to", ids[0])):
        r = cli(*args, *dests(hosts[:2]), "dead:/srv/app", "--dry-run")
        assert r.returncode == 2 and r.stdout == "", r.stdout
        assert "nothing listens for ssh on dead" in error_line(r)
        r = cli(*args, *dests(hosts[:2]), "dead:/srv/app", "--dry-run", "--json")
        d = json.loads(r.stdout)
        assert r.returncode == 2 and d["ok"] is False and "dead" in d["error"]
    assert [listing(h.path("/srv")) for h in hosts] == before


def test_adopt_dry_run_on_a_remote_root(lab: SSHLab) -> None:
    web1 = lab.add_host("web1")
    app = web1.path(APP)
    (app / "current").mkdir(parents=True)
    (app / "current" / "index.html").write_text("legacy")
    before = listing(web1.path("/srv"))
    r = cli("adopt", web1.dest(APP), "--dry-run", "--id", "20200101000000")
    assert r.returncode == 0, r.stderr
    assert plan_of(r, web1.dest(APP))[0].startswith(
        "move the folder current to releases/20200101000000")
    assert listing(web1.path("/srv")) == before

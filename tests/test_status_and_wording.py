"""What a new user reads and relies on: the words of status and list, exit codes a monitoring
script can act on, dry runs, and the hints for arguments given in the wrong order."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import Builds, current_target, error_line, history, release_names, run_cli, snapshot


def _listed(root: Path) -> dict[str, str]:
    r = run_cli("list", root, "--json")
    assert r.returncode == 0, r.stderr
    return {x["id"]: x["state"] for x in json.loads(r.stdout)["releases"]}


# --- release states in words --------------------------------------------------------------


def test_a_prepared_release_is_listed_as_prepared_not_good(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    r = run_cli("prepare", builds("v2"), root)
    assert r.returncode == 0
    live, prepared = release_names(root)
    assert r.stdout.strip() == prepared
    assert _listed(root) == {live: "current", prepared: "prepared"}
    text = run_cli("list", root).stdout
    row = next(line for line in text.splitlines() if prepared in line)
    assert row.split()[1] == "prepared", text
    assert "never a rollback target" in text
    # Once live it has served: rolled away from it is bad, then activated again it is current.
    assert run_cli("activate", root, prepared).returncode == 0
    assert _listed(root) == {live: "good", prepared: "current"}
    assert run_cli("rollback", root).returncode == 0
    assert _listed(root) == {live: "current", prepared: "bad"}


def test_status_names_the_rollback_target_and_activate_the_release_live_before(
        builds: Builds, root: Path) -> None:
    for v in ("v1", "v2"):
        assert run_cli("deploy", builds(v), root).returncode == 0
    a, b = release_names(root)
    assert run_cli("prepare", builds("v3"), root).returncode == 0
    c = release_names(root)[-1]
    s = json.loads(run_cli("status", root, "--json").stdout)
    assert (s["current"], s["rollback_target"], s["previous"]) == (b, a, a)
    text = run_cli("status", root).stdout
    rows = dict(line.split(None, 1) if not line.startswith("rollback target")
                else ("rollback target", line[len("rollback target"):].strip())
                for line in text.splitlines())
    assert rows["rollback target"] == a and "previous" not in rows, text
    # activate says what was live before it: not the rollback target (a), but b.
    r = run_cli("activate", root, c)
    assert r.returncode == 0 and r.stdout.strip() == f"activated {c} (previous: {b})"
    s = json.loads(run_cli("status", root, "--json").stdout)
    assert (s["current"], s["rollback_target"]) == (c, b)


def _status_rows(root: Path) -> dict[str, str]:
    text = run_cli("status", root).stdout
    return {line[:16].strip(): line[16:].strip() for line in text.splitlines()}


def test_status_last_shows_the_deploy_with_its_own_prune_folded_in(builds: Builds,
                                                                    root: Path) -> None:
    for v in ("v1", "v2", "v3"):
        assert run_cli("deploy", builds(v), root, "--keep", "1").returncode == 0
    third = release_names(root)[-1]
    records = history(root)
    assert [r["op"] for r in records][-2:] == ["deploy", "prune"]
    deploy, prune = records[-2:]
    # The line names the deploy that put current where it is, its prune folded in.
    assert _status_rows(root)["last"] == (f"deploy {third} ok at {deploy['time']}, "
                                          f"pruned {len(prune['deleted'])}")
    s = json.loads(run_cli("status", root, "--json").stdout)
    assert s["last"] == prune  # still the last record, as json.md has always said
    assert s["last_change"] == deploy
    # A prune run on its own afterwards is shown after the deploy, with its own time.
    assert run_cli("deploy", builds("v4"), root, "--keep", "all").returncode == 0
    fourth = release_names(root)[-1]
    assert run_cli("prune", root, "--keep", "1").returncode == 0
    deploy, prune = history(root)[-2:]
    assert _status_rows(root)["last"] == (f"deploy {fourth} ok at {deploy['time']}; then "
                                          f"prune ok at {prune['time']} (1 deleted)")
    # A rollback after it is the last change, with nothing added.
    assert run_cli("deploy", builds("v5"), root, "--keep", "all").returncode == 0
    assert run_cli("rollback", root).returncode == 0
    rollback = history(root)[-1]
    assert _status_rows(root)["last"] == f"rollback {fourth} ok at {rollback['time']}"
    s = json.loads(run_cli("status", root, "--json").stdout)
    assert s["last"] == s["last_change"] == rollback


# --- status exit codes --------------------------------------------------------------------


def _break(root: Path, how: str) -> None:
    cur = root / "current"
    if how == "healthy":
        return
    if how == "interrupted":  # a crashed deploy's journal; current still serves a release
        (root / ".atomic-deploy" / "journal.json").write_text(json.dumps(
            {"op": "deploy", "release": "20991231000000", "pid": 999999,
             "creates_release": True}))
        return
    cur.unlink()
    if how == "dangling":
        cur.symlink_to("releases/20000101000000")
    elif how == "outside":
        cur.symlink_to("/srv/elsewhere")
    elif how == "folder":
        cur.mkdir()
    elif how == "file":
        cur.write_text("x\n")


@pytest.mark.parametrize(("how", "code", "state"), [
    ("healthy", 0, "ok"), ("interrupted", 0, "ok"), ("dangling", 1, "dangling"),
    ("outside", 1, "outside-releases"), ("folder", 1, "directory"), ("file", 1, "file"),
    ("absent", 1, "absent")])
def test_status_exits_1_when_current_cannot_serve_a_release(
        builds: Builds, root: Path, how: str, code: int, state: str) -> None:
    for v in ("v1", "v2"):
        assert run_cli("deploy", builds(v), root).returncode == 0
    _break(root, how)
    before = snapshot(root)
    r = run_cli("status", root)
    assert (r.returncode, r.stderr) == (code, ""), r.stderr
    assert r.stdout.startswith("root") and "lock" in r.stdout  # printed in full
    assert ("not serving a release" in r.stdout) == (code == 1)
    j = run_cli("status", root, "--json")
    assert j.returncode == code
    s = json.loads(j.stdout)
    assert (s["ok"], s["current_state"], s["serving"], s["releases"]) == (True, state, code == 0, 2)
    q = run_cli("status", root, "-q")
    assert (q.returncode, q.stdout) == (code, "")
    assert snapshot(root) == before


@pytest.mark.parametrize("what", ["empty", "other-content"])
@pytest.mark.parametrize("command", ["status", "list"])
def test_a_folder_that_is_no_deploy_root_is_refused(tmp_path: Path, builds: Builds,
                                                   what: str, command: str) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    if what == "other-content":
        folder = builds("v1")  # the build given as ROOT by mistake
    r = run_cli(command, folder)
    assert r.returncode == 2 and r.stdout == ""
    assert "is not a deploy root" in error_line(r) and "nothing was changed" in r.stderr
    assert "no releases" not in r.stdout + r.stderr
    assert os.listdir(folder) == ([] if what == "empty" else os.listdir(folder))


def test_a_root_whose_first_deploy_failed_is_still_a_root(builds: Builds, root: Path) -> None:
    """deploy creates ROOT before copying: a first deploy that fails leaves a root (state
    folder, empty releases/), which status and list describe, not refuse."""
    assert run_cli("deploy", builds("v1"), root, "--check", "false").returncode == 4
    assert release_names(root) == [] and current_target(root) is None
    r = run_cli("list", root)
    assert (r.returncode, r.stdout.strip()) == (0, "no releases")
    r = run_cli("status", root, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["current_state"] == "absent"
    assert history(root)[-1]["outcome"] == "failed"


# --- man on a terminal --------------------------------------------------------------------

MAN = shutil.which("man")


@pytest.mark.skipif(MAN is None, reason="man is not installed (apt-get install man-db)")
def test_man_on_a_terminal_is_formatted_by_man() -> None:
    from test_output import run_in_pty

    code, screen = run_in_pty("man", env={"MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100"})
    assert code == 0, screen
    screen = re.sub(".\x08", "", screen)  # overstrike bold and underline, as a pager shows them
    assert ".TH" not in screen and '.\\"' not in screen and ".SH" not in screen, screen[:400]
    assert "SYNOPSIS" in screen and "atomic-deploy deploy" in screen
    # Into a pipe or a file it is still the roff source.
    r = run_cli("man")
    assert r.returncode == 0 and "\n.TH " in r.stdout


def test_man_on_a_terminal_without_man_prints_the_roff(tmp_path: Path) -> None:
    from test_output import run_in_pty

    code, screen = run_in_pty("man", env={"PATH": str(tmp_path)})  # no man on PATH
    assert code == 0 and ".TH " in screen


# --- activate: arguments swapped, dry runs ------------------------------------------------


def test_activate_with_id_and_root_swapped_says_so(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    (rid,) = release_names(root)
    before = snapshot(root)
    for args in (["activate", rid, root], ["activate", rid, root, "--dry-run"]):
        r = run_cli(*args)
        assert r.returncode == 2
        line = error_line(r)
        assert "did you swap ROOT and RELEASE_ID? The order is ROOT RELEASE_ID" in line, line
    assert snapshot(root) == before


def test_activate_dry_run_prints_the_plan_and_changes_nothing(builds: Builds, root: Path) -> None:
    for v in ("v1", "v2"):
        assert run_cli("deploy", builds(v), root).returncode == 0
    a, b = release_names(root)
    assert run_cli("rollback", root).returncode == 0  # b is bad now
    before = snapshot(root)
    r = run_cli("activate", root, b, "--dry-run", "--after-switch", "touch /tmp/never")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "dry run, nothing changed; would:",
        f"  switch current from releases/{a} to releases/{b}",
        f"  clear the bad mark of {b}",
        "  run after-switch hook: sh -c 'touch /tmp/never'",
        "  if any of these fail: switch back and mark the new release bad"]
    j = run_cli("activate", root, b, "--dry-run", "--json")
    assert j.returncode == 0 and json.loads(j.stdout)["dry_run"] is True
    assert json.loads(j.stdout)["plan"][0] == f"switch current from releases/{a} to releases/{b}"
    bad = run_cli("activate", root, "20000101000000", "--dry-run")
    assert bad.returncode == 2 and "unknown release id" in error_line(bad)
    assert snapshot(root) == before


def test_a_dry_run_with_no_fsync_says_the_release_is_not_flushed(builds: Builds,
                                                                 root: Path) -> None:
    """The plan said "flush it" with --no-fsync too."""
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    for how in (["--no-fsync"], ["--no-fsync", "--json"], []):
        r = run_cli("deploy", builds("v2"), root, "--dry-run", *how)
        assert r.returncode == 0, r.stderr
        copy = r.stdout if "--json" not in how else json.loads(r.stdout)["plan"][0]
        assert ("folder, flush it, rename" in copy) == (how == []), copy
        assert ("do not flush it to disk" in copy) == (how != []), copy
    (root / "atomic-deploy.toml").write_text("fsync = false\n")
    assert "do not flush it to disk" in run_cli("deploy", builds("v2"), root, "--dry-run").stdout


def test_adopt_dry_run_prints_the_plan_and_changes_nothing(root: Path) -> None:
    (root / "current").mkdir(parents=True)
    (root / "current" / "index.html").write_text("legacy\n")
    before = snapshot(root)
    r = run_cli("adopt", root, "--dry-run", "--id", "legacy-1", "--no-exchange")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "dry run, nothing changed; would:",
        "  move the folder current to releases/legacy-1 and make current a link to it, with "
        "two renames (current briefly absent)",
        "  record legacy-1 in the history as a release that has served"]
    j = run_cli("adopt", root, "--dry-run", "--json")
    assert j.returncode == 0 and json.loads(j.stdout)["dry_run"] is True
    assert snapshot(root) == before and sorted(os.listdir(root)) == ["current"]
    taken = run_cli("adopt", root, "--dry-run", "--id", ".hidden")
    assert taken.returncode == 2 and "invalid or taken" in error_line(taken)
    assert run_cli("adopt", root, "--id", "legacy-1").returncode == 0  # the plan holds
    assert current_target(root) == "releases/legacy-1"


# --- sources in the history ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_every_kind_of_source_is_recorded_by_its_absolute_path(tmp_path: Path) -> None:
    """Bug: `deploy --git repo ROOT` recorded "repo", meaningless once the shell's cwd is gone;
    folders and tarballs were already absolute."""
    import subprocess
    import sys
    import tarfile

    from conftest import cli_env, make_build

    work = tmp_path / "work"
    make_build(work / "build")
    with tarfile.open(work / "site.tar.gz", "w:gz") as tar:
        tar.add(work / "build", arcname=".")
    repo = work / "repo"
    make_build(repo)
    git_env = {**cli_env(), "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=T", "-c", "user.email=t@example.com", "-c",
                  "commit.gpgsign=false", "commit", "-q", "-m", "one"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=git_env,
                       capture_output=True)
    for argv in (["deploy", "build", "../root"], ["deploy", "./site.tar.gz", "../root"],
                 ["deploy", "--git", "repo", "../root"], ["deploy", "--git", "./repo/", "../root"]):
        r = subprocess.run([sys.executable, "-m", "atomic_deploy", *argv], cwd=work,
                           env=git_env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    sources = [h["source"] for h in history(tmp_path / "root") if h["op"] == "deploy"]
    assert sources == [str(work / "build"), str(work / "site.tar.gz"), str(repo), str(repo)]
    listed = json.loads(run_cli("list", tmp_path / "root", "--json").stdout)["releases"]
    assert [x["source"] for x in listed] == sources

"""Hostile input and security: links out of ROOT are deleted, never followed; temp names are
random and created exclusively; nothing reaches a shell; state files get sane modes and are
refused when another user owns them, everyone may write them, or they are symlinks."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import atomic_deploy
from atomic_deploy import _jsonfile, _layout, _recovery, _signals, _switch
from atomic_deploy._layout import Layout
from conftest import (
    Builds,
    DeleteGuard,
    cli_env,
    current_target,
    error_line,
    hidden_entries,
    history,
    make_build,
    release_names,
    require_unprivileged_runs,
    run_as_nobody,
    run_cli,
    snapshot,
)

NOBODY = 65534
HOLDER = os.path.join(".atomic-deploy", "holder.json")
PLANTED = "0123456789abcdef"  # what the patched random_suffix hands out first


def deploy(src: Path, root: Path) -> str:
    return atomic_deploy.deploy(str(src), str(root)).release


def make_outside(base: Path) -> Path:
    outside = base / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sentinel.txt").write_text("must survive\n")
    (outside / "sub" / "deep.txt").write_text("must survive too\n")
    return outside


def without_holder(snap: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snap.items() if k != HOLDER}


# --------------------------------------------------------------------------- links out of ROOT


def linky_build(base: Path, outside: Path, name: str, with_slash: bool = True) -> Path:
    src = make_build(base / name, version=name)
    if with_slash:
        os.symlink("/", src / "to-slash")
    os.symlink(str(outside), src / "to-outside")
    os.symlink(str(outside / "sentinel.txt"), src / "to-sentinel")
    (src / "nested").mkdir()
    os.symlink(str(outside / "sub"), src / "nested" / "to-sub")
    return src


def test_prune_deletes_links_never_their_targets(
    tmp_path: Path, builds: Builds, root: Path, guard: DeleteGuard
) -> None:
    outside = make_outside(tmp_path)
    outside_before, slash_before = snapshot(outside), set(os.listdir("/"))
    old = deploy(linky_build(tmp_path, outside, "linky"), root)
    assert os.readlink(root / "releases" / old / "to-slash") == "/"
    ids = [deploy(builds(v), root) for v in ("v2", "v3")]
    guard.allowed, guard.on = [str(root)], True
    result = atomic_deploy.prune(str(root), keep=1)
    guard.on = False
    assert result.deleted == [old]
    assert guard.violations == []
    assert any(d.endswith(os.sep + "to-slash") for d in guard.deleted)
    assert release_names(root) == ids
    assert hidden_entries(root) == []
    assert snapshot(outside) == outside_before
    assert (outside / "sentinel.txt").read_text() == "must survive\n"
    assert slash_before <= set(os.listdir("/"))  # nothing deleted at /


def test_prune_cli_deletes_links_never_their_targets(
    tmp_path: Path, builds: Builds, root: Path
) -> None:
    # In a subprocess no guard can stop a wrong deletion, so no link to / here (see above).
    outside = make_outside(tmp_path)
    outside_before = snapshot(outside)
    old = deploy(linky_build(tmp_path, outside, "linky", with_slash=False), root)
    ids = [deploy(builds(v), root) for v in ("v2", "v3")]
    r = run_cli("prune", root, "--keep", "1")
    assert r.returncode == 0, r.stderr
    assert release_names(root) == ids
    assert old not in release_names(root)
    assert hidden_entries(root) == []
    assert snapshot(outside) == outside_before


@pytest.mark.parametrize("link", ["slash", "outside"])
def test_failed_deploy_cleanup_after_full_copy_deletes_the_link_only(
    tmp_path: Path, builds: Builds, root: Path, guard: DeleteGuard,
    monkeypatch: pytest.MonkeyPatch, link: str,
) -> None:
    outside = make_outside(tmp_path)
    outside_before, slash_before = snapshot(outside), set(os.listdir("/"))
    first = deploy(builds("v1"), root)
    # ONLY the link and one file, so copy order cannot matter; the fault is after the whole copy
    src = tmp_path / "only-link"
    src.mkdir()
    target = "/" if link == "slash" else str(outside)
    os.symlink(target, src / "the-link")
    (src / "index.html").write_text("<h1>linky</h1>\n")

    seen: list[dict[str, Any]] = []
    real_remove = _recovery.remove_entry

    def spy(parent: str, name: str) -> None:
        if name.startswith(_layout.STAGING_PREFIX):
            seen.append(snapshot(Path(parent) / name))  # what is about to be deleted
        real_remove(parent, name)

    monkeypatch.setattr(_recovery, "remove_entry", spy)
    monkeypatch.setenv(_signals.FAULT_ENV, "copied:EIO")
    guard.allowed, guard.on = [str(root)], True
    with pytest.raises(atomic_deploy.OperationFailed):
        atomic_deploy.deploy(str(src), str(root))
    guard.on = False
    # the link really was staged, as a link, when the cleanup removed the staging folder
    assert seen and seen[0].get("the-link") == ("link", target), seen
    assert guard.violations == []
    assert release_names(root) == [first]
    assert hidden_entries(root) == []
    assert current_target(root) == f"releases/{first}"
    assert snapshot(outside) == outside_before
    assert slash_before <= set(os.listdir("/"))  # nothing deleted at /


def test_failed_deploy_cleanup_after_copy_cli(tmp_path: Path, builds: Builds, root: Path) -> None:
    outside = make_outside(tmp_path)
    outside_before = snapshot(outside)
    first = deploy(builds("v1"), root)
    src = tmp_path / "only-link"
    src.mkdir()
    os.symlink(str(outside), src / "the-link")
    (src / "index.html").write_text("<h1>linky</h1>\n")
    for fault in ("copied:EIO", "copy-file:EIO"):
        r = run_cli("deploy", src, root, fault=fault)
        assert r.returncode == 1, (fault, r.stderr)
        assert release_names(root) == [first]
        assert hidden_entries(root) == []
        assert current_target(root) == f"releases/{first}"
        assert snapshot(outside) == outside_before


def test_deploy_rolled_back_after_switch_deletes_links_only(
    tmp_path: Path, builds: Builds, root: Path, guard: DeleteGuard,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outside = make_outside(tmp_path)
    outside_before, slash_before = snapshot(outside), set(os.listdir("/"))
    first = deploy(builds("v1"), root)
    monkeypatch.setenv(_signals.FAULT_ENV, "switched:EIO")  # current already points at it
    guard.allowed, guard.on = [str(root)], True
    with pytest.raises(atomic_deploy.OperationFailed):
        atomic_deploy.deploy(str(linky_build(tmp_path, outside, "linky")), str(root))
    guard.on = False
    assert guard.violations == []
    assert any(d.endswith(os.sep + "to-slash") for d in guard.deleted)
    assert current_target(root) == f"releases/{first}"
    assert release_names(root) == [first]
    assert hidden_entries(root) == []
    assert snapshot(outside) == outside_before
    assert slash_before <= set(os.listdir("/"))  # nothing deleted at /


def test_rollback_cleanup_of_leftovers_deletes_links_only(
    tmp_path: Path, builds: Builds, root: Path, guard: DeleteGuard
) -> None:
    outside = make_outside(tmp_path)
    outside_before, slash_before = snapshot(outside), set(os.listdir("/"))
    ids = [deploy(linky_build(tmp_path, outside, "linky"), root), deploy(builds("v2"), root)]
    # what a kill -9 leaves: a temp link of the switch and a staging folder, both pointing out
    state_tmp = root / ".atomic-deploy" / "tmp"
    os.symlink(str(outside), state_tmp / "current.feedfacefeedface")
    os.symlink("/", state_tmp / "current.deadbeefdeadbeef")
    staging = root / "releases" / ".atomic-deploy-staging.20990101000000.abcdef"
    (staging / "sub").mkdir(parents=True)
    os.symlink("/", staging / "to-slash")
    os.symlink(str(outside), staging / "sub" / "to-outside")
    guard.allowed, guard.on = [str(root)], True
    result = atomic_deploy.rollback(str(root))
    guard.on = False
    assert result.release == ids[0]
    assert result.recovered and "leftover" in result.recovered
    assert guard.violations == []
    assert hidden_entries(root) == []
    # the release rolled back to keeps its links, untouched
    assert os.readlink(root / "current" / "to-slash") == "/"
    assert os.readlink(root / "current" / "to-outside") == str(outside)
    assert release_names(root) == ids
    assert snapshot(outside) == outside_before
    assert slash_before <= set(os.listdir("/"))  # nothing deleted at /


# --------------------------------------------------------------------------- temp names


def test_temp_link_names_are_random_and_long(root: Path, builds: Builds) -> None:
    deploy(builds("v1"), root)
    layout = Layout(str(root))
    names = [os.path.basename(_switch._make_temp_link(layout, "releases/x")) for _ in range(2)]
    try:
        assert names[0] != names[1]
        for n in names:
            m = re.fullmatch(r"current\.([0-9a-f]+)", n)
            assert m and len(m.group(1)) >= 16, n
            assert os.readlink(root / ".atomic-deploy" / "tmp" / n) == "releases/x"
    finally:
        for n in names:
            os.unlink(root / ".atomic-deploy" / "tmp" / n)
    suffixes = {_jsonfile.random_suffix() for _ in range(50)}
    assert len(suffixes) == 50
    assert all(re.fullmatch(r"[0-9a-f]{16,}", s) for s in suffixes)


OURS = re.compile(r"^(current.*|releases|\.atomic-deploy.*|index\.html|version\.txt|assets)$")


def _outside_view(outside: Path) -> tuple[dict[str, Any], list[str]]:
    """The outside folder exactly, and whatever in /etc could only have come from us (other
    processes may legitimately change /etc meanwhile)."""
    return snapshot(outside), sorted(n for n in os.listdir("/etc") if OURS.match(n))


@pytest.mark.parametrize("when", ["before", "race"])
@pytest.mark.parametrize("points_to", ["etc", "outside"])
@pytest.mark.parametrize("op", ["activate", "deploy"])
def test_planted_temp_link_is_never_followed_or_reused(
    tmp_path: Path, builds: Builds, root: Path, monkeypatch: pytest.MonkeyPatch,
    op: str, points_to: str, when: str,
) -> None:
    outside = make_outside(tmp_path)
    ids = [deploy(builds(v), root) for v in ("v1", "v2")]
    view_before = _outside_view(outside)
    evil = "/etc" if points_to == "etc" else str(outside)
    planted = root / ".atomic-deploy" / "tmp" / f"current.{PLANTED}"
    calls: list[str] = []
    real = _jsonfile.random_suffix

    def predicted() -> str:
        calls.append("x")
        if len(calls) == 1:
            if when == "race":  # after recovery cleaned tmp/, right before the symlink call
                os.symlink(evil, planted)
            return PLANTED
        return real()

    if when == "before":
        os.symlink(evil, planted)
    monkeypatch.setattr(_switch, "random_suffix", predicted)  # the temp link's name only
    if op == "activate":
        result: Any = atomic_deploy.activate(str(root), ids[0])
        intended = ids[0]
    else:
        result = atomic_deploy.deploy(str(builds("v3")), str(root))
        intended = result.release
    assert current_target(root) == f"releases/{intended}"
    assert os.path.islink(root / "current")
    assert os.path.realpath(root / "current") == str((root / "releases" / intended).resolve())
    if when == "before":
        # Removed (the link, not its target) by the leftover cleanup before the operation
        # switched: the switch then made its own link under that name, so nothing planted
        # could be renamed into place.
        assert result.recovered is not None and f"tmp/current.{PLANTED}" in result.recovered
        assert not os.path.lexists(planted)
        assert len(calls) == 1
        assert hidden_entries(root) == []
    else:
        # Planted between the cleanup and the symlink call: symlink fails with EEXIST, the
        # switch draws a new name, and the planted link is left alone, never followed.
        assert result.recovered is None
        assert os.readlink(planted) == evil
        assert len(calls) >= 2, "the switch must pick a new name on EEXIST"
        assert hidden_entries(root) == [f"tmp/current.{PLANTED}"]
    assert _outside_view(outside) == view_before


@pytest.mark.parametrize("target", ["existing", "dangling"])
@pytest.mark.parametrize("which", ["journal", "holder"])
def test_planted_json_temp_file_is_never_written_through(
    tmp_path: Path, builds: Builds, root: Path, monkeypatch: pytest.MonkeyPatch,
    which: str, target: str,
) -> None:
    outside = make_outside(tmp_path)
    ids = [deploy(builds(v), root) for v in ("v1", "v2")]
    victim = outside / ("sentinel.txt" if target == "existing" else "created-through-link.txt")
    planted = root / ".atomic-deploy" / f".{which}.json.{PLANTED}"
    os.symlink(str(victim), planted)
    outside_before = snapshot(outside)
    before = without_holder(snapshot(root))
    monkeypatch.setattr(_jsonfile, "random_suffix", lambda: PLANTED)
    try:
        atomic_deploy.activate(str(root), ids[0])
        succeeded = True
    except (atomic_deploy.AtomicDeployError, OSError):
        succeeded = False
    assert snapshot(outside) == outside_before
    assert os.path.exists(victim) == (target == "existing")
    if os.path.lexists(planted):  # left alone, or removed as a leftover: never followed
        assert os.readlink(planted) == str(victim)
    assert hidden_entries(root) == []
    if succeeded:
        assert current_target(root) == f"releases/{ids[0]}"
    else:  # refusing is fine, as long as nothing changed
        assert current_target(root) == f"releases/{ids[1]}"
        after = without_holder(snapshot(root))
        after.pop(os.path.join(".atomic-deploy", "journal.json"), None)
        assert {k: v for k, v in after.items() if not k.endswith("history.jsonl")} == \
            {k: v for k, v in before.items() if not k.endswith("history.jsonl")}


def test_holder_and_history_symlinks_are_not_written_through(
    tmp_path: Path, builds: Builds, root: Path
) -> None:
    outside = make_outside(tmp_path)
    first = deploy(builds("v1"), root)
    state = root / ".atomic-deploy"
    os.unlink(state / "holder.json")
    os.symlink(str(outside / "sentinel.txt"), state / "holder.json")
    outside_before = snapshot(outside)
    # A state file that is a symlink is refused outright (one line, exit 2), never written through.
    r = run_cli("deploy", builds("v2"), root)
    assert r.returncode == 2, r.stderr
    assert "holder.json is a symlink" in r.stderr and r.stderr.count("\n") == 1
    assert snapshot(outside) == outside_before
    os.unlink(state / "holder.json")

    # history.jsonl as a link out: appends are O_NOFOLLOW, so the deploy must not write there
    saved = (state / "history.jsonl").read_bytes()
    (outside / "history.jsonl").write_bytes(saved)
    os.unlink(state / "history.jsonl")
    os.symlink(str(outside / "history.jsonl"), state / "history.jsonl")
    outside_before = snapshot(outside)
    current_before = current_target(root)
    r = run_cli("deploy", builds("v3"), root)
    assert snapshot(outside) == outside_before
    assert r.returncode == 2 and "history.jsonl is a symlink" in r.stderr
    assert current_target(root) == current_before
    assert release_names(root) == [first]


# --------------------------------------------------------------------------- no shell


def run_cli_in(cwd: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atomic_deploy", *map(str, args)],
                          cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=60)


def nothing_ran(cwd: Path) -> None:
    for d in (cwd, Path.cwd()):
        for name in ("X", "Y"):
            assert not os.path.lexists(d / name), f"a shell ran: {d / name} exists"
    assert (cwd / "Z" / "keep.txt").read_text() == "kept\n"


def test_metacharacters_in_message_and_paths_reach_no_shell(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    (cwd / "Z").mkdir(parents=True)
    (cwd / "Z" / "keep.txt").write_text("kept\n")
    message = "$(touch X); `touch Y` | rm -rf Z\nsecond line: ünïcødé ✓ 日本 && touch X"
    src = make_build(tmp_path / "src; $(touch X) `touch Y` | rm -rf Z\nnl ✓", version="meta")
    root = tmp_path / "www $(touch X); `touch Y`\nü"
    r = run_cli_in(cwd, "deploy", src, root, "--message", message)
    assert r.returncode == 0, r.stderr
    nothing_ran(cwd)
    [rec] = [h for h in history(root) if h["op"] == "deploy"]
    assert rec["outcome"] == "ok"
    assert rec["message"] == message
    assert rec["source"] == str(src)
    assert (root / "current" / "version.txt").read_text() == "meta\n"
    # the list shows it without running anything either
    r = run_cli_in(cwd, "list", root, "--json")
    assert r.returncode == 0, r.stderr
    nothing_ran(cwd)


@pytest.mark.parametrize("bad_id", [
    "20240101000000; touch X",
    "$(touch X)",
    "`touch X`",
    "20240101000000\ntouch X",
    "20240101000000 && touch Y",
    "../../../X",
    "20240101000000|touch Y",
])
def test_hostile_release_ids_are_refused_and_reach_no_shell(
    tmp_path: Path, builds: Builds, bad_id: str
) -> None:
    cwd = tmp_path / "cwd"
    (cwd / "Z").mkdir(parents=True)
    (cwd / "Z" / "keep.txt").write_text("kept\n")
    root = tmp_path / "www"
    ids = [deploy(builds(v), root) for v in ("v1", "v2")]
    before = without_holder(snapshot(root))
    for args in (["activate", root, bad_id], ["rollback", root, "--to", bad_id]):
        r = run_cli_in(cwd, *args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        error_line(r)  # one line, even with a newline in the id
        nothing_ran(cwd)
    assert without_holder(snapshot(root)) == before
    assert current_target(root) == f"releases/{ids[-1]}"


# --------------------------------------------------------------------------- modes and owners


def test_state_modes_under_umask_000(tmp_path: Path, builds: Builds) -> None:
    root = tmp_path / "www"
    cmd = ["sh", "-c", 'umask 000; exec "$@"', "sh", sys.executable, "-m", "atomic_deploy",
           "deploy", str(builds("v1")), str(root)]
    r = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    state = root / ".atomic-deploy"
    modes = {p: stat.S_IMODE(os.lstat(state / p if p else state).st_mode)
             for p in ("", "lock", "tmp", "holder.json", "history.jsonl")}
    modes["releases"] = stat.S_IMODE(os.lstat(root / "releases").st_mode)
    writable = {p or ".atomic-deploy": oct(m) for p, m in modes.items() if m & stat.S_IWOTH}
    assert writable == {}, f"world-writable under umask 000: {writable}"
    # and the next deploy accepts what the first one made
    r = subprocess.run([*cmd[:-2], str(builds("v2")), str(root)], env=cli_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_root_created_under_umask_000_is_not_world_writable(tmp_path: Path, builds: Builds) -> None:
    # Anyone who may write ROOT may replace `current` (or the state folder) by rename.
    root = tmp_path / "www"
    cmd = ["sh", "-c", 'umask 000; exec "$@"', "sh", sys.executable, "-m", "atomic_deploy",
           "deploy", str(builds("v1")), str(root)]
    r = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mode = stat.S_IMODE(os.lstat(root).st_mode)
    assert not mode & stat.S_IWOTH, f"ROOT created with mode {oct(mode)} under umask 000"


def require_root_for_chown() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown the state to another user")


@pytest.mark.parametrize("what", [".atomic-deploy", ".atomic-deploy/lock", ".atomic-deploy/tmp"])
def test_state_owned_by_another_user_is_refused(
    builds: Builds, root: Path, what: str
) -> None:
    require_root_for_chown()
    first = deploy(builds("v1"), root)
    os.lchown(root / what, NOBODY, NOBODY)
    before = snapshot(root)
    r = run_cli("deploy", builds("v2"), root)
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = error_line(r)
    assert f"uid {NOBODY}" in line, line
    assert snapshot(root) == before
    assert current_target(root) == f"releases/{first}"
    for cmd in (["rollback", root], ["prune", root, "--keep", "1"], ["activate", root, first]):
        r = run_cli(*cmd)
        assert r.returncode == 2, (cmd, r.stderr)
        assert f"uid {NOBODY}" in error_line(r)
    assert snapshot(root) == before


@pytest.mark.parametrize("what,mode", [
    (".atomic-deploy", 0o777),
    (".atomic-deploy", 0o1777),
    (".atomic-deploy/tmp", 0o777),
    (".atomic-deploy/lock", 0o666),
])
def test_world_writable_state_is_refused(builds: Builds, root: Path, what: str, mode: int) -> None:
    first = deploy(builds("v1"), root)
    os.chmod(root / what, mode)
    before = snapshot(root)
    r = run_cli("deploy", builds("v2"), root)
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = error_line(r)
    assert "writable by every user" in line, line
    assert snapshot(root) == before
    assert current_target(root) == f"releases/{first}"


@pytest.mark.parametrize("what", [".atomic-deploy", ".atomic-deploy/tmp", "releases"])
def test_state_folder_symlink_is_refused(
    tmp_path: Path, builds: Builds, root: Path, what: str
) -> None:
    first = deploy(builds("v1"), root)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(root / what), str(elsewhere))
    os.symlink(str(elsewhere), root / what)
    before, elsewhere_before = snapshot(root), snapshot(elsewhere)
    r = run_cli("deploy", builds("v2"), root)
    assert r.returncode == 2, (r.returncode, r.stderr)
    error_line(r)
    assert snapshot(root) == before
    assert snapshot(elsewhere) == elsewhere_before
    assert os.readlink(root / "current") == f"releases/{first}"


@pytest.mark.parametrize("target", ["existing", "dangling"])
def test_lock_file_symlink_is_refused(
    tmp_path: Path, builds: Builds, root: Path, target: str
) -> None:
    outside = make_outside(tmp_path)
    first = deploy(builds("v1"), root)
    victim = outside / ("sentinel.txt" if target == "existing" else "made-through-lock")
    lock = root / ".atomic-deploy" / "lock"
    os.unlink(lock)
    os.symlink(str(victim), lock)
    before, outside_before = snapshot(root), snapshot(outside)
    r = run_cli("deploy", builds("v2"), root)
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = error_line(r)
    assert "symlink" in line, line
    assert snapshot(root) == before
    assert snapshot(outside) == outside_before
    assert os.path.exists(victim) == (target == "existing")
    assert current_target(root) == f"releases/{first}"


# ------------------------------------------------- removal refused by another user's folder

@pytest.mark.parametrize("op", ["prune", "recover"])
def test_removal_refused_in_another_users_folder_is_one_line(nobody_dir: Path, op: str) -> None:
    """A release holding a folder owned by root, pruned by uid 65534: unlinking inside it and
    making it writable (chmod through the folder's descriptor) both fail. The error names a
    path (not a descriptor number) on one line, with the state, and no traceback."""
    require_unprivileged_runs()
    root = nobody_dir / "www"
    ids = []
    for v in ("v1", "v2", "v3"):
        src = make_build(nobody_dir / v, version=v)
        os.chmod(src, 0o755)
        ids.append(deploy(src, root))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            os.chown(os.path.join(dirpath, name), NOBODY, NOBODY, follow_symlinks=False)
    locked = root / "releases" / ids[0] / "assets"  # holds app.js
    os.chown(locked, 0, 0)
    os.chmod(locked, 0o755)
    if op == "recover":  # the same removal, done by the recovery of a killed deploy
        staging = root / "releases" / f"{_layout.STAGING_PREFIX}x.0"
        os.rename(root / "releases" / ids[0], staging)

    r = run_as_nobody("prune", root, "--keep", "1")

    # A leftover that cannot be removed never blocks the root: the prune completes, one
    # warning line names the path (not a descriptor number), no traceback.
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    warned = [ln for ln in lines if ln.startswith("atomic-deploy: warning:")]
    assert len(warned) == 1, lines
    line = warned[0]
    assert "Traceback" not in r.stderr and "isprintable" not in r.stderr
    assert "Permission denied" in line or "Operation not permitted" in line, line
    assert str(root / "releases") in line and "assets" in line, line
    assert current_target(root) == f"releases/{ids[2]}"
    assert (root / "current" / "version.txt").read_text() == "v3\n"
    # status lists it; once the folder can be deleted, the next command removes it
    st = json.loads(run_as_nobody("status", root, "--json").stdout)
    assert len(st["leftovers"]) == 1 and ".atomic-deploy-" in st["leftovers"][0], st
    for hidden in (root / "releases").glob(".atomic-deploy-*/assets"):
        os.chown(hidden, NOBODY, NOBODY)
    r = run_as_nobody("prune", root, "--keep", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(run_as_nobody("status", root, "--json").stdout)["leftovers"] == []

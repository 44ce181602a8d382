"""`doctor`: findings for healthy and broken roots, and that it never changes anything."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

import atomic_deploy
from atomic_deploy import _doctor
from atomic_deploy._doctor import (
    Check,
    Mount,
    classify_fstype,
    doctor,
    exit_status,
    format_checks,
    mount_for,
    parse_mountinfo,
    tree_size,
)
from atomic_deploy._layout import Layout
from atomic_deploy._lock import RootLock
from conftest import Builds, run_cli


def by_name(checks: list[Check]) -> dict[str, Check]:
    """name -> check; a name that occurs twice (permissions) keeps its worst status."""
    rank = {"ok": 0, "warn": 1, "fail": 2}
    out: dict[str, Check] = {}
    for c in checks:
        if c.name not in out or rank[c.status] > rank[out[c.name].status]:
            out[c.name] = c
    return out


def fails(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


def full_snapshot(root: Path) -> dict[str, Any]:
    """Every entry under root with type, mode, owner, size, mtime and content or link text.
    ROOT's own mtime is left out: making and removing the probe folder inside it changes it."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = Path(p).read_bytes()
            else:
                body = None
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid,
                                             st.st_size, st.st_mtime_ns, body)
    top = os.lstat(root)
    out["."] = (top.st_mode, top.st_uid)
    return out


@pytest.fixture
def deployed(builds: Builds, root: Path) -> Path:
    atomic_deploy.deploy(str(builds("v1")), str(root))
    atomic_deploy.deploy(str(builds("v2")), str(root))
    return root


# --- healthy and missing roots ------------------------------------------------------------------


def test_healthy_deployed_root_has_no_failures(deployed: Path) -> None:
    checks = doctor(str(deployed))
    assert fails(checks) == [], format_checks(checks)
    assert exit_status(checks) == 0
    names = [c.name for c in checks]
    for expected in ("root", "filesystem", "same filesystem", "rename", "flock", "fsync",
                     "reflink", "free space", "layout", "permissions", "current",
                     "stray entries", "leftovers", "interrupted", "lock"):
        assert expected in names
    found = by_name(checks)
    assert found["current"].status == "ok" and "releases/" in found["current"].detail
    assert found["lock"].detail == "free"
    assert found["flock"].status == "ok"
    assert found["reflink"].detail.startswith(("yes", "no", "unknown"))
    assert "current release" in found["free space"].detail
    assert all(c.status in ("ok", "warn", "fail") for c in checks)


def test_missing_root_fails(tmp_path: Path) -> None:
    checks = doctor(str(tmp_path / "nowhere"))
    assert [(c.name, c.status) for c in checks] == [("root", "fail")]
    assert "does not exist" in checks[0].detail
    assert checks[0].fix
    assert exit_status(checks) == 1
    assert not (tmp_path / "nowhere").exists()


def test_root_that_is_a_file_fails(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    (check,) = doctor(str(f))
    assert check.status == "fail" and "not a directory" in check.detail


def test_empty_root_is_fine_before_the_first_deploy(tmp_path: Path) -> None:
    checks = doctor(str(tmp_path))
    assert fails(checks) == []
    found = by_name(checks)
    assert "absent" in found["current"].detail
    assert "first deploy" in found["layout"].detail


# --- broken states ----------------------------------------------------------------------------


def test_dangling_current_fails_and_names_a_release_to_activate(deployed: Path) -> None:
    older, newer = sorted(os.listdir(deployed / "releases"))
    (deployed / "releases" / newer).rename(deployed / "elsewhere")
    checks = doctor(str(deployed))
    cur = by_name(checks)["current"]
    assert cur.status == "fail" and "dangling" in cur.detail
    assert cur.fix == f"atomic-deploy activate {deployed} {older}"
    assert exit_status(checks) == 1


def test_real_directory_current_fails_with_adopt(root: Path) -> None:
    (root / "current").mkdir(parents=True)
    (root / "current" / "index.html").write_text("hand-made\n")
    cur = by_name(doctor(str(root)))["current"]
    assert cur.status == "fail" and "real directory" in cur.detail
    assert cur.fix is not None and cur.fix.startswith(f"atomic-deploy adopt {root}")


def test_regular_file_current_fails(root: Path) -> None:
    root.mkdir()
    (root / "current").write_text("oops")
    cur = by_name(doctor(str(root)))["current"]
    assert cur.status == "fail" and "regular file" in cur.detail and cur.fix


def test_current_outside_releases_warns(deployed: Path) -> None:
    (deployed / "current").unlink()
    (deployed / "current").symlink_to("/var/www/old")
    cur = by_name(doctor(str(deployed)))["current"]
    assert cur.status == "warn" and "outside releases/" in cur.detail


def test_stray_entries_warn(deployed: Path) -> None:
    (deployed / "releases" / "notes.txt").write_text("x")
    (deployed / "releases" / "latest").symlink_to("somewhere")
    checks = doctor(str(deployed))
    stray = by_name(checks)["stray entries"]
    assert stray.status == "warn"
    assert "latest" in stray.detail and "notes.txt" in stray.detail and "ignored" in stray.detail
    assert exit_status(checks) == 0


def test_leftover_staging_folder_warns(deployed: Path) -> None:
    (deployed / "releases" / ".atomic-deploy-staging.20990101000000.abcd").mkdir()
    (deployed / ".atomic-deploy" / "tmp" / "current.1234").symlink_to("releases/x")
    left = by_name(doctor(str(deployed)))["leftovers"]
    assert left.status == "warn"
    assert "the next deploy removes them" in left.detail
    assert ".atomic-deploy-staging.20990101000000.abcd" in left.detail
    assert "current.1234" in left.detail


def test_journal_of_a_killed_deploy_warns(deployed: Path, builds: Builds) -> None:
    r = run_cli("deploy", builds("v3"), deployed, fault="switched:KILL")
    assert r.returncode != 0
    journal = json.loads((deployed / ".atomic-deploy" / "journal.json").read_text())
    checks = doctor(str(deployed))
    found = by_name(checks)
    assert found["interrupted"].status == "warn"
    assert "the next mutating command recovers it" in found["interrupted"].detail
    assert f"pid {journal['pid']}" in found["interrupted"].detail
    assert found["lock"].detail == "free"  # the kernel dropped the dead process's lock
    assert exit_status(checks) == 0


def test_running_operation_is_not_reported_as_interrupted(deployed: Path) -> None:
    layout = Layout(str(deployed))
    journal = deployed / ".atomic-deploy" / "journal.json"
    with RootLock(layout, command="test holder"):
        journal.write_text(json.dumps({"op": "deploy", "pid": os.getpid(), "release": "x"}))
        found = by_name(doctor(str(deployed)))
    assert found["lock"].detail.startswith(f"held by pid {os.getpid()} ")
    assert found["interrupted"].status == "ok" and "in progress" in found["interrupted"].detail
    assert found["leftovers"].status == "ok"


def test_corrupt_journal_warns(deployed: Path) -> None:
    (deployed / ".atomic-deploy" / "journal.json").write_text("{torn")
    found = by_name(doctor(str(deployed)))
    assert found["interrupted"].status == "warn" and "unreadable" in found["interrupted"].detail


def test_world_writable_state_folder_fails(deployed: Path) -> None:
    state = deployed / ".atomic-deploy"
    state.chmod(0o777)
    checks = doctor(str(deployed))
    perm = by_name(checks)["permissions"]
    assert perm.status == "fail" and "writable by every user" in perm.detail
    assert perm.fix == f"chmod o-w {state}"
    assert exit_status(checks) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder to another user")
def test_state_folder_of_another_user_fails(deployed: Path) -> None:
    os.chown(deployed / ".atomic-deploy", 54321, -1)
    perm = by_name(doctor(str(deployed)))["permissions"]
    assert perm.status == "fail" and "owned by uid 54321" in perm.detail
    assert perm.fix is not None and "uid 54321" in perm.fix


def test_world_writable_root_warns(deployed: Path) -> None:
    deployed.chmod(0o777)
    checks = doctor(str(deployed))
    perm = [c for c in checks if c.name == "permissions"]
    assert [c.status for c in perm] == ["warn"]
    assert "any user can replace current" in perm[0].detail


def test_releases_that_is_a_file_fails(root: Path) -> None:
    root.mkdir()
    (root / "releases").write_text("not a folder")
    layout = by_name(doctor(str(root)))["layout"]
    assert layout.status == "fail" and "not a directory" in layout.detail


def test_unwritable_root_fails_and_skips_probes(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(tmp_path)
                        else real_access(p, mode, **kw))
    checks = doctor(str(tmp_path))
    found = by_name(checks)
    assert found["root"].status == "fail" and "not writable" in found["root"].detail
    assert "rename" not in found and "flock" not in found
    assert os.listdir(tmp_path) == []


# --- read-only: a full snapshot before and after ----------------------------------------------


@pytest.mark.parametrize("state", ["healthy", "leftovers", "journal", "dangling", "empty"])
def test_doctor_changes_nothing(state: str, deployed: Path, builds: Builds) -> None:
    if state == "leftovers":
        (deployed / "releases" / ".atomic-deploy-trash.1.ab").mkdir()
        (deployed / "releases" / "stray.txt").write_text("x")
    elif state == "journal":
        assert run_cli("deploy", builds("v3"), deployed, fault="switched:KILL").returncode != 0
    elif state == "dangling":
        (deployed / "current").unlink()
        (deployed / "current").symlink_to("releases/19990101000000")
    elif state == "empty":
        for entry in deployed.iterdir():
            if entry.is_symlink():
                entry.unlink()
            else:
                shutil.rmtree(entry)
    before = full_snapshot(deployed)
    doctor(str(deployed))
    doctor(str(deployed))
    assert full_snapshot(deployed) == before
    assert not [n for n in os.listdir(deployed) if n.startswith(_doctor.PROBE_PREFIX)]


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), RuntimeError("boom")])
def test_probe_folder_is_removed_when_a_probe_breaks(deployed: Path, error: Exception,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(probe: str) -> Check:
        assert os.path.isdir(probe) and os.path.dirname(probe) == str(deployed)
        raise error

    monkeypatch.setattr(_doctor, "_probe_flock", broken)
    if isinstance(error, OSError):
        flock = by_name(doctor(str(deployed)))["flock"]
        assert flock.status == "fail" and "Input/output error" in flock.detail
    else:
        with pytest.raises(RuntimeError):
            doctor(str(deployed))
    assert not [n for n in os.listdir(deployed) if n.startswith(_doctor.PROBE_PREFIX)]


# --- free space -------------------------------------------------------------------------------


class FakeVfs:
    def __init__(self, blocks: int, avail: int, files: int = 1000, favail: int = 900) -> None:
        self.f_frsize = 4096
        self.f_blocks = blocks
        self.f_bavail = avail
        self.f_files = files
        self.f_favail = favail


def test_free_space_warns_under_ten_percent(deployed: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "statvfs", lambda p: FakeVfs(blocks=1_000_000, avail=50_000))
    space = by_name(doctor(str(deployed)))["free space"]
    assert space.status == "warn" and "under 10% free" in space.detail
    assert space.fix is not None and "prune" in space.fix


def test_free_space_warns_under_twice_the_current_release(deployed: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "statvfs", lambda p: FakeVfs(blocks=10, avail=9))  # 36 KB free
    big = deployed / "current" / "big.bin"
    big.write_bytes(b"\0" * 20_000)
    space = by_name(doctor(str(deployed)))["free space"]
    assert space.status == "warn" and "twice the current release" in space.detail


def test_free_space_warns_when_inodes_run_out(deployed: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "statvfs",
                        lambda p: FakeVfs(blocks=1_000_000, avail=900_000, files=1000, favail=5))
    space = by_name(doctor(str(deployed)))["free space"]
    assert space.status == "warn" and "inodes" in space.detail


def test_tree_size_counts_hard_links_once_and_never_follows_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c").write_bytes(b"y" * 10)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "huge").write_bytes(b"z" * 10_000)
    (tmp_path / "link").symlink_to(outside)
    assert tree_size(str(tmp_path)) == (110, False)
    size, capped = tree_size(str(tmp_path), limit=2)
    assert capped and size <= 110


# --- mounts -----------------------------------------------------------------------------------

SAMPLE_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:45 / /srv/www rw,relatime shared:20 master:3 - nfs4 files:/export/www rw,vers=4.2
41 27 0:46 / /srv/www2 rw,relatime - xfs /dev/vdb rw
42 27 0:47 / /mnt/with\\040space rw - fuse.sshfs me@host:/x rw
43 40 0:48 / /srv/www/cache rw - tmpfs tmpfs rw
44 27 0:49 / /srv/www2 rw - btrfs /dev/vdc rw
garbage line
"""


def test_parse_mountinfo() -> None:
    mounts = parse_mountinfo(SAMPLE_MOUNTINFO)
    assert len(mounts) == 7
    assert mounts[2] == Mount("/srv/www", "nfs4", "files:/export/www")
    assert mounts[4] == Mount("/mnt/with space", "fuse.sshfs", "me@host:/x")


def test_mount_for_picks_the_longest_visible_mount_point() -> None:
    mounts = parse_mountinfo(SAMPLE_MOUNTINFO)
    assert mount_for("/srv/www/site", mounts) == mounts[2]
    assert mount_for("/srv/www", mounts) == mounts[2]
    assert mount_for("/srv/www/cache/x", mounts) == mounts[5]
    assert mount_for("/srv/www2/site", mounts) == mounts[6]  # stacked: the later one is visible
    assert mount_for("/srv/wwwx", mounts) == mounts[1]  # a name prefix is not a path prefix
    assert mount_for("/mnt/with space/r", mounts) == mounts[4]
    assert mount_for("/x", []) is None


def test_classify_fstype() -> None:
    for fstype in ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "fuseblk", "fuse", "9p", "ceph"):
        assert classify_fstype(fstype)[0] == "warn", fstype
    for fstype in ("ext4", "xfs", "btrfs", "zfs", "apfs", "overlay", "tmpfs"):
        assert classify_fstype(fstype)[0] == "ok", fstype
    assert "network" in classify_fstype("nfs4")[1]
    assert "FUSE" in classify_fstype("fuse.sshfs")[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mountinfo is read on Linux only")
def test_nfs_root_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = tmp_path / "mountinfo"
    real = os.path.realpath(tmp_path)
    sample.write_text(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n"
                      f"40 27 0:45 / {real} rw - nfs4 files:/export rw\n")
    monkeypatch.setattr(_doctor, "MOUNTINFO", str(sample))
    fs = by_name(doctor(str(tmp_path / "..") + "/" + tmp_path.name))["filesystem"]
    assert fs.status == "warn" and "nfs4" in fs.detail and "not guaranteed" in fs.detail
    assert fs.fix is not None and "local filesystem" in fs.fix


# --- reporting --------------------------------------------------------------------------------


def test_exit_status_and_format() -> None:
    ok, warn = Check("a", "ok", "fine"), Check("b", "warn", "hmm")
    bad = Check("c", "fail", "broken", "do this")
    assert exit_status([ok, warn]) == 0
    assert exit_status([ok, bad]) == 1
    assert exit_status([]) == 0
    text = format_checks([ok, warn, bad])
    assert "fail  c  broken" in text and "fix: do this" in text
    assert text.splitlines()[-1] == "1 failed, 1 warning(s), 1 ok"
    assert bad.to_dict() == {"name": "c", "status": "fail", "detail": "broken", "fix": "do this"}


# --- through the CLI ---------------------------------------------------------------------------


def _cli_has_doctor() -> bool:
    import argparse

    from atomic_deploy.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "doctor" in sub.choices


def test_cli_doctor(deployed: Path, tmp_path: Path) -> None:
    assert _cli_has_doctor(), "cli.py has no `doctor` command (README documents it)"
    r = run_cli("doctor", deployed)
    assert r.returncode == 0, r.stderr
    assert "current" in r.stdout and "0 failed" in r.stdout
    r = run_cli("doctor", deployed, "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["healthy"] is True
    assert {c["name"] for c in data["checks"]} >= {"flock", "rename", "current"}
    r = run_cli("doctor", tmp_path / "missing")
    assert r.returncode == 1
    assert "does not exist" in r.stdout


# --- a read-only mount, hooks that cannot run -------------------------------------------------


def test_read_only_mount_is_named_not_chown(tmp_path: Path, builds: Builds) -> None:
    """Bug: root on a read-only mount was "not writable by uid 0", fix "chown 0", to root who
    owns it."""
    from test_real_faults import Mounts, mount_problem

    reason = mount_problem()
    if reason:
        pytest.skip(reason)
    src = tmp_path / "src"
    atomic_deploy.deploy(str(builds("v1")), str(src))
    mounts = Mounts()
    try:
        ro = mounts.read_only_bind(src, tmp_path / "ro")
        r = run_cli("doctor", ro, "--json")
        assert r.returncode == 1, r.stderr
        root_check = by_name([Check(**c) for c in json.loads(r.stdout)["checks"]])["root"]
        assert root_check.status == "fail"
        assert "read-only filesystem" in root_check.detail and str(ro) in root_check.detail
        assert root_check.fix is not None and "remount" in root_check.fix
        assert "chown" not in root_check.fix
    finally:
        mounts.unmount_all()


def test_unwritable_root_owned_by_this_user_says_chmod(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False)
    found = by_name(doctor(str(tmp_path)))["root"]
    assert found.status == "fail" and found.fix == f"chmod u+wx {tmp_path}"


def _config(root: Path, text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "atomic-deploy.toml").write_text(text)


def test_argv_hook_whose_program_is_missing_or_not_executable_fails(tmp_path: Path) -> None:
    root = tmp_path / "root"
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    _config(root, f'check = [["no-such-program-{os.getpid()}", "x"]]\n'
                  f'after_switch = [["{plain}"]]\n'
                  f'health_check = [["{tmp_path}/gone", "--fast"]]\n')
    hooks = by_name(doctor(str(root)))["hooks"]
    assert hooks.status == "fail"
    assert f"no-such-program-{os.getpid()}' is not found on PATH" in hooks.detail
    assert f"{plain} is not executable" in hooks.detail
    assert f"{tmp_path}/gone does not exist" in hooks.detail
    assert hooks.fix
    r = run_cli("doctor", root)
    assert r.returncode == 1 and "not found on PATH" in r.stdout


def test_runnable_hooks_are_ok_and_shell_strings_are_said_to_be_unchecked(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    _config(root, f'check = [["{sys.executable}", "-c", "pass"]]\n'
                  'after_switch = "systemctl reload nginx"\n'
                  'on_failure = [["sh", "-c", "true"]]\n')
    hooks = by_name(doctor(str(root)))["hooks"]
    assert hooks.status == "ok", hooks
    assert "2 argument-list hook(s)" in hooks.detail
    assert "1 shell command(s)" in hooks.detail and "not checked" in hooks.detail


def test_relative_hook_program_missing_from_current_release_warns(deployed: Path) -> None:
    _config(deployed, 'check = [["bin/smoke-test"]]\n')
    hooks = by_name(doctor(str(deployed)))["hooks"]
    assert hooks.status == "warn" and "in the current release" in hooks.detail
    (deployed / "current" / "bin").mkdir()
    (deployed / "current" / "bin" / "smoke-test").write_text("#!/bin/sh\n")
    (deployed / "current" / "bin" / "smoke-test").chmod(0o755)
    assert by_name(doctor(str(deployed)))["hooks"].status == "ok"


def test_a_list_of_strings_is_several_shell_commands(tmp_path: Path) -> None:
    """As the deploy reads it: `after_switch = ["echo a", "echo b"]` is two shell commands, not
    one argument list whose program would be "echo a"."""
    root = tmp_path / "root"
    _config(root, 'after_switch = ["echo a", "echo b"]\n')
    hooks = by_name(doctor(str(root)))["hooks"]
    assert hooks.status == "ok", hooks
    assert "2 shell command(s)" in hooks.detail and "argument-list" not in hooks.detail

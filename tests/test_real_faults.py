"""Real faults, not simulated ones: a full disk, a read-only filesystem, a user without write
permission, state folders on another filesystem, and I/O errors from the flushes.

The disk, read-only and filesystem-boundary cases mount real filesystems (tmpfs, read-only bind
mounts) and so need root and a working ``mount``; the permission case needs root to drop to an
unprivileged user. Each is skipped with the reason when that is not available, and every mount
is undone in a ``finally``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import atomic_deploy
from conftest import (
    Builds,
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


def deploy(src: Path, root: Path) -> str:
    """Setup step: a successful deploy, in-process."""
    return atomic_deploy.deploy(str(src), str(root)).release


def journal_path(root: Path) -> Path:
    return root / ".atomic-deploy" / "journal.json"


# --------------------------------------------------------------------------- mounting


def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)


@functools.lru_cache(maxsize=1)
def mount_problem() -> str | None:
    """None when this process can mount a tmpfs and bind mounts; else why not."""
    if not sys.platform.startswith("linux"):
        return "mount tests need Linux (tmpfs, bind mounts)"
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs / read-only bind mount"
    for tool in ("mount", "umount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    trial = tempfile.mkdtemp(prefix="atomic-deploy-mount-probe-")
    try:
        r = _sh("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", trial)
        if r.returncode != 0:
            return f"a trial `mount -t tmpfs` failed: {r.stderr.strip()}"
        u = _sh("umount", trial)
        if u.returncode != 0:
            _sh("umount", "-l", trial)
            return f"a trial umount failed: {u.stderr.strip()}"
        return None
    finally:
        os.rmdir(trial)


class Mounts:
    """Mounts made by one test, undone in reverse order."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def _mount(self, *args: str, point: Path) -> None:
        r = _sh("mount", *args)
        assert r.returncode == 0, f"mount {' '.join(args)} failed: {r.stderr.strip()}"
        self.points.append(point)

    def tmpfs(self, path: Path, size: str = "2m", mode: str = "755") -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(path),
                    point=path)
        return path

    def read_only_bind(self, src: Path, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        self._mount("--bind", str(src), str(dst), point=dst)
        r = _sh("mount", "-o", "remount,ro,bind", str(dst))
        assert r.returncode == 0, f"remount,ro,bind failed: {r.stderr.strip()}"
        # really read-only: a write must fail
        with pytest.raises(OSError):
            (dst / ".probe").write_text("x")
        return dst

    def unmount_all(self) -> None:
        errors = []
        while self.points:
            p = self.points.pop()
            r = _sh("umount", str(p))
            if r.returncode != 0:
                lazy = _sh("umount", "-l", str(p))
                if lazy.returncode != 0:
                    errors.append(f"{p}: {r.stderr.strip()} / {lazy.stderr.strip()}")
        assert not errors, f"could not unmount: {errors}"


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    reason = mount_problem()
    if reason:
        pytest.skip(reason)
    m = Mounts()
    try:
        yield m
    finally:
        m.unmount_all()


# --------------------------------------------------------------------------- disk full


def test_disk_full_deploy_fails_cleanly_and_next_deploy_works(
    tmp_path: Path, builds: Builds, root: Path, mounts: Mounts
) -> None:
    mounts.tmpfs(root, size="2m")
    r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 0, r.stderr
    [first] = release_names(root)
    assert current_target(root) == f"releases/{first}"

    big = make_build(tmp_path / "big", {"index.html": "<h1>big</h1>\n"})
    with open(big / "blob.bin", "wb") as f:
        f.write(os.urandom(4 * 1024 * 1024))  # twice the whole filesystem
    r = run_cli("deploy", big, root)
    assert r.returncode == 1, (r.returncode, r.stderr)
    line = error_line(r)
    assert "no space" in line.lower(), line
    assert hidden_entries(root) == []
    assert release_names(root) == [first]
    assert current_target(root) == f"releases/{first}"
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert not journal_path(root).exists()

    r = run_cli("deploy", builds("v2"), root)
    assert r.returncode == 0, r.stderr
    names = release_names(root)
    assert len(names) == 2 and names[0] == first
    assert current_target(root) == f"releases/{names[1]}"
    assert (root / "current" / "version.txt").read_text() == "v2\n"
    assert hidden_entries(root) == []


# --------------------------------------------------------------------------- read-only filesystem


def three_releases(builds: Builds, root: Path) -> list[str]:
    return [deploy(builds(v), root) for v in ("v1", "v2", "v3")]


@pytest.mark.parametrize("cmd", ["deploy", "rollback", "prune", "activate"])
def test_read_only_filesystem_refuses_and_changes_nothing(
    tmp_path: Path, builds: Builds, root: Path, mounts: Mounts, cmd: str
) -> None:
    ids = three_releases(builds, root)
    src = builds("v4")
    ro = mounts.read_only_bind(root, tmp_path / "ro")
    before = snapshot(root)
    args: dict[str, list[Any]] = {
        "deploy": ["deploy", src, ro],
        "rollback": ["rollback", ro],
        "prune": ["prune", ro, "--keep", "1"],
        "activate": ["activate", ro, ids[0]],
    }
    r = run_cli(*args[cmd])
    assert r.returncode in (1, 2), (r.returncode, r.stderr)
    line = error_line(r)
    assert "Read-only" in line or "not writable" in line, line
    assert snapshot(root) == before
    assert current_target(root) == f"releases/{ids[-1]}"


def test_read_only_filesystem_status_and_list_still_work(
    tmp_path: Path, builds: Builds, root: Path, mounts: Mounts
) -> None:
    ids = three_releases(builds, root)
    ro = mounts.read_only_bind(root, tmp_path / "ro")
    before = snapshot(root)

    r = run_cli("status", ro, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["current"] == ids[-1]
    assert st["current_state"] == "ok"
    assert st["previous"] == ids[-2]

    r = run_cli("list", ro, "--json")
    assert r.returncode == 0, r.stderr
    rels = json.loads(r.stdout)["releases"]
    assert [x["id"] for x in rels] == ids
    assert [x["current"] for x in rels] == [False, False, True]

    # the plain-text forms too
    assert run_cli("status", ro).returncode == 0
    assert run_cli("list", ro).returncode == 0
    assert snapshot(root) == before


# --------------------------------------------------------------------------- permission denied


def world_readable_build(base: Path, version: str) -> Path:
    src = make_build(base / version, version=version)
    for dirpath, dirnames, filenames in os.walk(src):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    os.chmod(src, 0o755)
    return src


@pytest.mark.parametrize("cmd", ["deploy", "rollback", "prune", "activate"])
def test_permission_denied_for_unprivileged_user(nobody_dir: Path, cmd: str) -> None:
    require_unprivileged_runs()
    root = nobody_dir / "www"
    ids = [deploy(world_readable_build(nobody_dir, v), root) for v in ("v1", "v2", "v3")]
    os.chmod(root, 0o755)
    assert os.stat(root).st_uid == 0
    src = world_readable_build(nobody_dir, "v4")
    before = snapshot(root)
    args: dict[str, list[Any]] = {
        "deploy": ["deploy", src, root],
        "rollback": ["rollback", root],
        "prune": ["prune", root, "--keep", "1"],
        "activate": ["activate", root, ids[0]],
    }
    r = run_as_nobody(*args[cmd])
    assert r.returncode in (1, 2), (r.returncode, r.stderr)
    line = error_line(r)
    if r.returncode == 2:
        assert "not writable" in line, line
    else:
        assert "Permission denied" in line, line
    assert snapshot(root) == before
    assert current_target(root) == f"releases/{ids[-1]}"


# --------------------------------------------------------------------------- EXDEV


@pytest.mark.parametrize("cmd", ["deploy", "rollback"])
@pytest.mark.parametrize("where", ["tmp", "releases"])
def test_state_on_another_filesystem_is_refused_before_anything_moves(
    tmp_path: Path, builds: Builds, root: Path, mounts: Mounts, where: str, cmd: str
) -> None:
    ids = [deploy(builds(v), root) for v in ("v1", "v2")]
    if where == "tmp":
        # mode 0700 as the tool makes it, so only the filesystem boundary is wrong
        mounts.tmpfs(root / ".atomic-deploy" / "tmp", size="1m", mode="700")
    else:
        # the releases move to a tmpfs, content and all, so `current` still resolves
        saved = tmp_path / "saved-releases"
        shutil.copytree(root / "releases", saved, symlinks=True)
        mounts.tmpfs(root / "releases", size="8m", mode="755")
        shutil.copytree(saved, root / "releases", symlinks=True, dirs_exist_ok=True)
        assert os.stat(root / "releases").st_dev != os.stat(root).st_dev
        assert (root / "current" / "version.txt").read_text() == "v2\n"
    before = snapshot(root)
    r = run_cli(*(["deploy", builds("v3"), root] if cmd == "deploy" else ["rollback", root]))
    assert r.returncode == 2, (r.returncode, r.stderr)
    line = error_line(r)
    assert "another filesystem" in line, line
    assert current_target(root) == f"releases/{ids[-1]}"
    assert hidden_entries(root) == []
    assert release_names(root) == ids
    assert snapshot(root) == before


# --------------------------------------------------------------------------- I/O errors from fsync


@pytest.mark.parametrize("fault", ["flushed:EIO", "release-synced:EIO", "switch-synced:EIO"])
def test_fsync_io_error_aborts_once_and_discards_the_release(
    builds: Builds, root: Path, fault: str
) -> None:
    first = deploy(builds("v1"), root)
    n = len(history(root))
    r = run_cli("deploy", builds("v2"), root, fault=fault)
    assert r.returncode == 1, (r.returncode, r.stderr)
    line = error_line(r)
    assert "Input/output error" in line, line
    assert current_target(root) == f"releases/{first}"
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert release_names(root) == [first]
    assert hidden_entries(root) == []
    assert not journal_path(root).exists()
    new = history(root)[n:]
    # one attempt, one failure record: never retried blindly
    assert [(rec["op"], rec["outcome"]) for rec in new] == [("deploy", "failed")], new
    assert new[0]["previous_target"] == f"releases/{first}"
    # and the next run finds nothing to recover
    r = run_cli("status", root, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["interrupted"] is None and st["leftovers"] == []

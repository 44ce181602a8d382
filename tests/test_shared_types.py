"""Shared data of the wrong type, and shared/ paths through symlinks: refused before anything is
switched, with nothing seeded, nothing outside ROOT written, and the release's content intact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import atomic_deploy
from conftest import (
    current_target,
    error_line,
    hidden_entries,
    make_build,
    release_names,
    run_cli,
    snapshot,
)

SECRET = "DB_PASSWORD=hunter2\n"


def _site(path: Path, version: str) -> Path:
    return make_build(path, {"index.html": version, ".env": SECRET,
                             "public/index.html": f"<h1>{version}</h1>",
                             "storage/seed.txt": "seed"})


def _live(tmp_path: Path, root: Path) -> str:
    """A root serving v1 (no shared data); returns what current points at."""
    assert run_cli("deploy", _site(tmp_path / "v1", "v1"), root).returncode == 0
    target = current_target(root)
    assert target is not None
    return target


def _refused_under_the_lock(r: object, root: Path, target: str | None, names: list[str]) -> str:
    """Exit 2, one line, the staged release removed, current unchanged and still serving the
    release's own content."""
    line = error_line(r)  # type: ignore[arg-type]
    assert r.returncode == 2, line  # type: ignore[attr-defined]
    assert current_target(root) == target
    assert release_names(root) == names
    assert hidden_entries(root) == []
    if target is not None:
        assert (root / "current" / ".env").read_text() == SECRET
        assert (root / "current" / "public" / "index.html").is_file()
    return line


@pytest.mark.parametrize("first", [False, True], ids=["live-root", "first-deploy"])
def test_shared_dir_for_a_file_in_the_release_is_refused(tmp_path: Path, root: Path,
                                                        first: bool) -> None:
    target = None if first else _live(tmp_path, root)
    names = release_names(root)
    r = run_cli("deploy", _site(tmp_path / "v2", "v2"), root, "--shared-dir", ".env")
    line = _refused_under_the_lock(r, root, target, names)
    assert "--shared-file .env" in line and "file in the release" in line
    assert "nothing was switched" in line
    assert not os.path.lexists(root / "shared" / ".env")


@pytest.mark.parametrize("extra", [[], ["--create-missing"]])
def test_shared_file_for_a_folder_in_the_release_is_refused(tmp_path: Path, root: Path,
                                                           extra: list[str]) -> None:
    target = _live(tmp_path, root)
    names = release_names(root)
    r = run_cli("deploy", _site(tmp_path / "v2", "v2"), root, "--shared-file", "public", *extra)
    if not extra:  # a missing shared file is found first, before anything is copied
        assert r.returncode == 2 and "--create-missing" in error_line(r)
        return
    line = _refused_under_the_lock(r, root, target, names)
    assert "--shared-dir public" in line and "folder in the release" in line
    assert not os.path.lexists(root / "shared" / "public")


def test_every_shared_path_is_checked_before_any_is_seeded(tmp_path: Path, root: Path) -> None:
    target = _live(tmp_path, root)
    r = run_cli("deploy", _site(tmp_path / "v2", "v2"), root, "--shared-dir", "storage",
                "--shared-dir", ".env")
    _refused_under_the_lock(r, root, target, release_names(root))
    assert not os.path.lexists(root / "shared")  # storage, fine on its own, was not seeded


@pytest.mark.parametrize(("kind", "flag", "other"), [("dir", "--shared-file", "--shared-dir"),
                                                     ("file", "--shared-dir", "--shared-file")])
def test_shared_entry_of_the_other_type_is_refused_before_copying(
        tmp_path: Path, root: Path, kind: str, flag: str, other: str) -> None:
    _live(tmp_path, root)
    entry = root / "shared" / "thing"
    if kind == "dir":
        (entry / "inside").mkdir(parents=True)
    else:
        entry.parent.mkdir()
        entry.write_text("data")
    before = snapshot(root)
    r = run_cli("deploy", _site(tmp_path / "v2", "v2"), root, flag, "thing", "--create-missing")
    line = error_line(r)
    assert r.returncode == 2
    assert f"{other} thing" in line and "nothing was changed" in line
    assert snapshot(root) == before  # found before the lock: not even the holder file changed


def test_api_refuses_a_type_mismatch(tmp_path: Path, root: Path) -> None:
    _live(tmp_path, root)
    with pytest.raises(atomic_deploy.InvalidInput, match="--shared-file") as info:
        atomic_deploy.deploy(str(_site(tmp_path / "v2", "v2")), str(root), shared_dirs=[".env"])
    assert info.value.exit_code == 2
    assert (root / "current" / ".env").read_text() == SECRET


# ---------------------------------------------------------------- symlinks on the way to shared/

@pytest.mark.parametrize(("link", "args"), [
    ("shared", ["--shared-dir", "storage"]),
    ("shared", ["--shared-file", ".env", "--create-missing"]),
    ("shared/config", ["--shared-file", "config/app.ini", "--create-missing"]),
    ("shared/var", ["--shared-dir", "var/log"]),
])
def test_symlink_on_the_way_into_shared_is_refused(tmp_path: Path, root: Path, link: str,
                                                   args: list[str]) -> None:
    target = _live(tmp_path, root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(outside)
    before = snapshot(root)
    r = run_cli("deploy", _site(tmp_path / "v2", "v2"), root, *args)
    line = error_line(r)
    assert r.returncode == 2
    assert "symlink" in line and link in line
    assert list(outside.iterdir()) == []  # nothing written outside ROOT
    assert snapshot(root) == before
    assert current_target(root) == target


def test_symlink_into_shared_after_the_check_is_still_refused(tmp_path: Path, root: Path) -> None:
    """The same check runs again under the lock, where the seeding happens (API callers, and a
    folder replaced between the first check and the copy)."""
    from atomic_deploy import _shared
    from atomic_deploy._layout import Layout

    _live(tmp_path, root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "shared").symlink_to(outside)
    staged = _site(tmp_path / "staged", "v2")
    with pytest.raises(atomic_deploy.InvalidInput, match="symlink"):
        _shared.link_shared(Layout(str(root)), str(staged), ["storage"], [], False,
                            lambda a, b: None)
    assert list(outside.iterdir()) == []
    assert (staged / "storage" / "seed.txt").read_text() == "seed"


def test_a_shared_entry_that_is_a_symlink_is_linked_not_written(tmp_path: Path,
                                                                root: Path) -> None:
    """A shared folder kept on another disk (shared/storage -> /mnt/...) keeps working: it
    exists, so nothing is seeded through it."""
    _live(tmp_path, root)
    disk = tmp_path / "disk"
    (disk / "uploads").mkdir(parents=True)
    (disk / "uploads" / "a.jpg").write_text("jpeg")
    (root / "shared").mkdir()
    (root / "shared" / "storage").symlink_to(disk / "uploads")
    before = snapshot(disk)
    r = run_cli("deploy", _site(tmp_path / "v2", "v2"), root, "--shared-dir", "storage")
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "storage" / "a.jpg").read_text() == "jpeg"
    assert snapshot(disk) == before


def test_dry_run_reports_a_shared_entry_of_the_other_type(tmp_path: Path, root: Path) -> None:
    _live(tmp_path, root)
    (root / "shared" / ".env").mkdir(parents=True)
    before = snapshot(root)
    r = run_cli("deploy", _site(tmp_path / "v2", "v2"), root, "--shared-file", ".env", "--dry-run")
    assert r.returncode == 2 and "--shared-dir .env" in error_line(r)
    assert snapshot(root) == before

"""What a new user trips on in everyday use: hook lists in the config file, a mistyped ROOT, a
tarball wrapped in one folder, symlinks pointing out of a folder build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import Builds, error_line, release_names, run_cli

# ---------------------------------------------------------------- a mistyped ROOT


@pytest.mark.parametrize("dry_run", [False, True])
def test_root_whose_parent_is_missing_is_refused_and_nothing_is_created(
        builds: Builds, tmp_path: Path, dry_run: bool) -> None:
    root = tmp_path / "nonexist" / "dir" / "app"
    r = run_cli("deploy", builds("v1"), root, *(["--dry-run"] if dry_run else []))
    assert r.returncode == 2, r.stderr
    line = error_line(r)
    assert f"parent folder {root.parent} does not exist" in line, line
    assert "nothing was changed" in line
    assert not (tmp_path / "nonexist").exists()


def test_root_under_a_file_is_refused(builds: Builds, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    r = run_cli("prepare", builds("v1"), tmp_path / "file" / "app")
    assert r.returncode == 2, r.stderr
    assert f"parent folder {tmp_path / 'file'} is not a folder" in error_line(r)
    assert (tmp_path / "file").read_text() == "x"


def test_root_itself_is_still_created_when_its_parent_exists(builds: Builds,
                                                             tmp_path: Path) -> None:
    root = tmp_path / "app"
    r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert len(release_names(root)) == 1
    assert os.stat(root).st_mode & 0o777 == 0o755 & ~_umask()


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old

"""Direct tests of the engine modules' edge cases, in-process and fast.

Written to kill the mutants that survived the broader tests (tools/mutation.sh, scores in
docs/reliability.md): each pins down one behaviour the contract relies on.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from atomic_deploy import _layout, _platform, _switch
from atomic_deploy._layout import check_root_for_write


def _root(tmp_path: Path) -> _layout.Layout:
    layout = check_root_for_write(str(tmp_path / "www"), create=True)
    for rid in ("r1", "r2"):
        os.mkdir(layout.release(rid))
    return layout


# ---------------------------------------------------------------- _switch


def test_switch_draws_a_new_temp_name_when_the_first_is_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _root(tmp_path)
    os.symlink("/etc", os.path.join(layout.tmp, "current.taken"))
    names = iter(["taken", "free"])
    monkeypatch.setattr(_switch, "random_suffix", lambda: next(names))
    _switch.switch_to_release(layout, "r1")
    assert os.readlink(layout.current) == "releases/r1"
    assert os.readlink(os.path.join(layout.tmp, "current.taken")) == "/etc"  # left alone
    assert sorted(os.listdir(layout.tmp)) == ["current.taken"]


def test_switch_gives_up_with_file_exists_when_no_temp_name_is_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _root(tmp_path)
    os.symlink("x", os.path.join(layout.tmp, "current.taken"))
    drawn: list[str] = []
    monkeypatch.setattr(_switch, "random_suffix", lambda: drawn.append("x") or "taken")
    with pytest.raises(FileExistsError):
        _switch.switch_to_release(layout, "r1")
    assert not os.path.lexists(layout.current)
    assert len(drawn) > 1  # it did retry before giving up


def test_point_current_to_none_removes_current_and_tolerates_its_absence(tmp_path: Path) -> None:
    layout = _root(tmp_path)
    _switch.point_current(layout, None)  # nothing there: no error
    _switch.switch_to_release(layout, "r2")
    _switch.point_current(layout, None)
    assert not os.path.lexists(layout.current)
    assert os.path.isdir(layout.release("r2"))  # the release itself is untouched


def test_a_failure_between_temp_link_and_rename_leaves_no_temp_link(tmp_path: Path) -> None:
    layout = _root(tmp_path)
    _switch.switch_to_release(layout, "r1")

    def fail(step: str) -> None:
        if step == "temp-link-created":
            raise OSError(errno.EIO, "injected")

    with pytest.raises(OSError):
        _switch.switch_to_release(layout, "r2", fail)
    assert os.listdir(layout.tmp) == []
    assert os.readlink(layout.current) == "releases/r1"


def test_switch_passes_its_checkpoints_in_order_and_syncs_root_after_the_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _root(tmp_path)
    events: list[Any] = []
    real = _platform.fsync_dir
    monkeypatch.setattr(_platform, "fsync_dir",
                        lambda p: (events.append(("fsync_dir", p, os.readlink(layout.current))),
                                   real(p)))
    _switch.switch_to_release(layout, "r1", lambda step: events.append(step))
    assert events == ["temp-link-created", "switched",
                      ("fsync_dir", layout.root, "releases/r1"), "switch-synced"]

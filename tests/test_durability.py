"""Durability: what is flushed, and in which order relative to the renames that publish it.

In-process: the platform functions and os.rename/os.replace/os.mkdir are wrapped to record one
ordered event log of a real deploy.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import atomic_deploy
from atomic_deploy import _history, _platform
from atomic_deploy._layout import STAGING_PREFIX
from atomic_deploy.cli import main
from conftest import Builds, current_target, hidden_entries, history, make_build, release_names

Event = tuple[Any, ...]

HAVE_PROC_FD = os.path.isdir("/proc/self/fd")


def fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.on = False

    def add(self, *event: Any) -> None:
        if self.on:
            self.events.append(event)

    def index(self, pred: Callable[[Event], bool], after: int = -1, what: str = "") -> int:
        for i, e in enumerate(self.events):
            if i > after and pred(e):
                return i
        raise AssertionError(f"no event {what or pred} after #{after} in {self.events}")


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    r = Recorder()
    real_fsync_fd = _platform.fsync_fd
    real_fsync_dir = _platform.fsync_dir
    real_sync_fs = _platform.sync_filesystem
    real_rename, real_replace, real_mkdir = os.rename, os.replace, os.mkdir
    real_append = _history.append_json_line

    def fsync_fd(fd: int) -> None:
        r.add("fsync_fd", fd_path(fd))
        real_fsync_fd(fd)

    def fsync_dir(path: str) -> None:
        r.add("fsync_dir", os.fspath(path))
        real_fsync_dir(path)

    def sync_filesystem(path: str) -> None:
        r.add("sync_filesystem", os.fspath(path))
        real_sync_fs(path)

    def rename(a: Any, b: Any, **kw: Any) -> None:
        r.add("rename", os.fspath(a), os.fspath(b))
        real_rename(a, b, **kw)

    def replace(a: Any, b: Any, **kw: Any) -> None:
        r.add("replace", os.fspath(a), os.fspath(b))
        real_replace(a, b, **kw)

    def mkdir(p: Any, *args: Any, **kw: Any) -> None:
        r.add("mkdir", os.fspath(p))
        real_mkdir(p, *args, **kw)

    def append_json_line(path: str, record: dict[str, Any]) -> None:
        r.add("history", record.get("op"), record.get("outcome"))
        real_append(path, record)

    monkeypatch.setattr(_platform, "fsync_fd", fsync_fd)
    # Per-file flushes may also go through a barrier-less fsync followed by one drive barrier
    # (macOS: fsync per file, one F_FULLFSYNC at the end); both count as flushing that file.
    if hasattr(_platform, "fsync_nobarrier"):
        real_nobarrier = _platform.fsync_nobarrier

        def fsync_nobarrier(fd: int) -> None:
            r.add("fsync_fd", fd_path(fd))
            real_nobarrier(fd)

        monkeypatch.setattr(_platform, "fsync_nobarrier", fsync_nobarrier)
    if hasattr(_platform, "drive_barrier"):
        real_barrier = _platform.drive_barrier

        def drive_barrier(path: str) -> None:
            r.add("drive_barrier", os.fspath(path))
            real_barrier(path)

        monkeypatch.setattr(_platform, "drive_barrier", drive_barrier)
    monkeypatch.setattr(_platform, "fsync_dir", fsync_dir)
    monkeypatch.setattr(_platform, "sync_filesystem", sync_filesystem)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(_history, "append_json_line", append_json_line)
    yield r


def is_staging(path: str | None, releases: str) -> bool:
    return path is not None and path.startswith(os.path.join(releases, STAGING_PREFIX))


def check_publish_order(rec: Recorder, root: Path, rid: str) -> dict[str, int]:
    """The order every deploy must follow; returns the indices of the landmarks."""
    releases = str(root / "releases")
    journal = str(root / ".atomic-deploy" / "journal.json")
    i_journal = rec.index(lambda e: e[0] == "replace" and e[2] == journal, what="journal write")
    i_mkdir = rec.index(lambda e: e[0] == "mkdir" and is_staging(e[1], releases),
                        what="staging mkdir")
    staging = rec.events[i_mkdir][1]
    i_rename = rec.index(lambda e: e == ("rename", staging, os.path.join(releases, rid)),
                         what="staging -> release rename")
    i_sync_rel = rec.index(lambda e: e == ("fsync_dir", releases), after=i_rename,
                           what="fsync_dir(releases)")
    i_switch = rec.index(lambda e: e[0] == "replace" and e[2] == str(root / "current"),
                         what="switch of current")
    i_sync_root = rec.index(lambda e: e == ("fsync_dir", str(root)), after=i_switch,
                            what="fsync_dir(ROOT)")
    i_commit = rec.index(lambda e: e == ("history", "deploy", "ok"), what="commit record")

    # the journal is durable (fsynced folder) before the staging folder exists
    assert i_journal < i_mkdir
    i_sync_state = rec.index(lambda e: e == ("fsync_dir", str(root / ".atomic-deploy")),
                             after=i_journal, what="fsync_dir(state) after the journal")
    assert i_sync_state < i_mkdir
    # releases/ is fsynced after the rename and before current can point at the release
    assert i_rename < i_sync_rel < i_switch
    # ROOT after the switch, and the commit record last
    assert i_switch < i_sync_root < i_commit
    # the commit record is itself flushed
    history_path = str(root / ".atomic-deploy" / "history.jsonl")
    rec.index(lambda e: e == ("fsync_fd", history_path), after=i_commit, what="history fsync")
    # nothing of the operation is published before the data is
    assert not [e for e in rec.events[:i_rename] if e[0] == "replace" and e[2] == str(root / "current")]
    return {"journal": i_journal, "mkdir": i_mkdir, "rename": i_rename, "switch": i_switch,
            "commit": i_commit, "sync_rel": i_sync_rel, "sync_root": i_sync_root}


def test_deploy_flush_order_with_syncfs(builds: Builds, root: Path, rec: Recorder,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if not _platform.can_sync_filesystem():
        # Exercise the same path elsewhere: record the call, flush with plain sync.
        monkeypatch.setattr(_platform, "can_sync_filesystem", lambda: True)
        monkeypatch.setattr(_platform, "sync_filesystem",
                            lambda p: rec.add("sync_filesystem", os.fspath(p)))
    atomic_deploy.deploy(str(builds("v1")), str(root))
    rec.on = True
    rid = atomic_deploy.deploy(str(builds("v2")), str(root)).release
    rec.on = False
    at = check_publish_order(rec, root, rid)
    staging = rec.events[at["mkdir"]][1]
    i_flush = rec.index(lambda e: e == ("sync_filesystem", staging), what="syncfs of staging")
    assert at["mkdir"] < i_flush < at["rename"]
    # one filesystem-wide flush instead of one fsync per copied file
    assert not [e for e in rec.events if e[0] == "fsync_fd" and is_staging(e[1], str(root / "releases"))]
    assert current_target(root) == f"releases/{rid}"


@pytest.mark.skipif(not HAVE_PROC_FD, reason="needs /proc/self/fd to tell which file was fsynced")
def test_deploy_flush_order_with_per_file_fsync(builds: Builds, root: Path, rec: Recorder,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_platform, "can_sync_filesystem", lambda: False)
    src = make_build(root.parent / "build", files={
        "index.html": "i\n", "a/b/c.txt": "c\n", "a/empty.txt": "", "z.txt": "z\n"})
    (src / "emptydir").mkdir()
    atomic_deploy.deploy(str(builds("v1")), str(root))
    rec.on = True
    rid = atomic_deploy.deploy(str(src), str(root)).release
    rec.on = False
    at = check_publish_order(rec, root, rid)
    staging = rec.events[at["mkdir"]][1]
    assert not [e for e in rec.events if e[0] == "sync_filesystem"]

    fsynced = {os.path.relpath(e[1], staging) for e in rec.events[:at["rename"]]
               if e[0] == "fsync_fd" and is_staging(e[1], str(root / "releases"))}
    dirs_synced = {os.path.relpath(e[1], staging) for e in rec.events[:at["rename"]]
                   if e[0] == "fsync_dir" and is_staging(e[1], str(root / "releases"))}
    assert {"index.html", "a/b/c.txt", "a/empty.txt", "z.txt"} <= fsynced
    assert {".", "a", "a/b", "emptydir"} <= dirs_synced
    # and none of the release's data is flushed only after it was published
    late = [e for e in rec.events[at["rename"]:]
            if e[0] in ("fsync_fd", "fsync_dir", "drive_barrier")
            and is_staging(e[1], str(root / "releases"))]
    assert late == []
    assert (root / "current" / "a" / "b" / "c.txt").read_text() == "c\n"


# --------------------------------------------------------------------------- F_FULLFSYNC fallback


def test_fsync_fd_falls_back_to_fsync_when_fullfsync_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []

    def refuse(fd: int, cmd: int, *args: Any) -> int:
        calls.append(("fcntl", fd, cmd))
        raise OSError(errno.ENOTSUP, "F_FULLFSYNC not supported")

    def fsync(fd: int) -> None:
        calls.append(("fsync", fd))

    monkeypatch.setattr(_platform, "_F_FULLFSYNC", 51)
    monkeypatch.setattr(fcntl, "fcntl", refuse)
    monkeypatch.setattr(os, "fsync", fsync)
    with open(tmp_path / "f", "w") as f:
        _platform.fsync_fd(f.fileno())
        assert calls == [("fcntl", f.fileno(), 51), ("fsync", f.fileno())]


def test_fsync_fd_uses_fullfsync_when_it_works(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(_platform, "_F_FULLFSYNC", 51)
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, cmd, *a: calls.append(("fcntl", fd, cmd)) or 0)
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", fd)))
    with open(tmp_path / "f", "w") as f:
        _platform.fsync_fd(f.fileno())
        assert calls == [("fcntl", f.fileno(), 51)]


def test_fsync_fd_without_fullfsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(_platform, "_F_FULLFSYNC", None)
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, cmd, *a: calls.append(("fcntl", fd, cmd)) or 0)
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", fd)))
    with open(tmp_path / "f", "w") as f:
        _platform.fsync_fd(f.fileno())
        assert calls == [("fsync", f.fileno())]


def test_fsync_fd_reports_real_fsync_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def refuse(*args: Any) -> int:
        raise OSError(errno.EINVAL, "F_FULLFSYNC not supported")

    monkeypatch.setattr(_platform, "_F_FULLFSYNC", 51)
    monkeypatch.setattr(fcntl, "fcntl", refuse)
    monkeypatch.setattr(os, "fsync", eio)
    with open(tmp_path / "f", "w") as f, pytest.raises(OSError) as info:
        _platform.fsync_fd(f.fileno())
    assert info.value.errno == errno.EIO


# --------------------------------------------------------------------------- fsync errors abort


def _eio(path: str) -> OSError:
    return OSError(errno.EIO, os.strerror(errno.EIO), path)


def fault_syncfs(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setattr(_platform, "can_sync_filesystem", lambda: True)

    def sync_filesystem(path: str) -> None:
        raise _eio(path)

    monkeypatch.setattr(_platform, "sync_filesystem", sync_filesystem)


def fault_file_fsync(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    if not HAVE_PROC_FD:
        pytest.skip("needs /proc/self/fd to fail only the release's files")
    monkeypatch.setattr(_platform, "can_sync_filesystem", lambda: False)
    releases = str(root / "releases")
    for name in ("fsync_fd", "fsync_nobarrier"):
        if not hasattr(_platform, name):
            continue

        def flush(fd: int, _real: Callable[[int], None] = getattr(_platform, name)) -> None:
            p = fd_path(fd)
            if is_staging(p, releases) and not os.path.isdir(p or ""):
                raise _eio(p or "?")
            _real(fd)

        monkeypatch.setattr(_platform, name, flush)


def _fail_once(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    real = _platform.fsync_dir
    fired: list[str] = []

    def fsync_dir(path: str) -> None:
        if os.fspath(path) == target and not fired:
            fired.append(path)
            raise _eio(path)
        real(path)

    monkeypatch.setattr(_platform, "fsync_dir", fsync_dir)


def fault_releases_fsync(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    _fail_once(monkeypatch, str(root / "releases"))


def fault_root_fsync(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    _fail_once(monkeypatch, str(root))


FAULTS = {
    "syncfs": fault_syncfs,
    "file-fsync": fault_file_fsync,
    "releases-fsync": fault_releases_fsync,
    "root-fsync": fault_root_fsync,
}


@pytest.mark.parametrize("where", sorted(FAULTS))
def test_fsync_error_aborts_deploy(builds: Builds, root: Path, monkeypatch: pytest.MonkeyPatch,
                                   where: str) -> None:
    first = atomic_deploy.deploy(str(builds("v1")), str(root)).release
    FAULTS[where](monkeypatch, root)
    with pytest.raises(atomic_deploy.OperationFailed) as info:
        atomic_deploy.deploy(str(builds("v2")), str(root))
    assert info.value.exit_code == 1
    assert os.strerror(errno.EIO) in str(info.value)
    assert release_names(root) == [first]
    assert hidden_entries(root) == []
    assert current_target(root) == f"releases/{first}"
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert not (root / ".atomic-deploy" / "journal.json").exists()
    assert history(root)[-1]["outcome"] == "failed"
    assert not [h for h in history(root) if h.get("op") == "deploy" and h.get("outcome") == "ok"
                and h.get("release") != first]


def test_fsync_error_on_first_deploy(builds: Builds, root: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fault_root_fsync(monkeypatch, root)  # fails right after current was first created
    with pytest.raises(atomic_deploy.OperationFailed):
        atomic_deploy.deploy(str(builds("v1")), str(root))
    assert release_names(root) == []
    assert hidden_entries(root) == []
    assert not os.path.lexists(root / "current")


def test_fsync_error_exit_code_through_cli(builds: Builds, root: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    first = atomic_deploy.deploy(str(builds("v1")), str(root)).release
    fault_syncfs(monkeypatch, root)
    rc = main(["deploy", str(builds("v2")), str(root)])
    err = capsys.readouterr().err
    assert rc == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomic-deploy: error:"), lines
    assert os.strerror(errno.EIO) in lines[0]
    assert current_target(root) == f"releases/{first}"
    assert release_names(root) == [first]
    assert hidden_entries(root) == []

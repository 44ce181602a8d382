"""Durability: what is flushed, and in which order relative to the renames that publish it.

In-process: the platform functions and os.rename/os.replace/os.mkdir are wrapped to record one
ordered event log of a real deploy.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import atomic_deploy
from atomic_deploy import _history, _platform, operations
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


@pytest.fixture(params=["manifest after the flush", "manifest during the flush"])
def overlap(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways a deploy makes its manifest around the syncfs: after it (small builds) and
    on this thread while another thread flushes (large ones; forced here for a small one)."""
    during = request.param == "manifest during the flush"
    monkeypatch.setattr(operations, "_FLUSH_OVERLAP_ENTRIES", 0 if during else 10**9)
    return during


def test_deploy_flush_order_with_syncfs(builds: Builds, root: Path, rec: Recorder,
                                        monkeypatch: pytest.MonkeyPatch, overlap: bool) -> None:
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


@pytest.mark.skipif(not HAVE_PROC_FD, reason="not Linux: needs /proc/self/fd to tell which file was fsynced")
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


@pytest.mark.parametrize("fullfsync", [51, None], ids=["macOS", "elsewhere"])
def test_drive_barrier_is_one_fullfsync_where_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fullfsync: int | None
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(_platform, "_F_FULLFSYNC", fullfsync)
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, cmd, *a: calls.append(("fcntl", cmd)) or 0)
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync",)))
    _platform.drive_barrier(str(tmp_path))
    assert calls == ([("fcntl", 51)] if fullfsync else [])


@pytest.mark.skipif(not HAVE_PROC_FD, reason="needs /proc/self/fd to name what was flushed")
def test_fsync_tree_flushes_every_file_and_folder_but_no_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no filesystem-wide sync exists, what check hooks wrote is flushed by this walk."""
    top = make_build(tmp_path / "tree", {"a.txt": "a", "sub/b.txt": "b", "sub/deeper/c.txt": "c"})
    os.symlink("a.txt", top / "link")
    os.symlink(tmp_path / "outside", top / "sub" / "dangling")
    synced: list[str | None] = []
    real = _platform.fsync_fd
    monkeypatch.setattr(_platform, "fsync_fd", lambda fd: (synced.append(fd_path(fd)), real(fd)))
    _platform.fsync_tree(str(top))
    expected = [top / "a.txt", top / "sub" / "b.txt", top / "sub" / "deeper" / "c.txt",
                top, top / "sub", top / "sub" / "deeper"]
    assert sorted(synced, key=str) == sorted((str(p) for p in expected), key=str)


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
        pytest.skip("not Linux: needs /proc/self/fd to fail only the release's files")
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
                                   where: str, overlap: bool) -> None:
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


# --------------------------------------------------------------------------- the real calls
# The tests above record the tool's own flush functions. These record what reaches the
# operating system, in order: every os.fsync with the file it was given (through /proc/self/fd)
# and that file's content at that moment, the C library's syncfs with the folder it was given
# and the tree under it at that moment, and every rename. A flush function that returns without
# flushing, or a flush of the wrong descriptor, fails here.

needs_proc_fd = pytest.mark.skipif(
    not HAVE_PROC_FD, reason="not Linux: needs /proc/self/fd to tell which file was fsynced")


class OsCalls:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.on = False
        self.watch: dict[str, Any] = {}

    def index(self, pred: Callable[[Event], bool], what: str) -> int:
        for i, e in enumerate(self.events):
            if pred(e):
                return i
        raise AssertionError(f"no {what} in {self.events}")


def _content(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


@pytest.fixture
def oscalls(monkeypatch: pytest.MonkeyPatch) -> Iterator[OsCalls]:
    if not HAVE_PROC_FD:
        pytest.skip("not Linux: needs /proc/self/fd to tell which file a call was given")
    from conftest import snapshot

    calls = OsCalls()
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if calls.on:
            p = fd_path(fd) or "?"
            calls.events.append(("fsync", p, _content(p) if os.path.isfile(p) else None))

    def rename(a: Any, b: Any, **kw: Any) -> None:
        if calls.on:
            calls.events.append(("rename", os.fspath(a), os.fspath(b)))
        real_rename(a, b, **kw)

    def replace(a: Any, b: Any, **kw: Any) -> None:
        if calls.on:
            a_s = os.fspath(a)
            calls.events.append(("replace", a_s, os.fspath(b), _content(a_s)))
        real_replace(a, b, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)

    real_syncfs = _platform._syncfs()
    if real_syncfs is not None:
        def syncfs(fd: int) -> int:
            rc = int(real_syncfs(fd))  # type: ignore[operator]
            if calls.on:
                p = fd_path(fd) or "?"
                calls.events.append(("syncfs", p, snapshot(Path(p)), rc))
            return rc

        monkeypatch.setattr(_platform, "_syncfs", lambda: syncfs)
    yield calls


def _staging_rename(calls: OsCalls, root: Path, rid: str) -> tuple[int, str]:
    releases = str(root / "releases")
    i = calls.index(lambda e: e[0] == "rename" and is_staging(e[1], releases)
                    and e[2] == os.path.join(releases, rid), "rename of the staging folder")
    return i, calls.events[i][1]


@needs_proc_fd
def test_journal_temp_file_is_fsynced_with_its_content_before_its_rename(
        builds: Builds, root: Path, oscalls: OsCalls) -> None:
    atomic_deploy.deploy(str(builds("v1")), str(root))
    oscalls.on = True
    rid = atomic_deploy.deploy(str(builds("v2")), str(root)).release
    oscalls.on = False
    journal = str(root / ".atomic-deploy" / "journal.json")
    i = oscalls.index(lambda e: e[0] == "replace" and e[2] == journal, "rename onto journal.json")
    tmp, content = oscalls.events[i][1], oscalls.events[i][3]
    assert os.path.basename(tmp).startswith(".journal.json."), tmp
    assert content and json.loads(content)["release"] == rid
    # that very file was fsynced, holding exactly what was renamed into place
    flushed = [e for e in oscalls.events[:i] if e[0] == "fsync" and e[1] == tmp]
    assert flushed, f"{tmp} renamed over journal.json without an fsync of it: {oscalls.events[:i]}"
    assert flushed[-1][2] == content
    # and the folder after the rename (an fsync of the state folder, by fd)
    state = str(root / ".atomic-deploy")
    assert [e for e in oscalls.events[i:] if e[0] == "fsync" and e[1] == state]


@needs_proc_fd
@pytest.mark.skipif(not _platform.can_sync_filesystem(),
                    reason="not Linux: no syncfs in this C library (per-file fsync tested below)")
def test_release_is_flushed_by_a_real_syncfs_of_the_complete_tree_before_its_rename(
        builds: Builds, root: Path, oscalls: OsCalls) -> None:
    from conftest import snapshot

    atomic_deploy.deploy(str(builds("v1")), str(root))
    oscalls.on = True
    rid = atomic_deploy.deploy(str(builds("v2")), str(root)).release
    oscalls.on = False
    i_rename, staging = _staging_rename(oscalls, root, rid)
    synced = [e for e in oscalls.events[:i_rename] if e[0] == "syncfs"]
    assert synced, f"staging folder renamed into releases/ with no syncfs before: {oscalls.events}"
    path, tree, rc = synced[-1][1:]
    assert path == staging and rc == 0
    # the whole release had been written when it was flushed
    assert tree == snapshot(builds("v2")) == snapshot(root / "releases" / rid)


@needs_proc_fd
def test_release_files_are_each_fsynced_with_their_content_before_the_rename(
        builds: Builds, root: Path, oscalls: OsCalls, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_platform, "can_sync_filesystem", lambda: False)  # as on macOS/BSD
    build = make_build(root.parent / "build", files={
        "index.html": "i\n", "a/b/c.txt": "c" * 70000, "a/empty.txt": "", "z.txt": "z\n"})
    atomic_deploy.deploy(str(builds("v1")), str(root))
    oscalls.on = True
    rid = atomic_deploy.deploy(str(build), str(root)).release
    oscalls.on = False
    i_rename, staging = _staging_rename(oscalls, root, rid)
    before = {os.path.relpath(e[1], staging): e[2] for e in oscalls.events[:i_rename]
              if e[0] == "fsync" and e[1].startswith(staging + os.sep) and e[2] is not None}
    for rel in ("index.html", "a/b/c.txt", "a/empty.txt", "z.txt"):
        assert rel in before, f"{rel} not fsynced before the rename: {sorted(before)}"
        assert before[rel] == (build / rel).read_bytes(), f"{rel} fsynced before it was written"
    dirs = {os.path.relpath(e[1], staging) for e in oscalls.events[:i_rename]
            if e[0] == "fsync" and (e[1] == staging or e[1].startswith(staging + os.sep))
            and e[2] is None}
    assert {".", "a", "a/b"} <= dirs
    assert not [e for e in oscalls.events if e[0] == "syncfs"]


@needs_proc_fd
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
def test_syncfs_returning_an_error_aborts_the_deploy(builds: Builds, root: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str],
                                                     code: int) -> None:
    """syncfs returns -1 with errno set (as the C library does after a write-back error): one
    error line, exit 1, nothing switched, the new release gone."""
    import ctypes

    first = atomic_deploy.deploy(str(builds("v1")), str(root)).release
    seen: list[str] = []

    def failing_syncfs(fd: int) -> int:
        seen.append(fd_path(fd) or "?")
        ctypes.set_errno(code)
        return -1

    monkeypatch.setattr(_platform, "_syncfs", lambda: failing_syncfs)
    before = history(root)

    rc = main(["deploy", str(builds("v2")), str(root)])

    err = capsys.readouterr().err.splitlines()
    assert rc == 1, err
    assert len(err) == 1 and err[0].startswith("atomic-deploy: error:"), err
    assert os.strerror(code) in err[0]
    assert len(seen) == 1 and is_staging(seen[0], str(root / "releases")), seen
    assert current_target(root) == f"releases/{first}"
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert release_names(root) == [first]
    assert hidden_entries(root) == []
    assert not (root / ".atomic-deploy" / "journal.json").exists()
    after = history(root)[len(before):]
    assert [(h["op"], h["outcome"]) for h in after] == [("deploy", "failed")]


def test_real_cli_under_strace_flushes_before_each_rename(builds: Builds, root: Path,
                                                          tmp_path: Path) -> None:
    """The same order seen from outside, on the system calls the real CLI makes (strace -f -y
    names the file behind each descriptor): nothing the wrappers above could miss."""
    import re
    import shutil
    import subprocess
    import sys

    from conftest import cli_env

    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    if not _platform.can_sync_filesystem():
        pytest.skip("not Linux: no syncfs in this C library")
    atomic_deploy.deploy(str(builds("v1")), str(root))
    out = tmp_path / "strace.log"
    r = subprocess.run(
        [strace, "-f", "-qq", "-y", "-o", str(out),
         "-e", "trace=fsync,fdatasync,syncfs,rename,renameat,renameat2",
         sys.executable, "-m", "atomic_deploy", "deploy", str(builds("v2")), str(root)],
        env=cli_env(), capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and "ptrace" in r.stderr:
        pytest.skip(f"strace cannot trace here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    rid = release_names(root)[-1]
    calls: list[tuple[str, list[str], int]] = []
    for line in out.read_text().splitlines():
        m = re.match(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)", line)
        if m is None:
            continue
        name, args, rc = m.group(1), m.group(2), int(m.group(3))
        if name.startswith("rename"):
            paths = re.findall(r'"((?:[^"\\]|\\.)*)"', args)
        else:
            fd = re.match(r"\d+<(.*)>$", args)
            paths = [fd.group(1)] if fd else []
        calls.append((name, paths, rc))

    def first(pred: Callable[[tuple[str, list[str], int]], bool], what: str) -> int:
        for i, c in enumerate(calls):
            if pred(c):
                return i
        raise AssertionError(f"no {what} in {calls}")

    journal = str(root / ".atomic-deploy" / "journal.json")
    i_j = first(lambda c: c[0].startswith("rename") and c[1][-1:] == [journal], "journal rename")
    tmp = calls[i_j][1][0]
    assert [c for c in calls[:i_j] if c[0] in ("fsync", "fdatasync") and c[1] == [tmp]
            and c[2] == 0], f"{tmp} renamed without an fsync: {calls[:i_j]}"
    dest = str(root / "releases" / rid)
    i_r = first(lambda c: c[0].startswith("rename") and c[1][-1:] == [dest], "release rename")
    staging = calls[i_r][1][0]
    assert is_staging(staging, str(root / "releases"))
    assert [c for c in calls[:i_r] if c == ("syncfs", [staging], 0)], calls[:i_r]
    i_c = first(lambda c: c[0].startswith("rename") and c[1][-1:] == [str(root / "current")],
                "switch of current")
    assert i_j < i_r < i_c

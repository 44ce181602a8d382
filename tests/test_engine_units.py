"""Direct tests of the engine modules' edge cases, in-process and fast.

Written to kill the mutants that survived the broader tests (tools/mutation.sh, scores in
docs/reliability.md): each pins down one behaviour the contract relies on.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from atomic_deploy import _layout, _platform, _recovery, _switch
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


# ---------------------------------------------------------------- _jsonfile


def test_records_are_equal_only_to_the_same_type_with_the_same_fields() -> None:
    from atomic_deploy._lock import Holder

    class OtherHolder(Holder):
        __slots__ = ()

    a = Holder(1, "h", "t", "c")
    assert a == Holder(1, "h", "t", "c")
    assert a != Holder(2, "h", "t", "c")
    assert a != OtherHolder(1, "h", "t", "c")
    assert OtherHolder(1, "h", "t", "c") != a
    assert a != {"pid": 1, "host": "h", "started": "t", "command": "c"}


def test_json_temp_name_already_taken_is_skipped_and_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atomic_deploy import _jsonfile

    target = tmp_path / "state.json"
    (tmp_path / ".state.json.file").write_text("planted")
    (tmp_path / "elsewhere").write_text("outside")
    os.symlink(tmp_path / "elsewhere", tmp_path / ".state.json.link")
    names = iter(["file", "link", "free"])
    monkeypatch.setattr(_jsonfile, "random_suffix", lambda: next(names))
    _jsonfile.write_json_atomic(str(target), {"b": 1, "a": 2})
    assert _jsonfile.read_json(str(target)) == {"a": 2, "b": 1}
    assert (tmp_path / ".state.json.file").read_text() == "planted"
    assert (tmp_path / "elsewhere").read_text() == "outside"
    assert sorted(os.listdir(tmp_path)) == [".state.json.file", ".state.json.link", "elsewhere",
                                             "state.json"]


def test_json_write_gives_up_when_every_temp_name_is_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atomic_deploy import _jsonfile

    (tmp_path / ".state.json.taken").write_text("planted")
    drawn: list[str] = []
    monkeypatch.setattr(_jsonfile, "random_suffix", lambda: drawn.append("x") or "taken")
    with pytest.raises(FileExistsError):
        _jsonfile.write_json_atomic(str(tmp_path / "state.json"), {})
    assert len(drawn) > 2
    assert not (tmp_path / "state.json").exists()


def test_json_write_that_fails_leaves_no_temp_file(tmp_path: Path) -> None:
    from atomic_deploy import _jsonfile

    (tmp_path / "state.json").mkdir()  # rename over a folder fails
    with pytest.raises(OSError):
        _jsonfile.write_json_atomic(str(tmp_path / "state.json"), {"a": 1})
    assert os.listdir(tmp_path) == ["state.json"]


def test_state_files_are_created_0644_whatever_the_umask(tmp_path: Path) -> None:
    from atomic_deploy import _jsonfile

    old = os.umask(0)
    try:
        _jsonfile.write_json_atomic(str(tmp_path / "state.json"), {"a": 1})
        _jsonfile.append_json_line(str(tmp_path / "log.jsonl"), {"a": 1})
    finally:
        os.umask(old)
    for name in ("state.json", "log.jsonl"):
        assert (os.stat(tmp_path / name).st_mode & 0o777) == 0o644, name


def test_append_after_a_torn_last_line_starts_a_new_line(tmp_path: Path) -> None:
    from atomic_deploy import _jsonfile

    log = tmp_path / "history.jsonl"
    log.write_bytes(b'{"op": "deploy"}\n{"op": "depl')  # a power cut mid-append
    # then whole lines, the file's size odd and even: no blank line is ever added
    for op in ("rollback", "activate", "prune", "adopt"):
        _jsonfile.append_json_line(str(log), {"op": op})
    assert log.read_bytes() == (b'{"op": "deploy"}\n{"op": "depl\n{"op": "rollback"}\n'
                                b'{"op": "activate"}\n{"op": "prune"}\n{"op": "adopt"}\n')
    assert [r["op"] for r in _jsonfile.read_json_lines(str(log))] == [
        "deploy", "rollback", "activate", "prune", "adopt"]


def test_append_never_follows_a_symlinked_log(tmp_path: Path) -> None:
    from atomic_deploy import _jsonfile

    (tmp_path / "outside").write_text("x\n")
    os.symlink(tmp_path / "outside", tmp_path / "history.jsonl")
    with pytest.raises(OSError) as info:
        _jsonfile.append_json_line(str(tmp_path / "history.jsonl"), {"op": "deploy"})
    assert info.value.errno == errno.ELOOP
    assert (tmp_path / "outside").read_text() == "x\n"


# ---------------------------------------------------------------- _lock


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="not Linux: counts open descriptors in /proc/self/fd")


def test_lock_file_is_0644_and_close_on_exec(tmp_path: Path) -> None:
    import fcntl

    from atomic_deploy._lock import RootLock

    layout = _root(tmp_path)
    old = os.umask(0)
    try:
        lock = RootLock(layout)
        lock.acquire()
    finally:
        os.umask(old)
    try:
        assert (os.stat(layout.lock).st_mode & 0o777) == 0o644
        assert lock._fd is not None
        assert fcntl.fcntl(lock._fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # hooks never inherit it
    finally:
        lock.release()


def test_a_symlinked_lock_file_is_refused_and_not_followed(tmp_path: Path) -> None:
    from atomic_deploy._lock import RootLock, probe_holder
    from atomic_deploy.errors import InvalidInput

    layout = _root(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("")
    os.symlink(outside, layout.lock)
    with pytest.raises(InvalidInput, match="is a symlink"):
        RootLock(layout).acquire()
    # status's probe does not follow it either, even when what it points to is locked
    import fcntl

    fd = os.open(outside, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert probe_holder(layout) is None
    finally:
        os.close(fd)


def test_a_lock_file_that_cannot_be_opened_says_so_not_symlink(tmp_path: Path) -> None:
    from atomic_deploy._lock import RootLock
    from atomic_deploy.errors import InvalidInput

    layout = _root(tmp_path)
    os.mkdir(layout.lock)  # EISDIR
    with pytest.raises(InvalidInput) as info:
        RootLock(layout).acquire()
    assert "cannot open lock file" in info.value.message and "symlink" not in info.value.message


@needs_proc
@pytest.mark.parametrize("wait", [0.0, 0.2])
def test_lock_held_names_the_holder_and_how_long_it_waited_and_leaks_nothing(
        tmp_path: Path, wait: float) -> None:
    from atomic_deploy._lock import RootLock, probe_holder
    from atomic_deploy.errors import LockHeld

    layout = _root(tmp_path)
    assert probe_holder(layout) is None  # free: nobody named
    holder = RootLock(layout, command="deploy A")
    holder.acquire()
    try:
        held = probe_holder(layout)
        assert held is not None and held.pid == os.getpid() and held.command == "deploy A"
        assert f"since {held.started} " in held.describe() and os.uname().nodename in held.describe()
        before = _open_fds()
        started = time.monotonic()
        with pytest.raises(LockHeld) as info:
            (RootLock(layout, wait=wait, command="deploy B") if wait else RootLock(layout)).acquire()
        waited = time.monotonic() - started
        assert _open_fds() == before  # the refused attempt closed its descriptor
        assert "deploy A" in info.value.message
        assert ("after waiting" in info.value.message) == (wait > 0), info.value.message
        if wait:
            assert "after waiting 0.2s" in info.value.message and waited >= wait
        else:
            assert waited < 0.5  # no --wait: refused at once
    finally:
        holder.release()
    assert probe_holder(layout) is None


def test_an_untrusted_lock_file_is_refused_without_leaking_its_descriptor(tmp_path: Path) -> None:
    from atomic_deploy._lock import RootLock
    from atomic_deploy.errors import InvalidInput

    layout = _root(tmp_path)
    first = RootLock(layout)
    first.acquire()  # creates the lock file
    first.release()
    os.chmod(layout.lock, 0o666)
    before = _open_fds() if os.path.isdir("/proc/self/fd") else set()
    with pytest.raises(InvalidInput, match="writable by every user"):
        RootLock(layout).acquire()
    if before:
        assert _open_fds() == before


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
def test_an_unreadable_holder_file_names_no_one(tmp_path: Path, content: str | None) -> None:
    from atomic_deploy._lock import read_holder

    layout = _root(tmp_path)
    if content is not None:
        Path(layout.holder).write_text(content)
    holder = read_holder(layout)
    assert holder.pid is None
    assert holder.describe() == "another process (no holder details recorded)"


# ---------------------------------------------------------------- _recovery


def test_a_leftover_that_cannot_be_removed_is_noted_and_never_stops_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temp links and hidden staging/trash folders go; a folder in tmp/ (a live tree mid-adopt)
    stays; one that cannot be deleted (another user's) is noted and retried later."""
    layout = _root(tmp_path)
    hidden = [f"{_layout.STAGING_PREFIX}r3.x", f"{_layout.TRASH_PREFIX}r0.y"]
    for name in hidden:
        os.mkdir(os.path.join(layout.releases, name))
    os.makedirs(layout.tmp, exist_ok=True)
    os.symlink("releases/r1", os.path.join(layout.tmp, "current.link"))  # as a switch makes it
    os.mkdir(os.path.join(layout.tmp, "adopting"))
    real = _recovery.remove_entry
    refused: list[str] = []

    def refuse_the_first(parent: str, name: str, *args: Any, **kw: Any) -> Any:
        if (name in hidden and not refused) or name in refused:
            refused.append(name)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(parent, name))
        return real(parent, name, *args, **kw)

    monkeypatch.setattr(_recovery, "remove_entry", refuse_the_first)
    problems: list[str] = []
    removed = _recovery.remove_leftovers(layout, problems)
    kept = refused[0]
    (gone,) = set(hidden) - {kept}
    assert sorted(removed) == sorted([os.path.join("releases", gone),
                                      os.path.join("tmp", "current.link")])
    assert sorted(os.listdir(layout.releases)) == sorted(["r1", "r2", kept])
    assert os.listdir(layout.tmp) == ["adopting"]
    where = os.path.join(layout.releases, kept)
    assert problems == [f"could not remove releases/{kept} (Permission denied: {where}); "
                        "it is retried later"]
    assert _recovery.remove_leftovers(layout) == []  # without a list to note it in: no error


@pytest.mark.parametrize("durable", [True, False])
def test_clearing_the_journal_flushes_its_removal_unless_told_not_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool) -> None:
    """The journal's removal is flushed after a recovery or an abort; only the commit path
    skips that (its flushed history record settles a journal that comes back)."""
    layout = _root(tmp_path)
    _recovery.write_journal(layout, {"op": "deploy"})
    synced: list[str] = []
    monkeypatch.setattr(_platform, "fsync_dir", synced.append)
    if durable:
        _recovery.clear_journal(layout)  # flushed unless told otherwise
    else:
        _recovery.clear_journal(layout, durable=False)
    assert not os.path.exists(layout.journal)
    assert synced == ([layout.state] if durable else [])
    _recovery.clear_journal(layout)  # already gone: nothing to do, nothing flushed
    assert synced == ([layout.state] if durable else [])


# ---------------------------------------------------------------- _platform


def test_same_filesystem_either_way_round(tmp_path: Path) -> None:
    other = "/proc" if os.path.isdir("/proc") else "/dev"  # never the test folder's filesystem
    assert _platform.same_filesystem(str(tmp_path), str(tmp_path / "."))
    assert not _platform.same_filesystem(str(tmp_path), other)
    assert not _platform.same_filesystem(other, str(tmp_path))


def _libc_has(name: str) -> bool:
    import ctypes

    return hasattr(ctypes.CDLL(None), name)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux system calls")
def test_linux_uses_syncfs_and_renameat2_where_its_c_library_has_them(tmp_path: Path) -> None:
    """Not a silent fallback: one syncfs per deploy, and adopt's exchange with no gap."""
    if _libc_has("syncfs"):
        assert _platform.can_sync_filesystem()
    if not _libc_has("renameat2"):
        pytest.skip("no renameat2 in this C library")
    assert _platform.exchange_name() == "renameat2(RENAME_EXCHANGE)"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").write_text("b")
    _platform.exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "a").read_text() == "b" and (tmp_path / "b").is_dir()
    with pytest.raises(FileNotFoundError):  # a failure is raised, with its errno
        _platform.exchange(str(tmp_path / "a"), str(tmp_path / "missing"))


def test_a_folder_fsync_the_filesystem_refuses_is_no_error(tmp_path: Path) -> None:
    def refuse(fd: int) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    _platform._sync_path(str(tmp_path), os.O_RDONLY, refuse)
    with pytest.raises(OSError) as info:
        _platform._sync_path(str(tmp_path), os.O_RDONLY, fail)
    assert info.value.errno == errno.EIO

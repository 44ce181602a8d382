"""The mutating operations: deploy, prepare, activate, rollback, prune.

Each runs inside a session: signals deferred, the root's lock held, any interrupted operation
recovered first. Each writes a journal before changing anything and commits by appending its
history record; any failure or signal before that undoes the operation from the journal.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, TypeVar

from . import _platform
from ._copy import CopyStats, check_source, copy_tree
from ._history import History, prune_victims, record, rollback_target
from ._layout import (
    STAGING_PREFIX,
    Layout,
    check_root_for_write,
    hide_release_dir,
    is_release_dir,
    new_release_id,
    random_suffix,
    read_current,
    release_dirs,
    remove_entry,
    show,
    valid_release_name,
)
from ._lock import RootLock
from ._recovery import Journal, clear_journal, describe_current, recover, undo, write_journal
from ._signals import SignalGuard, checkpoint
from ._switch import switch_to_release
from .errors import AtomicDeployError, InterruptedBySignal, InvalidInput, OperationFailed

T = TypeVar("T")


@dataclass
class DeployResult:
    release: str
    path: str
    previous: str | None
    activated: bool
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    pruned: list[str] = field(default_factory=list)
    recovered: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ActivateResult:
    release: str
    previous: str | None
    marked_bad: str | None = None
    recovered: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneResult:
    deleted: list[str]
    kept: list[str]
    recovered: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _error_for(exc: BaseException, op: str, state: str) -> BaseException:
    """The typed error to raise once ``exc`` has been dealt with and the root is in ``state``."""
    if isinstance(exc, InterruptedBySignal):
        return InterruptedBySignal(exc.signum, state)
    if isinstance(exc, KeyboardInterrupt):  # only outside the main thread's deferred handler
        import signal

        return InterruptedBySignal(signal.SIGINT, state)
    if isinstance(exc, AtomicDeployError):
        return type(exc)(exc.message, state)
    if isinstance(exc, OSError):
        where = f" ({show(exc.filename)})" if exc.filename else ""
        return OperationFailed(f"{op} failed: {exc.strerror or exc}{where}", state)
    return exc


class _Session:
    """Signals deferred, lock held, interrupted work recovered; then journaled steps."""

    def __init__(self, layout: Layout, wait: float, command: str | None) -> None:
        self.layout = layout
        self._guard = SignalGuard()
        self._lock = RootLock(layout, wait, command, checkpoint=lambda: checkpoint("lock-wait"))
        self.history = History([])
        self.recovered: str | None = None

    def __enter__(self) -> _Session:
        self._guard.__enter__()
        try:
            self._check_same_filesystem()
            self._lock.acquire()
            checkpoint("lock-acquired")
            self.history = History.load(self.layout)
            self.recovered = recover(self.layout, self.history)
            if self.recovered:
                self.history = History.load(self.layout)
        except BaseException as exc:
            self.__exit__()
            if isinstance(exc, AtomicDeployError) and not isinstance(exc, InterruptedBySignal):
                raise
            raise _error_for(exc, "starting", "nothing was changed") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        self._guard.__exit__()

    def _check_same_filesystem(self) -> None:
        # rename(2) cannot cross filesystems: find out before anything is moved.
        for path in (self.layout.tmp, self.layout.releases):
            if not _platform.same_filesystem(path, self.layout.root):
                raise InvalidInput(
                    f"{show(path)} is on another filesystem than {show(self.layout.root)}; "
                    "current can only be switched atomically within one filesystem",
                    "nothing was changed",
                )

    def run(
        self,
        op: str,
        journal: Journal,
        body: Callable[[], tuple[T, dict[str, Any]]],
    ) -> T:
        """Journal, run ``body``, commit its history record; undo on any failure or signal."""
        op_id = secrets.token_hex(8)
        journal = {"op": op, "op_id": op_id, "pid": os.getpid(),
                   "started": _dt.datetime.now(_dt.timezone.utc).isoformat(), **journal}
        write_journal(self.layout, journal)
        try:
            checkpoint("journal-written")
            value, fields = body()
            record(self.layout, op, "ok", op_id=op_id, **fields)  # the commit point
        except BaseException as exc:
            raise self._abort(op, op_id, journal, exc) from None
        clear_journal(self.layout)
        self.history = History.load(self.layout)
        try:
            checkpoint("committed")
        except InterruptedBySignal as exc:
            raise InterruptedBySignal(
                exc.signum, f"the {op} had completed; {describe_current(self.layout)}"
            ) from None
        return value

    def _abort(self, op: str, op_id: str, journal: Journal, exc: BaseException) -> BaseException:
        try:
            state = f"rolled back, {undo(self.layout, journal)}"
        except OSError as undo_exc:
            # The journal stays: the next command holding the lock finishes the undo.
            return OperationFailed(
                f"{op} failed ({exc}) and rolling back failed too ({undo_exc})",
                "the next atomic-deploy command on this root will finish the rollback",
            )
        outcome = "interrupted" if isinstance(exc, (InterruptedBySignal, KeyboardInterrupt)) \
            else "failed"
        try:
            record(self.layout, op, outcome, op_id=op_id, release=journal.get("release"),
                   previous_target=journal.get("previous"), error=str(exc) or type(exc).__name__)
            clear_journal(self.layout)
        except OSError:
            pass  # disk full: the journal stays, and the next run's recovery is a no-op undo
        return _error_for(exc, op, state)


def _stage_and_maybe_switch(
    source: str,
    root: str,
    *,
    activate: bool,
    keep: int | None,
    wait: float,
    message: str | None,
    command: str | None,
) -> DeployResult:
    if keep is not None and keep < 1:
        raise InvalidInput("--keep must be at least 1", "nothing was changed")
    src = check_source(source, root)
    layout = check_root_for_write(root, create=True)
    op = "deploy" if activate else "prepare"
    with _Session(layout, wait, command) as s:
        started = time.monotonic()
        cur = read_current(layout)
        previous = cur.release if cur.resolves else None
        rid = new_release_id(set(release_dirs(layout)) | s.history.known())
        staging = f"{STAGING_PREFIX}{rid}.{random_suffix()}"
        journal = {"release": rid, "staging": staging, "previous": cur.target,
                   "creates_release": True, "source": src}

        def body() -> tuple[CopyStats, dict[str, Any]]:
            spath = os.path.join(layout.releases, staging)
            os.mkdir(spath, 0o700)
            checkpoint("staging-created")
            syncfs = _platform.can_sync_filesystem()
            stats = copy_tree(src, spath, checkpoint, fsync_each=not syncfs)
            checkpoint("copied")
            if syncfs:
                _platform.sync_filesystem(spath)
            checkpoint("flushed")
            if os.path.lexists(layout.release(rid)):  # cannot happen under the lock; never merge
                raise OperationFailed(f"release {rid} appeared while staging")
            os.rename(spath, layout.release(rid))
            checkpoint("release-renamed")
            _platform.fsync_dir(layout.releases)
            checkpoint("release-synced")
            if activate:
                switch_to_release(layout, rid, checkpoint)
            return stats, {"release": rid, "previous": previous, "source": src,
                           "message": message, "files": stats.files, "bytes": stats.bytes}

        stats = s.run(op, journal, body)
        result = DeployResult(
            release=rid, path=layout.release(rid), previous=previous, activated=activate,
            files=stats.files, bytes=stats.bytes, recovered=s.recovered,
        )
        if keep is not None:
            result.pruned = _prune_locked(s, keep).deleted
        result.seconds = round(time.monotonic() - started, 3)
        return result


def deploy(
    source: str,
    root: str,
    *,
    keep: int | None = None,
    wait: float = 0.0,
    message: str | None = None,
    command: str | None = None,
) -> DeployResult:
    """Copy ``source`` into a new release and switch ``current`` to it atomically."""
    return _stage_and_maybe_switch(source, root, activate=True, keep=keep, wait=wait,
                                   message=message, command=command)


def prepare(
    source: str,
    root: str,
    *,
    wait: float = 0.0,
    message: str | None = None,
    command: str | None = None,
) -> DeployResult:
    """Stage a complete release without switching; ``activate`` it later."""
    return _stage_and_maybe_switch(source, root, activate=False, keep=None, wait=wait,
                                   message=message, command=command)


def _check_release(layout: Layout, release: str) -> None:
    if not valid_release_name(release) or not is_release_dir(layout, release):
        known = release_dirs(layout)
        hint = f" (known: {', '.join(known[-5:])})" if known else " (there are no releases)"
        raise InvalidInput(f"unknown release id {show(release)!r}{hint}", "nothing was changed")


def _switch_op(s: _Session, op: str, release: str, previous: str | None,
               previous_target: str | None) -> None:
    layout = s.layout
    journal = {"release": release, "previous": previous_target, "creates_release": False}

    def body() -> tuple[None, dict[str, Any]]:
        switch_to_release(layout, release, checkpoint)
        return None, {"release": release, "previous": previous}

    s.run(op, journal, body)


def activate(root: str, release: str, *, wait: float = 0.0,
             command: str | None = None) -> ActivateResult:
    """Switch ``current`` to an existing complete release (clears a bad mark)."""
    layout = check_root_for_write(root, create=False)
    with _Session(layout, wait, command) as s:
        _check_release(layout, release)
        cur = read_current(layout)
        previous = cur.release if cur.resolves else None
        _switch_op(s, "activate", release, previous, cur.target)
        return ActivateResult(release, previous, recovered=s.recovered)


def rollback(root: str, to: str | None = None, *, wait: float = 0.0,
             command: str | None = None) -> ActivateResult:
    """Go back to the newest good release deployed before the current one (or ``to``); the
    release rolled away from is marked bad."""
    layout = check_root_for_write(root, create=False)
    with _Session(layout, wait, command) as s:
        cur = read_current(layout)
        if not cur.healthy or cur.release is None:
            raise InvalidInput(
                f"nothing to roll back from: {describe_current(layout)}"
                + (" (dangling)" if cur.kind == "symlink" else ""),
                "nothing was changed; use activate ROOT RELEASE_ID",
            )
        if to is not None:
            _check_release(layout, to)
            target: str | None = to
        else:
            ordered = s.history.order(release_dirs(layout))
            target = rollback_target(ordered, s.history.bad(), cur.release)
        if target is None:
            raise InvalidInput(
                f"nothing to roll back to: no good release older than {cur.release}",
                "nothing was changed",
            )
        if target == cur.release:
            raise InvalidInput(f"{target} is already current", "nothing was changed")
        _switch_op(s, "rollback", target, cur.release, cur.target)
        return ActivateResult(target, cur.release, marked_bad=cur.release, recovered=s.recovered)


def _prune_locked(s: _Session, keep: int) -> PruneResult:
    layout = s.layout
    ordered = s.history.order(release_dirs(layout))
    bad = s.history.bad()
    cur = read_current(layout)
    protected = set()
    if cur.release is not None and cur.resolves:
        protected.add(cur.release)
        target = rollback_target(ordered, bad, cur.release)
        if target:
            protected.add(target)
    victims = prune_victims(ordered, bad, keep, protected, s.history.known())
    deleted: list[str] = []
    journal = {"victims": victims, "previous": cur.target, "creates_release": False}

    def body() -> tuple[None, dict[str, Any]]:
        for name in victims:
            trash = hide_release_dir(layout, name)
            checkpoint("victim-hidden")
            if trash:
                remove_entry(layout.releases, trash)
            deleted.append(name)
            checkpoint("victim-removed")
        if victims:
            _platform.fsync_dir(layout.releases)
        return None, {"deleted": deleted, "keep": keep}

    s.run("prune", journal, body)
    return PruneResult(deleted, [n for n in ordered if n not in deleted], recovered=s.recovered)


def prune(root: str, keep: int, *, wait: float = 0.0, command: str | None = None) -> PruneResult:
    """Delete old releases, keeping ``keep`` good ones plus current and the rollback target."""
    if keep < 1:
        raise InvalidInput("--keep must be at least 1", "nothing was changed")
    layout = check_root_for_write(root, create=False)
    with _Session(layout, wait, command) as s:
        return _prune_locked(s, keep)


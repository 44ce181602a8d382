"""The mutating operations: deploy, prepare, activate, rollback, prune, adopt.

Each runs inside a session: signals deferred, the root's lock held, any interrupted operation
recovered first. Each writes a journal before changing anything and commits by appending its
history record; any failure or signal before that undoes the operation from the journal.
"""

from __future__ import annotations

import math
import os
import time

from . import _log as log
from . import _platform
from ._copy import CopyStats, check_source, copy_tree
from ._history import (
    BAD,
    COMPLETE,
    SERVED,
    History,
    bad_of,
    prune_victims,
    record,
    release_states,
    rollback_target,
)
from ._jsonfile import FACTORY as _FACTORY
from ._jsonfile import Record, as_plain_dict, random_suffix
from ._layout import (
    STAGING_PREFIX,
    SWITCH_OPS,
    Layout,
    check_root_for_write,
    hide_release_dir,
    is_release_dir,
    new_release_id,
    read_current,
    release_dirs,
    remove_entry,
    show,
    valid_release_name,
)
from ._lock import RootLock
from ._manifest import CopyRecord
from ._recovery import (
    _error_for,
    _os_error,
    clear_journal,
    describe_current,
    note_hook_group,
    recover,
    switch_back,
    undo,
    write_journal,
)
from ._signals import SignalGuard, checkpoint, signal_set_aside
from ._switch import switch_to_release
from .errors import (
    AtomicDeployError,
    CheckFailed,
    InterruptedBySignal,
    InvalidInput,
    OperationFailed,
)

TYPE_CHECKING = False  # typing costs start-up time at every deploy
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar, Union

    from ._manifest import Lines
    from ._recovery import Journal

    T = TypeVar("T")
    Hook = Union[str, list[str]]


# Releases a deploy keeps when not told otherwise (Capistrano's keep_releases is 5 too);
# ``keep="all"`` turns pruning off.
DEFAULT_KEEP = 5
KEEP_ALL = "all"

# The options and results below were dataclasses; plain classes spare a deploy's start-up the
# import of dataclasses (with inspect: 4 ms) and building them (2 ms). Same constructors,
# attributes, equality and repr (fields in their order: hence the unsorted __slots__), and
# to_dict() copies as dataclasses.asdict() did.


class DeployOptions(Record):
    """Everything a deploy can be told; the CLI, the config file and the API all fill this."""

    __slots__ = ("keep", "wait", "message", "command", "git", "ref", "strip_components", "revision",  # noqa: RUF023
                 "refuse_external_links", "session", "fetch", "shared_dirs", "shared_files",
                 "create_missing", "check", "after_switch", "on_failure", "health_check", "health_url",
                 "health_timeout", "health_retries", "health_interval", "hook_timeout", "on_output",
                 "link_unchanged", "checksum", "trust_mtime", "link_writable", "digest", "if_changed",
                 "jobs", "fsync", "progress")

    keep: int | str | None
    wait: float
    message: str | None
    command: str | None
    # sources
    git: str | None  # repository; SOURCE is then not used
    ref: str
    strip_components: int
    revision: str | None
    refuse_external_links: bool  # a folder build's symlinks out of it: error, not warning
    # The build comes from a deploying machine over a remote session (remote/_session.py):
    # it fills the staging folder, and says when to seal, switch and commit.
    session: Any
    # A URL source: how to fetch and check it (_fetch.FetchOptions; None: the defaults)
    fetch: Any
    # shared data
    shared_dirs: list[str]
    shared_files: list[str]
    create_missing: bool
    # hooks and checks
    check: list[Hook]
    after_switch: list[Hook]
    on_failure: list[Hook]
    health_check: Hook | None
    health_url: str | None
    health_timeout: float
    health_retries: int
    health_interval: float
    hook_timeout: float | None
    on_output: Callable[[str], None] | None
    # copying
    link_unchanged: bool
    checksum: bool
    trust_mtime: bool  # link on size+mtime alone, without reading contents
    link_writable: bool
    digest: bool  # record every file's content digest in the manifest
    # Keep nothing when the build's manifest (content digests included) is the current
    # release's: the staged copy is removed, nothing is switched or recorded (--if-changed).
    if_changed: bool
    jobs: int | None
    fsync: bool
    progress: Callable[[int, int], None] | None

    def __init__(self, keep: int | str | None = None, wait: float = 0.0, message: str | None = None,
                 command: str | None = None, git: str | None = None, ref: str = "HEAD",
                 strip_components: int = 0, revision: str | None = None, refuse_external_links: bool = False,
                 session: Any = None, fetch: Any = None, shared_dirs: list[str] = _FACTORY,
                 shared_files: list[str] = _FACTORY, create_missing: bool = False,
                 check: list[Hook] = _FACTORY, after_switch: list[Hook] = _FACTORY,
                 on_failure: list[Hook] = _FACTORY, health_check: Hook | None = None,
                 health_url: str | None = None, health_timeout: float = 10.0, health_retries: int = 3,
                 health_interval: float = 1.0, hook_timeout: float | None = 600.0,
                 on_output: Callable[[str], None] | None = None, link_unchanged: bool = False,
                 checksum: bool = False, trust_mtime: bool = False, link_writable: bool = False,
                 digest: bool = False, if_changed: bool = False, jobs: int | None = None, fsync: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.keep = keep
        self.wait = wait
        self.message = message
        self.command = command
        self.git = git
        self.ref = ref
        self.strip_components = strip_components
        self.revision = revision
        self.refuse_external_links = refuse_external_links
        self.session = session
        self.fetch = fetch
        self.shared_dirs = [] if shared_dirs is _FACTORY else shared_dirs
        self.shared_files = [] if shared_files is _FACTORY else shared_files
        self.create_missing = create_missing
        self.check = [] if check is _FACTORY else check
        self.after_switch = [] if after_switch is _FACTORY else after_switch
        self.on_failure = [] if on_failure is _FACTORY else on_failure
        self.health_check = health_check
        self.health_url = health_url
        self.health_timeout = health_timeout
        self.health_retries = health_retries
        self.health_interval = health_interval
        self.hook_timeout = hook_timeout
        self.on_output = on_output
        self.link_unchanged = link_unchanged
        self.checksum = checksum
        self.trust_mtime = trust_mtime
        self.link_writable = link_writable
        self.digest = digest
        self.if_changed = if_changed
        self.jobs = jobs
        self.fsync = fsync
        self.progress = progress


class DeployResult(Record):
    __slots__ = ("release", "path", "previous", "activated", "files", "bytes", "linked", "manifest",  # noqa: RUF023
                 "seconds", "revision", "shared", "hooks", "pruned", "recovered", "unchanged",
                 "external_links", "warnings")

    release: str
    path: str
    previous: str | None
    activated: bool
    files: int
    bytes: int
    linked: int
    manifest: str | None  # digest of the release's manifest file
    seconds: float
    revision: str | None
    shared: list[str]
    hooks: list[dict[str, Any]]
    pruned: list[str]
    recovered: str | None
    unchanged: bool  # --if-changed found the build already current: nothing was done
    # Symlinks of a folder build that lead out of it: {"path": ..., "target": ...} each.
    external_links: list[dict[str, str]]
    # Problems after the commit point (pruning), and what looks like a mistake in the build
    # (one folder wrapping a tarball's contents, symlinks out of it): the deploy completed.
    warnings: list[str]

    def __init__(self, release: str, path: str, previous: str | None, activated: bool, files: int = 0,
                 bytes: int = 0, linked: int = 0, manifest: str | None = None, seconds: float = 0.0,
                 revision: str | None = None, shared: list[str] = _FACTORY,
                 hooks: list[dict[str, Any]] = _FACTORY, pruned: list[str] = _FACTORY,
                 recovered: str | None = None, unchanged: bool = False,
                 external_links: list[dict[str, str]] = _FACTORY, warnings: list[str] = _FACTORY) -> None:
        self.release = release
        self.path = path
        self.previous = previous
        self.activated = activated
        self.files = files
        self.bytes = bytes
        self.linked = linked
        self.manifest = manifest
        self.seconds = seconds
        self.revision = revision
        self.shared = [] if shared is _FACTORY else shared
        self.hooks = [] if hooks is _FACTORY else hooks
        self.pruned = [] if pruned is _FACTORY else pruned
        self.recovered = recovered
        self.unchanged = unchanged
        self.external_links = [] if external_links is _FACTORY else external_links
        self.warnings = [] if warnings is _FACTORY else warnings

    def to_dict(self) -> dict[str, Any]:
        return as_plain_dict(self)


class ActivateResult(Record):
    __slots__ = ("release", "previous", "marked_bad", "hooks", "recovered")  # noqa: RUF023

    release: str
    previous: str | None
    marked_bad: str | None
    hooks: list[dict[str, Any]]
    recovered: str | None

    def __init__(self, release: str, previous: str | None, marked_bad: str | None = None,
                 hooks: list[dict[str, Any]] = _FACTORY, recovered: str | None = None) -> None:
        self.release = release
        self.previous = previous
        self.marked_bad = marked_bad
        self.hooks = [] if hooks is _FACTORY else hooks
        self.recovered = recovered

    def to_dict(self) -> dict[str, Any]:
        return as_plain_dict(self)


class PruneResult(Record):
    __slots__ = ("deleted", "kept", "recovered", "warnings")

    deleted: list[str]
    kept: list[str]
    recovered: str | None
    warnings: list[str]

    def __init__(self, deleted: list[str], kept: list[str], recovered: str | None = None,
                 warnings: list[str] = _FACTORY) -> None:
        self.deleted = deleted
        self.kept = kept
        self.recovered = recovered
        self.warnings = [] if warnings is _FACTORY else warnings

    def to_dict(self) -> dict[str, Any]:
        return as_plain_dict(self)


class RecoverResult(Record):
    __slots__ = ("action", "leftovers", "warnings", "dry_run")  # noqa: RUF023

    action: str | None  # what was done (or, for a dry run, would be done); None: nothing
    leftovers: list[str]
    warnings: list[str]
    dry_run: bool

    def __init__(self, action: str | None, leftovers: list[str] = _FACTORY, warnings: list[str] = _FACTORY,
                 dry_run: bool = False) -> None:
        self.action = action
        self.leftovers = [] if leftovers is _FACTORY else leftovers
        self.warnings = [] if warnings is _FACTORY else warnings
        self.dry_run = dry_run

    def to_dict(self) -> dict[str, Any]:
        return as_plain_dict(self)


class AdoptResult(Record):
    __slots__ = ("release", "method", "recovered")  # noqa: RUF023

    release: str
    method: str
    recovered: str | None

    def __init__(self, release: str, method: str, recovered: str | None = None) -> None:
        self.release = release
        self.method = method
        self.recovered = recovered

    def to_dict(self) -> dict[str, Any]:
        return as_plain_dict(self)


class _Unhealthy(Exception):
    """Raised inside an operation whose post-switch hook or health check failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Session:
    """Signals deferred, lock held, interrupted work recovered; then journaled steps."""

    def __init__(self, layout: Layout, wait: float, command: str | None,
                 opts: DeployOptions | None = None) -> None:
        self.layout = layout
        self._guard = SignalGuard()
        self._lock = RootLock(layout, wait, command, checkpoint=lambda: checkpoint("lock-wait"))
        self.history = History([])
        self.recovered: str | None = None
        self.warnings: list[str] = []  # leftovers that could not be removed, and the like
        self.log_recovery = True  # `recover` reports what it did as its result instead
        self.journal: Journal | None = None  # while an operation's journal is on disk
        self.on_failure: list[Hook] = []
        self.hook_release: tuple[str, str | None] = ("", None)  # (release, previous) for env
        self.hook_timeout: float | None = opts.hook_timeout if opts else None
        self.on_output: Callable[[str], None] | None = opts.on_output if opts else None

    def __enter__(self) -> _Session:
        self._guard.__enter__()
        try:
            self._check_same_filesystem()
            self._lock.acquire()
            checkpoint("lock-acquired")
            self.history = History.load(self.layout)
            self.recovered = recover(self.layout, self.history, self.tell, self.warnings)
            if self.recovered and self.log_recovery:
                log.warning("%s", self.recovered)
            if self.recovered:
                self.history = History.load(self.layout)
        except BaseException as exc:
            self.__exit__()
            if isinstance(exc, AtomicDeployError) and (
                    not isinstance(exc, InterruptedBySignal) or exc.state):
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

    def tell(self, journal: Journal, release: str, previous: str | None,
             health: bool) -> str | None:
        """Run the after-switch hooks the journal records for ``release`` (and the health
        check, with ``health``): None when they passed, else why not. Used after a switch-back
        and by recovery, so a signal already received is set aside while they run."""
        spec = journal.get("hooks") or {}
        opts = DeployOptions(after_switch=list(spec.get("after_switch") or []),
                             on_output=self.on_output)
        if health:
            opts.health_check = spec.get("health_check")
            opts.health_url = spec.get("health_url")
            for key in ("health_timeout", "health_retries", "health_interval"):
                if key in spec:
                    setattr(opts, key, spec[key])
        saved = (self.hook_release, self.hook_timeout)
        self.hook_release = (release, previous)
        self.hook_timeout = spec.get("hook_timeout", self.hook_timeout)
        try:
            with signal_set_aside():
                _healthy_or_raise(self, opts, self.layout.release(release), [])
            return None
        except _Unhealthy as exc:
            return exc.message
        except InterruptedBySignal:
            if health:  # recovery's re-run: stop, leave the operation for the next command
                raise
            return "stopped by a second signal"
        except AtomicDeployError as exc:
            return exc.message
        finally:
            self.hook_release, self.hook_timeout = saved

    def run(
        self,
        op: str,
        journal: Journal,
        body: Callable[[str], tuple[T, dict[str, Any]]],
    ) -> T:
        """Journal, run ``body(op_id)``, commit its history record; undo on failure or signal."""
        op_id = random_suffix()
        journal = {"op": op, "op_id": op_id, "pid": os.getpid(),
                   "started": _started(), **journal}
        write_journal(self.layout, journal)
        self.journal = journal
        try:
            checkpoint("journal-written")
            value, fields = body(op_id)
            record(self.layout, op, "ok", op_id=op_id, **fields)  # the commit point
        except _Unchanged:
            undo(self.layout, journal)  # nothing was switched: removes the staged release
            clear_journal(self.layout)
            raise
        except CheckFailed as exc:
            if not exc.rolled_back:
                raise self._abort(op, op_id, journal, exc) from None
            clear_journal(self.layout)  # already switched back and recorded by the body
            raise
        except BaseException as exc:
            raise self._abort(op, op_id, journal, exc) from None
        finally:
            self.journal = None
        # Not flushed: should the journal come back after a power cut, recovery finds its op_id
        # finished in the history (flushed above) and only removes it.
        clear_journal(self.layout, durable=False)
        self.history = History.load(self.layout)
        try:
            checkpoint("committed")
        except InterruptedBySignal as exc:
            raise InterruptedBySignal(
                exc.signum, f"the {op} had completed; {describe_current(self.layout)}"
            ) from None
        return value

    def _abort(self, op: str, op_id: str, journal: Journal, exc: BaseException) -> BaseException:
        switched = read_current(self.layout).target != journal.get("previous")
        try:
            if switched and op in SWITCH_OPS:
                # The service may have been told about the new release: tell it about the
                # restored one (after a signal too), and journal that first.
                after, told = switch_back(self.layout, journal,
                                          mark_bad=bool(getattr(exc, "mark_bad", False)),
                                          reason=str(exc) or type(exc).__name__, tell=self.tell)
                state = f"switched back, {after}"
                if getattr(exc, "mark_bad", False) and journal.get("release"):
                    state += f"; {journal.get('release')} kept and marked bad"
                if told:
                    state += f"; after-switch hook on the restored release failed: {told}"
            elif switched:
                state = f"switched back, {undo(self.layout, journal)}"
            elif journal.get("creates_release"):
                after = undo(self.layout, journal)
                state = f"nothing was switched, the new release was removed; {after} (unchanged)"
            else:
                state = f"nothing was switched; {undo(self.layout, journal)} (unchanged)"
        except OSError as undo_exc:
            # The journal stays: the next command holding the lock finishes the undo.
            return OperationFailed(
                f"{op} failed ({exc}) and rolling back failed too ({undo_exc})",
                "the next atomic-deploy command on this root will finish the rollback",
            )
        self.journal = None  # on-failure hooks run after the journal is gone
        interrupted = isinstance(exc, (InterruptedBySignal, KeyboardInterrupt))
        outcome = "interrupted" if interrupted else "failed"
        release = journal.get("release")
        states = None
        if (journal.get("mark_bad") or getattr(exc, "mark_bad", False)) and \
                isinstance(release, str):
            # It had failed its after-switch hook or health check before this error: kept, bad.
            outcome, states = "unhealthy", {release: BAD}
        try:
            record(self.layout, op, outcome, op_id=op_id, release=release,
                   previous_target=journal.get("previous"),
                   error=str(exc) or type(exc).__name__, states=states)
            clear_journal(self.layout)
        except OSError:
            pass  # disk full: the journal stays, and the next run's recovery is a no-op undo
        if not interrupted:
            # A signal means "stop now": on-failure hooks run only for real failures.
            self.run_on_failure(str(exc))
        return _error_for(exc, op, state)

    def run_hooks(self, phase: str, hooks: list[Hook], cwd: str,
                  **extra: str) -> list[dict[str, Any]]:
        """Run ``hooks`` in order; raise HookFailed at the first failure, InterruptedBySignal
        if a signal arrived while one ran."""
        if not hooks:
            return []  # without importing _hooks (subprocess, selectors): 5 ms of every deploy
        from . import _hooks

        release, previous = self.hook_release
        env = _hooks.hook_env(self.layout.root, release, self.layout.release(release), previous,
                              phase, **extra)
        done: list[dict[str, Any]] = []
        for cmd in hooks:
            res = _hooks.run_hook(phase, cmd, cwd=cwd, env=env, timeout=self.hook_timeout,
                                  on_output=self.on_output, on_start=self.note_hook)
            done.append({"phase": phase, "command": cmd, "returncode": res.returncode,
                         "status": _hooks.describe_status(res.status),
                         "seconds": round(res.seconds, 3), "tail": res.tail})
            checkpoint(f"hook-{phase}")
            if not res.ok:
                err = _hooks.HookFailed.from_result(res)
                err.hooks = done
                raise err
        return done

    def note_hook(self, pgid: int) -> None:
        """A hook started: its process group goes into the journal, for recovery to kill."""
        if self.journal is not None:
            try:
                note_hook_group(self.layout, self.journal, pgid)
            except OSError as exc:  # disk full: the supervisor still kills it if we die
                log.debug("could not note hook process group %d in the journal: %s", pgid, exc)

    def run_on_failure(self, error: str) -> None:
        if not self.on_failure:
            return
        try:
            self.run_hooks("on-failure", self.on_failure, self.layout.root, error=error)
        except AtomicDeployError as exc:
            log.warning("on-failure hook failed too: %s", exc.message)


def _started() -> str:
    """datetime.now(timezone.utc).isoformat() (microseconds left out when 0, as it does),
    without importing datetime (1 ms of every deploy)."""
    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    micro = ns // 1000
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + (f".{micro:06d}" if micro else "") + "+00:00")


def _hooks_spec(opts: DeployOptions) -> dict[str, Any] | None:
    """What recovery needs to re-run after a crash: the after-switch hooks and health check."""
    if not opts.after_switch and opts.health_check is None and opts.health_url is None:
        return None
    return {"after_switch": opts.after_switch, "health_check": opts.health_check,
            "health_url": opts.health_url, "health_timeout": opts.health_timeout,
            "health_retries": opts.health_retries, "health_interval": opts.health_interval,
            "hook_timeout": opts.hook_timeout}


def _show_hook(cmd: Hook) -> str:
    return repr(cmd if isinstance(cmd, str) else " ".join(cmd))


def _per_file_fsync(opts: DeployOptions) -> bool:
    """Flush each file as it is written: only where no filesystem-wide sync exists."""
    return opts.fsync and not _platform.can_sync_filesystem()


def _flush_tree(path: str, opts: DeployOptions, written_by_us: bool) -> None:
    """Make everything under ``path`` durable before it is renamed or switched to.

    Linux: one syncfs. Elsewhere our own writes were fsynced as they were made, so only what
    others wrote (check hooks) needs a walk; folders of shared links are synced by the caller.
    """
    if not opts.fsync:
        return
    if _platform.can_sync_filesystem():
        _platform.sync_filesystem(path)
    elif not written_by_us:
        _platform.fsync_tree(path)


def _ran_after_switch(hooks: list[dict[str, Any]]) -> list[str]:
    """Which of after-switch and health-check ran (and passed): a fleet says only those."""
    return [p for p in ("after-switch", "health-check") if any(h.get("phase") == p for h in hooks)]


# Below this many entries the manifest's lines cost less than starting a thread (and a small
# deploy does not import threading at all: start-up time).
_FLUSH_OVERLAP_ENTRIES = 2000


def _flush_tree_and(path: str, opts: DeployOptions, written_by_us: bool,
                    record: CopyRecord | None) -> Lines | None:
    """_flush_tree, and meanwhile the manifest's lines from the copy's record (pure CPU work,
    written only later, after the rename): the flush is the kernel's work, waited for without
    the GIL, so a large incremental deploy gets its manifest's lines for free. Returns them,
    or None where the manifest will be made otherwise (check hooks may write into the
    release: it is walked then)."""
    if record is None or opts.check:
        _flush_tree(path, opts, written_by_us)
        return None
    from . import _manifest

    if not (opts.fsync and _platform.can_sync_filesystem()) \
            or len(record.lines) + len(record.files) < _FLUSH_OVERLAP_ENTRIES:
        _flush_tree(path, opts, written_by_us)
        return _manifest.from_record(record)
    import threading

    failed: list[BaseException] = []

    def flush() -> None:
        try:
            _flush_tree(path, opts, written_by_us)
        except BaseException as exc:  # raised on the calling thread, below
            failed.append(exc)

    worker = threading.Thread(target=flush, name="atomic-deploy-flush", daemon=True)
    worker.start()
    try:
        lines = _manifest.from_record(record)
    finally:
        worker.join()  # nothing is renamed before the flush is done, even on an interrupt
    if failed:
        raise failed[0]
    return lines


def _healthy_or_raise(s: _Session, opts: DeployOptions, cwd: str,
                      hooks: list[dict[str, Any]]) -> None:
    """After-switch hooks, then the health check; raise _Unhealthy (after noting why)."""
    try:
        hooks += s.run_hooks("after-switch", opts.after_switch, cwd)
    except CheckFailed as exc:
        raise _Unhealthy(exc.message) from None
    if opts.health_check is None and opts.health_url is None:
        return
    from . import _hooks

    release, previous = s.hook_release
    env = _hooks.hook_env(s.layout.root, release, s.layout.release(release), previous,
                          "health-check")
    res = _hooks.run_health_check(
        opts.health_check, opts.health_url, retries=opts.health_retries,
        timeout=opts.health_timeout, interval=opts.health_interval, cwd=cwd, env=env,
        on_output=opts.on_output, on_start=s.note_hook)
    hooks.append({"phase": "health-check", "ok": res.ok, "attempts": res.attempts,
                  "last_status": res.last_status, "last_error": res.last_error,
                  "tail": res.hook.tail if res.hook is not None else []})
    checkpoint("health-checked")
    if not res.ok:
        if res.hook is not None and not res.hook.ok:
            why = f"health-check command {_hooks.describe_status(res.hook.status)}"
        else:
            detail = res.last_error or (f"HTTP {res.last_status}" if res.last_status else "failed")
            why = f"health check of {opts.health_url} failed: {detail}"
        raise _Unhealthy(f"{why} (after {res.attempts} attempt{'s' if res.attempts != 1 else ''})")


def _switch_back_unhealthy(s: _Session, op: str, op_id: str, opts: DeployOptions,
                           release: str, previous_release: str | None,
                           previous_target: str | None, reason: str,
                           hooks: list[dict[str, Any]], extra: dict[str, Any]) -> CheckFailed:
    """Put current back, keep the release marked bad, tell the service, run on-failure."""
    layout = s.layout
    # Journaled before current moves back: a crash from here on is finished by recovery, which
    # also tells the service about the restored release.
    assert s.journal is not None  # called from inside the operation's body
    after, told = switch_back(layout, s.journal, mark_bad=True, reason=reason, tell=s.tell)
    record(layout, op, "unhealthy", op_id=op_id, release=release, previous=previous_release,
           error=reason, hooks=hooks, states={release: BAD}, **extra)
    state = f"switched back, {after}; {release} kept and marked bad"
    if told:
        state += f"; after-switch hook on the restored release failed: {told}"
    s.run_on_failure(reason)
    return CheckFailed(f"{op} of {release} rolled back: {reason}", state, hooks=hooks,
                       rolled_back=True)


def _source_kind(source: str | None, root: str, opts: DeployOptions) -> tuple[str, str]:
    """('dir' | 'tar' | 'git', absolute source) after validating it; nothing touched."""
    if opts.session is not None and not getattr(opts.session, "self_sourced", False):
        return "session", str(opts.session.label)
    if source is not None and source.split(":", 1)[0].lower() in ("http", "https", "file"):
        from . import _fetch

        if _fetch.is_url(source):
            if opts.fetch is None:
                opts.fetch = _fetch.FetchOptions()
            _fetch.check(source, opts.fetch)
            opts.fetch.url = source  # fetched from this; recorded without credentials
            return "url", _fetch.redact(source)
    if opts.fetch is not None and opts.fetch.sha256 is not None:
        raise InvalidInput("--sha256 applies to URL sources (http://, https://, file://); "
                           "for a local tarball give it as a file:// URL", "nothing was changed")
    if opts.git is not None:
        if opts.ref.startswith("-"):
            raise InvalidInput(f"invalid git ref {opts.ref!r}", "nothing was changed")
        # A local repository is recorded by its absolute path, as folders and tarballs are: a
        # relative one means nothing in the history once the shell's cwd is gone. Anything else
        # (a URL) stays as given.
        return "git", os.path.abspath(opts.git) if os.path.exists(opts.git) else opts.git
    if source is None:
        raise InvalidInput("no SOURCE given (a folder, a tarball, or --git REPO)",
                           "nothing was changed")
    if os.path.isfile(source):
        from ._sources import tarball_kind

        if tarball_kind(source) is None:
            raise InvalidInput(f"source {show(source)} is a file but not a tar archive "
                               "(.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)", "nothing was changed")
        return "tar", os.path.abspath(source)
    if opts.strip_components:
        raise InvalidInput("--strip-components applies to tarball sources only",
                           "nothing was changed")
    return "dir", check_source(source, root)


def _fill(layout: Layout, kind: str, src: str, spath: str, opts: DeployOptions,
          link_dest: str | None, record: CopyRecord | None = None,
          warnings: list[str] | None = None) -> tuple[CopyStats, str | None]:
    """Put the build into the staging folder; returns stats and the revision to record.
    What looks like a mistake in the build itself goes to ``warnings``."""
    revision = opts.revision
    if kind == "dir":
        stats = copy_tree(src, spath, checkpoint,
                          fsync_each=_per_file_fsync(opts),
                          **_copy_options(opts, link_dest, layout, record))
        if stats.external_links:
            _external_links(stats.external_links, opts, warnings)
    elif kind == "url":
        from ._fetch import fetch_into
        from ._sources import one_folder_hint

        ex = fetch_into(opts.fetch.url, spath, opts.fetch, checkpoint,
                        strip_components=opts.strip_components,
                        fsync_each=_per_file_fsync(opts))
        stats = CopyStats(files=ex.files, dirs=ex.dirs, symlinks=ex.symlinks, bytes=ex.bytes)
        if ex.single_folder is not None and warnings is not None:
            warnings.append(one_folder_hint(src, ex.single_folder))
    elif kind == "tar":
        from ._sources import extract_tarball

        ex = extract_tarball(src, spath, opts.strip_components, checkpoint,
                             fsync_each=_per_file_fsync(opts))
        stats = CopyStats(files=ex.files, dirs=ex.dirs, symlinks=ex.symlinks, bytes=ex.bytes)
        if ex.single_folder is not None and warnings is not None:
            from ._sources import one_folder_hint

            warnings.append(one_folder_hint(src, ex.single_folder))
    else:
        from ._sources import export_git

        commit = export_git(src, opts.ref, spath, checkpoint, fsync_each=_per_file_fsync(opts))
        stats = CopyStats()
        for dirpath, _dirs, files in os.walk(spath):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                stats.files += 1
                stats.bytes += st.st_size if not os.path.islink(os.path.join(dirpath, name)) else 0
        revision = revision or commit
    if revision:
        from ._sources import write_revision

        write_revision(spath, revision, fsync=_per_file_fsync(opts))
    return stats, revision


def _external_links(links: list[tuple[str, str]], opts: DeployOptions,
                    warnings: list[str] | None) -> None:
    """Symlinks of a folder build that lead out of it (``/etc/passwd``, ``../../x``): copied
    as they are, as ``cp -a`` would, with a warning; an error with --refuse-external-links.
    (A tarball's or git tree's are always refused, by the extraction.)"""
    shown = ", ".join(f"{show(path)} -> {show(target)}" for path, target in links[:5])
    more = f" and {len(links) - 5} more" if len(links) > 5 else ""
    n = f"{len(links)} symlink{'s' if len(links) != 1 else ''}"
    if opts.refuse_external_links:
        raise InvalidInput(f"the build has {n} pointing outside it: {shown}{more} "
                           "(refused by --refuse-external-links)")
    if warnings is not None:
        warnings.append(f"the build has {n} pointing outside it, deployed as they are: "
                        f"{shown}{more} (--refuse-external-links makes this an error)")


def _copy_options(opts: DeployOptions, link_dest: str | None, layout: Layout | None = None,
                  record: CopyRecord | None = None) -> dict[str, Any]:
    """Only the copy options actually in use, so the plain path needs nothing extra."""
    extra: dict[str, Any] = {}
    if opts.link_unchanged and link_dest:
        extra.update(link_dest=link_dest, checksum=opts.checksum,
                     link_writable=opts.link_writable, trust_mtime=opts.trust_mtime)
        if layout is not None and not (opts.trust_mtime or opts.checksum):
            # the previous release's recorded digests: its files need not be read
            from . import _manifest

            extra["prev_digests"] = _manifest.file_digests(
                layout, os.path.basename(link_dest))
    if record is not None:
        extra["record"] = record
    if opts.digest:
        extra["digest_all"] = True
    if opts.jobs is not None:
        extra["jobs"] = opts.jobs
    if opts.progress is not None:
        extra["progress"] = opts.progress
    return extra


def deploy(source: str | None, root: str, options: DeployOptions | None = None,
           **kwargs: Any) -> DeployResult:
    """Copy ``source`` (a folder, a tarball, or ``git=REPO``) into a new release and switch
    ``current`` to it atomically. Keyword arguments are DeployOptions fields."""
    opts = options or DeployOptions(**kwargs)
    return _stage(source, root, opts, activate=True)


def prepare(source: str | None, root: str, options: DeployOptions | None = None,
            **kwargs: Any) -> DeployResult:
    """Stage a complete release (checks included) without switching; ``activate`` it later."""
    opts = options or DeployOptions(**kwargs)
    return _stage(source, root, opts, activate=False)


def check_seconds(option: str, value: float | None, *, positive: bool = False) -> None:
    """A number of seconds must be finite and not negative (above 0 with ``positive``):
    NaN compares false with everything, so a NaN deadline is never reached."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0 or (positive and value == 0)):
        raise InvalidInput(f"{option} must be a finite number of seconds, "
                           f"{'more than 0' if positive else '0 or more'}, not {value!r}",
                           "nothing was changed")


def validate_options(opts: DeployOptions) -> None:
    """Every setting checked before anything is touched (the dry run checks the same)."""
    def bad(msg: str) -> InvalidInput:
        return InvalidInput(msg, "nothing was changed")

    if isinstance(opts.keep, str) and opts.keep != KEEP_ALL:
        raise bad(f"--keep must be a number of releases or {KEEP_ALL!r}, not {opts.keep!r}")
    if isinstance(opts.keep, int) and opts.keep < 1:
        raise bad(f"--keep must be at least 1 (or {KEEP_ALL!r} to keep every release)")
    if opts.strip_components < 0:
        raise bad("--strip-components must be 0 or more")
    check_seconds("--wait", opts.wait)
    if opts.jobs is not None and opts.jobs < 1:
        raise bad("--jobs must be at least 1")
    if opts.if_changed and opts.session is not None:
        raise bad("--if-changed works on a local ROOT only")
    if (opts.checksum or opts.link_writable or opts.trust_mtime) and not opts.link_unchanged:
        raise bad("--checksum, --trust-mtime and --link-writable only make sense with "
                  "--link-unchanged")
    if opts.checksum and opts.trust_mtime:
        raise bad("--checksum (read every file) and --trust-mtime (read none) contradict "
                  "each other")
    if opts.git is None and opts.ref != "HEAD":
        raise bad("--ref only makes sense with --git REPO")
    if opts.health_retries < 0:
        raise bad("--health-retries must be 0 or more")
    check_seconds("--health-timeout", opts.health_timeout, positive=True)
    check_seconds("--health-interval", opts.health_interval)
    check_seconds("--hook-timeout", opts.hook_timeout, positive=True)
    if opts.health_url is not None:
        from . import _hooks

        _hooks.check_url_syntax(opts.health_url)
    for flag, cmds in (("--check", opts.check), ("--after-switch", opts.after_switch),
                       ("--on-failure", opts.on_failure)):
        if not isinstance(cmds, list):  # the API: a bare string would run letter by letter
            raise bad(f"{flag}: a list of commands is needed, not {type(cmds).__name__}")
        for i, cmd in enumerate(cmds, 1):
            _check_hook(f"{flag} command {i}" if len(cmds) > 1 else flag, cmd)
    if opts.health_check is not None:
        _check_hook("--health-check", opts.health_check)
    from ._shared import normalize

    for p in opts.shared_dirs + opts.shared_files:
        normalize(p)


def keep_after(opts: DeployOptions, activate: bool) -> int | None:
    """How many good releases a deploy (``activate``) or prepare prunes to afterwards; None: no
    pruning. A deploy prunes to DEFAULT_KEEP unless told otherwise; a prepare, like Capistrano's
    flow (cleanup follows a deploy), prunes only when told to."""
    if isinstance(opts.keep, int):
        return opts.keep
    if opts.keep is None and activate:
        return DEFAULT_KEEP
    return None


def _check_hook(flag: str, cmd: Any) -> None:
    """One hook as _hooks.hook_argv will take it: found before anything is copied, not after
    the switch. Named by its flag (the config key, when it came from the file: cli says so)."""
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"{flag}: {why}", "nothing was changed")

    if isinstance(cmd, str):
        if not cmd.strip():
            raise InvalidInput(f"{flag} is empty", "nothing was changed")
        args = [cmd]
    elif isinstance(cmd, (list, tuple)):
        if not cmd:
            raise InvalidInput(f"{flag} is an empty argument list", "nothing was changed")
        if not all(isinstance(a, str) for a in cmd):
            raise bad(f"argument list {list(cmd)!r}: every argument must be a string")
        if not cmd[0]:
            raise bad(f"argument list {list(cmd)!r} has an empty program name")
        args = list(cmd)
    else:
        raise bad(f"a command is a string or a list of strings, not {type(cmd).__name__}")
    if any("\0" in a for a in args):
        raise bad("command contains a NUL character")


def _replaced(opts: DeployOptions, **changes: Any) -> DeployOptions:
    """A copy of ``opts`` with ``changes`` (what dataclasses.replace() did)."""
    values = {k: getattr(opts, k) for k in DeployOptions.__slots__}
    values.update(changes)
    return DeployOptions(**values)


def _stage(source: str | None, root: str, opts: DeployOptions, *, activate: bool) -> DeployResult:
    validate_options(opts)
    if opts.if_changed and not opts.digest:
        opts = _replaced(opts, digest=True)  # equal manifests then mean equal contents
    from ._shared import check_shared, link_shared

    kind, src = _source_kind(source, root, opts)
    layout = check_root_for_write(root, create=True)
    check_shared(layout, opts.shared_dirs, opts.shared_files, opts.create_missing)
    op = "deploy" if activate else "prepare"
    with _Session(layout, opts.wait, opts.command, opts) as s:
        started = time.monotonic()
        cur = read_current(layout)
        previous = cur.release if cur.resolves else None
        rid = new_release_id(set(release_dirs(layout)) | s.history.used_ids())
        staging = f"{STAGING_PREFIX}{rid}.{random_suffix()}"
        journal = {"release": rid, "staging": staging, "previous": cur.target,
                   "creates_release": True, "source": src, "message": opts.message,
                   "hooks": _hooks_spec(opts) if activate else None}
        s.hook_release, s.on_failure = (rid, previous), list(opts.on_failure)
        s.hook_timeout, s.on_output = opts.hook_timeout, opts.on_output
        shared: list[str] = []
        hooks: list[dict[str, Any]] = []
        link_dest = layout.release(previous) if previous else None
        with_digests = opts.digest or (opts.link_unchanged and not opts.trust_mtime)
        record = CopyRecord(with_digests) if kind == "dir" else None
        manifest: list[str | None] = [None]
        build_warnings: list[str] = []  # about the build itself, shown once it is deployed

        def body(op_id: str) -> tuple[tuple[CopyStats, str | None], dict[str, Any]]:
            nonlocal rid, record
            spath = os.path.join(layout.releases, staging)
            os.mkdir(spath, 0o700)
            checkpoint("staging-created")
            if kind == "session":
                stats, linked, chosen, walked = opts.session.receive(
                    spath, link_dest, rid, (layout, previous) if previous else None)
                record = walked  # the manifest from that walk (digests included), not another
                if chosen != rid:  # a fleet's one id for every host
                    rid = _fleet_id(s, chosen, rid)
                revision = opts.revision
                if revision:
                    from ._sources import write_revision

                    write_revision(spath, revision, fsync=_per_file_fsync(opts))
            else:
                if opts.session is not None:  # self-sourced: the host reads the build itself
                    chosen = opts.session.claim(spath, link_dest, rid)
                    if chosen != rid:
                        rid = _fleet_id(s, chosen, rid)
                stats, revision = _fill(layout, kind, src, spath, opts, link_dest, record,
                                        build_warnings)
                linked = record.linked if record else []
            shared.extend(link_shared(
                layout, spath, opts.shared_dirs, opts.shared_files, opts.create_missing,
                lambda a, b: copy_tree(a, b, checkpoint,
                                       fsync_each=_per_file_fsync(opts))))
            # The release folder's mtime is when it was made, not the build folder's (which a
            # reproducible build pins to 1980): Capistrano's rollback orders releases by mtime.
            os.utime(spath)
            if _per_file_fsync(opts):
                for rel in opts.shared_dirs + opts.shared_files:
                    _platform.fsync_dir(os.path.dirname(os.path.join(spath, rel)) or spath)
                _platform.fsync_dir(spath)
            checkpoint("copied")
            premade = _flush_tree_and(spath, opts, kind != "session", record)
            checkpoint("flushed")
            if os.path.lexists(layout.release(rid)):  # cannot happen under the lock; never merge
                raise OperationFailed(f"release {rid} appeared while staging")
            os.rename(spath, layout.release(rid))
            checkpoint("release-renamed")
            if opts.fsync:
                _platform.fsync_dir(layout.releases)
            checkpoint("release-synced")
            if opts.check:
                _run_checks(s, opts, rid, previous, linked, hooks)
                _flush_tree(layout.release(rid), opts, written_by_us=False)  # checks may write
            manifest[0] = _write_manifest(layout, rid, opts, record, revision, premade)
            if opts.if_changed and previous is not None and manifest[0] is not None:
                made = s.history.created().get(previous)
                if made is not None and s.history.records[made].get("manifest") == manifest[0]:
                    raise _Unchanged()
            fields: dict[str, Any] = {"release": rid, "previous": previous, "source": src,
                      "message": opts.message, "files": stats.files, "bytes": stats.bytes,
                      "revision": revision, "shared": shared or None,
                      "manifest": manifest[0],
                      "states": {rid: SERVED if activate else COMPLETE}}
            if opts.session is not None:
                opts.session.gate("sealed", "switch" if activate else "commit", release=rid,
                                  files=stats.files, bytes=stats.bytes, linked=stats.linked)
            if activate:
                switched_at = _switch_timed(layout, rid)
                try:
                    _healthy_or_raise(s, opts, layout.release(rid), hooks)
                except _Unhealthy as exc:
                    raise _switch_back_unhealthy(
                        s, op, op_id, opts, rid, previous, cur.target, exc.message, hooks,
                        {"source": src, "message": opts.message, "revision": revision},
                    ) from None
                if opts.session is not None:
                    opts.session.gate("switched", "commit", release=rid, at=switched_at,
                                      ran=_ran_after_switch(hooks))
            fields["hooks"] = hooks or None
            return (stats, revision), fields

        try:
            stats, revision = s.run(op, journal, body)
        except _Unchanged:
            assert previous is not None
            return DeployResult(release=previous, path=layout.release(previous), previous=previous,
                                activated=False, manifest=manifest[0], recovered=s.recovered,
                                unchanged=True,
                                seconds=round(time.monotonic() - started, 3))
        except CheckFailed as exc:
            if exc.hooks is None:
                exc.hooks = hooks
            raise
        result = DeployResult(
            release=rid, path=layout.release(rid), previous=previous, activated=activate,
            files=stats.files, bytes=stats.bytes, linked=getattr(stats, "linked", 0),
            manifest=manifest[0], revision=revision, shared=shared, hooks=hooks,
            recovered=s.recovered,
            external_links=[{"path": p, "target": t} for p, t in stats.external_links],
        )
        result.warnings.extend(build_warnings + s.warnings)
        keep = keep_after(opts, activate)
        if keep is not None:
            # After the commit point: the deploy is done whatever happens here, so a failure
            # is a warning, never a failed deploy (nothing to roll back, no on-failure hooks).
            s.on_failure = []
            try:
                # Nothing to delete (the usual case under the default): no prune operation, so
                # no journal and no history record for every deploy.
                if plan_prune(s.history, layout, keep)[0]:
                    pruned = _prune_locked(s, keep)
                    result.pruned = pruned.deleted
                    result.warnings.extend(pruned.warnings)
            except InterruptedBySignal as exc:
                raise InterruptedBySignal(
                    exc.signum, f"the {op} of {rid} had completed; pruning was stopped; "
                    f"{describe_current(layout)}") from None
            except (AtomicDeployError, OSError) as exc:
                why = exc.message if isinstance(exc, AtomicDeployError) else str(exc)
                result.warnings.append(f"the {op} of {rid} completed, but pruning old releases "
                                       f"failed ({why}); {describe_current(layout)}")
        result.seconds = round(time.monotonic() - started, 3)
        return result


class _Unchanged(Exception):
    """--if-changed: the staged release is the current one, byte for byte; drop it."""


def _switch_timed(layout: Layout, release: str) -> float:
    """Switch current to ``release``; returns the clock right after the rename (before the
    folder's fsync): a fleet's switch skew is measured from these."""
    at = [0.0]

    def step(name: str) -> None:
        if name == "switched":
            at[0] = time.time()
        checkpoint(name)

    switch_to_release(layout, release, step)
    return at[0] or time.time()


def _fleet_id(s: _Session, chosen: str, proposed: str) -> str:
    """The id the deploying machine chose for every host of a fleet, in place of the one this
    host proposed: a later timestamp (the greatest any host proposed), so still free here
    and still after every release here. Recorded in the journal before anything is named so."""
    from ._layout import release_kind

    if not (valid_release_name(chosen) and release_kind(chosen) == "timestamp"
            and chosen > proposed and chosen not in s.history.used_ids()
            and not os.path.lexists(s.layout.release(chosen))):
        raise OperationFailed(f"the release id {show(chosen)} the deploying machine chose "
                              f"cannot be used here (this host's next id is {proposed})")
    assert s.journal is not None
    s.journal["release"] = chosen
    write_journal(s.layout, s.journal)
    s.hook_release = (chosen, s.hook_release[1])
    return chosen


def _run_checks(s: _Session, opts: DeployOptions, rid: str, previous: str | None,
                linked_files: list[str], hooks: list[dict[str, Any]]) -> None:
    """The --check hooks, and then the proof that they wrote into no file hard-linked from
    another release (those writes land in the live release too: one inode, several names)."""
    from . import _manifest
    from ._shared import normalize

    top = s.layout.release(rid)
    # Shared paths replaced what was copied there (and lead out of the release): not ours.
    shared = tuple(p for rel in opts.shared_dirs + opts.shared_files
                   for p in (normalize(rel), normalize(rel) + "/"))
    linked = [p for p in linked_files if not p.startswith(shared)]
    before = _manifest.linked_snapshot(top, linked) if linked else {}
    try:
        hooks.extend(s.run_hooks("check", opts.check, top))
    except CheckFailed as exc:
        changed = _manifest.written_through(top, before) if before else []
        if changed:
            raise _manifest.write_through_error(s.layout, rid, previous, before, changed,
                                                exc) from None
        raise
    changed = _manifest.written_through(top, before) if before else []
    if changed:
        err = _manifest.write_through_error(s.layout, rid, previous, before, changed, None)
        err.hooks = hooks
        raise err


def _write_manifest(layout: Layout, rid: str, opts: DeployOptions, record: CopyRecord | None,
                    revision: str | None, premade: Lines | None = None) -> str:
    """Record what the release holds now; returns the manifest's digest. From the copy's own
    record where nothing else wrote into the release (its lines ``premade`` if made already,
    _flush_tree_and), else by walking it."""
    from . import _manifest
    from ._shared import normalize

    top = layout.release(rid)
    if record is None or opts.check:
        lines = _manifest.scan(top, opts.digest, record)
    else:
        touched = [normalize(p) for p in opts.shared_dirs + opts.shared_files]
        lines = _manifest.refresh(premade if premade is not None
                                  else _manifest.from_record(record), top,
                                  touched + (["REVISION"] if revision else []), opts.digest)
    return _manifest.write(layout, rid, lines, durable=opts.fsync)


def _check_release(layout: Layout, release: str) -> None:
    if not valid_release_name(release) or not is_release_dir(layout, release):
        known = release_dirs(layout)
        hint = f" (known: {', '.join(known[-5:])})" if known else " (there are no releases)"
        raise InvalidInput(f"unknown release id {show(release)!r}{hint}", "nothing was changed")


def _switch_op(s: _Session, op: str, release: str, previous: str | None,
               previous_target: str | None, opts: DeployOptions) -> list[dict[str, Any]]:
    layout = s.layout
    journal = {"release": release, "previous": previous_target, "creates_release": False,
               "hooks": _hooks_spec(opts)}
    s.hook_release, s.on_failure = (release, previous), list(opts.on_failure)
    s.hook_timeout, s.on_output = opts.hook_timeout, opts.on_output
    hooks: list[dict[str, Any]] = []

    def body(op_id: str) -> tuple[None, dict[str, Any]]:
        if opts.session is not None:  # one host of a fleet: switch when every host is locked
            opts.session.gate("ready", "switch", release=release, previous=previous,
                              staging=None, link_dest=None)
        switched_at = _switch_timed(layout, release)
        try:
            _healthy_or_raise(s, opts, layout.release(release), hooks)
        except _Unhealthy as exc:
            raise _switch_back_unhealthy(s, op, op_id, opts, release, previous,
                                         previous_target, exc.message, hooks, {}) from None
        if opts.session is not None:
            opts.session.gate("switched", "commit", release=release, at=switched_at,
                              ran=_ran_after_switch(hooks))
        states = {release: SERVED}
        if op == "rollback" and previous is not None and previous != release:
            states = {previous: BAD, release: SERVED}  # the release rolled away from
        return None, {"release": release, "previous": previous, "hooks": hooks or None,
                      "states": states}

    s.run(op, journal, body)
    return hooks


def check_not_swapped(root: str, release: str) -> None:
    """``activate ID ROOT``: ROOT is no deploy root but the release id is one. Say so, as
    deploy does for SOURCE and ROOT, rather than "ROOT 2026... does not exist"."""
    from ._layout import RELEASES, STATE_DIR

    def is_root(path: str) -> bool:
        return os.path.isdir(os.path.join(path, RELEASES)) or \
            os.path.isdir(os.path.join(path, STATE_DIR))

    if release and not is_root(root) and is_root(release):
        raise InvalidInput(f"ROOT {show(root)} is not a deploy root, but {show(release)} is: "
                           "did you swap ROOT and RELEASE_ID? The order is ROOT RELEASE_ID",
                           "nothing was changed")


def activate(root: str, release: str, options: DeployOptions | None = None,
             **kwargs: Any) -> ActivateResult:
    """Switch ``current`` to an existing complete release (clears a bad mark)."""
    opts = options or DeployOptions(**kwargs)
    validate_options(opts)
    check_not_swapped(root, release)
    layout = check_root_for_write(root, create=False)
    with _Session(layout, opts.wait, opts.command, opts) as s:
        _check_release(layout, release)
        cur = read_current(layout)
        previous = cur.release if cur.resolves else None
        hooks = _switch_op(s, "activate", release, previous, cur.target, opts)
        return ActivateResult(release, previous, hooks=hooks, recovered=s.recovered)


def plan_rollback(s_history: History, layout: Layout, to: str | None) -> tuple[str, str]:
    """(target, current) for a rollback, or InvalidInput saying why there is none."""
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
        ordered = s_history.order(release_dirs(layout))
        target = rollback_target(ordered, release_states(s_history, layout, ordered), cur.release)
    if target is None:
        raise InvalidInput(f"nothing to roll back to: no good release older than {cur.release}",
                           "nothing was changed")
    if target == cur.release:
        raise InvalidInput(f"{target} is already current", "nothing was changed")
    return target, cur.release


def rollback(root: str, to: str | None = None, options: DeployOptions | None = None,
             **kwargs: Any) -> ActivateResult:
    """Go back to the newest good release deployed before the current one (or ``to``); the
    release rolled away from is marked bad. After-switch hooks and health checks run as for
    a deploy."""
    opts = options or DeployOptions(**kwargs)
    validate_options(opts)
    layout = check_root_for_write(root, create=False)
    with _Session(layout, opts.wait, opts.command, opts) as s:
        target, current = plan_rollback(s.history, layout, to)
        hooks = _switch_op(s, "rollback", target, current, read_current(layout).target, opts)
        return ActivateResult(target, current, marked_bad=current, hooks=hooks,
                              recovered=s.recovered)


def plan_prune(history: History, layout: Layout, keep: int, *, new: str | None = None,
               current: str | None = None) -> tuple[list[str], list[str]]:
    """(victims, ordered releases) for ``prune --keep``; with ``new`` (a release the history
    already records), as if it were in releases/ too, and ``current``, as if current pointed
    to it: what a deploy's dry run needs."""
    ordered = history.order(release_dirs(layout) + ([new] if new else []))
    states = release_states(history, layout, ordered)
    if current is None:
        cur = read_current(layout)
        current = cur.release if cur.release is not None and cur.resolves else None
    protected = set()
    if current is not None:
        protected.add(current)
        target = rollback_target(ordered, states, current)
        if target:
            protected.add(target)
    return prune_victims(ordered, bad_of(states), keep, protected, history.known()), ordered


def _prune_locked(s: _Session, keep: int) -> PruneResult:
    layout = s.layout
    victims, ordered = plan_prune(s.history, layout, keep)
    deleted: list[str] = []
    warnings: list[str] = []
    journal = {"victims": victims, "previous": read_current(layout).target,
               "creates_release": False}

    def body(op_id: str) -> tuple[None, dict[str, Any]]:
        for name in victims:
            trash = hide_release_dir(layout, name)
            checkpoint("victim-hidden")
            if trash:
                try:
                    remove_entry(layout.releases, trash)
                except OSError as exc:
                    # Already no release (hidden): a file we may not delete must not block
                    # the root. It is a leftover: listed by status, retried by later commands.
                    warnings.append(f"{name} is no longer a release but could not be fully "
                                    f"removed ({_os_error(exc)}); it is retried later")
            deleted.append(name)
            checkpoint("victim-removed")
        if victims:
            _platform.fsync_dir(layout.releases)
        return None, {"deleted": deleted, "keep": keep}

    s.run("prune", journal, body)
    return PruneResult(deleted, [n for n in ordered if n not in deleted], recovered=s.recovered,
                       warnings=s.warnings + warnings)


def prune(root: str, keep: int = DEFAULT_KEEP, *, wait: float = 0.0,
          command: str | None = None) -> PruneResult:
    """Delete old releases, keeping ``keep`` good ones plus current and the rollback target."""
    if keep < 1:
        raise InvalidInput("--keep must be at least 1", "nothing was changed")
    check_seconds("--wait", wait)
    layout = check_root_for_write(root, create=False)
    with _Session(layout, wait, command) as s:
        return _prune_locked(s, keep)


def recover_root(root: str, options: DeployOptions | None = None, *,
                 dry_run: bool = False) -> RecoverResult:
    """Resolve an interrupted operation on purpose (any mutating command does it first):
    finish or undo it from its journal, run the after-switch hooks it owes, remove leftovers.
    ``dry_run`` says what would be done and takes no lock."""
    opts = options or DeployOptions()
    validate_options(opts)
    if dry_run:
        from . import query

        st = query.status(root)
        plan = st.recovery or ("remove the leftovers" if st.leftovers else None)
        return RecoverResult(plan, st.leftovers, dry_run=True)
    layout = check_root_for_write(root, create=False)
    session = _Session(layout, opts.wait, opts.command, opts)
    session.log_recovery = False
    with session as s:
        from ._layout import leftovers

        return RecoverResult(s.recovered, leftovers(layout), s.warnings)


def _new_id_ok(name: str) -> bool:
    """A name we create: one that every shell, log line and `list` row shows as it is."""
    return (valid_release_name(name) and len(name) <= 200 and not name.startswith("-")
            and all(c.isascii() and (c.isalnum() or c in "._-") for c in name))


def check_new_adopt_id(layout: Layout, history: History, release: str | None) -> str:
    """The id ``adopt`` gives the folder: ``release`` if it is usable, else a new one."""
    if release is not None and (not _new_id_ok(release)
                                or os.path.lexists(layout.release(release))):
        raise InvalidInput(f"release id {show(release)!r} is invalid or taken (use letters, "
                           "digits, '.', '_' and '-', not first '.' or '-')",
                           "nothing was changed")
    if release is not None and release in history.used_ids():
        # A record already means another release by that name (its state, its bad mark).
        raise InvalidInput(f"release id {release!r} was used before in this root's history; "
                           "choose another", "nothing was changed")
    return release or new_release_id(set(release_dirs(layout)) | history.used_ids())


def adopt(root: str, release: str | None = None, *, wait: float = 0.0,
          command: str | None = None, use_exchange: bool = True) -> AdoptResult:
    """Move a ``current`` that is a real folder into ``releases/`` and make ``current`` a link.

    With an atomic exchange (Linux ``renameat2``, macOS ``renamex_np``) readers never see a
    gap; elsewhere it is a journaled two-step rename with a short gap.
    """
    from ._adopt import adopt_locked, check_adoptable, check_current_is_folder

    check_seconds("--wait", wait)
    layout = check_adoptable(root, release)
    with _Session(layout, wait, command) as s:
        check_current_is_folder(layout)  # again, holding the lock: another adopt may have won
        rid = check_new_adopt_id(layout, s.history, release)
        method = adopt_locked(s.layout, rid, use_exchange)
        return AdoptResult(rid, method, recovered=s.recovered)


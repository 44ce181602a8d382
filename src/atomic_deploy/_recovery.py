"""The journal of the one operation in flight, and how to undo or finish it.

Before a mutating operation changes anything it writes ``journal.json`` (by rename) saying what
it is about to do and what ``current`` was. Its commit point is the history record with the same
``op_id``. After a crash (``kill -9``, power loss) the next command holding the lock reads the
journal: committed work is kept, anything else is undone, and leftovers are removed.
"""

from __future__ import annotations

import os
import time

from . import _log as log
from . import _platform
from ._history import BAD, SERVED, History, record
from ._jsonfile import write_json_atomic
from ._layout import (
    STAGING_PREFIX,
    STATE_DIR,
    SWITCH_OPS,
    SWITCHING_BACK,
    TRASH_PREFIX,
    Layout,
    discard_release_dir,
    is_release_dir,
    read_current,
    read_journal,
    release_of_target,
    remove_entry,
    show,
    state_temp_files,
)
from ._signals import checkpoint, fault_point
from ._switch import link_text, point_current
from .errors import AtomicDeployError, InterruptedBySignal, OperationFailed

TYPE_CHECKING = False  # typing costs start-up time at every deploy
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    Journal = dict[str, Any]
# Runs the after-switch hooks the journal records for a release (and its health check when the
# flag is set): (journal, release, the release the service was on before, check health) ->
# None when all passed, else why not. Supplied by the operations layer, which owns hooks.
    Tell = Callable[[Journal, str, Optional[str], bool], Optional[str]]


def write_journal(layout: Layout, journal: Journal) -> None:
    write_json_atomic(layout.journal, journal)


def note_hook_group(layout: Layout, journal: Journal, pgid: int) -> None:
    """Record in the journal the process group of the hook that just started, with its leader's
    start time: should this process die in a way its hooks survive, recovery kills the group.

    Only the running hook is recorded (one runs at a time). Entries of finished hooks need no
    removal: their leader has exited, and recovery kills only a group whose leader is alive.
    """
    started = _platform.process_started(pgid)
    if started is None:
        return  # gone already, or no way to recognise it later: nothing recovery may kill
    journal["hook_groups"] = [{"pgid": pgid, "started": started}]
    # The data flushed, the rename not: a power cut may bring back the journal as it was
    # before, which is as good (no process outlives a power cut), but never an empty one.
    write_json_atomic(layout.journal, journal, sync_dir=False)


def kill_hook_groups(journal: Journal, wait: float = 2.0) -> list[int]:
    """SIGKILL the process groups of hooks that the interrupted operation left running.

    A group is killed only while its leader is the very process recorded (same pid, same start
    time): a pid used again by another process since is left alone. Waits up to ``wait`` seconds
    for the groups to be gone, so that nothing of them still writes once recovery goes on.
    """
    import signal

    killed = []
    groups = journal.get("hook_groups")
    for entry in groups if isinstance(groups, list) else []:
        pgid = entry.get("pgid") if isinstance(entry, dict) else None
        if isinstance(pgid, bool) or not isinstance(pgid, int) or pgid <= 1:
            continue
        if _platform.process_started(pgid) != entry.get("started"):
            continue  # gone, or another process now has that pid
        if not _platform.group_running(pgid):
            continue  # only zombies left: nothing to kill
        try:
            if os.getpgid(pgid) != pgid:
                continue  # the same process, no longer leading the group
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        log.warning("killed process group %d of a hook left running by the interrupted "
                    "operation", pgid)
        killed.append(pgid)
    deadline = time.monotonic() + wait
    while killed and time.monotonic() < deadline and any(map(_platform.group_running, killed)):
        time.sleep(0.01)
    return killed


def clear_journal(layout: Layout, durable: bool = True) -> None:
    try:
        os.unlink(layout.journal)
    except FileNotFoundError:
        return
    if durable:
        _platform.fsync_dir(layout.state)


def _error_for(exc: BaseException, op: str, state: str) -> BaseException:
    """The typed error to raise once ``exc`` has been dealt with and the root is in ``state``."""
    if isinstance(exc, InterruptedBySignal):
        return InterruptedBySignal(exc.signum, state)
    if isinstance(exc, KeyboardInterrupt):  # only outside the main thread's deferred handler
        import signal

        return InterruptedBySignal(signal.SIGINT, state)
    if isinstance(exc, AtomicDeployError):
        exc.state = state
        return exc
    if isinstance(exc, OSError):
        where = f" ({show(exc.filename)})" if exc.filename else ""
        return OperationFailed(f"{op} failed: {exc.strerror or exc}{where}", state)
    return exc


def _os_error(exc: OSError) -> str:
    """An OSError in words, with the path it names (not a descriptor number)."""
    where = exc.filename if isinstance(exc.filename, str) else None
    return f"{exc.strerror or exc}: {show(where)}" if where else str(exc.strerror or exc)


def remove_leftovers(layout: Layout, problems: list[str] | None = None) -> list[str]:
    """Delete our own hidden staging/trash folders, temp links and state temp files. Only call
    under the lock: then nothing else can be using them. One that cannot be deleted (a file
    another user owns) never stops the operation: it is noted in ``problems``, `status` lists
    it, and the next command tries again."""
    removed = [os.path.join(STATE_DIR, name) for name in state_temp_files(layout)]
    for name in removed:  # a kill between writing a state file's temp and renaming it
        remove_entry(layout.state, os.path.basename(name))
    for parent, prefixes in ((layout.releases, (STAGING_PREFIX, TRASH_PREFIX)), (layout.tmp, ("",))):
        try:
            names = [e.name for e in os.scandir(parent) if e.name.startswith(prefixes)
                     # tmp/ holds temp links only; a folder there is a live tree mid-adopt.
                     and (parent != layout.tmp or not e.is_dir(follow_symlinks=False))]
        except FileNotFoundError:
            continue
        for name in names:
            where = os.path.join(os.path.basename(parent), name)
            try:
                remove_entry(parent, name)
            except OSError as exc:
                why = f"could not remove {show(where)} ({_os_error(exc)}); it is retried later"
                log.warning("%s", why)
                if problems is not None:
                    problems.append(why)
                continue
            removed.append(where)
    return removed


def undo(layout: Layout, journal: Journal) -> str:
    """Put ``current`` back to what the journal recorded and drop what the operation created.

    Idempotent and driven by what is on disk, so it is correct wherever the operation stopped.
    Returns a description of the root afterwards.
    """
    previous: str | None = journal.get("previous")
    if read_current(layout).target != previous:
        point_current(layout, previous)
    fault_point("undo-switched-back")
    created = journal.get("release") if journal.get("creates_release") else None
    if created:
        discard_release_dir(layout, created)
        fault_point("undo-release-discarded")
    staging = journal.get("staging")
    if staging:
        remove_entry(layout.releases, staging)
    remove_leftovers(layout)
    _platform.fsync_dir(layout.releases)
    return describe_current(layout)


def describe_current(layout: Layout) -> str:
    cur = read_current(layout)
    if cur.kind == "absent":
        return "there is no current release"
    if cur.kind == "symlink":
        return f"current -> {show(cur.target or '')}"
    return f"current is a {cur.kind}"


# Seconds between moving current back and deleting the release it left (see switch_back).
# A path walk takes microseconds; this covers a reader descheduled in the middle of one.
SWITCH_BACK_GRACE = 0.25


def switch_back(layout: Layout, journal: Journal, *, mark_bad: bool, reason: str,
                tell: Tell | None) -> tuple[str, str | None]:
    """Put ``current`` back to the journal's previous link after the operation had switched it,
    keep the new release marked bad (``mark_bad``) or drop it, and tell the service about the
    restored release (its after-switch hooks). The journal says so first, so a crash in here is
    finished, hooks included, by the next command's recovery.

    Returns (the root's state in words, why telling the service failed or None).
    """
    if journal.get("phase") != SWITCHING_BACK:
        journal.update(phase=SWITCHING_BACK, mark_bad=mark_bad, reason=reason)
        write_journal(layout, journal)
    fault_point("switching-back")
    previous: str | None = journal.get("previous")
    moved = read_current(layout).target != previous
    if moved:
        point_current(layout, previous)  # before anything is deleted: no reader meets a gap
    fault_point("switched-back")
    release = journal.get("release")
    if not journal.get("mark_bad") and journal.get("creates_release") and release:
        if moved:
            # A reader that resolved current just before it moved back may still be walking
            # the path into this release: it is deleted only once that walk is long done.
            time.sleep(SWITCH_BACK_GRACE)
        discard_release_dir(layout, release)
    remove_leftovers(layout)
    restored = release_of_target(layout, previous) if previous else None
    told = None
    if tell is not None and restored is not None and is_release_dir(layout, restored):
        told = tell(journal, restored, release, False)
    return describe_current(layout), told


def _recover_switch(layout: Layout, journal: Journal, tell: Tell | None) -> str:
    """An activate, rollback or deploy that stopped after its journal: finish it when it had
    switched and its after-switch hooks and health check pass again, else switch back."""
    op, release = str(journal.get("op")), journal.get("release")
    previous_text = journal.get("previous")
    previous = release_of_target(layout, previous_text) if previous_text else None
    cur = read_current(layout).target
    phase = journal.get("phase")
    if phase != SWITCHING_BACK:
        if cur == previous_text:  # never switched: nothing reached the service
            return f"rolled back; {undo(layout, journal)}"
        mark_bad, reason = False, "interrupted"
        if isinstance(release, str) and cur == link_text(release) and is_release_dir(layout, release):
            try:
                why = tell(journal, release, previous, True) if tell is not None else None
            except InterruptedBySignal as exc:  # stopped while its hooks re-ran: nothing decided
                raise InterruptedBySignal(
                    exc.signum, f"recovery of the interrupted {op} of {release} was stopped; "
                    f"{describe_current(layout)}; the next command recovers it") from None
            if why is None:
                states = {release: SERVED}
                if op == "rollback" and previous and previous != release:
                    states = {previous: BAD, release: SERVED}
                record(layout, op, "ok", op_id=journal.get("op_id"), release=release,
                       previous=previous, source=journal.get("source"),
                       message=journal.get("message"), states=states, recovered=True)
                remove_leftovers(layout)
                return (f"finished: its after-switch hooks and health check passed; "
                        f"{describe_current(layout)}")
            mark_bad, reason = True, why
    else:
        mark_bad, reason = bool(journal.get("mark_bad")), str(journal.get("reason") or "")
    after, told = switch_back(layout, journal, mark_bad=mark_bad, reason=reason, tell=tell)
    record(layout, op, "unhealthy" if mark_bad else "interrupted", op_id=journal.get("op_id"),
           release=release, previous=previous, error=reason, recovered=True,
           states={release: BAD} if mark_bad and isinstance(release, str) else None)
    text = f"switched back ({reason}); {after}"
    if mark_bad:
        text += f"; {release} kept and marked bad"
    if told:
        text += f"; after-switch hook on the restored release failed: {told}"
    return text


def recover(layout: Layout, history: History, tell: Tell | None = None,
            problems: list[str] | None = None) -> str | None:
    """Finish or undo an interrupted operation; returns what was done, or None if nothing was."""
    journal = read_journal(layout)
    if journal is None:
        removed = remove_leftovers(layout, problems)
        if removed:
            return f"removed {len(removed)} leftover(s) of an interrupted run: {', '.join(removed)}"
        return None
    fault_point("recover-started")
    # Before anything else: a hook still running could change what is about to be undone.
    killed = kill_hook_groups(journal)
    op = journal.get("op", "unknown")
    who = f"pid {journal.get('pid', '?')} at {journal.get('started', '?')}"
    release = journal.get("release")
    checkpoint("recovering")
    if journal.get("corrupt"):
        os.replace(layout.journal, f"{layout.journal}.corrupt-{int(time.time())}")
        remove_leftovers(layout, problems)
        action = "found an unreadable journal (kept aside); current left as it was"
    elif op == "adopt":
        action = finish_adopt(layout, journal)
    elif op == "prune" or history.finished(str(journal.get("op_id"))):
        # Committed work is kept; an interrupted prune only loses its half-deleted folder
        # (already hidden under a trash name), the remaining releases stay.
        remove_leftovers(layout, problems)
        action = f"completed; {describe_current(layout)}"
    elif op in SWITCH_OPS:
        action = _recover_switch(layout, journal, tell)
    else:
        action = f"rolled back; {undo(layout, journal)}"
    if killed:
        action += f"; killed {len(killed)} hook process group(s) still running"
    fields: dict[str, Any] = {}
    if op == "adopt" and isinstance(release, str) and is_release_dir(layout, release):
        fields["states"] = {release: SERVED}  # the adopted folder is what current serves
    record(layout, "recover", "ok", interrupted=op, release=release,
           interrupted_pid=journal.get("pid"), action=action, **fields)
    fault_point("recover-recorded")
    clear_journal(layout)
    return f"recovered interrupted {op}" + (f" of {release}" if release else "") + f" ({who}): {action}"


# adopt's own steps are in _adopt; finishing one is recovery's, and _adopt calls it too.

def remove_adopt_links(layout: Layout, rid: str, tmp_name: str | None) -> None:
    """Remove the links an adopt made before it moved the folder (never the folder itself)."""
    paths = [layout.release(rid)]
    if tmp_name:  # a journal of the earlier two-exchange design
        paths.append(os.path.join(layout.tmp, tmp_name))
    for path in paths:
        if os.path.islink(path):
            os.unlink(path)


def finish_adopt(layout: Layout, journal: dict[str, Any]) -> str:
    """Crash recovery: wherever the migration stopped, complete it (the folder is never lost)."""
    rid = str(journal.get("release"))
    tmp_name = journal.get("tmp")  # set only by the earlier two-exchange design
    rel = layout.release(rid)
    cur = read_current(layout)
    if cur.kind == "directory":
        remove_adopt_links(layout, rid, tmp_name if isinstance(tmp_name, str) else None)
        return "nothing had moved; current is still the original folder"
    if isinstance(tmp_name, str):
        tmp = os.path.join(layout.tmp, tmp_name)
        if os.path.isdir(tmp) and not os.path.islink(tmp) and os.path.islink(rel):
            _platform.exchange(tmp, rel)  # its second exchange
        if os.path.islink(tmp):
            os.unlink(tmp)
    if os.path.isdir(rel) and not os.path.islink(rel) and cur.kind == "absent":
        point_current(layout, link_text(rid))  # two-step way stopped between its renames
    _platform.fsync_dir(layout.releases)
    _platform.fsync_dir(layout.root)
    return f"migration completed; current -> {read_current(layout).target}"

"""The journal of the one operation in flight, and how to undo or finish it.

Before a mutating operation changes anything it writes ``journal.json`` (by rename) saying what
it is about to do and what ``current`` was. Its commit point is the history record with the same
``op_id``. After a crash (``kill -9``, power loss) the next command holding the lock reads the
journal: committed work is kept, anything else is undone, and leftovers are removed.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from . import _platform
from ._history import History, record
from ._jsonfile import write_json_atomic
from ._layout import (
    STAGING_PREFIX,
    TRASH_PREFIX,
    Layout,
    discard_release_dir,
    read_current,
    read_journal,
    remove_entry,
    show,
)
from ._switch import point_current

log = logging.getLogger("atomic_deploy")

Journal = dict[str, Any]


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


def remove_leftovers(layout: Layout) -> list[str]:
    """Delete our own hidden staging/trash folders and temp links. Only call under the lock:
    then nothing else can be using them."""
    removed = []
    for parent, prefixes in ((layout.releases, (STAGING_PREFIX, TRASH_PREFIX)), (layout.tmp, ("",))):
        try:
            names = [e.name for e in os.scandir(parent) if e.name.startswith(prefixes)
                     # tmp/ holds temp links only; a folder there is a live tree mid-adopt.
                     and (parent != layout.tmp or not e.is_dir(follow_symlinks=False))]
        except FileNotFoundError:
            continue
        for name in names:
            remove_entry(parent, name)
            removed.append(os.path.join(os.path.basename(parent), name))
    return removed


def undo(layout: Layout, journal: Journal) -> str:
    """Put ``current`` back to what the journal recorded and drop what the operation created.

    Idempotent and driven by what is on disk, so it is correct wherever the operation stopped.
    Returns a description of the root afterwards.
    """
    previous: str | None = journal.get("previous")
    if read_current(layout).target != previous:
        point_current(layout, previous)
    created = journal.get("release") if journal.get("creates_release") else None
    if created:
        discard_release_dir(layout, created)
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


def recover(layout: Layout, history: History) -> str | None:
    """Finish or undo an interrupted operation; returns what was done, or None if nothing was."""
    journal = read_journal(layout)
    if journal is None:
        removed = remove_leftovers(layout)
        if removed:
            msg = f"removed {len(removed)} leftover(s) of an interrupted run: {', '.join(removed)}"
            log.warning("%s", msg)
            return msg
        return None
    # Before anything else: a hook still running could change what is about to be undone.
    killed = kill_hook_groups(journal)
    op = journal.get("op", "unknown")
    who = f"pid {journal.get('pid', '?')} at {journal.get('started', '?')}"
    release = journal.get("release")
    if journal.get("corrupt"):
        os.replace(layout.journal, f"{layout.journal}.corrupt-{int(time.time())}")
        remove_leftovers(layout)
        action = "found an unreadable journal (kept aside); current left as it was"
    elif op == "adopt":
        from ._adopt import finish_adopt

        action = finish_adopt(layout, journal)
    elif op == "prune" or history.finished(str(journal.get("op_id"))):
        # Committed work is kept; an interrupted prune only loses its half-deleted folder
        # (already hidden under a trash name), the remaining releases stay.
        remove_leftovers(layout)
        action = f"completed; {describe_current(layout)}"
    else:
        action = f"rolled back; {undo(layout, journal)}"
    if killed:
        action += f"; killed {len(killed)} hook process group(s) still running"
    record(layout, "recover", "ok", interrupted=op, release=release,
           interrupted_pid=journal.get("pid"), action=action)
    clear_journal(layout)
    msg = f"recovered interrupted {op}" + (f" of {release}" if release else "") + f" ({who}): {action}"
    log.warning("%s", msg)
    return msg

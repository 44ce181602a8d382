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
from ._signals import fault_point
from ._switch import point_current

log = logging.getLogger("atomic_deploy")

Journal = dict[str, Any]


def write_journal(layout: Layout, journal: Journal) -> None:
    write_json_atomic(layout.journal, journal)


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
    fault_point("recover-started")
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
    record(layout, "recover", "ok", interrupted=op, release=release,
           interrupted_pid=journal.get("pid"), action=action)
    fault_point("recover-recorded")
    clear_journal(layout)
    msg = f"recovered interrupted {op}" + (f" of {release}" if release else "") + f" ({who}): {action}"
    log.warning("%s", msg)
    return msg

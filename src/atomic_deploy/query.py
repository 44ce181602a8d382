"""Read-only views of a root: status and the release list. They take no lock and change nothing.

This module and what it imports are what ``atomic-deploy status`` and ``list`` load: plain
classes instead of dataclasses, and no typing, re, json or logging at import time, keep those
commands within twice an empty interpreter's start-up (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import sys

from ._history import BAD, COMPLETE, History, release_states, rollback_target
from ._jsonfile import Record
from ._layout import (
    CURRENT,
    RELEASES,
    STATE_DIR,
    SWITCH_OPS,
    SWITCHING_BACK,
    Layout,
    existing_root,
    leftovers,
    list_releases_dir,
    read_current,
    read_journal,
    release_dirs,
    show,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._lock import Holder


class ReleaseInfo(Record):
    __slots__ = (
        "current",
        "deployed_at",
        "id",
        "managed",
        "manifest",
        "message",
        "rollback_target",
        "source",
        "state",
        "user",
    )

    def __init__(self, id: str, state: str, current: bool, rollback_target: bool,
                 deployed_at: str | None = None, user: str | None = None,
                 message: str | None = None, source: str | None = None,
                 managed: bool = True, manifest: str | None = None) -> None:
        self.id = id
        # current; bad; prepared (complete, never current: no rollback target); good (has
        # served, or another tool's)
        self.state = state
        self.current = current
        self.rollback_target = rollback_target
        self.deployed_at = deployed_at
        self.user = user
        self.message = message
        self.source = source
        self.managed = managed  # False: not in the history (made by hand or by another tool)
        self.manifest = manifest  # digest of its manifest file, as recorded when deployed

    def to_dict(self) -> dict[str, Any]:
        # Record.to_dict's fields, spelled out: `list --json` calls this once per release.
        return {"current": self.current, "deployed_at": self.deployed_at, "id": self.id,
                "managed": self.managed, "manifest": self.manifest, "message": self.message,
                "rollback_target": self.rollback_target, "source": self.source,
                "state": self.state, "user": self.user}


class Status(Record):
    __slots__ = (
        "bad",
        "current",
        "current_state",
        "current_target",
        "interrupted",
        "last",
        "last_change",
        "leftovers",
        "lock_holder",
        "manifests",
        "previous",
        "recovery",
        "releases",
        "rollback_target",
        "root",
        "serving",
        "stray",
    )

    def __init__(self, root: str, current: str | None, current_target: str | None,
                 current_state: str, previous: str | None, releases: int, bad: list[str],
                 lock_holder: dict[str, Any] | None, interrupted: dict[str, Any] | None,
                 leftovers: list[str] | None = None, stray: list[str] | None = None,
                 last: dict[str, Any] | None = None, recovery: str | None = None,
                 manifests: dict[str, str] | None = None,
                 last_change: dict[str, Any] | None = None) -> None:
        self.root = root
        self.current = current
        self.current_target = current_target
        # ok, absent, dangling, outside-releases, directory, file, other
        self.current_state = current_state
        # current is a link to a complete release: the site can be served (exit 0, else 1)
        self.serving = current_state == "ok"
        # The rollback target. "previous" is its schema-1 name, kept for readers that use it;
        # everywhere else "previous" means the release that was live before an operation.
        self.previous = previous
        self.rollback_target = previous
        self.releases = releases
        self.bad = bad
        self.lock_holder = lock_holder
        self.interrupted = interrupted
        self.leftovers = [] if leftovers is None else leftovers
        self.stray = [] if stray is None else stray
        self.last = last  # the last history record, whatever its operation
        # The last one that was not a prune: what put current where it is (or staged a
        # release); `last` is a prune after it, when the two differ.
        self.last_change = last_change
        self.recovery = recovery  # what the next mutating command's recovery will do
        self.manifests = {} if manifests is None else manifests  # release -> manifest digest


def _current_state(layout: Layout) -> tuple[str | None, str | None, str]:
    cur = read_current(layout)
    if cur.kind != "symlink":
        return None, None, cur.kind
    if cur.release is None:
        return None, cur.target, "outside-releases"
    if not cur.resolves:
        return cur.release, cur.target, "dangling"
    return cur.release, cur.target, "ok"


def plan_recovery(journal: dict[str, Any] | None, layout: Layout, finished: bool) -> str | None:
    """What the next mutating command's recovery will do with ``journal``, in words."""
    if journal is None:
        return None
    op, release = journal.get("op", "unknown"), journal.get("release")
    if journal.get("corrupt"):
        return "set the unreadable journal aside; current is left as it is"
    if op == "adopt":
        return f"finish the migration of current into {RELEASES}/{release}"
    if op == "prune" or finished:
        return "keep the completed work and remove leftovers"
    if op in SWITCH_OPS and journal.get("phase") == SWITCHING_BACK:
        return (f"finish switching back from {release} to {journal.get('previous')} and run "
                "the after-switch hooks for the restored release")
    if op in SWITCH_OPS and read_current(layout).target == f"{RELEASES}/{release}":
        return (f"re-run the after-switch hooks and health check of {release}: keep it if they "
                f"pass, else switch back to {journal.get('previous')} and mark {release} bad")
    if journal.get("creates_release"):
        return f"remove the unfinished release {release}; current stays as it is"
    return "undo it; current stays as it is"


def deploy_root(root: str) -> Layout:
    """ROOT for status and list: an existing folder that holds ``current``, ``releases/`` or the
    state folder (a root made by any deploy, even a failed first one, has the last two; one made
    by another tool has the first two). Anything else is not a root: saying "no releases" for a
    mistyped path would read as a healthy, empty root."""
    layout = existing_root(root)
    if not any(os.path.lexists(os.path.join(layout.root, n)) for n in (CURRENT, RELEASES,
                                                                      STATE_DIR)):
        from .errors import InvalidInput  # here: what succeeds never loads the error classes

        raise InvalidInput(f"ROOT {show(root)} is not a deploy root (it has no {CURRENT}, "
                           f"{RELEASES}/ or {STATE_DIR}/)", "nothing was changed")
    return layout


def list_releases(root: str) -> list[ReleaseInfo]:
    return [ReleaseInfo(*row) for row in release_rows(root)]


def release_rows(root: str) -> list[tuple[Any, ...]]:
    """What list_releases(root) returns, each release as the tuple of ReleaseInfo's arguments
    (the command line renders these: at 1,000 releases the objects cost more than the rows)."""
    layout = deploy_root(root)
    return _rows(layout, History.load(layout))


def _view(layout: Layout, history: History, current: str | None, names: list[str],
          journal: dict[str, Any] | None) -> tuple[list[str], dict[str, str], str | None]:
    """Releases in deploy order, their states and the rollback target, for ``current`` (the
    release current points to, None unless the link is healthy).

    A release whose deploy has not committed (running now, or interrupted before its history
    record: recovery will remove it) is not a release yet and is left out, unless current
    already points to it (a deploy between its switch and its commit). ``names``: release_dirs().
    """
    if journal is not None and journal.get("creates_release"):
        pending = journal.get("release")
        if pending != current and pending not in history.created():
            names = [n for n in names if n != pending]
    ordered = history.order(names)
    states = release_states(history, layout, ordered)
    target = rollback_target(ordered, states, current) if current else None
    return ordered, states, target


def _rows(layout: Layout, history: History) -> list[tuple[Any, ...]]:
    current, _, state = _current_state(layout)
    if state != "ok":
        current = None
    ordered, states, target = _view(layout, history, current, release_dirs(layout),
                                    read_journal(layout))
    created = history.created()
    records = history.records
    out: list[tuple[Any, ...]] = []
    empty: dict[str, Any] = {}
    for name in ordered:  # runs once per release
        i = created.get(name)
        rec = records[i] if i is not None else empty
        # What list calls a release: current, bad, prepared (complete, never current, so never
        # a rollback target) or good (has served, or another tool's folder).
        if name == current:
            state = "current"
        else:
            known = states.get(name)
            state = "bad" if known == BAD else "prepared" if known == COMPLETE else "good"
        out.append((name, state, name == current, name == target, rec.get("time"),
                    rec.get("user"), rec.get("message"), rec.get("source"), i is not None,
                    rec.get("manifest")))
    return out


def _manifests(history: History, ordered: list[str]) -> dict[str, str]:
    """Each release's manifest digest, from the history record that created it (cheap: the
    history is read anyway; hashing the manifests themselves would cost a read of each)."""
    created = history.created()
    records = history.records
    out = {}
    for name in ordered:
        i = created.get(name)
        digest = records[i].get("manifest") if i is not None else None
        if digest:
            out[name] = digest
    return out


def _probe_holder(layout: Layout) -> Holder | None:
    """_lock.probe_holder(layout), without loading the lock module when the lock is free (as
    it mostly is when `status` runs): the same F_OFD_GETLK test (see _lock), whose answer
    "free" is final; "held" or no answer goes to probe_holder itself, which looks again."""
    if sys.platform.startswith("linux"):
        import fcntl

        try:
            fd = os.open(layout.lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file: nobody holds it (as probe_holder says)
        try:  # struct flock: the short l_type, every other field 0 (_lock._record_lock)
            arg = fcntl.F_RDLCK.to_bytes(2, sys.byteorder) + bytes(62)
            out = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, arg)
            if int.from_bytes(out[:2], sys.byteorder, signed=True) == fcntl.F_UNLCK:
                return None
        except (OSError, AttributeError):  # not supported here: probe_holder knows what to do
            pass
        finally:
            os.close(fd)
    from ._lock import probe_holder

    return probe_holder(layout)


def status(root: str) -> Status:
    layout = deploy_root(root)
    history = History.load(layout)
    entries = list_releases_dir(layout)
    journal = read_journal(layout)
    current, target, state = _current_state(layout)
    healthy = current if state == "ok" else None
    names = release_dirs(layout, entries)
    ordered, states, previous = _view(layout, history, healthy, names, journal)
    holder = _probe_holder(layout)
    if journal is not None and holder is not None and journal.get("pid") == holder.pid:
        journal = None  # in progress right now, not interrupted
    hidden = [e for e in entries if e.name[0] == "."]  # (a name is never empty)
    stray = [] if len(names) + len(hidden) == len(entries) else [
        e.name for e in entries if e.name[0] != "." and not e.is_dir(follow_symlinks=False)]
    return Status(
        root=layout.root,
        current=current,
        current_target=target,
        current_state=state,
        previous=previous,
        releases=len(ordered),
        bad=[n for n in ordered if states[n] == BAD and n != healthy],
        lock_holder=holder.to_dict() if holder else None,
        interrupted=journal,
        leftovers=[] if holder else leftovers(layout, hidden),  # all of them hidden
        stray=sorted(stray),
        last=history.records[-1] if history.records else None,
        recovery=plan_recovery(journal, layout, history.finished(str(journal.get("op_id")))
                               if journal is not None else False),
        manifests=_manifests(history, ordered),
        last_change=next((r for r in reversed(history.records) if r.get("op") != "prune"),
                         None),
    )

"""Read-only views of a root: status and the release list. They take no lock and change nothing."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ._history import History, bad_releases, rollback_target
from ._layout import Layout, existing_root, leftovers, read_current, release_dirs
from ._lock import probe_holder
from ._recovery import read_journal


@dataclass
class ReleaseInfo:
    id: str
    state: str  # "current", "good" or "bad"
    current: bool
    rollback_target: bool
    deployed_at: str | None = None
    user: str | None = None
    message: str | None = None
    source: str | None = None
    managed: bool = True  # False: not in the history (made by hand or by another tool)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Status:
    root: str
    current: str | None
    current_target: str | None
    current_state: str  # ok, absent, dangling, outside-releases, directory, file, other
    previous: str | None
    releases: int
    bad: list[str]
    lock_holder: dict[str, Any] | None
    interrupted: dict[str, Any] | None
    leftovers: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)
    last: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _current_state(layout: Layout) -> tuple[str | None, str | None, str]:
    cur = read_current(layout)
    if cur.kind != "symlink":
        return None, None, cur.kind
    if cur.release is None:
        return None, cur.target, "outside-releases"
    if not cur.resolves:
        return cur.release, cur.target, "dangling"
    return cur.release, cur.target, "ok"


def list_releases(root: str) -> list[ReleaseInfo]:
    layout = existing_root(root)
    history = History.load(layout)
    return _releases(layout, history)


def _releases(layout: Layout, history: History) -> list[ReleaseInfo]:
    ordered = history.order(release_dirs(layout))
    bad = bad_releases(history, layout, ordered)
    current, _, state = _current_state(layout)
    if state != "ok":
        current = None
    target = rollback_target(ordered, bad, current, history) if current else None
    created = history.created()
    out = []
    for name in ordered:
        rec = history.records[created[name]] if name in created else {}
        out.append(ReleaseInfo(
            id=name,
            state="current" if name == current else "bad" if name in bad else "good",
            current=name == current,
            rollback_target=name == target,
            deployed_at=rec.get("time"),
            user=rec.get("user"),
            message=rec.get("message"),
            source=rec.get("source"),
            managed=name in created,
        ))
    return out


def status(root: str) -> Status:
    layout = existing_root(root)
    history = History.load(layout)
    releases = _releases(layout, history)
    current, target, state = _current_state(layout)
    holder = probe_holder(layout)
    journal = read_journal(layout)
    if journal is not None and holder is not None and journal.get("pid") == holder.pid:
        journal = None  # in progress right now, not interrupted
    stray = []
    try:
        for e in os.scandir(layout.releases):
            if not e.name.startswith(".") and not e.is_dir(follow_symlinks=False):
                stray.append(e.name)
    except FileNotFoundError:
        pass
    return Status(
        root=layout.root,
        current=current,
        current_target=target,
        current_state=state,
        previous=next((r.id for r in releases if r.rollback_target), None),
        releases=len(releases),
        bad=[r.id for r in releases if r.state == "bad"],
        lock_holder=asdict(holder) if holder else None,
        interrupted=journal,
        leftovers=[] if holder else leftovers(layout),
        stray=sorted(stray),
        last=history.records[-1] if history.records else None,
    )

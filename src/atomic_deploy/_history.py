"""The append-only history, and everything derived from it: deploy order, bad marks, targets.

Order and marks come from this log and from what ``current`` points to, never from mtimes or
ctimes, which copying, backups and clock changes rewrite.
"""

from __future__ import annotations

import os

from ._jsonfile import append_json_line, read_json_lines
from ._layout import Layout, looks_generated

TYPE_CHECKING = False  # status and list import this: no typing, re, datetime or dataclasses
if TYPE_CHECKING:
    from typing import Any

SCHEMA = 1
CREATING_OPS = ("deploy", "prepare", "adopt")
LIVE_OPS = ("deploy", "activate", "rollback", "adopt")


def _user() -> str:
    """What getpass.getuser() says, without its imports (termios, pwd lookup only if needed)."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        user = os.environ.get(name)
        if user:
            return user
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # no passwd entry (containers): the uid is still useful
        return str(os.getuid())


def _host() -> str:
    """socket.gethostname() without importing socket: both are uname(2)'s node name."""
    return os.uname().nodename


def now_iso() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(layout: Layout, op: str, outcome: str, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "v": SCHEMA,
        "time": now_iso(),
        "op": op,
        "outcome": outcome,
        "user": _user(),
        "host": _host(),
        "pid": os.getpid(),
    }
    rec.update({k: v for k, v in fields.items() if v is not None})
    append_json_line(layout.history, rec)
    return rec


class History:
    __slots__ = ("_created", "records")

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self._created: tuple[int, dict[str, int]] = (-1, {})

    @classmethod
    def load(cls, layout: Layout) -> History:
        return cls(read_json_lines(layout.history))

    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("outcome") == "ok"]

    def finished(self, op_id: str) -> bool:
        """The operation wrote its final record: kept as done, never undone by recovery."""
        return any(r.get("op_id") == op_id and r.get("outcome") in ("ok", "unhealthy")
                   for r in self.records)

    def created(self) -> dict[str, int]:
        """Release id -> position of the record that created it."""
        if self._created[0] == len(self.records):  # records are only ever appended
            return self._created[1]
        seen: dict[str, int] = {}
        for i, r in enumerate(self.records):
            rel = r.get("release")
            if (r.get("op") in CREATING_OPS and r.get("outcome") in ("ok", "unhealthy")
                    and isinstance(rel, str)):
                seen.setdefault(rel, i)
        self._created = (len(self.records), seen)
        return seen

    def known(self) -> set[str]:
        return set(self.created())

    def was_live(self) -> set[str]:
        """Releases that were current at some point (a prepared release never activated is not)."""
        return {r["release"] for r in self.ok()
                if r.get("op") in LIVE_OPS and isinstance(r.get("release"), str)}

    def used_ids(self) -> set[str]:
        """Every release id the log mentions, failed deploys included: never handed out again,
        so a record can only ever mean one release."""
        return {r["release"] for r in self.records if isinstance(r.get("release"), str)}

    def order(self, names: list[str]) -> list[str]:
        """Deploy order, oldest first.

        Our ids are allocated under the lock strictly above every id in releases/ and in this
        log, so for them numeric order is deploy order, including a release whose deploy was
        cut short before its record was written; Capistrano's timestamps and Deployer's counters
        sort the same way. Other names (made by hand) count as older than every generated id,
        in log order where logged, else in natural name order.
        """
        if all(map(looks_generated, names)):  # the usual case, without a key per name
            return sorted(sorted(names), key=int)  # stable: equal numbers ("07", "7") by name
        created = self.created()

        def key(n: str) -> tuple[int, int, list[tuple[int, object]], str]:
            if looks_generated(n):  # timestamps and Deployer's counters: numeric order
                return (1, int(n), [], n)
            return (0, created.get(n, -1), _natural(n), n)

        return sorted(names, key=key)

    def bad(self) -> set[str]:
        marked: set[str] = set()
        for r in self.records:
            if r.get("outcome") == "unhealthy" and isinstance(r.get("release"), str):
                marked.add(r["release"])  # failed its health check after the switch
            if r.get("outcome") != "ok":
                continue
            op = r.get("op")
            if op == "rollback" and isinstance(r.get("previous"), str):
                marked.add(r["previous"])
            if op in ("rollback", "activate", "deploy") and isinstance(r.get("release"), str):
                marked.discard(r["release"])
        return marked

    def info(self, release: str) -> dict[str, Any] | None:
        idx = self.created().get(release)
        return self.records[idx] if idx is not None else None


def _natural(name: str) -> list[tuple[int, object]]:
    """Runs of digits compare as numbers: "v2" < "v10"."""
    parts: list[tuple[int, object]] = []
    start = 0
    for i in range(1, len(name) + 1):
        if i == len(name) or name[i].isdecimal() != name[start].isdecimal():
            run = name[start:i]
            parts.append((0, int(run)) if run.isdecimal() else (1, run))
            start = i
    return parts


def bad_releases(history: History, layout: Layout, names: list[str]) -> set[str]:
    """Bad marks from the log, plus Deployer's ``BAD_RELEASE`` file in releases the log does not
    know (an adopted Deployer root keeps what Deployer knew)."""
    used = history.used_ids()
    return history.bad() | {
        n for n in names
        if n not in used and os.path.lexists(os.path.join(layout.release(n), "BAD_RELEASE"))
    }


def rollback_target(ordered: list[str], bad: set[str], current: str,
                    history: History | None = None) -> str | None:
    """Newest good release deployed before ``current`` (Nix/Deployer semantics).

    With the history, a release that was only prepared and never current is skipped: rolling
    back means going back to something that has served before. Releases the log does not know
    (another tool's) count as having served.
    """
    if current not in ordered:
        return None
    live = history.was_live() if history is not None else None
    used = history.used_ids() if history is not None else set()
    for name in reversed(ordered[: ordered.index(current)]):
        if name in bad:
            continue
        if live is not None and name in used and name not in live:
            continue  # prepared, never activated
        return name
    return None


def prune_victims(
    ordered: list[str],
    bad: set[str],
    keep: int,
    protected: set[str],
    known: set[str],
) -> list[str]:
    """What ``prune --keep`` deletes, oldest first.

    Keeps the ``keep`` newest good releases, every protected one (current, rollback target) and
    bad releases newer than the oldest kept good one (recent evidence). Bad releases never count
    toward ``keep``. Folders neither named like a release id nor in the log are never deleted.
    """
    good = [n for n in ordered if n not in bad]
    kept_good = set(good[-keep:]) if keep > 0 else set()
    oldest_kept = min((ordered.index(n) for n in kept_good), default=len(ordered))
    victims = []
    for i, name in enumerate(ordered):
        if name in kept_good or name in protected:
            continue
        if not (looks_generated(name) or name in known):
            continue
        if name in bad and i > oldest_kept:
            continue
        victims.append(name)
    return victims

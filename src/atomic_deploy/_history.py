"""The append-only history, and everything derived from it: deploy order, bad marks, targets.

Order and marks come from this log and from what ``current`` points to, never from mtimes or
ctimes, which copying, backups and clock changes rewrite.
"""

from __future__ import annotations

import os
from itertools import chain

from ._jsonfile import _scan, append_json_line, json_records
from ._layout import Layout, all_generated, looks_generated

TYPE_CHECKING = False  # status and list import this: no typing, re, datetime or dataclasses
if TYPE_CHECKING:
    from typing import Any, BinaryIO

SCHEMA = 2  # 2: every record that changes a release's state says so in "states"
CREATING_OPS = ("deploy", "prepare", "adopt")

# A release's state, written explicitly by the record of the operation that changed it:
#   complete: renamed into releases/, never current (prepare)
#   served:   has been current (deploy, activate, rollback's target, adopt, a finished recovery)
#   bad:      rolled away from, or failed its after-switch hook or health check
# A folder the history gives no state is "foreign" (another tool's, or made by hand): it counts
# as served, or bad when Deployer left its BAD_RELEASE marker in it. Staged releases are never
# in releases/ under their own name, so they need no state here.
COMPLETE, SERVED, BAD, FOREIGN = "complete", "served", "bad", "foreign"


def _legacy_states(r: dict[str, Any]) -> dict[str, str]:
    """The transitions a schema-1 record implies (written before states were explicit)."""
    rel, op, outcome = r.get("release"), r.get("op"), r.get("outcome")
    if not isinstance(rel, str):
        return {}
    if outcome == "unhealthy":
        return {rel: BAD}
    if outcome != "ok":
        return {}
    if op == "recover":  # an interrupted adopt was finished: its folder is the live release
        return {rel: SERVED} if r.get("interrupted") == "adopt" else {}
    if op == "prepare":
        return {rel: COMPLETE}
    if op not in ("deploy", "activate", "rollback", "adopt"):
        return {}
    out = {}
    if op == "rollback" and isinstance(r.get("previous"), str):
        out[r["previous"]] = BAD
    out[rel] = SERVED
    return out


def transitions(r: dict[str, Any]) -> dict[str, str]:
    """The state changes one history record makes. Only records that completed something carry
    any: a failed or interrupted operation never changes a release's state."""
    if r.get("v", 1) >= 2:
        states = r.get("states")
        return states if isinstance(states, dict) else {}
    return _legacy_states(r)


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
    """datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), without importing
    datetime (1 ms of every deploy): the same clock, its microseconds floored as datetime's."""
    import time

    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"


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


_CHUNK = 16384  # bytes of history decoded at once by read_records (see there)
_BLOCK = 65536  # and read at once


def read_records(path: str) -> list[dict[str, Any]]:
    """What read_json_lines(path) returns, at well under its cost (status and list read the
    whole log: at 1,000 releases, most of what they do).

    The lines are decoded a chunk of whole lines at a time, by one call of the decoder's C
    scanner each: one call per chunk makes each key once, not once per record, and a chunk's
    few temporary strings are small enough that the memory one chunk frees is reused by the
    next (fresh pages cost more than the copying). A chunk is read as one JSON array of
    one-element arrays, ``[[line],[line],...]`` (each newline read as ``],[``), when no line
    holds ``],[`` (spaces or tabs aside): then every boundary between two outer elements is
    one of the newlines, so there are as many elements as lines exactly when each element is
    ``[line]``, and each of them holds one value exactly when its line does. Otherwise (a value
    spread over lines, two on a line, a blank or torn line) the chunk is read line by line,
    by read_json_lines's rules: what cannot be read is skipped.
    """
    try:
        with open(path, "rb") as f:
            return _read_blocks(f)
    except FileNotFoundError:
        return []


def _read_blocks(f: BinaryIO) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    rest = b""
    while True:  # a block at a time, not the whole file: its buffer is reused, too
        block = f.read(_BLOCK)
        if b"\r" in block:  # what text mode's universal newlines make of "\r\n" and "\r"
            f.seek(0)
            data = f.read().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            records.clear()
            _decode_lines(data, len(data), records)
            return records
        data = rest + block if rest else block
        if not block:
            _decode_lines(data, len(data), records)
            return records
        cut = data.rfind(b"\n") + 1  # whole lines; the rest waits for the next block
        rest = data[cut:]
        _decode_lines(data, cut, records)


def _decode_lines(data: bytes, n: int, records: list[dict[str, Any]]) -> None:
    """Add the records of ``data[:n]``, whole lines (the last newline may be left out)."""
    view = memoryview(data)
    i = 0
    while i < n:  # runs once per chunk
        j = data.find(b"\n", i + _CHUNK, n) + 1 or n  # whole lines, the last newline left out
        text = str(view[i:j - 1 if data[j - 1] == 10 else j], "utf-8", "replace")
        i = j
        if _scan is not None and _no_boundary(text):
            array = "[[" + text.replace("\n", "],[") + "]]"
            try:
                lines, end = _scan(array, 0)
            except Exception:  # not one value a line: line by line, below
                pass
            else:  # (each newline made the array two characters longer)
                if end == len(array) and len(lines) == (end - len(text)) // 2 - 1 \
                        and set(map(len, lines)) == {1}:
                    chunk = list(chain.from_iterable(lines))
                    if set(map(type, chunk)) == {dict}:
                        records += chunk
                        continue
        json_records(text.split("\n"), records)


def _no_boundary(text: str) -> bool:
    """``text`` holds no ``]``, ``,`` and ``[`` with only spaces or tabs between (quick: our
    records have no ``]`` but in lists, nor two spaces or a tab); False when unsure."""
    return "]" not in text or not ("\t" in text or "  " in text or "],[" in text
                                   or "], [" in text or "] ,[" in text or "] , [" in text)


class History:
    __slots__ = ("_created", "_states", "records")

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self._created: tuple[int, dict[str, int]] = (-1, {})
        self._states: tuple[int, dict[str, str]] = (-1, {})

    @classmethod
    def load(cls, layout: Layout) -> History:
        return cls(read_records(layout.history))

    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("outcome") == "ok"]

    def finished(self, op_id: str) -> bool:
        """The operation wrote its final record: kept as done, never undone by recovery."""
        return any(r.get("op_id") == op_id and r.get("outcome") in ("ok", "unhealthy")
                   for r in self.records)

    def states(self) -> dict[str, str]:
        """Release id -> its explicit state (complete, served, bad), folded over the log."""
        if self._states[0] != len(self.records):  # records are only ever appended
            self._fold()
        return self._states[1]

    def created(self) -> dict[str, int]:
        """Release id -> position of the record that first gave it a state as a new release
        (its deploy, prepare or adopt, or the recovery that finished one)."""
        if self._created[0] != len(self.records):
            self._fold()
        return self._created[1]

    def _fold(self) -> None:
        """states() and created() in one pass over the log (status and list need both)."""
        states: dict[str, str] = {}
        seen: dict[str, int] = {}
        known = (COMPLETE, SERVED, BAD)
        for i, r in enumerate(self.records):  # runs once per record: transitions() inlined
            if r.get("v", 1) >= 2:
                changes = r.get("states")
                if not isinstance(changes, dict):
                    changes = {}
            else:
                changes = _legacy_states(r)
            if not changes:
                continue  # neither a state nor a release created
            for rel, state in changes.items():
                if isinstance(rel, str) and state in known:
                    states[rel] = state
            rel = r.get("release")
            if isinstance(rel, str) and rel not in seen and rel in changes:
                op = r.get("op")
                if op == "recover":
                    op = r.get("interrupted")
                if op in CREATING_OPS:
                    seen[rel] = i
        self._states = (len(self.records), states)
        self._created = (len(self.records), seen)

    def known(self) -> set[str]:
        return set(self.states())

    def used_ids(self) -> set[str]:
        """Every release id the log mentions, failed deploys included: never handed out again,
        so a record can only ever mean one release."""
        return {r["release"] for r in self.records if isinstance(r.get("release"), str)}

    def order(self, names: list[str]) -> list[str]:
        """Deploy order, oldest first.

        Our ids are allocated under the lock strictly above every id in releases/ and in this
        log, so for them numeric order is deploy order, including a release whose deploy was
        cut short before its record was written; Capistrano's timestamps and Deployer's counters
        sort the same way. Other names (made by hand, or digits that are no timestamp) count as
        older than every generated id, in log order where logged, else in natural name order.
        """
        if all_generated(names):  # the usual case, without a key per name
            if len(set(map(len, names))) <= 1:  # digits of one length: as numbers, so as text
                return sorted(names)
            return sorted(sorted(names), key=int)  # stable: equal numbers ("07", "7") by name
        created = self.created()

        def key(n: str) -> tuple[int, int, list[tuple[int, object]], str]:
            if looks_generated(n):  # timestamps and Deployer's counters: numeric order
                return (1, int(n), [], n)
            return (0, created.get(n, -1), _natural(n), n)

        return sorted(names, key=key)

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


def release_states(history: History, layout: Layout, names: list[str]) -> dict[str, str]:
    """Every release's state: explicit from the log, else foreign (bad where Deployer left its
    ``BAD_RELEASE`` marker, so an adopted Deployer root keeps what Deployer knew)."""
    explicit = history.states()
    out = {}
    for n in names:
        state = explicit.get(n)
        if state is None:
            bad = os.path.lexists(os.path.join(layout.release(n), "BAD_RELEASE"))
            state = BAD if bad else FOREIGN
        out[n] = state
    return out


def bad_of(states: dict[str, str]) -> set[str]:
    return {n for n, s in states.items() if s == BAD}


def rollback_target(ordered: list[str], states: dict[str, str], current: str) -> str | None:
    """Newest release deployed before ``current`` that has served and is not bad (Nix/Deployer
    semantics): a release only prepared, never current, is not a target. Foreign releases
    count as having served."""
    if current not in ordered:
        return None
    for name in reversed(ordered[: ordered.index(current)]):
        if states.get(name, FOREIGN) in (SERVED, FOREIGN):
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

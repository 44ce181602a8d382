"""Text and JSON forms of ``status`` and ``list``, shared by the CLI and its fast path.

Imported by ``atomic-deploy status``/``list`` on their quick path: nothing heavy at import time.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

JSON_SCHEMA = 1


def envelope(command: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The object every successful command prints under --json (docs/json.md)."""
    return {"schema": JSON_SCHEMA, "command": command, "ok": True, **payload}


def status_exit_code(s: Any) -> int:
    """``status`` exits 1 when current cannot serve a release (absent, dangling, outside
    releases/, not a link), so that monitoring can act on the code alone; 0 when it can, even
    with an interrupted operation waiting for recovery (current is still complete)."""
    return 0 if s.serving else 1


def format_status(s: Any) -> str:
    cur = s.current or "none"
    if s.current_state != "ok":
        cur = f"{cur} ({s.current_state}" + (f": {s.current_target}" if s.current_target else "") \
            + ")"
    if s.current_state == "directory":
        cur += "; `atomic-deploy adopt ROOT` turns it into a release"
    if not s.serving:
        cur += "; not serving a release"
    rows = [
        ("root", s.root),
        ("current", cur),
        ("rollback target", s.rollback_target or "none"),
        ("releases", f"{s.releases}" + (f" ({len(s.bad)} bad: {', '.join(s.bad)})" if s.bad else "")),
    ]
    h = s.lock_holder
    rows.append(("lock", f"held by pid {h['pid']} on {h['host']} since {h['started']}: "
                 f"{h['command']}" if h else "free"))
    j = s.interrupted
    rows.append(("interrupted", "none" if j is None else
                 f"{j.get('op')} of {j.get('release', '?')} by pid {j.get('pid', '?')} "
                 f"(the next deploy, activate, rollback, prune or recover will {s.recovery})"))
    if s.leftovers:
        rows.append(("leftovers", ", ".join(s.leftovers)))
    if s.stray:
        rows.append(("stray", ", ".join(s.stray) + " (ignored)"))
    if s.last:
        rows.append(("last", _last_line(s.last, s.last_change)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _row(r: Any) -> tuple[Any, ...]:
    """A ReleaseInfo as query.release_rows() gives it."""
    return (r.id, r.state, r.current, r.rollback_target, r.deployed_at, r.user, r.message,
            r.source, r.managed, r.manifest)


def _last_line(last: dict[str, Any], change: dict[str, Any] | None) -> str:
    """The last operation that was not a prune (what put current where it is), and a prune
    after it: folded in when the same run made it (a deploy's own pruning), else after it."""
    line = _one_record(change or last)
    if change is None or change is last:
        return line
    deleted = len(last.get("deleted") or [])
    if (last.get("pid"), last.get("host")) == (change.get("pid"), change.get("host")) \
            and last.get("outcome") == "ok":
        return f"{line}, pruned {deleted}"
    return f"{line}; then {_one_record(last)} ({deleted} deleted)"


def _one_record(rec: dict[str, Any]) -> str:
    what = " ".join(str(x) for x in (rec.get("op"), rec.get("release"), rec.get("outcome"))
                    if x)
    when = rec.get("time")
    return f"{what} at {when}" if when else what or "?"


def format_list(rels: list[Any]) -> str:
    """What ``list`` prints for these ReleaseInfos."""
    return format_rows([_row(r) for r in rels])


def format_rows(rows: list[tuple[Any, ...]]) -> str:
    """What ``list`` prints for these query.release_rows()."""
    if not rows:
        return "no releases"
    # Column by column in one pass, then one %-format per row: `list` prints every release.
    marks, ids, states, whens, messages = [""], ["RELEASE"], ["STATE"], ["DEPLOYED"], ["MESSAGE"]
    for rid, state, current, target, when, _user, message, _source, managed, _digest in rows:
        marks.append("*" if current else "<" if target else "")
        ids.append(rid)
        states.append(state if managed else state + " (unmanaged)")
        if type(when) is not str or type(message) is not str:  # null, or a hand-edited history
            when = "-" if when is None else str(when)
            message = "" if message is None else str(message)
        whens.append((when or "-")[:19].replace("T", " "))
        messages.append(message.replace("\n", " "))
    any_current = "*" in marks
    any_target = "<" in marks or any(row[2] and row[3] for row in rows)
    any_prepared = "prepared" in states
    w0, w1, w2, w3 = (max(map(len, column)) for column in (marks, ids, states, whens))
    fmt = f"%-{w0}s  %-{w1}s  %-{w2}s  %-{w3}s  %s"  # padded as f"{a:<{w0}}" pads
    lines = [(fmt % row).rstrip() for row in zip(marks, ids, states, whens, messages)]
    legend = [t for t, on in (("* current", any_current), ("< rollback target", any_target),
                              ("prepared: never live, so never a rollback target",
                               any_prepared)) if on]
    if legend:
        lines.append(f"({', '.join(legend)})")
    return "\n".join(lines)


def list_json(rows: list[tuple[Any, ...]]) -> list[str]:
    """What ``list --json`` prints for these query.release_rows(), in pieces to write one
    after the other: json.dumps(envelope("list", {"releases": [r.to_dict() for r in
    list_releases()]}), sort_keys=True), a row at a time with the encoder's own string
    escaping. At 1,000 releases the encoder costs half again as much and holds all of its
    pieces (some 40 a row) at once; and pieces of 100 rows are written without first making
    them one string, and its encoded copy, both as long as the whole output."""
    from ._jsonfile import dumps

    try:
        from _json import encode_basestring_ascii as escape  # what dumps escapes with
    except ImportError:  # pragma: no cover - not CPython
        from .query import ReleaseInfo

        return [dumps(envelope("list", {"releases": [ReleaseInfo(*r).to_dict()
                                                     for r in rows]}))]

    def text(v: Any) -> str:  # a field from the history: a string or null, unless hand-edited
        return escape(v) if type(v) is str else "null" if v is None else dumps(v)

    # ReleaseInfo.to_dict()'s keys in sorted order, by an f-string (%-formatting costs half
    # again as much); id and state are always strings, the marks booleans
    out = ['{"command": "list", "ok": true, "releases": [']
    for start in range(0, len(rows), 100):
        if start:
            out.append(", ")
        out.append(", ".join([
            f'{{"current": {"true" if current else "false"}, "deployed_at": {text(when)}, '
            f'"id": {escape(rid)}, "managed": {"true" if managed else "false"}, '
            f'"manifest": {text(digest)}, "message": {text(message)}, '
            f'"rollback_target": {"true" if target else "false"}, "source": {text(source)}, '
            f'"state": {escape(state)}, "user": {text(user)}}}'
            for rid, state, current, target, when, user, message, source, managed, digest
            in rows[start:start + 100]]))
    out.append(f'], "schema": {JSON_SCHEMA}}}')
    return out


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun, singular for exactly one: ``1 file``, ``3 files``, ``0 files``."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def human_bytes(n: int) -> str:
    """A byte count as people read it: 512 B, 1.5 KB, 23.4 MB."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover

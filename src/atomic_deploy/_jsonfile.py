"""Small JSON state files written by rename, and the append-only JSON-lines log."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from . import _platform
from ._layout import random_suffix


def write_json_atomic(path: str, data: Any, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never a torn one."""
    directory = os.path.dirname(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for attempt in range(100):  # a name already taken (planted, or a crash's) is skipped
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{random_suffix()}")
        try:
            fd = os.open(tmp, flags, 0o644)
            break
        except FileExistsError:
            if attempt == 99:
                raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
            f.write("\n")
            f.flush()
            if durable:
                _platform.fsync_fd(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _platform.fsync_dir(directory)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def append_json_line(path: str, record: dict[str, Any]) -> None:
    """Append one record durably. O_APPEND writes of one line do not interleave with others."""
    # ASCII-escaped: a path or message that is not valid UTF-8 (surrogates) still fits.
    line = (json.dumps(record, sort_keys=True) + "\n").encode("ascii")
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A power cut tore the previous line: start on a fresh line so this record survives.
            line = b"\n" + line
        os.write(fd, line)
        _platform.fsync_fd(fd)
    finally:
        os.close(fd)


def read_json_lines(path: str) -> list[dict[str, Any]]:
    """All well-formed records; a torn last line (power cut mid-append) is skipped, not fatal."""
    records: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    records.append(rec)
    except FileNotFoundError:
        pass
    return records

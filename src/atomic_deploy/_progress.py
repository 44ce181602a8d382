"""The copy progress line (CLI only): files and bytes done, rate, time left, on a terminal.

Redrawn in place with a carriage return at most ten times a second, cleared when done, and
never shown when stderr is not a terminal (logs and CI output stay clean).
"""

from __future__ import annotations

import os
import time
from typing import TextIO

_INTERVAL = 0.1


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def measure(path: str) -> tuple[int, int]:
    """Regular files and their bytes under ``path``, without following symlinks."""
    files = size = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    files += 1
                    size += e.stat(follow_symlinks=False).st_size
    return files, size


class Progress:
    """Call with (files_done, bytes_done); ``close()`` clears the line."""

    def __init__(self, stream: TextIO, total_files: int, total_bytes: int) -> None:
        self.stream = stream
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.start = time.monotonic()
        self._last = 0.0
        self._width = 0

    def line(self, files: int, done: int, now: float) -> str:
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        left = (self.total_bytes - done) / rate if rate > 0 and done else None
        pct = 100.0 * done / self.total_bytes if self.total_bytes else 100.0
        eta = _clock(left) if left is not None else "--:--"
        return (f"copying {files:,}/{self.total_files:,} files  {_size(done)}/"
                f"{_size(self.total_bytes)} ({pct:.0f}%)  {_size(rate)}/s  {eta} left")

    def __call__(self, files: int, done: int) -> None:
        now = time.monotonic()
        if now - self._last < _INTERVAL:
            return
        self._last = now
        text = self.line(files, done, now)
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


class DownloadProgress(Progress):
    """A URL source's line: bytes received of the total the server announced (if it did).
    Call with (bytes_done, total_or_None)."""

    def __init__(self, stream: TextIO, name: str) -> None:
        super().__init__(stream, 0, 0)
        self.name = name

    def __call__(self, done: int, total: int | None) -> None:  # type: ignore[override]
        now = time.monotonic()
        if now - self._last < _INTERVAL:
            return
        self._last = now
        rate = done / max(now - self.start, 1e-6)
        if total:
            text = (f"fetching {self.name}  {_size(done)}/{_size(total)} "
                    f"({100.0 * done / total:.0f}%)  {_size(rate)}/s")
        else:
            text = f"fetching {self.name}  {_size(done)}  {_size(rate)}/s"
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

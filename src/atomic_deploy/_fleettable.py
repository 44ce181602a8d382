"""The live table of a fleet command on a terminal (CLI only): one row per host (its phase,
the bytes of its release, its time), redrawn in place with ANSI cursor moves, ending in a
summary. Lines written meanwhile (each host's output) go above the table, whole. Never used
when stderr is not a terminal: there the output stays one line per host per phase.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, TextIO

from ._render import human_bytes

_TICK = 0.25  # seconds between redraws of the time column while nothing else happens
# Phases after which a host's clock stops (a failed host may still be undone: "failed" stays).
_FINAL = ("committed", "failed", "undone", "not started")


def _size(n: int) -> str:
    return human_bytes(n) if n > 0 else "-"


class FleetTable:
    """``event(outcome, name)`` from the fleet coordinator, ``line(text)`` for a line of
    output, ``close(...)`` once: the final table and the summary stay on screen."""

    def __init__(self, stream: TextIO, hosts: list[str]) -> None:
        self.stream = stream
        self.started = time.monotonic()
        # host -> [phase, bytes, seconds when its clock stopped or None, release, error]
        self.rows: dict[str, list[Any]] = {h: ["waiting", 0, None, None, None]
                                           for h in hosts}  # the order given
        self._drawn = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._closed = False
        self._draw()
        self._ticker = threading.Thread(target=self._tick, name="fleet-table", daemon=True)
        self._ticker.start()

    def _width(self) -> int:
        try:
            # a pseudo-terminal nobody sized says 0 columns: take the usual 80
            return max(20, os.get_terminal_size(self.stream.fileno()).columns or 80)
        except (OSError, ValueError, AttributeError):
            return 80

    def event(self, out: Any, name: str) -> None:
        with self._lock:
            row = self.rows.setdefault(out.host, ["waiting", 0, None, None, None])
            row[0] = name
            row[1] = int(getattr(out, "bytes", 0) or 0)
            # its result: its own error, else what happened to it (not started: why)
            row[3] = getattr(out, "release", None)
            # (its error without the state its own line gave: the row says where it is)
            row[4] = (getattr(out, "brief", None) or getattr(out, "error", None)
                      or getattr(out, "note", None))
            row[2] = time.monotonic() - self.started if name in _FINAL else None
            self._redraw()

    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            self._write(text + "\n")
            self._draw()

    def close(self, head: str | None, tail: str = "") -> None:
        """The last frame, then ``head (N phase, ...)tail`` counting each host's last phase;
        ``head`` None: the frame alone (the command ended without a result)."""
        summary = []
        if head is not None:
            counts: dict[str, int] = {}
            for row in self.rows.values():
                counts[row[0]] = counts.get(row[0], 0) + 1
            summary.append(f"{head} (" + ", ".join(f"{n} {phase}" for phase, n in
                                                     sorted(counts.items())) + f"){tail}")
        self._stop.set()
        self._ticker.join()
        with self._lock:
            self._closed = True
            self._clear()
            self._draw(final=True)
            self._write("".join(s + "\n" for s in summary))

    # -- drawing ------------------------------------------------------------------------------
    def table(self, final: bool = False) -> list[str]:
        now = time.monotonic() - self.started
        width = max(len(h) for h in self.rows) if self.rows else 4
        head = f"{'host':<{width}}  {'phase':<12}  {'bytes':>9}  {'time':>7}"
        if final:
            head += "  result"
        lines = [head]
        for host, (phase, size, stopped, release, error) in self.rows.items():
            secs = stopped if stopped is not None else now
            row = f"{host:<{width}}  {phase:<12}  {_size(size):>9}  {secs:>6.1f}s"
            if final:
                row += f"  {error}" if error else f"  on {release}" if release else ""
            lines.append(row)
        return lines

    def _draw(self, final: bool = False) -> None:
        cut = self._width() - 1  # a wrapped row would throw the count of lines off
        lines = [ln[:cut] for ln in self.table(final)]
        self._write("".join(ln + "\n" for ln in lines))
        self._drawn = len(lines)

    def _clear(self) -> None:
        if self._drawn:
            self._write(f"\r\033[{self._drawn}A\033[J")
            self._drawn = 0

    def _redraw(self) -> None:
        if not self._closed:
            self._clear()
            self._draw()

    def _tick(self) -> None:
        while not self._stop.wait(_TICK):
            with self._lock:
                self._redraw()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # what stderr shows never changes an outcome (cli._err_line)

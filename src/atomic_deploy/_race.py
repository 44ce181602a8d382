"""`atomic-deploy race`: readers hammer ``current/version`` while a writer switches it.

Three strategies, each for the same time with the same readers:
- ``naive``: unlink + symlink, what ``ln -sfn`` does on macOS, the BSDs and busybox;
- ``ln``: this system's own ``ln -sfn`` run as a subprocess per switch;
- ``atomic``: :func:`atomic_deploy._switch.point_current`, the very function ``deploy`` uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable

from ._layout import Layout
from ._switch import point_current

STRATEGIES = ("naive", "ln", "atomic")
# The text table's columns: the JSON keys, in this order, meaning the same (docs/json.md).
COLUMNS = ("strategy", "switches", "attempts", "reads", "enoent", "torn", "other_errors",
           "errors", "error_rate")
PAYLOAD = 4096  # bytes per version file: a torn read would mix two payloads

_READER = r"""
import errno, json, os, sys
path, stop, ready, valid = sys.argv[1], sys.argv[2], sys.argv[3], set(json.loads(sys.argv[4]))
reads = enoent = torn = other = 0
open(ready, "w").close()
while not os.path.exists(stop):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        if e.errno == errno.ENOENT:
            enoent += 1
        else:
            other += 1
        continue
    reads += 1
    if data.decode("latin-1") not in valid:
        torn += 1
print(json.dumps({"reads": reads, "enoent": enoent, "torn": torn, "other": other}))
"""


@dataclass
class RaceResult:
    strategy: str
    switches: int
    reads: int
    enoent: int
    torn: int
    other_errors: int
    note: str = ""

    @property
    def errors(self) -> int:
        return self.enoent + self.torn + self.other_errors

    @property
    def attempts(self) -> int:
        """Every read tried: ``reads`` (those that opened) plus those that failed to open."""
        return self.reads + self.enoent + self.other_errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.attempts if self.attempts else 0.0

    def row(self) -> tuple[str, ...]:
        """The text table's cells for COLUMNS (error_rate as a percentage)."""
        d = self.to_dict()
        return tuple(f"{self.error_rate:.2%}" if c == "error_rate" else str(d[c])
                     for c in COLUMNS)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = asdict(self)
        d["errors"] = self.errors
        d["attempts"] = self.attempts
        d["error_rate"] = self.error_rate
        return d


def describe_ln() -> str:
    """What this system's ``ln`` is (GNU coreutils x.y, busybox, BSD)."""
    ln = shutil.which("ln")
    if ln is None:
        return "no ln on PATH"
    try:
        out = subprocess.run([ln, "--version"], capture_output=True, text=True, timeout=5)
        first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
    except (OSError, subprocess.SubprocessError):
        first = ""
    if "coreutils" in first:
        return first.strip()
    if os.path.realpath(ln).endswith("busybox") or "BusyBox" in first:
        return "busybox ln"
    return f"{ln} (BSD or other; no --version)"


def _switcher(strategy: str, layout: Layout) -> Callable[[str], None]:
    cur = layout.current
    if strategy == "naive":
        def naive(target: str) -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cur)
            os.symlink(target, cur)
        return naive
    if strategy == "ln":
        ln = shutil.which("ln") or "ln"

        def ln_sfn(target: str) -> None:
            subprocess.run([ln, "-sfn", target, cur], check=True, cwd=layout.root)
        return ln_sfn

    def atomic(target: str) -> None:
        point_current(layout, target)
    return atomic


def run_race(
    seconds: float = 2.0,
    readers: int = 4,
    strategies: tuple[str, ...] | None = None,
    workdir: str | None = None,
) -> list[RaceResult]:
    strategies = strategies or STRATEGIES
    base = tempfile.mkdtemp(prefix="atomic-deploy-race-", dir=workdir)
    try:
        return [_run_one(base, s, seconds, readers) for s in strategies]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_one(base: str, strategy: str, seconds: float, readers: int) -> RaceResult:
    root = os.path.join(base, strategy)
    layout = Layout(root)
    os.makedirs(layout.tmp)
    payloads = []
    for name in ("v1", "v2"):
        os.makedirs(layout.release(name))
        text = (name + "\n") * (PAYLOAD // (len(name) + 1))
        payloads.append(text)
        with open(os.path.join(layout.release(name), "version"), "w", encoding="latin-1") as f:
            f.write(text)
    os.symlink("releases/v1", layout.current)
    stop = os.path.join(base, f"{strategy}.stop")
    procs = []
    for i in range(readers):
        ready = os.path.join(base, f"{strategy}.ready{i}")
        procs.append((ready, subprocess.Popen(
            [sys.executable, "-c", _READER, os.path.join(layout.current, "version"), stop, ready,
             json.dumps(payloads)],
            stdout=subprocess.PIPE, text=True)))
    try:
        deadline = time.monotonic() + 30
        while not all(os.path.exists(r) for r, _ in procs):
            if time.monotonic() > deadline or any(p.poll() is not None for _, p in procs):
                raise RuntimeError("race readers failed to start")
            time.sleep(0.005)
        switch = _switcher(strategy, layout)
        switches = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            switch("releases/v2" if switches % 2 == 0 else "releases/v1")
            switches += 1
    finally:
        open(stop, "w").close()
        outs = [p.communicate(timeout=60)[0] for _, p in procs]
    counts = [json.loads(o) for o in outs]
    note = describe_ln() if strategy == "ln" else ""
    return RaceResult(
        strategy=strategy,
        switches=switches,
        reads=sum(c["reads"] for c in counts),
        enoent=sum(c["enoent"] for c in counts),
        torn=sum(c["torn"] for c in counts),
        other_errors=sum(c["other"] for c in counts),
        note=note,
    )

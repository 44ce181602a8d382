"""Deferred signals and the fault-injection seam.

SIGINT, SIGTERM and SIGHUP only record that they arrived; the operation notices at its next
checkpoint and rolls back from there. An exception can therefore never land in the middle of a
rename or of the rollback itself, and a second signal during cleanup is ignored (the handler acts
once).

``ATOMIC_DEPLOY_FAULT=STEP:ACTION`` makes the process hurt itself at the named checkpoint, so
tests cover every step deterministically. ACTION is a signal name (KILL, TERM, INT, HUP), an errno
name (EIO, ENOSPC, ...) raised as OSError, or ``PAUSE:FILE``: create ``FILE.paused``, then wait
until ``FILE`` exists.
"""

from __future__ import annotations

import errno
import os
import time

from . import _log
from .errors import InterruptedBySignal

TYPE_CHECKING = False  # typing costs start-up time at every deploy
if TYPE_CHECKING:
    import signal
    from types import FrameType
else:
    # The C module that `signal` wraps, with the same functions and numbers: `signal` itself
    # builds its IntEnum classes at import (with enum: 1.5 ms of every deploy). Its only
    # difference, previous handlers SIG_DFL and SIG_IGN returned as ints rather than members of
    # an IntEnum equal to them, changes nothing: they are only handed back to signal().
    try:
        import _signal as signal
    except ImportError:  # not CPython
        import signal

FAULT_ENV = "ATOMIC_DEPLOY_FAULT"
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Every checkpoint name, in the order a deploy passes them (activate and rollback pass the
# switch steps). Tests iterate over this list, so a new step is covered as soon as it is added.
DEPLOY_STEPS = (
    "lock-acquired",
    "journal-written",
    "staging-created",
    "copy-file",
    "copied",
    "flushed",
    "release-renamed",
    "release-synced",
    "temp-link-created",
    "switched",
    "switch-synced",
    "committed",
)
SWITCH_STEPS = ("lock-acquired", "journal-written", "temp-link-created", "switched",
                "switch-synced", "committed")
PRUNE_STEPS = ("lock-acquired", "journal-written", "victim-hidden", "victim-removed", "committed")
# Inside a rollback (a failed or interrupted operation undoing itself, or recovery undoing an
# interrupted one) and inside recovery. These are fault points only (``fault_point``): a pending
# signal never interrupts a rollback.
UNDO_STEPS = ("undo-switched-back", "undo-release-discarded")
RECOVER_STEPS = ("recover-started", "recover-recorded")
# The deploying machine's side of a remote deploy (remote/_client.py), in protocol order: after
# the host said ready, after the transfer, after sealed, after switched, after sending commit.
SESSION_STEPS = ("session-ready", "session-transferred", "session-sealed", "session-switched",
                 "session-committing")
# The fleet coordinator (fleet/_deploy.py): every host locked; every host prepared; every host
# switched; the commit messages sent.
FLEET_STEPS = ("fleet-locked", "fleet-prepared", "fleet-switched", "fleet-committing")
# A rolling fleet deploy (--rolling): after each batch but the last switched and was healthy.
ROLLING_STEPS = ("fleet-batch-switched",)


class SignalGuard:
    """Installed for the length of one mutating operation (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self.fault: str | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> SignalGuard:
        global _active
        # Read once per operation: checkpoint() runs after every copied file, and an
        # os.environ lookup there costs about 1 us per file.
        self.fault = os.environ.get(FAULT_ENV)
        # Only the main thread may set handlers: signal.signal() raises ValueError in any other
        # (at the first signal: none is set), and asking it spares importing threading (1 ms).
        try:
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handler)
        except ValueError:
            pass
        self._outer = _active
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = self._outer
        for sig, old in self._previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._previous.clear()


_active: SignalGuard | None = None


def pending_signal() -> int | None:
    return _active.received if _active is not None else None


class signal_set_aside:
    """Within the block, the signal already received is set aside, so hooks that tell the
    service about a switch-back still run after a Ctrl-C; a second signal stops them."""

    def __enter__(self) -> None:
        self._guard = _active
        self._first = self._guard.received if self._guard is not None else None
        if self._guard is not None:
            self._guard.received = None

    def __exit__(self, *exc: object) -> None:
        if self._guard is not None and self._first is not None:
            self._guard.received = self._first


def checkpoint(step: str) -> None:
    """Inject the configured fault at ``step``, then raise if a signal has arrived."""
    if step != "copy-file":
        _log.debug("step %s", step)
    guard = _active
    spec = guard.fault if guard is not None else os.environ.get(FAULT_ENV)
    if spec:
        _inject(spec, step)
    if guard is not None and guard.received is not None:
        raise InterruptedBySignal(guard.received)


def fault_point(step: str) -> None:
    """Inject the configured fault at ``step`` but never raise for a pending signal: for steps
    inside a rollback or recovery, which must run to their end once started."""
    _log.debug("step %s", step)
    guard = _active
    spec = guard.fault if guard is not None else os.environ.get(FAULT_ENV)
    if spec:
        _inject(spec, step)


_fired: set[str] = set()


def _inject(spec: str, step: str) -> None:
    name, _, action = spec.partition(":")
    if name != step or step in _fired:
        return
    _fired.add(step)  # a step passed many times (copy-file) faults once
    if action.startswith("PAUSE:"):
        path = action[len("PAUSE:"):]
        with open(path + ".paused", "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(path):
            time.sleep(0.01)
        return
    sig = getattr(signal, "SIG" + action, None)
    if isinstance(sig, int):
        os.kill(os.getpid(), sig)
        # The Python-level handler runs at the next bytecode boundary; wait until it has.
        deadline = time.monotonic() + 5
        while pending_signal() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        return
    code = getattr(errno, action, None)
    if isinstance(code, int):
        raise OSError(code, f"{os.strerror(code)} (injected at {step})")
    raise ValueError(f"{FAULT_ENV}: unknown action {action!r}")

"""Typed errors. The CLI maps each class to one exit code; the library never exits or prints."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs more at start-up than `status` itself
if TYPE_CHECKING:
    from typing import Any


class AtomicDeployError(Exception):
    """Base class. ``state`` says, in words, what the root looks like after the failure."""

    exit_code = 1

    def __init__(self, message: str, state: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.state = state

    def __str__(self) -> str:
        return f"{self.message}; {self.state}" if self.state else self.message


class OperationFailed(AtomicDeployError):
    """The operation failed; ``current`` was left as it was or switched back."""

    exit_code = 1


class CheckFailed(OperationFailed):
    """A check, hook or health check failed: the release was removed, or switched away from
    and marked bad. ``hooks`` holds what ran, with the tail of each one's output."""

    exit_code = 4

    def __init__(self, message: str, state: str | None = None,
                 hooks: list[dict[str, Any]] | None = None, rolled_back: bool = False) -> None:
        super().__init__(message, state)
        self.hooks = hooks
        self.rolled_back = rolled_back


class InvalidInput(AtomicDeployError):
    """Bad path, unknown release, nothing to roll back to: nothing was changed."""

    exit_code = 2


class LockHeld(AtomicDeployError):
    """Another process holds the root's lock."""

    exit_code = 3


class InterruptedBySignal(AtomicDeployError):
    """A signal arrived; the operation was rolled back before this was raised."""

    def __init__(self, signum: int, state: str | None = None) -> None:
        import signal

        try:
            name = signal.Signals(signum).name
        except ValueError:  # pragma: no cover - only for unknown numbers
            name = f"signal {signum}"
        super().__init__(f"interrupted by {name}", state)
        self.signum = signum
        self.exit_code = 128 + signum


class ConnectFailed(AtomicDeployError):
    """A host could not be reached or refused the login (or has no usable python3): nothing
    was changed there."""

    exit_code = 2


class ConnectionLost(OperationFailed):
    """The connection to a host dropped during an operation; the host undoes its own
    unfinished work when it sees its input end (``state`` says what is known)."""

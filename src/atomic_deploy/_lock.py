"""One writer per root: a kernel ``flock`` on a file that is never deleted or renamed.

The kernel drops the lock when the holder dies, even by ``kill -9``, so it cannot go stale, and a
refused process only reads the holder's description: it never deletes or rewrites anything.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time

from ._jsonfile import Record, read_json, write_json_atomic
from ._layout import Layout, check_trusted, show
from .errors import InvalidInput, LockHeld

TYPE_CHECKING = False  # `status` probes the lock: no typing or dataclasses at import time
if TYPE_CHECKING:
    from typing import Callable

POLL_SECONDS = 0.05


class Holder(Record):
    """Who holds the lock, as its holder.json says (every field None when unreadable)."""

    __slots__ = ("command", "host", "pid", "started")

    def __init__(self, pid: int | None, host: str | None, started: str | None,
                 command: str | None) -> None:
        self.pid = pid
        self.host = host
        self.started = started
        self.command = command

    def describe(self) -> str:
        if self.pid is None:
            return "another process (no holder details recorded)"
        return (
            f"pid {self.pid} on {self.host or '?'} since {self.started or '?'} "
            f"running {show(self.command or '?')!r}"
        )


def read_holder(layout: Layout) -> Holder:
    try:
        data = read_json(layout.holder)
        return Holder(data.get("pid"), data.get("host"), data.get("started"), data.get("command"))
    except (OSError, ValueError, AttributeError):
        return Holder(None, None, None, None)


def _open_lock_file(layout: Layout) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(layout.lock, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidInput(f"{show(layout.lock)} is a symlink; refusing to use it",
                               "nothing was changed") from exc
        raise InvalidInput(f"cannot open lock file {show(layout.lock)}: {exc.strerror}",
                           "nothing was changed") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{show(layout.lock)} is not a regular file; refusing to use it",
                               "nothing was changed")
        check_trusted(layout.lock, st)
    except BaseException:
        os.close(fd)
        raise
    return fd


class RootLock:
    """Context manager holding the root's lock; ``wait`` seconds to wait for another holder."""

    def __init__(
        self,
        layout: Layout,
        wait: float = 0.0,
        command: str | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> None:
        self.layout = layout
        self.wait = wait
        self.command = command or " ".join(sys.argv)
        self._checkpoint = checkpoint
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = _open_lock_file(self.layout)
        deadline = time.monotonic() + max(self.wait, 0.0)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    waited = f" after waiting {self.wait:g}s" if self.wait > 0 else ""
                    raise LockHeld(
                        f"{show(self.layout.root)} is locked by {read_holder(self.layout).describe()}"
                        f"{waited}",
                        "nothing was changed; retry later or pass --wait SECONDS",
                    )
                if self._checkpoint is not None:
                    self._checkpoint()
                time.sleep(POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(
            self.layout.holder,
            {"pid": os.getpid(), "host": os.uname().nodename, "started": started,
             "command": self.command},
            durable=False,
        )

    def release(self) -> None:
        if self._fd is not None:
            # Closing drops the flock; the lock file itself stays forever.
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RootLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def probe_holder(layout: Layout) -> Holder | None:
    """Who holds the lock right now, or None; never creates the lock file, never blocks."""
    try:
        fd = os.open(layout.lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_holder(layout)
    finally:
        os.close(fd)
    return None

"""One writer per root: a kernel ``flock`` on a file that is never deleted or renamed.

The kernel drops the lock when the holder dies, even by ``kill -9``, so it cannot go stale, and a
refused process only reads the holder's description: it never deletes or rewrites anything.

Readers (``status``) must never make a writer fail, so they do not take the flock to see whether
it is held: on Linux the holder also sets an open-file-description record lock (``F_OFD_SETLK``,
independent of flock) on the same file, which a reader *tests* with ``F_OFD_GETLK``, acquiring
nothing. Elsewhere a reader still probes with a non-blocking shared flock for an instant, and a
writer refused while only shared holders exist (such probes, or an older version's) retries for up
to ``READERS_GRACE`` seconds instead of failing: writers only ever lock exclusively.
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

TYPE_CHECKING = False  # `status` probes the lock: no typing or dataclasses at import time
if TYPE_CHECKING:
    from typing import Callable

POLL_SECONDS = 0.05
READERS_GRACE = 2.0  # how long a writer waits out shared holders (readers) beyond --wait
# Record locks that belong to the open file description (Linux 3.15+): no process-wide
# release-on-any-close, and unrelated to flock, so testing one never disturbs the flock.
_OFD = sys.platform.startswith("linux") and hasattr(fcntl, "F_OFD_GETLK")


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
            f"running: {show(self.command or '?')}"  # shell-quoted words (cli's _shell_join)
        )


def read_holder(layout: Layout) -> Holder:
    try:
        data = read_json(layout.holder)
        return Holder(data.get("pid"), data.get("host"), data.get("started"), data.get("command"))
    except (OSError, ValueError, AttributeError):
        return Holder(None, None, None, None)


def _open_lock_file(layout: Layout) -> int:
    from .errors import InvalidInput  # here, not above: `status` never needs it

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
        from .errors import LockHeld

        fd = _open_lock_file(self.layout)
        deadline = time.monotonic() + max(self.wait, 0.0)
        readers_until: float | None = None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                now = time.monotonic()
                pause = POLL_SECONDS
                if now >= deadline:
                    if not _only_readers(fd):
                        waited = f" after waiting {self.wait:g}s" if self.wait > 0 else ""
                        raise LockHeld(
                            f"{show(self.layout.root)} is locked by "
                            f"{read_holder(self.layout).describe()}{waited}",
                            "nothing was changed; retry later or pass --wait SECONDS",
                        )
                    # Nobody writes: readers hold it for an instant each. Wait them out, bounded.
                    readers_until = readers_until or now + READERS_GRACE
                    if now >= readers_until:
                        raise LockHeld(
                            f"the lock file {show(self.layout.lock)} has been held shared for "
                            f"{READERS_GRACE:g}s by another process (not an atomic-deploy "
                            "writer: writers lock it exclusively)",
                            "nothing was changed; find the holder with `fuser` or `lsof`",
                        )
                    pause = 0.002
                if self._checkpoint is not None:
                    self._checkpoint()
                time.sleep(pause)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _mark_held(fd)
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


def _only_readers(fd: int) -> bool:
    """The flock we were refused is held shared only (no writer): a shared one is granted."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _record_lock(fd: int, cmd: int, kind: int) -> int:
    """fcntl(fd, cmd) with a whole-file ``struct flock`` of ``kind``; the l_type it returns.

    Linux's struct flock starts with the short l_type; every other field is 0 here (l_whence
    SEEK_SET, l_start 0, l_len 0: to the end of the file, l_pid 0), so the bytes are written
    without importing struct: the short, then zeros, more than the struct's 32 bytes on any
    Linux."""
    arg = kind.to_bytes(2, sys.byteorder) + bytes(62)
    out = fcntl.fcntl(fd, cmd, arg)
    return int.from_bytes(out[:2], sys.byteorder, signed=True)


def _mark_held(fd: int) -> None:
    """Let readers see the lock is held without touching the flock (see the module's notes)."""
    if not _OFD:
        return
    try:
        _record_lock(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK)
    except OSError:
        # A filesystem without record locks: readers' F_OFD_GETLK fails the same way there,
        # and they fall back to the flock probe (which writers wait out).
        return


def probe_holder(layout: Layout) -> Holder | None:
    """Who holds the lock right now, or None; never creates the lock file, never blocks, and on
    Linux acquires nothing (a writer is never refused because a reader looked)."""
    try:
        fd = os.open(layout.lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if _OFD:
            try:
                held = _record_lock(fd, fcntl.F_OFD_GETLK, fcntl.F_RDLCK) != fcntl.F_UNLCK
                return read_holder(layout) if held else None
            except OSError:
                pass  # a kernel or filesystem without them: the flock probe below
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return read_holder(layout)
    finally:
        os.close(fd)
    return None

"""Every platform difference lives here, behind plain functions.

- macOS: ``fsync`` does not flush the drive cache; ``F_FULLFSYNC`` does, but fails on some network
  and FUSE filesystems, where plain ``fsync`` is the fallback.
- Linux: one ``syncfs`` flushes a whole filesystem, far cheaper than one ``fsync`` per file.
- Elsewhere (BSDs): ``fsync`` each file and folder; ``sync(2)`` may return before data is on disk.
"""

from __future__ import annotations

import errno
import os
import sys
from functools import lru_cache

TYPE_CHECKING = False  # typing costs start-up time at every deploy
if TYPE_CHECKING:
    import ctypes
    from typing import Callable

# ctypes is imported inside the functions that need it: it costs start-up time that `status`
# and `list` would otherwise pay on every run.

IS_MACOS = sys.platform == "darwin"
IS_LINUX = sys.platform.startswith("linux")

_F_FULLFSYNC: int | None = getattr(__import__("fcntl"), "F_FULLFSYNC", None)


def user_cache_dir() -> str:
    """atomic-deploy's folder in the user's cache: ``$XDG_CACHE_HOME/atomic-deploy``, else
    ``~/.cache/atomic-deploy`` (a relative XDG_CACHE_HOME is ignored, as the XDG base directory
    spec says). Relative only when there is no home to expand ``~`` to: callers check."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "atomic-deploy")


def fsync_fd(fd: int) -> None:
    """Flush one open file or folder to stable storage."""
    if _F_FULLFSYNC is not None:
        import fcntl

        try:
            fcntl.fcntl(fd, _F_FULLFSYNC)
            return
        except OSError:
            pass  # not supported by this filesystem: plain fsync below
    os.fsync(fd)


_SYNC_REFUSED = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


def _sync_path(path: str, flags: int, sync: Callable[[int], None]) -> None:
    fd = os.open(path, flags)
    try:
        sync(fd)
    except OSError as exc:
        # Some filesystems refuse fsync on a folder; the rename itself is still atomic there.
        if exc.errno not in _SYNC_REFUSED:
            raise
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make renames and creations inside ``path`` durable."""
    _sync_path(path, _DIR_FLAGS, fsync_fd)


@lru_cache(maxsize=1)
def _syncfs() -> object | None:
    import ctypes
    if not IS_LINUX:
        return None
    libc = _libc()
    if libc is None:
        return None
    try:
        fn = libc.syncfs
    except AttributeError:  # not in this C library (old glibc, some others)
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def can_sync_filesystem() -> bool:
    """True where one call flushes a whole filesystem and reports its errors (Linux ``syncfs``)."""
    return _syncfs() is not None


def sync_filesystem(path: str) -> None:
    """Flush every dirty page of the filesystem holding ``path``; raise OSError on I/O error."""
    import ctypes
    fn = _syncfs()
    if fn is None:  # pragma: no cover - callers check can_sync_filesystem() first
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if fn(fd) != 0:  # type: ignore[operator]
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsync every file and folder under ``path`` (where no filesystem-wide sync exists)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                fsync_fd(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def same_filesystem(a: str, b: str) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 0x2  # macOS sys/stdio.h
_AT_FDCWD = -100


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """The C library's functions, as linked into this process.

    dlopen(NULL) rather than ctypes.util.find_library("c"): that one runs ldconfig or a compiler
    to find a file name, about 18 ms on every deploy, and the running interpreter has libc
    loaded already.
    """
    import ctypes
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - a process without a dynamic loader
        return None


def exchange_name() -> str | None:
    """The atomic two-path swap this system offers, by name, or None."""
    libc = _libc()
    if libc is None:
        return None
    if IS_LINUX and hasattr(libc, "renameat2"):
        return "renameat2(RENAME_EXCHANGE)"
    if IS_MACOS and hasattr(libc, "renamex_np"):
        return "renamex_np(RENAME_SWAP)"
    return None


def exchange(a: str, b: str) -> None:
    """Atomically swap the paths ``a`` and ``b`` (both must exist, same filesystem).

    Raises OSError: ENOSYS/EINVAL/ENOTSUP where the system or filesystem cannot do it.
    """
    import ctypes
    libc = _libc()
    name = exchange_name()
    if libc is None or name is None:
        raise OSError(errno.ENOSYS, "no atomic exchange on this system")
    ea, eb = os.fsencode(a), os.fsencode(b)
    if name.startswith("renameat2"):
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(_AT_FDCWD, ea, _AT_FDCWD, eb, _RENAME_EXCHANGE)
    else:
        fn = libc.renamex_np
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(ea, eb, _RENAME_SWAP)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a, None, b)


# --------------------------------------------------------------------------- copying and flushing
# Used by _copy. Every function here either does its job or raises OSError; "not supported" is
# reported as OSError with one of NOT_SUPPORTED (the caller then falls back and remembers that
# for the filesystem, instead of asking again for every file).

NOT_SUPPORTED = frozenset(
    code for code in (errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.ENOTTY,
                      errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EPERM, errno.EBADF)
)
_FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int); the same number on every architecture
_CLONE_NOFOLLOW = 0x0001  # macOS sys/clonefile.h
_CLONE_NOOWNERCOPY = 0x0002


def clone_kind() -> str | None:
    """How this system clones a file (copy-on-write, sharing extents), or None.

    "ficlone": Linux FICLONE ioctl on an open destination (btrfs, XFS with reflink=1, bcachefs,
    OCFS2, overlayfs over those). "clonefile": macOS clonefile(2), which creates the destination
    itself (APFS). Whether a given filesystem can is only known by trying.
    """
    if IS_LINUX:
        return "ficlone"
    if IS_MACOS:
        libc = _libc()
        if libc is not None and hasattr(libc, "clonefile"):
            return "clonefile"
    return None


def clone_fd(src_fd: int, dst_fd: int) -> None:
    """Make the open, empty ``dst_fd`` share all of ``src_fd``'s extents (Linux FICLONE)."""
    if not IS_LINUX:
        raise OSError(errno.ENOSYS, "FICLONE is Linux only")
    import fcntl

    fcntl.ioctl(dst_fd, _FICLONE, src_fd)


def clonefile(src: str, dst: str) -> None:
    """macOS clonefile(2): create ``dst`` as a copy-on-write clone of the regular file ``src``.

    The clone carries mode, timestamps, xattrs and ACLs; owner is copied only when the caller
    may set it (the copier sets owner, mode and times itself afterwards anyway).
    """
    import ctypes
    libc = _libc()
    if not IS_MACOS or libc is None or not hasattr(libc, "clonefile"):
        raise OSError(errno.ENOSYS, "clonefile is macOS only")
    fn = libc.clonefile
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32]
    fn.restype = ctypes.c_int
    if fn(os.fsencode(src), os.fsencode(dst), _CLONE_NOFOLLOW | _CLONE_NOOWNERCOPY) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src, None, dst)


def copy_range(src_fd: int, dst_fd: int, size: int) -> int:
    """Copy ``src_fd`` from its offset to end of file into ``dst_fd`` inside the kernel
    (copy_file_range(2); reflinks on btrfs/XFS, server-side copy on NFS 4.2). Returns the bytes
    copied. Raises OSError; if nothing was copied yet and the errno is in NOT_SUPPORTED the
    caller may fall back to read/write from the same offsets (nothing moved).
    """
    fn = getattr(os, "copy_file_range", None)  # looked up per call: tests take it away
    if fn is None:
        raise OSError(errno.ENOSYS, "copy_file_range is not available")
    done = 0
    # Ask for the expected size first, then keep going until the kernel says end of file: a
    # file that grew since it was stat'ed is still copied whole, as cp does.
    want = max(size, 1 << 20)
    while True:
        n = fn(src_fd, dst_fd, want)
        if n == 0:
            return done
        done += n
        want = 1 << 30


def fsync_nobarrier(fd: int) -> None:
    """Flush one file to the drive, without asking the drive to flush its own cache.

    Plain fsync everywhere. On macOS this only reaches the drive's volatile cache; call
    ``drive_barrier`` once after a batch of these (one F_FULLFSYNC instead of one per file).
    """
    os.fsync(fd)


def drive_barrier(path: str) -> None:
    """macOS: one F_FULLFSYNC makes everything already fsynced to the drive holding ``path``
    durable (the drive flushes its whole cache). Elsewhere fsync already did that: nothing to do.
    """
    if _F_FULLFSYNC is not None:
        _sync_path(path, os.O_RDONLY, fsync_fd)


def fsync_dir_nobarrier(path: str) -> None:
    """``fsync_dir`` without the drive-cache flush on macOS (see ``fsync_nobarrier``); follow a
    batch of these with one ``drive_barrier``."""
    _sync_path(path, _DIR_FLAGS, os.fsync)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def prepare_exit_with_parent() -> None:
    """Load what ``exit_with_parent`` needs, in the parent, so forked children need no imports."""
    if IS_LINUX:
        _libc()


def exit_with_parent() -> bool:
    """In a forked child: have the kernel SIGKILL this process when its parent dies (Linux
    prctl PR_SET_PDEATHSIG). False where that is not available."""
    import signal

    libc = _libc()
    if not IS_LINUX or libc is None or not hasattr(libc, "prctl"):
        return False
    return bool(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0)


def process_started(pid: int) -> str | None:
    """When process ``pid`` started, as a string that differs for a later process given the
    same pid; None if there is no such process or no way to tell.

    Linux: the start time in clock ticks since boot (/proc/PID/stat, field 22). Elsewhere:
    ``ps -o lstart=`` (to the second; a pid is not reused within a second in practice).
    """
    if IS_LINUX:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return None
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(b")", 1)[-1].split()
        return fields[19].decode() if len(fields) > 19 else None
    import subprocess

    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True,
                             env={**os.environ, "LC_ALL": "C"}, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.decode(errors="replace").strip()
    return text if out.returncode == 0 and text else None


def group_running(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that still runs.

    Linux: a scan of /proc, so that zombies do not count (where PID 1 does not reap orphans, a
    killed group's processes stay zombies). Elsewhere ``killpg(pgid, 0)``.
    """
    if IS_LINUX:
        try:
            names = os.listdir("/proc")
        except OSError:
            names = []
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[-1].split()
            except OSError:
                continue  # exited meanwhile
            # fields[0] is the state (field 3), fields[2] the process group (field 5)
            if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
                return True
        if names:
            return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

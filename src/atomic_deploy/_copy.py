"""Copy a build into a staging folder: streaming, never following symlinks, keeping metadata.

Regular files, folders and symlinks are copied; symlinks are recreated as links (never followed),
empty folders, permission bits, mtimes and hard links within the source are kept, and ownership
when running as root (as ``cp -a`` does). Sockets, FIFOs and device files are refused: a release
is web content or code, and a device node in it would be a security hole.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Callable

from . import _platform
from ._layout import show
from .errors import InvalidInput

_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass
class CopyStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0


def check_source(source: str, root: str) -> str:
    """Validate the build folder; returns its absolute path. Nothing is touched."""
    if not os.path.lexists(source):
        raise InvalidInput(f"source {show(source)} does not exist", "nothing was changed")
    if not os.path.isdir(source):
        raise InvalidInput(f"source {show(source)} is not a directory", "nothing was changed")
    real_src = os.path.realpath(source)
    real_root = os.path.realpath(root)
    if real_src == real_root:
        raise InvalidInput("source and ROOT are the same directory", "nothing was changed")
    if real_src.startswith(real_root.rstrip("/") + "/"):
        raise InvalidInput(f"source {show(source)} is inside ROOT", "nothing was changed")
    if real_root.startswith(real_src.rstrip("/") + "/"):
        raise InvalidInput(
            f"ROOT {show(root)} is inside source {show(source)}; the release would contain itself",
            "nothing was changed",
        )
    try:
        with os.scandir(source) as it:
            empty = next(it, None) is None
    except OSError as exc:
        raise InvalidInput(f"cannot read source {show(source)}: {exc.strerror}",
                           "nothing was changed") from exc
    if empty:
        raise InvalidInput(f"source {show(source)} is empty", "nothing was changed")
    return os.path.abspath(source)


def _copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    # Kernel-side copies first (no user-space buffer; reflink-capable on some filesystems).
    fast = getattr(os, "copy_file_range", None)
    if fast is not None and size > 0:
        copied = 0
        try:
            while True:
                n = fast(src_fd, dst_fd, _CHUNK * 8)
                if n == 0:
                    return
                copied += n
        except OSError as exc:
            if copied or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                           errno.EOPNOTSUPP, errno.EPERM, errno.EBADF):
                raise
    while True:
        buf = os.read(src_fd, _CHUNK)
        if not buf:
            return
        view = memoryview(buf)
        while view:
            view = view[os.write(dst_fd, view):]


def _apply_owner(path_or_fd: str | int, st: os.stat_result, follow: bool = True) -> None:
    if os.geteuid() != 0:
        return
    if isinstance(path_or_fd, int):
        os.fchown(path_or_fd, st.st_uid, st.st_gid)
    else:
        os.lchown(path_or_fd, st.st_uid, st.st_gid) if not follow else os.chown(
            path_or_fd, st.st_uid, st.st_gid)


def _copy_file(src: str, dst: str, st: os.stat_result, fsync: bool) -> None:
    sfd = os.open(src, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
        try:
            _copy_data(sfd, dfd, st.st_size)
            _apply_owner(dfd, st)
            # chmod after chown: chown clears setuid/setgid bits.
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            if fsync:
                _platform.fsync_fd(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _copy_symlink(src: str, dst: str, st: os.stat_result) -> None:
    os.symlink(os.readlink(src), dst)
    _apply_owner(dst, st, follow=False)
    if os.utime in os.supports_follow_symlinks:
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_tree(
    src: str,
    dst: str,
    checkpoint: Callable[[str], None],
    fsync_each: bool,
) -> CopyStats:
    """Copy the contents of ``src`` into the existing, empty folder ``dst``.

    ``fsync_each`` flushes every file and folder as it is written (platforms without a
    filesystem-wide sync); otherwise the caller flushes the whole filesystem once afterwards.
    """
    stats = CopyStats()
    links: dict[tuple[int, int], str] = {}  # hard links inside the source, by (dev, inode)
    finished_dirs: list[tuple[str, os.stat_result]] = [(dst, os.stat(src))]
    stack = [(src, dst)]
    while stack:
        sdir, ddir = stack.pop()
        with os.scandir(sdir) as it:
            for entry in it:
                spath = entry.path
                dpath = os.path.join(ddir, entry.name)
                st = entry.stat(follow_symlinks=False)
                mode = st.st_mode
                if stat.S_ISLNK(mode):
                    _copy_symlink(spath, dpath, st)
                    stats.symlinks += 1
                elif stat.S_ISDIR(mode):
                    os.mkdir(dpath, 0o700)
                    stack.append((spath, dpath))
                    finished_dirs.append((dpath, st))
                    stats.dirs += 1
                elif stat.S_ISREG(mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in links:
                        os.link(links[key], dpath)
                    else:
                        _copy_file(spath, dpath, st, fsync_each)
                        if st.st_nlink > 1:
                            links[key] = dpath
                        stats.bytes += st.st_size
                    stats.files += 1
                    checkpoint("copy-file")
                else:
                    kind = ("socket" if stat.S_ISSOCK(mode) else "FIFO" if stat.S_ISFIFO(mode)
                            else "device file")
                    raise InvalidInput(
                        f"source contains a {kind} at {show(spath)}; releases may hold only "
                        "regular files, folders and symlinks"
                    )
    # Folder modes and mtimes last: adding entries changes mtime, and a read-only folder
    # would refuse its own children.
    for path, st in reversed(finished_dirs):
        _apply_owner(path, st)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        if fsync_each:
            _platform.fsync_dir(path)
    return stats

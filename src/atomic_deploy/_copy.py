"""Copy a build into a staging folder: streaming, never following symlinks, keeping metadata.

Regular files, folders and symlinks are copied; symlinks are recreated as links (never followed),
empty folders, permission bits, mtimes, extended attributes (ACLs included, where both
filesystems take them) and hard links within the source are kept, and ownership when running as
root (as ``cp -a`` does). Sockets, FIFOs and device files are refused: a release is web content
or code, and a device node in it would be a security hole.

How a file's data gets there, per file, cheapest first (docs/benchmarks.md has the numbers):

1. ``link_dest`` (``--link-unchanged``): a file identical to the one at the same path in the
   previous release (same size, mtime, mode, owner, xattrs, and the same content) is reused
   instead of copied: cloned from it where the filesystem clones (a clone cannot be written
   through to the previous release), else hard-linked to it (one link(2), no data). The content
   is compared by digest: the source's blake2b (from the source digest cache while the file's
   lstat is unchanged, _manifest.source_digest) against the one the previous release's manifest
   recorded (``prev_digests``, trusted only while that file's size and mtime still match it),
   else against the previous file's own, read now; ``checksum`` always reads both. Only with
   ``trust_mtime`` is the size+mtime check alone enough (the risk: a file changed without
   changing size or mtime, as reproducible builds do, ships the old bytes). Only
   read-only-safe files are linked: group- or other-writable ones are copied unless
   ``link_writable``.
2. Clone (copy-on-write): FICLONE on Linux (btrfs, XFS with reflink), clonefile(2) on macOS
   (APFS). The data is shared until either side is written.
3. copy_file_range(2) (Linux): the kernel copies, no user-space buffer.
4. read/write in 1 MiB chunks: works everywhere.

Whether a filesystem pair supports 2 and 3 is learnt from the first file that tries, then
remembered for the rest of the copy, so an unsupported method costs one failed call per
filesystem, not one per file. Fallbacks are silent.

Files are copied by worker threads where that pays (the walk, folders and symlinks stay on the
calling thread): creating inodes and moving data happen in the kernel with the GIL released, so
two or more threads overlap them when files are expensive (ext4/XFS journaling, big files); when
they are cheap (tmpfs, clones, hard links) Python's own per-file work dominates and threads only
add GIL hand-offs. By default the first files are timed on the calling thread and the workers
start only if they pay; ``jobs`` fixes the number instead. Where the first files turn out to
be cheap (Linux, auto mode: clones, content comparisons, or plain copies averaging at most
``_THREADS_WORTH_S`` each, as on tmpfs or when writes land in the page cache), forked worker
processes share the files with the calling process instead (_copy_procs: there Python's own
per-file work is the cost, which threads cannot overlap and processes can);
``ATOMIC_DEPLOY_COPY_PROCESSES=0`` keeps every file in this process.

The calling thread runs ``checkpoint("copy-file")`` after every regular file (the signal and
fault-injection seam) and ``progress``, whoever copied it; if either raises, worker threads stop
after their current file, worker processes are killed, and both are joined before the exception
propagates, so nothing writes into the staging folder once copy_tree has returned or raised.

The walk streams: folders are listed one at a time with scandir, work is handed to the workers
in small batches through a bounded queue, and a folder's own metadata (mode, mtime, owner,
xattrs) is applied as soon as everything inside it is done. Memory stays flat whatever the
number of files (only hard-linked files are remembered, to link their other names). With a
``record`` (a CopyRecord), each entry's manifest line, the files' digests and the files
hard-linked to ``link_dest`` are kept too, for the release's manifest and for checking that
nothing wrote through those links (operations._stage).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Mapping

from . import _platform
from ._jsonfile import FACTORY as _FACTORY
from ._jsonfile import Record
from ._layout import show
from ._manifest import (
    cached_source_digest,
    copy_source_digest,
    digest_file,
    source_digest,
    source_digests,
)
from .errors import InvalidInput

TYPE_CHECKING = False  # typing costs start-up time at every deploy
if TYPE_CHECKING:
    from typing import Callable, Optional

    from ._copy_procs import ProcPool
    from ._manifest import CopyRecord, PrevDigests

    Known = dict[str, tuple[int, int, str]] | PrevDigests  # path -> size, mtime_ns, digest

_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BATCH = 64  # files per work item (of one folder or several): few enough to spread a folder over
#              the workers, enough to make the cost of handing an item on (a queue's locking, a
#              worker process's message and answer) negligible next to copying its files
_HAS_XATTR = hasattr(os, "listxattr")
# Measured (docs/benchmarks.md, 2 vCPUs): on ext4 two threads copy the 20k-file build about
# 1.5x faster than one (creating inodes is kernel work that runs without the GIL); on tmpfs,
# where the kernel side is cheap and Python's own per-file work dominates, 1, 2 and 4 threads
# are within noise of each other. More threads than CPUs only add lock contention: one per CPU,
# at most 4.
DEFAULT_JOBS = max(1, min(4, os.cpu_count() or 1))
_PROBE_FILES = 256  # files timed on the calling thread before threads may start (auto mode)
_THREADS_WORTH_S = 60e-6  # mean seconds per file above which threads pay (auto mode)
# Worker processes (see _copy_procs) instead of threads where files are cheap: started after
# this many files were copied here and they were clones, compared with the previous release, or
# plain copies of at most _THREADS_WORTH_S each (decided before threads are considered).
# Forking a worker costs about as much as copying a hundred such files, so small trees stay on
# this thread.
_PROC_PROBE_FILES = 256
# "0": never use worker processes; "1": use them from the first file whenever they can be
# forked, whatever the filesystem (tests use this to run every copy check through them).
PROCESSES_ENV = "ATOMIC_DEPLOY_COPY_PROCESSES"
_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
# errnos after which a file is simply copied instead of linked (link_dest on another
# filesystem, too many links to one inode, protected_hardlinks, filesystem without links)
_LINK_FALLBACK = frozenset((errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EACCES,
                            errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)))


class CopyStats(Record):
    __slots__ = ("files", "dirs", "symlinks", "bytes", "copied", "cloned", "linked", "linked_bytes",  # noqa: RUF023
                 "hardlinks", "jobs", "external_links")

    files: int  # regular files in the release, extra names of hard links included
    dirs: int
    symlinks: int
    bytes: int  # content of distinct regular files (each hard-linked file counted once)
    copied: int  # files whose data was written (copy_file_range or read/write)
    cloned: int  # files cloned copy-on-write (FICLONE, clonefile)
    linked: int  # files hard-linked to the identical file in link_dest
    linked_bytes: int
    hardlinks: int  # extra names of files hard-linked inside the source
    jobs: int  # copy threads used (or worker processes, this one included)
    # (path, target) of each symlink copied that leads out of the tree (symlink_escape)
    external_links: list[tuple[str, str]]

    def __init__(self, files: int = 0, dirs: int = 0, symlinks: int = 0, bytes: int = 0, copied: int = 0,
                 cloned: int = 0, linked: int = 0, linked_bytes: int = 0, hardlinks: int = 0, jobs: int = 1,
                 external_links: list[tuple[str, str]] = _FACTORY) -> None:
        self.files = files
        self.dirs = dirs
        self.symlinks = symlinks
        self.bytes = bytes
        self.copied = copied
        self.cloned = cloned
        self.linked = linked
        self.linked_bytes = linked_bytes
        self.hardlinks = hardlinks
        self.jobs = jobs
        self.external_links = [] if external_links is _FACTORY else external_links

    def add(self, other: CopyStats) -> None:
        for name in ("copied", "cloned", "linked", "linked_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


MAX_HOPS = 40  # Linux MAXSYMLINKS; macOS gives up sooner (32), so nothing longer can resolve


def symlink_escape(links: Mapping[str, str], key: str) -> str | None:
    """Where the symlink at ``key`` leads, judged inside the tree whose symlinks are ``links``
    (path relative to the top -> target): "outside" if its resolution goes above the top at
    any step or its target is absolute, "loop" if it is part of a loop or a chain longer than
    MAX_HOPS, else None.

    Resolution follows the tree's other links, as the kernel would, but never goes above the
    top even for a moment: "../<the top's name>/x" would resolve in one place and dangle (or
    reach a sibling release) once renamed. Missing names and files are walked as if they were
    folders, which is stricter than the kernel.
    """
    if links[key].startswith("/"):
        return "outside"
    cur = key.split("/")[:-1]
    pending = list(reversed(links[key].split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not cur:
                return "outside"
            cur.pop()
            continue
        cur.append(part)
        target = links.get("/".join(cur))
        if target is not None:
            hops += 1
            if hops > MAX_HOPS:
                return "loop"
            if target.startswith("/"):
                return "outside"
            cur.pop()
            pending.extend(reversed(target.split("/")))
    return None


def check_source(source: str, root: str | None) -> str:
    """Validate the build folder; returns its absolute path. Nothing is touched. ``root`` is
    None when it is on another machine."""
    if not os.path.lexists(source):
        raise InvalidInput(f"source {show(source)} does not exist", "nothing was changed")
    if not os.path.isdir(source):
        raise InvalidInput(f"source {show(source)} is not a directory", "nothing was changed")
    real_src = os.path.realpath(source)
    real_root = os.path.realpath(root) if root is not None else "\0"
    if real_src == real_root:
        raise InvalidInput("source and ROOT are the same directory", "nothing was changed")
    if real_src.startswith(real_root.rstrip("/") + "/"):
        raise InvalidInput(f"source {show(source)} is inside ROOT", "nothing was changed")
    if root is not None and real_root.startswith(real_src.rstrip("/") + "/"):
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
    if os.path.isdir(os.path.join(source, ".atomic-deploy")) or (
            os.path.islink(os.path.join(source, "current"))
            and os.path.isdir(os.path.join(source, "releases"))):
        raise InvalidInput(f"source {show(source)} is itself a deploy root (it has releases/ and "
                           "current); did you swap SOURCE and ROOT? The order is SOURCE ROOT",
                           "nothing was changed")
    return os.path.abspath(source)


# --------------------------------------------------------------------------- data


class _Caps:
    """What one (source filesystem, destination filesystem) pair turned out to support.

    None: not tried yet. Concurrent first tries by two workers are harmless (both fall back).
    """

    __slots__ = ("clone", "range")

    def __init__(self) -> None:
        self.clone: bool | None = None
        self.range: bool | None = None


def _read_write(src_fd: int, dst_fd: int) -> None:
    while True:
        buf = os.read(src_fd, _CHUNK)
        if not buf:
            return
        view = memoryview(buf)
        while view:
            view = view[os.write(dst_fd, view):]


def _copy_data(src_fd: int, dst_fd: int, size: int, caps: _Caps | None = None) -> None:
    """Copy the rest of ``src_fd`` into ``dst_fd``: copy_file_range where it works, else
    read/write. ``caps`` remembers a refusal for the next file on the same filesystems."""
    caps = caps or _Caps()
    if size > 0 and caps.range is not False:
        try:
            _platform.copy_range(src_fd, dst_fd, size)
            caps.range = True
            return
        except OSError as exc:
            # Only a refusal before any byte moved may fall back (offsets are untouched then);
            # a real error (ENOSPC, EIO) must not be retried, nor hidden.
            if exc.errno not in _platform.NOT_SUPPORTED or os.lseek(dst_fd, 0, os.SEEK_CUR):
                raise
            caps.range = False
    _read_write(src_fd, dst_fd)


# --------------------------------------------------------------------------- metadata


def _copy_xattrs(src: str | int, dst: str | int, follow: bool = True) -> None:
    """Extended attributes (user.*, security.*, trusted.* as root, POSIX ACLs as system.*).

    Those the destination refuses (no xattr support, trusted.* without privilege, an SELinux
    label it will not take) are skipped, as cp -a does: a release needs its content and modes,
    and losing an attribute the target filesystem cannot hold must not stop a deploy.
    """
    if not _HAS_XATTR:
        return
    try:
        names = os.listxattr(src, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _platform.NOT_SUPPORTED:
            return
        raise
    for name in names:
        try:
            value = os.getxattr(src, name, follow_symlinks=follow)
            os.setxattr(dst, name, value, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in _platform.NOT_SUPPORTED and exc.errno not in (
                    errno.EACCES, getattr(errno, "ENODATA", errno.ENOENT), errno.E2BIG):
                raise


def _xattrs_of(path: str) -> dict[str, bytes]:
    if not _HAS_XATTR:
        return {}
    try:
        return {n: os.getxattr(path, n, follow_symlinks=False)
                for n in os.listxattr(path, follow_symlinks=False)}
    except OSError:
        return {"": b"unreadable"}  # never equal to a readable set: copy, do not link


def _apply_owner(path_or_fd: str | int, st: os.stat_result, follow: bool = True) -> None:
    if os.geteuid() != 0:
        return
    if isinstance(path_or_fd, int):
        os.fchown(path_or_fd, st.st_uid, st.st_gid)
    elif follow:
        os.chown(path_or_fd, st.st_uid, st.st_gid)
    else:
        os.lchown(path_or_fd, st.st_uid, st.st_gid)


def _umask() -> int:
    """The process umask, read without changing it where possible (os.umask is set-and-get,
    which would race with other threads creating files)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _copy_symlink(src: str, dst: str, st: os.stat_result) -> str:
    target = os.readlink(src)
    os.symlink(target, dst)
    _apply_owner(dst, st, follow=False)
    _copy_xattrs(src, dst, follow=False)
    if os.utime in os.supports_follow_symlinks:
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return target


# --------------------------------------------------------------------------- one file




class _Options:
    """Settings of one copy_tree call, and what its first created file taught us.

    Every metadata call on a new file is a journal transaction on ext4 and XFS (and a
    measurable share of a deploy): files are therefore created with their final permission
    bits, and chown/chmod are skipped where the file already has what they would set. Whether
    new files really get ``mode & ~umask`` and which owner they get (setgid folders, default
    ACLs, BSD group rules) is learnt from the first file created, not assumed.
    """

    __slots__ = ("checksum", "clone_kind", "created_owner", "cut", "digest_all", "dst_dev", "fsync",
                 "keep_mode", "link_root", "link_writable", "prev_digests", "root",
                 "trust_mtime", "umask")

    def __init__(self, fsync: bool, checksum: bool, link_writable: bool, dst_dev: int,
                 trust_mtime: bool = False, digest_all: bool = False, link_root: str = "",
                 prev_digests: Known | None = None, dst_root: str = "") -> None:
        self.fsync = fsync
        self.cut = len(dst_root) + 1 if dst_root else 0  # destination path -> relative path
        self.checksum = checksum
        self.link_writable = link_writable
        self.trust_mtime = trust_mtime
        self.digest_all = digest_all  # record every regular file's digest
        self.link_root = link_root  # the previous release (link_dest), to find a file's path
        self.prev_digests = prev_digests or {}  # its manifest: path -> (size, mtime_ns, digest)
        self.dst_dev = dst_dev
        self.clone_kind = _platform.clone_kind()
        self.root = os.geteuid() == 0
        self.umask = _umask()
        self.created_owner: tuple[int, int] | None = None  # None: no file created yet
        self.keep_mode = False  # True once a new file was seen to get exactly mode & ~umask

    def learn(self, fd: int, asked: int) -> None:
        fst = os.fstat(fd)
        self.keep_mode = stat.S_IMODE(fst.st_mode) == asked & ~self.umask
        self.created_owner = (fst.st_uid, fst.st_gid)

    def finish(self, fd: int, src: int | str, st: os.stat_result) -> None:
        """Owner, xattrs, mode, times (and fsync) of a new file created with ``st``'s mode."""
        # Order matters: chown clears setuid/setgid bits and security.capability, so owner
        # first, then xattrs, then the mode; times last (nothing after them touches the file).
        perm = stat.S_IMODE(st.st_mode)
        if self.root and (st.st_uid, st.st_gid) != self.created_owner:
            os.fchown(fd, st.st_uid, st.st_gid)
        if _HAS_XATTR:
            _copy_xattrs(src, fd)
        if not self.keep_mode or perm != perm & 0o777 & ~self.umask:
            os.fchmod(fd, perm)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        if self.fsync:
            _platform.fsync_nobarrier(fd)


class _Copier:
    """Per-thread file copier; ``caps`` is shared by all threads of one copy_tree call."""

    def __init__(self, opts: _Options, caps: dict[tuple[int, int], _Caps]) -> None:
        self.opts = opts
        self.caps = caps
        self.stats = CopyStats()
        # Both by path relative to the destination (as CopyRecord keeps them): a 200,000-file
        # build's full destination paths alone took 30 MB.
        self.digests: dict[str, str] = {}  # path -> digest (CopyRecord.digests)
        self.linked: list[str] = []  # paths hard-linked to link_dest
        self._buf: bytearray | None = None  # for copy_digest_fd, made at its first use

    def _caps(self, st: os.stat_result) -> _Caps:
        return self._caps_for((st.st_dev, self.opts.dst_dev))

    def _caps_for(self, key: tuple[int, int]) -> _Caps:
        found = self.caps.get(key)
        if found is None:
            found = self.caps.setdefault(key, _Caps())
        return found

    def file(self, spath: str, dpath: str, lpath: str | None, st: os.stat_result) -> None:
        if lpath is not None and self.try_link(spath, dpath, lpath, st):
            return
        self.copy(spath, dpath, st)

    def try_link(self, spath: str, dpath: str, lpath: str, st: os.stat_result) -> bool:
        how = self._link_unchanged(spath, dpath, lpath, st)
        if how == "link":
            self.stats.linked += 1
            self.stats.linked_bytes += st.st_size
            self.linked.append(dpath[self.opts.cut:])
            return True
        if how == "clone":
            self.stats.cloned += 1
            return True
        return False

    def copy(self, spath: str, dpath: str, st: os.stat_result) -> None:
        caps = self.caps.get((st.st_dev, self.opts.dst_dev)) or self._caps(st)
        if (self.opts.clone_kind == "clonefile" and caps.clone is not False and st.st_size
                and self._clonefile(spath, dpath, st, caps)):
            self.stats.cloned += 1
            if self.opts.digest_all and dpath[self.opts.cut:] not in self.digests:
                self.digests[dpath[self.opts.cut:]] = source_digest(spath, st)
            return
        opts = self.opts
        # The digest, where one is wanted and not known yet (a file --link-unchanged compared
        # was hashed then): from the source digest cache, else computed below.
        rel = dpath[opts.cut:]
        need = opts.digest_all and rel not in self.digests
        known, key = cached_source_digest(spath, st) if need else (None, None)
        sfd = os.open(spath, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        try:
            # Final permission bits at once (staging is private to us: mode 0o700); the setuid,
            # setgid and sticky bits only by fchmod, after any chown.
            asked = st.st_mode & 0o777
            dfd = os.open(dpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                          asked)
            try:
                if opts.created_owner is None:
                    opts.learn(dfd, asked)
                if self._clone_fd(sfd, dfd, st, caps):
                    self.stats.cloned += 1
                elif need and known is None:
                    # Hashed while copied: its bytes are read once (and the digest is that of
                    # exactly the bytes the release got).
                    if self._buf is None:
                        self._buf = bytearray(_CHUNK)
                    known = copy_source_digest(spath, st, key, sfd, dfd, self._buf)
                    self.stats.copied += 1
                else:
                    _copy_data(sfd, dfd, st.st_size, caps)
                    self.stats.copied += 1
                if need:
                    # cloned: read (and remembered) now
                    self.digests[rel] = known or source_digest(spath, st, sfd)
                opts.finish(dfd, sfd, st)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def _clone_fd(self, sfd: int, dfd: int, st: os.stat_result, caps: _Caps) -> bool:
        if self.opts.clone_kind != "ficlone" or caps.clone is False or not st.st_size:
            return False
        try:
            _platform.clone_fd(sfd, dfd)
        except OSError as exc:
            if exc.errno not in _platform.NOT_SUPPORTED:
                raise
            caps.clone = False  # this filesystem pair cannot: never ask again in this copy
            return False
        caps.clone = True
        return True

    def _clonefile(self, spath: str, dpath: str, st: os.stat_result, caps: _Caps) -> bool:
        try:
            _platform.clonefile(spath, dpath)
        except OSError as exc:
            if exc.errno not in _platform.NOT_SUPPORTED:
                raise
            caps.clone = False
            return False
        caps.clone = True
        # clonefile made the file with the source's mode and times; owner, mode and times are
        # set again as for any copy (as root it did not copy the owner: CLONE_NOOWNERCOPY).
        fd = os.open(dpath, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        try:
            _apply_owner(fd, st)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            if self.opts.fsync:
                _platform.fsync_nobarrier(fd)
        finally:
            os.close(fd)
        return True

    def _link_unchanged(self, spath: str, dpath: str, lpath: str,
                        st: os.stat_result) -> str | None:
        """Reuse ``lpath`` as ``dpath`` if it is the same file as ``spath``: "clone" or "link"
        (how), or None (not the same, or it cannot be reused: copy it)."""
        mode = st.st_mode
        if mode & _GROUP_OTHER_WRITE and not self.opts.link_writable:
            return None  # anyone in the group could edit every release sharing it
        try:
            old = os.lstat(lpath)
        except OSError:
            return None
        owner_ok = ((old.st_uid, old.st_gid) == (st.st_uid, st.st_gid) if self.opts.root
                    else old.st_uid == os.geteuid())
        if not (stat.S_ISREG(old.st_mode) and old.st_mode == mode and owner_ok
                and old.st_size == st.st_size and old.st_mtime_ns == st.st_mtime_ns):
            return None
        if _HAS_XATTR and _xattrs_of(spath) != _xattrs_of(lpath):
            return None
        if not self.opts.trust_mtime and not self._same_content(spath, dpath, lpath, old, st):
            return None
        if self.opts.clone_kind is not None and self._caps_for(
                (self.opts.dst_dev, self.opts.dst_dev)).clone is not False:
            if not st.st_size:
                return None  # nothing to clone: a new empty file, as cheap, not shared
            if self._clone_unchanged(spath, dpath, lpath, st):
                return "clone"
        try:
            os.link(lpath, dpath, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _LINK_FALLBACK:
                return None
            raise
        return "link"

    def _same_content(self, spath: str, dpath: str, lpath: str, old: os.stat_result,
                      st: os.stat_result) -> bool:
        """True if ``spath`` holds the bytes ``lpath`` holds. The source's digest (it goes into
        the new release's manifest) is read, or taken from the source digest cache while the
        file's lstat ``st`` is the one it was read with; the previous file is read only where
        its manifest has no digest for it, it changed since (size or mtime), or ``checksum``."""
        mine = source_digest(spath, st)
        self.digests[dpath[self.opts.cut:]] = mine
        known = None if self.opts.checksum else self.opts.prev_digests.get(
            lpath[len(self.opts.link_root) + 1:])
        if known is not None and known[0] == old.st_size and known[1] == old.st_mtime_ns:
            return known[2] == mine
        return digest_file(lpath) == mine

    def _clone_unchanged(self, spath: str, dpath: str, lpath: str, st: os.stat_result) -> bool:
        """Clone the previous release's file (same filesystem as the new one) where clones
        work: no data copied, and unlike a hard link a write to either side stays there."""
        opts = self.opts
        caps = self._caps_for((opts.dst_dev, opts.dst_dev))
        if opts.clone_kind == "clonefile":
            # clonefile copies lpath's xattrs, which are the source's (checked above)
            return caps.clone is not False and self._clonefile(lpath, dpath, st, caps)
        if opts.clone_kind != "ficlone" or caps.clone is False:
            return False
        lfd = os.open(lpath, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        try:
            asked = st.st_mode & 0o777
            dfd = os.open(dpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                          asked)
            try:
                if opts.created_owner is None:
                    opts.learn(dfd, asked)
                if not self._clone_fd(lfd, dfd, st, caps):
                    os.unlink(dpath)  # this filesystem does not clone: hard-link it instead
                    return False
                opts.finish(dfd, spath, st)
            finally:
                os.close(dfd)
        finally:
            os.close(lfd)
        return True


# --------------------------------------------------------------------------- the walk


_Meta = tuple[int, int, int, int, int]  # mode, uid, gid, atime_ns, mtime_ns


class _Dir:
    """A destination folder whose own metadata waits until everything inside it is done."""

    __slots__ = ("dst", "link", "meta", "parent", "pending", "src")

    def __init__(self, src: str, dst: str, link: str | None, st: os.stat_result,
                 parent: _Dir | None) -> None:
        self.src = src
        self.dst = dst
        self.link = link
        self.meta: _Meta = (st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns)
        self.parent = parent
        self.pending = 1  # its own listing; +1 per batch in flight, per unfinished subfolder


_Files = list[tuple[str, os.stat_result]]  # (name, lstat) of regular files in one folder
_Group = tuple[_Dir, _Files, bool]  # folder, some of its files, whether to try linking them first
# A work item: the files of one or more folders, in walk order (a deep build has a few files per
# folder: one item per folder would cost a message and a result per handful of files).
_Item = list[_Group]
if TYPE_CHECKING:
    # the item, how many of its files were done (in its order), the error that stopped it
    _Done = tuple[_Item, int, Optional[BaseException]]


class _Pool:
    """Worker threads fed through a bounded queue; results come back on an unbounded one."""

    def __init__(self, jobs: int, make: Callable[[], _Copier]) -> None:
        # Imported here: a deploy copied by its own thread alone (most small ones) never
        # needs them (1 ms at start-up).
        import queue
        import threading

        self.tasks: queue.Queue[_Item | None] = queue.Queue(maxsize=jobs * 2)
        self.done: queue.Queue[_Done] = queue.Queue()
        self.stop = False  # set by the calling thread on abort; workers skip remaining work
        self.copiers = [make() for _ in range(jobs)]
        self.threads = [threading.Thread(target=self._work, args=(c,), daemon=True,
                                         name=f"atomic-deploy-copy-{i}")
                        for i, c in enumerate(self.copiers)]
        for t in self.threads:
            t.start()

    def _work(self, copier: _Copier) -> None:
        while True:
            item = self.tasks.get()
            if item is None:
                return
            done = 0
            error: BaseException | None = None
            try:
                for node, batch, link in item:
                    src, dst, old = node.src, node.dst, node.link if link else None
                    for name, st in batch:
                        if self.stop:
                            break
                        copier.file(f"{src}/{name}", f"{dst}/{name}",
                                    f"{old}/{name}" if old is not None else None, st)
                        done += 1
            except BaseException as exc:  # handed to the calling thread, which re-raises
                error = exc
                self.stop = True
            self.done.put((item, done, error))

    def put(self, item: _Item, timeout: float) -> bool:
        import queue

        try:
            self.tasks.put(item, timeout=timeout)
        except queue.Full:
            return False
        return True

    def full(self) -> bool:
        return False  # the calling thread walks and checkpoints; the workers copy

    def get(self, timeout: float | None) -> _Done | None:
        """A finished item, or None; ``timeout`` None: do not wait."""
        import queue

        try:
            return self.done.get(timeout=timeout) if timeout is not None else self.done.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop and join every worker (after an error: abandon queued work first)."""
        import queue

        if self.stop:
            while True:
                try:
                    self.tasks.get_nowait()
                except queue.Empty:
                    break
        for _ in self.threads:
            self.tasks.put(None)
        for t in self.threads:
            t.join()


class _Tree:
    def __init__(self, src: str, dst: str, checkpoint: Callable[[str], None], fsync_each: bool,
                 link_dest: str | None, checksum: bool, link_writable: bool, jobs: int | None,
                 progress: Callable[[int, int], None] | None, trust_mtime: bool = False,
                 digest_all: bool = False,
                 prev_digests: Known | None = None,
                 record: CopyRecord | None = None) -> None:
        self.src_root = src
        self.dst_root = dst
        self.checkpoint = checkpoint
        self.fsync_each = fsync_each
        self.link_dest = link_dest
        self.record = record
        self.jobs = jobs or DEFAULT_JOBS
        self.auto = jobs is None  # decide by measuring (see _threads_pay)
        # Auto mode makes size+mtime links (--trust-mtime) on this thread; comparing contents
        # reads the source (and maybe the previous file), which is worth spreading over the
        # workers like a copy.
        self.links_here = self.auto and trust_mtime
        self.inline_files = 0
        self.inline_seconds = 0.0
        self.progress = progress
        self.stats = CopyStats(jobs=1)
        # Files reused from link_dest have their digest computed anyway: recorded for all, so
        # that the next deploy compares against this release's manifest.
        top = os.stat(dst)
        self.opts = _Options(fsync_each, checksum, link_writable, top.st_dev,
                             trust_mtime=trust_mtime,
                             digest_all=digest_all or (link_dest is not None and not trust_mtime),
                             link_root=link_dest or "", prev_digests=prev_digests,
                             dst_root=dst)
        # The owner a folder has before it is finished, to chown (as root) only those that need
        # it: the top's, and that of every folder the walk makes, learnt from the first one
        # finished. They all get the same: each is made inside a folder of ours that is still
        # private and unfinished, so the same owner, group (setgid, BSD group rules) and setgid
        # bit carry down from the top.
        self.top_owner = (top.st_uid, top.st_gid)
        self.made_owner: tuple[int, int] | None = None
        self.caps: dict[tuple[int, int], _Caps] = {}
        self.inline = _Copier(self.opts, self.caps)  # jobs == 1, and the deferred hard links
        self.pool: _Pool | ProcPool | None = None
        self.procs = os.environ.get(PROCESSES_ENV, "") if self.auto else "0"
        self.proc_stats = CopyStats()  # what worker processes did (they have no copier here)
        self.proc_sink = _Copier(self.opts, self.caps)  # their digests and linked files
        self.in_flight = 0
        # The work item being gathered by the walk: up to _BATCH files, of as many folders as
        # it takes (each folder in it has one more ``pending``).
        self.item: _Item = []
        self.item_files = 0
        # Folders without files listed since work was last handed on or collected: after
        # _BATCH of them the item is handed on even if not full, and finished work collected,
        # so that checkpoints and progress keep moving through a long run of empty folders.
        self.quiet_dirs = 0
        self.done_files = 0
        self.done_bytes = 0
        self.copiers = [self.inline]
        # Hard links inside the source: (dev, inode) -> first destination path. Later names are
        # linked at the end, once every worker is done (the first name may still be in flight).
        self.first_name: dict[tuple[int, int], str] = {}
        self.later_names: list[tuple[str, str, _Dir]] = []
        # Every symlink copied (path relative to the top -> target): judged once the whole
        # tree is known, since a link may lead through another (symlink_escape).
        self.links: dict[str, str] = {}

    # ---- dispatching

    def _threads_pay(self) -> bool:
        """Auto mode: start the workers once copying files turns out to be expensive enough.

        Threads pay when a file costs the kernel more than the GIL hand-offs they add: creating
        inodes on a journaling filesystem on a VM, big files, network filesystems. They lose
        where a file costs only a few microseconds (tmpfs, reflinks), where Python itself is the
        bottleneck and two threads just take turns on the GIL. So the first files are copied
        on this thread while timing them, and the decision is revisited as the copy goes on (a
        build may start with small files and go on with big ones).
        """
        if not self.auto:
            return True
        if self.inline_files < _PROBE_FILES:
            return False
        return self.inline_seconds / self.inline_files > _THREADS_WORTH_S

    def _procs_pay(self) -> bool:
        """Auto mode: hand files to worker processes once the first files show that Python's
        own per-file work, not the kernel's, is what a file costs: they were clones, or
        compared with the previous release (--link-unchanged: read and hashed, then linked), or
        plain copies that averaged no more than ``_THREADS_WORTH_S`` each (tmpfs, or a disk
        whose writes land in the page cache).

        Threads lose there (they take turns on the GIL); processes do not share one. Files that
        cost more (inode creation on a journaling filesystem, big files) are kernel work that
        runs without the GIL: threads overlap it as well, and ``_threads_pay`` starts them.
        """
        if self.procs != "1":
            if self.jobs <= 1 or self.inline_files < _PROC_PROBE_FILES:
                return False
            compares = self.link_dest is not None and not self.opts.trust_mtime
            cheap = self.inline_seconds / self.inline_files <= _THREADS_WORTH_S
            if not (self.inline.stats.cloned or compares or cheap):
                return False
        from . import _copy_procs

        return _copy_procs.available()

    def _start_procs(self) -> None:
        from ._copy_procs import ProcPool

        # This process copies too, whenever the workers have enough queued (see _dispatch):
        # one worker fewer than jobs. Forced (tests): two, so that they really interleave.
        workers = 2 if self.procs == "1" else max(1, self.jobs - 1)
        try:
            self.pool = ProcPool(workers, lambda: _Copier(self.opts, self.caps), self.proc_stats,
                                 self.proc_sink)
        except OSError as exc:  # fork or pipe refused (process or memory limits): copy here
            from . import _log

            _log.debug("no copy worker processes: %s", exc)
            self.procs = "0"
            return
        self.stats.jobs = workers + 1

    def _add(self, node: _Dir, batch: _Files) -> None:
        """Put some of ``node``'s files into the item being gathered; hand it on once full."""
        node.pending += 1  # the folder is not finished before these files are done
        self.item.append((node, batch, node.link is not None))
        self.item_files += len(batch)
        if self.item_files >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        """Hand on the item being gathered, if any."""
        item = self.item
        if item:
            self.item = []
            self.item_files = self.quiet_dirs = 0
            self._dispatch(item)

    def _keep_moving(self) -> None:
        """Hand on the item being gathered, or collect what the workers finished."""
        self.quiet_dirs = 0
        if self.item:
            self._flush()  # which collects too
        elif self.in_flight:
            self._collect(block=False)

    def _dispatch(self, item: _Item) -> None:
        if self.links_here:
            for i, (node, batch, link) in enumerate(item):
                if not link:
                    continue
                # Hard links to the previous release are cheap (one lstat, one link): made
                # here, so that only the files that really need copying are timed and maybe
                # handed on.
                src, dst, old = node.src, node.dst, node.link
                rest: _Files = []
                for name, st in batch:
                    if self.inline.try_link(f"{src}/{name}", f"{dst}/{name}", f"{old}/{name}", st):
                        self._file_done(st)
                    else:
                        rest.append((name, st))
                item[i] = (node, rest, False)
        if self.pool is None and self.procs != "0" and self._procs_pay():
            self._start_procs()
        if (self.pool is None and (self.jobs <= 1 or not self._threads_pay())) or (
                self.pool is not None and self.pool.full()):
            copier = self.inline
            for node, batch, link in item:
                src, dst = node.src, node.dst
                old = node.link if link else None
                started = time.perf_counter()
                for name, st in batch:
                    copier.file(f"{src}/{name}", f"{dst}/{name}",
                                f"{old}/{name}" if old is not None else None, st)
                    self._file_done(st)
                self.inline_seconds += time.perf_counter() - started
                self.inline_files += len(batch)
                self._release(node)
            return
        if self.pool is None:
            self.pool = _Pool(self.jobs, lambda: _Copier(self.opts, self.caps))
            self.copiers += self.pool.copiers
            self.stats.jobs = self.jobs
        self.in_flight += 1
        while not self.pool.put(item, timeout=0.05):
            self._collect(block=False)  # keep checkpoints and progress going meanwhile
        self._collect(block=False)

    def _collect(self, block: bool) -> None:
        assert self.pool is not None
        while self.in_flight:
            # A timeout, not a plain blocking get: keeps the calling thread responsive.
            got = self.pool.get(0.2 if block else None)
            if got is None:
                if block:
                    continue
                return
            item, done, error = got
            self.in_flight -= 1
            # Files are done in the item's order: every folder before the one that stopped
            # (error) is complete, that one has its first files done, the rest none.
            for node, batch, _link in item:
                self._files_done(batch if done >= len(batch) else batch[:done])
                if done < len(batch):
                    break
                done -= len(batch)
                self._release(node)
            if error is not None:
                raise error

    def _file_done(self, st: os.stat_result) -> None:
        self.done_files += 1
        self.done_bytes += st.st_size
        self.checkpoint("copy-file")
        if self.progress is not None:
            self.progress(self.done_files, self.done_bytes)

    def _files_done(self, batch: _Files) -> None:
        """_file_done for each of ``batch``, in one call (one per folder of an item)."""
        checkpoint, progress = self.checkpoint, self.progress
        for _name, st in batch:
            self.done_files += 1
            self.done_bytes += st.st_size
            checkpoint("copy-file")
            if progress is not None:
                progress(self.done_files, self.done_bytes)

    def _release(self, node: _Dir | None) -> None:
        """One piece of work inside ``node`` is done; finish folders that have nothing left."""
        while node is not None:
            node.pending -= 1
            if node.pending:
                return
            self._finish_dir(node)
            node = node.parent

    def _finish_dir(self, node: _Dir) -> None:
        mode, uid, gid, atime, mtime = node.meta
        if self.opts.root:
            made = self.top_owner if node.parent is None else self.made_owner
            if made is None:
                made_st = os.lstat(node.dst)
                made = self.made_owner = (made_st.st_uid, made_st.st_gid)
            if (uid, gid) != made:
                os.chown(node.dst, uid, gid)
        _copy_xattrs(node.src, node.dst)
        # Mode and times last: adding entries changes mtime, and a read-only folder would have
        # refused its own children.
        os.chmod(node.dst, stat.S_IMODE(mode))
        os.utime(node.dst, ns=(atime, mtime))
        if self.fsync_each:
            # The same call everywhere but macOS, where fsync_dir adds a drive-cache flush
            # (F_FULLFSYNC) per folder; there the one drive_barrier at the end covers them all.
            if _platform.IS_MACOS:
                _platform.fsync_dir_nobarrier(node.dst)
            else:
                _platform.fsync_dir(node.dst)

    # ---- the walk

    def run(self) -> CopyStats:
        try:
            self._walk()
            if self.pool is not None:
                self._collect(block=True)
                self.pool.close()
                self.pool = None
            for first, dpath, node in self.later_names:
                os.link(first, dpath, follow_symlinks=False)
                self.done_files += 1
                self.checkpoint("copy-file")
                if self.progress is not None:
                    self.progress(self.done_files, self.done_bytes)
                self._release(node)
        except BaseException:
            if self.pool is not None:
                self.pool.stop = True
                self.pool.close()
            raise
        for c in self.copiers:
            self.stats.add(c.stats)
        self.stats.add(self.proc_stats)
        links = self.links
        self.stats.external_links = [(key, links[key]) for key in sorted(links)
                                     if symlink_escape(links, key) == "outside"]
        if self.record is not None:
            self._fill_record(self.record)
        if self.fsync_each:
            _platform.drive_barrier(self.dst_root)
        return self.stats

    def _fill_record(self, record: CopyRecord) -> None:
        """Destination paths -> paths relative to the release, from every copier."""
        cut = len(self.dst_root) + 1
        digests = record.digests
        for c in [*self.copiers, self.proc_sink]:  # moved, never held twice
            if not digests:
                digests = record.digests = c.digests
            else:
                digests.update(c.digests)
            c.digests = {}
            record.linked.extend(c.linked)
            c.linked = []
        for first, dpath, _node in self.later_names:  # the same inode as their first name
            if first[cut:] in digests:
                digests[dpath[cut:]] = digests[first[cut:]]

    def _walk(self) -> None:
        st = os.stat(self.src_root)
        link_root = self.link_dest if self.link_dest and _is_real_dir(self.link_dest) else None
        stack = [_Dir(self.src_root, self.dst_root, link_root, st, None)]
        stats = self.stats
        add = self.record.add if self.record is not None else None
        cut = len(self.dst_root) + 1
        is_reg, is_dir, is_link = stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK  # per entry
        while stack:
            node = stack.pop()
            batch: _Files = []
            room = _BATCH - self.item_files  # files that still fit into the item
            prefix = node.dst[cut:] + "/" if len(node.dst) > cut else ""
            with os.scandir(node.src) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    mode = st.st_mode
                    if add is not None and not is_link(mode):
                        add(prefix + entry.name, st, None)
                    if is_reg(mode):
                        stats.files += 1
                        if st.st_nlink > 1 and self._later_name(node, entry.name, st):
                            continue
                        stats.bytes += st.st_size
                        batch.append((entry.name, st))
                        if len(batch) >= room:
                            self._add(node, batch)  # and hands the full item on
                            batch = []
                            room = _BATCH
                    elif is_dir(mode):
                        dpath = f"{node.dst}/{entry.name}"
                        os.mkdir(dpath, 0o700)
                        link = None
                        if node.link is not None:
                            candidate = os.path.join(node.link, entry.name)
                            link = candidate if _is_real_dir(candidate) else None
                        node.pending += 1
                        stack.append(_Dir(entry.path, dpath, link, st, node))
                        stats.dirs += 1
                    elif is_link(mode):
                        target = _copy_symlink(entry.path, f"{node.dst}/{entry.name}", st)
                        self.links[prefix + entry.name] = target
                        if add is not None:
                            add(prefix + entry.name, st, target)
                        stats.symlinks += 1
                    else:
                        kind = ("socket" if stat.S_ISSOCK(mode) else "FIFO" if stat.S_ISFIFO(mode)
                                else "device file")
                        raise InvalidInput(
                            f"source contains a {kind} at {show(entry.path)}; releases may hold "
                            "only regular files, folders and symlinks"
                        )
            if batch:
                self._add(node, batch)
            else:
                self.quiet_dirs += 1
                if self.quiet_dirs >= _BATCH:
                    self._keep_moving()
            self._release(node)  # its listing is done
        self._flush()

    def _later_name(self, node: _Dir, name: str, st: os.stat_result) -> bool:
        """Remember a hard-linked file; True if it is a later name of one already seen."""
        key = (st.st_dev, st.st_ino)
        dpath = os.path.join(node.dst, name)
        first = self.first_name.get(key)
        if first is None:
            self.first_name[key] = dpath
            return False
        node.pending += 1  # the folder is not finished before this link exists
        self.later_names.append((first, dpath, node))
        self.stats.hardlinks += 1
        return True


def _is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def copy_tree(
    src: str,
    dst: str,
    checkpoint: Callable[[str], None],
    fsync_each: bool,
    *,
    link_dest: str | None = None,
    checksum: bool = False,
    link_writable: bool = False,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    trust_mtime: bool = False,
    digest_all: bool = False,
    prev_digests: Known | None = None,
    record: CopyRecord | None = None,
) -> CopyStats:
    """Copy the contents of ``src`` into the existing, empty folder ``dst``.

    ``fsync_each`` flushes every file and folder as it is written (platforms without a
    filesystem-wide sync; on macOS plain fsync per file, then one F_FULLFSYNC at the end);
    otherwise the caller flushes the whole filesystem once afterwards, or not at all.

    ``link_dest``: the previous release; files identical to its file at the same path, content
    included, are cloned from it or hard-linked to it instead of copied (see the module
    docstring); ``prev_digests`` is its manifest (path -> size, mtime_ns, digest), which spares
    reading its files; ``checksum`` reads them regardless; ``trust_mtime`` links on size and
    mtime alone, without reading anything; ``link_writable`` allows linking group/other-writable
    files. ``digest_all``: record every file's digest in ``record`` (a CopyRecord filled with
    what the release's manifest needs). ``jobs``: copy threads
    (1: everything on the calling thread; None: automatic, up to DEFAULT_JOBS threads, started
    only once the first files show that they pay, see ``_Tree._threads_pay``). ``progress(files, bytes)`` is
    called on the calling thread after every regular file.
    """
    if jobs is not None and jobs < 1:
        raise InvalidInput("--jobs must be at least 1", "nothing was changed")
    tree = _Tree(src, dst, checkpoint, fsync_each, link_dest, checksum, link_writable, jobs,
                 progress, trust_mtime, digest_all, prev_digests, record)
    if not tree.opts.digest_all or checksum:  # --checksum: read everything, trust nothing
        return tree.run()
    # Source files are hashed: through the source digest cache (_manifest.source_digests),
    # which is kept out of the source and of ROOT (dst is ROOT/releases/<staging>).
    with source_digests(src, avoid=(os.path.dirname(os.path.dirname(os.path.abspath(dst))),)):
        return tree.run()

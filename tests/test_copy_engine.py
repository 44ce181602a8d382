"""The copy engine's paths, each checked for a faithful copy, independent of speed.

Every data path (copy_file_range, read/write, FICLONE, clonefile, hard link to the previous
release), every thread count and the worker processes must give the same release: content,
modes (setuid too), mtimes, symlinks as links, empty and read-only folders, hard links inside
the source, xattrs where the filesystem has them, owners as root. Paths that need a given
filesystem or OS are simulated by replacing the one _platform function they call;
tests/test_perf_paths.py runs the real FICLONE on loop-mounted btrfs and XFS where it can.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from atomic_deploy import _copy, _copy_procs, _manifest, _platform
from atomic_deploy._copy import CopyStats, copy_tree
from atomic_deploy._manifest import CopyRecord, digest_file
from atomic_deploy.errors import InvalidInput, OperationFailed
from conftest import cli_env, hidden_entries, release_names, set_distinct_mtimes, wait_for

LINK_MTIME_KEPT = os.utime in os.supports_follow_symlinks
HAS_XATTR = hasattr(os, "setxattr")
IS_ROOT = os.geteuid() == 0


def nothing(step: str) -> None:
    return None


def _xattrs(p: str) -> dict[str, bytes]:
    if not HAS_XATTR:
        return {}
    try:
        return {n: os.getxattr(p, n, follow_symlinks=False)
                for n in sorted(os.listxattr(p, follow_symlinks=False))}
    except OSError:
        return {}


def meta(top: Path) -> dict[str, tuple[Any, ...]]:
    """What must survive a copy, per relative path (top itself is ".")."""
    out: dict[str, tuple[Any, ...]] = {}

    def add(p: str) -> None:
        st = os.lstat(p)
        rel = os.path.relpath(p, top)
        owner = (st.st_uid, st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p), st.st_mtime_ns if LINK_MTIME_KEPT else None, owner)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, owner, _xattrs(p))
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, owner, _xattrs(p),
                        Path(p).read_bytes())

    add(str(top))
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            add(os.path.join(dirpath, name))
    return out


def try_setxattr(p: Path, name: str, value: bytes) -> bool:
    if not HAS_XATTR:
        return False
    try:
        os.setxattr(p, name, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    return True


def rich_source(base: Path, many: int = 150) -> tuple[Path, bool]:
    """A source with everything the copier must keep; (source, xattrs were set)."""
    src = base / "src"
    files = {
        "index.html": b"<h1>hi</h1>\n",
        "bin/run.sh": b"#!/bin/sh\necho hi\n",
        "secret.key": b"s3cr3t\n",
        "ro/frozen.txt": b"frozen\n",
        "nested/a/b/deep.txt": b"deep\n",
        "hard/a.txt": b"linked\n",
        "empty.txt": b"",
        "big.bin": os.urandom(3 * 1024 * 1024 + 17),
    }
    # Enough files in one folder to fill several work batches (threads share a folder).
    files.update({f"many/f{i:04d}.js": f"// {i}\n".encode() * (i % 7) for i in range(many)})
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (src / "empty").mkdir()
    (src / "nested" / "empty" / "deeper").mkdir(parents=True)
    os.link(src / "hard" / "a.txt", src / "hard" / "b.txt")
    os.link(src / "hard" / "a.txt", src / "many" / "zz-link.txt")  # a later name in a batch
    os.symlink("index.html", src / "rel-link")
    os.symlink("../index.html", src / "nested" / "up-link")
    os.symlink("does/not/exist", src / "dangling")
    os.symlink(str(base), src / "outside-link")
    os.symlink("nested", src / "dir-link")
    os.chmod(src / "bin" / "run.sh", 0o755)
    os.chmod(src / "secret.key", 0o600)
    os.chmod(src / "ro" / "frozen.txt", 0o444)
    os.chmod(src / "ro", 0o555)
    if IS_ROOT:
        os.chown(src / "index.html", 65534, 65534)
        os.chown(src / "nested", 1234, 4321)
        os.lchown(src / "rel-link", 4321, 1234)
        os.chmod(src / "bin" / "run.sh", 0o4755)  # setuid survives the chown before chmod
        os.chown(src / "bin" / "run.sh", 65534, 65534)
        os.chmod(src / "bin" / "run.sh", 0o4755)
    with_xattrs = try_setxattr(src / "index.html", "user.origin", b"build 42")
    if with_xattrs:
        try_setxattr(src / "nested", "user.kind", b"folder")
        try_setxattr(src / "big.bin", "user.empty", b"")
    set_distinct_mtimes(src)
    return src, with_xattrs


def copy(src: Path, dst: Path, **kw: Any) -> CopyStats:
    dst.mkdir(mode=0o700)
    return copy_tree(str(src), str(dst), kw.pop("checkpoint", nothing), kw.pop("fsync_each", False),
                     **kw)


def check_same(src: Path, dst: Path) -> None:
    assert meta(dst) == meta(src)
    a, b, c = (os.stat(dst / p) for p in ("hard/a.txt", "hard/b.txt", "many/zz-link.txt"))
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert a.st_ino != os.stat(src / "hard" / "a.txt").st_ino
    assert os.stat(dst / "index.html").st_ino != os.stat(src / "index.html").st_ino
    for name in ("rel-link", "dangling", "outside-link", "dir-link"):
        assert os.path.islink(dst / name)


@pytest.fixture(autouse=True)
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread and probe tests must not depend on the test folder's filesystem: where it clones
    (btrfs, XFS), auto mode would hand files to worker processes. Their own tests set it."""
    monkeypatch.setenv(_copy.PROCESSES_ENV, "0")


@pytest.fixture(autouse=True)
def no_stray_threads() -> Any:
    """Every path must join its workers before returning or raising."""
    before = {t.ident for t in threading.enumerate()}
    yield
    left = [t for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("atomic-deploy-copy")]
    assert not left, left


# --------------------------------------------------------------------------- plain paths


@pytest.mark.skipif(not IS_ROOT, reason="owners are kept as root only")
@pytest.mark.parametrize("top_owner", [(0, 4321), (1234, 0)])
def test_folder_owners_kept_whatever_the_staging_folder_gives(
        tmp_path: Path, top_owner: tuple[int, int]) -> None:
    """Folders are chowned only where they do not already have the source's owner: what they
    get when made (here a setgid staging folder of another group, or of another user) must not
    be mistaken for it."""
    src = web(tmp_path, n=30)
    (src / "d0" / "sub").mkdir()
    os.chown(src / "d1", 1234, 4321)
    dst = tmp_path / "dst"
    dst.mkdir(mode=0o700)
    os.chown(dst, *top_owner)
    os.chmod(dst, 0o2700)  # setgid: folders made inside get its group
    copy_tree(str(src), str(dst), nothing, False, jobs=1)
    for p in [dst, *dst.rglob("*")]:
        st, want = os.lstat(p), os.lstat(src / p.relative_to(dst))
        assert (st.st_uid, st.st_gid) == (want.st_uid, want.st_gid), p
        assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(want.st_mode), p


@pytest.mark.parametrize("jobs", [1, 2, 4])
@pytest.mark.parametrize("fsync_each", [False, True])
def test_default_path_keeps_everything(tmp_path: Path, jobs: int, fsync_each: bool) -> None:
    src, _ = rich_source(tmp_path)
    stats = copy(src, tmp_path / "dst", jobs=jobs, fsync_each=fsync_each)
    check_same(src, tmp_path / "dst")
    regular = 8 + 150 + 2  # named files, many/, two later hard-link names
    assert stats.files == regular
    assert stats.hardlinks == 2
    assert stats.copied + stats.cloned == regular - 2
    assert stats.linked == 0
    assert stats.symlinks == 5
    assert stats.jobs == jobs


def test_xattrs_copied_where_supported(tmp_path: Path) -> None:
    src, with_xattrs = rich_source(tmp_path, many=3)
    if not with_xattrs:
        pytest.skip("this filesystem takes no user.* xattrs")
    copy(src, tmp_path / "dst", jobs=2)
    assert os.getxattr(tmp_path / "dst" / "index.html", "user.origin") == b"build 42"
    assert os.getxattr(tmp_path / "dst" / "nested", "user.kind") == b"folder"
    assert os.getxattr(tmp_path / "dst" / "big.bin", "user.empty") == b""


def test_xattr_the_destination_refuses_is_skipped(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src, with_xattrs = rich_source(tmp_path, many=3)
    if not with_xattrs:
        pytest.skip("this filesystem takes no user.* xattrs")

    def refuse(*args: Any, **kw: Any) -> None:
        raise OSError(errno.EOPNOTSUPP, "no xattrs here")

    monkeypatch.setattr(os, "setxattr", refuse)
    copy(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "index.html").read_bytes() == b"<h1>hi</h1>\n"
    assert os.listxattr(tmp_path / "dst" / "index.html") == []


def test_read_write_fallback_probes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def refuse(src_fd: int, dst_fd: int, size: int) -> int:
        calls.append(size)
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(_platform, "copy_range", refuse)
    monkeypatch.setattr(_platform, "clone_kind", lambda: None)
    src, _ = rich_source(tmp_path)
    stats = copy(src, tmp_path / "dst", jobs=1)
    check_same(src, tmp_path / "dst")
    assert len(calls) == 1  # one refusal for the filesystem pair, not one per file
    assert stats.copied == stats.files - stats.hardlinks


def test_real_copy_range_error_is_raised_not_hidden(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src_fd: int, dst_fd: int, size: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_platform, "copy_range", full)
    src, _ = rich_source(tmp_path, many=40)
    for jobs in (1, 4):
        with pytest.raises(OSError) as info:
            copy(src, tmp_path / f"dst{jobs}", jobs=jobs)
        assert info.value.errno == errno.ENOSPC


def test_copy_range_partial_then_refusal_is_an_error(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Bytes already moved: falling back would duplicate them; the refusal must surface.
    def half(src_fd: int, dst_fd: int, size: int) -> int:
        os.write(dst_fd, b"x")
        raise OSError(errno.EINVAL, "gave up")

    monkeypatch.setattr(_platform, "copy_range", half)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"hello")
    with pytest.raises(OSError):
        copy(tmp_path / "src", tmp_path / "dst")


def test_copy_range_copies_past_a_stale_size(tmp_path: Path) -> None:
    # The size from stat is a hint: a file that grew is copied to its end, as cp does.
    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "in").write_bytes(data)
    sfd = os.open(tmp_path / "in", os.O_RDONLY)
    dfd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if not hasattr(os, "copy_file_range"):
            pytest.skip("not Linux: no os.copy_file_range")
        assert _platform.copy_range(sfd, dfd, 10) == len(data)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert (tmp_path / "out").read_bytes() == data


# --------------------------------------------------------------------------- clones


def _fake_clone(src_fd: int, dst_fd: int) -> None:
    # Stands in for FICLONE: the whole file, from offset 0, without moving src_fd's offset.
    os.lseek(dst_fd, 0, os.SEEK_SET)
    off = 0
    while True:
        buf = os.pread(src_fd, 1 << 20, off)
        if not buf:
            return
        os.write(dst_fd, buf)
        off += len(buf)


def test_ficlone_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def clone(src_fd: int, dst_fd: int) -> None:
        calls.append(src_fd)
        _fake_clone(src_fd, dst_fd)

    monkeypatch.setattr(_platform, "clone_kind", lambda: "ficlone")
    monkeypatch.setattr(_platform, "clone_fd", clone)
    src, _ = rich_source(tmp_path)
    stats = copy(src, tmp_path / "dst", jobs=3)
    check_same(src, tmp_path / "dst")
    non_empty = sum(1 for p in src.rglob("*") if p.is_file() and not p.is_symlink()
                    and p.stat().st_size and p.stat().st_nlink == 1) + 1  # + the hard-linked one
    assert stats.cloned == non_empty == len(calls)
    assert stats.copied == stats.files - stats.hardlinks - stats.cloned  # the empty files


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY])
def test_ficlone_refused_falls_back_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         code: int) -> None:
    calls: list[int] = []

    def refuse(src_fd: int, dst_fd: int) -> None:
        calls.append(src_fd)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_platform, "clone_kind", lambda: "ficlone")
    monkeypatch.setattr(_platform, "clone_fd", refuse)
    src, _ = rich_source(tmp_path)
    stats = copy(src, tmp_path / "dst", jobs=1)
    check_same(src, tmp_path / "dst")
    assert len(calls) == 1
    assert stats.cloned == 0


def test_ficlone_real_error_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(src_fd: int, dst_fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(_platform, "clone_kind", lambda: "ficlone")
    monkeypatch.setattr(_platform, "clone_fd", broken)
    src, _ = rich_source(tmp_path, many=3)
    with pytest.raises(OSError) as info:
        copy(src, tmp_path / "dst", jobs=2)
    assert info.value.errno == errno.EIO


def _fake_clonefile(src: str, dst: str) -> None:
    # clonefile(2) semantics: creates dst (must not exist) with the data, mode and times.
    st = os.lstat(src)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(src, "rb") as f:
            os.write(fd, f.read())
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)  # not the owner: NOOWNERCOPY
    finally:
        os.close(fd)


def test_clonefile_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def clonefile(src: str, dst: str) -> None:
        calls.append(src)
        _fake_clonefile(src, dst)

    monkeypatch.setattr(_platform, "clone_kind", lambda: "clonefile")
    monkeypatch.setattr(_platform, "clonefile", clonefile)
    src, with_xattrs = rich_source(tmp_path)
    if with_xattrs:  # the fake does not clone xattrs (the real one does): leave none to compare
        for p in ("index.html", "nested", "big.bin"):
            for n in os.listxattr(src / p):
                os.removexattr(src / p, n)
    stats = copy(src, tmp_path / "dst", jobs=2, fsync_each=True)
    check_same(src, tmp_path / "dst")
    assert stats.cloned == len(calls) > 100


def test_clonefile_refused_falls_back_once(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def refuse(src: str, dst: str) -> None:
        calls.append(src)
        raise OSError(errno.ENOTSUP, "not APFS")

    monkeypatch.setattr(_platform, "clone_kind", lambda: "clonefile")
    monkeypatch.setattr(_platform, "clonefile", refuse)
    src, _ = rich_source(tmp_path)
    stats = copy(src, tmp_path / "dst", jobs=1)
    check_same(src, tmp_path / "dst")
    assert len(calls) == 1 and stats.cloned == 0


# --------------------------------------------------------------------------- link_dest


def _prev_release(tmp_path: Path, src: Path) -> Path:
    prev = tmp_path / "prev"
    copy(src, prev)
    return prev


def web(tmp_path: Path, n: int = 120) -> Path:
    src = tmp_path / "build"
    for i in range(n):
        p = src / f"d{i % 6}" / f"f{i:03d}.js"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"console.log({i});\n" * (i % 5 + 1))
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    (src / "empty").mkdir()
    return src


@pytest.mark.parametrize("jobs", [1, 4, None])
def test_link_unchanged_links_identical_files_only(tmp_path: Path, jobs: int | None) -> None:
    src = web(tmp_path)
    prev = _prev_release(tmp_path, src)
    # Change three files: new content and mtime; same size and mtime but new bytes (what a
    # reproducible build does); same bytes but another mode.
    changed = src / "d0" / "f000.js"
    changed.write_text("changed\n")
    sneaky = src / "d1" / "f001.js"
    st = sneaky.stat()
    sneaky.write_bytes(b"X" * st.st_size)
    os.utime(sneaky, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(src / "d2" / "f002.js", 0o600)

    record = CopyRecord(with_digests=True)
    stats = copy(src, tmp_path / "dst", link_dest=str(prev), jobs=jobs, record=record)
    assert meta(tmp_path / "dst") == meta(src)  # the same-size, same-mtime edit is seen
    assert stats.linked == 117 and stats.copied == 3
    for i in range(3, 120):
        rel = f"d{i % 6}/f{i:03d}.js"
        assert os.stat(tmp_path / "dst" / rel).st_ino == os.stat(prev / rel).st_ino, rel
    for rel in ("d0/f000.js", "d1/f001.js"):
        assert os.stat(tmp_path / "dst" / rel).st_ino != os.stat(prev / rel).st_ino
    assert sorted(record.linked) == sorted(f"d{i % 6}/f{i:03d}.js" for i in range(3, 120))
    assert record.digests == {  # every file's content was read, and its digest kept
        f"d{i % 6}/f{i:03d}.js": digest_file(str(src / f"d{i % 6}/f{i:03d}.js"))
        for i in range(120)}

    for checksum in (False, True):  # the previous release's manifest, or reading its files
        digests = {} if checksum else {
            rel: (os.stat(prev / rel).st_size, os.stat(prev / rel).st_mtime_ns, h)
            for rel, h in record.digests.items() if rel != "d1/f001.js"}
        out = tmp_path / f"dst-{checksum}"
        stats = copy(src, out, link_dest=str(prev), checksum=checksum, jobs=jobs,
                     prev_digests=digests)
        assert meta(out) == meta(src)
        assert stats.linked == 117 and stats.copied == 3

    # The old quick check, only on request: it ships the previous release's bytes.
    stats = copy(src, tmp_path / "dst2", link_dest=str(prev), trust_mtime=True, jobs=jobs)
    assert meta(tmp_path / "dst2") == meta(src) | {"d1/f001.js": meta(prev)["d1/f001.js"]}
    assert stats.linked == 118 and stats.copied == 2


def test_link_unchanged_never_links_group_or_world_writable(tmp_path: Path) -> None:
    src = web(tmp_path, n=12)
    os.chmod(src / "d0" / "f000.js", 0o664)
    os.chmod(src / "d1" / "f001.js", 0o646)
    prev = _prev_release(tmp_path, src)
    stats = copy(src, tmp_path / "dst", link_dest=str(prev))
    assert stats.linked == 10 and stats.copied == 2
    assert os.stat(tmp_path / "dst/d0/f000.js").st_ino != os.stat(prev / "d0/f000.js").st_ino
    stats = copy(src, tmp_path / "dst2", link_dest=str(prev), link_writable=True)
    assert stats.linked == 12
    assert meta(tmp_path / "dst2") == meta(src)


def test_link_unchanged_does_not_follow_symlinks_in_the_previous_release(tmp_path: Path) -> None:
    src = web(tmp_path, n=12)
    prev = _prev_release(tmp_path, src)
    # A folder of the previous release replaced by a link to a copy elsewhere; and a file by a
    # link: neither may be linked through.
    elsewhere = tmp_path / "elsewhere"
    os.rename(prev / "d0", elsewhere)
    os.symlink(str(elsewhere), prev / "d0")
    os.rename(prev / "d1" / "f001.js", tmp_path / "f001.js")
    os.symlink(str(tmp_path / "f001.js"), prev / "d1" / "f001.js")
    stats = copy(src, tmp_path / "dst", link_dest=str(prev))
    assert meta(tmp_path / "dst") == meta(src)
    assert stats.copied == 3  # d0 holds f000, f006; d1/f001 was a link
    for p in elsewhere.iterdir():
        assert p.stat().st_nlink == 1


def test_link_unchanged_other_owner_or_xattrs_copied(tmp_path: Path) -> None:
    src = web(tmp_path, n=12)
    prev = _prev_release(tmp_path, src)
    expect_copied = 0
    if IS_ROOT:
        os.chown(prev / "d0" / "f000.js", 65534, 65534)
        expect_copied += 1
    if try_setxattr(prev / "d1" / "f001.js", "user.stale", b"1"):
        expect_copied += 1
    if not expect_copied:
        pytest.skip("needs root or user xattrs")
    stats = copy(src, tmp_path / "dst", link_dest=str(prev))
    assert stats.copied == expect_copied
    assert meta(tmp_path / "dst") == meta(src)


@pytest.mark.parametrize("code", [errno.EMLINK, errno.EXDEV, errno.EPERM])
def test_link_refused_falls_back_to_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         code: int) -> None:
    src = web(tmp_path, n=12)
    prev = _prev_release(tmp_path, src)
    real_link = os.link

    def link(a: Any, b: Any, **kw: Any) -> None:
        if str(a).startswith(str(prev)):
            raise OSError(code, os.strerror(code))
        real_link(a, b, **kw)

    monkeypatch.setattr(os, "link", link)
    stats = copy(src, tmp_path / "dst", link_dest=str(prev))
    assert stats.linked == 0 and stats.copied == 12
    assert meta(tmp_path / "dst") == meta(src)


def test_link_dest_missing_or_not_a_folder(tmp_path: Path) -> None:
    src = web(tmp_path, n=5)
    stats = copy(src, tmp_path / "dst", link_dest=str(tmp_path / "nope"))
    assert stats.copied == 5
    os.symlink(str(src), tmp_path / "alias")
    stats = copy(src, tmp_path / "dst2", link_dest=str(tmp_path / "alias"))
    assert stats.copied == 5 and stats.linked == 0


@pytest.mark.parametrize("jobs", [2, None])
def test_link_unchanged_keeps_source_hard_links_together(tmp_path: Path, jobs: int | None) -> None:
    src = web(tmp_path, n=12)
    os.link(src / "d0" / "f000.js", src / "d1" / "same.js")
    prev = _prev_release(tmp_path, src)
    stats = copy(src, tmp_path / "dst", link_dest=str(prev), jobs=jobs)
    a, b = os.stat(tmp_path / "dst/d0/f000.js"), os.stat(tmp_path / "dst/d1/same.js")
    assert a.st_ino == b.st_ino == os.stat(prev / "d0/f000.js").st_ino
    assert stats.hardlinks == 1
    assert meta(tmp_path / "dst") == meta(src)


@pytest.mark.parametrize("kind", ["ficlone", "clonefile"])
def test_link_unchanged_clones_from_the_previous_release_where_the_filesystem_can(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A clone shares the data too, but a write to it stays in its release: unchanged files
    are cloned from the previous release (never hard-linked) where clones work."""
    src = web(tmp_path, n=30)
    (src / "empty.txt").write_text("")
    prev = _prev_release(tmp_path, src)
    (src / "d0" / "f000.js").write_text("changed\n")
    cloned_from: list[str] = []

    def clone_fd(a: int, b: int) -> None:
        cloned_from.append(os.readlink(f"/proc/self/fd/{a}"))
        _fake_clone(a, b)

    def clonefile(a: str, b: str) -> None:
        cloned_from.append(a)
        _fake_clonefile(a, b)

    monkeypatch.setattr(_platform, "clone_kind", lambda: kind)
    monkeypatch.setattr(_platform, "clone_fd", clone_fd)
    monkeypatch.setattr(_platform, "clonefile", clonefile)
    record = CopyRecord()
    stats = copy(src, tmp_path / "dst", link_dest=str(prev), record=record)
    assert meta(tmp_path / "dst") == meta(src)
    assert stats.linked == 0 and record.linked == []
    assert stats.cloned == 30  # 29 unchanged from prev, the changed one from the source
    assert sum(p.startswith(str(prev)) for p in cloned_from) == 29
    assert stats.copied == 1  # the empty file: created, not shared
    for p in (tmp_path / "dst").rglob("*"):
        if p.is_file():
            assert p.stat().st_nlink == 1, p


def test_link_unchanged_where_clones_are_refused_hard_links(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = web(tmp_path, n=12)
    prev = _prev_release(tmp_path, src)

    def refuse(a: int, b: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "no")

    monkeypatch.setattr(_platform, "clone_kind", lambda: "ficlone")
    monkeypatch.setattr(_platform, "clone_fd", refuse)
    record = CopyRecord()
    stats = copy(src, tmp_path / "dst", link_dest=str(prev), record=record)
    assert stats.linked == 12 and len(record.linked) == 12 and stats.cloned == 0
    assert meta(tmp_path / "dst") == meta(src)


# --------------------------------------------------------------------------- seams


@pytest.mark.parametrize("jobs", [1, 4])
def test_checkpoint_once_per_regular_file_and_progress(tmp_path: Path, jobs: int) -> None:
    src, _ = rich_source(tmp_path)
    steps: list[str] = []
    seen: list[tuple[int, int]] = []
    stats = copy(src, tmp_path / "dst", jobs=jobs, checkpoint=steps.append,
                 progress=lambda f, b: seen.append((f, b)))
    assert steps == ["copy-file"] * stats.files
    assert seen == sorted(seen)
    assert seen[-1] == (stats.files, stats.bytes)
    assert threading.current_thread() is threading.main_thread()


class StopAt:
    """A checkpoint that raises StopAt.Stop on its n-th call (a signal arriving mid-copy)."""

    class Stop(Exception):
        pass

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, step: str) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise StopAt.Stop


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_checkpoint_raising_stops_all_work(tmp_path: Path, jobs: int) -> None:
    src, _ = rich_source(tmp_path, many=600)
    stop = StopAt(5)
    with pytest.raises(StopAt.Stop):
        copy(src, tmp_path / "dst", jobs=jobs, checkpoint=stop)
    # Workers were joined before the raise: nothing changes in the staging folder afterwards.
    first = sorted(str(p) for p in (tmp_path / "dst").rglob("*"))
    assert first == sorted(str(p) for p in (tmp_path / "dst").rglob("*"))
    assert stop.calls == 5


@pytest.mark.parametrize("jobs", [1, 4])
def test_special_files_refused_with_threads(tmp_path: Path, jobs: int) -> None:
    src, _ = rich_source(tmp_path)
    os.mkfifo(src / "many" / "pipe")
    with pytest.raises(InvalidInput) as info:
        copy(src, tmp_path / "dst", jobs=jobs)
    assert "FIFO" in str(info.value) and str(src / "many" / "pipe") in str(info.value)


def test_jobs_must_be_positive(tmp_path: Path) -> None:
    src = web(tmp_path, n=2)
    with pytest.raises(InvalidInput):
        copy(src, tmp_path / "dst", jobs=0)


def test_default_jobs_is_sane() -> None:
    assert 1 <= _copy.DEFAULT_JOBS <= 8


def test_deep_tree_and_wide_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src.joinpath(*[f"l{i}" for i in range(60)])
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("leaf\n")
    wide = src / "wide"
    wide.mkdir()
    for i in range(700):
        (wide / f"{i}").write_bytes(b"w" * (i % 3))
    stats = copy(src, tmp_path / "dst", jobs=4)
    assert stats.files == 701 and stats.dirs == 61
    assert meta(tmp_path / "dst") == meta(src)


def test_source_given_as_symlink_keeps_real_folder_meta(tmp_path: Path) -> None:
    src = web(tmp_path, n=3)
    os.chmod(src, 0o751)
    os.symlink(str(src), tmp_path / "latest")
    dst = tmp_path / "dst"
    copy(tmp_path / "latest", dst)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o751
    assert meta(dst) == meta(src)


def test_workers_error_in_many_threads_is_raised_once(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real_open: Callable[..., int] = os.open
    src = web(tmp_path, n=300)

    def flaky(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if str(path).endswith("f150.js") and flags & os.O_CREAT:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", flaky)
    with pytest.raises(OSError) as info:
        copy(src, tmp_path / "dst", jobs=4)
    assert info.value.errno == errno.EIO and "f150.js" in str(info.value.filename)


@pytest.mark.parametrize("worth", [0.0, 10.0])
def test_auto_jobs_starts_threads_only_when_files_are_expensive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worth: float) -> None:
    monkeypatch.setattr(_copy, "_PROBE_FILES", 20)
    monkeypatch.setattr(_copy, "_THREADS_WORTH_S", worth)  # 0: every file "pays"; 10 s: none
    monkeypatch.setattr(_copy, "DEFAULT_JOBS", 3)
    src, _ = rich_source(tmp_path, many=400)
    stats = copy(src, tmp_path / "dst")
    check_same(src, tmp_path / "dst")
    assert stats.jobs == (3 if worth == 0.0 else 1)


def test_auto_mode_links_here_and_copies_changed_files_on_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_copy, "_PROBE_FILES", 5)
    monkeypatch.setattr(_copy, "_THREADS_WORTH_S", 0.0)
    monkeypatch.setattr(_copy, "DEFAULT_JOBS", 2)
    src = web(tmp_path, n=300)
    prev = _prev_release(tmp_path, src)
    for i in range(0, 300, 10):  # 30 changed files, spread over all folders
        p = src / f"d{i % 6}" / f"f{i:03d}.js"
        p.write_text(f"changed {i}\n")
    steps: list[str] = []
    stats = copy(src, tmp_path / "dst", link_dest=str(prev), checkpoint=steps.append)
    assert stats.linked == 270 and stats.copied == 30 and stats.jobs == 2
    assert len(steps) == 300
    assert meta(tmp_path / "dst") == meta(src)


# --------------------------------------------------------------------------- worker processes


def record_forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids os.fork gives from now on (the copy workers), to check they were waited for."""
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return pids


@pytest.fixture
def forked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Force worker processes; returns the pids forked, to check they were all waited for."""
    monkeypatch.setenv(_copy.PROCESSES_ENV, "1")
    return record_forks(monkeypatch)


def assert_reaped(pids: list[int]) -> None:
    assert pids
    for pid in pids:
        with pytest.raises(ChildProcessError):  # already waited for by copy_tree
            os.waitpid(pid, os.WNOHANG)


@pytest.mark.parametrize("fsync_each", [False, True])
def test_worker_processes_keep_everything(tmp_path: Path, forked: list[int],
                                          fsync_each: bool) -> None:
    src, _ = rich_source(tmp_path, many=400)
    stats = copy(src, tmp_path / "dst", fsync_each=fsync_each)
    check_same(src, tmp_path / "dst")
    regular = 8 + 400 + 2
    assert stats.files == regular and stats.hardlinks == 2
    assert stats.copied + stats.cloned == regular - 2  # counted in the workers, added up here
    assert stats.bytes == sum(os.lstat(p).st_size for p in src.rglob("*")
                              if p.is_file() and not p.is_symlink()) - 2 * len(b"linked\n")
    assert stats.jobs == 3 and len(forked) == 2  # two workers and this process
    assert_reaped(forked)


def test_worker_processes_same_result_as_in_process(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = rich_source(tmp_path, many=300)
    monkeypatch.setenv(_copy.PROCESSES_ENV, "0")
    one = copy(src, tmp_path / "one")
    monkeypatch.setenv(_copy.PROCESSES_ENV, "1")
    two = copy(src, tmp_path / "two")
    assert meta(tmp_path / "one") == meta(tmp_path / "two") == meta(src)
    assert (one.files, one.bytes, one.dirs, one.symlinks, one.hardlinks) == (
        two.files, two.bytes, two.dirs, two.symlinks, two.hardlinks)
    assert two.jobs == 3


@pytest.mark.parametrize("checksum", [False, True])
def test_worker_processes_with_link_dest(tmp_path: Path, forked: list[int],
                                         checksum: bool) -> None:
    src = web(tmp_path, n=300)
    prev = _prev_release(tmp_path, src)
    for i in range(0, 300, 10):
        (src / f"d{i % 6}" / f"f{i:03d}.js").write_text(f"changed {i}\n")
    stats = copy(src, tmp_path / "dst", link_dest=str(prev), checksum=checksum)
    assert stats.linked == 270 and stats.copied + stats.cloned == 30
    assert meta(tmp_path / "dst") == meta(src)
    assert_reaped(forked)


@pytest.mark.parametrize("procs", ["0", "1"])
def test_record_is_the_same_with_or_without_worker_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, procs: str) -> None:
    monkeypatch.setenv(_copy.PROCESSES_ENV, procs)
    src = web(tmp_path, n=300)
    os.symlink("d0", src / "alias")
    prev = _prev_release(tmp_path, src)
    for i in range(0, 300, 10):
        (src / f"d{i % 6}" / f"f{i:03d}.js").write_text(f"changed {i}\n")
    record = CopyRecord(with_digests=True)
    stats = copy(src, tmp_path / "dst", link_dest=str(prev), record=record)
    assert stats.linked == 270
    assert sorted(record.linked) == sorted(f"d{i % 6}/f{i:03d}.js" for i in range(300) if i % 10)
    assert record.digests == {f"d{i % 6}/f{i:03d}.js": digest_file(str(src / f"d{i % 6}/f{i:03d}.js"))
                              for i in range(300)}
    # the manifest built from the record is the one a walk of the copy gives
    assert sorted(_manifest.from_record(record)) == sorted(
        _manifest.scan(str(tmp_path / "dst"), digest=True))
    assert len(record.lines) == 6 + 1 + 1 and len(record.files) == 300  # folders, empty, alias


def test_worker_processes_checkpoint_and_progress_here(tmp_path: Path,
                                                       forked: list[int]) -> None:
    src, _ = rich_source(tmp_path, many=400)
    steps: list[str] = []
    seen: list[tuple[int, int]] = []
    stats = copy(src, tmp_path / "dst", checkpoint=steps.append,
                 progress=lambda f, b: seen.append((f, b)))
    assert steps == ["copy-file"] * stats.files  # all of them in this process
    assert seen == sorted(seen) and seen[-1] == (stats.files, stats.bytes)


def test_worker_processes_stopped_by_checkpoint(tmp_path: Path, forked: list[int]) -> None:
    src, _ = rich_source(tmp_path, many=2000)
    stop = StopAt(5)
    with pytest.raises(StopAt.Stop):
        copy(src, tmp_path / "dst", checkpoint=stop)
    assert_reaped(forked)  # killed and waited for: nothing writes into dst any more
    assert stop.calls == 5
    assert len(list((tmp_path / "dst").rglob("*"))) < 2000


def test_worker_error_is_raised_here_as_the_same_oserror(tmp_path: Path, forked: list[int],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real_open: Callable[..., int] = os.open
    src = web(tmp_path, n=600)

    def flaky(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if str(path).endswith("f450.js") and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", flaky)  # the workers are forked with it
    with pytest.raises(OSError) as info:
        copy(src, tmp_path / "dst")
    assert type(info.value) is OSError and info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "dst" / "d0" / "f450.js")
    assert_reaped(forked)


def test_worker_that_dies_is_an_operation_failure(tmp_path: Path, forked: list[int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    here = os.getpid()
    real_copy = _copy._Copier.copy

    def dying(self: Any, spath: str, dpath: str, st: os.stat_result) -> None:
        if os.getpid() != here:
            os.kill(os.getpid(), signal.SIGKILL)
        real_copy(self, spath, dpath, st)

    monkeypatch.setattr(_copy._Copier, "copy", dying)
    src = web(tmp_path, n=300)
    with pytest.raises(OperationFailed) as info:
        copy(src, tmp_path / "dst")
    assert "worker process ended unexpectedly (killed by SIGKILL)" in str(info.value)
    assert_reaped(forked)


def test_special_files_refused_with_worker_processes(tmp_path: Path, forked: list[int]) -> None:
    src, _ = rich_source(tmp_path, many=300)
    os.mkfifo(src / "nested" / "a" / "pipe")
    with pytest.raises(InvalidInput) as info:
        copy(src, tmp_path / "dst")
    assert "FIFO" in str(info.value) and str(src / "nested" / "a" / "pipe") in str(info.value)
    assert not list((tmp_path / "dst").rglob("pipe"))
    for pid in forked:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_workers_stop_when_the_calling_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the deploy (no cleanup runs) must not leave workers writing into staging."""
    if not hasattr(os, "pidfd_open"):
        pytest.skip("not Linux: needs os.pidfd_open")
    src = web(tmp_path, n=3000)
    dst = tmp_path / "dst"
    dst.mkdir()
    pids_file = tmp_path / "pids"
    script = f"""
import os, signal
from atomic_deploy import _copy
pids = []
real_fork = os.fork
def fork():
    pid = real_fork()
    if pid:
        pids.append(pid)
    return pid
os.fork = fork
calls = 0
def checkpoint(step):
    global calls
    calls += 1
    if calls == 100:
        with open({str(pids_file)!r}, "w") as f:
            f.write(" ".join(map(str, pids)))
        os.kill(os.getpid(), signal.SIGKILL)
_copy.copy_tree({str(src)!r}, {str(dst)!r}, checkpoint, False)
"""
    env = cli_env({_copy.PROCESSES_ENV: "1"})
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            assert poller.poll(10_000), f"worker {pid} still runs after its parent was killed"
        finally:
            os.close(fd)


def test_auto_mode_forks_nothing_where_plain_copies_are_expensive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files that cost the kernel more than _THREADS_WORTH_S each (ext4 inodes, big files):
    threads overlap that as well as processes would, without forking."""
    monkeypatch.delenv(_copy.PROCESSES_ENV)
    monkeypatch.setattr(_copy, "_PROC_PROBE_FILES", 20)
    monkeypatch.setattr(_copy, "_PROBE_FILES", 20)
    monkeypatch.setattr(_copy, "_THREADS_WORTH_S", 0.0)  # every file "expensive"
    monkeypatch.setattr(_copy, "DEFAULT_JOBS", 2)

    def no_fork() -> int:
        raise AssertionError("forked")

    monkeypatch.setattr(os, "fork", no_fork)
    src = web(tmp_path, n=400)
    stats = copy(src, tmp_path / "dst")
    assert stats.cloned == 0 and stats.copied == 400
    assert stats.jobs == 2  # threads
    assert meta(tmp_path / "dst") == meta(src)


@pytest.fixture
def auto_forked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Auto mode where plain copies are cheap (as on tmpfs: _THREADS_WORTH_S made huge, so the
    decision does not depend on this machine's speed); returns the pids forked."""
    if not _copy_procs.available():
        pytest.skip("worker processes are not available here")
    monkeypatch.delenv(_copy.PROCESSES_ENV)
    monkeypatch.setattr(_copy, "_PROC_PROBE_FILES", 20)
    monkeypatch.setattr(_copy, "_PROBE_FILES", 20)
    monkeypatch.setattr(_copy, "_THREADS_WORTH_S", 10.0)
    monkeypatch.setattr(_copy, "DEFAULT_JOBS", 2)
    monkeypatch.setattr(_platform, "clone_kind", lambda: None)  # plain copies, not clones
    pids = record_forks(monkeypatch)
    return pids


def test_auto_mode_forks_workers_where_plain_copies_are_cheap(
        tmp_path: Path, auto_forked: list[int]) -> None:
    """tmpfs, page cache: a file costs Python's own work more than the kernel's, which threads
    cannot share (GIL) and worker processes can; the calling process keeps the checkpoint and
    progress of every file."""
    src, _ = rich_source(tmp_path, many=400)
    steps: list[str] = []
    seen: list[tuple[int, int]] = []
    stats = copy(src, tmp_path / "dst", checkpoint=steps.append,
                 progress=lambda f, b: seen.append((f, b)))
    check_same(src, tmp_path / "dst")
    assert stats.cloned == 0 and stats.copied == stats.files - stats.hardlinks
    assert stats.jobs == 2 and len(auto_forked) == 1  # one worker and this process
    assert steps == ["copy-file"] * stats.files
    assert seen == sorted(seen) and seen[-1] == (stats.files, stats.bytes)
    assert_reaped(auto_forked)


def test_auto_mode_workers_stopped_by_checkpoint(tmp_path: Path, auto_forked: list[int]) -> None:
    src, _ = rich_source(tmp_path, many=3000)
    stop = StopAt(600)  # after the workers started
    with pytest.raises(StopAt.Stop):
        copy(src, tmp_path / "dst", checkpoint=stop)
    assert auto_forked
    assert_reaped(auto_forked)  # killed and waited for: nothing writes into dst any more
    assert stop.calls == 600
    assert len(list((tmp_path / "dst").rglob("*"))) < 3000


def test_auto_mode_worker_error_is_raised_here(tmp_path: Path, auto_forked: list[int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_open: Callable[..., int] = os.open
    src = web(tmp_path, n=600)

    def flaky(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if str(path).endswith("f450.js") and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", flaky)
    with pytest.raises(OSError) as info:
        copy(src, tmp_path / "dst")
    assert type(info.value) is OSError and info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "dst" / "d0" / "f450.js")
    assert auto_forked
    assert_reaped(auto_forked)


def test_auto_mode_forks_workers_once_files_are_cloned(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_copy.PROCESSES_ENV)
    monkeypatch.setattr(_copy, "_PROC_PROBE_FILES", 20)
    monkeypatch.setattr(_copy, "DEFAULT_JOBS", 2)
    monkeypatch.setattr(_platform, "clone_kind", lambda: "ficlone")
    monkeypatch.setattr(_platform, "clone_fd", _fake_clone)
    src = web(tmp_path, n=400)
    stats = copy(src, tmp_path / "dst")
    assert stats.cloned == 400 and stats.jobs == 2
    assert meta(tmp_path / "dst") == meta(src)


@pytest.mark.parametrize("trust_mtime", [False, True])
def test_auto_mode_forks_workers_to_compare_contents_with_the_previous_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trust_mtime: bool) -> None:
    """Reading and hashing every file is CPU work that threads cannot share (GIL): worker
    processes do it. Links on size and mtime alone stay on this thread."""
    if not _copy_procs.available():
        pytest.skip("worker processes are not available here")
    monkeypatch.delenv(_copy.PROCESSES_ENV)
    monkeypatch.setattr(_copy, "_PROC_PROBE_FILES", 20)
    monkeypatch.setattr(_copy, "DEFAULT_JOBS", 2)
    monkeypatch.setattr(_copy, "_THREADS_WORTH_S", 10.0)  # no threads: only the processes
    monkeypatch.setattr(_platform, "clone_kind", lambda: None)
    src = web(tmp_path, n=400)
    prev = _prev_release(tmp_path, src)
    record = CopyRecord(with_digests=True)
    stats = copy(src, tmp_path / "dst", link_dest=str(prev), trust_mtime=trust_mtime,
                 record=record)
    assert stats.linked == 400 and len(record.linked) == 400
    assert stats.jobs == (1 if trust_mtime else 2)
    assert len(record.digests) == (0 if trust_mtime else 400)
    assert meta(tmp_path / "dst") == meta(src)


def test_fork_refused_copies_in_this_process(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_copy.PROCESSES_ENV, "1")

    def refused() -> int:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(os, "fork", refused)
    monkeypatch.setattr(_copy, "_THREADS_WORTH_S", 10.0)  # and no threads either
    src, _ = rich_source(tmp_path, many=300)
    fds_before = sorted(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else []
    stats = copy(src, tmp_path / "dst", jobs=None)
    check_same(src, tmp_path / "dst")
    assert stats.jobs == 1
    if fds_before:  # the pipes made for the worker were closed again
        assert sorted(os.listdir("/proc/self/fd")) == fds_before


@pytest.mark.parametrize("queued_first", [False, True])
def test_worker_that_stopped_after_an_error_reports_that_error_not_a_broken_pipe(
        tmp_path: Path, queued_first: bool) -> None:
    """A worker that hit an error sends it and exits; a batch sent to it after that meets a
    closed pipe. The error it sent must be what comes out, deterministically."""

    if not _copy_procs.available():
        pytest.skip("worker processes are not available here")

    gate = tmp_path / "go"

    class Failing:
        stats = CopyStats()

        def __init__(self) -> None:
            self.digests: dict[str, str] = {}
            self.linked: list[str] = []

        def file(self, *args: Any) -> None:
            while not gate.exists():  # held until the test has queued what it wants
                select.select([], [], [], 0.005)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/f1")

    class Node:
        src, dst, link = str(tmp_path), str(tmp_path), None

    st = os.lstat(tmp_path)
    pool = _copy_procs.ProcPool(1, lambda: Failing(), CopyStats(),  # type: ignore[arg-type,return-value]
                                Failing())  # type: ignore[arg-type]
    try:
        assert pool.put([(Node(), [("f1", st)], False)], timeout=1)
        if queued_first:  # a second batch queued while it works: never answered
            assert pool.put([(Node(), [("f2", st)], False)], timeout=1)
        gate.touch()
        (pid,) = [c.pid for c in pool.children]
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # it has exited (not reaped yet)
        if queued_first:  # polled twice, as the walk may: the error, then the pipe's end
            pool._wait(0.0)
            pool._wait(0.0)
        else:  # a batch sent after it exited meets a closed pipe
            assert not pool.put([(Node(), [("f2", st)], False)], timeout=0.05)
        got = pool.get(1.0)
        assert got is not None
        _item, done, exc = got
        assert done == 0 and isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        assert exc.filename == "/x/f1"
    finally:
        pool.stop = True
        pool.close()


def test_item_and_answer_bigger_than_a_pipe_do_not_wait_for_each_other(tmp_path: Path) -> None:
    """An answer (the files' digests) larger than a pipe holds, while the next item (the paths
    of many folders) is also larger: the worker blocks sending its answer until this process
    reads it, so sending the item must not block until the worker reads that."""
    if not _copy_procs.available():
        pytest.skip("worker processes are not available here")

    class Chatty:
        stats = CopyStats()

        def __init__(self) -> None:
            self.digests: dict[str, str] = {}
            self.linked: list[str] = []

        def file(self, spath: str, dpath: str, lpath: str | None, st: os.stat_result) -> None:
            self.digests[dpath + "x" * 200_000 if dpath.endswith("/big") else dpath] = "d"

    class Node:
        def __init__(self, i: int) -> None:
            self.src = self.dst = f"{tmp_path}/{'d' * 200}{i}"
            self.link = None

    st = os.lstat(tmp_path)
    pool = _copy_procs.ProcPool(1, lambda: Chatty(), CopyStats(),  # type: ignore[arg-type,return-value]
                                Chatty())  # type: ignore[arg-type]

    def hung(signum: int, frame: Any) -> None:
        raise AssertionError("sending the item waited for the worker, which waited for us")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        assert pool.put([(Node(0), [("big", st)], False)], timeout=1)
        many = [(Node(i), [(f"f{i}", st)], False) for i in range(1, 1001)]  # 600 KB of paths
        assert pool.put(many, timeout=1)  # type: ignore[arg-type]
        answers: list[Any] = []
        while len(answers) < 2:  # an answer may take several reads
            got = pool.get(1.0)
            if got is not None:
                answers.append(got)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        pool.stop = True
        pool.close()
    assert [(done, exc) for _item, done, exc in answers] == [(1, None), (1000, None)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_worker_asks_the_kernel_to_kill_it_with_its_parent() -> None:
    """The kernel's SIGKILL stops a worker busy with one large file at once, where the closed
    pipe only would once that file is done."""
    import ctypes

    _platform.prepare_exit_with_parent()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            if _platform.exit_with_parent():
                asked = ctypes.c_int(0)
                ctypes.CDLL(None).prctl(2, ctypes.byref(asked), 0, 0, 0)  # PR_GET_PDEATHSIG
                code = 10 + asked.value
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 10 + signal.SIGKILL


# --------------------------------------------------------------------------- items of several folders
# A deep build (node_modules) has a few files per folder: a work item gathers the files of as
# many folders as it takes to reach _BATCH, so that handing work on costs a message per
# _BATCH files, not one per folder. Each folder is still finished (mode, times) only once all
# of its files are done, and an error inside an item reports exactly the files done before it.

COPY_WAYS = ["in-process", "threads", "processes"]


def copy_way(monkeypatch: pytest.MonkeyPatch, how: str) -> int | None:
    """Set up ``how`` files are copied; the ``jobs`` to pass."""
    if how == "processes":
        if not _copy_procs.available():
            pytest.skip("worker processes are not available here")
        monkeypatch.setenv(_copy.PROCESSES_ENV, "1")
        return None
    return 1 if how == "in-process" else 2


def small_folders(tmp_path: Path, n: int = 200, per: int = 2) -> Path:
    """``n`` folders of ``per`` files each; every seventh folder read-only."""
    src = tmp_path / "small"
    for d in range(n):
        folder = src / f"p{d:03d}"
        folder.mkdir(parents=True)
        for i in range(per):
            (folder / f"f{i}.js").write_text(f"// {d} {i}\n")
    set_distinct_mtimes(src)
    for d in range(0, n, 7):
        os.chmod(src / f"p{d:03d}", 0o555)
    return src


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_one_item_carries_the_files_of_several_folders(tmp_path: Path, how: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = copy_way(monkeypatch, how)
    pool_class: Any = _copy._Pool if how == "threads" else _copy_procs.ProcPool
    handed: list[list[tuple[str, int]]] = []  # per item handed on: (folder, files)
    real_put = pool_class.put

    def put(self: Any, item: Any, timeout: float) -> bool:
        ok: bool = real_put(self, item, timeout)
        if ok:
            handed.append([(os.path.basename(node.src), len(batch)) for node, batch, _ in item])
        return ok

    monkeypatch.setattr(pool_class, "put", put)
    src = small_folders(tmp_path)
    steps: list[str] = []
    seen: list[tuple[int, int]] = []
    stats = copy(src, tmp_path / "dst", jobs=jobs, checkpoint=steps.append,
                 progress=lambda f, b: seen.append((f, b)))
    assert meta(tmp_path / "dst") == meta(src)  # read-only folders finished after their files
    assert stats.files == stats.copied + stats.cloned == 400
    assert steps == ["copy-file"] * 400
    assert seen == sorted(seen) and seen[-1] == (400, stats.bytes)
    # 400 files: 7 items (one per folder would be 200), each of up to _BATCH files
    assert handed and len(handed) <= -(-400 // _copy._BATCH)
    assert all(sum(n for _, n in item) <= _copy._BATCH for item in handed)
    assert max(len(item) for item in handed) > 1
    assert {f for item in handed for f, _ in item} <= {f"p{d:03d}" for d in range(200)}


@pytest.mark.parametrize("how", COPY_WAYS)
def test_error_in_the_second_folder_of_an_item_reports_exactly_the_files_done(
        tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two folders of three files: one item. The second folder's second file fails: the
    first folder is complete and finished, the second holds its first file only and keeps the
    staging mode (not finished); four files were checkpointed, in order."""
    jobs = copy_way(monkeypatch, how)
    src = small_folders(tmp_path, n=2, per=3)
    for d in ("p000", "p001"):
        os.chmod(src / d, 0o750)
    dst = tmp_path / "dst"
    real_open: Callable[..., int] = os.open
    created: list[str] = []  # in the process that copies the item (forked with it)

    def flaky(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if flags & os.O_CREAT and str(path).startswith(str(dst) + os.sep):
            created.append(str(path))
            if len(created) == 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", flaky)
    pids = record_forks(monkeypatch)
    steps: list[str] = []
    seen: list[tuple[int, int]] = []
    with pytest.raises(OSError) as info:
        copy(src, dst, jobs=jobs, checkpoint=steps.append,
             progress=lambda f, b: seen.append((f, b)))
    assert type(info.value) is OSError and info.value.errno == errno.ENOSPC
    failed = Path(str(info.value.filename))
    second = failed.parent.name
    first = "p001" if second == "p000" else "p000"
    assert failed.parent.parent == dst and second in ("p000", "p001")
    assert steps == ["copy-file"] * 4
    assert [f for f, _ in seen] == [1, 2, 3, 4]
    assert (len(pids) == 2) == (how == "processes")
    for pid in pids:
        with pytest.raises(ChildProcessError):  # waited for: nothing writes any more
            os.waitpid(pid, os.WNOHANG)
    # The first folder: all its files, and its own mode and mtime (finished).
    assert sorted(p.name for p in (dst / first).iterdir()) == ["f0.js", "f1.js", "f2.js"]
    done = {"/".join(p.relative_to(dst).parts): p.read_bytes() for p in dst.rglob("*.js")}
    want = os.lstat(src / first)
    got = os.lstat(dst / first)
    assert (stat.S_IMODE(got.st_mode), got.st_mtime_ns) == (0o750, want.st_mtime_ns)
    # The second: only the file copied before the failing one; still private (not finished).
    (kept,) = [p for p in (dst / second).iterdir()]
    assert kept.name != failed.name
    assert stat.S_IMODE(os.lstat(dst / second).st_mode) == 0o700
    assert len(done) == 4
    assert all(data == (src / rel).read_bytes() for rel, data in done.items())


@pytest.mark.parametrize("procs", ["0", "1"])
def test_deploy_failing_in_the_second_folder_of_an_item_changes_nothing(
        tmp_path: Path, procs: str) -> None:
    """The CLI, with a file of an item's second folder failing (ENOSPC) in the process that
    copies it: exit 1, one error line, and the previous state of ROOT untouched."""
    src = small_folders(tmp_path, n=2, per=3)
    root = tmp_path / "root"
    script = f"""
import errno, os, runpy, sys
real_open, created = os.open, []
def flaky(path, flags, *a, **kw):
    if flags & os.O_CREAT and "/releases/" in str(path) and str(path).endswith(".js"):
        created.append(path)
        if len(created) == 5:  # the second file of the item's second folder
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return real_open(path, flags, *a, **kw)
os.open = flaky  # worker processes are forked with it
sys.argv = ["atomic-deploy", "deploy", {str(src)!r}, {str(root)!r}]
runpy.run_module("atomic_deploy", run_name="__main__", alter_sys=True)
"""
    r = subprocess.run([sys.executable, "-c", script], env=cli_env({_copy.PROCESSES_ENV: procs}),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomic-deploy: error:"), lines
    assert os.strerror(errno.ENOSPC) in lines[0]
    assert release_names(root) == [] and hidden_entries(root) == []
    assert not os.path.lexists(root / "current")


@pytest.mark.parametrize("how", COPY_WAYS)
def test_stop_between_items(tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop (signal) at the checkpoint of the last file of an item: the next item is never
    started here, workers are stopped and waited for."""
    jobs = copy_way(monkeypatch, how)
    pids = record_forks(monkeypatch)
    src = small_folders(tmp_path, n=200, per=2)
    stop = StopAt(_copy._BATCH)
    with pytest.raises(StopAt.Stop):
        copy(src, tmp_path / "dst", jobs=jobs, checkpoint=stop)
    assert stop.calls == _copy._BATCH
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    files = len(list((tmp_path / "dst").rglob("*.js")))
    if how == "in-process":
        assert files == _copy._BATCH  # exactly the first item
    else:  # the workers may have had the next items in hand
        assert _copy._BATCH <= files < 400


@pytest.mark.parametrize("how", COPY_WAYS)
def test_a_run_of_empty_folders_does_not_hold_work_back(
        tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file, then a chain of 300 folders without files: the file's item is handed on after
    _BATCH of them, and what a worker finished is collected (the file's checkpoint passed)
    after _BATCH more, not at the end of the walk."""
    jobs = copy_way(monkeypatch, how)
    if how != "in-process":
        pool_class: Any = _copy._Pool if how == "threads" else _copy_procs.ProcPool
        real_put, real_get = pool_class.put, pool_class.get
        gets: list[float | None] = []

        def answered(pool: Any) -> bool:
            if how == "threads":
                return not pool.done.empty()
            return bool(select.select([c.reader.fd for c in pool.children], [], [], 0)[0])

        def put(self: Any, item: Any, timeout: float) -> bool:
            ok: bool = real_put(self, item, timeout)
            wait_for(lambda: answered(self), what="the worker's answer")
            return ok

        def get(self: Any, timeout: float | None) -> Any:
            gets.append(timeout)
            if len(gets) == 1:  # as if the worker had not finished yet when the item left
                return None
            return real_get(self, timeout)

        monkeypatch.setattr(pool_class, "put", put)
        monkeypatch.setattr(pool_class, "get", get)
    src = tmp_path / "src"
    src.joinpath(*["c"] * 300).mkdir(parents=True)
    (src / "first.js").write_text("first\n")
    dst = tmp_path / "dst"
    folders_then: list[int] = []

    def checkpoint(step: str) -> None:
        folders_then.append(sum(1 for _ in dst.rglob("c")))

    copy(src, dst, jobs=jobs, checkpoint=checkpoint)
    assert meta(dst) == meta(src)
    assert len(folders_then) == 1
    assert folders_then[0] <= (1 if how == "in-process" else 2) * _copy._BATCH + 2

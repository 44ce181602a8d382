"""The fast paths outside the copier's own logic: real copy-on-write clones on loop-mounted btrfs
and XFS (root only, skipped without mkfs tools), the platform helpers, and the fast removal
used by prune. Correctness only; speed is the benchmark's business (benchmarks/bench.py).
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import shutil
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from atomic_deploy import _copy, _layout, _platform
from atomic_deploy._copy import copy_tree
from atomic_deploy._layout import TRASH_PREFIX, remove_entry

LINUX = sys.platform.startswith("linux")


def nothing(step: str) -> None:
    return None


# --------------------------------------------------------------------------- real clones


def shared_bytes(path: Path) -> int:
    """Bytes of ``path`` in extents that FIEMAP reports as shared (FIEMAP_EXTENT_SHARED)."""
    count = 32
    buf = array.array("B", struct.pack("=QQLLLL", 0, 2**64 - 1, 1, 0, count, 0)
                      + b"\0" * (56 * count))
    with open(path, "rb") as f:
        fcntl.ioctl(f.fileno(), 0xC020660B, buf, True)  # FS_IOC_FIEMAP, FIEMAP_FLAG_SYNC
    total = 0
    for i in range(struct.unpack_from("=L", buf, 20)[0]):
        _l, _p, length, _r1, _r2, flags = struct.unpack_from("=QQQQQL", buf, 32 + 56 * i)
        if flags & 0x2000:
            total += length
    return total


@pytest.fixture(params=["btrfs", "xfs"])
def cow_mount(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    kind = request.param
    mkfs = {"btrfs": ["mkfs.btrfs", "-q", "-f"], "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]}
    if not LINUX or os.geteuid() != 0:
        pytest.skip("loop mounts need root on Linux")
    if shutil.which(mkfs[kind][0]) is None:
        pytest.skip(f"{mkfs[kind][0]} not installed (apt-get install btrfs-progs xfsprogs)")
    image, mnt = tmp_path / f"{kind}.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(320 * 1024 * 1024)  # XFS wants 300 MB at least
    subprocess.run([*mkfs[kind], str(image)], check=True, capture_output=True)
    mnt.mkdir()
    r = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount {kind} here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)


def test_real_clone_shares_extents_and_keeps_everything(cow_mount: Path) -> None:
    src = cow_mount / "src"
    (src / "sub").mkdir(parents=True)
    big = os.urandom(1024 * 1024) * 3
    (src / "big.bin").write_bytes(big)
    (src / "sub" / "small.txt").write_bytes(b"small\n" * 2000)
    (src / "empty").write_bytes(b"")
    os.chmod(src / "big.bin", 0o640)
    os.utime(src / "big.bin", ns=(1_600_000_000_000_000_001, 1_600_000_000_000_000_001))
    os.symlink("big.bin", src / "link")
    os.sync()
    dst = cow_mount / "dst"
    dst.mkdir()
    stats = copy_tree(str(src), str(dst), nothing, False, jobs=2)
    assert stats.cloned == 2 and stats.copied == 1  # the empty file has nothing to clone
    assert (dst / "big.bin").read_bytes() == big
    assert (dst / "sub" / "small.txt").read_bytes() == b"small\n" * 2000
    st = os.stat(dst / "big.bin")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == 1_600_000_000_000_000_001
    assert os.readlink(dst / "link") == "big.bin"
    os.sync()
    assert shared_bytes(dst / "big.bin") >= len(big)
    # Copy-on-write: writing the clone leaves the source alone.
    with open(dst / "big.bin", "r+b") as f:
        f.write(b"changed")
    assert (src / "big.bin").read_bytes() == big


def test_clone_across_filesystems_falls_back(cow_mount: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"  # on the test's own filesystem, not on the loop mount
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(200_000))
    dst = cow_mount / "dst"
    dst.mkdir()
    stats = copy_tree(str(src), str(dst), nothing, False, jobs=1)
    assert stats.cloned == 0 and stats.copied == 1
    assert (dst / "a.bin").read_bytes() == (src / "a.bin").read_bytes()


# --------------------------------------------------------------------------- platform helpers


def test_clone_fd_refused_on_a_filesystem_without_clones(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"data")
    with open(tmp_path / "a", "rb") as s, open(tmp_path / "b", "wb") as d:
        try:
            _platform.clone_fd(s.fileno(), d.fileno())
        except OSError as exc:
            assert exc.errno in _platform.NOT_SUPPORTED
        else:  # the test folder is on a copy-on-write filesystem
            assert (tmp_path / "b").read_bytes() == b"data"


def test_clone_kind_and_clonefile_elsewhere(tmp_path: Path) -> None:
    if LINUX:
        assert _platform.clone_kind() == "ficlone"
    if sys.platform != "darwin":
        with pytest.raises(OSError) as info:
            _platform.clonefile(str(tmp_path / "a"), str(tmp_path / "b"))
        assert info.value.errno in _platform.NOT_SUPPORTED


def test_fsync_helpers(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x")
    fd = os.open(p, os.O_RDONLY)
    try:
        _platform.fsync_nobarrier(fd)
    finally:
        os.close(fd)
    _platform.drive_barrier(str(tmp_path))  # one F_FULLFSYNC on macOS, nothing elsewhere
    if _platform.can_sync_filesystem():
        _platform.sync_filesystem(str(tmp_path))


def test_copy_range_without_the_syscall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    with pytest.raises(OSError) as info:
        _platform.copy_range(0, 1, 10)
    assert info.value.errno in _platform.NOT_SUPPORTED


# --------------------------------------------------------------------------- fast removal


def tree(base: Path, files: int = 30) -> Path:
    for i in range(files):
        p = base / f"d{i % 4}" / f"e{i % 3}" / f"f{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{i}\n")
    (base / "empty" / "deeper").mkdir(parents=True)
    return base


def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    (out / "keep").mkdir(parents=True)
    (out / "keep" / "precious.txt").write_text("keep me\n")
    return out


def check_outside(out: Path) -> None:
    assert (out / "keep" / "precious.txt").read_text() == "keep me\n"


@pytest.mark.parametrize("name", ["plain", f"{TRASH_PREFIX}20260101000000.abcd"])
@pytest.mark.parametrize("budget", [None, 3])
def test_remove_entry_never_follows_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          name: str, budget: int | None) -> None:
    if budget is not None:
        monkeypatch.setattr(_layout, "_RM_AFTER", budget)  # rm -rf takes over early
    out = outside(tmp_path)
    parent = tmp_path / "releases"
    victim = tree(parent / name)
    os.symlink(str(out), victim / "d0" / "link-to-outside")
    os.symlink(str(out / "keep"), victim / "link-to-keep")
    os.symlink(str(out / "keep" / "precious.txt"), victim / "d1" / "e0" / "file-link")
    (parent / "neighbour").mkdir()
    remove_entry(str(parent), name)
    assert sorted(os.listdir(parent)) == ["neighbour"]
    check_outside(out)


def test_remove_entry_read_only_folders(tmp_path: Path) -> None:
    parent = tmp_path / "releases"
    victim = tree(parent / "x")
    for d in ("d0/e0", "d0", "empty/deeper"):
        os.chmod(victim / d, 0o555)
    os.chmod(victim, 0o500)
    remove_entry(str(parent), "x")
    assert os.listdir(parent) == []


def test_remove_entry_makes_a_folder_writable_when_refused(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # As root nothing is refused; simulate the non-root refusal once per folder.
    parent = tmp_path / "releases"
    tree(parent / "x", files=6)
    real_unlink = os.unlink
    refused: set[int] = set()

    def unlink(path: str, *, dir_fd: int | None = None) -> None:
        if dir_fd is not None and dir_fd not in refused:
            refused.add(dir_fd)
            raise PermissionError(errno.EACCES, "read-only folder")
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    remove_entry(str(parent), "x")
    assert os.listdir(parent) == [] and refused


def test_remove_entry_symlink_and_file_and_missing(tmp_path: Path) -> None:
    out = outside(tmp_path)
    parent = tmp_path / "releases"
    parent.mkdir()
    os.symlink(str(out), parent / "link")
    (parent / "file").write_text("x")
    remove_entry(str(parent), "link")
    remove_entry(str(parent), "file")
    remove_entry(str(parent), "missing")
    assert os.listdir(parent) == []
    check_outside(out)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x"])
def test_remove_entry_refuses_names_outside_parent(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        remove_entry(str(tmp_path), bad)


def test_trash_without_rm_is_removed_in_python(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_layout, "_RM_AFTER", 2)
    monkeypatch.setattr(_layout, "_rm_program", lambda: None)
    parent = tmp_path / "releases"
    name = f"{TRASH_PREFIX}x.1"
    tree(parent / name)
    remove_entry(str(parent), name)
    assert os.listdir(parent) == []


def test_trash_with_failing_rm_is_finished_in_python(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_layout, "_RM_AFTER", 2)
    monkeypatch.setattr(_layout, "_rm_program", lambda: "/bin/false")
    parent = tmp_path / "releases"
    name = f"{TRASH_PREFIX}x.2"
    tree(parent / name)
    remove_entry(str(parent), name)
    assert os.listdir(parent) == []


def test_non_trash_names_never_run_rm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_layout, "_RM_AFTER", 1)

    def no_rm(parent: str, name: str) -> bool:
        raise AssertionError("rm -rf used for a name that is not our trash")

    monkeypatch.setattr(_layout, "_rm_rf", no_rm)
    parent = tmp_path / "releases"
    tree(parent / ".atomic-deploy-staging.x.1")
    tree(parent / "20260101000000")
    remove_entry(str(parent), ".atomic-deploy-staging.x.1")
    remove_entry(str(parent), "20260101000000")
    assert os.listdir(parent) == []


def test_deep_tree_removed_without_recursion_limit(tmp_path: Path) -> None:
    parent = tmp_path / "releases"
    deep = parent / "x"
    deep.mkdir(parents=True)
    fd = os.open(deep, os.O_RDONLY)
    try:
        # 1,200 levels, made relative to an fd: the full path is longer than PATH_MAX.
        cur = os.dup(fd)
        for _ in range(1200):
            os.mkdir("d", dir_fd=cur)
            nxt = os.open("d", os.O_RDONLY, dir_fd=cur)
            os.close(cur)
            cur = nxt
        os.close(cur)
    finally:
        os.close(fd)
    remove_entry(str(parent), "x")
    assert os.listdir(parent) == []


def test_real_clones_in_worker_processes_match_in_process(cow_mount: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Auto mode on a cloning filesystem forks workers once files turn out to be clones; the
    release is the same as copied in this process, and its data is shared with the source."""
    from test_copy_engine import meta

    src = cow_mount / "src"
    for i in range(_copy._PROC_PROBE_FILES + 700):
        p = src / f"d{i % 7}" / f"f{i:04d}.js"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (4096 * (i % 3) + i))
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    os.chmod(src / "d3", 0o750)
    os.link(src / "d1" / "f0001.js", src / "d2" / "hard.js")
    os.symlink("d1/f0001.js", src / "link")
    os.sync()
    results = {}
    for mode in ("0", ""):
        monkeypatch.setenv(_copy.PROCESSES_ENV, mode)
        dst = cow_mount / f"dst-{mode or 'auto'}"
        dst.mkdir()
        results[mode] = copy_tree(str(src), str(dst), nothing, False)
    assert results["0"].jobs in (1, _copy.DEFAULT_JOBS)  # threads, if they paid
    if _copy.DEFAULT_JOBS > 1:
        assert results[""].jobs == _copy.DEFAULT_JOBS  # worker processes and this one
    for stats in results.values():
        assert stats.cloned == _copy._PROC_PROBE_FILES + 700 - 1  # f0000.js is empty
        assert stats.copied == 1 and stats.hardlinks == 1
    assert meta(cow_mount / "dst-0") == meta(cow_mount / "dst-auto") == meta(src)
    os.sync()
    last = _copy._PROC_PROBE_FILES + 699  # copied after the workers started
    big = cow_mount / "dst-auto" / f"d{last % 7}" / f"f{last:04d}.js"
    assert shared_bytes(big) >= 4096


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A folder on a real tmpfs (/dev/shm), where Python's per-file work is what a copy costs."""
    import tempfile

    shm = Path("/dev/shm")
    if not LINUX or not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    with open("/proc/mounts") as f:
        if not any(line.split()[1] == str(shm) and line.split()[2] == "tmpfs" for line in f):
            pytest.skip("/dev/shm is not a tmpfs here")
    d = Path(tempfile.mkdtemp(prefix="atomic-deploy-test-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_plain_copies_on_tmpfs_in_worker_processes_match_in_process(
        tmpfs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Auto mode on tmpfs hands plain copies to worker processes once the first files show
    they are cheap; the release is the same as copied in this process. (The threshold is
    raised so that a loaded test machine cannot make tmpfs look "expensive".)"""
    from test_copy_engine import meta

    if _copy.DEFAULT_JOBS < 2:
        pytest.skip("one CPU: auto mode never starts workers")
    monkeypatch.setattr(_copy, "_THREADS_WORTH_S", 1.0)
    src = tmpfs_dir / "src"
    n = _copy._PROC_PROBE_FILES + 700
    for i in range(n):
        p = src / f"d{i % 7}" / f"f{i:04d}.js"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(i % 5000))
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    os.chmod(src / "d3", 0o750)
    os.chmod(src / "d2" / "f0002.js", 0o4755)
    os.link(src / "d1" / "f0001.js", src / "d2" / "hard.js")
    os.symlink("d1/f0001.js", src / "link")
    results = {}
    for mode in ("0", ""):
        monkeypatch.setenv(_copy.PROCESSES_ENV, mode)
        dst = tmpfs_dir / f"dst-{mode or 'auto'}"
        dst.mkdir()
        results[mode] = copy_tree(str(src), str(dst), nothing, False)
    assert results["0"].jobs == 1  # cheap files: no threads
    assert results[""].jobs == _copy.DEFAULT_JOBS  # worker processes and this one
    for stats in results.values():
        assert stats.copied == n and stats.cloned == 0 and stats.hardlinks == 1
    assert meta(tmpfs_dir / "dst-0") == meta(tmpfs_dir / "dst-auto") == meta(src)
    for i in (0, n - 1):  # before and after the workers started
        rel = Path(f"d{i % 7}") / f"f{i:04d}.js"
        assert (tmpfs_dir / "dst-auto" / rel).read_bytes() == (src / rel).read_bytes()

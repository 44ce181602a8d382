"""What gets copied into a release: links as links, empty folders, modes, mtimes, hard links."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from atomic_deploy import _copy
from atomic_deploy._copy import copy_tree
from atomic_deploy.errors import InvalidInput
from conftest import (
    Builds,
    current_target,
    hidden_entries,
    make_build,
    release_names,
    run_cli,
    set_distinct_mtimes,
    snapshot,
)

LINK_MTIME_KEPT = os.utime in os.supports_follow_symlinks
BIG = 5 * 1024 * 1024 + 12345  # several of the copier's 1 MiB chunks plus a ragged tail


def no_checkpoint(step: str) -> None:
    return None


def big_bytes(n: int = BIG) -> bytes:
    # Not all zeros (a sparse or deduplicating copy could hide a wrong offset) and not periodic
    # on the chunk size (a chunk copied twice would still compare equal).
    block = os.urandom(65536)
    return (block * (n // len(block) + 1))[:n] + b"tail"


def meta(top: Path) -> dict[str, tuple[Any, ...]]:
    """Everything that must survive a copy, per relative path (top itself is ".")."""
    out: dict[str, tuple[Any, ...]] = {}

    def add(p: str) -> None:
        st = os.lstat(p)
        rel = os.path.relpath(p, top)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p), st.st_mtime_ns if LINK_MTIME_KEPT else None)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, Path(p).read_bytes())

    add(str(top))
    for dirpath, dirnames, filenames in os.walk(top):  # never descends into links
        for name in dirnames + filenames:
            add(os.path.join(dirpath, name))
    return out


def build_rich_source(base: Path) -> tuple[Path, Path]:
    """A source with every kind of content the copier must keep; returns (source, outside)."""
    outside = base / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("outside\n")

    src = base / "src"
    make_build(src, files={
        "index.html": "<h1>hi</h1>\n",
        "bin/run.sh": "#!/bin/sh\necho hi\n",
        "secret.key": "s3cr3t\n",
        "private/config.ini": "[x]\n",
        "ro/frozen.txt": "frozen\n",
        "nested/a/b/deep.txt": "deep\n",
        "hard/a.txt": "linked\n",
        "empty.txt": "",
    })
    (src / "big.bin").write_bytes(big_bytes())
    (src / "empty").mkdir()
    (src / "nested" / "empty" / "deeper").mkdir(parents=True)
    os.link(src / "hard" / "a.txt", src / "hard" / "b.txt")
    os.link(src / "hard" / "a.txt", src / "nested" / "c.txt")

    os.symlink("index.html", src / "rel-link")
    os.symlink("../index.html", src / "nested" / "up-link")
    os.symlink(str(outside), src / "outside-dir-link")  # a folder outside the source
    os.symlink("does/not/exist", src / "dangling")
    os.symlink("/", src / "slash")
    os.symlink("nested", src / "dir-link")  # a folder inside the source

    os.chmod(src / "bin" / "run.sh", 0o755)
    os.chmod(src / "secret.key", 0o600)
    os.chmod(src / "private", 0o750)
    os.chmod(src / "ro" / "frozen.txt", 0o444)
    os.chmod(src / "ro", 0o555)  # read-only folder: the copy must still fill it
    os.chmod(src / "index.html", 0o640)

    # Distinct mtimes everywhere, set bottom-up after everything exists (creating an entry
    # changes its folder's mtime).
    set_distinct_mtimes(src)
    return src, outside


def release_meta(top: Path) -> dict[str, tuple[Any, ...]]:
    """meta() without the top folder's own mtime: a release folder gets the time it was made
    (tests/test_capistrano.py), everything in it keeps the build's."""
    out = meta(top)
    out["."] = out["."][:2]
    return out


def check_rich_copy(src: Path, dst: Path, outside: Path, release: bool = False) -> None:
    if release:
        assert release_meta(dst) == release_meta(src)
        assert os.stat(dst).st_mtime > time.time() - 120 > os.stat(src).st_mtime
    else:
        assert meta(dst) == meta(src)
    # links are links with the same text, never followed
    for name, text in (("rel-link", "index.html"), ("outside-dir-link", str(outside)),
                       ("dangling", "does/not/exist"), ("slash", "/"), ("dir-link", "nested"),
                       ("nested/up-link", "../index.html")):
        assert os.path.islink(dst / name), name
        assert os.readlink(dst / name) == text
    # hard links inside the source stay hard links, to each other and not to the source
    a, b, c = (os.stat(dst / p) for p in ("hard/a.txt", "hard/b.txt", "nested/c.txt"))
    assert a.st_ino == b.st_ino == c.st_ino
    assert a.st_nlink == 3
    assert a.st_ino != os.stat(src / "hard" / "a.txt").st_ino
    # content of other files is separate
    assert os.stat(dst / "index.html").st_ino != os.stat(src / "index.html").st_ino
    assert os.stat(dst / "index.html").st_nlink == 1
    # explicit spot checks of what meta() compares
    assert stat.S_IMODE(os.stat(dst / "bin" / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dst / "secret.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(dst / "private").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(dst / "ro").st_mode) == 0o555
    assert (dst / "ro" / "frozen.txt").read_text() == "frozen\n"
    assert (dst / "empty").is_dir() and os.listdir(dst / "empty") == []
    assert os.listdir(dst / "nested" / "empty" / "deeper") == []
    assert (dst / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert (dst / "empty.txt").read_bytes() == b""
    assert sorted(os.listdir(outside)) == ["sentinel.txt"]


# Both ways of copying files: in this process (threads or not), and in forked worker processes
# (used on copy-on-write filesystems; "1" forces them wherever they can be forked).
PROCESSES = pytest.mark.parametrize("processes", ["0", "1"], ids=["in-process", "workers"])


@PROCESSES
@pytest.mark.parametrize("fsync_each", [False, True])
def test_copy_tree_keeps_everything(tmp_path: Path, fsync_each: bool, processes: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_copy.PROCESSES_ENV, processes)
    src, outside = build_rich_source(tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir(mode=0o700)
    before = snapshot(src)
    stats = copy_tree(str(src), str(dst), no_checkpoint, fsync_each=fsync_each)
    check_rich_copy(src, dst, outside)
    assert snapshot(src) == before  # the source is only read
    assert stats.symlinks == 6
    assert stats.files == 11  # every regular file, hard links included
    assert stats.bytes == sum(os.lstat(src / p).st_size for p in (
        "index.html", "bin/run.sh", "secret.key", "private/config.ini", "ro/frozen.txt",
        "nested/a/b/deep.txt", "hard/a.txt", "empty.txt", "big.bin"))


@PROCESSES
def test_deploy_keeps_everything(tmp_path: Path, root: Path, processes: str) -> None:
    src, outside = build_rich_source(tmp_path)
    r = run_cli("deploy", src, root, "--json", env={_copy.PROCESSES_ENV: processes})
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)["release"]
    check_rich_copy(src, root / "releases" / rid, outside, release=True)
    assert current_target(root) == f"releases/{rid}"
    assert hidden_entries(root) == []


def test_symlink_mtime_kept(tmp_path: Path) -> None:
    if not LINK_MTIME_KEPT:
        pytest.skip("os.utime cannot set a symlink's own mtime on this platform")
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("nowhere", src / "link")
    os.utime(src / "link", ns=(1_000_000_000_000_000_007, 1_234_567_890_987_654_321),
             follow_symlinks=False)
    dst = tmp_path / "dst"
    dst.mkdir()
    copy_tree(str(src), str(dst), no_checkpoint, fsync_each=False)
    assert os.lstat(dst / "link").st_mtime_ns == 1_234_567_890_987_654_321


def test_hard_link_to_a_file_outside_the_source_is_copied(tmp_path: Path) -> None:
    src = make_build(tmp_path / "src", files={"a.txt": "shared\n"})
    os.link(src / "a.txt", tmp_path / "outside-link.txt")
    dst = tmp_path / "dst"
    dst.mkdir()
    copy_tree(str(src), str(dst), no_checkpoint, fsync_each=False)
    st = os.stat(dst / "a.txt")
    assert st.st_nlink == 1
    assert st.st_ino != os.stat(src / "a.txt").st_ino
    (dst / "a.txt").write_text("changed\n")
    assert (tmp_path / "outside-link.txt").read_text() == "shared\n"


def test_ownership_kept_when_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("ownership is only copied when running as root")
    src = make_build(tmp_path / "src", files={"f.txt": "x\n", "d/g.txt": "y\n", "suid": "z\n"})
    os.symlink("f.txt", src / "link")
    os.chown(src / "f.txt", 65534, 65534)
    os.chown(src / "d", 1234, 4321)
    os.lchown(src / "link", 4321, 1234)
    os.chown(src / "suid", 65534, 65534)
    os.chmod(src / "suid", 0o4755)  # chown after chmod would clear this bit
    dst = tmp_path / "dst"
    dst.mkdir()
    copy_tree(str(src), str(dst), no_checkpoint, fsync_each=False)
    for p in ("f.txt", "d", "link", "suid"):
        s, d = os.lstat(src / p), os.lstat(dst / p)
        assert (d.st_uid, d.st_gid) == (s.st_uid, s.st_gid), p
    assert stat.S_IMODE(os.stat(dst / "suid").st_mode) == 0o4755


# --------------------------------------------------------------------------- refused kinds


def _make_socket(path: Path) -> None:
    if len(os.fsencode(path)) > 100:
        pytest.skip("path too long for an AF_UNIX socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
    finally:
        s.close()


def _make_device(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, AttributeError) as exc:
        pytest.skip(f"cannot create a device node here: {exc}")


MAKERS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "fifo": ("FIFO", lambda p: os.mkfifo(p)),
    "socket": ("socket", _make_socket),
    "device": ("device file", _make_device),
}


@PROCESSES
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_copy_tree_refuses_special_files(tmp_path: Path, kind: str, processes: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_copy.PROCESSES_ENV, processes)
    word, make = MAKERS[kind]
    src = make_build(tmp_path / "src")
    special = src / "assets" / "special"
    make(special)
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(InvalidInput) as info:
        copy_tree(str(src), str(dst), no_checkpoint, fsync_each=False)
    assert word in str(info.value)
    assert str(special) in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_deploy_refuses_special_files(tmp_path: Path, builds: Builds, root: Path,
                                      kind: str) -> None:
    word, make = MAKERS[kind]
    r = run_cli("deploy", builds("v1"), root, "--json")
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)["release"]
    releases_before = snapshot(root / "releases")
    src = builds("v2")
    special = src / "assets" / "zz-special"
    make(special)
    r = run_cli("deploy", src, root)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomic-deploy: error:"), lines
    assert word in lines[0] and str(special) in lines[0]
    assert hidden_entries(root) == []
    assert release_names(root) == [rid]
    assert snapshot(root / "releases") == releases_before
    assert current_target(root) == f"releases/{rid}"
    assert not (root / ".atomic-deploy" / "journal.json").exists()


# --------------------------------------------------------------------------- source forms


def test_source_symlink_to_folder(tmp_path: Path, builds: Builds, root: Path) -> None:
    real = builds("v1")
    os.chmod(real, 0o751)
    os.utime(real, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    alias = tmp_path / "latest"
    os.symlink(real, alias)
    r = run_cli("deploy", alias, root, "--json")
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)["release"]
    rel = root / "releases" / rid
    assert not os.path.islink(rel) and rel.is_dir()
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert release_meta(rel) == release_meta(real)
    assert os.path.islink(alias) and os.readlink(alias) == str(real)


def test_large_and_empty_files_end_to_end(tmp_path: Path, root: Path) -> None:
    src = make_build(tmp_path / "src", files={"empty.txt": "", "sub/also-empty": ""})
    data = big_bytes()
    (src / "big.bin").write_bytes(data)
    r = run_cli("deploy", src, root, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["bytes"] == len(data)
    assert out["files"] == 3
    cur = root / "current"
    assert (cur / "big.bin").read_bytes() == data
    assert (cur / "empty.txt").read_bytes() == b""
    assert (cur / "sub" / "also-empty").read_bytes() == b""


# --------------------------------------------------------------------------- data copy fallback


def _copy_and_check(tmp_path: Path) -> None:
    src = make_build(tmp_path / "src", files={"small.txt": "small\n", "empty.txt": ""})
    data = big_bytes(3 * 1024 * 1024 + 7)
    (src / "big.bin").write_bytes(data)
    dst = tmp_path / "dst"
    dst.mkdir()
    copy_tree(str(src), str(dst), no_checkpoint, fsync_each=False)
    assert (dst / "big.bin").read_bytes() == data
    assert (dst / "small.txt").read_text() == "small\n"
    assert (dst / "empty.txt").read_bytes() == b""


def _copy_data_between(tmp_path: Path, data: bytes) -> bytes:
    """Run _copy._copy_data on a fresh pair of files; return what arrived."""
    (tmp_path / "in").write_bytes(data)
    sfd = os.open(tmp_path / "in", os.O_RDONLY)
    dfd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _copy._copy_data(sfd, dfd, len(data))
    finally:
        os.close(sfd)
        os.close(dfd)
    return (tmp_path / "out").read_bytes()


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    return reads


def test_copy_data_without_copy_file_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    reads = _counting_reads(monkeypatch)
    data = big_bytes(2 * 1024 * 1024 + 1)
    assert _copy_data_between(tmp_path, data) == data
    assert len(reads) >= 3  # went through the read/write loop, in chunks


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP])
def test_copy_data_when_copy_file_range_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                code: int) -> None:
    calls: list[int] = []

    def refuse(src: int, dst: int, count: int, *args: Any) -> int:
        calls.append(src)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    reads = _counting_reads(monkeypatch)
    data = big_bytes(2 * 1024 * 1024 + 1)
    assert _copy_data_between(tmp_path, data) == data
    assert calls  # the kernel copy was tried first
    assert len(reads) >= 3  # then the read/write loop did the work


def test_copy_data_real_errors_are_not_swallowed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src: int, dst: int, count: int, *args: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "copy_file_range", full, raising=False)
    with pytest.raises(OSError) as info:
        _copy_data_between(tmp_path, b"some data\n")
    assert info.value.errno == errno.ENOSPC


def test_copy_tree_without_copy_file_range(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    _copy_and_check(tmp_path)


def test_copy_tree_when_copy_file_range_refuses(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: int, dst: int, count: int, *args: Any) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    _copy_and_check(tmp_path)


def test_fallback_end_to_end_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import atomic_deploy

    def refuse(src: int, dst: int, count: int, *args: Any) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.delenv("ATOMIC_DEPLOY_FAULT", raising=False)
    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    src, outside = build_rich_source(tmp_path)
    root = tmp_path / "www"
    result = atomic_deploy.deploy(str(src), str(root))
    check_rich_copy(src, root / "releases" / result.release, outside, release=True)

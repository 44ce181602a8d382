"""The source digest cache: --link-unchanged compares contents without reading unchanged files
again, and never trusts a digest for bytes the file no longer holds (git's index rules: keyed by
the lstat, ctime included; racily clean entries not kept). A cache that cannot be read or
written changes nothing but speed."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atomic_deploy import _manifest, operations
from conftest import release_names, run_cli, wait_for

EPOCH = 1_577_836_800  # SOURCE_DATE_EPOCH of a reproducible build: every file gets this mtime


def settle(*paths: Path) -> None:
    """Wait until the files' last change is older than the racily-clean margin, so that the
    next deploy may remember their digests (a deploy right after a change never does)."""
    newest = max(os.lstat(p).st_ctime_ns for p in paths)
    wait_for(lambda: time.time_ns() > newest + _manifest._COARSE_MARGIN_NS
             if newest % 10**9 == 0 else time.time_ns() > newest + _manifest._FINE_MARGIN_NS,
             what="the files' change to age past the margin")


def files_of(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*") if p.is_file())


def cache_file(folder: Path, source: Path) -> Path:
    name = hashlib.blake2b(os.path.realpath(source).encode(), digest_size=16).hexdigest()
    return folder / name


def entries(path: Path) -> int:
    return (path.stat().st_size - _manifest._HEADER) // _manifest._REC


def same_size_same_mtime(path: Path, text: str) -> None:
    assert len(text) == path.stat().st_size and text != path.read_text()
    path.write_text(text)
    os.utime(path, (EPOCH, EPOCH))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(_manifest.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The source files whose content was read and hashed (in this process: no copy workers)."""
    got: list[str] = []
    real = _manifest._read_digest

    def read_digest(path: str, fd: int | None, *copy_to: tuple[int, bytearray] | None) -> str:
        got.append(path)  # hashed alone, or while copied (copy_to)
        return real(path, fd, *copy_to)

    monkeypatch.setattr(_manifest, "_read_digest", read_digest)
    monkeypatch.setenv("ATOMIC_DEPLOY_COPY_PROCESSES", "0")
    return got


def build_of(top: Path, n: int = 20) -> Path:
    top.mkdir()
    for i in range(n):
        (top / f"f{i:02}.txt").write_text(f"file {i:02}\n")
        os.utime(top / f"f{i:02}.txt", (EPOCH, EPOCH))
    return top


# --------------------------------------------------------------------------- never stale


def test_a_same_size_same_mtime_change_is_deployed_with_its_new_bytes_with_the_cache_warm(
        tmp_path: Path, cache: Path) -> None:
    """Issue 10, item 12, with the digests of the build cached: the rewritten file has the same
    size, mtime, inode and path, only its ctime tells, and that is enough."""
    build, root = tmp_path / "b", tmp_path / "R"
    build.mkdir()
    for name, text in (("f.txt", "AAAA\n"), ("other.txt", "same\n")):
        (build / name).write_text(text)
        os.utime(build / name, (EPOCH, EPOCH))
    assert run_cli("deploy", build, root).returncode == 0
    settle(*files_of(build))
    r = run_cli("deploy", "--link-unchanged", build, root, "--json")
    assert r.returncode == 0, r.stderr
    assert entries(cache_file(cache, build)) == 2  # warm: both digests remembered
    ino = (build / "f.txt").stat().st_ino

    same_size_same_mtime(build / "f.txt", "BBBB\n")
    assert (build / "f.txt").stat().st_ino == ino
    r = run_cli("deploy", "--link-unchanged", build, root, "--json")
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "f.txt").read_text() == "BBBB\n"
    assert '"linked": 1' in r.stdout  # other.txt, from the cache
    old, new = release_names(root)[-2:]
    assert os.stat(root / "releases" / old / "f.txt").st_ino != \
        os.stat(root / "releases" / new / "f.txt").st_ino

    # Then remembered with its new digest, and linked next time.
    settle(build / "f.txt")
    assert run_cli("deploy", "--link-unchanged", build, root).returncode == 0
    r = run_cli("deploy", "--link-unchanged", build, root, "--json")
    assert '"linked": 2' in r.stdout
    assert (root / "current" / "f.txt").read_text() == "BBBB\n"


def test_unchanged_files_are_not_read_again_and_changed_ones_are(
        tmp_path: Path, cache: Path, reads: list[str]) -> None:
    build, root = build_of(tmp_path / "b"), str(tmp_path / "R")
    operations.deploy(str(build), root)
    settle(*files_of(build))
    assert operations.deploy(str(build), root, link_unchanged=True).linked == 20
    assert len(reads) == 20  # cold: every file read once
    reads.clear()
    assert operations.deploy(str(build), root, link_unchanged=True).linked == 20
    assert reads == []  # warm: none

    for how in ("write", "chmod", "touch", "replace"):
        f = build / "f03.txt"
        if how == "write":
            same_size_same_mtime(f, "FILE 03\n")
        elif how == "chmod":
            f.chmod(0o600)
        elif how == "touch":
            os.utime(f)
        else:
            (build / "new").write_text(f.read_text())
            os.utime(build / "new", (f.stat().st_atime, f.stat().st_mtime))
            os.replace(build / "new", f)
        reads.clear()
        operations.deploy(str(build), root, link_unchanged=True)
        assert reads == [str(f)], (how, reads)
        assert (tmp_path / "R" / "current" / "f03.txt").read_bytes() == f.read_bytes()
        settle(f)
        operations.deploy(str(build), root, link_unchanged=True)  # remembered again


def test_digest_option_uses_the_cache_and_checksum_does_not(
        tmp_path: Path, cache: Path, reads: list[str]) -> None:
    build, root = build_of(tmp_path / "b", 5), str(tmp_path / "R")
    settle(*files_of(build))
    operations.deploy(str(build), root, digest=True)
    assert len(reads) == 5
    reads.clear()
    operations.deploy(str(build), root, digest=True)
    assert reads == []
    operations.deploy(str(build), root, link_unchanged=True, checksum=True)
    assert len(reads) == 5  # --checksum reads everything, the build included


def test_turned_off_by_the_option_and_the_environment(tmp_path: Path, cache: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    build, root = build_of(tmp_path / "b", 3), tmp_path / "R"
    settle(*files_of(build))
    assert run_cli("deploy", build, root).returncode == 0
    r = run_cli("deploy", "--link-unchanged", "--no-digest-cache", build, root)
    assert r.returncode == 0, r.stderr
    assert not cache.exists()
    r = run_cli("deploy", "--link-unchanged", build, root, env={_manifest.CACHE_ENV: "0"})
    assert r.returncode == 0, r.stderr
    assert not cache.exists()
    assert run_cli("deploy", "--link-unchanged", build, root).returncode == 0
    assert entries(cache_file(cache, build)) == 3


# --------------------------------------------------------------------------- racily clean


def test_a_digest_taken_in_the_same_tick_as_a_change_is_not_trusted(
        tmp_path: Path, cache: Path) -> None:
    """A file rewritten right after it was hashed, within one timestamp tick, keeps its whole
    lstat, ctime included. Such an entry is never remembered: here the second look is given the
    very lstat of the first (as a same-tick rewrite would leave it) and still reads the file."""
    f = tmp_path / "src" / "f.txt"
    f.parent.mkdir()
    f.write_text("AAAA\n")
    before = os.lstat(f)
    with _manifest.source_digests(str(f.parent)):
        assert _manifest.source_digest(str(f), before) == _manifest.digest_file(str(f))
    f.write_text("BBBB\n")
    with _manifest.source_digests(str(f.parent)):
        assert _manifest.source_digest(str(f), before) == _manifest.digest_file(str(f))
    assert not cache_file(cache, f.parent).exists() or entries(cache_file(cache, f.parent)) == 0

    # The rule itself: trusted only when older than the start minus the timestamp granularity.
    c = _manifest.DigestCache(None, str(f.parent), ref_ns=100 * 10**9)
    fine = _manifest._FINE_MARGIN_NS
    for ctime, kept in ((100 * 10**9 - fine - 1, True), (100 * 10**9 - fine, False),
                        (100 * 10**9 + 5, False), (100 * 10**9 - _manifest._COARSE_MARGIN_NS, False),
                        (97 * 10**9 - 1, True)):
        fake = os.stat_result((0o100644, 1, 1, 1, 0, 0, 5, 0, 0, 0),
                              {"st_atime_ns": 0, "st_mtime_ns": 10**9, "st_ctime_ns": ctime})
        held = sum(map(len, c.new))
        c.put(c.key(str(f), fake), fake, "ab" * 32)
        assert sum(map(len, c.new)) - held == (_manifest._REC if kept else 0), ctime
    # and an mtime set in the future (touch -d): never kept either
    fake = os.stat_result((0o100644, 1, 1, 1, 0, 0, 5, 0, 0, 0),
                          {"st_atime_ns": 0, "st_mtime_ns": 200 * 10**9, "st_ctime_ns": 10**9 + 1})
    held = sum(map(len, c.new))
    c.put(c.key(str(f), fake), fake, "ab" * 32)
    assert sum(map(len, c.new)) == held


def test_files_written_just_before_a_deploy_are_read_again_by_the_next(
        tmp_path: Path, cache: Path, reads: list[str]) -> None:
    build, root = build_of(tmp_path / "b", 4), str(tmp_path / "R")
    operations.deploy(str(build), root, digest=True)  # right after the build: racily clean
    assert len(reads) == 4
    reads.clear()
    operations.deploy(str(build), root, digest=True)
    assert len(reads) in (0, 4)  # 0 only if the first deploy started past the margin
    if reads:
        assert sorted(reads) == sorted(map(str, files_of(build)))


# --------------------------------------------------------------------------- broken caches


def _poison(cache: Path, build: Path, digest_of: bytes, mode: int) -> None:
    """A well-formed cache file whose entry for f.txt's current lstat claims other content."""
    c = _manifest.DigestCache(None, str(build), 0)
    f = build / "f.txt"
    rec = c.key(str(f), os.lstat(f)) + hashlib.blake2b(digest_of, digest_size=32).digest()
    path = cache_file(cache, build)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_manifest._CACHE_MAGIC + hashlib.blake2b(rec, digest_size=16).digest() + rec)
    path.chmod(mode)


@pytest.mark.parametrize("problem", ["corrupt", "truncated", "folder is a file",
                                     "home is a file", "home read-only", "others may write",
                                     "ours"])
def test_a_broken_cache_changes_nothing_but_speed(tmp_path: Path, cache: Path, problem: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    build, root = tmp_path / "b", tmp_path / "R"
    build.mkdir()
    (build / "f.txt").write_text("AAAA\n")
    (build / "g.txt").write_text("gggg\n")
    for p in files_of(build):
        os.utime(p, (EPOCH, EPOCH))
    env: dict[str, str] = {}
    if problem in ("home is a file", "home read-only"):
        monkeypatch.delenv(_manifest.CACHE_ENV, raising=False)
        (tmp_path / "file").write_text("")
        env = {"XDG_CACHE_HOME": "", "HOME": str(tmp_path / "file" / "home")
               if problem == "home is a file" else "/proc"}
    elif problem == "folder is a file":
        cache.write_text("not a folder\n")
    assert run_cli("deploy", build, root, env=env).returncode == 0
    settle(*files_of(build))
    r = run_cli("deploy", "--link-unchanged", build, root, env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr

    same_size_same_mtime(build / "f.txt", "BBBB\n")
    path = cache_file(cache, build)
    if problem == "corrupt":
        path.write_bytes(path.read_bytes()[:-1] + b"\0")
    elif problem == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif problem in ("others may write", "ours"):
        _poison(cache, build, b"AAAA\n", 0o666 if problem == "others may write" else 0o600)
    r = run_cli("deploy", "--link-unchanged", build, root, "--json", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    if problem == "ours":
        # The control: a well-formed entry of our own is trusted (what makes the case above
        # mean something). Only someone who can write our files can do this.
        assert (root / "current" / "f.txt").read_text() == "AAAA\n"
        return
    assert (root / "current" / "f.txt").read_text() == "BBBB\n"
    assert (root / "current" / "g.txt").read_text() == "gggg\n"
    assert '"linked": 1' in r.stdout
    if problem in ("corrupt", "truncated", "others may write"):
        settle(build / "f.txt")
        assert run_cli("deploy", "--link-unchanged", build, root, env=env).returncode == 0
        assert path.stat().st_mode & 0o777 == 0o600 and entries(path) == 2  # written anew


def test_the_cache_is_never_inside_the_source_or_root(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    build, root = build_of(tmp_path / "b", 3), tmp_path / "R"
    settle(*files_of(build))
    assert run_cli("deploy", build, root).returncode == 0
    for env in ({_manifest.CACHE_ENV: str(build / ".cache")},
                {_manifest.CACHE_ENV: str(root / "cache")},
                {_manifest.CACHE_ENV: "", "XDG_CACHE_HOME": str(root / ".cache")},
                {_manifest.CACHE_ENV: "", "XDG_CACHE_HOME": "", "HOME": str(build)}):
        r = run_cli("deploy", "--link-unchanged", build, root, env=env)
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in build.iterdir()) == [f"f{i:02}.txt" for i in range(3)]
        assert not (root / "cache").exists() and not (root / ".cache").exists()


def test_only_the_last_source_folders_are_kept(tmp_path: Path, cache: Path) -> None:
    sources = [build_of(tmp_path / f"b{i}", 1) for i in range(_manifest.CACHE_KEEP + 3)]
    settle(*(files_of(s)[0] for s in sources))
    for s in sources:
        f = files_of(s)[0]
        with _manifest.source_digests(str(s)):
            _manifest.source_digest(str(f), os.lstat(f))
        os.utime(cache_file(cache, s), ns=(time.time_ns(), time.time_ns()))  # strictly later
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        cache_file(cache, s).name for s in sources[-_manifest.CACHE_KEEP:])


# --------------------------------------------------------------------------- property


STEPS = st.lists(st.tuples(
    st.sampled_from(["same size and mtime", "modify", "chmod", "touch", "replace", "nothing"]),
    st.integers(0, 2), st.booleans(), st.binary(max_size=20)), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_current_always_has_the_source_bytes(steps: list[tuple[str, int, bool, bytes]]) -> None:
    """Random changes between --link-unchanged deploys, each deploy either right after the
    change (racily clean) or once it aged (cache warm): current always serves the build's bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        os.environ[_manifest.CACHE_ENV], old_env = str(top / "cache"), os.environ.get(
            _manifest.CACHE_ENV)
        try:
            build, root = top / "b", str(top / "R")
            build.mkdir()
            names = [build / f"f{i}.txt" for i in range(3)]
            for p in names:
                p.write_bytes(b"0123456789")
                os.utime(p, (EPOCH, EPOCH))
            operations.deploy(str(build), root, link_unchanged=True, keep="all")
            for op, i, aged, payload in steps:
                f = names[i]
                before = f.stat()
                same_size = ((payload or b"x") * before.st_size)[:before.st_size]
                if op == "same size and mtime":
                    f.write_bytes(same_size)
                    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
                elif op == "modify":
                    f.write_bytes(payload)
                elif op == "chmod":
                    f.chmod(0o600 if before.st_mode & 0o077 else 0o644)
                elif op == "touch":
                    os.utime(f)
                elif op == "replace":
                    tmp_file = build / ".new"
                    tmp_file.write_bytes(same_size)
                    os.utime(tmp_file, ns=(before.st_atime_ns, before.st_mtime_ns))
                    os.replace(tmp_file, f)
                if aged:
                    settle(*names)
                operations.deploy(str(build), root, link_unchanged=True, keep="all")
                for p in names:
                    assert (top / "R" / "current" / p.name).read_bytes() == p.read_bytes(), \
                        (op, i, aged)
        finally:
            if old_env is None:
                os.environ.pop(_manifest.CACHE_ENV, None)
            else:
                os.environ[_manifest.CACHE_ENV] = old_env


def test_copy_worker_processes_share_what_they_read_and_found(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files compared by forked copy workers: their digests, read or found in the cache, reach
    the cache file the calling process writes."""
    from atomic_deploy import _copy_procs

    if not sys.platform.startswith("linux"):
        pytest.skip("not Linux: no copy worker processes")
    assert _copy_procs.available()
    monkeypatch.setenv("ATOMIC_DEPLOY_COPY_PROCESSES", "1")
    build, root = build_of(tmp_path / "b", 300), str(tmp_path / "R")
    operations.deploy(str(build), root)
    settle(*files_of(build))
    for _ in range(2):  # cold (read), then warm (found)
        assert operations.deploy(str(build), root, link_unchanged=True).linked == 300
        assert entries(cache_file(cache, build)) == 300


# --------------------------------------------------------------------------- hashed while copied


def test_a_changed_file_is_hashed_while_copied_read_once(
        tmp_path: Path, cache: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be linked and whose digest is not cached is copied by reading it and
    hashing what was read (no copy_file_range, no second read); the digest is the new bytes'
    in the manifest and in the cache."""
    from atomic_deploy import _platform

    build, root = build_of(tmp_path / "b"), str(tmp_path / "R")
    operations.deploy(str(build), root)
    settle(*files_of(build))
    operations.deploy(str(build), root, link_unchanged=True)  # every digest cached
    f = build / "f07.txt"
    f.write_bytes(b"a longer and new content\n" * 300)  # another size: cannot be linked
    os.utime(f, (EPOCH, EPOCH))
    settle(f)
    ranged: list[int] = []
    real_range = _platform.copy_range
    monkeypatch.setattr(_platform, "copy_range",
                        lambda s, d, n: ranged.append(n) or real_range(s, d, n))
    reads.clear()
    result = operations.deploy(str(build), root, link_unchanged=True)
    assert result.linked == 19
    assert reads == [str(f)] and ranged == []  # read once, to copy and hash it
    want = hashlib.blake2b(f.read_bytes(), digest_size=32).hexdigest()
    assert (tmp_path / "R" / "current" / "f07.txt").read_bytes() == f.read_bytes()
    layout = _manifest.Layout(root)
    found = _manifest.load(layout, result.release)
    assert found is not None and found[1]["f07.txt"][5] == want
    assert _manifest.file_digests(layout, result.release).get("f07.txt") == (
        f.stat().st_size, f.stat().st_mtime_ns, want)
    reads.clear()  # the cache has it: the next deploy reads nothing and links it
    assert operations.deploy(str(build), root, link_unchanged=True).linked == 20
    assert reads == []


@pytest.mark.parametrize("procs", ["0", "1"])
def test_digests_hashed_while_copied_are_right_in_the_manifest(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, procs: str) -> None:
    """Cold cache, every file changed (in this process or in copy worker processes): every
    digest in the new manifest is that of the file's bytes, and the next deploy links all."""
    monkeypatch.setenv("ATOMIC_DEPLOY_COPY_PROCESSES", procs)
    build, root = tmp_path / "b", str(tmp_path / "R")
    build.mkdir()
    for i in range(300):
        (build / f"d{i % 7}").mkdir(exist_ok=True)
        (build / f"d{i % 7}" / f"f{i}").write_bytes(b"x" * (i * 97 % 5000))
    operations.deploy(str(build), root, digest=True)
    for p in files_of(build):
        p.write_bytes(p.read_bytes() + b"changed" * (1 + len(p.name) % 3) * 20000)
    settle(*files_of(build))
    result = operations.deploy(str(build), root, link_unchanged=True)
    assert result.linked == 0
    found = _manifest.load(_manifest.Layout(root), result.release)
    assert found is not None
    for p in files_of(build):
        rel = p.relative_to(build).as_posix()
        assert found[1][rel][5] == hashlib.blake2b(p.read_bytes(), digest_size=32).hexdigest()
    assert operations.deploy(str(build), root, link_unchanged=True).linked == 300

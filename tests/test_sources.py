"""Tarball and git sources: safe extraction (ours, not tarfile's filters), metadata, git export."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, cast

import pytest

from atomic_deploy import _sources
from atomic_deploy._sources import (
    SOURCE_KINDS,
    TARBALL_KINDS,
    ExtractStats,
    export_git,
    extract_tarball,
    single_top_folder,
    tarball_kind,
    write_revision,
)
from atomic_deploy.errors import InvalidInput, OperationFailed

LINK_MTIME_KEPT = os.utime in os.supports_follow_symlinks
COMPRESSIONS = {"tar": "", "tar.gz": "gz", "tar.bz2": "bz2", "tar.xz": "xz"}
T0 = 1_600_000_000  # mtimes in the archives: distinct, and far from "now"


# ---------------------------------------------------------------------------------------------
# Building archives


@dataclass
class M:
    """One archive member to write."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    mtime: float = T0
    linkname: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def F(name: str, data: bytes | str = b"x", mode: int = 0o644, mtime: float = T0) -> M:
    return M(name, tarfile.REGTYPE, data.encode() if isinstance(data, str) else data, mode, mtime)


def D(name: str, mode: int = 0o755, mtime: float = T0) -> M:
    return M(name, tarfile.DIRTYPE, mode=mode, mtime=mtime)


def S(name: str, target: str, mtime: float = T0) -> M:
    return M(name, tarfile.SYMTYPE, mode=0o777, linkname=target, mtime=mtime)


def H(name: str, target: str) -> M:
    return M(name, tarfile.LNKTYPE, linkname=target)


def tar_bytes(members: list[M], comp: str = "", fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=cast(Any, f"w:{comp}"), format=fmt) as tf:
        for m in members:
            ti = tarfile.TarInfo(m.name)
            ti.type = m.type
            ti.mode = m.mode
            ti.mtime = m.mtime  # pax keeps fractions
            ti.linkname = m.linkname
            for k, v in m.extra.items():
                setattr(ti, k, v)
            if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                ti.size = len(m.data)
                tf.addfile(ti, io.BytesIO(m.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def write_tar(path: Path, members: list[M], comp: str = "") -> Path:
    path.write_bytes(tar_bytes(members, comp))
    return path


# ---------------------------------------------------------------------------------------------
# What is on disk


def meta(top: Path) -> dict[str, tuple[Any, ...]]:
    """Kind, mode, mtime and content of everything under top (top itself excluded)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):  # never descends into links
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, top)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime if LINK_MTIME_KEPT else None)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime, Path(p).read_bytes())
    return out


@dataclass
class Place:
    """A staging folder ``dest`` inside ``releases/``, next to a sentinel folder ``outside``
    that no archive may touch."""

    base: Path
    dest: Path
    outside: Path
    archive: Path

    def state(self) -> tuple[Any, ...]:
        # Everything around dest: the sentinel's content and metadata, what sits next to it and
        # next to dest, and the sentinel file's link count (a hard link made to it would show).
        return (meta(self.outside), sorted(os.listdir(self.base)),
                sorted(os.listdir(self.dest.parent)),
                os.lstat(self.outside / "keep.txt").st_nlink)


@pytest.fixture
def place(tmp_path: Path) -> Place:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("do not touch\n")
    os.utime(outside / "keep.txt", (T0, T0))
    (outside / "sub").mkdir()
    os.utime(outside, (T0, T0))
    releases = tmp_path / "releases"
    releases.mkdir()
    dest = releases / ".atomic-deploy-staging.1.x"
    dest.mkdir(mode=0o700)
    return Place(tmp_path, dest, outside, tmp_path / "in.tar")


def no_checkpoint(step: str) -> None:
    return None


def extract(p: Place, members: list[M], comp: str = "", strip: int = 0,
            checkpoint: Callable[[str], None] = no_checkpoint,
            fmt: int = tarfile.PAX_FORMAT) -> ExtractStats:
    p.archive.write_bytes(tar_bytes(members, comp, fmt))
    return extract_tarball(str(p.archive), str(p.dest), strip, checkpoint)


# ---------------------------------------------------------------------------------------------
# Kinds


def test_kinds() -> None:
    assert SOURCE_KINDS == ("dir", "tar", "git")
    assert set(TARBALL_KINDS) == set(COMPRESSIONS)


@pytest.mark.parametrize("name, kind", [
    ("app.tar", "tar"), ("app.tar.gz", "tar.gz"), ("APP.TGZ", "tar.gz"),
    ("app.tar.bz2", "tar.bz2"), ("app.tbz2", "tar.bz2"), ("app.tar.xz", "tar.xz"),
    ("app.txz", "tar.xz"), ("app.zip", None), ("app.gz", None), ("tarball", None),
])
def test_tarball_kind_by_name(tmp_path: Path, name: str, kind: str | None) -> None:
    (tmp_path / name).write_bytes(b"not inspected for a known suffix, and not a tar otherwise")
    assert tarball_kind(str(tmp_path / name)) == kind


@pytest.mark.parametrize("kind, comp", list(COMPRESSIONS.items()))
def test_tarball_kind_by_content(tmp_path: Path, kind: str, comp: str) -> None:
    p = tmp_path / "build-artifact"  # no telling suffix
    p.write_bytes(tar_bytes([F("a")], comp))
    assert tarball_kind(str(p)) == kind


def test_tarball_kind_not_for_folders_or_fifos(tmp_path: Path) -> None:
    (tmp_path / "looks.tar").mkdir()
    assert tarball_kind(str(tmp_path / "looks.tar")) is None
    os.mkfifo(tmp_path / "fifo")
    assert tarball_kind(str(tmp_path / "fifo")) is None  # and did not block opening it
    assert tarball_kind(str(tmp_path / "missing")) is None
    assert tarball_kind(str(tmp_path / "missing.tgz")) == "tar.gz"  # so the error says "archive"


# ---------------------------------------------------------------------------------------------
# Good archives

GOOD = [
    D("app", 0o755, T0 + 1),
    D("app/bin", 0o750, T0 + 2),
    F("app/bin/run", "#!/bin/sh\necho hi\n", 0o755, T0 + 3),
    F("app/data.txt", "data\n", 0o640, T0 + 4),
    D("app/empty", 0o700, T0 + 5),
    S("app/link", "data.txt", T0 + 6),
    S("app/binlink", "bin/run", T0 + 7),
    S("app/bin/up", "../data.txt", T0 + 8),
    S("app/dangling", "not/there", T0 + 9),
    H("app/hard", "app/data.txt"),
    F("app/implicit/deep/file.txt", "deep\n", 0o644, T0 + 10),  # no folder members for these
    F("app/frac.txt", "x", 0o644, T0 + 11.5),
]


def expected_good(prefix: str) -> dict[str, tuple[Any, ...]]:
    link = (lambda t: T0 + t) if LINK_MTIME_KEPT else (lambda t: None)
    e: dict[str, tuple[Any, ...]] = {
        "app": ("dir", 0o755, T0 + 1),
        "app/bin": ("dir", 0o750, T0 + 2),
        "app/bin/run": ("file", 0o755, T0 + 3, b"#!/bin/sh\necho hi\n"),
        "app/data.txt": ("file", 0o640, T0 + 4, b"data\n"),
        "app/empty": ("dir", 0o700, T0 + 5),
        "app/link": ("link", "data.txt", link(6)),
        "app/binlink": ("link", "bin/run", link(7)),
        "app/bin/up": ("link", "../data.txt", link(8)),
        "app/dangling": ("link", "not/there", link(9)),
        "app/hard": ("file", 0o640, T0 + 4, b"data\n"),
        "app/frac.txt": ("file", 0o644, T0 + 11.5, b"x"),
        "app/implicit/deep/file.txt": ("file", 0o644, T0 + 10, b"deep\n"),
    }
    out = {}
    for k, v in e.items():
        if k.startswith(prefix) and k != prefix.rstrip("/"):
            out[k[len(prefix):]] = v
    return out


def without_implicit(m: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """Implied folders get 0o755 and the time of extraction: check them separately."""
    for k in [k for k in m if k.endswith(("implicit", "implicit/deep"))]:
        assert m.pop(k)[:2] == ("dir", 0o755), k
    return m


@pytest.mark.parametrize("comp", list(COMPRESSIONS.values()))
def test_good_archive_every_compression(place: Place, comp: str) -> None:
    calls: list[str] = []
    stats = extract(place, GOOD, comp, checkpoint=calls.append)
    assert without_implicit(meta(place.dest)) == expected_good("")
    assert os.path.samefile(place.dest / "app/hard", place.dest / "app/data.txt")
    assert stat.S_IMODE(place.dest.stat().st_mode) == 0o755  # the staging folder was 0o700
    assert stats == ExtractStats(files=5, dirs=5, symlinks=4, bytes=len(b"#!/bin/sh\necho hi\n")
                                 + len(b"data\n") + len(b"deep\n") + 1,
                                 single_folder="app")  # everything is under app/
    assert calls == ["copy-file"] * 5  # after every file, hard links included
    # The dry run's look at the same archive: headers only.
    assert single_top_folder(str(place.archive)) == "app"


def test_strip_one_component(place: Place) -> None:
    assert extract(place, GOOD, "gz", strip=1).single_folder is None  # stripping was asked
    assert without_implicit(meta(place.dest)) == expected_good("app/")


def test_strip_two_components(place: Place) -> None:
    extract(place, [m for m in GOOD if m.name != "app/bin/up"], "gz", strip=2)
    got = meta(place.dest)
    # app/bin/run -> run, app/implicit/deep/file.txt -> deep/file.txt; members with two
    # components or fewer (app/data.txt, app/link, app/hard...) are skipped.
    assert got["run"] == ("file", 0o755, T0 + 3, b"#!/bin/sh\necho hi\n")
    assert got["deep/file.txt"][3] == b"deep\n"
    assert sorted(got) == ["deep", "deep/file.txt", "run"]


def test_strip_can_make_a_link_escape(place: Place) -> None:
    # app/bin/up -> ../data.txt is fine in place, but with two components stripped it lands in
    # the release folder itself and would point next to it.
    with pytest.raises(InvalidInput, match=re.escape("member app/bin/up is a symlink to ../data.txt, "
                                                     "which points outside the release")):
        extract(place, GOOD, strip=2)


def test_strip_counts_dot_like_gnu_tar(place: Place) -> None:
    extract(place, [D("."), D("./app"), F("./app/x", "x"), F("./top", "t")], strip=1)
    assert sorted(meta(place.dest)) == ["app", "app/x", "top"]


def test_strip_that_leaves_nothing_is_empty(place: Place) -> None:
    with pytest.raises(InvalidInput, match="nothing left after stripping 5 leading"):
        extract(place, GOOD, strip=5)


def test_names_are_normalised_and_dot_entry_skipped(place: Place) -> None:
    extract(place, [D("./", 0o700), F("./a//b/./c", "c"), D("a/b/", 0o750)])
    got = meta(place.dest)
    assert got["a/b/c"][3] == b"c"
    assert got["a/b"][:2] == ("dir", 0o750)  # the folder listed after its content still counts
    # "./" never sets the release folder's own mode: 0o700 would lock the web server out.
    assert stat.S_IMODE(place.dest.stat().st_mode) == 0o755


def test_special_bits_and_group_other_write_are_dropped(place: Place) -> None:
    extract(place, [F("suid", "x", 0o4755), F("sgid", "x", 0o2755), F("ww", "x", 0o666),
                    F("gw", "x", 0o775), F("ro", "x", 0o444), D("sticky", 0o1777),
                    D("setgid-dir", 0o2775), D("locked", 0o500)])
    modes = {k: v[1] for k, v in meta(place.dest).items()}
    assert modes == {"suid": 0o755, "sgid": 0o755, "ww": 0o644, "gw": 0o755, "ro": 0o444,
                     "sticky": 0o755, "setgid-dir": 0o755,
                     "locked": 0o700}  # folders keep owner rwx so the release can be pruned


def test_duplicates(place: Place) -> None:
    # A later regular file replaces an earlier one; a folder listed twice is merged.
    extract(place, [F("a", "old"), D("d", 0o700), F("d/x"), F("a", "new", 0o600), D("d", 0o750)])
    got = meta(place.dest)
    assert got["a"][1:2] + got["a"][3:] == (0o600, b"new")
    assert got["d"][1] == 0o750


def test_big_file_streams_through(place: Place) -> None:
    block = os.urandom(65536)
    data = (block * 90)[: 5 * 1024 * 1024 + 12345]
    extract(place, [F("big.bin", data)], "xz")
    assert (place.dest / "big.bin").read_bytes() == data


def test_gnu_format_and_long_names(place: Place) -> None:
    long = "/".join(["d" * 60] * 5) + "/" + "f" * 120
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo(long)
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"ok"))
    place.archive.write_bytes(buf.getvalue())
    extract_tarball(str(place.archive), str(place.dest))
    assert (place.dest / long).read_bytes() == b"ok"


@pytest.mark.parametrize("first", ["BZh9-notes.txt", "\x1f\x8b", "]"])
def test_member_names_that_look_like_compression_magic(place: Place, first: str) -> None:
    # A plain tar starts with its first member's name: it must not be taken for bz2/gzip/lzma.
    extract(place, [F(first, "x")], fmt=tarfile.USTAR_FORMAT)
    assert (place.dest / first).read_text() == "x"
    assert tarball_kind(str(place.archive)) == "tar"


@pytest.mark.parametrize("mtime", ["nan", "1e400", "-1e400", "1e30"])
def test_nonsense_mtime_is_ignored(place: Place, mtime: str,
                                   caplog: pytest.LogCaptureFixture) -> None:
    odd = {"pax_headers": {"mtime": mtime}}  # tarfile reads it back as a float
    extract(place, [M("a", data=b"a", extra=odd), M("d", tarfile.DIRTYPE, extra=odd)])
    assert (place.dest / "a").read_text() == "a"
    assert "cannot set mtime" in caplog.text


def test_checkpoint_can_interrupt(place: Place) -> None:
    class Stop(Exception):
        pass

    seen: list[str] = []

    def cp(step: str) -> None:
        seen.append(step)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        extract(place, [F("a"), F("b"), F("c")], checkpoint=cp)
    assert sorted(os.listdir(place.dest)) == ["a", "b"]


def test_dest_must_be_empty(place: Place) -> None:
    (place.dest / "x").write_text("x")
    with pytest.raises(OperationFailed, match="not empty"):
        extract(place, [F("a")])


# ---------------------------------------------------------------------------------------------
# Hostile archives


def hostile_cases(outside: Path) -> list[tuple[str, list[M], str]]:
    o = str(outside)
    return [
        ("absolute path", [F(f"{o}/pwned")], "absolute path"),
        ("absolute path under /etc", [F("/etc/atomic-deploy-pwned")], "absolute path"),
        ("dotdot", [F("../../outside/pwned")], "'..' component"),
        ("dotdot inside", [D("a"), F("a/../../../outside/pwned")], "'..' component"),
        ("symlink to /etc then through it", [S("etc", "/etc"), F("etc/passwd", "root::0:0")],
         "symlink to the absolute path /etc"),
        ("symlink to outside then through it", [S("evil", o), F("evil/pwned")],
         "absolute path"),
        ("symlink with target ../../outside", [S("up", "../../outside"), F("up/pwned")],
         "points outside the release"),
        ("symlink to parent", [S("p", "..")], "points outside the release"),
        ("symlink deep escape", [D("a"), D("a/b"), S("a/b/l", "../../../outside/keep.txt")],
         "points outside the release"),
        ("escape via a link made earlier", [D("a"), S("a/s", ".."), S("t", "a/s/../outside")],
         "points outside the release"),
        # t looks harmless when written (a/s does not exist yet); a/s then changes where it leads.
        ("escape via a link made later", [D("a"), S("t", "a/s/../x"), S("a/s", "..")],
         "points outside the release"),
        ("write through an inside symlink", [D("sub"), S("s", "sub"), F("s/x")],
         "goes through the symlink s"),
        ("write through a file", [F("f"), F("f/x")], "goes through f, which is a file"),
        ("symlink loop", [S("l1", "l2"), S("l2", "l1")], "symlink loop"),
        ("hard link to /etc/passwd", [H("passwd", "/etc/passwd")], "absolute link target"),
        ("hard link to outside", [H("k", f"{o}/keep.txt")], "absolute link target"),
        ("hard link with ..", [H("k", "../../outside/keep.txt")], "'..' component"),
        ("hard link to a later file", [H("h", "later"), F("later")], "not a file extracted"),
        ("hard link to a folder", [D("d"), H("h", "d")], "not a file extracted"),
        ("hard link to a symlink", [S("s", "x"), H("h", "s")], "not a file extracted"),
        ("char device", [M("null", tarfile.CHRTYPE, extra={"devmajor": 1, "devminor": 3})],
         "device file"),
        ("block device", [M("sda", tarfile.BLKTYPE, extra={"devmajor": 8, "devminor": 0})],
         "device file"),
        ("fifo", [M("pipe", tarfile.FIFOTYPE)], "FIFO"),
        ("unknown type", [M("vol", b"V")], "unsupported type"),
        ("file over folder", [D("d"), F("d")], "already extracted as a folder"),
        ("file over implied folder", [F("d/x"), F("d")], "already extracted as a folder"),
        ("folder over file", [F("f"), D("f")], "already extracted as a file"),
        ("file over symlink", [S("l", "x"), F("l")], "already extracted as a symlink"),
        ("symlink over file", [F("f"), S("f", "x")], "already extracted"),
        ("hard link over file", [F("f"), F("g"), H("f", "g")], "already extracted"),
        ("file named .", [F(".")], "would replace the release folder"),
    ]


HOSTILE_IDS = [c[0] for c in hostile_cases(Path("/o"))]


def check_hostile(place: Place, index: int, comp: str = "") -> None:
    _, members, message = hostile_cases(place.outside)[index]
    write_tar(place.archive, members, comp)
    before = place.state()
    with pytest.raises(InvalidInput) as info:
        extract_tarball(str(place.archive), str(place.dest))
    text = str(info.value)
    assert message in text
    assert "\n" not in text and text.startswith(f"archive {place.archive}: ")
    assert text.endswith("; refusing to extract")
    assert place.state() == before
    assert not os.path.lexists("/etc/atomic-deploy-pwned")


@pytest.mark.parametrize("index", range(len(HOSTILE_IDS)), ids=HOSTILE_IDS)
def test_hostile_archive_is_refused(place: Place, index: int) -> None:
    check_hostile(place, index)


@pytest.mark.parametrize("comp", ["gz", "xz"])
def test_hostile_compressed(place: Place, comp: str) -> None:
    check_hostile(place, HOSTILE_IDS.index("escape via a link made later"), comp)


def test_message_names_the_member(place: Place) -> None:
    with pytest.raises(InvalidInput) as info:
        extract(place, [F("ok"), F("../evil\nname")])
    assert str(info.value) == (f"archive {place.archive}: member ../evil\\nname has a '..' "
                               "component in its path; refusing to extract")


@pytest.fixture
def no_tarfile_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tarfile as on Python 3.9.6 (no extraction filters), whose extract methods explode."""
    for name in ("data_filter", "tar_filter", "fully_trusted_filter", "FilterError"):
        monkeypatch.delattr(tarfile, name, raising=False)
    monkeypatch.delattr(tarfile.TarFile, "extraction_filter", raising=False)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("TarFile.extract*() must not be used")

    for name in ("extract", "extractall", "_extract_member"):
        monkeypatch.setattr(tarfile.TarFile, name, boom)


@pytest.mark.usefixtures("no_tarfile_filters")
@pytest.mark.parametrize("index", range(len(HOSTILE_IDS)), ids=HOSTILE_IDS)
def test_hostile_refused_without_tarfile_filters(place: Place, index: int) -> None:
    assert not hasattr(tarfile, "data_filter")
    check_hostile(place, index)


@pytest.mark.usefixtures("no_tarfile_filters")
def test_good_archive_without_tarfile_filters(place: Place) -> None:
    extract(place, GOOD, "bz2")
    assert without_implicit(meta(place.dest)) == expected_good("")


# ---------------------------------------------------------------------------------------------
# Empty, truncated, corrupt


def test_empty_archive(place: Place) -> None:
    with pytest.raises(InvalidInput, match=r"archive .* is empty$"):
        extract(place, [])
    with pytest.raises(InvalidInput, match="is empty"):
        extract(place, [D(".")], "gz")


def test_zero_byte_and_garbage_files(place: Place) -> None:
    place.archive.write_bytes(b"")
    with pytest.raises(InvalidInput, match="not a valid tar archive"):
        extract_tarball(str(place.archive), str(place.dest))
    place.archive.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidInput):
        extract_tarball(str(place.archive), str(place.dest))
    place.archive.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(100))
    with pytest.raises(InvalidInput, match="zstd"):
        extract_tarball(str(place.archive), str(place.dest))


def test_missing_or_unreadable_archive(place: Place) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        extract_tarball(str(place.base / "nope.tgz"), str(place.dest))
    with pytest.raises(InvalidInput, match="not a regular file"):
        extract_tarball(str(place.outside), str(place.dest))


TWO_FILES = [F("first", os.urandom(3000)), F("second", os.urandom(3000))]


def cut_points() -> dict[str, int]:
    raw = tar_bytes(TWO_FILES, fmt=tarfile.USTAR_FORMAT)
    # ustar: header(512) + 3000 data padded to 3072, twice; then the end-of-archive blocks.
    assert raw[512 * 14:512 * 16] == b"\0" * 1024
    return {"inside file data": 512 + 1000, "inside a header": 512 * 7 + 100,
            "between members": 512 * 7, "after last member": 512 * 14}


@pytest.mark.parametrize("where", list(cut_points()))
def test_truncated_plain_tar(place: Place, where: str) -> None:
    raw = tar_bytes(TWO_FILES, fmt=tarfile.USTAR_FORMAT)
    place.archive.write_bytes(raw[:cut_points()[where]])
    with pytest.raises(InvalidInput, match="truncated"):
        extract_tarball(str(place.archive), str(place.dest))


def test_garbage_header_mid_archive(place: Place) -> None:
    raw = bytearray(tar_bytes(TWO_FILES, fmt=tarfile.USTAR_FORMAT))
    raw[512 * 7:512 * 8] = os.urandom(512)  # tarfile alone would stop there and call it the end
    place.archive.write_bytes(bytes(raw))
    with pytest.raises(InvalidInput, match="corrupt"):
        extract_tarball(str(place.archive), str(place.dest))


def test_lone_zero_block_is_accepted(place: Place) -> None:
    raw = tar_bytes([F("a", "a")], fmt=tarfile.USTAR_FORMAT)
    place.archive.write_bytes(raw[:512 * 3])  # header, data, one zero block (GNU tar accepts)
    extract_tarball(str(place.archive), str(place.dest))
    assert (place.dest / "a").read_text() == "a"


@pytest.mark.parametrize("comp", ["gz", "bz2", "xz"])
@pytest.mark.parametrize("cut", ["half", "trailer"])
def test_truncated_compressed(place: Place, comp: str, cut: str) -> None:
    raw = tar_bytes([F("a", os.urandom(20000)), F("b", "b")], comp)
    # "trailer": only the last few bytes (checksum, end marker) are missing; the tar data inside
    # may be complete, so only the decompressor can tell.
    place.archive.write_bytes(raw[: len(raw) // 2] if cut == "half" else raw[:-4])
    with pytest.raises(InvalidInput, match="truncated"):
        extract_tarball(str(place.archive), str(place.dest))


@pytest.mark.parametrize("comp", ["gz", "bz2", "xz"])
def test_corrupt_compressed(place: Place, comp: str) -> None:
    raw = bytearray(tar_bytes([F("a", os.urandom(20000))], comp))
    mid = len(raw) // 2
    raw[mid:mid + 16] = bytes(b ^ 0x55 for b in raw[mid:mid + 16])
    place.archive.write_bytes(bytes(raw))
    with pytest.raises(InvalidInput):
        extract_tarball(str(place.archive), str(place.dest))


# ---------------------------------------------------------------------------------------------
# REVISION


def test_write_revision(place: Place, caplog: pytest.LogCaptureFixture) -> None:
    write_revision(str(place.dest), "abc123")
    assert (place.dest / "REVISION").read_text() == "abc123\n"
    assert stat.S_IMODE((place.dest / "REVISION").stat().st_mode) == 0o644
    with caplog.at_level(logging.WARNING, logger="atomic_deploy"):
        write_revision(str(place.dest), "def456")
    assert (place.dest / "REVISION").read_text() == "def456\n"
    assert "replacing" in caplog.text


def test_write_revision_never_follows_a_link(place: Place) -> None:
    before = place.state()
    (place.dest / "REVISION").symlink_to(place.outside / "keep.txt")
    write_revision(str(place.dest), "abc")
    assert not (place.dest / "REVISION").is_symlink()
    assert (place.dest / "REVISION").read_text() == "abc\n"
    assert place.state() == before


def test_write_revision_refuses(place: Place) -> None:
    with pytest.raises(InvalidInput, match="one non-empty line"):
        write_revision(str(place.dest), "a\nb")
    with pytest.raises(InvalidInput, match="one non-empty line"):
        write_revision(str(place.dest), "")
    (place.dest / "REVISION").mkdir()
    with pytest.raises(InvalidInput, match="folder named REVISION"):
        write_revision(str(place.dest), "abc")


# ---------------------------------------------------------------------------------------------
# git

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com",
         "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "init.defaultBranch=main",
         "-C", str(repo), *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


@dataclass
class Repo:
    path: Path
    c1: str
    c2: str


@pytest.fixture
def repo(tmp_path: Path, git_env: None) -> Repo:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    (r / "a.txt").write_text("one\n")
    (r / "dir").mkdir()
    (r / "dir" / "b.txt").write_text("b\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "first")
    c1 = git(r, "rev-parse", "HEAD")
    git(r, "tag", "-a", "v1", "-m", "version 1")  # annotated: the ref names a tag object
    (r / "a.txt").write_text("two\n")
    (r / "run.sh").write_text("#!/bin/sh\n")
    (r / "run.sh").chmod(0o755)
    (r / "link").symlink_to("a.txt")
    (r / "secret.txt").write_text("not for release\n")
    (r / ".gitattributes").write_text("secret.txt export-ignore\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "second")
    c2 = git(r, "rev-parse", "HEAD")
    (r / "a.txt").write_text("uncommitted\n")  # the worktree is not what gets exported
    return Repo(r, c1, c2)


@needs_git
def test_export_head(repo: Repo, place: Place) -> None:
    commit = export_git(str(repo.path), "HEAD", str(place.dest))
    assert commit == repo.c2 == git(repo.path, "rev-parse", "HEAD")
    got = meta(place.dest)
    assert got["a.txt"][3] == b"two\n"
    assert got["run.sh"][1] == 0o755 and got["a.txt"][1] == 0o644
    assert got["dir"][:2] == ("dir", 0o755)
    assert got["link"][:2] == ("link", "a.txt")
    assert ".git" not in got and "secret.txt" not in got
    assert not any(k.startswith(".git/") for k in got)


@needs_git
@pytest.mark.parametrize("ref", ["v1", "c1", "c1-short", "HEAD~1", "main~1"])
def test_export_older_commits(repo: Repo, place: Place, ref: str) -> None:
    ref = {"c1": repo.c1, "c1-short": repo.c1[:9]}.get(ref, ref)
    commit = export_git(str(repo.path), ref, str(place.dest))
    assert commit == repo.c1 == git(repo.path, "rev-parse", f"{ref}^{{commit}}")
    assert sorted(meta(place.dest)) == ["a.txt", "dir", "dir/b.txt"]
    assert (place.dest / "a.txt").read_text() == "one\n"


@needs_git
def test_export_from_bare_repo_and_despite_git_dir(repo: Repo, place: Place, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo.path), str(bare))
    # As inside a git hook of some other repository: the repository named still wins.
    monkeypatch.setenv("GIT_DIR", str(repo.path / ".git"))
    git(repo.path, "--git-dir", str(repo.path / ".git"), "tag", "only-in-original")
    with pytest.raises(InvalidInput, match="names no commit"):
        export_git(str(bare), "only-in-original", str(place.dest))
    assert export_git(str(bare), "main", str(place.dest)) == repo.c2


@needs_git
@pytest.mark.parametrize("ref, message", [
    ("no-such-branch", "names no commit"),
    ("v9", "names no commit"),
    ("--output=/tmp/atomic-deploy-pwned", "invalid git ref"),
    ("-h", "invalid git ref"),
    ("", "invalid git ref"),
    ("main\n--x", "invalid git ref"),
])
def test_export_bad_ref(repo: Repo, place: Place, ref: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        export_git(str(repo.path), ref, str(place.dest))
    assert "\n" not in str(info.value)
    assert os.listdir(place.dest) == []
    assert not os.path.exists("/tmp/atomic-deploy-pwned")


@needs_git
def test_export_not_a_repo(place: Place, git_env: None) -> None:
    with pytest.raises(InvalidInput, match=r"cannot read git repository .*not a git repository"):
        export_git(str(place.outside), "HEAD", str(place.dest))
    with pytest.raises(InvalidInput, match="is not a directory"):
        export_git(str(place.base / "missing"), "HEAD", str(place.dest))


def test_export_without_git(place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = place.base / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(InvalidInput, match="git is not installed"):
        export_git(str(place.outside), "HEAD", str(place.dest))


@needs_git
@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside/keep.txt"])
def test_export_hostile_symlink_in_repo(place: Place, tmp_path: Path, git_env: None,
                                        target: str) -> None:
    r = tmp_path / "evil"
    r.mkdir()
    git(r, "init", "-q")
    (r / "ok.txt").write_text("ok\n")
    (r / "evil").symlink_to(target)
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "evil")
    before = place.state()
    with pytest.raises(InvalidInput, match="symlink to"):
        export_git(str(r), "HEAD", str(place.dest))
    assert place.state() == before


@needs_git
def test_export_empty_tree(place: Place, tmp_path: Path, git_env: None) -> None:
    r = tmp_path / "empty"
    r.mkdir()
    git(r, "init", "-q")
    git(r, "commit", "-q", "--allow-empty", "-m", "nothing")
    with pytest.raises(InvalidInput, match="is empty"):
        export_git(str(r), "HEAD", str(place.dest))


@needs_git
def test_export_checkpoint_and_interrupt(repo: Repo, place: Place) -> None:
    seen: list[str] = []
    export_git(str(repo.path), "HEAD", str(place.dest), seen.append)
    assert seen == ["copy-file"] * 4  # .gitattributes, a.txt, dir/b.txt, run.sh
    shutil.rmtree(place.dest)
    place.dest.mkdir()

    class Stop(Exception):
        pass

    def stop(step: str) -> None:
        raise Stop

    with pytest.raises(Stop):
        export_git(str(repo.path), "HEAD", str(place.dest), stop)


def test_module_has_no_print_or_exit() -> None:
    src = Path(_sources.__file__).read_text()
    assert "print(" not in src and "sys.exit" not in src

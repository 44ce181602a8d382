"""Other kinds of source: tar archives and git commits, unpacked safely into the staging folder.

Extraction never calls ``TarFile.extract``/``extractall``: tarfile's extraction filters exist only
on 3.9.17+, 3.10.12+, 3.11.4+ and 3.12+ (the stock macOS python3 is 3.9.6 and has none), and they
have had escapes of their own. Members are read in stream mode (memory stays flat however large
the archive) and every file, folder and link is created here, after these checks:

- refused (InvalidInput naming the member): absolute paths, any ``..`` component, a path that goes
  through a symlink or a file extracted earlier, symlinks whose target is absolute or whose
  resolution leaves the release at any step (checked again once everything is extracted, since a
  later link can change where an earlier one leads), symlink chains deeper than 40 (or loops),
  hard links to anything but a regular file already extracted from the same archive, device files,
  FIFOs and unknown member types, and a member whose path is already taken (except a regular file
  replacing a regular file, and a folder listed again, which only updates its metadata);
- kept: permission bits and mtimes. Like tarfile's ``data`` filter, setuid, setgid and sticky
  bits and group/other write bits are dropped (``mode & 0o755``): a release is content or code,
  and a setuid binary or world-writable file in a web root is a hole. Folders also always get
  owner ``rwx``, so the deploying user can always prune its releases. Owners in the archive are
  ignored (they name users of the machine that built it): everything belongs to the deploying user;
- created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so no file is ever written through a link.

An archive cut short, even exactly between two members (where tarfile itself reports a clean
end), or with a damaged header or compressed stream, is refused: the end-of-archive block and the
compressed stream's own end marker and checksum are both checked.
"""

from __future__ import annotations

import collections
import importlib
import os
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from typing import IO, Callable, Protocol, cast

from . import _log as log
from . import _platform
from ._copy import symlink_escape
from ._layout import show
from .errors import InvalidInput, OperationFailed

# Kinds of deploy source; ``tarball_kind`` says which archive flavour a "tar" source is.
SOURCE_KINDS = ("dir", "tar", "git")
TARBALL_KINDS = ("tar", "tar.gz", "tar.bz2", "tar.xz")
_SUFFIXES = (
    (".tar.gz", "tar.gz"), (".tgz", "tar.gz"),
    (".tar.bz2", "tar.bz2"), (".tbz2", "tar.bz2"), (".tbz", "tar.bz2"),
    (".tar.xz", "tar.xz"), (".txz", "tar.xz"),
    (".tar", "tar"),
)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_WINDOW = 1 << 16  # recent archive bytes kept to inspect the block tarfile treated as the end
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC

# Variables that would make git read another repository than the one named (set inside git
# hooks, the usual place a deploy is started from).
_GIT_LOCATION_ENV = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_IMPLICIT_WORK_TREE",
    "GIT_SHALLOW_FILE", "GIT_GRAFT_FILE",
)


@dataclass
class ExtractStats:
    files: int = 0  # regular files and hard links
    dirs: int = 0  # folders created, including ones only implied by a member's path
    symlinks: int = 0
    bytes: int = 0  # file data written (hard links add nothing)
    # The one folder everything was extracted into, when there is nothing else at the top
    # (and nothing was stripped): most likely a build wrapped in its own folder.
    single_folder: str | None = None


def _no_checkpoint(step: str) -> None:
    return None


def _sniff(head: bytes) -> str:
    """The archive flavour from its first 10 bytes, never from its name (which may lie). The
    signatures are tarfile's own: long enough that no tar member's name can look like them."""
    if head.startswith(b"\x1f\x8b\x08"):
        return "tar.gz"
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return "tar.bz2"
    if head.startswith((b"\xfd7zXZ\x00", b"\x5d\x00\x00\x80")):  # xz, legacy lzma (LZMAFile reads both)
        return "tar.xz"
    return "tar"


class _Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


def tarball_kind(path: str) -> str | None:
    """The archive flavour of ``path`` (one of TARBALL_KINDS), or None if it is not a tarball.

    Known suffixes are enough (a missing file with a tarball's name is still a tarball source,
    so the error says so); otherwise a regular file that tarfile can read as an archive counts.
    """
    if os.path.isdir(path):
        return None
    name = os.path.basename(path).lower()
    for suffix, kind in _SUFFIXES:
        if name.endswith(suffix):
            return kind
    if not os.path.isfile(path):  # never open a FIFO or device just to sniff it
        return None
    try:
        if not tarfile.is_tarfile(path):
            return None
        with open(path, "rb") as f:
            head = f.read(10)
    except (OSError, EOFError, tarfile.TarError):
        return None
    return _sniff(head)


class _Prefixed:
    """``raw`` with the bytes already read to sniff the compression put back in front."""

    def __init__(self, head: bytes, raw: _Readable) -> None:
        self._head = head
        self._raw = raw

    def read(self, n: int = -1, /) -> bytes:
        if not self._head:
            return self._raw.read(n)
        if n < 0:
            data, self._head = self._head + self._raw.read(), b""
            return data
        data, self._head = self._head[:n], self._head[n:]
        return data


class _Feed:
    """The decompressed tar stream as tarfile reads it: decoder failures become InvalidInput,
    and the last bytes read are kept so the block tarfile took for the end can be checked."""

    def __init__(self, src: _Readable, data_errors: tuple[type[BaseException], ...],
                 label: str) -> None:
        self._src = src
        self._data_errors = data_errors
        self._label = label
        self.pos = 0
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._recent_size = 0

    def read(self, n: int = -1, /) -> bytes:
        try:
            data = self._src.read(n)
        except self._data_errors as exc:
            raise InvalidInput(f"{self._label} is corrupt or truncated: {exc}") from exc
        except OSError as exc:
            if exc.errno is not None:  # a real read error (EIO...), not bad compressed data
                raise
            raise InvalidInput(f"{self._label} is corrupt or truncated: {exc}") from exc
        if data:
            self._recent.append((self.pos, data))
            self.pos += len(data)
            self._recent_size += len(data)
            while self._recent_size - len(self._recent[0][1]) >= _WINDOW:
                self._recent_size -= len(self._recent.popleft()[1])
        return data

    def block_at(self, offset: int) -> bytes | None:
        """The bytes of [offset, offset + BLOCKSIZE) read so far (fewer, or none, where the data
        ends), or None if they have already left the window."""
        if self._recent and offset < self._recent[0][0]:
            return None
        parts = [(start, data) for start, data in self._recent
                 if start + len(data) > offset and start < offset + _BLOCK]
        if not parts:
            return b""
        skip = offset - parts[0][0]
        return b"".join(data for _, data in parts)[skip:skip + _BLOCK]

    def drain(self) -> None:
        # Reading to the end makes the decompressor check its end marker and checksum (and lets
        # a writer such as `git archive` finish instead of dying of SIGPIPE).
        while self.read(_CHUNK):
            pass


def _decoder(raw: _Readable, label: str) -> _Feed:
    head = b""
    while len(head) < 10:
        more = raw.read(10 - len(head))
        if not more:
            break
        head += more
    src: _Readable = _Prefixed(head, raw)
    errors: tuple[type[BaseException], ...] = (EOFError,)
    kind = _sniff(head)
    if head.startswith(_ZSTD_MAGIC):
        raise InvalidInput(f"{label} is zstd-compressed, which this Python cannot read; "
                           "use .tar.gz, .tar.bz2 or .tar.xz")
    if kind != "tar":
        module = {"tar.gz": "gzip", "tar.bz2": "bz2", "tar.xz": "lzma"}[kind]
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # pragma: no cover - Python built without that library
            raise InvalidInput(f"{label} is {kind} but this Python has no {module} module") from exc
        if module == "gzip":
            import zlib

            src = mod.GzipFile(fileobj=src, mode="rb")
            errors += (zlib.error,)
        elif module == "bz2":
            src = mod.BZ2File(src)
        else:
            src = mod.LZMAFile(src)
            errors += (mod.LZMAError,)
    return _Feed(src, errors, label)


def _mode_of_file(mode: int) -> int:
    return mode & 0o755


def _mode_of_dir(mode: int) -> int:
    return (mode & 0o755) | 0o700


def _ns(mtime: float) -> int:
    # Integral seconds exactly; pax headers may carry fractions.
    return int(mtime) * 1_000_000_000 if mtime == int(mtime) else round(mtime * 1e9)


def _set_mtime(target: str | int, mtime: float, follow: bool = True) -> None:
    try:
        ns = _ns(mtime)  # a pax header may say "nan" or "1e400"
        os.utime(target, ns=(ns, ns), follow_symlinks=follow)
    except (OverflowError, ValueError) as exc:
        # tarfile, too, only warns: a nonsense date is no reason to refuse a release.
        log.warning("cannot set mtime %r on %s: %s", mtime, target, exc)


_WORDS = {"dir": "folder", "implied": "folder", "file": "file", "link": "symlink"}
_ESCAPES = {"outside": "points outside the release",
            "loop": "is part of a symlink loop or too long a chain of symlinks"}


class _Extractor:
    """Creates the members of one archive under ``dest``, refusing anything unsafe."""

    def __init__(self, dest: str, strip: int, checkpoint: Callable[[str], None],
                 fsync_each: bool, label: str) -> None:
        self.dest = dest
        self.strip = strip
        self.checkpoint = checkpoint
        self.fsync_each = fsync_each
        self.label = label
        self.stats = ExtractStats()
        # What each extracted relative path is: "dir", "implied" (a parent no member named yet),
        # "file" (regular file or hard link) or "link". The tree starts empty and only this code
        # writes to it, so this is the truth about the tree.
        self.kinds: dict[str, str] = {}
        self.links: dict[str, str] = {}
        self.dirs: dict[str, tuple[int, float | None]] = {}  # final mode, mtime; in creation order

    def refuse(self, name: str, why: str) -> InvalidInput:
        return InvalidInput(f"{self.label}: member {show(name)} {why}; refusing to extract")

    def rel_path(self, name: str, what: str = "") -> tuple[str, ...] | None:
        """Components below dest after stripping, () for dest itself, None if stripped away."""
        if not name or "\0" in name:
            raise self.refuse(name, f"has an empty or invalid {what}path")
        if name.startswith("/"):
            raise self.refuse(name, f"has an absolute {what}path")
        parts = [p for p in name.split("/") if p]  # "a//b" is "a/b", as for tar and the kernel
        if ".." in parts:
            raise self.refuse(name, f"has a '..' component in its {what}path")
        # GNU tar semantics: "." counts as a component ("./app/x" with 1 stripped is "app/x").
        if len(parts) < self.strip:
            return None
        return tuple(p for p in parts[self.strip:] if p != ".")

    def abspath(self, rel: tuple[str, ...]) -> str:
        return os.path.join(self.dest, *rel)

    def make_parents(self, name: str, rel: tuple[str, ...]) -> None:
        for i in range(1, len(rel)):
            key = "/".join(rel[:i])
            kind = self.kinds.get(key)
            if kind == "link":
                raise self.refuse(name, f"goes through the symlink {show(key)}")
            if kind == "file":
                raise self.refuse(name, f"goes through {show(key)}, which is a file")
            if kind is None:
                os.mkdir(self.abspath(rel[:i]), 0o700)
                self.kinds[key] = "implied"
                self.dirs[key] = (0o755, None)
                self.stats.dirs += 1

    def escape(self, key: str) -> str | None:
        """Why the symlink at ``key`` leads out of the release (or nowhere), else None: its
        resolution through the links extracted so far (``_copy.symlink_escape``)."""
        return _ESCAPES.get(symlink_escape(self.links, key) or "")

    def add(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = m.name
        if m.ischr() or m.isblk():
            raise self.refuse(name, "is a device file")
        if m.isfifo():
            raise self.refuse(name, "is a FIFO")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise self.refuse(name, f"has unsupported type {m.type!r}")
        rel = self.rel_path(name)
        if rel is None:
            return
        key = "/".join(rel)
        if not rel:
            # "." itself, or a folder with exactly N components under --strip-components N (all
            # of them would collapse onto the release folder): skipped, as GNU tar does.
            if m.isdir() or self.strip:
                return
            raise self.refuse(name, "would replace the release folder itself")
        self.make_parents(name, rel)
        path = self.abspath(rel)
        existing = self.kinds.get(key)
        if m.isdir():
            if existing is None:
                os.mkdir(path, 0o700)
                self.stats.dirs += 1
            elif existing not in ("dir", "implied"):
                raise self.refuse(name, f"is a folder but {show(key)} was already extracted "
                                  f"as a {_WORDS[existing]}")
            self.kinds[key] = "dir"
            self.dirs[key] = (_mode_of_dir(m.mode), m.mtime)
        elif m.isreg():
            if existing == "file":
                os.unlink(path)  # a later copy of a file wins, as with tar
            elif existing is not None:
                raise self.refuse(name, f"is a file but {show(key)} was already extracted as a "
                                  f"{_WORDS[existing]}")
            self.write_file(tf, m, path)
            self.kinds[key] = "file"
            self.stats.files += 1
            self.stats.bytes += m.size
            self.checkpoint("copy-file")
        elif m.issym():
            if existing is not None:
                raise self.refuse(name, "is a symlink but its path was already extracted")
            target = m.linkname
            if not target or "\0" in target:
                raise self.refuse(name, "is a symlink with an empty or invalid target")
            if target.startswith("/"):
                raise self.refuse(name, f"is a symlink to the absolute path {show(target)}")
            self.links[key] = target
            why = self.escape(key)
            if why:
                raise self.refuse(name, f"is a symlink to {show(target)}, which {why}")
            os.symlink(target, path)
            self.kinds[key] = "link"
            if os.utime in os.supports_follow_symlinks:
                _set_mtime(path, m.mtime, follow=False)
            self.stats.symlinks += 1
        else:  # hard link
            if existing is not None:
                raise self.refuse(name, "is a hard link but its path was already extracted")
            trel = self.rel_path(m.linkname, "link target ")
            tkey = "/".join(trel) if trel else ""
            if trel is None or self.kinds.get(tkey) != "file":
                raise self.refuse(name, f"is a hard link to {show(m.linkname)}, which is not a "
                                  "file extracted earlier from this archive")
            os.link(self.abspath(trel), path)  # trel is a regular file we created
            self.kinds[key] = "file"
            self.stats.files += 1
            self.checkpoint("copy-file")

    def write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, path: str) -> None:
        data = tf.extractfile(m)
        if data is None:  # pragma: no cover - isreg() members always have data
            raise self.refuse(m.name, "has no data")
        fd = os.open(path, _NEW_FILE, 0o600)
        try:
            while True:
                buf = data.read(_CHUNK)
                if not buf:
                    break
                view = memoryview(buf)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, _mode_of_file(m.mode))
            _set_mtime(fd, m.mtime)
            if self.fsync_each:
                _platform.fsync_fd(fd)
        finally:
            os.close(fd)

    def finish(self, strip_note: str) -> ExtractStats:
        s = self.stats
        if not (s.files or s.dirs or s.symlinks):
            raise InvalidInput(f"{self.label} is empty{strip_note}")
        # Links extracted later may have changed where earlier ones lead: check them all again.
        for key in self.links:
            why = self.escape(key)
            if why:
                raise InvalidInput(f"{self.label}: symlink {show(key)} -> "
                                   f"{show(self.links[key])} {why}; refusing to extract")
        # Folder modes and mtimes last, deepest first: adding entries changes a folder's mtime,
        # and a read-only folder would refuse its own children.
        for key, (mode, mtime) in reversed(list(self.dirs.items())):
            path = os.path.join(self.dest, key)
            os.chmod(path, mode)
            if mtime is not None:
                _set_mtime(path, mtime)
            if self.fsync_each:
                _platform.fsync_dir(path)
        top = [key for key in self.kinds if "/" not in key]
        if not self.strip and len(top) == 1 and self.kinds[top[0]] in ("dir", "implied"):
            s.single_folder = top[0]
        # The release folder's own mode never comes from the archive (a "./" entry from a 0o700
        # build folder would lock the web server out): readable by all, like a fresh folder.
        os.chmod(self.dest, 0o755)
        if self.fsync_each:
            _platform.fsync_dir(self.dest)
        return s


def _check_dest(dest: str) -> None:
    st = os.lstat(dest)
    if not stat.S_ISDIR(st.st_mode):
        raise OperationFailed(f"staging folder {show(dest)} is not a folder")
    with os.scandir(dest) as it:
        if next(it, None) is not None:
            # The checks rely on knowing everything in the tree: it must start empty.
            raise OperationFailed(f"staging folder {show(dest)} is not empty")


def _extract(raw: _Readable, dest: str, strip: int, checkpoint: Callable[[str], None],
             fsync_each: bool, label: str) -> ExtractStats:
    if strip < 0:
        raise InvalidInput(f"strip-components must be 0 or more, not {strip}")
    _check_dest(dest)
    feed = _decoder(raw, label)
    ex = _Extractor(dest, strip, checkpoint, fsync_each, label)
    try:
        with tarfile.open(fileobj=cast(IO[bytes], feed), mode="r|") as tf:
            # Stream mode still keeps every header it has read; drop them as we go (iteration
            # then always asks next(), which is what stream mode wants anyway).
            seen = getattr(tf, "members", None)
            for m in tf:
                ex.add(tf, m)
                if isinstance(seen, list):
                    seen.clear()
            end = feed.block_at(tf.offset)
    except tarfile.TarError as exc:
        raise InvalidInput(f"{label} is not a valid tar archive, or is truncated: {exc}") from exc
    # tarfile reports a clean end both at the end-of-archive block and where data simply stops
    # or a header is garbage: only the first is an archive.
    if end is not None and len(end) < _BLOCK:
        raise InvalidInput(f"{label} is truncated (it ends without the end-of-archive block)")
    if end is not None and end.strip(b"\0"):
        raise InvalidInput(f"{label} is corrupt (invalid header at byte {tf.offset})")
    feed.drain()
    note = f" (nothing left after stripping {strip} leading path components)" if strip else ""
    return ex.finish(note)


def extract_tarball(
    archive: str,
    dest: str,
    strip_components: int = 0,
    checkpoint: Callable[[str], None] = _no_checkpoint,
    *,
    fsync_each: bool = False,
) -> ExtractStats:
    """Extract the tar archive ``archive`` (plain, gzip, bzip2 or xz, told by content) into the
    existing, empty folder ``dest``, dropping ``strip_components`` leading path components of
    every member (members with fewer are skipped), as GNU tar's ``--strip-components`` does.

    ``checkpoint("copy-file")`` runs after each file and may raise. ``fsync_each`` flushes every
    file and folder as written (for platforms without a filesystem-wide sync). ``dest`` itself is
    left mode 0o755. Unsafe or unreadable archives raise InvalidInput; the caller removes
    ``dest``.
    """
    label = f"archive {show(archive)}"
    try:
        st = os.stat(archive)
    except FileNotFoundError:
        raise InvalidInput(f"{label} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {label}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInput(f"{label} is not a regular file")
    try:
        f = open(archive, "rb")  # noqa: SIM115 - closed below, after extraction
    except OSError as exc:
        raise InvalidInput(f"cannot read {label}: {exc.strerror}") from exc
    with f:
        return _extract(f, dest, strip_components, checkpoint, fsync_each, label)


def extract_stream(stream: _Readable, dest: str, label: str,
                   checkpoint: Callable[[str], None] = _no_checkpoint, *,
                   fsync_each: bool = False, strip_components: int = 0) -> ExtractStats:
    """``extract_tarball`` for a tar stream that is no file (a build sent over ssh, or
    fetched by URL)."""
    return _extract(stream, dest, strip_components, checkpoint, fsync_each, label)


def one_folder_hint(archive: str, folder: str) -> str:
    """What to say when everything in ``archive`` is inside ``folder``."""
    return (f"everything in {show(archive)} is inside one folder, {show(folder)}/, so the release "
            f"holds {show(folder)}/... rather than its contents; if that is not what you want, "
            "deploy with --strip-components 1")


def single_top_folder(archive: str) -> str | None:
    """The one top-level folder of ``archive`` when it holds nothing else at the top, else None;
    read from the member headers alone, nothing extracted (what a dry run can afford). Stops at
    the second top-level name. An archive that cannot be read raises InvalidInput, as the
    extraction would."""
    label = f"archive {show(archive)}"
    try:
        f = open(archive, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InvalidInput(f"cannot read {label}: {exc.strerror}") from exc
    found: str | None = None
    is_dir = False
    with f:
        feed = _decoder(f, label)
        try:
            with tarfile.open(fileobj=cast(IO[bytes], feed), mode="r|") as tf:
                seen = getattr(tf, "members", None)
                for m in tf:
                    if isinstance(seen, list):
                        seen.clear()
                    parts = [p for p in m.name.split("/") if p and p != "."]
                    if not parts:
                        continue
                    if found is None:
                        found = parts[0]
                    elif parts[0] != found:
                        return None
                    # a folder when it has members below it or is one itself
                    is_dir = is_dir or len(parts) > 1 or m.isdir()
                    if len(parts) == 1 and not m.isdir():
                        return None
        except tarfile.TarError as exc:
            raise InvalidInput(f"{label} is not a valid tar archive, or is truncated: "
                               f"{exc}") from exc
    return found if is_dir else None


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_ENV}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _first_line(text: bytes) -> str:
    lines = [line.strip() for line in text.decode("utf-8", "replace").splitlines()]
    return show(next((line for line in lines if line), "no message"))


def _git_missing() -> InvalidInput:
    return InvalidInput("git is not installed (no `git` on PATH); cannot export a git source")


def resolve_git_ref(repo: str, ref: str) -> str:
    """The full hash of the commit ``ref`` names in ``repo``; InvalidInput if there is none."""
    if not ref or ref.startswith("-") or not ref.isprintable():
        raise InvalidInput(f"invalid git ref {ref!r}")  # never let a ref become an option
    if not os.path.isdir(repo):
        raise InvalidInput(f"git repository {show(repo)} is not a directory")
    try:
        proc = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            stdin=subprocess.DEVNULL, capture_output=True, env=_git_env(), check=False,
        )
    except FileNotFoundError:
        raise _git_missing() from None
    commit = proc.stdout.decode("ascii", "replace").strip()
    if proc.returncode == 1 and not proc.stderr.strip():  # --quiet: the ref names no commit
        raise InvalidInput(f"git ref {ref!r} names no commit in {show(repo)}")
    if proc.returncode != 0:
        raise InvalidInput(f"cannot read git repository {show(repo)}: {_first_line(proc.stderr)}")
    if len(commit) not in (40, 64) or any(c not in "0123456789abcdef" for c in commit):
        raise InvalidInput(f"git rev-parse gave an unexpected answer for {ref!r}: "
                           f"{show(commit)}")
    return commit


def export_git(
    repo: str,
    ref: str,
    dest: str,
    checkpoint: Callable[[str], None] = _no_checkpoint,
    *,
    fsync_each: bool = False,
) -> str:
    """Export the tree of commit ``ref`` of the git repository ``repo`` into the existing, empty
    folder ``dest`` (no ``.git``; ``export-ignore`` attributes apply; submodules are not
    included) and return the commit's full hash.

    ``git archive`` of the resolved hash (so a ref moving meanwhile cannot mix two commits) is
    streamed through the same checked extraction as a tarball: a symlink in the repository that
    points outside the tree is refused. No shell is involved.
    """
    commit = resolve_git_ref(repo, ref)
    label = f"git tree of {show(ref)} ({commit[:12]}) in {show(repo)}"
    # An empty tree comes out as a lone pax header, which tarfile calls corrupt: ask git first.
    top = subprocess.run(["git", "-C", repo, "ls-tree", "-z", "--name-only", commit],
                         stdin=subprocess.DEVNULL, capture_output=True, env=_git_env(), check=False)
    if top.returncode != 0:
        raise InvalidInput(f"cannot read git repository {show(repo)}: {_first_line(top.stderr)}")
    if not top.stdout:
        raise InvalidInput(f"{label} is empty")
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: git can never block on stderr
        try:
            proc = subprocess.Popen(
                ["git", "-C", repo, "archive", "--format=tar", commit],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=_git_env(),
            )
        except FileNotFoundError:
            raise _git_missing() from None
        assert proc.stdout is not None
        try:
            with proc.stdout:
                _extract(proc.stdout, dest, 0, checkpoint, fsync_each, label)
        except BaseException as exc:
            proc.kill()  # only if still running; a git that failed by itself explains more
            rc = proc.wait()
            if rc > 0 and isinstance(exc, InvalidInput):
                err.seek(0)
                raise InvalidInput(f"git archive of {show(ref)} failed: "
                                   f"{_first_line(err.read())}") from exc
            raise
        rc = proc.wait()
        if rc != 0:
            err.seek(0)
            raise InvalidInput(f"git archive of {show(ref)} failed: {_first_line(err.read())}")
    return commit


def write_revision(dest: str, revision: str, *, fsync: bool = False) -> None:
    """Write ``revision`` and a newline to ``dest/REVISION`` (as Capistrano does).

    A REVISION already in the build is replaced, with a warning; a link there is replaced, never
    followed.
    """
    if not revision or not revision.isprintable():
        raise InvalidInput(f"revision {revision!r} must be one non-empty line")
    path = os.path.join(dest, "REVISION")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise InvalidInput("the build has a folder named REVISION; cannot record the revision")
        log.warning("replacing the build's own REVISION file with %s", show(revision))
        os.unlink(path)
    fd = os.open(path, _NEW_FILE, 0o644)
    try:
        data = memoryview((revision + "\n").encode("utf-8", "surrogateescape"))
        while data:
            data = data[os.write(fd, data):]
        os.fchmod(fd, 0o644)  # whatever the umask
        if fsync:
            _platform.fsync_fd(fd)
    finally:
        os.close(fd)

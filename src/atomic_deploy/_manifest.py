"""Per-release manifests: what a release held when it was deployed, to find drift later.

``ROOT/.atomic-deploy/manifests/<release>.jsonl``: a header line ``{"v": 1, "digest":
"blake2b-256" or null, "entries": N}``, then one JSON array per entry, sorted by path:
``[path, type, mode, size, mtime_ns, data]`` with ``type`` "file", "dir", "symlink" or "other";
``mode`` the permission bits (null for symlinks); ``size`` and ``mtime_ns`` for files only;
``data`` the file's blake2b-256 content digest in hex (null where none was computed) or a
symlink's text. Nothing in it depends on the release id or the host, so the manifest's own
digest (recorded in the history, shown by ``status --json`` and ``list --json``) is the same
for the same build deployed on two hosts.

It is built from what the copy already saw (copy_tree's CopyRecord: the lstat of every entry,
whose mode, size and mtime the release's copy has), corrected for what the deploy put in
afterwards (shared links, REVISION); a release whose check hooks ran, or that came from a
tarball or git, is walked instead. Written atomically (temp file, fsync, rename); removed with
its release (_layout.hide_release_dir).

Also here: the check that ``--check`` hooks did not write through hard links into other
releases (``linked_snapshot``, ``written_through``), and the pieces _copy uses, which imports
this module: the content digest (``digest_file``; ``source_digest`` for a build's files, with
the source digest cache described below, also what --link-unchanged compares) and CopyRecord.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator

from ._jsonfile import FACTORY as _FACTORY
from ._jsonfile import Record, as_plain_dict
from ._layout import Layout, release_dirs, show
from .errors import CheckFailed, InvalidInput

TYPE_CHECKING = False  # typing costs start-up time at every deploy
if TYPE_CHECKING:
    from typing import Any, Callable

    Entry = list[Any]  # [path, type, mode, size, mtime_ns, data]; see the module docstring

ALGORITHM = "blake2b-256"
VERSION = 1

_encode_str: Callable[[str], str] | None = None


def line(rel: str, st: os.stat_result, target: str | None, digest: str | None) -> str:
    """One entry's manifest line (JSON, ASCII: any file name fits), without its newline."""
    global _encode_str
    if _encode_str is None:
        try:  # json.encoder's own, without importing json (and re) at every deploy
            from _json import encode_basestring_ascii
        except ImportError:  # not CPython
            from json.encoder import encode_basestring_ascii

        _encode_str = encode_basestring_ascii
    enc = _encode_str
    mode = st.st_mode
    if stat.S_ISREG(mode):
        data = enc(digest) if digest else "null"
        return f"[{enc(rel)},\"file\",{stat.S_IMODE(mode)},{st.st_size},{st.st_mtime_ns},{data}]"
    if stat.S_ISDIR(mode):
        return f"[{enc(rel)},\"dir\",{stat.S_IMODE(mode)},null,null,null]"
    if stat.S_ISLNK(mode):
        return f"[{enc(rel)},\"symlink\",null,null,null,{enc(target or '')}]"
    return f"[{enc(rel)},\"other\",{stat.S_IMODE(mode)},null,null,null]"


try:  # hashlib.blake2b is this very class; hashlib itself loads OpenSSL (2 ms at every deploy)
    from _blake2 import blake2b
except ImportError:
    from hashlib import blake2b

_DIGEST_SIZE = 32  # blake2b-256 (ALGORITHM)
_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def digest_fd(fd: int) -> str:
    """blake2b-256 of an open file's whole content (read from offset 0), in hex."""
    h = blake2b(digest_size=_DIGEST_SIZE)
    offset = 0
    while True:
        chunk = os.pread(fd, _CHUNK, offset)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)
        offset += len(chunk)


def digest_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    try:
        return digest_fd(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- source digest cache
#
# Reading and hashing every file of the build is what --link-unchanged's content comparison
# costs. As git's index does, a file's digest is remembered under its lstat, and trusted while
# the file still has exactly that lstat: (path, st_dev, st_ino, st_size, st_mtime_ns,
# st_ctime_ns). Users set mtimes (touch -d, reproducible builds) but not ctime: any write,
# chmod, rename or utime sets it to the current time, so a file rewritten with its size and
# mtime kept has a new ctime and is read again.
#
# "Racily clean" entries are never kept: a file changed again within the same timestamp tick
# right after it was hashed would keep its ctime with other bytes. So only entries whose ctime
# and mtime are older than the moment the deploy started (the wall clock, taken before the walk
# stats anything), minus the timestamp granularity (``_margin``), are remembered: any change
# after that moment gets a later ctime. This assumes the source's filesystem clock agrees with
# this machine's (local filesystems; network ones with synchronized clocks).
#
# One file per source folder in $XDG_CACHE_HOME/atomic-deploy/digests/ (the blake2b of its real
# path names it; only the last CACHE_KEEP folders deployed are kept), never inside the source or
# ROOT. Binary and compact (48 bytes an entry: a 16-byte blake2b of the lstat key, the 32-byte
# digest), sorted by key, read whole at the start, looked up by a search in C through the records
# sharing the key's first byte or two (_find): a 200,000-file build costs 9.6 MB. Written
# atomically (temp file, rename) with what this deploy looked up or hashed, so entries of deleted
# or changed files go. Unreadable, corrupt, foreign-owned or unwritable: ignored, the deploy reads
# its files as without it. ``ATOMIC_DEPLOY_DIGEST_CACHE``: "0" turns it off (the CLI's
# --no-digest-cache), an absolute path puts it there instead.

CACHE_ENV = "ATOMIC_DEPLOY_DIGEST_CACHE"
CACHE_KEEP = 8  # source folders whose digests are kept: the most recently deployed
_CACHE_MAGIC = b"ADdigc1\n"
_KEY = 16
_REC = _KEY + _DIGEST_SIZE
_HEADER = len(_CACHE_MAGIC) + 16  # magic, blake2b-128 of the records
_SECOND = 1_000_000_000
# Sub-second timestamps: ext4/XFS/btrfs/APFS (ns, from a clock up to a 100 Hz tick behind),
# NTFS (100 ns), exFAT (10 ms). Whole seconds: HFS+ (1 s), FAT (2 s), some network filesystems.
_FINE_MARGIN_NS = _SECOND // 10
_COARSE_MARGIN_NS = 3 * _SECOND

_active: DigestCache | None = None


def _margin(st: os.stat_result) -> int:
    return _COARSE_MARGIN_NS if st.st_ctime_ns % _SECOND == 0 else _FINE_MARGIN_NS


_WIDE = 32768  # records from which lookups index by a key's first two bytes, not one


def _prefix_index(data: bytes | bytearray, rec: int) -> list[int]:
    """Where each key prefix starts in ``data`` (records of ``rec`` bytes sorted by key), as
    byte offsets, for a search in C through one prefix's records (_find): by a key's first
    byte (257 entries), or its first two (65537) once a bucket of one byte would hold more
    than about a hundred records."""
    n = len(data) // rec
    if n < _WIDE:
        import bisect

        first = data[0::rec]
        return [bisect.bisect_left(first, b) * rec for b in range(257)]
    counts = [0] * 65536
    for a, b in zip(data[0::rec], data[1::rec]):
        counts[a << 8 | b] += 1
    out, acc = [0], 0
    for c in counts:
        acc += c * rec
        out.append(acc)
    return out


def _find(data: bytes | bytearray, index: list[int], key: bytes, rec: int) -> int:
    """The offset of the record whose key is ``key``, or -1 (index: _prefix_index)."""
    p = key[0] if len(index) == 257 else key[0] << 8 | key[1]
    end = index[p + 1]
    off = data.find(key, index[p], end)
    while off > 0 and off % rec:  # only a match at a record's start counts
        off = data.find(key, off + 1, end)
    return off


class _FirstBytes:
    """The cache's records seen as the sequence of their keys' first bytes, for bisect."""

    __slots__ = ("data", "n")

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.n = len(data) // _REC

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return self.data[i * _REC]


class DigestCache:
    """The source digests of one source folder: those read from the cache file, and what this
    deploy looked up (``hits``) or hashed (``new``, bucketed by the key's first byte)."""

    __slots__ = ("child", "data", "hits", "index", "new", "path", "prefix", "ref_ns", "table")

    def __init__(self, path: str | None, source: str, ref_ns: int,
                 data: bytes | bytearray = b"") -> None:
        import bisect

        self.path = path  # the cache file; None: nothing is read or written
        self.prefix = source.rstrip("/") + "/"  # keys hold paths relative to the source
        self.ref_ns = ref_ns  # the wall clock when the deploy started
        self.data = data  # sorted records: key, digest
        self.hits = bytearray(len(data) // _REC)  # 1: looked up, still valid
        self.new = [bytearray() for _ in range(256)]
        self.child = False  # in a forked copy worker: hits go to ``new``, sent back (drain)
        first = _FirstBytes(data)
        self.table = [bisect.bisect_left(first, b) for b in range(257)]
        self.index = _prefix_index(data, _REC)

    def key(self, path: str, st: os.stat_result) -> bytes:
        rel = path[len(self.prefix):] if path.startswith(self.prefix) else path
        text = f"{rel}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
        return blake2b(text.encode("utf-8", "surrogateescape"), digest_size=_KEY).digest()

    def get(self, key: bytes) -> str | None:
        data = self.data
        # A search in C through the records of the key's prefix, not a bisection in Python.
        off = _find(data, self.index, key, _REC)
        if off < 0:
            return None
        if self.child:
            self.new[key[0]] += data[off:off + _REC]
        else:
            self.hits[off // _REC] = 1
        return data[off + _KEY:off + _REC].hex()

    def put(self, key: bytes, st: os.stat_result, digest: str) -> None:
        """Remember a digest just computed, unless its entry is racily clean (see above)."""
        limit = self.ref_ns - _margin(st)
        if st.st_ctime_ns < limit and st.st_mtime_ns < limit:
            self.new[key[0]] += key + bytes.fromhex(digest)

    def drain(self) -> bytes:
        """In a copy worker process: the records learnt since the last call, for absorb()."""
        out = b"".join(self.new)
        self.new = [bytearray() for _ in range(256)]
        return out

    def absorb(self, records: bytes) -> None:
        for off in range(0, len(records) - _REC + 1, _REC):
            self.new[records[off]] += records[off:off + _REC]

    def _chunks(self) -> Iterator[bytes]:
        """The next cache file's records, a bucket at a time: the entries this deploy found
        valid, sorted. Consumes ``new``: at most one bucket is held twice."""
        data, hits, table = self.data, self.hits, self.table
        for b in range(256):
            old = []  # runs of records still valid in this bucket (already sorted)
            i, end = table[b], table[b + 1]
            while i < end:
                i = hits.find(1, i, end)
                if i < 0:
                    break
                j = hits.find(0, i, end)
                j = end if j < 0 else j
                old.append(data[i * _REC:j * _REC])
                i = j
            new, self.new[b] = self.new[b], bytearray()
            if not new:
                yield b"".join(old)
                continue
            both = b"".join(old) + new
            recs = {both[o:o + _KEY]: both[o:o + _REC] for o in range(0, len(both), _REC)}
            yield b"".join([recs[k] for k in sorted(recs)])

    def save(self) -> None:
        """Write the cache file (temp file, rename); any failure only costs the next deploy
        its reads."""
        import hashlib

        if self.path is None:
            return
        folder = os.path.dirname(self.path)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            if self.data and not any(self.new) and self.hits.count(0) == 0:
                os.utime(self.path)  # unchanged: only marked as recently used
            elif self.data or any(self.new):
                os.makedirs(folder, mode=0o700, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _CLOEXEC,
                             0o600)
                try:
                    h = hashlib.blake2b(digest_size=16)
                    _write_all(fd, bytes(_HEADER))  # the header last, once the checksum is known
                    for chunk in self._chunks():
                        h.update(chunk)
                        _write_all(fd, chunk)
                    os.pwrite(fd, _CACHE_MAGIC + h.digest(), 0)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            _prune_caches(folder)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _prune_caches(folder: str) -> None:
    """Keep the CACHE_KEEP most recently used cache files; temp files of a killed deploy go
    after an hour."""
    import time

    found = []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                found.append((e.stat(follow_symlinks=False).st_mtime, e.name))
    found.sort(reverse=True)
    old = time.time() - 3600
    kept = 0
    for mtime, name in found:
        if name.endswith(".tmp"):
            if mtime < old:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
            continue
        kept += 1
        if kept > CACHE_KEEP:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _read_cache(path: str) -> bytes | bytearray:
    """The records of a cache file, or b"" if it is missing, unreadable, corrupt, or not
    safely ours (another owner, writable by others). Read into one buffer: no copy of it is
    ever held at the same time."""
    import hashlib

    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return b""
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & 0o022 or st.st_size < _HEADER or (st.st_size - _HEADER) % _REC):
            return b""
        header = os.read(fd, _HEADER)
        body = bytearray(st.st_size - _HEADER)
        view = memoryview(body)
        with open(fd, "rb", buffering=0, closefd=False) as f:
            while view:
                got = f.readinto(view)
                if not got:
                    return b""  # shorter than it said
                view = view[got:]
    except OSError:
        return b""
    finally:
        os.close(fd)
    if (header[:len(_CACHE_MAGIC)] != _CACHE_MAGIC
            or hashlib.blake2b(body, digest_size=16).digest() != header[len(_CACHE_MAGIC):]):
        return b""
    return body


def open_cache(source: str, avoid: tuple[str, ...] = ()) -> DigestCache | None:
    """The digest cache of the source folder ``source``; None if turned off, or if its folder
    would be inside the source or one of ``avoid`` (ROOT)."""
    import hashlib
    import time

    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() in ("0", "off", "no", "false"):
        return None
    ref_ns = time.time_ns()  # before anything of the source is looked at
    if os.path.isabs(setting):
        folder = setting
    else:
        from ._platform import user_cache_dir

        folder = os.path.join(user_cache_dir(), "digests")
        if not os.path.isabs(folder):
            return None  # no home folder
    real = os.path.realpath(folder)
    real_source = os.path.realpath(source)
    for top in (real_source, *map(os.path.realpath, avoid)):
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return None
    name = hashlib.blake2b(real_source.encode("utf-8", "surrogateescape"),
                           digest_size=16).hexdigest()
    path = os.path.join(folder, name)
    return DigestCache(path, source, ref_ns, _read_cache(path))


@contextlib.contextmanager
def source_digests(source: str, avoid: tuple[str, ...] = ()) -> Iterator[DigestCache | None]:
    """Use the digest cache of ``source`` for source_digest() inside the block; saved when the
    block ends without an error (an interrupted deploy leaves the cache as it was)."""
    global _active
    cache = open_cache(source, avoid)
    if cache is None:
        yield None
        return
    previous, _active = _active, cache
    try:
        yield cache
    finally:
        _active = previous
    cache.save()


def source_digest(path: str, st: os.stat_result, fd: int | None = None,
                  cache: DigestCache | None = None) -> str:
    """blake2b-256 (hex) of the source file ``path`` whose lstat is ``st``: from ``cache`` or
    the active digest cache (source_digests) while the file still has that lstat, else read
    (from ``fd``, open on it, if given) and remembered. Without a cache: digest_fd/digest_file."""
    cache = cache or _active
    if cache is None:
        return _read_digest(path, fd)
    key = cache.key(path, st)
    found = cache.get(key)
    if found is None:
        found = _read_digest(path, fd)
        cache.put(key, st, found)
    return found


def cached_source_digest(path: str, st: os.stat_result) -> tuple[str | None, bytes | None]:
    """(the digest the active cache has for ``path`` with lstat ``st``, or None; the key to
    remember_source_digest() a digest computed otherwise under, None without a cache)."""
    cache = _active
    if cache is None:
        return None, None
    key = cache.key(path, st)
    return cache.get(key), key


def copy_source_digest(path: str, st: os.stat_result, key: bytes | None, src_fd: int,
                       dst_fd: int, buf: bytearray) -> str:
    """Copy the source file ``path`` (open as ``src_fd``, lstat ``st``) into ``dst_fd``,
    hashing it on the way (copy_digest_fd); its digest is remembered under ``key`` (from
    cached_source_digest). Returns the digest."""
    digest = _read_digest(path, src_fd, (dst_fd, buf))
    if key is not None and _active is not None:
        _active.put(key, st, digest)
    return digest


def copy_digest_fd(src_fd: int, dst_fd: int, buf: bytearray) -> str:
    """Copy the rest of ``src_fd`` into ``dst_fd`` through ``buf``, hashing what goes through:
    a changed file is read once, not once to copy and once more to hash. Its blake2b-256."""
    h = blake2b(digest_size=_DIGEST_SIZE)
    view = memoryview(buf)
    while True:
        n = os.readv(src_fd, [buf])
        if not n:
            return h.hexdigest()
        part = view[:n]
        h.update(part)
        while part:
            part = part[os.write(dst_fd, part):]


def _read_digest(path: str, fd: int | None,
                 copy_to: tuple[int, bytearray] | None = None) -> str:
    """The one place a source file is read to be hashed (tests count the calls); with
    ``copy_to`` (destination fd, buffer), ``fd`` is copied there as it is read."""
    if copy_to is not None and fd is not None:
        return copy_digest_fd(fd, *copy_to)
    return digest_fd(fd) if fd is not None else digest_file(path)


def cache_drain() -> bytes:
    """In a forked copy worker: what it added to the active cache, for the calling process's
    cache_absorb()."""
    return _active.drain() if _active is not None else b""


def cache_absorb(records: bytes) -> None:
    if _active is not None and records:
        _active.absorb(records)


def _in_forked_child() -> None:
    if _active is not None:
        _active.child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_forked_child)


_RUN = 16384  # lines per sorted run of a Lines: a few MB as str while it fills
_BLOCK = 1 << 16  # bytes of a run decompressed at a time


class Lines:
    """Manifest lines, kept compact: a manifest of 200,000 entries is about 30 MB of text, 50 MB
    as Python str, where the copy itself needs about 20 MB. So lines are gathered in runs of
    ``_RUN``, and each full run is sorted and kept zlib-compressed (paths compress about
    tenfold); iterating merges the runs lazily, giving every line in sorted order (by text, so
    by path) with only a small piece of each run decompressed at a time.
    """

    __slots__ = ("pending", "runs")

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.runs: list[tuple[int, bool, bytes]] = []  # (lines, any digest, sorted lines)
        self.pending: list[str] = []
        for x in items:
            self.add(x)

    def add(self, x: str) -> None:
        pending = self.pending
        pending.append(x)
        if len(pending) >= _RUN:
            self.seal()

    def seal(self) -> None:
        """Compress the pending lines into a run (add() does it once there are enough)."""
        from zlib import compressobj

        run, self.pending = self.pending, []
        run.sort()
        z = compressobj(1)
        out, digested = [], False
        for i in range(0, len(run), 1024):  # in pieces: never the whole text at once
            text = "\n".join(run[i:i + 1024]) + "\n"
            digested = digested or _any_digest(text)
            out.append(z.compress(text.encode("ascii")))
        out.append(z.flush())
        self.runs.append((len(run), digested, b"".join(out)))

    def __len__(self) -> int:
        return sum(r[0] for r in self.runs) + len(self.pending)

    @property
    def has_digest(self) -> bool:
        """Whether any file's line has its content digest."""
        return any(r[1] for r in self.runs) or _any_digest("\n".join(self.pending) + "\n")

    def __iter__(self) -> Iterator[str]:
        for piece in self.pieces():
            yield from piece

    def pieces(self) -> Iterator[list[str]]:
        """Every line in sorted order, a piece at a time.

        Merged a block at a time, not line by line: every line up to the smallest of the
        blocks' last lines can go, and sorting those (pieces already sorted: a merge, in C)
        costs a fraction of heapq.merge's Python steps per line."""
        from bisect import bisect_right

        self.pending.sort()
        if not self.runs:
            yield self.pending
            return
        # (block, position in it, the rest of its run)
        heads: list[tuple[list[str], int, Iterator[list[str]]]] = []
        for blocks in [*[_unpack(r[2]) for r in self.runs], iter([self.pending])]:
            first = next(blocks, None)
            if first:
                heads.append((first, 0, blocks))
        while heads:
            bound = min(h[0][-1] for h in heads)
            piece: list[str] = []
            left = []
            for block, i, blocks in heads:
                end = bisect_right(block, bound, i)
                piece += block[i:end]
                if end < len(block):
                    left.append((block, end, blocks))
                else:
                    more = next(blocks, None)
                    if more:
                        left.append((more, 0, blocks))
            heads = left
            piece.sort()
            yield piece

    def copy(self) -> Lines:
        out = Lines()
        out.runs, out.pending = list(self.runs), list(self.pending)
        return out

    def unsorted(self) -> Iterator[str]:
        """Every line, run by run: cheaper than in order."""
        for _, _, data in self.runs:
            for block in _unpack(data):
                yield from block
        yield from self.pending

    def keep(self, prefixes: tuple[str, ...], wanted: Callable[[str], bool]) -> Lines:
        """Every line but those starting with one of ``prefixes`` that ``wanted`` refuses.
        Runs without such a line stay as they are, compressed."""
        out = Lines()
        marks = tuple(("\n" + p).encode("ascii") for p in prefixes)
        for n, digested, data in self.runs:
            if not _holds(data, marks):
                out.runs.append((n, digested, data))
                continue
            out.pending = [x for block in _unpack(data) for x in block
                           if not x.startswith(prefixes) or wanted(x)]
            if out.pending:
                out.seal()
        out.pending = [x for x in self.pending if not x.startswith(prefixes) or wanted(x)]
        return out


def _json_string() -> Callable[[str, int], tuple[str, int]]:
    """json's (C) reader of a JSON string: ``read(text, i)`` is (the string whose text begins
    at ``text[i]``, after its quote; the index after its closing quote). A manifest line's path
    is ``read(line, 2)[0]``."""
    import json.decoder

    read: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
    return read


def _any_digest(text: str) -> bool:
    """Whether a file's line in ``text`` (lines, each ending in a newline) has a digest. Lines
    that end in a JSON string are a symlink's (its text) or a file's with its digest, and only
    a type field holds ``,"symlink",`` unescaped: two counts in C, not a loop over lines."""
    return text.count('"]\n') != text.count(',"symlink",')


def _chunks(data: bytes) -> Iterator[bytes]:
    """A compressed run's text, decompressed ``_BLOCK`` bytes at a time."""
    from zlib import decompressobj

    d = decompressobj()
    while not d.eof:
        chunk = d.decompress(data, _BLOCK)
        data = d.unconsumed_tail
        if not chunk and not data:
            raise ValueError("truncated run")  # cannot happen: compressed here
        yield chunk


def _unpack(data: bytes) -> Iterator[list[str]]:
    """The lines of one compressed run, in blocks (about ``_BLOCK`` bytes)."""
    rest = ""
    for chunk in _chunks(data):
        parts = (rest + chunk.decode("ascii")).split("\n")
        rest = parts.pop()
        if parts:
            yield parts


def _holds(data: bytes, marks: tuple[bytes, ...]) -> bool:
    """Whether a compressed run's text (after a newline) holds one of ``marks``."""
    overlap = max(map(len, marks), default=1) - 1  # a mark split between two chunks
    tail = b"\n"
    for chunk in _chunks(data):
        text = tail + chunk
        if any(m in text for m in marks):
            return True
        tail = text[-overlap:] if overlap else b""
    return False


class CopyRecord:
    """What copy_tree saw and did per entry, for the manifest and the write-through check.

    Kept compact (the manifest of 200,000 files must not cost more memory than the copy): each
    entry as its manifest line (line() above) in a Lines, built from the lstat the walk already
    made (the release's copy gets the same type, mode, size and mtime). ``lines``: complete
    lines; with ``with_digests``, regular files' lines go to ``files`` instead, without their
    digest (``null]``), completed from ``digests`` (path -> blake2b hex of the files whose
    content was read) when the manifest is written. ``linked``: paths of files hard-linked to
    link_dest.
    """

    __slots__ = ("digests", "files", "lines", "linked", "with_digests")

    def __init__(self, with_digests: bool = False) -> None:
        self.with_digests = with_digests
        self.lines = Lines()
        self.files = Lines()
        self.digests: dict[str, str] = {}
        self.linked: list[str] = []

    def add(self, rel: str, st: os.stat_result, target: str | None) -> None:
        if self.with_digests and stat.S_ISREG(st.st_mode):
            to = self.files
            to.pending.append(line(rel, st, target, None)[:-5])  # drops "null]"
        else:
            to = self.lines
            to.pending.append(line(rel, st, target, None))
        if len(to.pending) >= _RUN:  # Lines.add, inline: once per entry of the build
            to.seal()


def _entry(rel: str, st: os.stat_result, target: str | None) -> Entry:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return [rel, "file", stat.S_IMODE(mode), st.st_size, st.st_mtime_ns, None]
    if stat.S_ISDIR(mode):
        return [rel, "dir", stat.S_IMODE(mode), None, None, None]
    if stat.S_ISLNK(mode):
        return [rel, "symlink", None, None, None, target]
    return [rel, "other", stat.S_IMODE(mode), None, None, None]


def from_record(record: CopyRecord) -> Lines:
    """The manifest lines of what copy_tree copied."""
    if not len(record.files):
        return record.lines
    digests = record.digests
    enc = _encode_str or __import__("json").encoder.encode_basestring_ascii
    out = record.lines.copy()
    path = _json_string()
    for head in record.files.unsorted():
        value = digests.get(path(head, 2)[0])  # the path: the line's first JSON string
        out.pending.append(head + (enc(value) if value is not None else "null") + "]")
        if len(out.pending) >= _RUN:
            out.seal()
    return out


def walk(top: str, rel: str | None = None) -> Iterator[tuple[str, os.stat_result, str | None]]:
    """(path, lstat, symlink text) of everything below ``top`` (or of ``top/rel`` and what is
    below it), never following symlinks."""
    if rel is None:
        with os.scandir(top) as it:
            todo = [e.name for e in it]
    else:
        todo = [rel]
    while todo:
        rel = todo.pop()
        path = os.path.join(top, rel)
        st = os.lstat(path)
        yield rel, st, os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(path) as it:
                todo.extend(f"{rel}/{e.name}" for e in it)


def _lines(items: Iterator[tuple[str, os.stat_result, str | None]], top: str, digest: bool,
           known: dict[str, tuple[str, str]] | None) -> Iterator[str]:
    for rel, st, target in items:
        value = None
        if stat.S_ISREG(st.st_mode):
            plain = line(rel, st, None, None)
            old = known.get(rel) if known else None
            if old is not None and old[0] + "null]" == plain:  # same size and mtime as copied
                value = old[1]
            elif digest:
                value = digest_file(os.path.join(top, rel))
            if value is None:
                yield plain
                continue
        yield line(rel, st, target, value)


def scan(top: str, digest: bool, record: CopyRecord | None = None) -> Lines:
    """The manifest lines of the tree at ``top``, walked (after checks wrote into it, or for a
    tarball or git source). A file's digest is the copy's (``record``) while its size and mtime
    are those it was copied with, else computed if ``digest``."""
    if record is None or not len(record.files):
        return Lines(_lines(walk(top), top, digest, None))
    # The walk's lines and the copy's, both sorted, side by side: no table of every path.
    return Lines(_recorded(Lines(_lines(walk(top), top, False, None)), record, top, digest))


def _recorded(walked: Lines, record: CopyRecord, top: str,
              digest: bool) -> Iterator[str]:
    enc = _encode_str or __import__("json").encoder.encode_basestring_ascii
    path = _json_string()
    digests = record.digests
    copied = iter(record.files)
    head = next(copied, None)
    for x in walked:
        if ',"file",' not in x:  # only a type field has it unescaped
            yield x
            continue
        while head is not None and head + "null]" < x:
            head = next(copied, None)
        rel = path(x, 2)[0]
        value = digests.get(rel) if head is not None and head + "null]" == x else None
        if value is None and digest:
            value = digest_file(os.path.join(top, rel))
        yield x if value is None else x[:-5] + enc(value) + "]"


def refresh(lines: Lines, top: str, rels: list[str], digest: bool) -> Lines:
    """Read again the paths the deploy changed after the copy (shared links, REVISION), and
    the folders it may have created above them."""
    if not rels:
        return lines
    enc = _encode_str or __import__("json").encoder.encode_basestring_ascii
    drop = tuple(p for rel in rels for p in (f"[{enc(rel)},", f"[{enc(rel)[:-1]}/"))
    parents = tuple({f"[{enc(rel.rsplit('/', i)[0])},"
                     for rel in rels for i in range(1, rel.count("/") + 1)})
    present: set[str] = set()  # those of parents that have a line
    path = _json_string()

    def note(x: str) -> None:
        if x.startswith(parents):
            present.add(x[:path(x, 2)[1] + 1])

    def wanted(x: str) -> bool:
        if x.startswith(drop):
            return False
        note(x)
        return True

    out = lines.keep(drop + parents, wanted)
    for rel in rels:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if f"[{enc(parent)}," not in present:
                present.add(f"[{enc(parent)},")
                out.add(line(parent, os.lstat(os.path.join(top, parent)), None, None))
        if os.path.lexists(os.path.join(top, rel)):
            for x in _lines(walk(top, rel), top, digest, None):
                note(x)
                out.add(x)
    return out


def write(layout: Layout, release: str, lines: Lines | list[str], durable: bool) -> str:
    """Write the release's manifest atomically; returns the manifest's own digest (hex).

    Lines are sorted (by their text, so by path): the same tree gives the same file."""
    from itertools import chain

    from . import _platform
    from ._jsonfile import random_suffix

    if not isinstance(lines, Lines):
        lines = Lines(lines)
    # What json.dumps(..., separators=(",", ":")) writes, keys in this order (no import of json).
    digest = f'"{ALGORITHM}"' if lines.has_digest else "null"
    header = f'{{"v":{VERSION},"entries":{len(lines)},"digest":{digest}}}'
    h = blake2b(digest_size=32)
    folder = layout.manifests
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{release}.jsonl.{random_suffix()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            # in pieces: never the whole file in memory at once
            for part in chain([[header]], lines.pieces()):
                data = ("\n".join(part) + "\n").encode("ascii")
                h.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            if durable:
                _platform.fsync_fd(fd)
        finally:
            os.close(fd)
        os.replace(tmp, layout.manifest(release))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _platform.fsync_dir(folder)
    return h.hexdigest()


def load(layout: Layout, release: str) -> tuple[dict[str, Any], dict[str, Entry]] | None:
    """(header, entries by path), or None if the release has no manifest. Raises ValueError
    for a manifest that is not one."""
    from ._jsonfile import loads

    try:
        with open(layout.manifest(release), "rb") as f:
            text = f.read().decode("ascii")
    except FileNotFoundError:
        return None
    first, _, rest = text.partition("\n")
    header = loads(first)
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise ValueError("not a version 1 manifest")
    body = rest.strip()
    # One parse for all rows: a JSON string never holds a raw newline, so rows are split on it.
    rows = loads("[" + body.replace("\n", ",") + "]") if body else []
    return header, {r[0]: r for r in rows}


_PKEY = 16  # blake2b-128 of a path
_PREC = _PKEY + 16 + _DIGEST_SIZE  # key, size, mtime_ns, digest
_PARSE = 4096  # manifest lines parsed at a time


class PrevDigests:
    """path -> (size, mtime_ns, digest hex) of the files of a release whose digest its manifest
    recorded (``get``), kept compact: as a dict of Python objects, 20,000 files took 6 MB and
    parsing the manifest whole more than twice that at its peak; here each file is a 64-byte
    record (a 128-bit blake2b of its path, size, mtime, digest) in one buffer, sorted and
    searched like the source digest cache: 1.3 MB for 20,000 files, 13 MB for 200,000.
    A path whose key matched another's would also need the same size and mtime to be trusted,
    and a 128-bit collision among a build's paths is not a practical concern."""

    __slots__ = ("data", "index")

    def __init__(self, buckets: list[bytearray] | None = None) -> None:
        parts: list[bytes] = []
        for bucket in buckets or ():
            if len(bucket) > _PREC:  # sorted by key: a match can only be at a record's start
                recs = [bytes(bucket[o:o + _PREC]) for o in range(0, len(bucket), _PREC)]
                recs.sort()
                parts.append(b"".join(recs))
            else:
                parts.append(bytes(bucket))
        self.data = b"".join(parts)
        self.index = _prefix_index(self.data, _PREC)

    def __len__(self) -> int:
        return len(self.data) // _PREC

    def get(self, rel: str) -> tuple[int, int, str] | None:
        key = blake2b(rel.encode("utf-8", "surrogateescape"), digest_size=_PKEY).digest()
        data = self.data
        off = _find(data, self.index, key, _PREC)
        if off < 0:
            return None
        return (int.from_bytes(data[off + 16:off + 24], "little"),
                int.from_bytes(data[off + 24:off + 32], "little", signed=True),
                data[off + 32:off + _PREC].hex())


def _pack_rows(rows: list[bytes], buckets: list[bytearray]) -> None:
    from ._jsonfile import loads

    for r in loads((b"[" + b",".join(rows) + b"]").decode("ascii")):
        if r[1] != "file" or not r[5]:
            continue
        digest = bytes.fromhex(r[5])
        if len(digest) != _DIGEST_SIZE:
            raise ValueError("not a digest")
        key = blake2b(r[0].encode("utf-8", "surrogateescape"), digest_size=_PKEY).digest()
        buckets[key[0]] += (key + r[3].to_bytes(8, "little")
                            + r[4].to_bytes(8, "little", signed=True) + digest)


def file_digests(layout: Layout, release: str) -> PrevDigests:
    """path -> (size, mtime_ns, digest) of the release's files whose digest was recorded
    (PrevDigests.get); empty if it has no manifest or an unreadable one (the caller then reads
    the files themselves). Read a few thousand lines at a time: never the whole manifest."""
    from ._jsonfile import loads

    buckets = [bytearray() for _ in range(256)]
    try:
        with open(layout.manifest(release), "rb") as f:
            header = loads(f.readline().decode("ascii"))
            if not isinstance(header, dict) or header.get("v") != VERSION:
                return PrevDigests()
            if not header.get("digest"):
                return PrevDigests()  # no file has a digest
            rows: list[bytes] = []
            for raw in f:
                x = raw.rstrip(b"\n")
                if x.endswith(b'"]') and b',"file",' in x:  # a file's line with its digest
                    rows.append(x)
                    if len(rows) >= _PARSE:
                        _pack_rows(rows, buckets)
                        rows = []
            if rows:
                _pack_rows(rows, buckets)
    except (OSError, ValueError, TypeError, IndexError, AttributeError, OverflowError):
        return PrevDigests()
    return PrevDigests(buckets)


# --------------------------------------------------------------------------- verify


class VerifyResult(Record):
    __slots__ = ("release", "entries", "clean", "differences", "content_checked", "no_digest")  # noqa: RUF023

    release: str
    entries: int  # in the manifest
    clean: bool
    differences: list[dict[str, Any]]
    content_checked: int  # files whose content was compared (--content)
    no_digest: int  # files --content could not check: no digest recorded

    def __init__(self, release: str, entries: int, clean: bool = True,
                 differences: list[dict[str, Any]] = _FACTORY, content_checked: int = 0,
                 no_digest: int = 0) -> None:
        self.release = release
        self.entries = entries
        self.clean = clean
        self.differences = [] if differences is _FACTORY else differences
        self.content_checked = content_checked
        self.no_digest = no_digest

    def to_dict(self) -> dict[str, Any]:
        return as_plain_dict(self)


_FIELDS = (("mode", 2), ("size", 3), ("mtime", 4))


def verify(layout: Layout, release: str, content: bool) -> VerifyResult:
    """Compare a release with its manifest: every path added, missing or changed (type, mode,
    size, mtime, symlink text; with ``content`` the files' digests too)."""
    try:
        found = load(layout, release)
    except (ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the manifest of release {release} is unreadable ({exc})",
                           "nothing was changed") from None
    if found is None:
        raise InvalidInput(f"release {release} has no manifest (deployed before manifests "
                           "were recorded, or adopted)", "nothing was changed")
    recorded = found[1]
    top = layout.release(release)
    actual = {rel: _entry(rel, st, target) for rel, st, target in walk(top)}
    result = VerifyResult(release, len(recorded))
    for rel in sorted(recorded.keys() | actual.keys()):
        want, have = recorded.get(rel), actual.get(rel)
        if have is None:
            result.differences.append({"path": rel, "change": "missing", "fields": []})
            continue
        if want is None:
            result.differences.append({"path": rel, "change": "added", "fields": []})
            continue
        fields: list[str] = []
        if want[1] != have[1]:
            fields.append("type")
        elif want[1] == "symlink":
            if want[5] != have[5]:
                fields.append("target")
        else:
            fields += [name for name, i in _FIELDS if want[i] != have[i]]
            if content and want[1] == "file":
                if not want[5]:
                    result.no_digest += 1
                elif "size" not in fields:
                    result.content_checked += 1
                    if digest_file(os.path.join(top, rel)) != want[5]:
                        fields.append("content")
        if fields:
            result.differences.append({"path": rel, "change": "changed", "fields": fields})
    result.clean = not result.differences
    return result


def verify_root(root: str, release: str | None, content: bool) -> VerifyResult:
    """``atomic-deploy verify``: ``release`` (default: the one current points to) of ``root``."""
    from ._layout import existing_root, is_release_dir, read_current, valid_release_name

    layout = existing_root(root)
    if release is None:
        cur = read_current(layout)
        if not cur.healthy or cur.release is None:
            raise InvalidInput("no current release to verify (current is missing, dangling or "
                               "outside releases/); name a RELEASE_ID", "nothing was changed")
        release = cur.release
    elif not valid_release_name(release) or not is_release_dir(layout, release):
        raise InvalidInput(f"unknown release id {show(release)!r}", "nothing was changed")
    return verify(layout, release, content)


# --------------------------------------------------------------------------- write-through

Snapshot = dict[str, tuple[int, int, int, int]]  # path -> (inode, size, mtime_ns, ctime_ns)


def linked_snapshot(top: str, rels: list[str]) -> Snapshot:
    """The state of the files hard-linked from other releases, before the checks run."""
    out: Snapshot = {}
    for rel in rels:
        try:
            st = os.lstat(os.path.join(top, rel))
        except (FileNotFoundError, NotADirectoryError):
            continue
        out[rel] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def written_through(top: str, before: Snapshot) -> list[str]:
    """Paths whose shared inode changed since ``before`` (data, times, mode, owner: anything
    that moves ctime). A path the checks removed or replaced by a new file is not one: that
    changed only this release."""
    changed = []
    for rel, (ino, size, mtime, ctime) in before.items():
        try:
            st = os.lstat(os.path.join(top, rel))
        except FileNotFoundError:
            continue
        if st.st_ino == ino and (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != (size, mtime,
                                                                                 ctime):
            changed.append(rel)
    return sorted(changed)


def write_through_error(layout: Layout, release: str, current: str | None,
                        before: Snapshot, changed: list[str],
                        hook_error: CheckFailed | None) -> CheckFailed:
    """The one error for checks that changed files shared with other releases."""
    inodes = {(before[rel][0]) for rel in changed}
    shared_with = []
    for name in release_dirs(layout):
        if name == release:
            continue
        top = layout.release(name)
        for rel in changed:
            try:
                if os.lstat(os.path.join(top, rel)).st_ino in inodes:
                    shared_with.append(name + (" (current, live)" if name == current else ""))
                    break
            except OSError:
                continue
    shown = ", ".join(show(p) for p in changed[:5]) + (
        f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    why = f"{hook_error.message}, and it " if hook_error is not None else "a check "
    n = len(changed)
    message = (f"{why}changed {n} file{'s' if n != 1 else ''} hard-linked by --link-unchanged "
               f"({shown}): the live release's files were changed too, in "
               f"{', '.join(shared_with) or 'the previous release'}; redeploy to restore them")
    err = CheckFailed(message)
    if hook_error is not None:
        err.hooks = hook_error.hooks
    return err

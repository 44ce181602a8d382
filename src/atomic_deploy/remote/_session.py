"""The session protocol: one tool process on the host, holding the root's lock for the whole
deploy, steered by the deploying machine over the ssh channel.

Messages are JSON lines, ``"v": 3`` in each (2 added self-sourced sessions, below; 3 added
``offer`` and ``plan``). The host (this module's ``SessionChannel``, inside ``atomic-deploy
deploy --session LABEL ROOT`` on the host) writes events to stdout; the deploying machine
writes commands to stdin::

    host:  {"event": "ready", "release": ID, "staging": PATH, "link_dest": PATH|null,
            "digests": BOOL}   (whether link_dest's manifest records content digests)
    local: {"cmd": "offer", "files": [[PATH, SIZE, MODE, MTIME_NS, UID, GID, DIGEST], ...]}
           (with digests; see Linker), in chunks, each with "more": true but the last;
           with --compress, "z": the chunk's list as JSON, zlib-compressed, in base64
    host:  {"event": "plan", "send": [INDEX, ...]|null, "linked": N}   the files it did not
           hard-link from link_dest, to send (null: none compared; rsync --checksum then)
    local: {"cmd": "seal"}            the build is in the staging folder (rsync put it there);
           ("release": ID: a fleet's one id, later than the one proposed, used instead)
      or:  {"cmd": "tar"} + frames    the build follows as a tar stream, in frames
           "#<n>\\n" + n bytes, ending with "#0\\n"; then {"cmd": "seal"}
      or, self-sourced (``deploy --session LABEL SOURCE ROOT``: the host reads the build
      itself, fetching a URL or copying a folder of its own machine), the host's ready says
      "source": "self", and ``seal`` means: fill the staging folder from SOURCE now
    host:  {"event": "sealed", "release": ID, "files": N, "bytes": N, "linked": N}
    local: {"cmd": "switch"}           (deploy; prepare goes straight to commit)
    host:  {"event": "switched", "release": ID, "at": T, "ran": [...]}   after-switch hooks and
           health check passed; T: the host's clock when current was switched (a fleet's skew);
           ran: which of "after-switch" and "health-check" were given and ran
    local: {"cmd": "commit"}
    local: {"cmd": "ping", "interval": N}   every N seconds meanwhile (see SILENT_PINGS)
    host:  {"event": "done", "exit": CODE, "stdout": TEXT}   and the process exits

Any failure on the host ends in ``done`` with the exit code and output the tool would have
given locally (its stderr lines pass through as they happen). ``{"cmd": "abort", "reason":
TEXT}`` at any point makes the host undo its work as it does for a failure (with ``"bad":
true``, a switched release is kept and marked bad, as after a failed health check); ``{"cmd": "abort",
"signal": N}`` as it does for signal N (the deploying machine was interrupted). End of input
before ``commit`` (the deploying process died, the connection dropped) is taken as SIGHUP: the
host undoes its own work by the recovery rules, switching back (with after-switch hooks) if
it had switched.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import stat
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from .._copy import CopyStats
from .._layout import Layout
from .._manifest import CopyRecord, digest_file, load, walk
from .._signals import checkpoint
from ..errors import InterruptedBySignal, InvalidInput, OperationFailed

if TYPE_CHECKING:
    from .._manifest import Entry

VERSION = 3
# The deploying machine says {"cmd": "ping", "interval": N} every N seconds while a session is
# open; after SILENT_PINGS intervals without a word from it (its network gone without a FIN, it
# was suspended), the host gives up as on end of input. Until the first ping: DEFAULT_SILENCE.
SILENT_PINGS = 4
DEFAULT_SILENCE = 60.0


class _Frames:
    """A readable stream over the tar frames the reader thread queued."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._end = False

    def read(self, n: int = -1) -> bytes:
        while not self._end and (n < 0 or len(self._buf) < n):
            checkpoint("session-receive")
            chunk = self._chunks.get()
            if not chunk:
                self._end = True
                if chunk is None:
                    raise OperationFailed("the build's tar stream ended early (input closed)")
                break
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


class SessionChannel:
    """The host's end: what ``deploy --session`` and ``prepare --session`` wait on."""

    def __init__(self, label: str, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.label = label
        # The host reads the build itself (``deploy --session LABEL SOURCE ROOT``): ``seal``
        # then means "fill the staging folder from SOURCE now" (protocol version 2).
        self.self_sourced = False
        self._in = stdin
        self._out = stdout
        self._msgs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._data: queue.Queue[bytes | None] = queue.Queue()
        self._committing = False
        self._heard = time.monotonic()
        self._silence = DEFAULT_SILENCE
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="session-input", daemon=True).start()

    # -- input ------------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            for line in iter(self._in.readline, b""):
                self._heard = time.monotonic()
                if line.startswith(b"#"):
                    n = int(line[1:])
                    self._data.put(self._in.read(n) if n else b"")
                    continue
                msg = json.loads(line)
                if isinstance(msg, dict) and msg.get("cmd") == "ping":
                    interval = msg.get("interval")
                    if isinstance(interval, (int, float)) and interval > 0:
                        self._silence = SILENT_PINGS * float(interval)
                    continue
                if isinstance(msg, dict) and msg.get("cmd") == "commit":
                    self._committing = True
                self._msgs.put(msg if isinstance(msg, dict) else {"cmd": repr(msg)})
        except (OSError, ValueError):
            pass
        if not self._committing:
            # The deploying machine is gone: stop as for a hang-up, and undo.
            os.kill(os.getpid(), signal.SIGHUP)
        self._msgs.put(None)
        self._data.put(None)

    def wait(self, *expected: str) -> dict[str, Any]:
        while True:
            checkpoint("session-wait")
            try:
                msg = self._msgs.get(timeout=min(0.5, self._silence / 4))
            except queue.Empty:
                silent = time.monotonic() - self._heard
                if silent > self._silence:
                    raise OperationFailed(
                        f"no word from the deploying machine for {silent:.0f} s (its network "
                        "or the process is gone)") from None
                continue
            if msg is None:
                checkpoint("session-wait")  # the SIGHUP the reader sent
                raise InterruptedBySignal(signal.SIGHUP)
            cmd = msg.get("cmd")
            if cmd == "abort" and isinstance(msg.get("signal"), int):
                raise InterruptedBySignal(msg["signal"])  # Ctrl-C there: as if here
            if cmd == "abort":
                err = OperationFailed(f"stopped by the deploying machine "
                                      f"({msg.get('reason') or 'no reason given'})")
                # A fleet switching every host back because one failed: the release is bad
                # here too (kept, marked bad, as after a failed health check).
                err.mark_bad = bool(msg.get("bad"))  # type: ignore[attr-defined]
                raise err
            if cmd in expected:
                return msg
            raise OperationFailed(f"session protocol error: expected {' or '.join(expected)}, "
                                  f"got {cmd!r}")

    # -- output -----------------------------------------------------------------------------
    def send(self, event: str, **fields: Any) -> None:
        line = json.dumps({"v": VERSION, "event": event, **fields}).encode() + b"\n"
        with self._lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, ValueError):
                pass  # the deploying machine is gone; its end of input says so

    # -- the steps operations.py calls ------------------------------------------------------
    def receive(self, staging: str, link_dest: str | None, release: str,
                previous: tuple[Layout, str] | None = None,
                ) -> tuple[CopyStats, list[str], str, CopyRecord]:
        """Tell where the build goes, wait until it is there; its stats, the paths of the
        files that are hard links to ``link_dest``'s (the check hooks' write-through test),
        the release id to use (a fleet's may be later than the one this host proposed), and
        what the manifest records of it (with every file's digest). ``previous``: the root
        and the release ``link_dest`` is, whose manifest is compared with."""
        digests = link_dest is not None and previous is not None and _has_digests(*previous)
        self.send("ready", release=release, staging=staging, link_dest=link_dest,
                  digests=digests)
        old: dict[str, Entry] = {}
        if link_dest is not None and previous is not None:
            old = _entries(*previous)
        msg = self.wait("seal", "tar", "offer")
        if msg["cmd"] == "offer":
            linker = Linker(old, link_dest, staging) if digests and link_dest else None
            send: list[int] = []
            base = 0
            while True:  # in chunks: each linked while the next is hashed over there
                files = _offered(msg)
                if linker is not None:
                    send += [base + i for i in linker.add(files)]
                base += len(files)
                if not msg.get("more"):
                    break
                msg = self.wait("offer")
            if linker is None:
                self.send("plan", send=None)
            else:
                self.send("plan", send=send, linked=base - len(send))
            msg = self.wait("seal")
        # Not read again: a tar stream (never compared by digest: everything is sent), and a
        # first release (the transfer-bound deploy; the next one compares by --checksum once
        # and records the digests).
        hashed = msg["cmd"] != "tar" and link_dest is not None
        if msg["cmd"] == "tar":
            from .._sources import extract_stream

            extract_stream(_Frames(self._data), staging, f"the build from {self.label}",
                           checkpoint)
            msg = self.wait("seal")
        stats, linked, record = _walk(staging, link_dest, old, hashed)
        chosen = msg.get("release")
        return stats, linked, chosen if isinstance(chosen, str) else release, record

    def claim(self, staging: str, link_dest: str | None, release: str) -> str:
        """A self-sourced session (this host reads the build itself: a URL it fetches, a
        folder on this machine): say where it goes, wait for ``seal``, and return the release
        id to use; the caller then fills the staging folder."""
        self.send("ready", release=release, staging=staging, link_dest=link_dest,
                  source="self")
        msg = self.wait("seal")
        chosen = msg.get("release")
        return chosen if isinstance(chosen, str) else release

    def gate(self, event: str, expect: str, **info: Any) -> None:
        """Say ``event``; go on when the deploying machine says ``expect``."""
        self.send(event, **info)
        self.wait(expect)

    def finish(self, code: int, stdout: str) -> None:
        self.send("done", exit=code, stdout=stdout)


def _has_digests(layout: Layout, release: str) -> bool:
    """Whether the release's manifest records content digests (its header says)."""
    try:
        with open(layout.manifest(release), "rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and bool(header.get("digest"))


def _entries(layout: Layout, release: str) -> dict[str, Entry]:
    """The release's manifest entries by path; empty when it has none or an unreadable one."""
    try:
        found = load(layout, release)
    except (OSError, ValueError, TypeError, IndexError, UnicodeDecodeError):
        return {}
    return found[1] if found is not None else {}


def _safe_rel(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel or rel[0] == "/" or rel[-1] == "/" or \
            "//" in rel or "\0" in rel:
        return False  # (no empty part)
    # A "." or ".." part starts with "/." (or "." at the start): most paths have none.
    return "/." not in "/" + rel or all(part not in (".", "..") for part in rel.split("/"))


def _offered(msg: dict[str, Any]) -> list[Any]:
    files = msg.get("files")
    if isinstance(msg.get("z"), str):  # --compress: zlib'd JSON, in base64
        import base64
        import zlib

        files = json.loads(zlib.decompress(base64.b64decode(msg["z"])))
    if not isinstance(files, list):
        raise OperationFailed("session protocol error: a malformed offer")
    return files


class Linker:
    """Hard-links into ``staging`` each offered file the current release holds unchanged.

    An offered file ``[path, size, mode, mtime_ns, uid, gid, digest]`` is linked only when the
    current release's manifest (``old``) records that path as a file with the same digest,
    size, mode and mtime (so the link gives the new release what rsync -a would have written,
    and touches no metadata of the live file), and the live file still has the size, mtime
    and mode the manifest recorded (not written in place since: write-through) and, where
    this process could set owners (root), the offered owner. Its parents in the current
    release must be real folders (never a path through a symlink): each is opened one
    component at a time with O_NOFOLLOW, and the file is looked at and linked relative to
    that open folder (linkat: no path is resolved again)."""

    _FDS = 64  # open folders kept (the offer comes in walk order: a folder's files together)

    def __init__(self, old: dict[str, Entry], current: str, staging: str) -> None:
        self.old, self.current, self.staging = old, current, staging
        self.root = os.geteuid() == 0
        self.made: set[str] = {""}  # folders created in staging
        self._src: dict[str, int | None] = {}  # folder of the current release: an open fd
        self._dst: dict[str, int] = {}  # folder of staging: an open fd

    def close(self) -> None:
        for fd in [*self._src.values(), *self._dst.values()]:
            if fd is not None:
                os.close(fd)
        self._src.clear()
        self._dst.clear()

    def _open(self, top: str, rel: str) -> int:
        """``top/rel``, a real folder, opened without following a symlink anywhere below
        ``top``; OSError when a part is missing, a symlink or not a folder."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(top, flags)
        for part in rel.split("/") if rel else ():
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            finally:
                os.close(fd)
            fd = nxt
        return fd

    def _src_dir(self, rel: str) -> int | None:
        if rel not in self._src:
            if len(self._src) + len(self._dst) >= self._FDS:
                self.close()
            try:
                self._src[rel] = self._open(self.current, rel)
            except OSError:
                self._src[rel] = None  # not a real folder there: nothing below it is linked
        return self._src[rel]

    def _dst_dir(self, rel: str) -> int:
        if rel not in self._dst:
            self._make(rel)
            if len(self._src) + len(self._dst) >= self._FDS:
                self.close()
            self._dst[rel] = self._open(self.staging, rel)  # made by us, mode 0700
        return self._dst[rel]

    def _make(self, rel: str) -> None:
        if rel not in self.made:
            self._make(rel.rpartition("/")[0])
            with contextlib.suppress(FileExistsError):  # rsync sets its mode and times later
                os.mkdir(os.path.join(self.staging, rel), 0o700)
            self.made.add(rel)

    def add(self, files: list[Any]) -> list[int]:
        """Link what can be; returns the indexes (into ``files``) of those to send."""
        send: list[int] = []
        old, root = self.old, self.root
        S_ISREG, S_IMODE = stat.S_ISREG, stat.S_IMODE
        try:
            for i, item in enumerate(files):
                if i % 256 == 0:
                    checkpoint("session-link")
                try:
                    rel, size, mode, mtime, uid, gid, digest = item
                except (TypeError, ValueError):
                    raise OperationFailed("session protocol error: a malformed offer") from None
                entry = old.get(rel) if isinstance(rel, str) else None
                if entry is None or entry[1] != "file" or entry[5] != digest or \
                        (entry[2], entry[3], entry[4]) != (mode, size, mtime) or \
                        not _safe_rel(rel):
                    send.append(i)
                    continue
                parent, _, name = rel.rpartition("/")
                src = self._src_dir(parent)
                try:
                    st = os.lstat(name, dir_fd=src) if src is not None else None
                except OSError:
                    st = None
                if st is None or not S_ISREG(st.st_mode) or st.st_size != size or \
                        st.st_mtime_ns != mtime or S_IMODE(st.st_mode) != mode or \
                        (root and (st.st_uid, st.st_gid) != (uid, gid)):
                    send.append(i)
                    continue
                os.link(name, name, src_dir_fd=src, dst_dir_fd=self._dst_dir(parent),
                        follow_symlinks=False)
        finally:
            self.close()
        return send


def _walk(top: str, link_dest: str | None, old: dict[str, Entry],
          hashed: bool = True) -> tuple[CopyStats, list[str], CopyRecord]:
    """One walk of what the transfer put in ``top``: its stats, the files that share their
    inode with another release (hard links to ``link_dest``'s file at the same path, made by
    Linker or rsync --link-dest; rsync -a keeps no hard links of its own), and the
    manifest's lines with every file's digest: a linked file's is the one ``old`` (the
    manifest of ``link_dest``) records, when the shared inode still has the size and mtime
    recorded with it; every other file is read here (received moments ago: from the page
    cache), so each digest is computed from the bytes it describes."""
    stats = CopyStats()
    linked: list[str] = []
    record = CopyRecord(True)
    if not os.path.isdir(top) or os.path.islink(top):
        raise InvalidInput("the staging folder is gone")
    for rel, st, target in walk(top):
        record.add(rel, st, target)
        if stat.S_ISDIR(st.st_mode):
            stats.dirs += 1
        elif stat.S_ISLNK(st.st_mode):
            stats.symlinks += 1
        elif stat.S_ISREG(st.st_mode):
            stats.files += 1
            stats.bytes += st.st_size
            entry = None
            if link_dest and st.st_nlink > 1:
                linked.append(rel)
                stats.linked += 1
                stats.linked_bytes += st.st_size
                entry = old.get(rel)
            if entry is not None and entry[1] == "file" and entry[5] and \
                    (entry[3], entry[4]) == (st.st_size, st.st_mtime_ns):
                record.digests[rel] = entry[5]
            elif hashed:
                checkpoint("session-digest")
                record.digests[rel] = digest_file(os.path.join(top, rel))
    return stats, linked, record

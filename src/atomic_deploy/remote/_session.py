"""The session protocol: one tool process on the host, holding the root's lock for the whole
deploy, steered by the deploying machine over the ssh channel.

Messages are JSON lines, ``"v": 2`` in each (2 added self-sourced sessions, below). The host
(this module's ``SessionChannel``, inside ``atomic-deploy deploy --session LABEL ROOT`` on the
host) writes events to stdout; the deploying machine writes commands to stdin::

    host:  {"event": "ready", "release": ID, "staging": PATH, "link_dest": PATH|null}
    local: {"cmd": "seal"}            the build is in the staging folder (rsync put it there);
           ("release": ID: a fleet's one id, later than the one proposed, used instead)
      or:  {"cmd": "tar"} + frames    the build follows as a tar stream, in frames
           "#<n>\\n" + n bytes, ending with "#0\\n"; then {"cmd": "seal"}
      or, self-sourced (``deploy --session LABEL SOURCE ROOT``: the host reads the build
      itself, fetching a URL or copying a folder of its own machine), the host's ready says
      "source": "self", and ``seal`` means: fill the staging folder from SOURCE now
    host:  {"event": "sealed", "release": ID, "files": N, "bytes": N, "linked": N}
    local: {"cmd": "switch"}           (deploy; prepare goes straight to commit)
    host:  {"event": "switched", "release": ID, "at": T}   after-switch hooks and health check
           passed; T: the host's clock when current was switched (a fleet's skew)
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

import json
import os
import queue
import signal
import stat
import threading
import time
from typing import IO, Any

from .._copy import CopyStats
from .._manifest import CopyRecord, walk
from .._signals import checkpoint
from ..errors import InterruptedBySignal, InvalidInput, OperationFailed

VERSION = 2
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
    def receive(self, staging: str, link_dest: str | None,
                release: str) -> tuple[CopyStats, list[str], str, CopyRecord]:
        """Tell where the build goes, wait until it is there; its stats, the paths of the
        files that are hard links to ``link_dest``'s (the check hooks' write-through test),
        the release id to use (a fleet's may be later than the one this host proposed), and
        what the manifest records of it."""
        self.send("ready", release=release, staging=staging, link_dest=link_dest)
        msg = self.wait("seal", "tar")
        if msg["cmd"] == "tar":
            from .._sources import extract_stream

            extract_stream(_Frames(self._data), staging, f"the build from {self.label}",
                           checkpoint)
            msg = self.wait("seal")
        stats, linked, record = _walk(staging, link_dest)
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


def _walk(top: str, link_dest: str | None) -> tuple[CopyStats, list[str], CopyRecord]:
    """One walk of what the transfer put in ``top``: its stats, the files that share their
    inode with another release (rsync --link-dest made them; rsync -a keeps no hard links of
    its own), and the manifest's lines."""
    stats = CopyStats()
    linked: list[str] = []
    record = CopyRecord(False)
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
            if link_dest and st.st_nlink > 1:
                linked.append(rel)
                stats.linked += 1
                stats.linked_bytes += st.st_size
    return stats, linked, record

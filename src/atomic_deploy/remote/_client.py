"""The deploying machine's side: run one command on a remote root, and for deploy and prepare,
drive the host's session while the build is transferred.

The host runs the same tool (uploaded when it lacks this exact build), so its lock, journal,
recovery, hooks and health checks are the ones proven locally; its stdout is returned to the
CLI to print, its stderr lines are passed to ``emit`` as they come.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import stat
import subprocess
import tarfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import _manifest
from .._signals import fault_point
from ..errors import ConnectionLost, InvalidInput, OperationFailed
from . import _ship
from ._address import RemoteRoot
from ._local import LocalConnection, LocalRoot, run_here
from ._session import VERSION
from ._ssh import Connection, Probe, SshSettings, pump_lines

Emit = Callable[[str], None]
PING_ENV = "ATOMIC_DEPLOY_PING_INTERVAL"  # seconds between pings (tests make it short)
PING_INTERVAL = 15.0
OFFER_CHUNK = 2048  # files per offer message: the host links these while more are hashed


@dataclass
class Transfer:
    """How the build goes over: rsync (the default when both ends have it) or a tar stream."""

    compress: bool = False
    trust_mtime: bool = False  # rsync's quick check (size + mtime) instead of --checksum
    progress: bool = False
    method: str = ""  # filled in: "rsync" or "tar"; "pull": the host reads the build itself
    seconds: float = 0.0
    # By digest (see HostSession._by_digest): files the host hard-linked from its current
    # release, and files sent; None when the transfer was not planned from digests.
    linked: int | None = None
    sent: int | None = None
    sent_bytes: int = 0
    compared: str = ""  # how unchanged files were found: "digest", "checksum", "mtime", ""
    cache_digests: bool = True  # False for a scratch build (an extracted tarball, a git export)

    def summary(self) -> dict[str, Any]:
        """--json's ``transfer`` (remote.md)."""
        return {"method": self.method, "compared": self.compared or None, "sent": self.sent,
                "sent_bytes": self.sent_bytes if self.sent is not None else None,
                "seconds": round(self.seconds, 3)}


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    events: list[dict[str, Any]] = field(default_factory=list)
    probe: Probe | None = None
    transfer: Transfer | None = None


class _LocalSignal(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class HostTimeout(OperationFailed):
    """A host said nothing within its deadline (--host-timeout)."""

    def __init__(self, label: str, seconds: float) -> None:
        super().__init__(f"{label} did not answer within {seconds:g} s (--host-timeout)")
        self.label = label


def connect(root: RemoteRoot, settings: SshSettings, tool: _ship.Tool, *, mutating: bool,
            create_root: bool) -> tuple[Connection, Probe, bool]:
    """The master connection and what the host has; the tool installed there when a mutating
    command needs it. Returns (connection, probe, whether the tool is installed there)."""
    if isinstance(root, LocalRoot):  # a fleet's local root: a local subprocess, no ssh
        local = LocalConnection(root)
        return local, local.probe_here(), True
    conn = Connection(root, settings)
    try:
        probe = conn.connect(tool)
        installed = probe.have_tool
        if not installed and mutating:  # a read-only command writes nothing: from memory
            conn.install(tool, create_root)
            installed = True
    except BaseException:
        conn.close()
        raise
    return conn, probe, installed


def run(root: RemoteRoot, argv: Callable[[Probe], list[str]], settings: SshSettings,
        emit: Emit, *,
        mutating: bool, create_root: bool = False, build: str | None = None,
        transfer: Transfer | None = None) -> Outcome:
    """Run ``atomic-deploy ARGV`` on the host (``argv(probe)``: made once the host has said
    what it has); with ``build`` (a local folder), as a session that receives it."""
    if isinstance(root, LocalRoot):
        if build is not None:  # pragma: no cover - a lone local root never comes here
            raise InvalidInput(f"{root} is a local root", "nothing was changed")
        code, text, said = run_here(root, argv(LocalConnection(root).probe_here()))
        for line in said:
            emit(line)
        return Outcome(code, text)
    tool = _ship.tool()
    try:
        return _run(root, argv, settings, emit, tool, mutating=mutating,
                    create_root=create_root, build=build, transfer=transfer)
    finally:
        if build is not None:
            forget_index(build)


def _run(root: RemoteRoot, argv: Callable[[Probe], list[str]], settings: SshSettings,
         emit: Emit, tool: _ship.Tool, *, mutating: bool, create_root: bool,
         build: str | None, transfer: Transfer | None) -> Outcome:
    conn, probe, installed = connect(root, settings, tool, mutating=mutating,
                                     create_root=create_root)
    with conn:
        args = argv(probe)
        proc = conn.start(args, tool, installed=installed, mutating=mutating)
        assert proc.stdout is not None and proc.stderr is not None
        errs = threading.Thread(target=pump_lines, args=(proc.stderr, emit), daemon=True)
        errs.start()
        if build is None:
            assert proc.stdin is not None
            _close_quietly(proc.stdin)  # the request went; the command reads nothing more
            out = proc.stdout.read()
            code = proc.wait()
            errs.join()
            if code == 255:
                raise ConnectionLost(f"lost the connection to {root.label}",
                                     "the command may or may not have run there")
            return Outcome(code, out.decode("utf-8", "surrogateescape"), probe=probe)
        t = transfer or Transfer()
        if t.method != "pull":  # pull: the host reads the build itself (self-sourced)
            t.method = "rsync" if probe.rsync and shutil.which("rsync") else "tar"
            if probe.digests and t.method == "rsync" and not t.trust_mtime:
                build_index(build, t.cache_digests)  # hashing starts as the host's session does
        host = HostSession(conn, proc, t, emit)
        try:
            outcome = _drive(host, build, activate=args[0] == "deploy")
        finally:
            host.close()
        errs.join()
        outcome.probe, outcome.transfer = probe, t
        return outcome


@contextlib.contextmanager
def signals_raised() -> Iterator[None]:
    """Within the block (main thread only), SIGINT, SIGTERM and SIGHUP raise _LocalSignal, so
    the hosts can be told; a second signal just ends the process (the hosts undo on their
    own when their input ends)."""
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        for sig in handled:
            signal.signal(sig, signal.SIG_DFL)
        raise _LocalSignal(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _drive(host: HostSession, build: str, *, activate: bool) -> Outcome:
    """One host's deploy or prepare, start to end (see _session for the steps)."""
    try:
        with signals_raised():
            ev = host.next_event()
            if ev is None or ev["event"] != "ready":
                return host.ended(ev)
            fault_point("session-ready")
            try:
                host.transfer_build(build, ev)
            except (TransferFailed, OSError) as exc:
                host.send("abort", reason=str(exc))  # the host removes the staged release
                return host.ended(host.until_done())
            fault_point("session-transferred")
            host.send("seal")
            ev = host.next_event()
            if ev is None or ev["event"] == "done":
                return host.ended(ev)
            if ev["event"] == "sealed":
                fault_point("session-sealed")
                host.send("switch" if activate else "commit")
                ev = host.next_event()
                if ev is not None and ev["event"] == "switched":
                    fault_point("session-switched")
                    host.send("commit")
                    fault_point("session-committing")
                    ev = host.next_event()
            return host.ended(ev)
    except _LocalSignal as stop:
        return host.stopped(stop.signum)


class HostSession:
    """The session protocol's local end for one host (see _session): events read by a thread
    (so a coordinator can wait with a deadline), pings sent by another."""

    def __init__(self, conn: Connection, proc: subprocess.Popen[bytes], transfer: Transfer,
                 emit: Emit) -> None:
        self.conn, self.proc, self.transfer, self.emit = conn, proc, transfer, emit
        self.events: list[dict[str, Any]] = []
        self.child: subprocess.Popen[bytes] | None = None
        self._rsync_started = 0.0
        self._send_lock = threading.Lock()
        self._done = threading.Event()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._ended = False
        self._held: dict[str, Any] | None = None  # an event read too early, given out again
        threading.Thread(target=self._read, name="session-events", daemon=True).start()
        try:
            interval = float(os.environ.get(PING_ENV) or PING_INTERVAL)
        except ValueError:
            interval = PING_INTERVAL
        threading.Thread(target=self._ping, args=(interval,), name="session-ping",
                         daemon=True).start()

    @property
    def label(self) -> str:
        return self.conn.root.label

    def send(self, cmd: str, **fields: Any) -> None:
        line = json.dumps({"v": VERSION, "cmd": cmd, **fields}).encode() + b"\n"
        self._write(line)

    def _write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        with self._send_lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                # The host's end is gone: reading its events says how it ended. Closed now,
                # so what is left in the buffer is not flushed again (and reported) later.
                _close_quietly(self.proc.stdin)

    def _ping(self, interval: float) -> None:
        """Tell the host this side is alive (see _session.SILENT_PINGS); the first at once,
        so the host knows the interval from the start."""
        while True:
            self.send("ping", interval=interval)
            if self._done.wait(interval):
                return

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # not ours (a login script's chatter): the protocol is JSON lines
            if isinstance(msg, dict) and "event" in msg:
                self._queue.put(msg)
        self._queue.put(None)

    def next_event(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The host's next event; None when its output ended. ``timeout``: raise
        HostTimeout after that long."""
        held, self._held = self._held, None
        if held is not None:
            return held
        if self._ended:
            return None
        try:
            ev = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise HostTimeout(self.label, timeout or 0.0) from None
        if ev is None:
            self._ended = True
            return None
        self.events.append(ev)
        return ev

    def until_done(self, timeout: float | None = None) -> dict[str, Any] | None:
        while True:
            ev = self.next_event(timeout)
            if ev is None or ev["event"] == "done":
                return ev

    def stopped(self, signum: int) -> Outcome:
        """A signal here: tell the host to undo, wait for it to say how it ended."""
        self.stop_child()
        self.send("abort", signal=signum)
        with contextlib.suppress(_LocalSignal):
            self.until_done()
        self.proc.wait()
        return Outcome(128 + signum, "", self.events)

    def ended(self, ev: dict[str, Any] | None) -> Outcome:
        """The outcome the host's ``done`` gives; ConnectionLost when there was none."""
        code = self.proc.wait()
        if ev is not None and ev.get("event") == "done":
            return Outcome(int(ev.get("exit", 1)), str(ev.get("stdout", "")), self.events)
        raise self.lost(code)

    def lost(self, code: int | None) -> ConnectionLost:
        root = self.conn.root
        last = self.events[-1]["event"] if self.events else None
        if last in ("switched",):
            state = ("the host had switched and was told to commit: see atomic-deploy status "
                     f"{root}")
        elif last is None:
            state = "nothing was changed"
        else:
            state = (f"the host undoes the unfinished deploy when it sees the connection close "
                     f"(check: atomic-deploy status {root})")
        why = f"ssh exit status {code}" if code else "the host's tool ended without a result"
        return ConnectionLost(f"lost the connection to {root.label} ({why})", state)

    def stop_child(self, wait: bool = False) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.terminate()
        if wait and child is not None:
            self.child = None
            child.wait()
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    _close_quietly(stream)

    def close(self) -> None:
        self._done.set()
        with self._send_lock:
            if self.proc.stdin is not None:
                _close_quietly(self.proc.stdin)
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait()

    # -- transfer ---------------------------------------------------------------------------
    def transfer_build(self, build: str, ready: dict[str, Any]) -> None:
        """Put ``build`` into the staging folder the host's ``ready`` named."""
        self.build = build
        staging, link_dest = str(ready["staging"]), ready.get("link_dest")
        t = self.transfer
        if t.method == "pull":
            return  # a self-sourced session: `seal` tells the host to read its source now
        if t.method == "rsync":
            if ready.get("digests") and not t.trust_mtime:
                started = time.monotonic()
                # rsync starts now: its ssh channel, the host's shell and rsync start while
                # the host links; it reads the list of files to send once the plan says it.
                self._start_rsync(staging, None, listing=True)
                try:
                    listed = self._by_digest()
                except BaseException:
                    self.stop_child(wait=True)
                    raise
                if listed is None:  # the host compares by --checksum instead: another rsync
                    self.stop_child(wait=True)
                else:
                    t.compared = "digest"
                    self._end_rsync(listed)
                    t.seconds = time.monotonic() - started  # the offer and plan included
                    return
            if isinstance(link_dest, str):  # else nothing to compare with: all is sent
                t.compared = "mtime" if t.trust_mtime else "checksum"
            self._rsync(staging, link_dest if isinstance(link_dest, str) else None)
        else:
            self._tar()

    def _by_digest(self) -> bytes | None:
        """Offer the build's files by digest; the host hard-links from its current release
        those it holds unchanged and says which to send. Returns rsync's --files-from list
        (NUL-separated: every folder, symlink and other entry, and the files to send), or
        None when the host found nothing to compare with (then rsync --checksum as before)."""
        pending = build_index(self.build, self.transfer.cache_digests)
        for chunk, last in pending.chunks(OFFER_CHUNK):
            more = not last
            if self.transfer.compress:  # a slow link: 2.9 MB of offer for 20,000 files: 1.2
                packed = zlib.compress(json.dumps(chunk, separators=(",", ":")).encode(), 1)
                self.send("offer", z=base64.b64encode(packed).decode("ascii"), more=more)
            else:
                self.send("offer", files=chunk, more=more)
        index = pending.result()
        ev = self.next_event()
        if ev is None or ev.get("event") != "plan":
            self._held = ev  # (a "done": read again by whoever waits for it)
            raise TransferFailed(f"{self.label} ended the session instead of answering the "
                                 "offer" if ev is None else
                                 f"{self.label} answered the offer with {ev.get('event')!r}")
        send = ev.get("send")
        if not isinstance(send, list):
            return None
        t = self.transfer
        t.sent, t.linked = len(send), len(index.offer) - len(send)
        t.sent_bytes = sum(int(index.offer[i][1]) for i in send)
        names = [".", *index.others, *(str(index.offer[i][0]) for i in send)]
        return b"".join(os.fsencode(n) + b"\0" for n in names)

    def _rsync(self, staging: str, link_dest: str | None) -> None:
        self._start_rsync(staging, link_dest)
        self._end_rsync(None)

    def _start_rsync(self, staging: str, link_dest: str | None, *,
                     listing: bool = False) -> subprocess.Popen[bytes]:
        """rsync into the staging folder, started; with ``listing``, it waits for the list
        of files to send on its stdin (_end_rsync gives it)."""
        t = self.transfer
        argv = ["rsync", "-a", "--protect-args", "-e", self.conn.rsh()]
        if listing:
            # Only these (no recursion: -a does not imply -r with --files-from), into the
            # staging folder that holds the hard links the host made: every file listed is
            # new there, so no content comparison is needed.
            argv += ["--files-from=-", "--from0"]
        elif not t.trust_mtime:
            argv.append("--checksum")  # size+mtime alone would keep the old bytes of a file
            # rebuilt in the same second with the same size
        if t.compress:
            argv.append("--compress")
        if link_dest:
            argv.append(f"--link-dest={link_dest}")
        if t.progress:
            argv.append("--info=progress2")
        host = self.conn.root.host
        host = f"[{host}]" if ":" in host else host
        dest = f"{self.conn.root.user}@{host}" if self.conn.root.user else host
        # Into the staging folder the host made, never a new one: should the host have undone
        # the deploy meanwhile (the connection dropped), the cd fails and nothing is written.
        argv += ["--rsync-path", f"cd -- {shlex.quote(staging)} && exec rsync",
                 "--", self.build.rstrip("/") + "/", f"{dest}:./"]
        self._rsync_started = time.monotonic()
        # rsync's progress line is redrawn with \r: straight to the terminal (stderr).
        out = 2 if t.progress else subprocess.PIPE
        self.child = subprocess.Popen(argv,
                                      stdin=subprocess.PIPE if listing else subprocess.DEVNULL,
                                      stdout=out,
                                      stderr=subprocess.PIPE if t.progress else subprocess.STDOUT,
                                      start_new_session=True)
        return self.child

    def _end_rsync(self, listed: bytes | None) -> None:
        """Give the started rsync its list (if it waits for one), and wait for it to end."""
        t, child = self.transfer, self.child
        assert child is not None
        if listed is not None:
            threading.Thread(target=_feed, args=(child.stdin, listed), daemon=True).start()
        said: list[str] = []
        pipe = child.stdout or child.stderr
        if pipe is not None:
            pump_lines(pipe, said.append)
        code = child.wait()
        self.child = None
        t.seconds = time.monotonic() - self._rsync_started
        if code != 0:
            raise TransferFailed(f"rsync to {self.conn.root.label} failed: "
                                  f"{_rsync_reason(said, code)}")
        for line in said:  # warnings of a transfer that worked
            self.emit(line)

    def _tar(self) -> None:
        assert self.proc.stdin is not None
        self.send("tar")
        out = _FrameWriter(self._write)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            top = self.build
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                for name in sorted(dirnames) + sorted(filenames):
                    path = os.path.join(dirpath, name)
                    tar.add(path, arcname=os.path.relpath(path, top), recursive=False)
        out.end()


def _feed(pipe: Any, data: bytes) -> None:
    """Write ``data`` to a child's stdin and close it (a thread: the child's output is read
    meanwhile)."""
    with contextlib.suppress(OSError, ValueError):
        pipe.write(data)
    _close_quietly(pipe)


# -- the build's digests ----------------------------------------------------------------------




@dataclass
class BuildIndex:
    """One walk of a build: ``offer`` (per regular file: path, size, mode, mtime_ns, uid, gid,
    blake2b-256 digest, as the session's ``offer`` sends them) and ``others`` (the paths of its
    folders, symlinks and other entries, which rsync always sends)."""

    offer: list[list[Any]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


class _Pending:
    """A build's index being made in a thread (a fleet's hosts share one), readable in chunks
    as it grows: the host links one chunk while the next is hashed here."""

    def __init__(self, build: str, cached: bool) -> None:
        self._index = BuildIndex()
        self._finished = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(build, cached),
                                        name="build-digests",
                                        daemon=True)
        self._thread.start()

    def _run(self, build: str, cached: bool) -> None:
        index = self._index
        # A build folder of the user's is hashed through its digest cache (files whose lstat
        # is unchanged since are not read again); a scratch extraction has new inodes each time.
        cache = _manifest.open_cache(build) if cached else None
        try:
            # In the walk's order, not sorted: the first chunk goes to the host (which links
            # it while the rest is hashed) without waiting for the whole walk.
            for rel, st, _target in _manifest.walk(build):
                if self.stop.is_set():
                    raise TransferFailed("hashing the build was stopped")
                if stat.S_ISREG(st.st_mode):
                    item = [rel, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                            st.st_uid, st.st_gid,
                            _manifest.source_digest(os.path.join(build, rel), st, cache=cache)]
                    with self._cond:
                        index.offer.append(item)
                        if len(index.offer) % 256 == 0:
                            self._cond.notify_all()
                else:
                    index.others.append(rel)
            if cache is not None:
                cache.save()
        except BaseException as exc:  # raised in the threads that wait for it
            self._error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def chunks(self, size: int) -> Iterator[tuple[list[list[Any]], bool]]:
        """(files, whether they are the last) in order, as they are hashed."""
        offer, at = self._index.offer, 0
        while True:
            with self._cond:
                while not self._finished and len(offer) - at < size:
                    self._cond.wait()
                finished = self._finished
                chunk = offer[at:at + size]
            if self._error is not None:
                raise self._error
            at += len(chunk)
            last = finished and at >= len(offer)
            yield chunk, last
            if last:
                return

    def result(self) -> BuildIndex:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._index


_pending: dict[str, _Pending] = {}
_pending_lock = threading.Lock()


def build_index(build: str, cached: bool = True) -> _Pending:
    """The build's index, started in a thread on the first call for ``build`` (until
    forget_index: a fleet's hosts share one); ``cached``: through its digest cache."""
    with _pending_lock:
        found = _pending.get(build)
        if found is None:
            found = _pending[build] = _Pending(build, cached)
        return found


def forget_index(build: str) -> None:
    """Stop and drop ``build``'s index: the next deploy of it hashes it again."""
    with _pending_lock:
        found = _pending.pop(build, None)
    if found is not None:
        found.stop.set()


def _close_quietly(stream: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.close()


class TransferFailed(OperationFailed):
    pass


def _rsync_reason(lines: list[str], code: int) -> str:
    """The line of rsync's output that says why (its last lines are only the exit summary)."""
    for key in ("No space left", "Permission denied", "Read-only", "can't cd", "cd:"):
        for line in lines:
            if key in line:
                return line.strip()
    for line in lines:
        if line.startswith("rsync:") or line.startswith("rsync error:"):
            return line.strip()
    return f"exit status {code}"


class _FrameWriter:
    """tarfile's output, framed for the session's stdin (see _session)."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def write(self, data: bytes) -> int:
        if data:
            self._write(b"#%d\n" % len(data) + bytes(data))
        return len(data)

    def end(self) -> None:
        self._write(b"#0\n")


def check_build(path: str) -> None:
    if not os.path.isdir(path):
        raise InvalidInput(f"the build {path!r} is not a folder", "nothing was changed")

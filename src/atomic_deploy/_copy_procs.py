"""Copy worker processes, for trees whose files are cheap to copy (clones, tmpfs).

On btrfs and XFS a cloned file costs about 20 us of kernel work and 5-10 us of Python work, and
a plain copy on tmpfs (or into the page cache) not much more; worker threads only take turns on
the GIL there (measured slower than one thread), but forked processes run in parallel: on 2
CPUs, one worker plus the calling process copy the 20,000-file build 1.3x (XFS) to 1.6x (btrfs)
faster than the calling process alone, and about 1.5x on tmpfs (docs/benchmarks.md,
"Copy-on-write", "Threads").

The calling process keeps everything but the files' data and metadata: the walk (folders,
symlinks, refusing special files, hard links inside the source, folders' own metadata), the
``checkpoint`` after every file and ``progress``; it also copies an item itself whenever every
worker has enough queued. Work items (up to _copy._BATCH files, of one folder or several) go to
the workers through pipes as plain tuples (marshal: no import, no pickle); each worker answers
per item with how many of its files it finished (they are done in order) and what its copier
did (counts, the files' digests, the files it hard-linked), or the error that stopped it, which
the calling process raises as its own (an OSError with the same errno, message and path as
in-process).

Workers are forked from the calling process, so they share its settings and what the first files
taught it (clone support, created files' owner and mode); they write nothing but files inside the
destination. They stop when their task pipe closes, when the calling process dies (the kernel
sends them SIGKILL, and they check their parent before every item), or on SIGKILL from the
calling process, which waits for them before an error leaves copy_tree: nothing writes into the
staging folder once copy_tree has returned or raised.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import threading
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from . import _manifest, _platform
from .errors import OperationFailed

if TYPE_CHECKING:
    from typing import Optional, Protocol

    # _copy's types, as far as the workers use them. Not imported: _copy imports this module,
    # and hands in its copiers and counters (ProcPool's ``make``, ``stats`` and ``sink``).
    _Files = list[tuple[str, os.stat_result]]  # (name, lstat) of regular files in one folder
    _Item = list[tuple[Any, _Files, bool]]  # (folder, files, whether to link) of one or more
    _Done = tuple[_Item, int, Optional[BaseException]]  # item, files done, what stopped them

    class _Copier(Protocol):
        digests: dict[str, str]  # path (relative to the destination) -> content digest
        linked: list[str]  # paths (relative to the destination) hard-linked to link_dest

        @property
        def stats(self) -> object: ...  # _STAT_COUNTERS among its attributes

        def file(self, spath: str, dpath: str, lpath: str | None, st: os.stat_result) -> None:
            ...

_IN_FLIGHT = 2  # items queued per worker; this process copies the next one itself if all are full
_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_STAT_COUNTERS = ("copied", "cloned", "linked", "linked_bytes")


def available() -> bool:
    """True where worker processes may be forked safely from here.

    Linux only (the kernel stops them with their parent; macOS system libraries are not
    fork-safe), and only from a process with a single thread: a fork copies locks held by other
    threads in whatever state they are.
    """
    return (_platform.IS_LINUX and hasattr(os, "fork")
            and threading.current_thread() is threading.main_thread()
            and threading.active_count() == 1)


def _frame(obj: Any) -> memoryview:
    data = marshal.dumps(obj)
    return memoryview(len(data).to_bytes(4, "little") + data)


def _send(fd: int, obj: Any) -> None:
    view = _frame(obj)
    while view:
        view = view[os.write(fd, view):]


class _Reader:
    """Length-prefixed marshal messages from one pipe."""

    __slots__ = ("buf", "eof", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def fill(self) -> None:
        chunk = os.read(self.fd, 1 << 16)
        if chunk:
            self.buf += chunk
        else:
            self.eof = True

    def message(self) -> Any:
        """The next complete message, or None if there is none buffered yet."""
        if len(self.buf) < 4:
            return None
        size = int.from_bytes(self.buf[:4], "little")
        if len(self.buf) < 4 + size:
            return None
        data, self.buf = self.buf[4:4 + size], self.buf[4 + size:]
        return marshal.loads(data)


def _stat_tuple(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
            st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)


def _stat_result(t: tuple[int, ...]) -> os.stat_result:
    mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime = t
    return os.stat_result((mode, ino, dev, nlink, uid, gid, size, atime // 10**9,
                           mtime // 10**9, ctime // 10**9),
                          {"st_atime_ns": atime, "st_mtime_ns": mtime, "st_ctime_ns": ctime})


def _error_tuple(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, OSError) and exc.errno is not None:
        names = [n if isinstance(n, str) else None for n in (exc.filename, exc.filename2)]
        return ("os", exc.errno, exc.strerror or str(exc), *names)
    return ("other", f"{type(exc).__name__}: {exc}")


def _error_from(err: tuple[Any, ...]) -> BaseException:
    """The error ``_error_tuple`` described: OSError(errno, ...) makes the same subclass
    (FileNotFoundError, PermissionError, ...) as the worker saw."""
    if err[0] == "os":
        _kind, code, text, name, name2 = err
        return OSError(code, text) if name is None else OSError(code, text, name, None, name2)
    return OperationFailed(f"copying failed in a worker process: {err[1]}")


def _worker(copier: _Copier, tasks: int, results: int, parent: int) -> None:
    """A worker process's whole life: copy items until the task pipe closes."""
    reader = _Reader(tasks)
    stats = copier.stats
    while True:
        msg = reader.message()
        while msg is None and not reader.eof:
            if os.getppid() != parent:
                return
            reader.fill()
            msg = reader.message()
        if msg is None:
            return
        bid, groups = msg
        done = 0
        error: tuple[Any, ...] | None = None
        before = [getattr(stats, n) for n in _STAT_COUNTERS]
        try:
            for src, dst, old, items in groups:
                for name, st in items:
                    copier.file(f"{src}/{name}", f"{dst}/{name}",
                                f"{old}/{name}" if old is not None else None, _stat_result(st))
                    done += 1
        except BaseException as exc:  # sent to the calling process, which raises it
            error = _error_tuple(exc)
        delta = [getattr(stats, n) - b for n, b in zip(_STAT_COUNTERS, before)]
        # What the manifest and the write-through check need, per file (see CopyRecord)
        digests, linked = list(copier.digests.items()), copier.linked
        copier.digests, copier.linked = {}, []
        _send(results, (bid, done, delta, error, digests, linked, _manifest.cache_drain()))
        if error is not None:
            return


class _Child:
    __slots__ = ("in_flight", "pid", "reader", "tasks")

    def __init__(self, pid: int, tasks: int, results: int) -> None:
        self.pid = pid
        self.tasks = tasks
        self.reader = _Reader(results)
        self.in_flight = 0


class ProcPool:
    """Forked copy workers, with the put/get interface of the thread pool in _copy."""

    def __init__(self, jobs: int, make: Callable[[], _Copier], stats: object,
                 sink: _Copier) -> None:
        self.stop = False
        self.stats = stats  # what the workers' copiers did (copied, cloned, linked)
        self.sink = sink  # and the files' digests and hard links, gathered here
        self.children: list[_Child] = []
        self.items: dict[int, _Item] = {}
        self.next_id = 0
        self.ready: list[_Done] = []
        _platform.prepare_exit_with_parent()
        parent = os.getpid()
        fds: list[int] = []
        try:
            for _ in range(jobs):
                task_r, task_w = os.pipe()
                res_r, res_w = os.pipe()
                fds = [task_r, task_w, res_r, res_w]
                copier = make()
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the worker (coverage does not follow)
                    code = 1
                    try:
                        for sig in _HANDLED:  # the calling process decides, and kills us
                            signal.signal(sig, signal.SIG_IGN)
                        _platform.exit_with_parent()
                        # Only our own ends: a copy of another worker's task pipe would keep
                        # that worker from ever seeing it close.
                        for fd in [task_w, res_r] + [f for c in self.children
                                                     for f in (c.tasks, c.reader.fd)]:
                            os.close(fd)
                        _worker(copier, task_r, res_w, parent)
                        code = 0
                    finally:
                        os._exit(code)
                os.close(task_r)
                os.close(res_w)
                # Never blocked on a full task pipe: the worker may itself be blocked sending
                # a result that only we can read (see _send_task).
                os.set_blocking(task_w, False)
                self.children.append(_Child(pid, task_w, res_r))
                fds = []
        except BaseException:
            for fd in fds:  # the pipes of a worker that could not be started
                os.close(fd)
            self.stop = True
            self.close()
            raise

    def put(self, item: _Item, timeout: float) -> bool:
        """Hand an item (files of one or more folders) to the least busy worker; False if all
        are full (after ``timeout``)."""
        child = min(self.children, key=lambda c: c.in_flight)
        if child.in_flight >= _IN_FLIGHT:
            self._wait(timeout)
            child = min(self.children, key=lambda c: c.in_flight)
            if child.in_flight >= _IN_FLIGHT:
                return False
        bid = self.next_id
        self.next_id += 1
        self.items[bid] = item
        try:
            self._send_task(child, (bid, [(node.src, node.dst, node.link if link else None,
                                           [(name, _stat_tuple(st)) for name, st in batch])
                                          for node, batch, link in item]))
        except BrokenPipeError:
            # The worker stopped reading. After an error it sends that error and exits: read
            # what it said, so that the caller raises the error itself (on its next collect)
            # rather than "ended unexpectedly".
            del self.items[bid]
            while not child.reader.eof:  # it has exited: its pipe ends after what it sent
                child.reader.fill()
            self._take(child)
            if not self._error_waiting():
                self._ended(child)
            return False
        child.in_flight += 1
        return True

    def _send_task(self, child: _Child, obj: Any) -> None:
        """Write a task; while the pipe is full, read what the worker answers meanwhile.

        An item's message (the paths of all its folders) or an answer (its files' digests)
        may not fit into a pipe: a blocking write here while the worker blocks writing its
        answer would wait forever.
        """
        view = _frame(obj)
        while view:
            try:
                view = view[os.write(child.tasks, view):]
            except BlockingIOError:
                poller = select.poll()
                poller.register(child.tasks, select.POLLOUT)
                poller.register(child.reader.fd, select.POLLIN)
                for fd, _ev in poller.poll():
                    if fd == child.reader.fd:
                        child.reader.fill()
                        self._take(child)

    def full(self) -> bool:
        """True if every worker has all the items it may queue: then the calling process
        copies the next item itself rather than wait."""
        if min(c.in_flight for c in self.children) >= _IN_FLIGHT:
            self._wait(0.0)
        return min(c.in_flight for c in self.children) >= _IN_FLIGHT

    def get(self, timeout: float | None) -> _Done | None:
        """One finished item (the item, how many of its files were done, error), or None; waits
        up to ``timeout``."""
        if not self.ready and timeout is not None:
            self._wait(timeout)
        elif not self.ready:
            self._wait(0.0)
        return self.ready.pop(0) if self.ready else None

    def _wait(self, timeout: float) -> None:
        busy = {c.reader.fd: c for c in self.children if c.in_flight}
        if not busy:
            return
        poller = select.poll()
        for fd in busy:
            poller.register(fd, select.POLLIN)
        for fd, _ev in poller.poll(int(timeout * 1000)):
            child = busy[fd]
            child.reader.fill()
            self._take(child)

    def _take(self, child: _Child) -> None:
        """Act on what a worker sent: each buffered result, then the end of its pipe."""
        msg = child.reader.message()
        while msg is not None:
            self._result(child, msg)
            msg = child.reader.message()
        if child.reader.eof and child.in_flight:
            if self._error_waiting():
                child.in_flight = 0  # it stopped after its error; the caller raises that
            else:
                self._ended(child)

    def _error_waiting(self) -> bool:
        return any(exc is not None for _item, _done, exc in self.ready)

    def _ended(self, child: _Child) -> NoReturn:
        """A worker is gone with work unfinished (killed from outside, out of memory)."""
        status = _reap(child.pid)
        child.pid = 0
        how = f" ({_describe_status(status)})" if status is not None else ""
        raise OperationFailed(f"a copy worker process ended unexpectedly{how}")

    def _result(self, child: _Child, msg: Any) -> None:
        bid, done, delta, error, digests, linked, learnt = msg
        child.in_flight -= 1
        item = self.items.pop(bid)
        for name, value in zip(_STAT_COUNTERS, delta):
            setattr(self.stats, name, getattr(self.stats, name) + value)
        self.sink.digests.update(digests)
        self.sink.linked.extend(linked)
        _manifest.cache_absorb(learnt)  # the source digests it read or found
        exc = _error_from(tuple(error)) if error is not None else None
        self.ready.append((item, done, exc))

    def close(self) -> None:
        """Let the workers finish and exit (after an error: kill them); always wait for them."""
        for c in self.children:
            if self.stop and c.pid:  # not reaped yet, so the pid is still ours
                os.kill(c.pid, signal.SIGKILL)
            os.close(c.tasks)
        for c in self.children:
            if c.pid:
                _reap(c.pid)
                c.pid = 0
            os.close(c.reader.fd)
        self.children = []


def _reap(pid: int) -> int | None:
    """Wait for a worker to end; its wait status, or None if someone else reaped it (an
    application that ignores SIGCHLD or waits for all its children itself)."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.WEXITSTATUS(status)}"


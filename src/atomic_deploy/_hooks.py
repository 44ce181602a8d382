"""Deploy hooks and health checks: run a user's command beside a release and stop it cleanly.

A hook given as a string is a shell command (``/bin/sh -c STRING``); a hook given as a list is an
argument vector and never meets a shell. Every hook runs in a session of its own with stdin from
``/dev/null`` and stdout and stderr merged into one pipe, which is read line by line and handed to
the caller's callback as the lines arrive. A timeout, or a signal deferred by ``SignalGuard``
(``pending_signal()``), stops the whole process group: SIGTERM, a grace period, then SIGKILL.
``run_hook`` reports what happened and never raises for a failed, timed out or interrupted hook;
the caller decides (``HookFailed``, ``InterruptedBySignal``).

A hook dies with the tool. Its session leader is a small supervisor (this Python, ``-I -S -c``)
that starts the hook as its child and watches a pipe whose write end only this process holds:
when the tool dies, even by ``kill -9``, the kernel closes that end, the supervisor reads EOF and
SIGKILLs the whole process group, hook and everything it started. The same code path on every
POSIX system (no prctl needed); it costs the supervisor's start-up, a few milliseconds per hook.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

from . import _log as log
from ._layout import RELEASES
from ._signals import pending_signal
from ._version import __version__
from .errors import CheckFailed, InvalidInput

if TYPE_CHECKING:
    import urllib.request


Hook = Union[str, Sequence[str]]
OutputCallback = Callable[[str], None]
GroupCallback = Callable[[int], None]

PHASES = ("check", "after-switch", "health-check", "on-failure")
SHELL = "/bin/sh"  # what subprocess's shell=True uses; not looked up in the hook's PATH
POLL_SECONDS = 0.05  # how soon a timeout or a deferred signal is noticed while a hook runs
KILL_GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL of a hook's process group
# After the hook itself exits, how long to keep reading output that a process it left in the
# background still holds open; without a bound, `server &` in a hook would hang the deploy.
DRAIN_SECONDS = 1.0
MAX_LINE_BYTES = 64 * 1024  # a longer run without a newline is passed on in pieces
_READ_SIZE = 64 * 1024
_EXTRA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# The hook's session leader: `python -I -S -c _SUPERVISOR WATCH_FD NAME ARGV...`. It starts the
# hook as its child (same process group), waits for it, and exits as the hook did (same exit
# status, or killed by the same signal). Readable WATCH_FD means EOF: the tool that holds the
# write end is gone, so the whole group is killed. SIGTERM and the like, which the tool sends to
# the group, are caught (not ignored: a caught signal is default again in the hook after exec)
# so that the supervisor outlives the hook and reports its status.
_SUPERVISOR = """\
import os, select, signal, sys
watch, lc_ctype, name, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
os.set_inheritable(watch, False)
env = dict(os.environ)
if lc_ctype == "-":  # not set for us: an LC_CTYPE now is Python's locale coercion (PEP 538)
    env.pop("LC_CTYPE", None)
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *a: None)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    if signal.getsignal(sig) != signal.SIG_IGN:
        signal.signal(sig, lambda *a: None)
try:
    pid = os.posix_spawnp(argv[0], argv, env,
                          setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
except OSError as exc:
    reason = exc.strerror or str(exc)
    sys.stdout.write(f"{name} hook: cannot run {argv[0]}: {reason}\\n")
    sys.stdout.flush()
    os._exit(127 if exc.errno == 2 else 126)
while True:
    ready = select.select([watch, wake_r], [], [])[0]
    if watch in ready:
        os.killpg(0, signal.SIGKILL)
    if wake_r in ready:
        os.read(wake_r, 512)
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
if os.WIFSIGNALED(status):
    sig = os.WTERMSIG(status)
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    try:
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)
os._exit(os.waitstatus_to_exitcode(status))
"""


def _supervisor_argv(name: str, argv: list[str], watch_fd: int,
                     env: Mapping[str, str]) -> list[str] | None:
    """How to start ``argv`` under the supervisor, or None where this Python cannot run ``-c``
    code (a frozen executable): the hook then starts directly and does not die with the tool."""
    if not sys.executable or getattr(sys, "frozen", False) or not hasattr(os, "posix_spawnp"):
        return None
    lc_ctype = "+" if "LC_CTYPE" in env else "-"
    return [sys.executable, "-I", "-S", "-c", _SUPERVISOR, str(watch_fd), lc_ctype, name, *argv]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_status(status: int | str) -> str:
    """``3`` -> "exit status 3", ``-9`` -> "killed by SIGKILL"; words are returned as they are."""
    if isinstance(status, str):
        return status
    if status < 0:
        return f"killed by {_signal_name(-status)}"
    return f"exit status {status}"


class HookFailed(CheckFailed):
    """A hook or health check failed: ``status`` is its exit status, "timed out", or words."""

    exit_code = 4

    def __init__(self, name: str, status: int | str, tail: Sequence[str] = (),
                 state: str | None = None) -> None:
        super().__init__(f"{name} hook failed: {describe_status(status)}", state)
        self.name = name
        self.status = status
        self.tail = list(tail)

    @classmethod
    def from_result(cls, result: HookResult, state: str | None = None) -> HookFailed:
        return cls(result.name, result.status, result.tail, state)

    @classmethod
    def from_health(cls, result: HealthResult, state: str | None = None) -> HookFailed:
        hook = result.hook
        if hook is not None and not hook.ok:
            return cls("health-check", hook.status, hook.tail, state)
        return cls("health-check", result.last_error or "failed",
                   hook.tail if hook is not None else (), state)


@dataclass(frozen=True)
class HookResult:
    name: str
    argv: list[str]
    # None when we stopped the hook (timeout, signal): its exit status would then be our doing,
    # and a hook that exits 0 on SIGTERM must not read as a success.
    returncode: int | None
    timed_out: bool
    interrupted_by: int | None
    seconds: float
    tail: list[str]  # the last lines of stdout and stderr together, without newlines

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def status(self) -> int | str:
        """The exit status, or "timed out" / "interrupted by SIGTERM" when we stopped it."""
        if self.timed_out:
            return "timed out"
        if self.interrupted_by is not None:
            return f"interrupted by {_signal_name(self.interrupted_by)}"
        assert self.returncode is not None
        return self.returncode


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    attempts: int
    last_status: int | None  # HTTP status of the last URL attempt
    last_error: str | None  # why the last attempt failed
    seconds: float
    interrupted_by: int | None = None  # a deferred signal stopped the retries
    hook: HookResult | None = None  # the last run of the health-check command, if any


def hook_argv(cmd: Hook) -> list[str]:
    """The argument vector a hook runs as; raises InvalidInput for an empty or malformed one."""
    if isinstance(cmd, str):
        if not cmd.strip():
            raise InvalidInput("hook command is empty")
        argv = [SHELL, "-c", cmd]
    else:
        argv = list(cmd)
        if not argv or not argv[0]:
            raise InvalidInput("hook command is empty")
        if not all(isinstance(arg, str) for arg in argv):
            raise InvalidInput(f"hook command {argv!r}: every argument must be a string")
    if any("\0" in arg for arg in argv):
        raise InvalidInput("hook command contains a NUL character")
    return argv


def hook_env(root: str, release: str, release_path: str, previous: str | None, phase: str,
             **extra: str) -> dict[str, str]:
    """The ATOMIC_DEPLOY_* variables a hook sees; ``extra`` keys become ATOMIC_DEPLOY_<KEY>."""
    if phase not in PHASES:
        raise ValueError(f"unknown hook phase {phase!r} (known: {', '.join(PHASES)})")
    # Absolute, because the hook runs with the release as its working directory.
    root = os.path.abspath(root)
    env = {
        "ATOMIC_DEPLOY_ROOT": root,
        "ATOMIC_DEPLOY_RELEASE": release,
        "ATOMIC_DEPLOY_RELEASE_PATH": os.path.abspath(release_path),
        "ATOMIC_DEPLOY_PREVIOUS": previous or "",
        "ATOMIC_DEPLOY_PREVIOUS_PATH": os.path.join(root, RELEASES, previous) if previous else "",
        "ATOMIC_DEPLOY_PHASE": phase,
    }
    for key, value in extra.items():
        name = "ATOMIC_DEPLOY_" + key.upper()
        if not _EXTRA_NAME.fullmatch(key) or name in env:
            raise ValueError(f"hook_env: cannot use {key!r} as an extra variable")
        if not isinstance(value, str):
            raise TypeError(f"hook_env: {key} must be a string, not {type(value).__name__}")
        env[name] = value
    return env


class _Lines:
    """Split a byte stream into text lines, keeping the last few."""

    def __init__(self, tail_lines: int, on_output: OutputCallback | None) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._on_output = on_output
        self._buf = bytearray()

    def line(self, text: str) -> None:
        self.tail.append(text)
        if self._on_output is not None:
            self._on_output(text)

    def feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                break
            self._emit(bytes(self._buf[:end]))
            del self._buf[:end + 1]
        while len(self._buf) >= MAX_LINE_BYTES:
            self._emit(bytes(self._buf[:MAX_LINE_BYTES]))
            del self._buf[:MAX_LINE_BYTES]

    def close(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()

    def _emit(self, raw: bytes) -> None:
        # Hooks print whatever their tools print: never fail on bad bytes.
        self.line(raw.decode("utf-8", errors="replace").rstrip("\r"))


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass  # the whole group is gone already
    except PermissionError:  # e.g. a setuid program in the group; nothing more we can do
        log.debug("cannot send %s to process group %d", _signal_name(signum), pgid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_hook(name: str, cmd: Hook, *, cwd: str, env: Mapping[str, str], timeout: float | None,
             on_output: OutputCallback | None = None, tail_lines: int = 50,
             on_start: GroupCallback | None = None) -> HookResult:
    """Run one hook to the end, streaming its output lines to ``on_output`` as they come.

    Returns the outcome; a hook that fails, times out, cannot start (126/127) or is stopped
    because a signal is pending is reported, not raised. An exception from ``on_output`` kills
    the hook's process group and propagates. ``on_start`` gets the hook's process group id as
    soon as it runs (for the journal: recovery kills a group the tool could not).
    """
    argv = hook_argv(cmd)
    if timeout is not None and not timeout > 0:  # also refuses NaN
        raise InvalidInput(f"hook timeout must be a positive number of seconds, not {timeout}")
    if tail_lines < 0:
        raise ValueError("tail_lines must not be negative")
    lines = _Lines(tail_lines, on_output)
    start = time.monotonic()

    def result(returncode: int | None, timed_out: bool = False,
               interrupted_by: int | None = None) -> HookResult:
        return HookResult(name, argv, returncode, timed_out, interrupted_by,
                          time.monotonic() - start, list(lines.tail))

    log.debug("running %s hook: %r in %s", name, argv, cwd)
    # The supervisor's pipe: only this process holds the write end (non-inheritable, and every
    # child is started with close_fds), so EOF on the read end means this process is gone.
    watch_r, watch_w = os.pipe()
    try:
        proc = _start(name, argv, cwd, env, watch_r)
    except OSError as exc:
        os.close(watch_w)
        # The shell's conventions: 127 not found, 126 found but not runnable.
        code = 127 if exc.errno == errno.ENOENT else 126
        reason = exc.strerror or str(exc)
        if exc.filename == cwd and argv[0] != cwd:  # the child could not chdir
            lines.line(f"{name} hook: cannot start in {cwd}: {reason}")
        else:
            lines.line(f"{name} hook: cannot run {argv[0]}: {reason}")
        return result(code)
    except ValueError as exc:  # e.g. a NUL byte in an environment variable
        os.close(watch_w)
        raise InvalidInput(f"{name} hook: {exc}") from None
    except BaseException:
        os.close(watch_w)
        raise
    finally:
        os.close(watch_r)
    try:
        return _follow(proc, name, lines, start, timeout, result, on_start)
    finally:
        os.close(watch_w)  # the supervisor has exited: nothing is left to watch it


def _start(name: str, argv: list[str], cwd: str, env: Mapping[str, str],
           watch_fd: int) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **env}
    supervised = _supervisor_argv(name, argv, watch_fd, full_env)
    # A session of its own: the terminal's Ctrl-C does not reach the hook behind our back
    # (we stop it ourselves, in order), and killpg reaches everything it started.
    return subprocess.Popen(
        supervised or argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, bufsize=0,
        pass_fds=(watch_fd,) if supervised else (),
    )


def _follow(proc: subprocess.Popen[bytes], name: str, lines: _Lines, start: float,
            timeout: float | None, result: Callable[..., HookResult],
            on_start: GroupCallback | None) -> HookResult:
    """Read the running hook's output until it is done, stopping it on a timeout or signal."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pgid = proc.pid  # session leader, so its pid is the group id
    deadline = None if timeout is None else start + timeout
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    reading = True
    timed_out = False
    interrupted_by: int | None = None
    stop_sent: float | None = None  # when SIGTERM went to the group
    grace_over = False  # SIGKILL sent, or nothing was left to kill
    exited: float | None = None
    try:
        if on_start is not None:
            on_start(pgid)
        while True:
            if reading:
                if selector.select(POLL_SECONDS):
                    data = os.read(fd, _READ_SIZE)
                    if data:
                        lines.feed(data)
                    else:
                        reading = False
                        selector.unregister(fd)
                        lines.close()
            else:  # the hook closed its output but still runs
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(POLL_SECONDS)  # returns as soon as it exits
            now = time.monotonic()
            running = proc.poll() is None
            if running and stop_sent is None:
                interrupted_by = pending_signal()
                timed_out = interrupted_by is None and deadline is not None and now >= deadline
                if interrupted_by is not None or timed_out:
                    why = "timed out" if timed_out else f"got {_signal_name(interrupted_by or 0)}"
                    log.debug("%s hook: %s; stopping process group %d", name, why, pgid)
                    _signal_group(pgid, signal.SIGTERM)
                    stop_sent = now
            if stop_sent is not None and not grace_over and now - stop_sent >= KILL_GRACE_SECONDS:
                _signal_group(pgid, signal.SIGKILL)
                grace_over = True
            if running:
                continue
            # The hook is gone. When we are stopping it, the rest of its group gets the grace
            # period too (a grandchild may hold on to SIGTERM), then SIGKILL.
            if stop_sent is not None and not grace_over:
                if _group_alive(pgid):
                    continue
                grace_over = True
            if not reading:
                break
            exited = exited if exited is not None else now
            if now - exited >= DRAIN_SECONDS:
                log.warning("%s hook exited but a process it started still holds its output "
                            "open; no longer reading it", name)
                break
    except BaseException:
        # on_output raised, or KeyboardInterrupt without a SignalGuard: no grace while unwinding.
        _signal_group(pgid, signal.SIGKILL)
        proc.wait()
        # The hook is the supervisor's child, not ours: wait for the group rather than a pid.
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.005)
        raise
    finally:
        selector.close()
        proc.stdout.close()
    lines.close()
    returncode = proc.wait()
    stopped = timed_out or interrupted_by is not None
    log.debug("%s hook finished: %s", name, "stopped" if stopped else describe_status(returncode))
    return result(None if stopped else returncode, timed_out, interrupted_by)


def check_url_syntax(url: str) -> None:
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise InvalidInput(f"health-check URL {url!r}: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"health-check URL {url!r}: only http:// and https:// URLs with a "
                           "host are accepted")


def _check_retry_options(retries: int, timeout: float, interval: float) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidInput(f"health-check retries must be a whole number >= 0, not {retries!r}")
    if not timeout > 0:
        raise InvalidInput(f"health-check timeout must be a positive number of seconds, "
                           f"not {timeout!r}")
    if not interval >= 0:
        raise InvalidInput(f"health-check interval must be >= 0 seconds, not {interval!r}")


def _opener() -> urllib.request.OpenerDirector:
    # Imported here: urllib.request (with http.client, email and ssl) would add about a third to
    # every deploy's start-up, and only --health-url needs it.
    import urllib.request

    # No proxies from the environment: the check is about the server just deployed, and a
    # proxy (or its cache) answering instead would say nothing about it.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fetch(opener: urllib.request.OpenerDirector, url: str,
           timeout: float) -> tuple[bool, int | None, str | None]:
    """One GET, redirects followed: (ok, final HTTP status, error)."""
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": f"atomic-deploy/{__version__}"})
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.getcode()
            final_url = response.geturl()
    except urllib.error.HTTPError as exc:  # 4xx, 5xx, and redirects that were not followed
        exc.close()
        return False, exc.code, f"HTTP {exc.code} {exc.reason}".rstrip()
    except urllib.error.URLError as exc:
        return False, None, str(exc.reason)
    except (OSError, http.client.HTTPException) as exc:  # timeouts and resets after connecting
        return False, None, str(exc) or type(exc).__name__
    if not isinstance(status, int):
        return False, None, f"redirected to {final_url}, which is not HTTP"
    if 200 <= status < 300:
        return True, status, None
    return False, status, f"HTTP {status}"


def _sleep_unless_signal(seconds: float, sleep: Callable[[float], None]) -> int | None:
    """Sleep in short steps so that a deferred signal cuts the wait short; returns it if so."""
    remaining = seconds
    while True:
        signum = pending_signal()
        if signum is not None or remaining <= 1e-9:
            return signum
        step = min(POLL_SECONDS, remaining)
        sleep(step)
        remaining -= step


def _health_loop(cmd: Hook | None, url: str | None, *, retries: int, timeout: float,
                 interval: float, cwd: str, env: Mapping[str, str],
                 on_output: OutputCallback | None, sleep: Callable[[float], None],
                 on_start: GroupCallback | None = None) -> HealthResult:
    if cmd is None and url is None:
        raise ValueError("a health check needs a command, a URL, or both")
    if cmd is not None:
        hook_argv(cmd)
    if url is not None:
        check_url_syntax(url)
    _check_retry_options(retries, timeout, interval)
    opener = _opener()
    start = time.monotonic()
    attempts = 0
    status: int | None = None
    error: str | None = None
    hook: HookResult | None = None

    def result(ok: bool, interrupted_by: int | None = None) -> HealthResult:
        return HealthResult(ok, attempts, status, error, time.monotonic() - start,
                            interrupted_by, hook)

    while True:
        signum = pending_signal()
        if signum is not None:
            return result(False, signum)
        attempts += 1
        ok = True
        status = error = None
        if cmd is not None:
            hook = run_hook("health-check", cmd, cwd=cwd, env=env, timeout=timeout,
                            on_output=on_output, on_start=on_start)
            if hook.interrupted_by is not None:
                error = f"command {describe_status(hook.status)}"
                return result(False, hook.interrupted_by)
            if not hook.ok:
                ok = False
                error = f"command {describe_status(hook.status)}"
        # Both must pass; the URL is not asked when the command already said no.
        if ok and url is not None:
            ok, status, error = _fetch(opener, url, timeout)
        if ok:
            return result(True)
        if attempts > retries:
            return result(False)
        log.debug("health check attempt %d failed: %s", attempts, error)
        signum = _sleep_unless_signal(interval, sleep)
        if signum is not None:
            return result(False, signum)


def check_url(url: str, *, timeout: float, retries: int, interval: float = 1.0,
              sleep: Callable[[float], None] = time.sleep) -> HealthResult:
    """GET ``url`` until it answers 2xx (redirects followed), at most ``1 + retries`` times."""
    return _health_loop(None, url, retries=retries, timeout=timeout, interval=interval, cwd=".",
                        env={}, on_output=None, sleep=sleep)


def run_health_check(cmd: Hook | None, url: str | None, *, retries: int, timeout: float,
                     interval: float, cwd: str, env: Mapping[str, str],
                     on_output: OutputCallback | None = None,
                     sleep: Callable[[float], None] = time.sleep,
                     on_start: GroupCallback | None = None) -> HealthResult:
    """Healthy when the command exits 0 and the URL answers 2xx (each only if given).

    One attempt runs the command (each run limited to ``timeout``), then fetches the URL; a failed
    attempt is retried ``retries`` times, ``interval`` seconds apart. A deferred signal stops the
    retries (``interrupted_by``); the caller raises.
    """
    return _health_loop(cmd, url, retries=retries, timeout=timeout, interval=interval, cwd=cwd,
                        env=env, on_output=on_output, sleep=sleep, on_start=on_start)

"""Hooks and health checks (atomic_deploy._hooks): shell vs argv, streaming, timeouts, signals."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from atomic_deploy import _hooks
from atomic_deploy._hooks import (
    HookFailed,
    HookResult,
    check_url,
    hook_env,
    run_health_check,
    run_hook,
)
from atomic_deploy._signals import SignalGuard
from atomic_deploy.errors import InvalidInput, OperationFailed
from conftest import process_running, wait_for

PY = sys.executable


def run(cmd: _hooks.Hook, cwd: Path, **kw: Any) -> HookResult:
    kw.setdefault("env", {})
    kw.setdefault("timeout", 10)
    return run_hook("check", cmd, cwd=str(cwd), **kw)


@pytest.fixture
def fast_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_hooks, "KILL_GRACE_SECONDS", 0.3)


# -- running -----------------------------------------------------------------------------------


def test_string_hook_runs_through_the_shell(tmp_path: Path) -> None:
    res = run('echo "$GREETING" | tr a-z A-Z; echo to-stderr >&2; exit 0', tmp_path,
              env={"GREETING": "hello"})
    assert res.argv[:2] == ["/bin/sh", "-c"]
    assert (res.ok, res.returncode, res.timed_out, res.interrupted_by) == (True, 0, False, None)
    assert res.tail == ["HELLO", "to-stderr"]


def test_argv_hook_never_meets_a_shell(tmp_path: Path) -> None:
    nasty = "$(touch pwned1);`touch pwned2`;touch pwned3 && echo $HOME | cat > pwned4"
    res = run([PY, "-c", "import sys; print(sys.argv[1])", nasty], tmp_path)
    assert res.ok and res.tail == [nasty]
    assert list(tmp_path.iterdir()) == []


def test_environment_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INHERITED_BY_HOOK", "from-parent")
    monkeypatch.setenv("OVERRIDDEN_FOR_HOOK", "parent")
    env = hook_env(str(tmp_path), "20260101000000", str(tmp_path), None, "check",
                   revision="abc123")
    env["OVERRIDDEN_FOR_HOOK"] = "hook"
    script = ("import os; print(os.getcwd()); "
              "print(*sorted(f'{k}={v}' for k, v in os.environ.items() "
              "if k.startswith(('ATOMIC_DEPLOY_', 'INHERITED_', 'OVERRIDDEN_'))), sep='\\n')")
    res = run([PY, "-c", script], tmp_path, env=env)
    assert res.ok, res.tail
    assert os.path.samefile(res.tail[0], tmp_path)
    assert res.tail[1:] == sorted([
        f"ATOMIC_DEPLOY_ROOT={tmp_path}",
        "ATOMIC_DEPLOY_RELEASE=20260101000000",
        f"ATOMIC_DEPLOY_RELEASE_PATH={tmp_path}",
        "ATOMIC_DEPLOY_PREVIOUS=",
        "ATOMIC_DEPLOY_PREVIOUS_PATH=",
        "ATOMIC_DEPLOY_PHASE=check",
        "ATOMIC_DEPLOY_REVISION=abc123",
        "INHERITED_BY_HOOK=from-parent",
        "OVERRIDDEN_FOR_HOOK=hook",
    ])


def test_output_is_streamed_while_the_hook_runs(tmp_path: Path) -> None:
    seen: list[str] = []
    box: list[HookResult] = []
    cmd = "echo ready; while [ ! -e go ]; do sleep 0.01; done; echo done"
    t = threading.Thread(target=lambda: box.append(run(cmd, tmp_path, on_output=seen.append)))
    t.start()
    try:
        wait_for(lambda: "ready" in seen, 10, "the first line")
        assert t.is_alive() and seen == ["ready"]  # the hook is still waiting for `go`
    finally:
        (tmp_path / "go").touch()
        t.join(10)
    assert box[0].ok and seen == ["ready", "done"] and box[0].tail == seen


def test_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    seen: list[str] = []
    res = run([PY, "-c", "for i in range(1, 101): print(f'line{i}')"], tmp_path,
              on_output=seen.append, tail_lines=5)
    assert res.tail == [f"line{i}" for i in range(96, 101)]
    assert len(seen) == 100


def test_odd_output_is_kept(tmp_path: Path) -> None:
    res = run(r"printf 'crlf\r\nbad \377 byte\nno newline at end'", tmp_path)
    assert res.tail == ["crlf", "bad \ufffd byte", "no newline at end"]


def test_failures_are_reported_not_raised(tmp_path: Path) -> None:
    res = run("echo about to fail; exit 3", tmp_path)
    assert (res.ok, res.returncode, res.status) == (False, 3, 3)
    err = HookFailed.from_result(res, "current unchanged")
    assert isinstance(err, OperationFailed) and err.exit_code == 4
    assert (err.name, err.status, err.tail) == ("check", 3, ["about to fail"])
    assert str(err) == "check hook failed: exit status 3; current unchanged"

    res = run("kill -9 $$", tmp_path)
    assert res.returncode == -signal.SIGKILL
    assert "killed by SIGKILL" in str(HookFailed.from_result(res))


def test_programs_that_cannot_start(tmp_path: Path) -> None:
    for missing in ("no-such-program-atomic-deploy", str(tmp_path / "missing")):
        res = run([missing, "arg"], tmp_path)
        assert (res.returncode, res.timed_out) == (127, False)
        assert len(res.tail) == 1 and missing in res.tail[0]
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    assert run([str(not_executable)], tmp_path).returncode == 126
    res = run(["true"], tmp_path / "no-such-dir")
    assert res.returncode == 127 and "cannot start in" in res.tail[0]
    assert run("no-such-program-atomic-deploy", tmp_path).returncode == 127  # sh says 127 too


@pytest.mark.parametrize("cmd", ["", "   ", [], [""], ["echo", 1], "echo \0"])
def test_bad_commands_are_invalid_input(tmp_path: Path, cmd: Any) -> None:
    with pytest.raises(InvalidInput):
        run(cmd, tmp_path)


def test_bad_timeout_is_invalid_input(tmp_path: Path) -> None:
    for timeout in (0, -1, float("nan")):
        with pytest.raises(InvalidInput):
            run("true", tmp_path, timeout=timeout)


# -- stopping ----------------------------------------------------------------------------------


def test_timeout_kills_the_whole_group(tmp_path: Path, fast_kill: None) -> None:
    res = run("sleep 100 & echo $!; sleep 100", tmp_path, timeout=0.3)
    assert (res.timed_out, res.returncode, res.interrupted_by, res.ok) == (True, None, None, False)
    assert res.status == "timed out" and res.seconds < 5
    grandchild = int(res.tail[0])
    wait_for(lambda: not process_running(grandchild), 5, "the backgrounded grandchild to die")
    assert str(HookFailed.from_result(res)) == "check hook failed: timed out"


def test_sigkill_after_grace_when_sigterm_is_ignored(tmp_path: Path, fast_kill: None) -> None:
    # Ignored signals stay ignored across exec, so the whole group shrugs off SIGTERM.
    res = run("trap '' TERM; sleep 100 & echo $!; echo $$; sleep 100", tmp_path, timeout=0.2)
    assert res.timed_out and 0.5 <= res.seconds < 5
    pids = [int(line) for line in res.tail]
    wait_for(lambda: not any(map(process_running, pids)), 5, f"pids {pids} to die")


def test_pending_signal_stops_the_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      fast_kill: None) -> None:
    pids: list[int] = []
    monkeypatch.setattr(_hooks, "pending_signal", lambda: signal.SIGINT if pids else None)
    res = run("sleep 100 & echo $!; sleep 100", tmp_path, timeout=None,
              on_output=lambda line: pids.append(int(line)))
    assert (res.interrupted_by, res.timed_out, res.returncode) == (signal.SIGINT, False, None)
    assert res.status == "interrupted by SIGINT"
    wait_for(lambda: not process_running(pids[0]), 5, "the grandchild to die")


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_real_deferred_sigterm_stops_the_hook(tmp_path: Path) -> None:
    def on_output(line: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # deferred by the guard, as during a deploy

    with SignalGuard() as guard:
        res = run("echo started; exec sleep 100", tmp_path, timeout=None, on_output=on_output)
    assert guard.received == signal.SIGTERM
    assert res.interrupted_by == signal.SIGTERM and res.returncode is None and res.seconds < 5


def test_callback_error_kills_the_hook_and_propagates(tmp_path: Path) -> None:
    pids: list[int] = []

    def on_output(line: str) -> None:
        pids.append(int(line))
        raise RuntimeError("callback broke")

    with pytest.raises(RuntimeError, match="callback broke"):
        run("echo $$; exec sleep 100", tmp_path, on_output=on_output)
    assert not process_running(pids[0])  # killed and reaped before the error propagated


def test_background_process_does_not_hang_the_hook(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_hooks, "DRAIN_SECONDS", 0.2)
    res = run("sleep 30 & echo $!", tmp_path)
    pid = int(res.tail[0])
    try:
        assert res.ok and res.seconds < 5
    finally:
        os.kill(pid, signal.SIGKILL)


# -- environment -------------------------------------------------------------------------------


def test_hook_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = hook_env("www", "20260102000000", "www/releases/20260102000000", "20260101000000",
                   "on-failure", error="disk full", revision="abc")
    root = str(tmp_path / "www")
    assert env == {
        "ATOMIC_DEPLOY_ROOT": root,
        "ATOMIC_DEPLOY_RELEASE": "20260102000000",
        "ATOMIC_DEPLOY_RELEASE_PATH": os.path.join(root, "releases", "20260102000000"),
        "ATOMIC_DEPLOY_PREVIOUS": "20260101000000",
        "ATOMIC_DEPLOY_PREVIOUS_PATH": os.path.join(root, "releases", "20260101000000"),
        "ATOMIC_DEPLOY_PHASE": "on-failure",
        "ATOMIC_DEPLOY_ERROR": "disk full",
        "ATOMIC_DEPLOY_REVISION": "abc",
    }
    with pytest.raises(ValueError, match="phase"):
        hook_env("www", "r", "p", None, "before-deploy")
    with pytest.raises(ValueError):
        hook_env("www", "r", "p", None, "check", previous_path="/elsewhere")


# -- health checks -----------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    counts: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        path = self.path
        if path == "/ok":
            self._reply(200)
        elif path == "/bad":
            self._reply(500)
        elif path == "/redirect":
            self._reply(302, {"Location": "/ok"})
        elif path.startswith("/flaky/"):  # 503 twice, then 200; one counter per path
            n = self.counts[path] = self.counts.get(path, 0) + 1
            self._reply(200 if n > 2 else 503)
        else:
            self._reply(404)

    def _reply(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.counts = {}
    t = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


class FakeSleep:
    def __init__(self) -> None:
        self.total = 0.0

    def __call__(self, seconds: float) -> None:
        self.total += seconds


def test_check_url(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Proxies from the environment are ignored: the check must reach the server itself.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    res = check_url(f"{server}/ok", timeout=5, retries=0)
    assert (res.ok, res.attempts, res.last_status, res.last_error) == (True, 1, 200, None)
    res = check_url(f"{server}/redirect", timeout=5, retries=0)
    assert (res.ok, res.last_status) == (True, 200)


def test_check_url_retries(server: str) -> None:
    sleep = FakeSleep()
    res = check_url(f"{server}/bad", timeout=5, retries=2, interval=0.5, sleep=sleep)
    assert (res.ok, res.attempts, res.last_status) == (False, 3, 500)
    assert res.last_error is not None and "500" in res.last_error
    assert sleep.total == pytest.approx(1.0)

    res = check_url(f"{server}/flaky/a", timeout=5, retries=2, sleep=FakeSleep())
    assert (res.ok, res.attempts, res.last_status) == (True, 3, 200)
    res = check_url(f"{server}/flaky/b", timeout=5, retries=1, sleep=FakeSleep())
    assert (res.ok, res.attempts, res.last_status) == (False, 2, 503)


def test_check_url_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = check_url(f"http://127.0.0.1:{port}/", timeout=2, retries=1, sleep=FakeSleep())
    assert (res.ok, res.attempts, res.last_status) == (False, 2, None)
    assert res.last_error
    err = HookFailed.from_health(res)
    assert err.name == "health-check" and err.status == res.last_error


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "file:///etc/passwd", "localhost:8080/x",
                                 "http:///no-host", "127.0.0.1/ok", "http://127.0.0.1:99999/"])
def test_check_url_rejects_non_http(url: str) -> None:
    with pytest.raises(InvalidInput):
        check_url(url, timeout=1, retries=0)


def test_check_url_bad_options(server: str) -> None:
    for kw in ({"retries": -1}, {"timeout": 0}, {"interval": -1}):
        args: dict[str, Any] = {"timeout": 1, "retries": 0, "interval": 0, **kw}
        with pytest.raises(InvalidInput):
            check_url(f"{server}/ok", **args)


def test_check_url_stops_on_pending_signal(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sleep = FakeSleep()
    monkeypatch.setattr(_hooks, "pending_signal", lambda: signal.SIGTERM if sleep.total else None)
    res = check_url(f"{server}/bad", timeout=5, retries=10, interval=1, sleep=sleep)
    assert (res.ok, res.attempts, res.interrupted_by) == (False, 1, signal.SIGTERM)
    assert sleep.total < 1  # the wait was cut short


def test_health_check_command(tmp_path: Path) -> None:
    # Healthy on the third run: the command is retried like the URL.
    cmd = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo try $n; [ $n -ge 3 ]"
    seen: list[str] = []
    res = run_health_check(cmd, None, retries=3, timeout=5, interval=0.1, cwd=str(tmp_path),
                           env={}, on_output=seen.append, sleep=FakeSleep())
    assert (res.ok, res.attempts) == (True, 3)
    assert seen == ["try 1", "try 2", "try 3"]
    assert res.hook is not None and res.hook.ok

    res = run_health_check("echo sick; exit 1", None, retries=1, timeout=5, interval=0,
                           cwd=str(tmp_path), env={}, sleep=FakeSleep())
    assert (res.ok, res.attempts, res.last_error) == (False, 2, "command exit status 1")
    err = HookFailed.from_health(res)
    assert (err.status, err.tail) == (1, ["sick"])


def test_health_check_command_and_url(tmp_path: Path, server: str) -> None:
    kw: dict[str, Any] = {"retries": 1, "timeout": 5, "interval": 0, "cwd": str(tmp_path),
                          "env": {}, "sleep": FakeSleep()}
    res = run_health_check("true", f"{server}/ok", **kw)
    assert (res.ok, res.attempts, res.last_status) == (True, 1, 200)
    res = run_health_check("true", f"{server}/bad", **kw)
    assert (res.ok, res.attempts, res.last_status) == (False, 2, 500)
    res = run_health_check("false", f"{server}/ok", **kw)
    assert (res.ok, res.last_status, res.last_error) == (False, None, "command exit status 1")
    with pytest.raises(ValueError):
        run_health_check(None, None, **kw)


def test_health_check_command_timeout(tmp_path: Path, fast_kill: None) -> None:
    res = run_health_check("exec sleep 100", None, retries=0, timeout=0.2, interval=0,
                           cwd=str(tmp_path), env={})
    assert (res.ok, res.last_error) == (False, "command timed out")
    assert HookFailed.from_health(res).status == "timed out"

"""Hook output that cannot be written, and hooks that must not outlive the tool.

Output that cannot be written (a closed stderr pipe, a full disk, no stderr at all) never changes
a deploy's outcome. A `kill -9` of atomic-deploy takes its running hook's whole process group
with it, and the next command's recovery kills a recorded group that is somehow still there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    Builds,
    cli_env,
    current_target,
    history,
    process_running,
    release_names,
    run_cli,
    start_cli,
    wait_for,
)


def _deploy_with_stderr(root: Path, build: Path, stderr: int | object,
                        *hook_args: str, **popen: object) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomic_deploy", "deploy", str(build), str(root), *hook_args],
        env=cli_env(), stdout=subprocess.PIPE, stderr=stderr, **popen)  # type: ignore[call-overload]
    if proc.stderr is not None:
        proc.stderr.close()  # the reader goes away at once: every write to stderr is EPIPE
    out, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, b"")


LOTS = "yes 'some hook output' | head -n 20000"
HOOK_FLAGS = [
    ("--after-switch", LOTS),
    ("--check", "yes | head -c 1000000"),
    ("--health-check", LOTS),
]


def _assert_deployed(root: Path, out: bytes, rc: int) -> None:
    assert rc == 0, out
    names = release_names(root)
    assert len(names) == 2
    assert current_target(root) == f"releases/{names[-1]}"
    assert [h["outcome"] for h in history(root) if h["op"] == "deploy"] == ["ok", "ok"]
    assert not (root / ".atomic-deploy" / "journal.json").exists()


@pytest.mark.parametrize(("flag", "hook"), HOOK_FLAGS)
def test_a_closed_stderr_pipe_does_not_roll_back_a_deploy(builds: Builds, root: Path,
                                                          flag: str, hook: str) -> None:
    assert _deploy_with_stderr(root, builds("v1"), subprocess.DEVNULL).returncode == 0
    r = _deploy_with_stderr(root, builds("v2"), subprocess.PIPE, flag, hook)
    _assert_deployed(root, r.stdout, r.returncode)


def test_a_warning_to_a_closed_stderr_does_not_roll_back_a_deploy(builds: Builds,
                                                                  root: Path) -> None:
    """-q: no hook output at all, only the warning about a background process holding the
    hook's output open, logged while the deploy is still open."""
    assert _deploy_with_stderr(root, builds("v1"), subprocess.DEVNULL).returncode == 0
    r = _deploy_with_stderr(root, builds("v2"), subprocess.PIPE, "-q",
                            "--after-switch", "sleep 3 &")
    _assert_deployed(root, r.stdout, r.returncode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(("flag", "hook"), HOOK_FLAGS[:2])
def test_stderr_on_a_full_disk_does_not_roll_back_a_deploy(builds: Builds, root: Path,
                                                           flag: str, hook: str) -> None:
    assert _deploy_with_stderr(root, builds("v1"), subprocess.DEVNULL).returncode == 0
    with open("/dev/full", "wb") as full:
        r = _deploy_with_stderr(root, builds("v2"), full, flag, hook)
    _assert_deployed(root, r.stdout, r.returncode)


def test_no_stderr_at_all_keeps_hook_output_off_stdout(builds: Builds, root: Path) -> None:
    """With fd 2 closed, Python's sys.stderr is None, and print(file=None) would write to stdout:
    hook output must not end up in the JSON result."""
    assert _deploy_with_stderr(root, builds("v1"), subprocess.DEVNULL).returncode == 0
    r = _deploy_with_stderr(root, builds("v2"), subprocess.DEVNULL, "--json",
                            "--after-switch", "echo not for stdout",
                            preexec_fn=lambda: os.close(2))
    _assert_deployed(root, r.stdout, r.returncode)
    assert json.loads(r.stdout)["ok"] is True


# ---------------------------------------------------------------- hooks die with the tool

def _sleeper(marker: Path) -> str:
    """A hook whose grandchild (sleep, behind sh) writes its pid to ``marker`` and lingers; run
    again (recovery re-runs after-switch hooks and health checks), it passes at once."""
    return (f"[ -e {marker} ] && exit 0; "
            f"sleep 60 & echo $! > {marker}.tmp; mv {marker}.tmp {marker}; wait")


def _pid_in(marker: Path) -> int:
    wait_for(marker.exists, what=f"{marker.name} written by the hook")
    return int(marker.read_text())


def _kill_tool_while_hook_runs(root: Path, build: Path, marker: Path,
                               *flags: str) -> tuple[int, subprocess.Popen[str]]:
    proc = start_cli("deploy", build, root, *flags)
    try:
        sleeper = _pid_in(marker)
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()) from None
    assert process_running(sleeper)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    return sleeper, proc


@pytest.mark.parametrize("phase", ["check", "after-switch", "health-check", "on-failure"])
def test_kill_9_of_the_tool_kills_the_running_hook_and_its_children(
        builds: Builds, root: Path, tmp_path: Path, phase: str) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    marker = tmp_path / "sleep.pid"
    flags = [f"--{phase}", _sleeper(marker)]
    if phase == "on-failure":
        flags += ["--check", "exit 3"]
    sleeper, _ = _kill_tool_while_hook_runs(root, builds("v2"), marker, *flags)
    wait_for(lambda: not process_running(sleeper), timeout=10, what="the hook's sleep to be killed")
    # The next command recovers: killed after its switch, the deploy is finished once its
    # after-switch hook and health check pass again; killed before, it is undone (back on v1).
    r = run_cli("prune", root, "--keep", "5")
    assert r.returncode == 0, r.stderr
    assert "hook process group" not in r.stderr  # nothing was left for recovery to kill
    newest = -1 if phase in ("after-switch", "health-check") else 0
    assert current_target(root) == f"releases/{release_names(root)[newest]}"
    assert (root / "current" / "version.txt").read_text() == (
        "v2\n" if newest == -1 else "v1\n")


def test_a_hook_left_in_the_background_outlives_a_finished_deploy(
        builds: Builds, root: Path, tmp_path: Path) -> None:
    """Only a tool that dies takes its hooks along: `server &` in a hook stays running."""
    marker = tmp_path / "server.pid"
    r = run_cli("deploy", builds("v1"), root, "--after-switch",
                f"sleep 60 >/dev/null 2>&1 & echo $! > {marker}")
    assert r.returncode == 0, r.stderr
    server = int(marker.read_text())
    try:
        assert process_running(server)
    finally:
        os.kill(server, signal.SIGKILL)


def test_the_supervisor_reports_the_hooks_own_status(tmp_path: Path) -> None:
    from atomic_deploy import _hooks

    res = _hooks.run_hook("check", "kill -SEGV $$", cwd=str(tmp_path), env={}, timeout=30)
    assert res.returncode == -signal.SIGSEGV
    assert not [p for p in os.listdir(tmp_path) if p.startswith("core")]  # no core dumped
    # SIGPIPE is default again for the hook (Python ignores it): `yes` ends quietly.
    res = _hooks.run_hook("check", "yes | head -c 10 >/dev/null; echo done", cwd=str(tmp_path),
                          env={}, timeout=30)
    assert res.ok and res.tail == ["done"]


# ---------------------------------------------------------------- recovery kills what is left

def _journal(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / ".atomic-deploy" / "journal.json").read_text())
    return data


def test_recovery_kills_a_hook_group_that_survived_the_tool(builds: Builds, root: Path,
                                                            tmp_path: Path) -> None:
    """The supervisor cannot act (stopped here): the next command's recovery kills the group
    recorded in the journal before it touches the deploy."""
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    v1 = current_target(root)
    marker = tmp_path / "sleep.pid"
    proc = start_cli("deploy", builds("v2"), root, "--health-check", _sleeper(marker))
    sleeper = _pid_in(marker)
    pgid = os.getpgid(sleeper)
    # Noted right after the hook started: the hook may have written its marker first.
    wait_for(lambda: [g["pgid"] for g in _journal(root).get("hook_groups", [])] == [pgid],
             what="the hook's process group in the journal")
    os.kill(pgid, signal.SIGSTOP)  # the supervisor, its leader, can no longer react
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert process_running(sleeper)  # the tool is gone, its hook is not
    r = run_cli("prune", root, "--keep", "5")
    assert not process_running(sleeper)  # gone before the command returned
    assert r.returncode == 0, r.stderr
    assert "killed 1 hook process group(s) still running" in r.stderr
    # Then the deploy, killed after its switch, was finished: its health check passed again.
    assert current_target(root) != v1
    assert (root / "current" / "version.txt").read_text() == "v2\n"
    assert [(h["op"], h.get("recovered")) for h in history(root)][-3:] == [
        ("deploy", True), ("recover", None), ("prune", None)]


def test_recovery_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    from atomic_deploy import _recovery

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        journal = {"hook_groups": [{"pgid": other.pid, "started": "not its start time"}]}
        assert _recovery.kill_hook_groups(journal) == []
        assert other.poll() is None
        started = _platform_started(other.pid)
        journal = {"hook_groups": [{"pgid": other.pid, "started": started}]}
        assert _recovery.kill_hook_groups(journal) == [other.pid]
        assert other.wait(timeout=10) == -signal.SIGKILL
    finally:
        other.kill()
        other.wait()


def _platform_started(pid: int) -> str | None:
    from atomic_deploy import _platform

    return _platform.process_started(pid)


def test_recovery_returns_only_once_the_killed_group_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed group takes a moment to go (longer on a loaded machine): recovery goes on only
    once it is gone, so nothing of it still writes into what recovery is about to undo."""
    from atomic_deploy import _platform, _recovery

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        journal = {"hook_groups": [{"pgid": other.pid,
                                    "started": _platform.process_started(other.pid)}]}
        real = _platform.group_running
        asked: list[int] = []

        def slow_to_go(pgid: int) -> bool:
            asked.append(pgid)  # the check before the kill, then two polls still see it running
            return len(asked) <= 3 or real(pgid)

        monkeypatch.setattr(_platform, "group_running", slow_to_go)
        assert _recovery.kill_hook_groups(journal) == [other.pid]
        assert len(asked) >= 4 and not real(other.pid)
        assert other.wait(timeout=10) == -signal.SIGKILL
    finally:
        other.kill()
        other.wait()


LINUX = sys.platform.startswith("linux")


def _proc_state(pid: int) -> bytes:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[-1].split()[0]


@pytest.mark.skipif(not LINUX, reason="start times in clock ticks from /proc")
def test_process_started_is_the_start_time_since_boot() -> None:
    """What tells a recorded hook group from a later process given the same pid."""
    from atomic_deploy import _platform

    child = subprocess.Popen(["sleep", "60"])
    try:
        mine, its = _platform.process_started(os.getpid()), _platform.process_started(child.pid)
        assert mine is not None and its is not None
        assert int(its) > int(mine)  # this test process started well before its child
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + int(its) / os.sysconf("SC_CLK_TCK")
        assert abs(started - time.time()) < 60  # the child was started just now
    finally:
        child.kill()
        child.wait()
    assert _platform.process_started(child.pid) is None  # reaped: no such process


@pytest.mark.skipif(not LINUX, reason="the /proc scan is Linux only")
def test_a_group_left_as_zombies_is_not_running() -> None:
    """Where PID 1 does not reap orphans, a killed group stays as zombies: that is gone."""
    from atomic_deploy import _platform

    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert _platform.group_running(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: _proc_state(child.pid) == b"Z", what="the killed child as a zombie")
        assert not _platform.group_running(child.pid)
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not LINUX, reason="the /proc scan is Linux only")
def test_a_process_exiting_during_the_scan_does_not_end_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from atomic_deploy import _platform

    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    real_listdir = os.listdir
    # First in the scan: a pid no process has (above any pid_max), as if it had just exited.
    monkeypatch.setattr(os, "listdir", lambda path=".": (["99999999", *real_listdir(path)]
                                                         if path == "/proc" else real_listdir(path)))
    try:
        assert _platform.group_running(child.pid)
    finally:
        child.kill()
        child.wait()


def test_recovery_stops_waiting_for_a_group_that_does_not_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process SIGKILL cannot end at once (stuck in the kernel) never keeps recovery waiting
    past its bound: the next command is never stuck."""
    from atomic_deploy import _platform, _recovery

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        journal = {"hook_groups": [{"pgid": other.pid,
                                    "started": _platform.process_started(other.pid)}]}
        polls: list[int] = []

        def never_goes(pgid: int) -> bool:
            polls.append(pgid)
            return len(polls) < 1000  # stops only an endless wait, after about 10 s of polls

        monkeypatch.setattr(_platform, "group_running", never_goes)
        started = time.monotonic()
        assert _recovery.kill_hook_groups(journal) == [other.pid]  # the default bound: 2 s
        assert len(polls) < 1000 and time.monotonic() - started < 5
    finally:
        other.kill()
        other.wait()

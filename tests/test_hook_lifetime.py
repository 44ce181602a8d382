"""Hook output that cannot be written, and hooks that must not outlive the tool.

Output that cannot be written (a closed stderr pipe, a full disk, no stderr at all) never changes
a deploy's outcome. A `kill -9` of atomic-deploy takes its running hook's whole process group
with it, and the next command's recovery kills a recorded group that is somehow still there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Builds, cli_env, current_target, history, release_names


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

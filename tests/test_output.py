"""Human output: colour only on a terminal, NO_COLOR/--no-color, -q/-v, the progress line."""

from __future__ import annotations

import os
import platform
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import Builds, cli_env, make_build, run_cli

ESC = "\x1b["


def run_in_pty(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
               until: Callable[[str], bool] | None = None,
               on_match: Callable[[], None] | None = None) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; return (exit code, screen)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "atomic_deploy", *map(str, args)],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=cli_env({"TERM": "xterm", **(env or {})}))
    os.close(slave)
    out = b""
    matched = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        if until is not None and not matched and until(out.decode(errors="replace")):
            matched = True
            if on_match is not None:
                on_match()
        if proc.poll() is not None and not ready:
            break
    os.close(master)
    return proc.wait(timeout=30), out.decode(errors="replace")


def test_colour_on_a_terminal_only(builds: Builds, root: Path) -> None:
    code, screen = run_in_pty("deploy", builds("v1"), root)
    assert code == 0 and ESC + "32m" in screen  # green "deployed"
    r = run_cli("deploy", builds("v2"), root)  # pipes: no escapes anywhere
    assert r.returncode == 0 and ESC not in r.stdout + r.stderr


@pytest.mark.parametrize("how", ["env", "flag"])
def test_no_color_respected(builds: Builds, root: Path, how: str) -> None:
    env = {"NO_COLOR": "1"} if how == "env" else {}
    extra = [] if how == "env" else ["--no-color"]
    code, screen = run_in_pty("deploy", builds("v1"), root, *extra, env=env)
    assert code == 0 and "deployed" in screen and ESC not in screen
    code, screen = run_in_pty("rollback", root, *extra, env=env)  # an error line, uncoloured
    assert code == 2 and "error:" in screen and ESC not in screen


def test_error_is_red_on_a_terminal(root: Path) -> None:
    root.mkdir()
    code, screen = run_in_pty("rollback", root)
    assert code == 2 and ESC + "31merror:" in screen


def test_quiet_and_verbose(builds: Builds, root: Path) -> None:
    r = run_cli("deploy", "-q", builds("v1"), root)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    r = run_cli("-q", "rollback", root)  # before the command works too; errors still shown
    assert r.returncode == 2 and r.stderr.startswith("atomic-deploy: error:")
    r = run_cli("deploy", "-v", builds("v2"), root)
    assert r.returncode == 0
    steps = [line.split("step ")[1] for line in r.stderr.splitlines() if "step " in line]
    assert steps[0] == "lock-acquired" and "switched" in steps and steps[-1] == "committed"
    r = run_cli("deploy", "-q", builds("v3"), root, "--json")  # data still printed
    assert r.returncode == 0 and r.stdout.startswith("{")


def test_version_names_python_and_platform() -> None:
    r = run_cli("--version")
    assert r.returncode == 0
    assert f"Python {platform.python_version()}" in r.stdout and platform.system() in r.stdout


def test_progress_line_on_a_terminal(tmp_path: Path, root: Path) -> None:
    build = make_build(tmp_path / "big", {f"d{i // 100}/f{i}.txt": "x" * 1000 for i in range(300)})
    gate = tmp_path / "gate"
    code, screen = run_in_pty(
        "deploy", build, root, env={"ATOMIC_DEPLOY_FAULT": f"copied:PAUSE:{gate}"},
        until=lambda s: "files" in s and "left" in s, on_match=gate.touch)
    assert code == 0, screen
    assert "copying" in screen and "/300 files" in screen and "/s" in screen
    assert "\r" in screen  # redrawn in place, then cleared before the final line
    assert screen.rstrip().splitlines()[-1].lstrip("\r ").startswith(("deployed", ESC))


def test_no_progress_when_not_a_terminal_or_quiet(tmp_path: Path, root: Path) -> None:
    build = make_build(tmp_path / "b", {f"f{i}": "x" for i in range(50)})
    r = run_cli("deploy", build, root)
    assert "copying" not in r.stderr and "\r" not in r.stderr
    code, screen = run_in_pty("deploy", "-q", build, root)
    assert code == 0 and "copying" not in screen


def test_every_command_has_json(builds: Builds, root: Path, tmp_path: Path) -> None:
    import json

    from atomic_deploy.cli import COMMANDS

    legacy = tmp_path / "legacy"
    (legacy / "current").mkdir(parents=True)
    (legacy / "current" / "index.html").write_text("x")
    runs = {
        "deploy": ["deploy", builds("v1"), root],
        "prepare": ["prepare", builds("v2"), root],
        "activate": None,  # filled once prepare has named the release
        "rollback": ["rollback", root],
        "status": ["status", root],
        "list": ["list", root],
        "verify": ["verify", root],
        "prune": ["prune", root, "--keep", "1"],
        "recover": ["recover", root],
        "adopt": ["adopt", legacy],
        "demo": ["demo", "--root", tmp_path / "demo"],
        "race": ["race", "--seconds", "0.1", "--readers", "1"],
        "doctor": ["doctor", root],
        "completion": ["completion", "bash"],
        "man": ["man"],
    }
    assert set(runs) == set(COMMANDS)
    seen = {}
    for cmd in COMMANDS:
        args = runs[cmd]
        if cmd == "activate":
            args = ["activate", root, seen["prepare"]["release"]]
        r = run_cli(*args, "--json")  # type: ignore[misc]
        assert r.returncode == 0, (cmd, r.stderr)
        out = json.loads(r.stdout)  # exactly one JSON document
        assert out["schema"] == 1 and out["command"] == cmd and out["ok"] is True
        seen[cmd] = out


def test_counts_of_one_are_singular(tmp_path: Path, root: Path) -> None:
    """``1 file``, ``1 entry`` wherever a count is printed, as a deploy's own line says."""
    build = make_build(tmp_path / "one", files={"index.html": "x\n"})
    r = run_cli("deploy", build, root, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert f"copy {build} (1 file)" in r.stdout, r.stdout
    r = run_cli("deploy", build, root, "--digest")
    assert r.returncode == 0 and "; 1 file, " in r.stdout, r.stdout
    r = run_cli("verify", root, "--content")
    assert r.returncode == 0, r.stderr
    assert "(1 entry; 1 file's contents compared)" in r.stdout, r.stdout

"""adopt under the lock: two racing adopts, and signals at every adopt step (real CLI)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from atomic_deploy import _platform
from atomic_deploy._adopt import ADOPT_STEPS
from conftest import current_target, error_line, history, run_cli, snapshot, start_cli, wait_for

SIGNALS = {"INT": 130, "TERM": 143, "HUP": 129}


def _legacy_root(root: Path) -> None:
    (root / "current").mkdir(parents=True)
    (root / "current" / "index.html").write_text("legacy")


def _links_in_releases(root: Path) -> list[str]:
    rel = root / "releases"
    return [n for n in os.listdir(rel) if os.path.islink(rel / n)] if rel.is_dir() else []


def test_second_of_two_racing_adopts_finds_a_link_and_changes_nothing(
        root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    _legacy_root(root)
    gate_a, gate_b = tmp_path / "gate-a", tmp_path / "gate-b"
    a = start_cli("adopt", root, fault=f"lock-acquired:PAUSE:{gate_a}")
    procs.append(a)
    wait_for(lambda: Path(f"{gate_a}.paused").exists() or a.poll() is not None, what="A paused")
    assert a.poll() is None, a.communicate()
    # B checks the root (a folder current: adoptable) and then waits for the lock.
    b = start_cli("adopt", root, "--wait", "30", fault=f"lock-wait:PAUSE:{gate_b}")
    procs.append(b)
    wait_for(lambda: Path(f"{gate_b}.paused").exists() or b.poll() is not None, what="B waiting")
    assert b.poll() is None, b.communicate()
    gate_b.touch()
    gate_a.touch()
    _out, err = a.communicate(timeout=60)
    assert a.returncode == 0, err
    target = current_target(root)
    assert target is not None and target.startswith("releases/")
    after_a = _without_holder(snapshot(root))
    _out, err = b.communicate(timeout=60)

    assert b.returncode == 2, err
    line = error_line(subprocess.CompletedProcess([], 2, "", err))
    assert "already a symlink; nothing to adopt" in line and "nothing was changed" in line
    assert current_target(root) == target
    assert (root / "current" / "index.html").read_text() == "legacy"
    assert _links_in_releases(root) == []
    assert _without_holder(snapshot(root)) == after_a  # holder.json names the last holder
    assert [h["op"] for h in history(root)] == ["adopt"]


def _without_holder(snap: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in snap.items() if k != ".atomic-deploy/holder.json"}


def _steps(exchange: bool) -> list[tuple[bool, str]]:
    if exchange:
        return [(True, s) for s in ADOPT_STEPS]
    return [(False, "lock-acquired"), (False, "adopt-moved")]


@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize(("exchange", "step"), _steps(True) + _steps(False))
def test_adopt_signal_at_every_step_leaves_a_safe_root_and_says_so(
        root: Path, exchange: bool, step: str, sig: str) -> None:
    if exchange and not _platform.exchange_name():
        pytest.skip("no atomic exchange on this system")
    _legacy_root(root)
    args = ["adopt", root, "--id", "legacy"] + ([] if exchange else ["--no-exchange"])
    r = run_cli(*args, fault=f"{step}:{sig}")

    assert r.returncode == SIGNALS[sig], r.stderr
    line = error_line(r)
    assert f"interrupted by SIG{sig}; " in line  # a state follows
    assert (root / "current" / "index.html").read_text() == "legacy"
    assert not (root / ".atomic-deploy" / "journal.json").exists()
    assert _links_in_releases(root) == []
    assert os.listdir(root / ".atomic-deploy" / "tmp") == []
    if os.path.islink(root / "current"):  # the folder had moved: the adopt was finished
        assert current_target(root) == "releases/legacy"
        assert "current -> releases/legacy" in line
        assert [(h["op"], h["outcome"]) for h in history(root)] == [("adopt", "ok")]
        managed = json.loads(run_cli("list", root, "--json").stdout)["releases"]
        assert [(m["id"], m["managed"], m["current"]) for m in managed] == [("legacy", True, True)]
    else:
        assert (root / "current").is_dir()
        assert "nothing was changed" in line
        assert not (root / "releases" / "legacy").exists()
    status = json.loads(run_cli("status", root, "--json").stdout)
    assert status["interrupted"] is None and status["leftovers"] == []

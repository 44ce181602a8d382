"""Signals and crashes at every step, with the real CLI in a subprocess.

A signal (INT, TERM, HUP) at any checkpoint rolls the operation back once and exits 128 + signal;
``kill -9`` at any checkpoint leaves a complete release behind ``current`` (or none on a first
deploy), ``status`` reports the journal without touching anything, and the next mutating command
recovers: an operation killed before its switch is undone, one killed after it (``switched``,
``switch-synced``) is finished, since its after-switch hooks and health check (none here) pass
again. Steps come from ``atomic_deploy._signals`` so a new checkpoint is covered at once.
Setup deploys run in-process (``deploy_ok``) to keep the matrix fast; everything under test is
the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import atomic_deploy
from atomic_deploy._signals import DEPLOY_STEPS, PRUNE_STEPS, RECOVER_STEPS, SWITCH_STEPS, UNDO_STEPS
from conftest import (
    SIGNALS,
    Builds,
    current_target,
    hidden_entries,
    history,
    release_names,
    run_cli,
    snapshot,
    start_cli,
    wait_for,
)

# Steps at which a journal exists: written after the lock, removed just before "committed".
NO_JOURNAL_STEPS = ("lock-acquired", "committed")
# Steps after current was switched but before the commit record: recovery finishes the operation.
AFTER_SWITCH_STEPS = ("switched", "switch-synced")
# Every deploy step as the copy engine chooses (here: in this process, the build is small), and
# the per-file checkpoint once more with the files copied by worker processes, as auto mode
# does on tmpfs and copy-on-write filesystems (forced, in a bigger build: work items in flight).
COPY_PROCESSES = "ATOMIC_DEPLOY_COPY_PROCESSES"
DEPLOY_STEPS_BOTH_WAYS = [pytest.param(s, "", id=s) for s in DEPLOY_STEPS] + [
    pytest.param("copy-file", "1", id="copy-file-workers")]


def for_workers(build: Path, procs: str) -> dict[str, str]:
    """The environment for a deploy of ``build`` copied the ``procs`` way; with worker
    processes, the build gets 600 more files, so that they have work items in flight: half in
    four big folders, half in folders of two files (items holding the files of several)."""
    if procs != "1":
        return {}
    for i in range(600):
        p = build / (f"many{i % 4}" if i < 300 else f"small{i // 2:03d}") / f"f{i:03d}.js"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{build.name} {i}\n")
    return {COPY_PROCESSES: "1"}


# --------------------------------------------------------------------------------------------
# helpers


def journal_path(root: Path) -> Path:
    return root / ".atomic-deploy" / "journal.json"


def current_release(root: Path) -> str | None:
    """The release id ``current`` names, asserting it is one of ours and not dangling."""
    target = current_target(root)
    if target is None:
        assert not os.path.lexists(root / "current"), "current exists but is not a symlink"
        return None
    assert target.startswith("releases/"), target
    rid = target[len("releases/"):]
    assert rid in release_names(root), f"current -> {target} is dangling"
    assert (root / "current").is_dir()
    return rid


def deploy_ok(root: Path, build: Path) -> str:
    """Setup only: a finished deploy through the library in-process (the same code and on-disk
    state as the CLI, without a subprocess start). Every operation under test runs the CLI."""
    rid = atomic_deploy.deploy(str(build), str(root)).release
    assert current_release(root) == rid
    return rid


def assert_release_is(root: Path, rid: str, build: Path) -> None:
    """Complete: exactly the build's entries, with the same content."""
    got = snapshot(root / "releases" / rid)
    assert got, f"release {rid} is empty or missing"
    assert got == snapshot(build), f"release {rid} is not a complete copy of {build.name}"


def matching_build(root: Path, rid: str, builds: list[Path]) -> Path:
    snap = snapshot(root / "releases" / rid)
    found = [b for b in builds if snapshot(b) == snap]
    assert len(found) == 1, f"release {rid} matches {len(found)} builds (incomplete or mixed)"
    return found[0]


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got: {stderr!r}"
    assert lines[0].startswith("atomic-deploy: error:"), lines[0]
    return lines[0]


def assert_clean(root: Path) -> None:
    assert hidden_entries(root) == []
    assert not journal_path(root).exists()


def records(root: Path, op: str) -> list[dict[str, Any]]:
    return [h for h in history(root) if h.get("op") == op]


def assert_finished_by_recovery(root: Path, op: str, journal: dict[str, Any],
                                states: dict[str, str]) -> None:
    """Recovery finished the operation ``journal`` describes: its own ok record (op_id,
    ``recovered``, the release states it changes), then the recover record saying so."""
    recs = history(root)
    mine = [i for i, h in enumerate(recs) if h.get("op_id") == journal["op_id"]]
    assert len(mine) == 1, recs
    rec = recs[mine[0]]
    assert rec["op"] == op and rec["outcome"] == "ok", rec
    assert rec["recovered"] is True, rec
    assert rec["release"] == journal["release"], rec
    assert rec["states"] == states, rec
    later = recs[mine[0] + 1:]
    assert later and later[0]["op"] == "recover" and later[0]["outcome"] == "ok", recs
    assert later[0]["interrupted"] == op and later[0]["action"].startswith("finished"), later[0]


def assert_status_reports_without_changing(root: Path, op: str, journaled: bool) -> dict[str, Any]:
    """`status` (text and --json) shows the interrupted journal and changes nothing on disk."""
    before = snapshot(root)
    text = run_cli("status", root)
    js = run_cli("status", root, "--json")
    assert snapshot(root) == before, "status changed the root"
    assert text.returncode == 0, text.stderr
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    interrupted_row = [ln for ln in text.stdout.splitlines() if ln.startswith("interrupted")]
    assert len(interrupted_row) == 1, text.stdout
    if journaled:
        journal = json.loads(journal_path(root).read_text())
        assert data["interrupted"] is not None
        assert data["interrupted"]["op"] == op
        assert data["interrupted"]["op_id"] == journal["op_id"]
        assert op in interrupted_row[0]
        if journal.get("release"):
            assert data["interrupted"]["release"] == journal["release"]
            assert journal["release"] in interrupted_row[0]
    else:
        assert data["interrupted"] is None
        assert interrupted_row[0].split()[-1] == "none"
    # leftovers (staging/trash folders, temp links) are reported too, one per hidden entry
    assert len(data["leftovers"]) == len(hidden_entries(root))
    return data


def assert_recovered(result: subprocess.CompletedProcess[str], root: Path, op: str,
                     journaled: bool) -> None:
    """The mutating command after a crash succeeded and recovered the crashed one."""
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    recovered = [ln for ln in lines if ln.startswith(f"atomic-deploy: recovered interrupted {op}")]
    recover_recs = [h for h in records(root, "recover") if h.get("outcome") == "ok"]
    if journaled:
        assert len(recovered) == 1, result.stderr
        assert len(recover_recs) == 1, history(root)
        assert recover_recs[0].get("interrupted") == op
    assert_clean(root)


# --------------------------------------------------------------------------------------------
# signals through the fault seam


@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize(("step", "procs"), DEPLOY_STEPS_BOTH_WAYS)
def test_deploy_signal_at_every_step(builds: Builds, root: Path, step: str, sig: str,
                                     procs: str) -> None:
    v1, v2 = builds("v1"), builds("v2")
    old = deploy_ok(root, v1)

    r = run_cli("deploy", v2, root, fault=f"{step}:{sig}", env=for_workers(v2, procs))

    assert r.returncode == 128 + SIGNALS[sig], (r.returncode, r.stderr)
    line = one_error_line(r.stderr)
    assert f"SIG{sig}" in line
    assert_clean(root)
    cur = current_release(root)
    deploys = records(root, "deploy")
    not_ok = [d for d in deploys if d["outcome"] != "ok"]
    if step == "committed":
        # the deploy had completed: the new release stays
        assert cur is not None and cur != old
        assert release_names(root) == sorted([old, cur])
        assert_release_is(root, cur, v2)
        assert deploys[-1]["outcome"] == "ok" and deploys[-1]["release"] == cur
        assert not_ok == []
    else:
        assert cur == old
        assert release_names(root) == [old]
        assert_release_is(root, old, v1)
        assert [d["outcome"] for d in deploys if d["outcome"] == "ok"] == ["ok"]
        # the rollback ran exactly once (no journal yet at lock-acquired: nothing to undo)
        assert [d["outcome"] for d in not_ok] == ([] if step == "lock-acquired" else ["interrupted"])


@pytest.mark.parametrize("step", DEPLOY_STEPS)
def test_first_deploy_sigterm_leaves_no_current(builds: Builds, root: Path, step: str) -> None:
    v1 = builds("v1")

    r = run_cli("deploy", v1, root, fault=f"{step}:TERM")

    assert r.returncode == 143, (r.returncode, r.stderr)
    one_error_line(r.stderr)
    assert_clean(root)
    if step == "committed":
        cur = current_release(root)
        assert cur is not None
        assert release_names(root) == [cur]
        assert_release_is(root, cur, v1)
    else:
        assert not os.path.lexists(root / "current")
        rel = root / "releases"
        assert not rel.exists() or os.listdir(rel) == []


@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize("step", SWITCH_STEPS)
@pytest.mark.parametrize("op", ["activate", "rollback"])
def test_switch_signal_at_every_step(builds: Builds, root: Path, op: str, step: str,
                                     sig: str) -> None:
    v1, v2 = builds("v1"), builds("v2")
    r1 = deploy_ok(root, v1)
    r2 = deploy_ok(root, v2)
    args = ("activate", root, r1) if op == "activate" else ("rollback", root)

    r = run_cli(*args, fault=f"{step}:{sig}")

    assert r.returncode == 128 + SIGNALS[sig], (r.returncode, r.stderr)
    assert f"SIG{sig}" in one_error_line(r.stderr)
    assert_clean(root)
    assert release_names(root) == [r1, r2]
    assert_release_is(root, r1, v1)
    assert_release_is(root, r2, v2)
    ok = [h for h in records(root, op) if h["outcome"] == "ok"]
    if step == "committed":
        assert current_release(root) == r1
        assert len(ok) == 1
    else:
        assert current_release(root) == r2
        assert ok == []  # in particular a rollback that was undone marks nothing bad


@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize("step", PRUNE_STEPS)
def test_prune_signal_at_every_step(builds: Builds, root: Path, step: str, sig: str) -> None:
    bs = [builds(f"v{i}") for i in range(1, 5)]
    ids = [deploy_ok(root, b) for b in bs]

    r = run_cli("prune", root, "--keep", "1", fault=f"{step}:{sig}")

    assert r.returncode == 128 + SIGNALS[sig], (r.returncode, r.stderr)
    one_error_line(r.stderr)
    assert_clean(root)
    # never the current release or its rollback target
    assert current_release(root) == ids[3]
    left = release_names(root)
    assert ids[2] in left and ids[3] in left
    assert set(left) <= set(ids)
    for rid in left:
        assert_release_is(root, rid, bs[ids.index(rid)])
    if step in ("lock-acquired", "journal-written"):
        assert left == ids
    if step == "committed":
        assert left == ids[2:]


# --------------------------------------------------------------------------------------------
# real signals from outside


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def wait_signal_handled(pid: int, signum: int) -> None:
    """Wait until the kernel has delivered ``signum`` and the process went back to sleep.

    The paused process sleeps in a loop; after the C-level handler ran, Python runs the
    Python-level handler before the next sleep, which counts as a voluntary context switch.
    """
    bit = 1 << (signum - 1)

    def delivered() -> bool:
        st = _proc_status(pid)
        return not (int(st["SigPnd"], 16) & bit or int(st["ShdPnd"], 16) & bit)

    wait_for(delivered, what=f"signal {signum} delivered to {pid}")
    n = int(_proc_status(pid)["voluntary_ctxt_switches"])
    wait_for(lambda: int(_proc_status(pid)["voluntary_ctxt_switches"]) > n,
             what=f"pid {pid} back asleep after signal {signum}")


def _start_paused_deploy(procs: list[subprocess.Popen[str]], build: Path, root: Path,
                         gate: Path, step: str = "copy-file",
                         env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = start_cli("deploy", build, root, fault=f"{step}:PAUSE:{gate}", env=env)
    procs.append(proc)
    paused = Path(f"{gate}.paused")
    wait_for(lambda: paused.exists() or proc.poll() is not None, what="deploy to pause")
    assert proc.poll() is None, proc.communicate()
    return proc


@pytest.mark.parametrize("copying", ["", "1"], ids=["default", "workers"])
def test_real_sigint_mid_copy_rolls_back(builds: Builds, root: Path, tmp_path: Path,
                                         procs: list[subprocess.Popen[str]], copying: str) -> None:
    v1, v2 = builds("v1"), builds("v2")
    old = deploy_ok(root, v1)
    gate = tmp_path / "gate"
    proc = _start_paused_deploy(procs, v2, root, gate, env=for_workers(v2, copying))
    # really in the middle of copying: a hidden staging folder exists
    assert any(h.startswith("releases/.atomic-deploy-staging.") for h in hidden_entries(root))

    proc.send_signal(signal.SIGINT)
    gate.touch()
    _out, err = proc.communicate(timeout=30)

    assert proc.returncode == 130, err
    assert "SIGINT" in one_error_line(err)
    assert current_release(root) == old
    assert release_names(root) == [old]
    assert_release_is(root, old, v1)
    assert_clean(root)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="not Linux: reads /proc/PID/status")
def test_two_real_signals_first_wins_and_handler_acts_once(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    v1, v2 = builds("v1"), builds("v2")
    old = deploy_ok(root, v1)
    gate = tmp_path / "gate"
    proc = _start_paused_deploy(procs, v2, root, gate)

    proc.send_signal(signal.SIGTERM)
    wait_signal_handled(proc.pid, signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    wait_signal_handled(proc.pid, signal.SIGINT)
    gate.touch()
    _out, err = proc.communicate(timeout=30)

    assert proc.returncode == 143, err
    assert "SIGTERM" in one_error_line(err)
    assert current_release(root) == old
    assert release_names(root) == [old]
    assert_clean(root)
    interrupted = [d for d in records(root, "deploy") if d["outcome"] != "ok"]
    assert len(interrupted) == 1  # rolled back once


# --------------------------------------------------------------------------------------------
# kill -9 at every step, then status, list and the next mutating command


def _list_ids(root: Path) -> list[str]:
    r = run_cli("list", root, "--json")
    assert r.returncode == 0, r.stderr
    return [rel["id"] for rel in json.loads(r.stdout)["releases"]]


@pytest.mark.parametrize(("step", "procs"), DEPLOY_STEPS_BOTH_WAYS)
def test_deploy_killed_at_every_step_then_status_list_and_deploy_recover(
        builds: Builds, root: Path, step: str, procs: str) -> None:
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    old = deploy_ok(root, v1)

    r = run_cli("deploy", v2, root, fault=f"{step}:KILL", env=for_workers(v2, procs))

    assert r.returncode == -signal.SIGKILL, r.stderr
    journaled = step not in NO_JOURNAL_STEPS
    assert journal_path(root).exists() == journaled
    cur = current_release(root)
    assert cur is not None
    switched = DEPLOY_STEPS.index(step) >= DEPLOY_STEPS.index("switched")
    if switched:
        assert cur != old
        assert_release_is(root, cur, v2)
    else:
        assert cur == old
    assert_release_is(root, old, v1)

    # list shows only complete releases, and of the interrupted deploy's release only what
    # current already points to: before the switch it is not committed, recovery removes it
    listed = _list_ids(root)
    assert sorted(listed) == sorted(n for n in release_names(root) if n in (old, cur))
    for rid in listed:
        matching_build(root, rid, [v1, v2])

    assert_status_reports_without_changing(root, "deploy", journaled)
    crashed = json.loads(journal_path(root).read_text()) if journaled else None

    r = run_cli("deploy", v3, root)

    assert_recovered(r, root, "deploy", journaled)
    new = current_release(root)
    assert new is not None and new != old
    assert_release_is(root, new, v3)
    assert_release_is(root, old, v1)
    if step == "committed" or step in AFTER_SWITCH_STEPS:
        # committed, or finished by recovery: the release killed after its switch is kept
        assert release_names(root) == sorted([old, cur, new])
        assert_release_is(root, cur, v2)
    else:
        assert release_names(root) == sorted([old, new])  # the interrupted release is gone
    if step in AFTER_SWITCH_STEPS:
        assert crashed is not None and crashed["release"] == cur
        assert_finished_by_recovery(root, "deploy", crashed, {cur: "served"})


@pytest.mark.parametrize(("step", "procs"), DEPLOY_STEPS_BOTH_WAYS)
def test_first_deploy_killed_at_every_step(builds: Builds, root: Path, step: str,
                                           procs: str) -> None:
    v1, v2 = builds("v1"), builds("v2")

    r = run_cli("deploy", v1, root, fault=f"{step}:KILL", env=for_workers(v1, procs))

    assert r.returncode == -signal.SIGKILL, r.stderr
    journaled = step not in NO_JOURNAL_STEPS
    assert journal_path(root).exists() == journaled
    first = current_release(root)
    if DEPLOY_STEPS.index(step) >= DEPLOY_STEPS.index("switched"):
        assert first is not None
        assert_release_is(root, first, v1)
    else:
        assert first is None
    for rid in _list_ids(root):
        assert_release_is(root, rid, v1)
    crashed = json.loads(journal_path(root).read_text()) if journaled else None

    r = run_cli("deploy", v2, root)

    assert_recovered(r, root, "deploy", journaled)
    new = current_release(root)
    assert new is not None
    assert_release_is(root, new, v2)
    if step == "committed" or step in AFTER_SWITCH_STEPS:
        assert first is not None
        assert release_names(root) == sorted([first, new])
        assert_release_is(root, first, v1)
    else:
        assert release_names(root) == [new]
    if step in AFTER_SWITCH_STEPS:
        assert crashed is not None and crashed["release"] == first
        assert_finished_by_recovery(root, "deploy", crashed, {first: "served"})


@pytest.mark.parametrize("step", DEPLOY_STEPS)
def test_deploy_killed_then_activate_rollback_or_prune_recovers(
        builds: Builds, root: Path, tmp_path: Path, step: str) -> None:
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    r1 = deploy_ok(root, v1)
    r2 = deploy_ok(root, v2)
    r = run_cli("deploy", v3, root, fault=f"{step}:KILL")
    assert r.returncode == -signal.SIGKILL, r.stderr
    journaled = step not in NO_JOURNAL_STEPS
    assert journal_path(root).exists() == journaled
    crashed = json.loads(journal_path(root).read_text()) if journaled else None
    # committed, or killed after its switch: recovery finishes it, so v3's release stays
    committed = step == "committed" or step in AFTER_SWITCH_STEPS
    r3 = current_release(root) if committed else None
    if committed:
        assert r3 not in (None, r1, r2)

    # The same crashed root, once per follow-up command (copied as is, links not followed).
    for cmd in ("activate", "rollback", "prune"):
        work = tmp_path / f"after-{cmd}"
        shutil.copytree(root, work, symlinks=True)
        args = {"activate": ("activate", work, r1), "rollback": ("rollback", work),
                "prune": ("prune", work, "--keep", "1")}[cmd]

        res = run_cli(*args)

        assert_recovered(res, work, "deploy", journaled)
        expected = {"activate": r1, "rollback": r2 if committed else r1,
                    "prune": r3 if committed else r2}[cmd]
        assert current_release(work) == expected, cmd
        for rid in release_names(work):
            matching_build(work, rid, [v1, v2, v3])
        if not committed:
            assert release_names(work) == [r1, r2]  # the interrupted release is gone
        elif cmd == "prune":
            assert r3 is not None and release_names(work) == [r2, r3]
        else:
            assert r3 is not None and release_names(work) == [r1, r2, r3]
        if step in AFTER_SWITCH_STEPS:
            assert crashed is not None
            assert_finished_by_recovery(work, "deploy", crashed, {r3: "served"})


@pytest.mark.parametrize("step", SWITCH_STEPS)
@pytest.mark.parametrize("op", ["activate", "rollback"])
def test_switch_killed_at_every_step_then_deploy_recovers(builds: Builds, root: Path, op: str,
                                                         step: str) -> None:
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    r1 = deploy_ok(root, v1)
    r2 = deploy_ok(root, v2)
    args = ("activate", root, r1) if op == "activate" else ("rollback", root)

    r = run_cli(*args, fault=f"{step}:KILL")

    assert r.returncode == -signal.SIGKILL, r.stderr
    journaled = step not in NO_JOURNAL_STEPS
    assert journal_path(root).exists() == journaled
    assert current_release(root) in (r1, r2)
    assert release_names(root) == [r1, r2]
    assert_release_is(root, r1, v1)
    assert_release_is(root, r2, v2)
    assert_status_reports_without_changing(root, op, journaled)
    crashed = json.loads(journal_path(root).read_text()) if journaled else None

    r = run_cli("deploy", v3, root)

    assert_recovered(r, root, op, journaled)
    new = current_release(root)
    assert new is not None and new not in (r1, r2)
    assert_release_is(root, new, v3)
    assert release_names(root) == [r1, r2, new]
    ok = [h for h in records(root, op) if h["outcome"] == "ok"]
    # killed after its switch: recovery finished it (r1 served, a rollback marks r2 bad)
    assert len(ok) == (1 if step == "committed" or step in AFTER_SWITCH_STEPS else 0)
    if step in AFTER_SWITCH_STEPS:
        assert crashed is not None and crashed["release"] == r1
        states = {r1: "served", r2: "bad"} if op == "rollback" else {r1: "served"}
        assert_finished_by_recovery(root, op, crashed, states)
    states_listed = {rel["id"]: rel["state"] for rel in
                     json.loads(run_cli("list", root, "--json").stdout)["releases"]}
    # only a rollback that completed (itself or through recovery) marks r2 bad
    rolled_away = op == "rollback" and (step == "committed" or step in AFTER_SWITCH_STEPS)
    assert states_listed == {r1: "good", r2: "bad" if rolled_away else "good", new: "current"}


@pytest.mark.parametrize("step", PRUNE_STEPS)
def test_prune_killed_at_every_step_then_deploy_recovers(builds: Builds, root: Path,
                                                        step: str) -> None:
    bs = [builds(f"v{i}") for i in range(1, 6)]
    ids = [deploy_ok(root, b) for b in bs[:4]]

    r = run_cli("prune", root, "--keep", "1", fault=f"{step}:KILL")

    assert r.returncode == -signal.SIGKILL, r.stderr
    journaled = step not in NO_JOURNAL_STEPS
    assert journal_path(root).exists() == journaled
    assert current_release(root) == ids[3]
    left = release_names(root)
    assert ids[2] in left and set(left) <= set(ids)
    for rid in left:
        assert_release_is(root, rid, bs[ids.index(rid)])
    assert_status_reports_without_changing(root, "prune", journaled)

    r = run_cli("deploy", bs[4], root)

    assert_recovered(r, root, "prune", journaled)
    new = current_release(root)
    assert new is not None and new not in ids
    assert_release_is(root, new, bs[4])
    assert release_names(root) == sorted([*left, new])
    for rid in left:
        assert_release_is(root, rid, bs[ids.index(rid)])


# --------------------------------------------------------------------------------------------
# kill -9 in the middle of a rollback or of a recovery


def assert_back_on_first(root: Path, r1: str, v1: Path) -> None:
    assert current_release(root) == r1
    assert release_names(root) == [r1]
    assert_release_is(root, r1, v1)


# The tool's pid, seen from a hook: the hook's parent is the supervisor the tool started.
TOOL_PID = "$(awk '{print $4}' /proc/$PPID/stat)"
SWITCH_BACK_STEPS = ("switching-back", "switched-back")


@pytest.mark.parametrize("step", SWITCH_BACK_STEPS)
def test_killed_while_a_signalled_deploy_switches_back(builds: Builds, root: Path,
                                                       tmp_path: Path, step: str) -> None:
    """A deploy interrupted after its switch is switching back when it is killed: current is a
    complete release, and the next command finishes the switch-back."""
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    r1 = deploy_ok(root, v1)
    # The after-switch hook signals the deploy: it switches back, and the fault kills it at
    # `step` of that.
    once = tmp_path / "signalled"  # recovery runs this hook again: signal only once
    r = run_cli("deploy", v2, root, "--after-switch",
                f"[ -e {once} ] || {{ touch {once}; kill -TERM {TOOL_PID}; }}",
                fault=f"{step}:KILL")

    assert r.returncode == -signal.SIGKILL, r.stderr
    assert journal_path(root).exists()
    assert json.loads(journal_path(root).read_text())["phase"] == "switching-back"
    cur = current_release(root)
    assert cur is not None
    assert_release_is(root, cur, v1 if step == "switched-back" else v2)
    assert len(release_names(root)) == 2
    assert_status_reports_without_changing(root, "deploy", journaled=True)

    r = run_cli("deploy", v3, root)

    assert_recovered(r, root, "deploy", journaled=True)
    new = current_release(root)
    assert new is not None and new != r1
    assert_release_is(root, new, v3)
    assert release_names(root) == [r1, new]  # the signalled deploy's release was removed


@pytest.mark.parametrize("step", UNDO_STEPS + RECOVER_STEPS)
def test_killed_while_recovering_a_killed_deploy(builds: Builds, root: Path, step: str) -> None:
    """kill -9 before the switch, then kill -9 again in the middle of the recovery undoing it:
    current is a complete release throughout, and the third command finishes the recovery."""
    v1, v2 = builds("v1"), builds("v2")
    r1 = deploy_ok(root, v1)
    r = run_cli("deploy", v2, root, fault="release-synced:KILL")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert current_release(root) == r1
    assert len(release_names(root)) == 2  # renamed into releases/, never current

    r = run_cli("prune", root, "--keep", "5", fault=f"{step}:KILL")

    assert r.returncode == -signal.SIGKILL, r.stderr
    assert journal_path(root).exists()  # the recovery did not finish: its journal stays
    assert current_release(root) == r1
    assert_release_is(root, r1, v1)
    assert_status_reports_without_changing(root, "deploy", journaled=True)

    r = run_cli("prune", root, "--keep", "5")

    assert r.returncode == 0, r.stderr
    assert "recovered interrupted deploy" in r.stderr, r.stderr
    assert_clean(root)
    assert_back_on_first(root, r1, v1)
    done = [h for h in records(root, "recover") if h.get("outcome") == "ok"]
    # a recovery killed after its record is recorded again by the one that finishes it
    assert len(done) == (2 if step == "recover-recorded" else 1), history(root)


def test_a_signal_during_a_switch_back_does_not_interrupt_it(builds: Builds, root: Path) -> None:
    """SIGTERM at a step of the switch-back is ignored there: it finishes, exit 128+INT (the
    first signal)."""
    v1, v2 = builds("v1"), builds("v2")
    r1 = deploy_ok(root, v1)

    r = run_cli("deploy", v2, root, "--after-switch", f"kill -INT {TOOL_PID}",
                fault="switched-back:TERM")

    assert r.returncode == 128 + signal.SIGINT, r.stderr
    assert "switched back" in one_error_line(r.stderr)
    assert_clean(root)
    assert_back_on_first(root, r1, v1)


# --------------------------------------------------------------------------------------------
# stale leftovers can never publish the wrong release


@pytest.mark.parametrize("kill_step", ["lock-acquired", "staging-created", "temp-link-created",
                                       "switched"])
def test_stale_leftovers_never_publish_the_wrong_release(builds: Builds, root: Path,
                                                         kill_step: str) -> None:
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    old = deploy_ok(root, v1)
    # a journal (and whatever else) left by a real crash
    r = run_cli("deploy", v2, root, fault=f"{kill_step}:KILL")
    assert r.returncode == -signal.SIGKILL, r.stderr
    crashed = json.loads(journal_path(root).read_text()) if journal_path(root).exists() else None
    assert (crashed is None) == (kill_step == "lock-acquired")
    # planted: a temp link to the old release and a junk staging folder
    tmp = root / ".atomic-deploy" / "tmp"
    tmp.mkdir(exist_ok=True)
    (tmp / "current.deadbeef").symlink_to(f"releases/{old}")
    stale = root / "releases" / ".atomic-deploy-staging.20990101000000.cafe"
    stale.mkdir()
    (stale / "index.html").write_text("<h1>junk</h1>\n")
    (stale / "version.txt").write_text("junk\n")

    r = run_cli("deploy", v3, root)

    assert r.returncode == 0, r.stderr
    assert "recovered interrupted deploy" in r.stderr or crashed is None
    new = current_release(root)
    assert new is not None and new != old
    assert_release_is(root, new, v3)
    assert (root / "current" / "version.txt").read_text() == "v3\n"
    if kill_step == "switched":
        # killed after its switch: recovery finished that deploy, its release stays
        assert crashed is not None
        assert release_names(root) == sorted([old, crashed["release"], new])
        assert_release_is(root, crashed["release"], v2)
    else:
        assert release_names(root) == sorted([old, new])
    assert_clean(root)
    assert not os.path.lexists(tmp / "current.deadbeef")
    assert not os.path.lexists(stale)


@pytest.mark.parametrize("action", ["TERM", "KILL"])
def test_release_id_of_an_interrupted_deploy_is_never_reused(builds: Builds, root: Path,
                                                             action: str) -> None:
    """design.md: an id is always strictly greater than every id in releases/ and in the history.

    A deploy stopped after the switch had its id published through ``current`` for a moment and
    logged in the history; the next deploy (different content) must not get the same id.
    """
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    deploy_ok(root, v1)
    r = run_cli("deploy", v2, root, fault=f"switched:{action}")
    assert r.returncode == (143 if action == "TERM" else -signal.SIGKILL), r.stderr
    logged = {h["release"] for h in history(root) if h.get("op") == "deploy"
              and h.get("outcome") != "ok" and h.get("release")}
    if action == "KILL":
        logged.add(json.loads(journal_path(root).read_text())["release"])
    assert logged

    new = deploy_ok(root, v3)

    assert_release_is(root, new, v3)
    assert all(new > rid for rid in logged), (new, logged)
    assert all(h.get("release") != new for h in history(root)
               if h.get("op") == "deploy" and h.get("outcome") != "ok")


def test_journal_of_a_committed_deploy_coming_back_is_only_removed(builds: Builds,
                                                                    root: Path) -> None:
    """The journal's removal after the commit record is not flushed: after a power cut it may
    be back. Recovery then finds its operation finished in the history and keeps the deploy."""
    old = deploy_ok(root, builds("v1"))
    new = deploy_ok(root, builds("v2"))
    last = history(root)[-1]
    assert last["op"] == "deploy" and last["release"] == new
    journal_path(root).write_text(json.dumps({
        "op": "deploy", "op_id": last["op_id"], "pid": 999999, "started": last["time"],
        "release": new, "previous": f"releases/{old}", "creates_release": True}))

    r = run_cli("deploy", builds("v3"), root)

    assert_recovered(r, root, "deploy", journaled=True)
    assert records(root, "recover")[-1]["action"].startswith("completed")
    assert new in release_names(root) and old in release_names(root)
    assert_release_is(root, new, builds("v2"))
    assert current_release(root) not in (old, new)


# --------------------------------------------------------------------------------------------
# temp files of the state's atomic writes


def state_temps(root: Path) -> list[str]:
    state = root / ".atomic-deploy"
    return sorted(n for n in os.listdir(state) if n.startswith((".holder.json.", ".journal.json.")))


@pytest.mark.parametrize("step", ["holder-temp-written", "journal-temp-written"])
def test_state_temp_file_left_by_kill_is_listed_then_removed(builds: Builds, root: Path,
                                                            step: str) -> None:
    first = deploy_ok(root, builds("v1"))
    r = run_cli("deploy", builds("v2"), root, fault=f"{step}:KILL")
    assert r.returncode == -9, r.stderr
    temps = state_temps(root)
    assert len(temps) == 1 and temps[0].startswith(f".{step.split('-')[0]}.json."), temps
    assert current_release(root) == first

    before = snapshot(root)
    data = json.loads(run_cli("status", root, "--json").stdout)
    assert data["leftovers"] == [f".atomic-deploy/{temps[0]}"]
    assert snapshot(root) == before

    r = run_cli("deploy", builds("v3"), root)
    assert r.returncode == 0, r.stderr
    assert f".atomic-deploy/{temps[0]}" in r.stderr  # said what it removed
    assert state_temps(root) == []
    assert_clean(root)
    assert json.loads(run_cli("status", root, "--json").stdout)["leftovers"] == []


def test_planted_state_temp_files_are_listed_and_removed_under_the_lock(builds: Builds,
                                                                       root: Path) -> None:
    deploy_ok(root, builds("v1"))
    deploy_ok(root, builds("v2"))
    state = root / ".atomic-deploy"
    planted = [".holder.json.0123456789abcdef", ".journal.json.fedcba9876543210"]
    for name in planted:
        (state / name).write_text('{"op": "deploy"')  # torn, as a kill mid-write leaves it
    (state / "journal.json.corrupt-1").write_text("kept: a set-aside journal, not a temp file")

    data = json.loads(run_cli("status", root, "--json").stdout)
    assert data["leftovers"] == [f".atomic-deploy/{n}" for n in planted]
    assert data["interrupted"] is None

    r = run_cli("prune", root, "--keep", "5")
    assert r.returncode == 0, r.stderr
    assert state_temps(root) == []
    assert (state / "journal.json.corrupt-1").exists()
    assert len(release_names(root)) == 2

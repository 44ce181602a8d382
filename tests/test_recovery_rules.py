"""Recovery rules around the switch, with the real CLI in subprocesses.

- ``kill -9`` after the switch (during the after-switch hooks or the health check): the next
  command (or ``recover``) re-runs the hooks and health check the journal recorded; if they pass
  the operation is finished and its release stays current, else current is switched back, the
  release is kept and marked bad and the service is told about the restored release.
- A signal after the switch: the same process switches back at once and tells the service about
  the restored release (its after-switch hooks run, the signal set aside), exit 128 + signal.
- ``kill -9`` in the middle of switching back (fault points ``switching-back`` and
  ``switched-back``): ``status`` says what will happen, ``recover`` finishes it.

The service is "told" about a release by an after-switch hook that appends the release id to
told.log, outside the root: each test asserts exactly which releases it heard of, in order.

Also regressions for releases the history must not misjudge after an interrupted operation
(adopt, rollback or activate on roots made by other tools or by hand), for prune problems
after a completed deploy, and for hand-made folders named with digits that are no timestamp.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

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

# --------------------------------------------------------------------------------------------
# helpers


def q(path: Path) -> str:
    return shlex.quote(str(path))


def tell_args(log: Path) -> list[str]:
    """An after-switch hook that records which release the service was told about."""
    return ["--after-switch", f'echo "$ATOMIC_DEPLOY_RELEASE" >> {q(log)}']


def told(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def cli_ok(*args: str | os.PathLike[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    r = run_cli(*args, **kw)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def deploy(root: Path, build: Path, *extra: str) -> str:
    """A finished deploy through the CLI; returns its release id."""
    r = cli_ok("deploy", build, root, "--json", *extra)
    rid = json.loads(r.stdout)["release"]
    assert current_release(root) == rid
    return str(rid)


def current_release(root: Path) -> str | None:
    target = current_target(root)
    if target is None:
        return None
    rid = os.path.basename(target)
    assert os.path.isdir(root / "releases" / rid), f"current -> {target} is dangling"
    return rid


def journal_path(root: Path) -> Path:
    return root / ".atomic-deploy" / "journal.json"


def journal(root: Path) -> dict[str, Any]:
    data = json.loads(journal_path(root).read_text())
    assert isinstance(data, dict)
    return data


def states(root: Path) -> dict[str, str]:
    """Release id -> the state `list --json` shows (current, good, bad)."""
    r = cli_ok("list", root, "--json")
    return {rel["id"]: rel["state"] for rel in json.loads(r.stdout)["releases"]}


def status(root: Path) -> dict[str, Any]:
    data = json.loads(cli_ok("status", root, "--json").stdout)
    assert isinstance(data, dict)
    return data


def status_row(root: Path, name: str) -> str:
    rows = [ln for ln in cli_ok("status", root).stdout.splitlines() if ln.startswith(name)]
    assert len(rows) == 1, rows
    return rows[0]


def op_record(root: Path, op_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one history record of operation ``op_id``, and the record right after it."""
    recs = history(root)
    mine = [i for i, h in enumerate(recs) if h.get("op_id") == op_id]
    assert len(mine) == 1, recs
    assert mine[0] + 1 < len(recs), recs
    return recs[mine[0]], recs[mine[0] + 1]


def assert_clean(root: Path) -> None:
    assert not journal_path(root).exists()
    assert hidden_entries(root) == []


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def recovered_action(stdout: str, op: str, release: str) -> str:
    """`recover` prints one line naming the interrupted operation; returns what was done."""
    line = one_line(stdout)
    head = f"recovered interrupted {op} of {release} ("
    assert line.startswith(head) and "): " in line, line
    return line.split("): ", 1)[1]


def one_error_line(stderr: str) -> str:
    line = one_line(stderr)
    assert line.startswith("atomic-deploy: error:"), line
    return line


def assert_release_is(root: Path, rid: str, build: Path) -> None:
    got = snapshot(root / "releases" / rid)
    assert got and got == snapshot(build), f"release {rid} is not a complete copy of {build.name}"


class Gate:
    """A hook or health check that, while ``armed``, creates ``marker`` and waits for ``gate``:
    the test then knows the process is inside it. It disarms itself on first use."""

    def __init__(self, tmp_path: Path, fail_flag: Path | None = None) -> None:
        self.armed = tmp_path / "armed"
        self.marker = tmp_path / "inside"
        self.gate = tmp_path / "gate"
        self.armed.touch()
        tail = f"; [ ! -e {q(fail_flag)} ]" if fail_flag is not None else ""
        self.command = (f"if [ -e {q(self.armed)} ]; then rm -f {q(self.armed)}; "
                        f"touch {q(self.marker)}; while [ ! -e {q(self.gate)} ]; "
                        f"do sleep 0.01; done; fi{tail}")

    def wait_inside(self, proc: subprocess.Popen[str]) -> None:
        wait_for(lambda: self.marker.exists() or proc.poll() is not None,
                 what="the process to be inside the gated command")
        assert proc.poll() is None, proc.communicate()

    def open(self) -> None:
        self.gate.touch()  # also lets a command orphaned by kill -9 end


# --------------------------------------------------------------------------------------------
# a. kill -9 during the health check, then `recover`


@pytest.mark.parametrize("passes_now", [True, False], ids=["check-passes", "check-fails"])
def test_killed_during_health_check_recover_finishes_or_switches_back(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]],
        passes_now: bool) -> None:
    log, fail = tmp_path / "told.log", tmp_path / "fail"
    v1, v2 = builds("v1"), builds("v2")
    r1 = deploy(root, v1, *tell_args(log))
    gate = Gate(tmp_path, fail)
    proc = start_cli("deploy", v2, root, *tell_args(log), "--health-check", gate.command,
                     "--health-retries", "0")
    procs.append(proc)
    try:
        gate.wait_inside(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if not passes_now:
            fail.touch()
        gate.open()
    assert proc.returncode == -signal.SIGKILL
    crashed = journal(root)
    r2 = crashed["release"]
    assert current_release(root) == r2 and r2 != r1
    assert told(log) == [r1, r2]

    # status says what recovery will do, and changes nothing
    before = snapshot(root)
    plan = status(root)["recovery"]
    assert plan is not None and "re-run the after-switch hooks and health check" in plan
    assert r2 in plan
    assert "re-run the after-switch hooks" in status_row(root, "interrupted")
    assert snapshot(root) == before

    r = cli_ok("recover", root)

    line = recovered_action(r.stdout, "deploy", r2)
    assert_clean(root)
    rec, after = op_record(root, crashed["op_id"])
    assert after["op"] == "recover" and after["outcome"] == "ok"
    assert after["interrupted"] == "deploy"
    assert_release_is(root, r2, v2)
    assert_release_is(root, r1, v1)
    if passes_now:
        assert line.startswith("finished"), line
        assert current_release(root) == r2
        assert told(log) == [r1, r2, r2]  # told again by the re-run after-switch hook
        assert (rec["op"], rec["outcome"], rec["release"]) == ("deploy", "ok", r2)
        assert rec["recovered"] is True
        assert rec["states"] == {r2: "served"}
        assert states(root) == {r1: "good", r2: "current"}
    else:
        assert line.startswith("switched back"), line
        assert "marked bad" in line
        assert current_release(root) == r1
        assert told(log) == [r1, r2, r2, r1]  # the service is back on r1 and was told so
        assert (rec["op"], rec["outcome"], rec["release"]) == ("deploy", "unhealthy", r2)
        assert rec["states"] == {r2: "bad"}
        assert states(root) == {r1: "current", r2: "bad"}
        assert status(root)["bad"] == [r2]


# --------------------------------------------------------------------------------------------
# b. a signal after the switch: switched back at once, and the service is told


@pytest.mark.parametrize("sig", ["TERM", "INT"])
@pytest.mark.parametrize("where", ["after-switch", "health-check"])
def test_real_signal_during_after_switch_or_health_check_tells_the_restored_release(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]],
        where: str, sig: str) -> None:
    log, fired = tmp_path / "told.log", tmp_path / "on-failure-fired"
    v1, v2 = builds("v1"), builds("v2")
    r1 = deploy(root, v1, *tell_args(log))
    gate = Gate(tmp_path)
    gated = (["--after-switch", gate.command] if where == "after-switch"
             else ["--health-check", gate.command])
    proc = start_cli("deploy", v2, root, *tell_args(log), *gated,
                     "--on-failure", f"touch {q(fired)}")
    procs.append(proc)
    try:
        gate.wait_inside(proc)
        r2 = journal(root)["release"]
        assert current_release(root) == r2
        proc.send_signal(SIGNALS[sig])
        _out, err = proc.communicate(timeout=60)
    finally:
        gate.open()

    assert proc.returncode == 128 + SIGNALS[sig], err
    line = one_error_line(err)
    assert f"SIG{sig}" in line and "switched back" in line
    assert current_release(root) == r1
    assert told(log) == [r1, r2, r1]  # the service ends on the release it serves
    assert release_names(root) == [r1]  # the new release is removed
    assert_release_is(root, r1, v1)
    assert_clean(root)
    last = [h for h in history(root) if h["op"] == "deploy"][-1]
    assert (last["release"], last["outcome"]) == (r2, "interrupted")
    assert not fired.exists()  # a signal is no failure: on-failure hooks do not run


@pytest.mark.parametrize("step", ["switched", "switch-synced", "hook-after-switch",
                                  "health-checked"])
@pytest.mark.parametrize("op", ["deploy", "activate", "rollback"])
def test_signal_at_every_step_after_the_switch_tells_the_restored_release(
        builds: Builds, root: Path, tmp_path: Path, op: str, step: str) -> None:
    log = tmp_path / "told.log"
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    r1 = deploy(root, v1, *tell_args(log))
    r2 = deploy(root, v2, *tell_args(log))
    args: tuple[str | Path, ...] = {"deploy": ("deploy", v3, root),
                                    "activate": ("activate", root, r1),
                                    "rollback": ("rollback", root)}[op]

    r = run_cli(*args, *tell_args(log), "--health-check", "true", fault=f"{step}:TERM")

    assert r.returncode == 143, r.stderr
    assert "SIGTERM" in one_error_line(r.stderr)
    assert current_release(root) == r2
    last = [h for h in history(root) if h["op"] == op][-1]
    assert last["outcome"] == "interrupted"
    new = last["release"]
    assert new == (r1 if op != "deploy" else new) and new != r2
    hooks_ran = step in ("hook-after-switch", "health-checked")  # told about the new release
    # whatever the service last heard of, it ends told about the release it serves again
    assert told(log) == [r1, r2, *([new] if hooks_ran else []), r2]
    assert release_names(root) == [r1, r2]  # a deploy's stopped release is removed
    assert states(root) == {r1: "good", r2: "current"}  # an undone rollback marks nothing bad
    assert_clean(root)


# --------------------------------------------------------------------------------------------
# c. kill -9 in the middle of switching back


def _setup_switch(root: Path, builds: Builds, log: Path,
                  op: str) -> tuple[tuple[str | Path, ...], str, list[str]]:
    """(command line, the release current is on before it, the releases there are)."""
    r1 = deploy(root, builds("v1"), *tell_args(log))
    if op == "deploy":
        return ("deploy", builds("v2"), root), r1, [r1]
    r2 = deploy(root, builds("v2"), *tell_args(log))
    args: tuple[str | Path, ...] = ("activate", root, r1) if op == "activate" else ("rollback", root)
    return args, r2, [r1, r2]


@pytest.mark.parametrize("point", ["switching-back", "switched-back"])
@pytest.mark.parametrize("op", ["deploy", "activate", "rollback"])
def test_killed_while_switching_back_status_reports_and_recover_finishes(
        builds: Builds, root: Path, tmp_path: Path, op: str, point: str) -> None:
    log = tmp_path / "told.log"
    args, old, existing = _setup_switch(root, builds, log, op)
    told_before = told(log)

    r = run_cli(*args, *tell_args(log), "--health-check", "false", "--health-retries", "0",
                fault=f"{point}:KILL")

    assert r.returncode == -signal.SIGKILL, r.stderr
    crashed = journal(root)
    new = crashed["release"]
    assert crashed["phase"] == "switching-back" and crashed["mark_bad"] is True
    assert current_release(root) == (new if point == "switching-back" else old)
    assert told(log) == [*told_before, new]  # not yet told about the switch back

    before = snapshot(root)
    plan = status(root)["recovery"]
    assert plan is not None and plan.startswith("finish switching back") and new in plan
    assert "finish switching back" in status_row(root, "interrupted")
    assert snapshot(root) == before, "status changed the root"

    r = cli_ok("recover", root)

    line = recovered_action(r.stdout, op, new)
    assert line.startswith("switched back") and f"{new} kept and marked bad" in line, line
    assert current_release(root) == old
    assert told(log) == [*told_before, new, old]
    assert sorted(release_names(root)) == sorted({*existing, new})  # kept, to look into
    got = states(root)
    assert got[old] == "current" and got[new] == "bad"
    assert_clean(root)
    rec, after = op_record(root, crashed["op_id"])
    assert (rec["op"], rec["outcome"], rec["release"]) == (op, "unhealthy", new)
    assert rec["states"] == {new: "bad"}
    assert (after["op"], after["interrupted"]) == ("recover", op)


def test_signal_then_killed_while_switching_back_recover_removes_the_release(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """Switching back because of a signal drops the new release (it is not bad, it was
    stopped); a crash in the middle of that is finished the same way, service told."""
    log = tmp_path / "told.log"
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    r1 = deploy(root, v1, *tell_args(log))
    gate = Gate(tmp_path)
    proc = start_cli("deploy", v2, root, *tell_args(log), "--health-check", gate.command,
                     fault="switched-back:KILL")
    procs.append(proc)
    try:
        gate.wait_inside(proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        gate.open()
    assert proc.returncode == -signal.SIGKILL
    crashed = journal(root)
    r2 = crashed["release"]
    assert crashed["phase"] == "switching-back" and not crashed["mark_bad"]
    assert current_release(root) == r1
    assert told(log) == [r1, r2]
    assert "finish switching back" in status(root)["recovery"]

    r = cli_ok("deploy", v3, root, "--json")  # any mutating command recovers first

    assert f"recovered interrupted deploy of {r2}" in r.stderr
    r3 = json.loads(r.stdout)["release"]
    assert current_release(root) == r3
    assert told(log) == [r1, r2, r1]  # v3's deploy has no hooks: only recovery told
    assert release_names(root) == sorted([r1, r3])  # the stopped release is removed
    assert_clean(root)
    rec, after = op_record(root, crashed["op_id"])
    assert (rec["outcome"], rec["release"]) == ("interrupted", r2)
    assert "states" not in rec
    assert after["op"] == "recover"


def test_signal_then_killed_while_switching_back_an_activate_keeps_its_release_good(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """A stopped activate says nothing against its release: once recovery has finished the
    switch back, that release is as it was (not bad), and kept."""
    log = tmp_path / "told.log"
    r1 = deploy(root, builds("v1"), *tell_args(log))
    r2 = deploy(root, builds("v2"), *tell_args(log))
    gate = Gate(tmp_path)
    proc = start_cli("activate", root, r1, *tell_args(log), "--health-check", gate.command,
                     fault="switched-back:KILL")
    procs.append(proc)
    try:
        gate.wait_inside(proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        gate.open()
    assert proc.returncode == -signal.SIGKILL
    crashed = journal(root)
    assert crashed["phase"] == "switching-back" and not crashed["mark_bad"]

    action = recovered_action(cli_ok("recover", root).stdout, "activate", r1)

    assert crashed["reason"] and action.startswith(f"switched back ({crashed['reason']}); ")
    assert "marked bad" not in action, action
    assert "failed" not in action, action  # the after-switch hook on r2 passed
    assert current_release(root) == r2
    assert states(root) == {r1: "good", r2: "current"}
    rec, after = op_record(root, crashed["op_id"])
    assert (rec["outcome"], rec["release"], rec["recovered"]) == ("interrupted", r1, True)
    assert "states" not in rec and after["op"] == "recover"
    assert_clean(root)


@pytest.mark.parametrize("moved_to", ["older", "newer"])
def test_current_moved_by_hand_after_a_killed_activate_is_switched_back(
        builds: Builds, root: Path, tmp_path: Path, moved_to: str) -> None:
    """Recovery finishes an interrupted switch only where current is on that switch's release;
    current anywhere else (moved by hand meanwhile) goes back to what the journal recorded."""
    log = tmp_path / "told.log"
    rs = [deploy(root, builds(v), *tell_args(log)) for v in ("v1", "v2", "v3", "v4")]
    assert rs == sorted(rs)
    r = run_cli("activate", root, rs[1], *tell_args(log), fault="switched:KILL")
    assert r.returncode == -signal.SIGKILL and current_release(root) == rs[1]
    by_hand = rs[0] if moved_to == "older" else rs[2]
    os.symlink(f"releases/{by_hand}", root / "by-hand")
    os.replace(root / "by-hand", root / "current")

    action = recovered_action(cli_ok("recover", root).stdout, "activate", rs[1])

    assert action.startswith("switched back (interrupted)"), action
    assert "marked bad" not in action and "failed" not in action, action
    assert current_release(root) == rs[3]
    assert states(root) == {rs[0]: "good", rs[1]: "good", rs[2]: "good", rs[3]: "current"}
    assert told(log) == [*rs, rs[3]]  # the activated release's hooks are not run again
    assert_clean(root)


# --------------------------------------------------------------------------------------------
# d. recover --dry-run, and recover with nothing to do


def test_recover_dry_run_changes_nothing_and_prints_the_plan(builds: Builds, root: Path,
                                                            tmp_path: Path) -> None:
    log = tmp_path / "told.log"
    r1 = deploy(root, builds("v1"), *tell_args(log))
    r = run_cli("deploy", builds("v2"), root, *tell_args(log), fault="switch-synced:KILL")
    assert r.returncode == -signal.SIGKILL
    r2 = journal(root)["release"]
    before, heard = snapshot(root), told(log)

    text = cli_ok("recover", root, "--dry-run")
    js = cli_ok("recover", root, "--dry-run", "--json")

    assert snapshot(root) == before and told(log) == heard == [r1]  # killed before the hooks
    line = one_line(text.stdout)
    assert line.startswith("would re-run the after-switch hooks and health check"), line
    assert r2 in line
    data = json.loads(js.stdout)
    assert data["ok"] is True and data["dry_run"] is True
    assert data["action"] == line[len("would "):]

    r = cli_ok("recover", root, "--json")  # and the real run does what was planned

    data = json.loads(r.stdout)
    assert data["dry_run"] is False and ": finished: " in data["action"]
    assert current_release(root) == r2
    assert told(log) == [r1, r2]
    assert_clean(root)


def test_recover_on_a_clean_root_has_nothing_to_do(builds: Builds, root: Path) -> None:
    deploy(root, builds("v1"))
    before = history(root), snapshot(root / "releases"), current_target(root)

    text = cli_ok("recover", root)
    dry = cli_ok("recover", root, "--dry-run")
    js = cli_ok("recover", root, "--json")

    assert one_line(text.stdout) == "nothing to recover"
    assert one_line(dry.stdout) == "nothing to recover"
    assert json.loads(js.stdout)["action"] is None
    assert (history(root), snapshot(root / "releases"), current_target(root)) == before
    assert_clean(root)


@pytest.mark.parametrize("first", [True, False], ids=["first-deploy", "next-deploy"])
def test_recover_says_where_current_was_left(builds: Builds, root: Path, first: bool) -> None:
    r1 = None if first else deploy(root, builds("v1"))
    r = run_cli("deploy", builds("v2"), root, fault="release-synced:KILL")
    assert r.returncode == -signal.SIGKILL
    r2 = journal(root)["release"]

    action = recovered_action(cli_ok("recover", root).stdout, "deploy", r2)

    where = "there is no current release" if first else f"current -> releases/{r1}"
    assert action == f"rolled back; {where}"
    assert current_release(root) == r1 and r2 not in release_names(root)
    assert_clean(root)


# --------------------------------------------------------------------------------------------
# e. an interrupted adopt: the adopted folder is a release that has served


@pytest.mark.parametrize("action", ["KILL", "INT"])
def test_interrupted_adopt_then_deploy_keeps_the_adopted_release_as_rollback_target(
        builds: Builds, root: Path, action: str) -> None:
    legacy = root / "current"
    legacy.mkdir(parents=True)
    (legacy / "version.txt").write_text("legacy\n")
    v2 = builds("v2")

    r = run_cli("adopt", root, fault=f"adopt-exchanged:{action}")

    if action == "KILL":
        assert r.returncode == -signal.SIGKILL
    else:
        assert r.returncode == 130, r.stderr
        assert "SIGINT" in one_error_line(r.stderr)
    adopted = current_release(root)  # readers never lost the legacy content
    assert adopted is not None
    assert (root / "current" / "version.txt").read_text() == "legacy\n"
    interrupted = journal_path(root).exists()
    if interrupted:
        assert status(root)["interrupted"]["op"] == "adopt"

    r = cli_ok("deploy", v2, root, "--json")

    if interrupted:
        assert f"recovered interrupted adopt of {adopted}" in r.stderr
    new = json.loads(r.stdout)["release"]
    assert current_release(root) == new
    assert_clean(root)
    assert status(root)["previous"] == adopted
    assert states(root) == {adopted: "good", new: "current"}

    p = cli_ok("prune", root, "--keep", "1")  # never the rollback target

    assert p.returncode == 0
    assert release_names(root) == sorted([adopted, new])

    r = cli_ok("rollback", root)

    assert current_release(root) == adopted
    assert (root / "current" / "version.txt").read_text() == "legacy\n"
    assert states(root) == {adopted: "current", new: "bad"}


# --------------------------------------------------------------------------------------------
# f. an interrupted rollback or activate on a root made by another tool or by hand


def _hand_made_root(root: Path, names: list[str]) -> None:
    for name in names:
        d = root / "releases" / name
        d.mkdir(parents=True)
        (d / "version.txt").write_text(f"{name}\n")
    (root / "current").symlink_to(root / "releases" / names[-1])  # absolute, as Capistrano does


def _prune_plan(root: Path) -> list[str]:
    data = json.loads(cli_ok("prune", root, "--keep", "1", "--dry-run", "--json").stdout)
    plan = data["plan"]
    assert isinstance(plan, list)
    return [str(x) for x in plan]


def test_interrupted_rollback_on_a_capistrano_root_keeps_its_target(root: Path) -> None:
    names = ["20250101000001", "20250101000002", "20250101000003"]
    _hand_made_root(root, names)
    assert status(root)["previous"] == names[1]
    before = snapshot(root / "releases"), os.readlink(root / "current")

    r = run_cli("rollback", root, fault="journal-written:INT")

    assert r.returncode == 130, r.stderr
    assert "SIGINT" in one_error_line(r.stderr)
    assert (snapshot(root / "releases"), os.readlink(root / "current")) == before
    assert_clean(root)
    st = status(root)
    assert (st["current"], st["previous"], st["bad"]) == (names[2], names[1], [])
    plan = _prune_plan(root)
    assert f"delete releases/{names[1]}" not in plan
    assert plan == [f"delete releases/{names[0]}", f"keep {names[1]}, {names[2]}"]

    cli_ok("prune", root, "--keep", "1")

    assert release_names(root) == names[1:]
    r = cli_ok("rollback", root)
    assert current_release(root) == names[1]


@pytest.mark.parametrize("target", ["legacy-a", "legacy-b"])
def test_interrupted_activate_never_makes_hand_named_releases_prunable(root: Path,
                                                                       target: str) -> None:
    names = ["legacy-a", "legacy-b", "legacy-c"]
    _hand_made_root(root, names)
    prev = status(root)["previous"]
    before = snapshot(root / "releases"), os.readlink(root / "current")

    r = run_cli("activate", root, target, fault="journal-written:INT")

    assert r.returncode == 130, r.stderr
    assert "SIGINT" in one_error_line(r.stderr)
    assert (snapshot(root / "releases"), os.readlink(root / "current")) == before
    assert_clean(root)
    assert status(root)["previous"] == prev
    plan = _prune_plan(root)
    assert not [p for p in plan if p.startswith("delete")], plan

    cli_ok("prune", root, "--keep", "1")

    assert release_names(root) == names


# --------------------------------------------------------------------------------------------
# g. a prune problem after a completed deploy is a warning


def test_deploy_keep_prune_error_is_a_warning_not_a_failed_deploy(builds: Builds, root: Path,
                                                                  tmp_path: Path) -> None:
    fired = tmp_path / "on-failure-fired"
    r1 = deploy(root, builds("v1"))
    r2 = deploy(root, builds("v2"))

    r = run_cli("deploy", builds("v3"), root, "--keep", "1", "--on-failure", f"touch {q(fired)}",
                "--json", fault="victim-hidden:EIO")

    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] is True
    assert isinstance(data["warnings"], list) and data["warnings"]
    assert all("warning" in ln for ln in r.stderr.splitlines()), r.stderr
    r3 = data["release"]
    assert current_release(root) == r3 and r3 not in (r1, r2)
    assert_release_is(root, r3, builds("v3"))
    assert r2 in release_names(root)  # the rollback target is never pruned
    assert_clean(root)
    assert [h["outcome"] for h in history(root) if h["op"] == "deploy"][-1] == "ok"


def test_deploy_keep_prune_error_does_not_run_on_failure_hooks(builds: Builds, root: Path,
                                                               tmp_path: Path) -> None:
    fired = tmp_path / "on-failure-fired"
    deploy(root, builds("v1"))
    deploy(root, builds("v2"))

    r = run_cli("deploy", builds("v3"), root, "--keep", "1", "--on-failure", f"touch {q(fired)}",
                fault="victim-hidden:EIO")

    assert r.returncode == 0, r.stderr
    assert not fired.exists(), "on-failure fired for a deploy that completed"


# --------------------------------------------------------------------------------------------
# h. hand-made folders named with digits that are no timestamp


@pytest.mark.parametrize("name", ["99999999999999", "20251399999999"])
def test_deploy_next_to_a_folder_named_like_no_timestamp(builds: Builds, root: Path,
                                                         name: str) -> None:
    hand = root / "releases" / name
    hand.mkdir(parents=True)
    (hand / "version.txt").write_text("by hand\n")

    first = deploy(root, builds("v1"))
    second = deploy(root, builds("v2"))

    assert first != name and second > first
    assert release_names(root) == sorted([name, first, second])
    assert (hand / "version.txt").read_text() == "by hand\n"
    cli_ok("rollback", root)
    assert current_release(root) == first  # our releases sort after the hand-made name


def test_adopt_with_an_id_that_is_no_timestamp_then_deploy(builds: Builds, root: Path) -> None:
    legacy = root / "current"
    legacy.mkdir(parents=True)
    (legacy / "version.txt").write_text("legacy\n")
    cli_ok("adopt", root, "--id", "20251399999999")

    new = deploy(root, builds("v1"))

    assert release_names(root) == sorted(["20251399999999", new])
    assert status(root)["previous"] == "20251399999999"
    cli_ok("rollback", root)
    assert current_release(root) == "20251399999999"
    assert (root / "current" / "version.txt").read_text() == "legacy\n"


"""One writer per root: a kernel flock on .atomic-deploy/lock, with the real CLI in subprocesses.

A holder is made to stand still inside its operation with the fault seam
(``ATOMIC_DEPLOY_FAULT=copied:PAUSE:FILE``: it creates FILE.paused, then waits until FILE
exists), so every interleaving below is deterministic: no sleeps, only awaited conditions.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from conftest import (
    Builds,
    current_target,
    hidden_entries,
    history,
    make_build,
    release_names,
    run_cli,
    snapshot,
    start_cli,
    wait_for,
)


def lock_path(root: Path) -> Path:
    return root / ".atomic-deploy" / "lock"


def lock_id(root: Path) -> tuple[int, int]:
    st = os.lstat(lock_path(root))
    assert stat.S_ISREG(st.st_mode), "the lock must be a regular file (never a symlink)"
    return st.st_dev, st.st_ino


def current_release(root: Path) -> str | None:
    target = current_target(root)
    if target is None:
        return None
    assert target.startswith("releases/"), target
    rid = target[len("releases/"):]
    assert (root / "current").is_dir(), f"current -> {target} is dangling"
    return rid


def assert_release_is(root: Path, rid: str, build: Path) -> None:
    got = snapshot(root / "releases" / rid)
    assert got and got == snapshot(build), f"release {rid} is not a complete copy of {build.name}"


def deploy_cli(root: Path, build: Path, *extra: str) -> str:
    r = run_cli("deploy", build, root, *extra)
    assert r.returncode == 0, r.stderr
    rid = current_release(root)
    assert rid is not None
    return rid


def ok_deploys(root: Path) -> list[dict[str, object]]:
    return [h for h in history(root) if h.get("op") == "deploy" and h.get("outcome") == "ok"]


class PausedHolder:
    """A `deploy` holding the lock, paused at a checkpoint until released."""

    def __init__(self, procs: list[subprocess.Popen[str]], build: Path, root: Path, gate: Path,
                 step: str = "copied", extra: tuple[str, ...] = ()) -> None:
        self.gate = gate
        self.proc = start_cli("deploy", build, root, *extra, fault=f"{step}:PAUSE:{gate}")
        procs.append(self.proc)
        paused = Path(f"{gate}.paused")
        wait_for(lambda: paused.exists() or self.proc.poll() is not None,
                 what=f"holder to pause at {step}")
        assert self.proc.poll() is None, self.proc.communicate()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self) -> tuple[int, str, str]:
        self.gate.touch()
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


def test_lock_file_is_never_deleted_or_replaced_by_operations(builds: Builds, root: Path) -> None:
    r1 = deploy_cli(root, builds("v1"))
    ident = lock_id(root)
    deploy_cli(root, builds("v2"))
    deploy_cli(root, builds("v3"))
    assert lock_id(root) == ident
    for args in (("rollback", root), ("activate", root, r1), ("prune", root, "--keep", "1")):
        r = run_cli(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert lock_id(root) == ident, args
    # the read-only commands neither create nor touch it
    before = os.stat(lock_path(root))
    for args in (("status", root), ("list", root), ("status", root, "--json")):
        assert run_cli(*args).returncode == 0
    after = os.stat(lock_path(root))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_killed_holder_never_blocks_the_next_deploy(builds: Builds, root: Path, tmp_path: Path,
                                                    procs: list[subprocess.Popen[str]]) -> None:
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    old = deploy_cli(root, v1)
    ident = lock_id(root)
    holder = PausedHolder(procs, v2, root, tmp_path / "gate")
    # it really holds the lock
    assert run_cli("deploy", v3, root).returncode == 3

    os.kill(holder.pid, signal.SIGKILL)
    holder.proc.communicate(timeout=30)
    assert holder.proc.returncode == -signal.SIGKILL
    assert lock_id(root) == ident
    assert current_release(root) == old

    started = time.monotonic()
    r = run_cli("deploy", v3, root)  # no --wait: a stale lock would make this exit 3

    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < 30
    assert any(ln.startswith("atomic-deploy: recovered interrupted deploy")
               for ln in r.stderr.splitlines()), r.stderr
    new = current_release(root)
    assert new is not None and new != old
    assert_release_is(root, new, v3)
    assert release_names(root) == sorted([old, new])  # the killed holder's release is gone
    assert hidden_entries(root) == []
    assert not (root / ".atomic-deploy" / "journal.json").exists()
    assert lock_id(root) == ident


def test_refused_process_names_the_holder_and_never_disturbs_it(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    old = deploy_cli(root, v1)
    ident = lock_id(root)
    holder = PausedHolder(procs, v2, root, tmp_path / "gate")
    info = json.loads((root / ".atomic-deploy" / "holder.json").read_text())
    assert info["pid"] == holder.pid
    before = snapshot(root)

    refused = run_cli("deploy", v3, root)

    assert refused.returncode == 3, refused.stderr
    lines = refused.stderr.splitlines()
    assert len(lines) == 1, refused.stderr
    line = lines[0]
    assert line.startswith("atomic-deploy: error:")
    assert f"pid {holder.pid}" in line
    assert socket.gethostname() in line
    assert info["started"] in line
    assert "deploy" in line and str(v2) in line  # the holder's command
    assert str(v3) not in line
    assert snapshot(root) == before, "the refused process changed the root"
    assert lock_id(root) == ident

    # status shows who holds the lock, and changes nothing either
    text = run_cli("status", root)
    js = run_cli("status", root, "--json")
    assert text.returncode == 0 and js.returncode == 0, (text.stderr, js.stderr)
    assert f"held by pid {holder.pid}" in text.stdout
    assert json.loads(js.stdout)["lock_holder"]["pid"] == holder.pid
    assert snapshot(root) == before

    code, _out, err = holder.finish()

    assert code == 0, err
    new = current_release(root)
    assert new is not None and new != old
    assert_release_is(root, new, v2)
    assert ok_deploys(root)[-1]["release"] == new
    assert len(ok_deploys(root)) == 2
    assert hidden_entries(root) == []
    assert lock_id(root) == ident


def test_short_wait_gives_up_with_exit_3(builds: Builds, root: Path, tmp_path: Path,
                                         procs: list[subprocess.Popen[str]]) -> None:
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    deploy_cli(root, v1)
    holder = PausedHolder(procs, v2, root, tmp_path / "gate")
    before = snapshot(root)

    started = time.monotonic()
    r = run_cli("deploy", v3, root, "--wait", "0.5")
    waited = time.monotonic() - started

    assert r.returncode == 3, r.stderr
    assert waited >= 0.5
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomic-deploy: error:"), r.stderr
    assert f"pid {holder.pid}" in lines[0]
    assert snapshot(root) == before

    code, _out, err = holder.finish()
    assert code == 0, err
    assert_release_is(root, str(current_release(root)), v2)


def test_long_wait_succeeds_once_the_holder_finishes(builds: Builds, root: Path, tmp_path: Path,
                                                     procs: list[subprocess.Popen[str]]) -> None:
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    first = deploy_cli(root, v1)
    holder = PausedHolder(procs, v2, root, tmp_path / "gate")
    # the waiter passes the lock-wait checkpoint only after being refused once: it is waiting
    wgate = tmp_path / "waiting"
    waiter = start_cli("deploy", v3, root, "--wait", "30", fault=f"lock-wait:PAUSE:{wgate}")
    procs.append(waiter)
    wait_for(lambda: Path(f"{wgate}.paused").exists() or waiter.poll() is not None,
             what="the waiter to wait for the lock")
    assert waiter.poll() is None, waiter.communicate()
    wgate.touch()

    code, _out, err = holder.finish()
    assert code == 0, err
    _wout, werr = waiter.communicate(timeout=60)

    assert waiter.returncode == 0, werr
    deploys = ok_deploys(root)
    assert len(deploys) == 3
    hold_rel, wait_rel = str(deploys[1]["release"]), str(deploys[2]["release"])
    assert deploys[1]["pid"] == holder.pid and deploys[2]["pid"] == waiter.pid
    assert deploys[2].get("previous") == hold_rel  # it ran after the holder, not alongside
    assert current_release(root) == wait_rel
    assert_release_is(root, first, v1)
    assert_release_is(root, hold_rel, v2)
    assert_release_is(root, wait_rel, v3)
    assert release_names(root) == sorted([first, hold_rel, wait_rel])
    assert hidden_entries(root) == []


def test_concurrent_deploys_all_succeed_one_after_another(
        root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    n = 8
    builds = [make_build(tmp_path / "builds" / f"c{i}", version=f"c{i}") for i in range(n)]
    # the first deploy creates the root too: start all at once, from nothing
    runs = [start_cli("deploy", b, root, "--wait", "120", "--keep", "all") for b in builds]
    procs.extend(runs)
    outs = [p.communicate(timeout=150) for p in runs]

    for p, (_out, err) in zip(runs, outs):
        assert p.returncode == 0, err
    names = release_names(root)
    assert len(names) == n
    # each release is exactly one build, every build is there, each process got its own
    by_release: dict[str, Path] = {}
    for rid in names:
        snap = snapshot(root / "releases" / rid)
        matches = [b for b in builds if snapshot(b) == snap]
        assert len(matches) == 1, f"release {rid} matches {len(matches)} builds"
        by_release[rid] = matches[0]
    assert sorted(by_release.values()) == sorted(builds)
    for b, (out, _err) in zip(builds, outs):
        mine = re.findall(r"^deployed (\d+)", out, re.M)
        assert len(mine) == 1, out
        assert by_release[mine[0]] == b

    deploys = ok_deploys(root)
    assert len(deploys) == n
    order = [str(d["release"]) for d in deploys]
    assert sorted(order) == names and order == sorted(order)  # ids in deploy order
    # one after another: each switched away from the one before it
    assert "previous" not in deploys[0] or deploys[0]["previous"] is None
    for before, rec in zip(deploys, deploys[1:]):
        assert rec.get("previous") == before["release"]
    assert current_release(root) == order[-1]
    assert hidden_entries(root) == []
    assert not (root / ".atomic-deploy" / "journal.json").exists()


def test_sigterm_while_waiting_for_the_lock_changes_nothing(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    v1, v2, v3 = builds("v1"), builds("v2"), builds("v3")
    old = deploy_cli(root, v1)
    ident = lock_id(root)
    holder = PausedHolder(procs, v2, root, tmp_path / "gate")
    before = snapshot(root)
    wgate = tmp_path / "waiting"
    waiter = start_cli("deploy", v3, root, "--wait", "60", fault=f"lock-wait:PAUSE:{wgate}")
    procs.append(waiter)
    wait_for(lambda: Path(f"{wgate}.paused").exists() or waiter.poll() is not None,
             what="the waiter to wait for the lock")
    assert waiter.poll() is None, waiter.communicate()
    wgate.touch()  # back to polling for the lock

    waiter.send_signal(signal.SIGTERM)
    _out, err = waiter.communicate(timeout=30)

    assert waiter.returncode == 143, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("atomic-deploy: error:"), err
    assert "SIGTERM" in lines[0]
    assert snapshot(root) == before, "the interrupted waiter changed the root"
    assert lock_id(root) == ident

    code, _hout, herr = holder.finish()
    assert code == 0, herr
    new = current_release(root)
    assert new is not None and new != old
    assert_release_is(root, new, v2)
    assert len(ok_deploys(root)) == 2
    assert hidden_entries(root) == []


# ------------------------------------------------------------- readers never make a writer fail

_PROBER = """
import os, sys
from atomic_deploy import query
from atomic_deploy._layout import Layout
from atomic_deploy._lock import probe_holder
root, stop, mode = sys.argv[1:4]
layout = Layout(root)
open(stop + ".started-" + str(os.getpid()), "w").close()
while not os.path.exists(stop):
    if mode == "status":
        query.status(root)
    else:
        probe_holder(layout)
"""


def test_status_probing_in_a_tight_loop_never_makes_a_wait_0_deploy_fail(
        root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    import sys

    from conftest import cli_env

    builds = [make_build(tmp_path / "builds" / f"p{i}", {"v.txt": f"p{i}"}) for i in range(30)]
    deploy_cli(root, builds[0])
    stop = tmp_path / "stop"
    # What `status` does to the lock (probe_holder), as fast as it can go, plus whole status()
    # calls; the CLI's status reaches the same code after its start-up.
    for mode in ("probe", "probe", "status"):
        procs.append(subprocess.Popen([sys.executable, "-c", _PROBER, str(root), str(stop), mode],
                                      env=cli_env()))
    wait_for(lambda: len(list(tmp_path.glob("stop.started-*"))) == 3, what="probers started")
    try:
        codes = []
        for b in builds[1:]:
            r = run_cli("deploy", b, root, "--wait", "0")
            codes.append((r.returncode, r.stderr.strip()))
    finally:
        stop.touch()
    assert [c for c in codes if c[0] != 0] == []
    assert len(ok_deploys(root)) == 30


_SHARED_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)  # what an older status's probe, or `flock -s`, holds
open(sys.argv[2] + ".held", "w").close()
while not os.path.exists(sys.argv[2]):
    pass
"""


def _hold_shared(root: Path, gate: Path,
                 procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    import sys

    p = subprocess.Popen([sys.executable, "-c", _SHARED_HOLDER, str(lock_path(root)), str(gate)],
                         text=True)
    procs.append(p)
    wait_for(lambda: Path(f"{gate}.held").exists() or p.poll() is not None, what="shared hold")
    assert p.poll() is None
    return p


def test_a_shared_hold_on_the_lock_is_waited_out_by_a_wait_0_deploy(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    v1, v2 = builds("v1"), builds("v2")
    deploy_cli(root, v1)
    reader = _hold_shared(root, tmp_path / "reader", procs)
    wgate = tmp_path / "waiting"
    writer = start_cli("deploy", v2, root, "--wait", "0", fault=f"lock-wait:PAUSE:{wgate}")
    procs.append(writer)
    wait_for(lambda: Path(f"{wgate}.paused").exists() or writer.poll() is not None,
             what="the writer to find the lock held shared")
    assert writer.poll() is None, writer.communicate()  # not refused: nobody writes
    (tmp_path / "reader").touch()
    reader.wait(timeout=30)
    wgate.touch()
    _out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert_release_is(root, str(current_release(root)), v2)


def test_a_shared_hold_that_lasts_refuses_a_writer_after_a_bounded_time(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    from atomic_deploy._lock import READERS_GRACE

    deploy_cli(root, builds("v1"))
    before = snapshot(root)
    _hold_shared(root, tmp_path / "reader", procs)
    started = time.monotonic()
    r = run_cli("deploy", builds("v2"), root, "--wait", "0")
    waited = time.monotonic() - started
    (tmp_path / "reader").touch()

    assert r.returncode == 3, r.stderr
    line = r.stderr.splitlines()
    assert len(line) == 1 and "held shared" in line[0] and "nothing was changed" in line[0], line
    assert READERS_GRACE <= waited < READERS_GRACE + 20
    assert {k: v for k, v in snapshot(root).items() if k != ".atomic-deploy/holder.json"} == \
        {k: v for k, v in before.items() if k != ".atomic-deploy/holder.json"}


def test_the_holder_command_is_shown_as_typed_with_its_quoting(
        builds: Builds, root: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """`--check 'sleep 5'` was shown as `--check sleep 5`: the words of the holder's command
    line are shell-quoted, so that it reads (and pastes) back as the same words."""
    deploy_cli(root, builds("v1"))
    check = "test -n \"it's\"; true"
    holder = PausedHolder(procs, builds("v2"), root, tmp_path / "gate",
                          extra=("--check", check, "-m", "two words"))
    refused = run_cli("deploy", builds("v3"), root)
    assert refused.returncode == 3, refused.stderr
    shown = json.loads(run_cli("status", root, "--json").stdout)["lock_holder"]["command"]
    assert shlex.split(shown) == ["atomic-deploy", "deploy", str(builds("v2")), str(root),
                                  "--check", check, "-m", "two words"]
    assert shlex.quote(check) in refused.stderr and "'two words'" in refused.stderr
    assert holder.finish()[0] == 0

"""Readers hammering ROOT/current during hundreds of switches see no gap and no torn read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import atomic_deploy
from atomic_deploy.errors import CheckFailed
from conftest import current_target, make_build, release_names, run_cli, wait_for

SIZE = 64 * 1024

# Each reader loops until STOP exists: resolves current (opens it as a folder, through the
# symlink, as a server's path lookup does) and reads data, a and b inside it (data must be one
# release's byte repeated; a and b must agree). "enoent": current itself did not resolve, the gap
# this tool promises never happens. "stale": current resolved, but a file of the release it
# resolved to was gone a moment later (that release was removed while the read was in it).
READER = r"""
import errno, json, os, sys
root, stop, ready, out = sys.argv[1:5]
cur = os.path.join(root, "current")
reads = enoent = stale = torn = 0
seen = set()
open(ready, "w").close()

def read(dfd, name, n):
    fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
    try:
        return os.read(fd, n)
    finally:
        os.close(fd)

while not os.path.exists(stop):
    try:
        dfd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        enoent += 1
        if enoent == 1:
            open(out + ".gap", "w").close()
        continue
    try:
        data = read(dfd, "data", %(size)d + 1)
        a = read(dfd, "a", 64)
        b = read(dfd, "b", 64)
    except FileNotFoundError:
        stale += 1
        continue
    finally:
        os.close(dfd)
    reads += 1
    if len(data) != %(size)d or data.count(data[:1]) != len(data) or a != b:
        torn += 1
    seen.add(data[:1].decode())
json.dump({"reads": reads, "enoent": enoent, "stale": stale, "torn": torn,
           "seen": sorted(seen)}, open(out, "w"))
""".replace("%(size)d", str(SIZE))


def _release(tmp: Path, name: str, byte: str) -> Path:
    return make_build(tmp / "builds" / name,
                      {"data": byte * SIZE, "a": name, "b": name})


def _run_readers(tmp: Path, root: Path, n: int) -> tuple[list[subprocess.Popen[bytes]], Path]:
    stop = tmp / "stop"
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen([sys.executable, "-c", READER, str(root), str(stop),
                                       str(tmp / f"ready{i}"), str(tmp / f"out{i}")]))
    wait_for(lambda: all((tmp / f"ready{i}").exists() for i in range(n)), what="readers to start")
    return procs, stop


def _collect(tmp: Path, procs: list[subprocess.Popen[bytes]], stop: Path) -> list[dict[str, object]]:
    stop.touch()
    for p in procs:
        assert p.wait(timeout=60) == 0
    return [json.loads((tmp / f"out{i}").read_text()) for i in range(len(procs))]


def test_four_readers_see_no_gap_and_no_torn_read_during_248_switches(tmp_path: Path) -> None:
    root = tmp_path / "www"
    a = atomic_deploy.deploy(str(_release(tmp_path, "A", "A")), str(root)).release
    b = atomic_deploy.deploy(str(_release(tmp_path, "B", "B")), str(root)).release
    procs, stop = _run_readers(tmp_path, root, 4)
    try:
        for _ in range(120):  # 240 switches through the real activate path (lock, journal, history)
            atomic_deploy.activate(str(root), a)
            atomic_deploy.activate(str(root), b)
        # and real deploys too, each adding a release with its own byte
        for i, byte in enumerate("CDEFGHIJ"):
            atomic_deploy.deploy(str(_release(tmp_path, f"R{i}", byte)), str(root))
    finally:
        results = _collect(tmp_path, procs, stop)
    total = sum(int(r["reads"]) for r in results)  # type: ignore[call-overload]
    assert total > 1000, results
    assert [r["enoent"] for r in results] == [0, 0, 0, 0], results
    assert [r["stale"] for r in results] == [0, 0, 0, 0], results  # nothing is deleted here
    assert [r["torn"] for r in results] == [0, 0, 0, 0], results
    seen = set().union(*(set(r["seen"]) for r in results))  # type: ignore[call-overload]
    assert {"A", "B"} <= seen, "readers never saw a switch happen"
    assert os.readlink(root / "current").startswith("releases/")


def test_reader_harness_counts_a_gap(tmp_path: Path) -> None:
    """The harness above can fail: a missing current is counted as ENOENT."""
    root = tmp_path / "www"
    atomic_deploy.deploy(str(_release(tmp_path, "A", "A")), str(root))
    procs, stop = _run_readers(tmp_path, root, 1)
    saved = os.readlink(root / "current")
    os.unlink(root / "current")
    wait_for(lambda: (tmp_path / "out0.gap").exists(), what="the reader to hit the gap")
    os.symlink(saved, root / "current")
    results = _collect(tmp_path, procs, stop)
    assert results[0]["enoent"] > 0


# ------------------------------------------------------------------------------ switching back
# Every way current goes back to the release it left: a failed after-switch hook or health
# check, a signal after the switch, and recovery of a deploy killed after the switch. Each must
# point current back before anything of the abandoned release is deleted, or readers resolving
# current in between find nothing. A read that had already entered the abandoned release when
# it is removed can still find a file gone ("stale"): that release is deleted at once, not kept
# for in-flight reads (docs/reliability.md). Printed, not asserted.

CYCLES = 30


def _assert_no_gap(results: list[dict[str, object]], expect_seen: set[str]) -> None:
    total = sum(int(r["reads"]) for r in results)  # type: ignore[call-overload]
    assert total > 1000, results
    assert [r["enoent"] for r in results] == [0] * len(results), results
    assert [r["torn"] for r in results] == [0] * len(results), results
    seen = set().union(*(set(r["seen"]) for r in results))  # type: ignore[call-overload]
    assert expect_seen <= seen, f"readers never saw {expect_seen - seen}: {results}"
    stale = sum(int(r["stale"]) for r in results)  # type: ignore[call-overload]
    print(f"{total} reads, 0 gaps, {stale} stale reads inside the abandoned release")


def _assert_back_on(root: Path, rid: str) -> None:
    assert os.readlink(root / "current") == f"releases/{rid}"
    assert (root / "current" / "data").read_bytes() == b"A" * SIZE
    assert not (root / ".atomic-deploy" / "journal.json").exists()


def test_readers_see_no_gap_when_a_failed_after_switch_or_health_check_switches_back(
        tmp_path: Path) -> None:
    root = tmp_path / "www"
    a = atomic_deploy.deploy(str(_release(tmp_path, "A", "A")), str(root)).release
    b = atomic_deploy.deploy(str(_release(tmp_path, "B", "B")), str(root)).release
    atomic_deploy.activate(str(root), a)
    new = _release(tmp_path, "N", "N")
    # Fails for any release but A, so the after-switch run for the restored release succeeds.
    after_switch = [f'test "$ATOMIC_DEPLOY_RELEASE" = {a}']
    procs, stop = _run_readers(tmp_path, root, 4)
    try:
        for i in range(CYCLES):
            if i % 3 == 0:
                opts = {"after_switch": after_switch}
            else:
                opts = {"health_check": "exit 1", "health_retries": 0}
            if i % 3 == 2:  # activate switches back the same way
                with pytest.raises(CheckFailed):
                    atomic_deploy.activate(str(root), b, **opts)
            else:
                with pytest.raises(CheckFailed):
                    atomic_deploy.deploy(str(new), str(root), **opts)
            _assert_back_on(root, a)
    finally:
        results = _collect(tmp_path, procs, stop)
    _assert_no_gap(results, {"A", "N", "B"})


def test_readers_see_no_gap_when_a_signal_after_the_switch_switches_back(tmp_path: Path) -> None:
    root = tmp_path / "www"
    a = atomic_deploy.deploy(str(_release(tmp_path, "A", "A")), str(root)).release
    b = atomic_deploy.deploy(str(_release(tmp_path, "B", "B")), str(root)).release
    atomic_deploy.activate(str(root), a)
    new = _release(tmp_path, "N", "N")
    procs, stop = _run_readers(tmp_path, root, 4)
    try:
        for i in range(CYCLES):
            step = ("switched", "switch-synced")[i % 2]
            sig = ("TERM", "INT", "HUP")[i % 3]
            if i % 4 == 3:
                r = run_cli("activate", root, b, fault=f"{step}:{sig}")
            else:
                r = run_cli("deploy", new, root, fault=f"{step}:{sig}")
            assert r.returncode == 128 + getattr(signal, "SIG" + sig), r.stderr
            assert "switched back" in r.stderr, r.stderr
            _assert_back_on(root, a)
            assert release_names(root) == sorted([a, b])  # the new release is gone
    finally:
        results = _collect(tmp_path, procs, stop)
    _assert_no_gap(results, {"A", "N", "B"})


def test_readers_see_no_gap_when_recovery_switches_back_a_deploy_killed_after_the_switch(
        tmp_path: Path) -> None:
    root = tmp_path / "www"
    a = atomic_deploy.deploy(str(_release(tmp_path, "A", "A")), str(root)).release
    new = _release(tmp_path, "N", "N")
    procs, stop = _run_readers(tmp_path, root, 4)
    try:
        for i in range(CYCLES):
            step = ("switched", "switch-synced")[i % 2]
            # killed after its switch, before its health check ran
            r = run_cli("deploy", new, root, "--health-check", "false", "--health-retries", "0",
                        fault=f"{step}:KILL")
            assert r.returncode == -signal.SIGKILL, r.stderr
            assert (root / "current" / "data").read_bytes() == b"N" * SIZE
            killed = current_target(root)
            # the next mutating command recovers: the health check fails again, so it switches
            # back, and keeps the new release marked bad
            r = run_cli("prune", root, "--keep", "100")
            assert r.returncode == 0, r.stderr
            assert "recovered interrupted deploy" in r.stderr, r.stderr
            _assert_back_on(root, a)
            assert f"releases/{release_names(root)[-1]}" == killed
            assert len(release_names(root)) == i + 2
    finally:
        results = _collect(tmp_path, procs, stop)
    _assert_no_gap(results, {"A", "N"})

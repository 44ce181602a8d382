"""Hooks and health checks end to end, through the real CLI."""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
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


def test_check_runs_inside_the_new_release_before_the_switch(builds: Builds, root: Path,
                                                             tmp_path: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    out = tmp_path / "seen"
    r = run_cli("deploy", builds("v2"), root, "--check",
                f'cat version.txt > {out}; readlink "$ATOMIC_DEPLOY_ROOT/current" >> {out}; '
                f'echo "$ATOMIC_DEPLOY_PHASE $ATOMIC_DEPLOY_RELEASE" >> {out}')
    assert r.returncode == 0, r.stderr
    v1, v2 = release_names(root)
    assert out.read_text().splitlines() == ["v2", f"releases/{v1}", f"check {v2}"]


def test_failed_check_aborts_with_exit_4_and_changes_nothing(builds: Builds, root: Path,
                                                             tmp_path: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    before = current_target(root)
    marker = tmp_path / "failed"
    r = run_cli("deploy", builds("v2"), root, "--check", "echo broken config; exit 3",
                "--on-failure", f'echo "$ATOMIC_DEPLOY_ERROR" > {marker}')
    assert r.returncode == 4
    assert "broken config" in r.stderr  # streamed
    assert r.stderr.strip().splitlines()[-1].startswith("atomic-deploy: error: check hook")
    assert current_target(root) == before
    assert len(release_names(root)) == 1 and hidden_entries(root) == []
    assert "exit status 3" in marker.read_text()
    assert history(root)[-1]["outcome"] == "failed"


def test_after_switch_hook_sees_the_new_release_as_current(builds: Builds, root: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "after"
    r = run_cli("deploy", builds("v1"), root, "--after-switch",
                f'cat "$ATOMIC_DEPLOY_ROOT/current/version.txt" > {out}')
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "v1\n"
    rec = history(root)[-1]
    assert rec["hooks"][0]["phase"] == "after-switch" and rec["hooks"][0]["returncode"] == 0


def test_failed_health_check_switches_back_and_marks_bad(builds: Builds, root: Path,
                                                         tmp_path: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    v1 = release_names(root)[0]
    log = tmp_path / "log"
    r = run_cli("deploy", builds("v2"), root, "--health-check", "echo unhealthy; exit 1",
                "--health-retries", "2", "--health-interval", "0",
                "--after-switch", f'echo "$ATOMIC_DEPLOY_RELEASE" >> {log}',
                "--on-failure", f"echo failure >> {log}")
    assert r.returncode == 4, r.stderr
    assert current_target(root) == f"releases/{v1}"
    v2 = next(n for n in release_names(root) if n != v1)
    rels = {x["id"]: x for x in json.loads(run_cli("list", root, "--json").stdout)["releases"]}
    assert rels[v2]["state"] == "bad"  # kept as evidence, marked bad
    # after-switch ran for the new release, then again for the restored one; then on-failure
    assert log.read_text().splitlines() == [v2, v1, "failure"]
    rec = history(root)[-1]
    assert rec["outcome"] == "unhealthy" and "unhealthy" in rec["hooks"][-1]["tail"]
    assert "switched back" in r.stderr and "marked bad" in r.stderr
    # the bad release does not become a rollback target, and prune does not count it
    assert run_cli("prune", root, "--keep", "1").returncode == 0
    assert v1 in release_names(root)


def test_failed_health_check_on_first_deploy_leaves_no_current(builds: Builds,
                                                               root: Path) -> None:
    r = run_cli("deploy", builds("v1"), root, "--health-check", "false",
                "--health-retries", "0")
    assert r.returncode == 4
    assert not os.path.lexists(root / "current")


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[type[_Handler]]:
    handler = type("H", (_Handler,), {"status": 200})
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    handler.port = httpd.server_address[1]  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield handler
    httpd.shutdown()


def test_health_url(builds: Builds, root: Path, server: type[_Handler]) -> None:
    url = f"http://127.0.0.1:{server.port}/health"  # type: ignore[attr-defined]
    assert run_cli("deploy", builds("v1"), root, "--health-url", url).returncode == 0
    server.status = 503
    r = run_cli("deploy", builds("v2"), root, "--health-url", url, "--health-retries", "1",
                "--health-interval", "0")
    assert r.returncode == 4 and "503" in r.stderr
    assert current_target(root) == f"releases/{release_names(root)[0]}"


def test_rollback_runs_after_switch_and_health_check(builds: Builds, root: Path,
                                                     tmp_path: Path) -> None:
    for v in ("v1", "v2", "v3"):
        assert run_cli("deploy", builds(v), root).returncode == 0
    _, b, _ = release_names(root)
    out = tmp_path / "rb"
    r = run_cli("rollback", root, "--after-switch", f'echo "$ATOMIC_DEPLOY_RELEASE" > {out}')
    assert r.returncode == 0, r.stderr
    assert out.read_text().strip() == b
    # a rollback whose health check fails goes back to where it was
    r = run_cli("rollback", root, "--health-check", "false", "--health-retries", "0")
    assert r.returncode == 4
    assert current_target(root) == f"releases/{b}"


def test_hook_timeout_is_enforced(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    before = snapshot(root)
    r = run_cli("deploy", builds("v2"), root, "--check", "sleep 30", "--hook-timeout", "0.5")
    assert r.returncode == 4 and "timed out" in r.stderr
    assert current_target(root) == before["current"][1]
    assert len(release_names(root)) == 1


def test_ctrl_c_during_a_hook_kills_its_process_group(builds: Builds, root: Path,
                                                      tmp_path: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    before = current_target(root)
    pidfile = tmp_path / "pid"
    proc = start_cli("deploy", builds("v2"), root, "--check",
                     f"sleep 300 & echo $! > {pidfile}; wait")
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "", what="hook start")
    child = int(pidfile.read_text())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err

    def gone() -> bool:
        try:
            with open(f"/proc/{child}/stat") as f:
                return f.read().split(")")[-1].split()[0] == "Z"
        except FileNotFoundError:
            return True
    if sys.platform.startswith("linux"):
        wait_for(gone, what="the hook's background child to die")
    assert current_target(root) == before
    assert len(release_names(root)) == 1 and hidden_entries(root) == []


def test_argv_hook_from_config_reaches_no_shell(builds: Builds, root: Path,
                                                tmp_path: Path) -> None:
    root.mkdir()
    out = tmp_path / "argv"
    (root / "atomic-deploy.toml").write_text(
        f'after_switch = [["{sys.executable}", "-c", '
        f'"import sys; open(sys.argv[2], \'w\').write(sys.argv[1])", "$(touch {tmp_path}/pwned)", '
        f'"{out}"]]\n')
    r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == f"$(touch {tmp_path}/pwned)"
    assert not (tmp_path / "pwned").exists()

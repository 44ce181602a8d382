"""The config file on every supported Python: read with tomllib (3.11+) or tomli (the dependency
before that); --no-config; rollback never blocked by it; doctor says when it cannot be read."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import Builds, current_target, error_line, history, release_names, run_cli, snapshot

HOLDER = os.path.join(".atomic-deploy", "holder.json")
NOT_UTF8 = b'message = "caf\xe9"\n'  # Latin-1


def _without_holder(root: Path) -> dict[str, object]:
    return {k: v for k, v in snapshot(root).items() if k != HOLDER}


def _no_toml_env(tmp_path: Path) -> dict[str, str]:
    """An interpreter where neither tomllib nor tomli can be imported: what an installation
    without its tomli dependency on 3.9/3.10 looks like."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tomllib'] = None\nsys.modules['tomli'] = None\n")
    return {"PYTHONPATH": f"{blocker}{os.pathsep}" + os.environ.get("PYTHONPATH", "")}


def _two_releases(builds: Builds, root: Path) -> list[str]:
    for v in ("v1", "v2"):
        r = run_cli("deploy", builds(v), root)
        assert r.returncode == 0, r.stderr
    return release_names(root)


def test_toml_parser_is_tomllib_or_the_tomli_dependency() -> None:
    """The parser behind the config file exists on this Python (CI runs 3.9 and 3.13)."""
    from atomic_deploy import _config

    parser = _config._parser("x.toml")
    assert parser.__name__ == ("tomllib" if sys.version_info >= (3, 11) else "tomli")


def test_every_command_reads_the_config_file(builds: Builds, root: Path, tmp_path: Path) -> None:
    """The reported case on 3.9/3.10: rollback, activate, prune and deploy all exited 2."""
    seen = tmp_path / "seen"
    root.mkdir()
    (root / "atomic-deploy.toml").write_text(
        f'keep = 2\nmessage = "from the config file"\n'
        f'after_switch = "echo $ATOMIC_DEPLOY_RELEASE >> {seen}"\n')
    for v in ("v1", "v2", "v3"):
        r = run_cli("deploy", builds(v), root)
        assert r.returncode == 0, r.stderr
    deploys = [h for h in history(root) if h["op"] == "deploy"]
    assert {h.get("message") for h in deploys} == {"from the config file"}
    first, second, third = [h["release"] for h in deploys]
    assert release_names(root) == [second, third]  # keep = 2
    r = run_cli("rollback", root)
    assert r.returncode == 0, r.stderr
    assert current_target(root) == f"releases/{second}"
    r = run_cli("activate", root, third)
    assert r.returncode == 0, r.stderr
    r = run_cli("prune", root, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert seen.read_text().split() == [first, second, third, second, third]


BAD_FILES = {
    "not-utf8": NOT_UTF8,
    "not-toml": b"keep = [\n",
    "unknown-key": b"bogus = 1\n",
    "wrong-type": b'health_retries = "three"\n',
    "bad-number": b"wait = nan\n",
}


def _write_bad(root: Path, kind: str) -> None:
    root.mkdir(exist_ok=True)
    (root / "atomic-deploy.toml").write_bytes(BAD_FILES[kind])


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_config_file_is_one_line_and_exit_2(builds: Builds, root: Path, kind: str) -> None:
    releases = _two_releases(builds, root)
    _write_bad(root, kind)
    before = _without_holder(root)
    for args in (["deploy", builds("v3"), root], ["prepare", builds("v3"), root],
                 ["activate", root, releases[0]], ["prune", root, "--keep", "1"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        line = error_line(r)
        assert "atomic-deploy.toml" in line and "Traceback" not in r.stderr
        assert _without_holder(root) == before
    if kind == "not-utf8":
        assert "UTF-8" in line


README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.parametrize("kind", ["bad-keep", "not-toml"])
def test_the_readme_names_exactly_the_commands_a_bad_config_file_stops(
        builds: Builds, root: Path, tmp_path: Path, kind: str) -> None:
    """The reported case: with keep = 0, status, list and verify ran as usual while the README
    said every command but rollback stops. Each command that takes a ROOT is run against the
    bad file, and the README's lists must be what the commands do."""
    first, second = _two_releases(builds, root)
    folder_root = tmp_path / "folder-root"  # for adopt: current is a real folder
    (folder_root / "current").mkdir(parents=True)
    (folder_root / "current" / "index.html").write_text("old\n")
    for where in (root, folder_root):
        (where / "atomic-deploy.toml").write_bytes(
            b"keep = 0\n" if kind == "bad-keep" else BAD_FILES[kind])
    runs = {
        "deploy": ["deploy", builds("v3"), root], "prepare": ["prepare", builds("v3"), root],
        "activate": ["activate", root, first], "rollback": ["rollback", root, "--dry-run"],
        "prune": ["prune", root], "status": ["status", root],
        "list": ["list", root], "verify": ["verify", root], "recover": ["recover", root],
        "adopt": ["adopt", folder_root, "--dry-run"], "doctor": ["doctor", root],
    }
    refused, unread, other = set(), set(), {}
    for cmd, args in runs.items():
        r = run_cli(*args)
        if cmd == "rollback":  # reads only its own settings: a warning when one is bad
            assert r.returncode == 0, r.stderr
            continue
        named = "atomic-deploy.toml" in r.stderr + r.stdout
        if r.returncode == 2 and named:
            refused.add(cmd)
        elif r.returncode == 0 and not named:
            unread.add(cmd)
        else:
            other[cmd] = r.returncode
    assert other == {"doctor": 1}  # a failed check
    assert current_target(root) == f"releases/{second}"
    text = " ".join(README.read_text().split())
    stops = re.search(r"holds a bad value \(.*?\) stops (.*?) with one line", text)
    reads_not = re.search(r"as a failed check \(exit 1\); (.*?) do not read it", text)
    assert stops and reads_not, "the README's config paragraph lost its two lists"
    assert set(re.findall(r"`(\w+)`", stops.group(1))) == refused
    assert set(re.findall(r"`(\w+)`", reads_not.group(1))) == unread


@pytest.mark.parametrize("kind", [*BAD_FILES, "no-toml-module"])
def test_rollback_warns_and_goes_on(builds: Builds, root: Path, tmp_path: Path,
                                    kind: str) -> None:
    first, _ = _two_releases(builds, root)
    env = None
    if kind == "no-toml-module":
        root.joinpath("atomic-deploy.toml").write_text("keep = 1\n")
        env = _no_toml_env(tmp_path)
    else:
        _write_bad(root, kind)
    r = run_cli("rollback", root, env=env)
    assert r.returncode == 0, r.stderr
    assert current_target(root) == f"releases/{first}"
    warnings = [line for line in r.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, r.stderr
    assert "going on without" in warnings[0] and "Traceback" not in r.stderr


def test_rollback_keeps_the_usable_settings_of_a_config_file(builds: Builds, root: Path,
                                                             tmp_path: Path) -> None:
    """A bad value drops that setting only: the after-switch hook (the service must be told)
    still runs; settings rollback does not use are not its business."""
    first, _ = _two_releases(builds, root)
    seen = tmp_path / "seen"
    (root / "atomic-deploy.toml").write_text(
        f'after_switch = "echo $ATOMIC_DEPLOY_RELEASE > {seen}"\nhealth_timeout = nan\n'
        'keep = 0\njobs = "many"\n')
    r = run_cli("rollback", root)
    assert r.returncode == 0, r.stderr
    assert seen.read_text().strip() == first
    warnings = [line for line in r.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "health_timeout" in warnings[0], r.stderr
    # The same file stops a deploy, which uses all of it.
    r = run_cli("deploy", builds("v3"), root)
    assert r.returncode == 2 and current_target(root) == f"releases/{first}"


def test_rollback_with_a_bad_flag_is_still_an_error(builds: Builds, root: Path) -> None:
    _two_releases(builds, root)
    _write_bad(root, "not-toml")
    before = _without_holder(root)
    r = run_cli("rollback", root, "--health-retries", "-1")
    assert r.returncode == 2
    assert "--health-retries" in r.stderr.splitlines()[-1]
    assert _without_holder(root) == before


def test_no_config_skips_the_file_for_every_command(builds: Builds, root: Path) -> None:
    root.mkdir()
    (root / "atomic-deploy.toml").write_bytes(NOT_UTF8)
    r = run_cli("deploy", builds("v1"), root, "--no-config")
    assert r.returncode == 0, r.stderr
    r = run_cli("prepare", builds("v2"), root, "--no-config", "-q")
    assert r.returncode == 0, r.stderr
    prepared = r.stdout.strip()
    r = run_cli("activate", root, prepared, "--no-config")
    assert r.returncode == 0, r.stderr
    r = run_cli("deploy", builds("v3"), root, "--no-config", "--dry-run")
    assert r.returncode == 0, r.stderr
    r = run_cli("rollback", root, "--to", release_names(root)[0], "--no-config")
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr  # not even looked at
    r = run_cli("prune", root, "--no-config", "--keep", "1")
    assert r.returncode == 0, r.stderr
    r = run_cli("deploy", builds("v3"), root, "--no-config", "--config", root / "atomic-deploy.toml")
    assert r.returncode == 2 and "not allowed with" in error_line(r)


def test_doctor_reports_a_config_file_it_cannot_read(builds: Builds, root: Path,
                                                     tmp_path: Path) -> None:
    _two_releases(builds, root)

    def config_check(env: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
        r = run_cli("doctor", root, "--json", env=env)
        checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
        return r.returncode, checks["config"]

    code, check = config_check()
    assert (code, check["status"]) == (0, "ok") and "no atomic-deploy.toml" in check["detail"]
    (root / "atomic-deploy.toml").write_text("keep = 3\n")
    code, check = config_check()
    assert (code, check["status"]) == (0, "ok") and "1 setting" in check["detail"]
    # This Python without a TOML parser: every command but rollback would refuse the file.
    code, check = config_check(_no_toml_env(tmp_path))
    assert (code, check["status"]) == (1, "fail"), check
    assert "tomli" in check["detail"] and "--no-config" in check["fix"]
    for body in (NOT_UTF8, b"keep = 0\n", b"wait = inf\n"):
        (root / "atomic-deploy.toml").write_bytes(body)
        code, check = config_check()
        assert (code, check["status"]) == (1, "fail"), (body, check)


@pytest.mark.parametrize(("line", "key"), [("no-fsync = true", "fsync"),
                                           ("no_link_unchanged = true", "link_unchanged")])
def test_a_no_x_setting_names_the_key_to_write(builds: Builds, root: Path, line: str,
                                                key: str) -> None:
    """`no-fsync = true` (the flag's spelling) was refused as unknown with the whole key list:
    the message says which key to write."""
    root.mkdir()
    (root / "atomic-deploy.toml").write_text(line + "\n")
    r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 2 and release_names(root) == []
    assert error_line(r).endswith(f"unknown setting 'no_{key}': to turn {key} off, write "
                                  f"{key} = false; nothing was changed")
    (root / "atomic-deploy.toml").write_text(f"{key} = false\n")
    assert run_cli("deploy", builds("v1"), root).returncode == 0

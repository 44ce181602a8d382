"""The command surface: commands, output, JSON, history, exit codes, the demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atomic_deploy import __version__
from atomic_deploy._layout import new_release_id
from conftest import Builds, cli_env, current_target, history, release_names, run_cli


def test_deploy_creates_relative_current_and_complete_release(builds: Builds, root: Path) -> None:
    r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    (rid,) = release_names(root)
    assert current_target(root) == f"releases/{rid}"
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert (root / "current" / "assets" / "app.js").exists()
    assert rid in r.stdout


def test_original_two_argument_form_is_deploy(builds: Builds, root: Path) -> None:
    r = run_cli(builds("v1"), root)
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "version.txt").read_text() == "v1\n"


def test_python_dash_m_and_console_script_agree(builds: Builds, root: Path) -> None:
    r = run_cli("--version")
    assert r.returncode == 0
    assert __version__ in r.stdout and "Python" in r.stdout
    exe = shutil.which("atomic-deploy", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("console script not installed next to this Python (not a pip install)")
    r2 = subprocess.run([exe, "--version"], capture_output=True, text=True, env=cli_env())
    assert r2.stdout == r.stdout


def test_help_lists_every_command_and_exit_codes() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for word in ("deploy", "prepare", "activate", "rollback", "status", "list", "prune", "demo",
                 "143", "129", "130"):
        assert word in r.stdout


def test_no_command_is_a_usage_error() -> None:
    r = run_cli()
    assert r.returncode == 2


def test_release_ids_unique_and_ordered_within_one_second(builds: Builds, root: Path) -> None:
    ids = []
    for v in ("v1", "v2", "v3", "v4"):
        r = run_cli("deploy", builds(v), root, "--json")
        assert r.returncode == 0, r.stderr
        ids.append(json.loads(r.stdout)["release"])
    assert len(set(ids)) == 4
    assert ids == sorted(ids)
    assert release_names(root) == ids
    assert all(len(i) == 14 and i.isdigit() for i in ids)


def test_new_release_id_bumps_past_newest_even_if_clock_went_back() -> None:
    import datetime as dt

    t = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert new_release_id(set(), t) == "20260102030405"
    assert new_release_id({"20260102030405"}, t) == "20260102030406"
    assert new_release_id({"20270101000000"}, t) == "20270101000001"
    assert new_release_id({"legacy", "20200101000000"}, t) == "20260102030405"


def test_prepare_stages_without_switching_then_activate(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    before = current_target(root)
    r = run_cli("prepare", builds("v2"), root)
    assert r.returncode == 0, r.stderr
    rid = r.stdout.strip()
    assert (root / "releases" / rid / "version.txt").read_text() == "v2\n"
    assert current_target(root) == before
    r = run_cli("activate", root, rid)
    assert r.returncode == 0, r.stderr
    assert current_target(root) == f"releases/{rid}"


def test_history_records_every_operation(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root, "-m", "first").returncode == 0
    assert run_cli("deploy", builds("v2"), root, "--message", "second").returncode == 0
    assert run_cli("rollback", root).returncode == 0
    assert run_cli("prune", root, "--keep", "1").returncode == 0
    ops = [(h["op"], h["outcome"]) for h in history(root)]
    assert ops == [("deploy", "ok"), ("deploy", "ok"), ("rollback", "ok"), ("prune", "ok")]
    first, second, rb, _ = history(root)
    for rec in (first, second):
        for key in ("time", "user", "host", "release", "source", "message", "outcome"):
            assert key in rec, key
    assert second["previous"] == first["release"]
    assert second["message"] == "second"
    assert rb["release"] == first["release"] and rb["previous"] == second["release"]


def test_status_and_list_json(builds: Builds, root: Path) -> None:
    run_cli("deploy", builds("v1"), root)
    run_cli("deploy", builds("v2"), root)
    s = json.loads(run_cli("status", root, "--json").stdout)
    assert s["schema"] == 1 and s["ok"] is True
    a, b = release_names(root)
    assert s["current"] == b and s["previous"] == a and s["current_state"] == "ok"
    assert s["lock_holder"] is None and s["interrupted"] is None
    rels = json.loads(run_cli("list", root, "--json").stdout)["releases"]
    assert [(r["id"], r["state"], r["current"], r["rollback_target"]) for r in rels] == [
        (a, "good", False, True), (b, "current", True, False)]
    text = run_cli("list", root).stdout
    assert "* " in text and b in text


def test_status_of_missing_root_is_invalid_input(tmp_path: Path) -> None:
    r = run_cli("status", tmp_path / "nope")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("atomic-deploy: error:")


def test_json_error_object(tmp_path: Path) -> None:
    r = run_cli("rollback", tmp_path, "--json")
    assert r.returncode == 2
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["exit_code"] == 2


@pytest.mark.parametrize(("argv", "command"), [
    (["deploy", "B", "R", "--keep", "abc"], "deploy"),  # argparse's error
    (["-q", "prune", "R", "--keep", "x"], "prune"),
    (["deploy", "B", "R", "--rolling-wait", "1"], "deploy"),  # found after parsing
    (["rollback", "R", "--to"], "rollback"),
    (["stauts", "R"], None),  # a typo of a command: which one is not known
])
def test_a_usage_error_object_carries_command(builds: Builds, tmp_path: Path,
                                              argv: list[str], command: str | None) -> None:
    """json.md: every object carries `command`; the usage error's had none."""
    subst = {"B": str(builds("v1")), "R": str(tmp_path / "root")}
    r = run_cli(*[subst.get(a, a) for a in argv], "--json")
    assert r.returncode == 2, r.stderr
    out = json.loads(r.stdout)
    assert out == {"schema": 1, "command": command, "ok": False, "error": out["error"],
                   "state": "nothing was changed", "exit_code": 2}
    assert out["error"] in r.stderr


@pytest.mark.parametrize("argv", [
    ["deploy", "B", "R", "--bogus"],  # argparse's, reported from the top-level parser
    ["deploy", "B", "R", "--keep", "abc"],
    ["deploy", "B", "@web", "web1:/srv/app"],  # a named fleet given with another root
    ["deploy", "B", "R", "--hosts", "H", "R2"],
    ["status", "R", "R2"],
    ["list", "R", "--bogus"],
    ["-q", "prune", "R", "--bogus", "x"],
])
def test_every_usage_error_of_a_command_points_to_its_own_help(
        builds: Builds, tmp_path: Path, argv: list[str]) -> None:
    """`deploy ... --bogus` pointed to `atomic-deploy --help`, and the named fleet's error
    ended with neither its help nor what state the root is in."""
    hosts = tmp_path / "hosts"
    hosts.write_text("web1\n")
    subst = {"B": str(builds("v1")), "R": str(tmp_path / "r"), "R2": str(tmp_path / "r2"),
             "H": str(hosts)}
    command = next(a for a in argv if not a.startswith("-"))
    r = run_cli(*[subst.get(a, a) for a in argv], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.endswith(f" (see: atomic-deploy {command} --help)\n"), r.stderr
    assert r.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["builds", "hosts"]  # no root made


def test_root_can_be_moved_because_current_is_relative(builds: Builds, tmp_path: Path) -> None:
    root = tmp_path / "a"
    run_cli("deploy", builds("v1"), root)
    moved = tmp_path / "b"
    os.rename(root, moved)
    assert (moved / "current" / "version.txt").read_text() == "v1\n"
    assert run_cli("deploy", builds("v2"), moved).returncode == 0
    assert (moved / "current" / "version.txt").read_text() == "v2\n"


def test_capistrano_absolute_current_is_understood_and_made_relative(
        builds: Builds, root: Path) -> None:
    run_cli("deploy", builds("v1"), root)
    run_cli("deploy", builds("v2"), root)
    a, b = release_names(root)
    os.unlink(root / "current")
    os.symlink(str(root / "releases" / b), root / "current")
    s = json.loads(run_cli("status", root, "--json").stdout)
    assert s["current"] == b and s["current_state"] == "ok" and s["previous"] == a
    assert run_cli("rollback", root).returncode == 0
    assert current_target(root) == f"releases/{a}"


def test_demo_runs_and_says_where_its_root_is(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    r = run_cli("demo", "--root", demo)
    assert r.returncode == 0, r.stderr
    assert str(demo) in r.stdout
    www = demo / "www"
    assert len(release_names(www)) == 3
    assert (www / "current" / "version.txt").read_text() == "v2\n"
    assert "rolled back" in r.stdout and "RELEASE" in r.stdout


# ---------------------------------------------------------------- mistakes a new user makes

def test_swapped_source_and_root_is_refused(builds: Builds, root: Path) -> None:
    build = builds("v1")
    assert run_cli("deploy", build, root).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in build.rglob("*")}
    r = run_cli("deploy", root, build)  # ROOT SOURCE instead of SOURCE ROOT
    assert r.returncode == 2 and "swap" in r.stderr and r.stderr.count("\n") == 1
    assert not (build / ".atomic-deploy").exists() and not (build / "releases").exists()
    assert {p: p.stat().st_mtime_ns for p in build.rglob("*")} == before


def test_non_empty_folder_that_is_not_a_root_is_refused(builds: Builds, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    r = run_cli("deploy", builds("v1"), home)
    assert r.returncode == 2 and "not empty" in r.stderr
    assert sorted(os.listdir(home)) == ["notes.txt"]
    cfg_only = tmp_path / "fresh"
    cfg_only.mkdir()
    (cfg_only / "shared").mkdir()  # a prepared root: shared data and nothing else is fine
    assert run_cli("deploy", builds("v1"), cfg_only).returncode == 0


def test_message_and_paths_that_are_not_utf8(builds: Builds, root: Path, tmp_path: Path) -> None:
    odd = os.fsdecode(b"src\xff")
    src = tmp_path / odd
    src.mkdir()
    (src / "index.html").write_text("x")
    r = run_cli("deploy", src, root, "-m", os.fsdecode(b"msg\xfe"))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert history(root)[-1]["message"] == os.fsdecode(b"msg\xfe")


def test_prepare_quiet_still_prints_the_id(builds: Builds, root: Path) -> None:
    r = run_cli("prepare", "-q", builds("v1"), root)
    assert r.returncode == 0 and r.stdout.strip() == release_names(root)[0]


def test_rollback_skips_a_release_that_was_only_prepared(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    assert run_cli("prepare", builds("v2"), root).returncode == 0
    assert run_cli("deploy", builds("v3"), root).returncode == 0
    v1, _, v3 = release_names(root)
    s = json.loads(run_cli("status", root, "--json").stdout)
    assert s["current"] == v3 and s["previous"] == v1
    assert run_cli("rollback", root).returncode == 0
    assert current_target(root) == f"releases/{v1}"


@pytest.mark.parametrize("flags", [["--keep", "0"], ["--health-url", "notaurl"],
                                   ["--health-retries", "-1"], ["--jobs", "0"], ["--wait", "-5"],
                                   ["--ref", "v1"], ["--checksum"]])
@pytest.mark.parametrize("dry", [True, False])
def test_bad_settings_refused_before_anything_even_in_a_dry_run(
        builds: Builds, root: Path, flags: list[str], dry: bool) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    before = history(root)
    r = run_cli("deploy", builds("v2"), root, *flags, *(["--dry-run"] if dry else []))
    assert r.returncode == 2, (flags, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1
    assert history(root) == before and len(release_names(root)) == 1


def test_failed_check_says_nothing_was_switched(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    r = run_cli("deploy", builds("v2"), root, "--check", "false")
    assert r.returncode == 4
    assert "nothing was switched" in r.stderr and "switched back" not in r.stderr


def test_adopted_release_is_managed(tmp_path: Path) -> None:
    root = tmp_path / "legacy"
    (root / "current").mkdir(parents=True)
    (root / "current" / "index.html").write_text("old")
    assert run_cli("adopt", root, "--id", "legacy").returncode == 0
    (rel,) = json.loads(run_cli("list", root, "--json").stdout)["releases"]
    assert rel["managed"] is True and rel["deployed_at"]


@pytest.mark.parametrize("word", ["stauts", "lsit", "rollbak", "deplyo"])
def test_mistyped_command_is_a_usage_error_not_a_deploy(root: Path, word: str) -> None:
    """A first word close to a command's name is a mistyped command (argparse's message)."""
    r = run_cli(word, root)
    assert r.returncode == 2 and "invalid choice" in r.stderr and r.stderr.count("\n") == 1
    assert not root.exists()


@pytest.mark.parametrize("extra", [[], ["--keep", "3"], ["--json"]])
def test_original_form_with_a_missing_source_says_the_source_is_missing(
        tmp_path: Path, root: Path, extra: list[str]) -> None:
    """`atomic-deploy nosuch ROOT` said "invalid choice: 'nosuch' (choose from 'deploy', ...)":
    a first word that is no command nor close to one, then ROOT, is deploy's SOURCE ROOT, and
    deploy's own error says what is wrong, exit 2, nothing made."""
    for word in ("nosuch", "histroy"):
        r = run_cli(word, root, *extra, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr == f"atomic-deploy: error: source {word} does not exist; nothing was " \
                           "changed\n"
        assert not root.exists()
        if extra == ["--json"]:
            assert json.loads(r.stdout)["command"] == "deploy"
    # One word alone, or more words than SOURCE ROOT, is no deploy: argparse's message.
    for argv in (["nosuch"], ["nosuch", str(root), "other"]):
        r = run_cli(*argv, cwd=tmp_path)
        assert r.returncode == 2 and "invalid choice: 'nosuch'" in r.stderr, r.stderr


# --- the parser built for one command -------------------------------------------------------

def _subparser(parser: object, name: str) -> object:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["deploy", "prepare", "activate", "rollback", "status",
                                     "list", "prune", "adopt", "demo", "race", "doctor"])
def test_parser_for_one_command_is_that_command_of_the_full_parser(command: str) -> None:
    """main() builds only the command it runs: same help, same options, same errors."""
    import argparse

    from atomic_deploy.cli import UsageError, build_parser

    full, one = build_parser(), build_parser(command)
    a, b = _subparser(full, command), _subparser(one, command)
    assert isinstance(a, argparse.ArgumentParser) and isinstance(b, argparse.ArgumentParser)
    assert a.format_help() == b.format_help()
    assert [x.option_strings for x in a._actions] == [x.option_strings for x in b._actions]
    for argv in ([command, "--bogus"], [command, "a", "b", "c", "d"], [command, "--wait", "x"]):
        outcomes = []
        for parser in (full, one):
            try:
                outcomes.append(("ok", vars(parser.parse_args(argv))))
            except UsageError as exc:
                outcomes.append(("usage", str(exc)))
        assert outcomes[0] == outcomes[1], argv


def test_usage_errors_found_after_parsing_point_at_the_command_help(tmp_path: Path) -> None:
    r = run_cli("prune", tmp_path, "--keep", "all")  # prune without --keep prunes to 5
    assert r.returncode == 2 and "(see: atomic-deploy prune --help)" in r.stderr
    r = run_cli("deploy", tmp_path)
    assert r.returncode == 2 and "(see: atomic-deploy deploy --help)" in r.stderr


@pytest.mark.parametrize("rid", ["with space", "new\nline", "-dash", "a*", "é"])
def test_adopt_refuses_ids_that_would_not_show_as_they_are(tmp_path: Path, rid: str) -> None:
    root = tmp_path / "root"
    (root / "current").mkdir(parents=True)
    (root / "current" / "index.html").write_text("legacy")
    r = run_cli("adopt", root, f"--id={rid}")
    assert r.returncode == 2 and "invalid or taken" in r.stderr
    assert (root / "current").is_dir() and not (root / "current").is_symlink()
    assert not (root / "releases").exists() or os.listdir(root / "releases") == []


def test_status_of_a_folder_current_names_adopt(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "current").mkdir(parents=True)
    r = run_cli("status", root)
    assert r.returncode == 1  # not a release (yet): exit 1, the report printed in full
    assert "none (directory); `atomic-deploy adopt ROOT` turns it into a release" in r.stdout


def test_options_may_stand_between_source_and_root(tmp_path: Path) -> None:
    """`deploy ./build --keep 3 /srv/app`, `deploy ./build --hosts FILE /srv/app`: plain
    argparse refuses a positional after an option once it has passed the first one."""
    build = tmp_path / "build"
    build.mkdir()
    (build / "index.html").write_text("x")
    root = tmp_path / "root"
    r = run_cli("deploy", build, "--keep", "3", "-m", "between", root, "--json")
    assert r.returncode == 0, r.stderr
    assert os.path.islink(root / "current")
    r = run_cli("list", root, "--json")
    assert json.loads(r.stdout)["releases"][0]["message"] == "between"

"""The quick path for `status` and `list`: same output and exit code as the full CLI, and the
imports that make it quick stay out."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import atomic_deploy
from atomic_deploy import _fastcli, _history, _jsonfile, cli
from conftest import cli_env, history, make_build, snapshot

FLAG_SETS = ([], ["--json"], ["-q"], ["--quiet"], ["--no-color"], ["--json", "-q"],
             ["--no-color", "--json"])


def _deploy(root: Path, build: Path, n: int) -> None:
    for i in range(n):
        make_build(build, version=f"v{i}")
        atomic_deploy.deploy(str(build), str(root))


def _released(root: Path) -> list[str]:
    return sorted(os.listdir(root / "releases"))


# Each prepares a root in its own way; the comparison below runs both CLIs on it.
def _plain(root: Path, build: Path) -> None:
    _deploy(root, build, 3)


def _after_rollback(root: Path, build: Path) -> None:
    _deploy(root, build, 3)
    atomic_deploy.rollback(str(root))


def _odd_entries(root: Path, build: Path) -> None:
    _deploy(root, build, 2)
    (root / "releases" / "handmade-v2").mkdir()  # unmanaged
    (root / "releases" / "notes.txt").write_text("x\n")  # stray
    (root / "releases" / ".atomic-deploy-staging.abc").mkdir()  # leftover


def _dangling(root: Path, build: Path) -> None:
    _deploy(root, build, 1)
    os.replace(root / "current", root / "old-current")
    os.symlink("releases/20000101000000", root / "current")


def _current_is_folder(root: Path, build: Path) -> None:
    root.mkdir()
    (root / "current").mkdir()


def _interrupted(root: Path, build: Path) -> None:
    _deploy(root, build, 1)
    (root / ".atomic-deploy" / "journal.json").write_text(
        json.dumps({"op": "deploy", "release": "20991231000000", "pid": 999999}))


def _torn_history(root: Path, build: Path) -> None:
    _deploy(root, build, 2)
    with open(root / ".atomic-deploy" / "history.jsonl", "a") as f:
        f.write('{"op": "deploy", "outcome": "o')  # a power cut mid-append


def _odd_values(root: Path, build: Path) -> None:
    make_build(build)
    atomic_deploy.deploy(str(build), str(root), message='say "hi"\\ \u00e9\u2603 \U0001f600\nline 2\t')
    atomic_deploy.deploy(str(build), str(root), message="")
    for name in ("20200101000000", "20200101000001", "caf\u00e9 \"q\" \\ x"):
        (root / "releases" / name).mkdir()
    with open(root / ".atomic-deploy" / "history.jsonl", "a") as f:  # hand-edited records
        for name, fields in (("20200101000000", {"message": 5, "user": {"b": 1, "a": [1.5, None]},
                                                 "time": None, "source": "s\u00e9\"\\"}),
                             ("20200101000001", {"message": ["x"], "manifest": 2.5, "user": True,
                                                 "time": "2020-01-01T00:00:01Z"})):
            f.write(json.dumps({"v": 2, "op": "deploy", "outcome": "ok", "release": name,
                                "states": {name: "served"}, **fields}) + "\n")


def _many_logged(root: Path, build: Path) -> None:
    """More releases than the quick path writes in one piece, and a log of many chunks."""
    _deploy(root, build, 1)
    with open(root / ".atomic-deploy" / "history.jsonl", "a") as f:
        for i in range(250):
            name = f"2020010100{i // 60:02d}{i % 60:02d}"
            (root / "releases" / name).mkdir()
            if i % 7:  # the others unmanaged
                state = "bad" if i % 11 == 0 else "complete" if i % 13 == 0 else "served"
                f.write(json.dumps({"v": 2, "op": "deploy", "outcome": "ok", "release": name,
                                    "states": {name: state}, "message": f"m{i} \"\u00e9\"",
                                    "time": f"2020-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
                                    "user": "u", "manifest": "ab" * 32, "pad": "x" * 300},
                                   sort_keys=True) + "\n")


def _outside_releases(root: Path, build: Path) -> None:
    _deploy(root, build, 1)
    os.replace(root / "current", root / "old-current")
    os.symlink("/srv/elsewhere", root / "current")


def _current_is_file(root: Path, build: Path) -> None:
    _deploy(root, build, 1)
    os.replace(root / "current", root / "old-current")
    (root / "current").write_text("x\n")


def _no_current(root: Path, build: Path) -> None:
    _deploy(root, build, 2)
    (root / "current").unlink()


def _only_prepared(root: Path, build: Path) -> None:
    make_build(build)
    atomic_deploy.prepare(str(build), str(root))


def _empty(root: Path, build: Path) -> None:
    root.mkdir()


def _other_content(root: Path, build: Path) -> None:
    make_build(root)  # a build folder given as ROOT by mistake


def _missing(root: Path, build: Path) -> None:
    pass  # an error: the full CLI reports it


def _not_a_folder(root: Path, build: Path) -> None:
    root.write_text("x\n")


ROOTS: list[Callable[[Path, Path], None]] = [
    _plain, _after_rollback, _odd_entries, _dangling, _current_is_folder, _interrupted,
    _torn_history, _odd_values, _many_logged, _outside_releases, _current_is_file, _no_current,
    _only_prepared, _empty, _other_content, _missing, _not_a_folder]
NOT_ROOTS = (_empty, _other_content, _missing, _not_a_folder)  # status and list exit 2
# status exits 1: current cannot serve a release (list still exits 0)
NOT_SERVING = (_dangling, _current_is_folder, _outside_releases, _current_is_file, _no_current,
               _only_prepared)


def _run(main: Callable[[list[str]], int], argv: list[str],
         capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("prepare", ROOTS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("command", ["status", "list"])
def test_same_output_and_exit_code_as_the_full_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        prepare: Callable[[Path, Path], None], command: str) -> None:
    root = tmp_path / "root"
    prepare(root, tmp_path / "build")
    full_calls: list[list[str]] = []
    real_full = cli.main

    def counting_full(argv: list[str]) -> int:
        full_calls.append(argv)
        return real_full(argv)

    monkeypatch.setattr(cli, "main", counting_full)
    for flags in FLAG_SETS:
        argv = [command, str(root), *flags]
        full_calls.clear()
        quick = _run(_fastcli.main, argv, capsys)
        handed_over = bool(full_calls)
        assert quick == _run(real_full, argv, capsys), argv
        if prepare in NOT_ROOTS:
            assert quick[0] == 2 and handed_over, "errors are reported by the full CLI"
            continue
        assert not handed_over, "answered without argparse"
        assert quick[0] == (1 if command == "status" and prepare in NOT_SERVING else 0)
        if "-q" not in flags and "--quiet" not in flags:
            assert quick[1], "printed in full, whatever the exit code"


def test_lock_holder_shown_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    _deploy(root, tmp_path / "build", 1)
    from atomic_deploy._layout import Layout
    from atomic_deploy._lock import RootLock

    # Held the way a writer holds it (another open file description: the probe sees it held).
    with RootLock(Layout(str(root))):
        (root / ".atomic-deploy" / "holder.json").write_text(json.dumps(
            {"pid": 4242, "host": "h", "started": "2026-01-01T00:00:00Z", "command": "deploy x"}))
        for flags in ([], ["--json"]):
            quick = _run(_fastcli.main, ["status", str(root), *flags], capsys)
            assert quick == _run(cli.main, ["status", str(root), *flags], capsys)
            assert "4242" in quick[1]


@pytest.mark.parametrize("argv", [
    ["status"], ["status", "a", "b"], ["status", "--", "x"], ["status", "-v", "x"],
    ["status", "--js", "x"], ["--json", "status", "x"], ["list", "x", "--keep", "3"],
    ["status", "x", "--help"], ["prune", "x"], ["status", ""],
])
def test_anything_else_goes_to_the_full_cli(argv: list[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "main", lambda a: seen.append(list(a)) or 7)
    assert _fastcli.main(argv) == 7
    assert seen == [argv]


HEAVY = {"argparse", "logging", "typing", "dataclasses", "re", "json", "datetime", "enum",
         "inspect", "subprocess", "threading"}


@pytest.mark.parametrize("command", ["status", "list"])
def test_quick_path_imports_nothing_heavy(tmp_path: Path, command: str) -> None:
    """What makes these commands start in about twice an empty interpreter's time."""
    root = tmp_path / "root"
    _deploy(root, tmp_path / "build", 2)
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from atomic_deploy._fastcli import main\n"
        f"code = main([{command!r}, {str(root)!r}])\n"
        "print(sorted(set(sys.modules) - before))\n"
        "sys.exit(code)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(ast.literal_eval(out.stdout.splitlines()[-1]))
    assert loaded & HEAVY == set(), loaded & HEAVY
    assert "atomic_deploy.cli" not in loaded
    # nor what only a failure, a held lock or another command needs
    assert {"atomic_deploy.errors", "atomic_deploy._lock", "struct"} & loaded == set()


# --- the JSON reader that spares `import json` -------------------------------------------------

TEXTS = ['{"a": 1}', ' {"a": [1, 2.5, null, true, false]} \n', "[1]", '{"a": 1} x', "",
         "  \n", '{"a": "\\u00e9\\ud800"}', "\ufeff{}", '{"a":', "1", '"x"', '{"a": 1}{}',
         '{"a": 1e400, "b": -0.0, "c": 12345678901234567890}', '{"a": Infinity}',
         '{"a": "\x01"}', '{"a": 1}\t\r\n', '{"a" : { "b" : [ ] } }', "nul", "{'a': 1}"]


def _outcome(fn: Callable[[str], Any], text: str) -> tuple[str, str]:
    try:
        return "ok", repr(fn(text))
    except ValueError as exc:
        return "error", f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("scanner", [True, False], ids=["c-scanner", "json-module"])
def test_loads_agrees_with_json_loads(monkeypatch: pytest.MonkeyPatch, scanner: bool) -> None:
    if not scanner:
        monkeypatch.setattr(_jsonfile, "_scan", None)
    elif _jsonfile._scan is None:
        pytest.skip("this Python has no C JSON scanner")
    for text in TEXTS:
        assert _outcome(_jsonfile.loads, text) == _outcome(json.loads, text), text


@pytest.fixture
def history_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join([*TEXTS, '{"op": "deploy"}', '{"op": "activ']) + "\n",
                    encoding="utf-8")
    yield path


@pytest.mark.parametrize("scanner", [True, False], ids=["c-scanner", "json-module"])
def test_read_json_lines_keeps_exactly_the_well_formed_objects(
        history_file: Path, monkeypatch: pytest.MonkeyPatch, scanner: bool) -> None:
    if not scanner:
        monkeypatch.setattr(_jsonfile, "_scan", None)
    expected = []
    with open(history_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                expected.append(rec)
    got = _jsonfile.read_json_lines(str(history_file))
    assert repr(got) == repr(expected)  # repr: NaN-free here, and order and types count
    assert {"op": "deploy"} in got and len(got) >= 5


def test_natural_order_of_handmade_names() -> None:
    names = ["v10", "v2", "v1b", "x²", "v1a", "release"]  # "²" is a digit but no decimal
    h = _history.History([])
    assert h.order(names) == ["release", "v1a", "v1b", "v2", "v10", "x²"]


# --- output that cannot be written ------------------------------------------------------------

def _run_with_stdout(args: list[str], stdout: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atomic_deploy", *args], env=cli_env(),
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)


@pytest.mark.parametrize("args", [["status", "{root}"], ["list", "{root}"],
                                  ["status", "{root}", "--json"], ["status", "{root}", "-v"],
                                  ["deploy", "{build}", "{root}"], ["--version"]])
def test_output_to_a_full_disk_is_one_line_saying_what_happened(
        tmp_path: Path, args: list[str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("not Linux: no /dev/full here")
    root, build = tmp_path / "root", tmp_path / "build"
    _deploy(root, build, 1)
    argv = [a.format(root=root, build=build) for a in args]
    with open("/dev/full", "w") as full:
        r = _run_with_stdout(argv, full)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert "could not write the output (No space left on device)" in r.stderr
    if args[0] == "deploy":
        assert "the deploy itself completed" in r.stderr
        assert len(_released(root)) == 2  # it did
    elif args[0] != "--version":
        assert r.stderr.rstrip().endswith("nothing was changed")


@pytest.mark.parametrize("args", [["status", "{root}"], ["list", "{root}", "--json"],
                                  ["deploy", "{build}", "{root}"], ["--version"]])
def test_closed_or_abandoned_stdout_is_no_failure(tmp_path: Path, args: list[str]) -> None:
    """`>&-` and `| true`: the operation's outcome decides the exit code, no traceback."""
    root, build = tmp_path / "root", tmp_path / "build"
    _deploy(root, build, 1)
    argv = [a.format(root=root, build=build) for a in args]

    def check_on_disk(before: dict[str, Any], releases_before: list[str]) -> None:
        """A deploy really completed (new release, complete, current on it, journal gone); any
        other command changed nothing."""
        if args[0] != "deploy":
            assert snapshot(root) == before
            return
        new = sorted(set(_released(root)) - set(releases_before))
        assert len(new) == 1, _released(root)
        assert os.readlink(root / "current") == f"releases/{new[0]}"
        assert snapshot(root / "releases" / new[0]) == snapshot(build)
        assert not (root / ".atomic-deploy" / "journal.json").exists()
        assert [n for n in _released(root) if n.startswith(".")] == []
        last = history(root)[-1]
        assert (last["op"], last["outcome"], last["release"]) == ("deploy", "ok", new[0])

    before, releases_before = snapshot(root), _released(root)
    closed = subprocess.run([sys.executable, "-m", "atomic_deploy", *argv], env=cli_env(),
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            timeout=60, pass_fds=(), stdout=None, close_fds=True,
                            preexec_fn=lambda: os.close(1))
    assert (closed.returncode, closed.stderr) == (0, "")
    check_on_disk(before, releases_before)
    before, releases_before = snapshot(root), _released(root)
    reader_gone = subprocess.Popen([sys.executable, "-m", "atomic_deploy", *argv], env=cli_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader_gone.stdout is not None
    reader_gone.stdout.close()  # nobody reads: the first write gets EPIPE
    _out, err = reader_gone.communicate(timeout=60)
    assert (reader_gone.returncode, err) == (0, "")
    check_on_disk(before, releases_before)


def test_many_releases_into_a_closed_pipe_exit_0(tmp_path: Path) -> None:
    """Output larger than a pipe's buffer, reader gone after the first line (`| head -1`)."""
    root = tmp_path / "root"
    _deploy(root, tmp_path / "build", 1)
    for i in range(1500):
        (root / "releases" / f"handmade-{i:05d}-{'x' * 40}").mkdir()
    r = subprocess.run(f"{sys.executable} -m atomic_deploy list {root} | head -1; "
                       "echo \"rc=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                       env=cli_env(), capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines()[-1] == "rc=0" and r.stderr == ""


@pytest.mark.parametrize("breakage", ["releases-is-a-file", "state-is-a-file",
                                      "history-is-a-folder"])
@pytest.mark.parametrize("command", ["status", "list"])
def test_broken_state_is_invalid_input_and_changes_nothing(
        tmp_path: Path, breakage: str, command: str) -> None:
    root = tmp_path / "root"
    if breakage == "history-is-a-folder":
        _deploy(root, tmp_path / "build", 1)
        (root / ".atomic-deploy" / "history.jsonl").unlink()
        (root / ".atomic-deploy" / "history.jsonl").mkdir()
    else:
        root.mkdir()
        (root / ("releases" if breakage == "releases-is-a-file" else ".atomic-deploy")).touch()
    before = sorted(str(p) for p in root.rglob("*"))
    r = _run_with_stdout([command, str(root), "--json"], subprocess.PIPE)
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and r.stderr.rstrip().endswith("nothing was changed")
    assert json.loads(r.stdout)["state"] == "nothing was changed"
    assert sorted(str(p) for p in root.rglob("*")) == before


def test_release_of_an_uncommitted_deploy_is_not_listed(tmp_path: Path) -> None:
    """Killed after its release was renamed into releases/ but before the switch: recovery will
    remove it, so status and list do not count it as a release."""
    from conftest import run_cli

    root, build = tmp_path / "root", tmp_path / "build"
    _deploy(root, build, 1)
    r = run_cli("deploy", build, root, fault="release-renamed:KILL")
    assert r.returncode == -9
    assert len(_released(root)) == 2  # on disk, not committed
    listed = json.loads(run_cli("list", root, "--json").stdout)["releases"]
    assert len(listed) == 1 and listed[0]["current"]
    status = json.loads(run_cli("status", root, "--json").stdout)
    assert status["releases"] == 1 and status["interrupted"]["op"] == "deploy"


# --- --version, and what a one-file deploy imports --------------------------------------------

def _imported(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the entry point in a fresh interpreter: (the process, the modules it imported)."""
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from atomic_deploy._fastcli import main\n"
        f"code = main({argv!r})\n"
        "sys.stdout.flush()\n"
        "print(sorted(set(sys.modules) - before))\n"
        "sys.exit(code)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True,
                         text=True, timeout=60)
    return out, set(ast.literal_eval(out.stdout.splitlines()[-1]))


def test_version_is_answered_without_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert _fastcli.version_text() == cli.version_text()  # the platform module's words
    quick = _run(_fastcli.main, ["--version"], capsys)
    assert quick == _run(cli.main, ["--version"], capsys)
    assert quick[0] == 0 and quick[1] == cli.version_text() + "\n"
    out, loaded = _imported(["--version"])
    assert out.returncode == 0 and out.stdout.startswith(cli.version_text() + "\n")
    assert loaded & (HEAVY | {"platform"}) == set(), loaded & (HEAVY | {"platform"})
    assert "atomic_deploy.cli" not in loaded


# The atomic_deploy modules an everyday deploy (`deploy BUILD ROOT`, a previous release there,
# one pruned) runs on; a new one here is a new cost at every deploy, so it is added on purpose.
DEPLOY_MODULES = {
    "atomic_deploy", "atomic_deploy._clicore", "atomic_deploy._config", "atomic_deploy._copy",
    "atomic_deploy._fastcli",
    "atomic_deploy._history", "atomic_deploy._jsonfile", "atomic_deploy._layout",
    "atomic_deploy._lock", "atomic_deploy._log", "atomic_deploy._manifest", "atomic_deploy._platform",
    "atomic_deploy._recovery", "atomic_deploy._render", "atomic_deploy._shared",
    "atomic_deploy._signals", "atomic_deploy._stdout", "atomic_deploy._switch",
    "atomic_deploy.errors", "atomic_deploy.operations"}
# What a deploy without hooks, sources other than a folder, or --digest never needs (ctypes, for
# syncfs, it does need): no parser (argparse, and re, gettext, locale with it), no json (the C
# encoder and scanner of _json are used), no datetime (time gives the same timestamps), no
# signal (its C module _signal, without the IntEnum classes) and so no enum.
NOT_FOR_DEPLOY = {"argparse", "re", "gettext", "locale", "json", "datetime", "signal", "enum",
                  "logging", "traceback", "dataclasses", "inspect", "shutil", "threading", "queue",
                  "typing", "hashlib", "_hashlib", "_strptime", "calendar", "platform",
                  "subprocess", "tempfile", "shlex", "urllib", "urllib.request", "http.client",
                  "socket", "ssl", "selectors", "tarfile", "zipfile", "pickle",
                  "multiprocessing", "concurrent.futures", "uuid", "random", "secrets",
                  "importlib.metadata", "email", "base64"}


def test_one_file_deploy_imports_only_what_it_runs_on(tmp_path: Path) -> None:
    root, build = tmp_path / "root", tmp_path / "build"
    _deploy(root, build, 5)
    build_one = tmp_path / "one"
    make_build(build_one, {"index.html": "x\n"})
    out, loaded = _imported(["deploy", str(build_one), str(root)])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("deployed ") and "pruned 1:" in out.stdout
    assert {m for m in loaded if m.startswith("atomic_deploy")} == DEPLOY_MODULES
    assert loaded & NOT_FOR_DEPLOY == set(), loaded & NOT_FOR_DEPLOY
    assert (root / "current" / "index.html").read_text() == "x\n"



# --- the quick deploy: exactly what the full CLI says and does ---------------------------------

def _root_with_releases(tmp_path: Path, n: int = 5) -> tuple[Path, Path]:
    root, build = tmp_path / "root", tmp_path / "build"
    _deploy(root, build, n)
    make_build(build, {"index.html": "new\n"})
    return root, build


def _normalized(result: tuple[int, str, str], root: Path,
                before: set[str]) -> tuple[int, str, str, list[str], str | None]:
    """The outcome without what differs between two runs of one deploy: the new release's id
    and the seconds it took. With what is on disk afterwards (releases, current)."""
    code, out, err = result
    releases = sorted(os.listdir(root / "releases")) if (root / "releases").is_dir() else []
    new = sorted(set(releases) - before)
    for rid in new:
        out, err = out.replace(rid, "NEW"), err.replace(rid, "NEW")
    out = re.sub(r"\d+\.\d\ds\)", "T)", out)
    out = re.sub(r'"seconds": [0-9.e-]+', '"seconds": T', out)
    current = os.readlink(root / "current") if (root / "current").is_symlink() else None
    return (code, out, err, ["NEW" if r in new else r for r in releases],
            current and current.replace(new[0] if new else "\0", "NEW"))


def _both(tmp_path: Path, root: Path, argv: list[str], capsys: pytest.CaptureFixture[str],
          monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, bool]:
    """Run argv through the quick path and, on a copy of the root as it was, through the full
    CLI: (quick outcome, full outcome, whether the quick path handed it over)."""
    saved, on_disk = tmp_path / "saved", snapshot(root)
    if root.is_dir():
        shutil.copytree(root, saved, symlinks=True)
    before = set(os.listdir(root / "releases")) if (root / "releases").is_dir() else set()
    real_full = cli.main
    handed: list[list[str]] = []
    monkeypatch.setattr(cli, "main", lambda a: handed.append(list(a)) or real_full(a))
    quick = _normalized(_run(_fastcli.main, argv, capsys), root, before)
    monkeypatch.setattr(cli, "main", real_full)
    if snapshot(root) == on_disk:  # a failure that changed nothing (a held lock stays held)
        pass
    elif saved.exists():
        shutil.rmtree(root)
        shutil.copytree(saved, root, symlinks=True)
    else:  # made by the quick run (a first deploy)
        shutil.rmtree(root)
    if saved.exists():
        shutil.rmtree(saved)
    full = _normalized(_run(real_full, argv, capsys), root, before)
    return quick, full, bool(handed)


DEPLOY_FLAGS = ([], ["-q"], ["--quiet"], ["--json"], ["--no-color"], ["--json", "-q"],
                ["--no-fsync"], ["--keep", "2"], ["--keep", "all"], ["-m", "a note"],
                ["--message", ""], ["--keep", "3", "--json", "-m", "x", "--no-color"])


@pytest.mark.parametrize("flags", DEPLOY_FLAGS, ids=" ".join)
def test_quick_deploy_says_and_does_what_the_full_cli_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        flags: list[str]) -> None:
    root, build = _root_with_releases(tmp_path)
    for argv in (["deploy", str(build), str(root), *flags],
                 ["deploy", *flags, str(build), str(root)]):
        quick, full, handed = _both(tmp_path, root, argv, capsys, monkeypatch)
        assert quick == full, argv
        assert not handed, "deployed without argparse"
        assert quick[0] == 0 and "NEW" in quick[3] and quick[4] == "releases/NEW"
        if ("-q" not in flags and "--quiet" not in flags) or "--json" in flags:
            assert "NEW" in quick[1]


def _locked(root: Path) -> Any:
    from atomic_deploy._layout import Layout
    from atomic_deploy._lock import RootLock

    lock = RootLock(Layout(str(root)))
    lock.__enter__()
    (root / ".atomic-deploy" / "holder.json").write_text(json.dumps(
        {"pid": 4242, "host": "h", "started": "2026-01-01T00:00:00Z", "command": "deploy x"}))
    return lock


@pytest.mark.parametrize("case", ["no-source", "source-is-a-file", "root-is-a-file", "locked",
                                  "keep-0", "first-deploy", "io-error"])
@pytest.mark.parametrize("flags", [[], ["--json"], ["-q"]], ids=" ".join)
def test_quick_deploy_fails_as_the_full_cli_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        case: str, flags: list[str]) -> None:
    root, build = _root_with_releases(tmp_path, 2)
    source, extra = str(build), []
    lock = None
    if case == "no-source":
        source = str(tmp_path / "nowhere")
    elif case == "source-is-a-file":
        source = str(build / "index.html")
    elif case == "root-is-a-file":
        root = tmp_path / "a-file"
        root.write_text("x\n")
    elif case == "locked":
        lock = _locked(root)
    elif case == "keep-0":
        extra = ["--keep", "0"]
    elif case == "first-deploy":
        root = tmp_path / "new-root"
    elif case == "io-error":  # after the copy, in each of the two runs: undone, exit 1
        from atomic_deploy import _signals

        monkeypatch.setenv("ATOMIC_DEPLOY_FAULT", "copied:EIO")
        monkeypatch.setattr(_signals, "_fired", type("Forgetful", (set,), {"add": lambda self, step: None})())
    try:
        quick, full, handed = _both(tmp_path, root, ["deploy", source, str(root), *flags, *extra],
                                    capsys, monkeypatch)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    assert quick == full
    assert not handed
    expected = {"no-source": 2, "source-is-a-file": 2, "root-is-a-file": 2, "locked": 3,
                "keep-0": 2, "first-deploy": 0, "io-error": 1}[case]
    assert quick[0] == expected, quick
    if expected:
        assert len(quick[2].splitlines()) == 1 and quick[2].startswith("atomic-deploy: error: ")
        if "--json" in flags:
            assert json.loads(quick[1])["exit_code"] == expected
    if case == "locked":
        assert "4242" in quick[2]


@pytest.mark.parametrize("argv", [
    ["deploy", "{build}", "{root}", "--keep", "x"], ["deploy", "{build}", "{root}", "--keep", "-1"],
    ["deploy", "{build}", "{root}", "--keep", "3", "--keep", "4"],
    ["deploy", "{build}", "{root}", "--keep"], ["deploy", "{build}", "{root}", "-m"],
    ["deploy", "{build}", "{root}", "-m", "-x"], ["deploy", "{build}", "{root}", "--keep=3"],
    ["deploy", "{build}", "{root}", "-v"], ["deploy", "{build}", "{root}", "--dry-run"],
    ["deploy", "{build}", "{root}", "--after-switch", "true"], ["deploy", "{build}", "--", "{root}"],
    ["deploy", "{build}"], ["deploy", "{build}", "{root}", "{root}2"],
    ["deploy", "{build}", "--keep", "3", "{root}"], ["deploy", "{build}", "{root}", "--no-fs"],
    ["deploy", "{build}", "host:{root}"], ["deploy", "file://{build}", "{root}"],
    ["deploy", "{build}", "{root}", "--help"], ["{build}", "{root}"],
])
def test_any_other_deploy_goes_to_the_full_cli(tmp_path: Path, argv: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root, build = _root_with_releases(tmp_path, 1)
    argv = [a.format(root=root, build=build) for a in argv]
    before = snapshot(root)
    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "main", lambda a: seen.append(list(a)) or 7)
    assert _fastcli.main(argv) == 7
    assert seen == [argv]
    assert snapshot(root) == before, "nothing done before handing over"


@pytest.mark.parametrize("config", ["keep = 2\n", "keep = 0\n", "not toml [\n"])
def test_a_config_file_is_read_by_the_full_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        config: str) -> None:
    root, build = _root_with_releases(tmp_path)
    (root / "atomic-deploy.toml").write_text(config)
    quick, full, handed = _both(tmp_path, root, ["deploy", str(build), str(root)], capsys,
                                monkeypatch)
    assert quick == full and handed
    assert quick[0] == (0 if config == "keep = 2\n" else 2)


def test_quick_deploy_in_a_fresh_process(tmp_path: Path) -> None:
    """The entry point as installed: the message in the history, the command line in the
    lock holder's record (what status shows of a running deploy)."""
    root, build = _root_with_releases(tmp_path, 2)
    r = subprocess.run([sys.executable, "-m", "atomic_deploy", "deploy", str(build), str(root),
                        "-m", "quick"], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.startswith("deployed ")
    last = history(root)[-1]
    assert (last["op"], last["outcome"], last["message"]) == ("deploy", "ok", "quick")
    holder = json.loads((root / ".atomic-deploy" / "holder.json").read_text())
    assert holder["command"] == f"atomic-deploy deploy {build} {root} -m quick"


# --- timestamps without datetime ---------------------------------------------------------------

def test_timestamps_agree_with_datetime(monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt
    import random
    import time

    from atomic_deploy import _layout, operations

    rng = random.Random(7)
    samples = [0, 999, 1000, 999_999_999, 1_000_000_000, 951_782_400 * 10 ** 9 - 1]
    samples += [rng.randrange(0, 4_000_000_000 * 10 ** 9) for _ in range(300)]
    samples += [s // 10 ** 9 * 10 ** 9 for s in samples[:50]]  # whole seconds: no microseconds
    for ns in samples:
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
        when = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=ns // 1000)
        assert _history.now_iso() == when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert operations._started() == when.isoformat()
    names = ["20261231235959", "20240228235959", "20230228235959", "20000228235959",
             "19000228235959", "20261130235959", "20260101000000", "20261201235900"]
    names += [time.strftime("%Y%m%d%H%M%S", time.gmtime(rng.randrange(0, 4_000_000_000)))
              for _ in range(300)]
    for name in names:
        want = (dt.datetime.strptime(name, "%Y%m%d%H%M%S") + dt.timedelta(seconds=1))
        assert _layout._next_second(name) == want.strftime("%Y%m%d%H%M%S"), name
    from atomic_deploy.errors import InvalidInput

    with pytest.raises(InvalidInput, match="last possible"):
        _layout._next_second("99991231235959")


# --- the JSON writer that spares `import json` ------------------------------------------------

_cycle: list[Any] = []
_cycle.append(_cycle)
VALUES: list[Any] = [
    {"b": 1, "a": [1.5, -0.0, None, True, False, "é\ud800\x01\"\\\n", {"z": {}, "y": []}]},
    {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "big": 10 ** 30},
    {10: "int key", 9: "sorted as ints"}, {2.5: "float key"}, {True: "bool key"},
    {None: "null key"}, {"a": (1, 2)},
    [], {}, 1e400, 0, "just a string", None, {"b": 1, 2: 3}, {"a": object()}, _cycle,
    {"a": {1, 2}}, {(1, 2): 3},
]


def test_dumps_agrees_with_json_dumps() -> None:
    for value in VALUES:
        for fn in (_jsonfile.dumps, lambda v: json.dumps(v, sort_keys=True)):
            try:
                got: tuple[str, str] = ("ok", fn(value))
            except (TypeError, ValueError) as exc:
                got = (type(exc).__name__, str(exc))
            if fn is _jsonfile.dumps:
                ours = got
        assert ours == got, value


def test_json_output_of_status_and_list_imports_no_json(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _deploy(root, tmp_path / "build", 2)
    for command in ("status", "list"):
        out, loaded = _imported([command, str(root), "--json"])
        assert out.returncode == 0 and json.loads(out.stdout.splitlines()[0])["ok"] is True
        assert loaded & HEAVY == set(), loaded & HEAVY


def test_collector_is_off_only_for_the_start_up(tmp_path: Path) -> None:
    """run() turns the garbage collector off while the program starts; a deploy (of any size,
    quick path or not) runs with it on again, the quick answers of status and list without it."""
    root, build = tmp_path / "root", tmp_path / "build"
    _deploy(root, build, 1)
    probe = (
        "import gc, sys\n"
        "from atomic_deploy._fastcli import main\n"
        "gc.disable()\n"  # as run() leaves it
        f"main(['list', {str(root)!r}, '-q'])\n"
        "quick = gc.isenabled()\n"
        f"main(['deploy', {str(build)!r}, {str(root)!r}, '-q'])\n"
        "deployed = gc.isenabled()\n"
        "gc.disable()\n"
        f"main(['deploy', {str(build)!r}, {str(root)!r}, '-q', '--wait', '0'])\n"  # the full CLI
        "print(quick, deployed, gc.isenabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]
    assert len(_released(root)) == 3

"""The quick path for `status` and `list`: same output and exit code as the full CLI, and the
imports that make it quick stay out."""

from __future__ import annotations

import ast
import json
import os
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
    "atomic_deploy", "atomic_deploy._config", "atomic_deploy._copy", "atomic_deploy._fastcli",
    "atomic_deploy._history", "atomic_deploy._jsonfile", "atomic_deploy._layout",
    "atomic_deploy._lock", "atomic_deploy._log", "atomic_deploy._manifest", "atomic_deploy._platform",
    "atomic_deploy._recovery", "atomic_deploy._render", "atomic_deploy._shared",
    "atomic_deploy._signals", "atomic_deploy._stdout", "atomic_deploy._switch",
    "atomic_deploy._version", "atomic_deploy.cli", "atomic_deploy.errors",
    "atomic_deploy.operations"}
# What a deploy without hooks, sources other than a folder, or --digest never needs (the parser,
# json, datetime and ctypes for syncfs it does need).
NOT_FOR_DEPLOY = {"logging", "traceback", "dataclasses", "inspect", "shutil", "threading", "queue",
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
    """run() turns the garbage collector off while the program starts; a command the full CLI
    runs (a deploy of any size) runs with it on again, the quick path's answers without it."""
    root, build = tmp_path / "root", tmp_path / "build"
    _deploy(root, build, 1)
    probe = (
        "import gc, sys\n"
        "from atomic_deploy._fastcli import main\n"
        "gc.disable()\n"  # as run() leaves it
        f"main(['list', {str(root)!r}, '-q'])\n"
        "quick = gc.isenabled()\n"
        f"main(['deploy', {str(build)!r}, {str(root)!r}, '-q'])\n"
        "print(quick, gc.isenabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
    assert len(_released(root)) == 2

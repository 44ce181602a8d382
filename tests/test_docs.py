"""Documentation that is generated or promised stays true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from atomic_deploy import __version__
from atomic_deploy._manpage import manpage
from atomic_deploy.cli import COMMANDS, build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_committed_man_page_is_generated_from_the_current_parser() -> None:
    committed = (DOCS / "atomic-deploy.1").read_text()
    date = re.search(r'^\.TH "[^"]+" 1 "([^"]+)"', committed, re.M)
    assert date, "no .TH line"
    assert committed == manpage(build_parser(), __version__, date.group(1)), (
        "regenerate it: atomic-deploy man > docs/atomic-deploy.1")


def test_json_doc_covers_every_command() -> None:
    text = (DOCS / "json.md").read_text()
    for cmd in COMMANDS:
        assert f"`{cmd}`" in text, cmd


def test_design_doc_lists_every_fault_step() -> None:
    from atomic_deploy import _signals

    text = " ".join((DOCS / "design.md").read_text().split())
    section = text[text.index("## Fault injection"):text.index("## Durability")]
    steps = {*_signals.DEPLOY_STEPS, *_signals.SWITCH_STEPS, *_signals.PRUNE_STEPS,
             *_signals.UNDO_STEPS, *_signals.RECOVER_STEPS, "lock-wait"}
    missing = [s for s in sorted(steps) if not re.search(rf"\b{re.escape(s)}\b", section)]
    assert not missing, f"docs/design.md 'Fault injection' does not name {missing}"


# --- a green CI run means every guarantee was tested ----------------------------------------

ROOT_DIR = DOCS.parent


def test_guarantees_table_names_existing_test_files() -> None:
    from conftest import guaranteed_test_files

    files = guaranteed_test_files()
    assert "tests/test_readers.py" in files and "tests/test_durability.py" in files, files
    assert [f for f in sorted(files) if not (ROOT_DIR / f).is_file()] == []


@pytest.mark.parametrize(("reason", "ci", "fails"), [
    ("busybox not installed", "true", True),
    ("busybox not installed", None, False),
    ("not Linux: reads /proc", "true", sys.platform.startswith("linux")),
    ("not macOS: F_FULLFSYNC", "true", sys.platform == "darwin"),
])
def test_ci_fails_on_a_skip_in_a_guarantee_file(tmp_path: Path, reason: str, ci: str | None,
                                                fails: bool) -> None:
    """Under CI=true a skip in a file the README's Guarantees table names fails the run, unless
    its reason names a platform this one truly is not."""
    (tmp_path / "skipall.py").write_text(
        "import pytest\n\n\ndef pytest_runtest_setup(item):\n"
        f"    pytest.skip({reason!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    if ci:
        env["CI"] = ci
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "skipall",
         "tests/test_readers.py::test_reader_harness_counts_a_gap"],
        cwd=ROOT_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert "1 skipped" in r.stdout, r.stdout + r.stderr
    if fails:
        assert r.returncode == 1, r.stdout
        assert "guarantee tests skipped under CI" in r.stdout
        assert f"test_reader_harness_counts_a_gap: {reason}" in r.stdout
    else:
        assert r.returncode == 0, r.stdout


def test_ci_script_fails_when_a_tool_cannot_be_installed(tmp_path: Path) -> None:
    """.ci/run installs what tests need (apt-get update first) and stops, failing, when that
    fails, instead of going on to run a suite whose tests would skip."""
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "apt.log"
    for name, body in {
        "dpkg": "exit 1",  # nothing installed
        "apt-get": f'echo "$*" >> {log}; [ "$1" = update ] || {{ echo "E: no package" >&2; exit 100; }}',
        "id": 'echo 0',  # as root
    }.items():
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", str(ROOT_DIR / ".ci" / "run")], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "could not install" in r.stderr and "E: no package" in r.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "update -q" and calls[1].startswith("install -y -q busybox"), calls
    assert "README test command" not in r.stdout  # stopped before running anything


def test_design_doc_lists_every_config_key() -> None:
    """The "Config file" key list left out the deploying machine's keys (ssh, fleets, ...)."""
    from atomic_deploy._config import KEYS

    text = (DOCS / "design.md").read_text()
    section = text[text.index("## Config file"):text.index("## Hooks, checks")]
    assert [k for k in KEYS if f"`{k}`" not in section] == []


def test_readme_exit_code_table_is_one_table() -> None:
    """A blank line cut the 129/130/143 row off the table (rendered as a paragraph)."""
    text = (DOCS.parent / "README.md").read_text()
    section = text[text.index("## Exit codes"):]
    rows = re.match(r"## Exit codes\n\n((?:\|.*\n)+)", section)
    assert rows, section[:200]
    codes = [line.split("|")[1].strip() for line in rows.group(1).splitlines()[2:]]
    assert codes == ["0", "1", "2", "3", "4", "5", "129 / 130 / 143"]

"""Distribution: the single-file zipapp, the sdist and wheel, and the README's quick start.

- ``tools/build_pyz.py`` builds ``atomic-deploy.pyz``; it is run under pyenv's newest 3.9.x and
  3.13.x in isolated mode (``-I``: no user site, no PYTHONPATH, so nothing but the archive and the
  standard library is importable), through its shebang, and under a too-old Python. It reads a
  config file there: with the tomli bundled in it on 3.9, with tomllib on 3.13.
- The sdist is built from a copy of the working tree, the wheel from the unpacked sdist, and the
  wheel is installed into a fresh venv with ``--no-index``.
- The first ```sh block of README.md is run verbatim with bash in a copy of the working tree.

The last two are marked ``slow`` (they create venvs and fetch setuptools from the package index):
``pytest -m "not slow"`` leaves them out. The sdist/wheel test skips, saying why, when the build
backend cannot be installed; the quick start skips only when pip reports that the package index
cannot be reached, and must pass otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from conftest import current_target, history, make_build, release_names, snapshot

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "atomic_deploy"
BUILD_PYZ = REPO / "tools" / "build_pyz.py"
PYENV_VERSIONS = [Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions",
                  Path("/root/.pyenv/versions")]

slow = pytest.mark.slow  # registered in pyproject.toml


def _load_build_pyz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_pyz", BUILD_PYZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_pyz = _load_build_pyz()
VERSION: str = build_pyz.package_version()


def newest_python(minor: str) -> Path | None:
    """pyenv's newest final release of Python ``minor`` (e.g. "3.9" -> .../3.9.18/bin/python)."""
    found: list[tuple[int, Path]] = []
    for versions in PYENV_VERSIONS:
        if not versions.is_dir():
            continue
        for d in versions.iterdir():
            m = re.fullmatch(re.escape(minor) + r"\.(\d+)", d.name)
            exe = d / "bin" / "python"
            if m and os.access(exe, os.X_OK):
                found.append((int(m.group(1)), exe))
    return max(found)[1] if found else None


def need_python(minor: str) -> Path:
    exe = newest_python(minor)
    if exe is None:
        where = " or ".join(str(v) for v in dict.fromkeys(PYENV_VERSIONS))
        pytest.skip(f"no Python {minor}.x under {where} (install it: pyenv install {minor})")
    return exe


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would make Python import from elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                        "VIRTUAL_ENV", "ATOMIC_DEPLOY_FAULT", "PIP_REQUIRE_VIRTUALENV")}
    env.update(extra)
    return env


def run(argv: list[str | os.PathLike[str]], *, timeout: float = 120, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env if env is not None else clean_env(), check=False)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def package_files() -> set[str]:
    """The package's files as they should appear in an archive: atomic_deploy/..."""
    return {f"atomic_deploy/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def without_holder(root: Path) -> dict[str, object]:
    """The root on disk, less the lock's bookkeeping (holder.json, rewritten whenever the lock is
    taken, also by a command that then refuses)."""
    holder = os.path.join(".atomic-deploy", "holder.json")
    return {k: v for k, v in snapshot(root).items() if k != holder}


def copy_worktree(dest: Path) -> Path:
    """Copy the repository's working tree (tracked files and untracked, not-ignored ones, as they
    are on disk now, uncommitted changes included) to ``dest``; no .git, venvs or build output."""
    proc = run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if proc.returncode != 0:
        pytest.skip(f"cannot list the repository's files with git: {proc.stderr.strip()}")
    for rel in dict.fromkeys(filter(None, proc.stdout.split("\0"))):
        src = REPO / rel
        if not os.path.lexists(src):  # deleted in the working tree, not yet committed
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    return dest


# ---------------------------------------------------------------------------------------------
# The zipapp
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive, built by this interpreter in isolated mode."""
    out = tmp_path_factory.mktemp("pyz") / "atomic-deploy.pyz"
    proc = run([sys.executable, "-I", BUILD_PYZ, "--output", out])
    assert proc.returncode == 0, output(proc)
    return out


def test_build_script_writes_an_executable_archive_of_the_whole_package(pyz: Path) -> None:
    with pyz.open("rb") as f:
        assert f.readline() == b"#!/usr/bin/env python3\n"
    assert stat.S_IMODE(pyz.stat().st_mode) & 0o111 == 0o111, oct(pyz.stat().st_mode)
    with zipfile.ZipFile(pyz) as z:
        names = {n for n in z.namelist() if not n.endswith("/")}
        main_py = z.read("__main__.py").decode()
        compressed = all(i.compress_type == zipfile.ZIP_DEFLATED
                         for i in z.infolist() if i.file_size)
        licence = z.read("tomli/LICENSE").decode()
    # The package, the entry point, and tomli (config files on Python < 3.11) with its licence.
    tomli = names - package_files() - {"__main__.py"}
    assert package_files() | {"__main__.py"} <= names
    assert {"tomli/__init__.py", "tomli/_parser.py", "tomli/LICENSE"} <= tomli, tomli
    assert all(n.startswith("tomli/") and (n.endswith(".py") or n in ("tomli/LICENSE",
                                                                      "tomli/py.typed"))
               for n in tomli), tomli  # pure Python only: nothing compiled
    assert "MIT License" in licence and "Taneli Hukkinen" in licence
    assert "\nrun()\n" in main_py
    assert compressed
    assert not list(pyz.parent.glob(".*partial*")), "temp file left behind"


def test_build_script_default_output_and_help() -> None:
    proc = run([sys.executable, "-I", BUILD_PYZ, "--help"])
    assert proc.returncode == 0, output(proc)
    assert "--output PATH" in proc.stdout
    assert build_pyz.DEFAULT_OUTPUT == REPO / "dist" / "atomic-deploy.pyz"


_IMPORT_ALL = """\
import importlib, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import atomic_deploy
assert atomic_deploy.__file__.startswith(sys.argv[1]), atomic_deploy.__file__
for m in pkgutil.walk_packages(atomic_deploy.__path__, "atomic_deploy."):
    importlib.import_module(m.name)
    print(m.name)
"""


@pytest.mark.parametrize("minor", ["3.9", "3.13"])
def test_pyz_deploys_status_and_rollback_under_isolated_python(minor: str, tmp_path: Path) -> None:
    python = need_python(minor)
    # The build script itself runs on that stock interpreter, isolated.
    archive = tmp_path / "atomic-deploy.pyz"
    proc = run([python, "-I", BUILD_PYZ, "--output", archive])
    assert proc.returncode == 0, output(proc)
    assert f"Python {minor}." in proc.stdout

    def pyz(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        return run([python, "-I", archive, *args], cwd=tmp_path)

    proc = pyz("--version")
    assert proc.returncode == 0, output(proc)
    assert proc.stdout.startswith(f"atomic-deploy {VERSION} (Python {minor}."), proc.stdout

    # Through the shebang (/usr/bin/env python3), with that interpreter first on PATH.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(python)
    proc = run([archive, "--version"], env=clean_env(PATH=f"{bindir}{os.pathsep}{os.defpath}"))
    assert proc.returncode == 0, output(proc)
    assert f"(Python {minor}." in proc.stdout

    # Every module imports from inside the archive (no data read through __file__, no syntax
    # newer than this Python), including those the CLI only imports when a command needs them.
    proc = run([python, "-I", "-c", _IMPORT_ALL, archive])
    assert proc.returncode == 0, output(proc)
    assert set(proc.stdout.split()) == {f[:-3].replace("/__init__", "").replace("/", ".")
                                        for f in package_files()
                                        if f.endswith(".py") and f != "atomic_deploy/__init__.py"}

    proc = pyz("demo", "--root", tmp_path / "demo")
    assert proc.returncode == 0, output(proc)
    assert "Demo root: " in proc.stdout

    build = make_build(tmp_path / "build", version="v1")
    os.symlink("index.html", build / "home.html")
    root = tmp_path / "www"
    proc = pyz("deploy", build, root, "--message", f"from the pyz under {minor}")
    assert proc.returncode == 0, output(proc)
    [release] = release_names(root)
    assert proc.stdout.startswith(f"deployed {release} "), proc.stdout
    assert current_target(root) == f"releases/{release}"
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert (root / "current" / "assets" / "app.js").read_text() == "console.log('v1');\n"
    assert os.readlink(root / "current" / "home.html") == "index.html"
    [record] = history(root)
    assert (record["op"], record["outcome"], record["release"]) == ("deploy", "ok", release)

    proc = pyz("status", root, "--json")
    assert proc.returncode == 0, output(proc)
    status = json.loads(proc.stdout)
    assert status["ok"] is True and status["command"] == "status"
    assert (status["current"], status["current_state"]) == (release, "ok")
    assert (status["releases"], status["previous"], status["interrupted"]) == (1, None, None)

    # Nothing to roll back to: exit status 2 from main() reaches the shell; nothing changes.
    before = without_holder(root)
    proc = pyz("rollback", root)
    assert proc.returncode == 2, output(proc)
    assert "nothing to roll back to" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert without_holder(root) == before

    # A usage error exits 2 as well (argparse inside main(), not a traceback).
    proc = pyz("deploy", "--keep", "many", build, root)
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in proc.stderr
    assert without_holder(root) == before

    # A config file is read on every Python the archive runs on: with the bundled tomli before
    # 3.11 (nothing else is importable under -I), with tomllib after.
    seen = tmp_path / "seen"
    (root / "atomic-deploy.toml").write_text(
        f'message = "from the config under {minor}"\nkeep = 2\n'
        f'after_switch = [["{python}", "-c", "import os, sys; '
        f'open(sys.argv[1], \'a\').write(os.environ[\'ATOMIC_DEPLOY_RELEASE\'] + \'\\\\n\')", '
        f'"{seen}"]]\n')
    for version in ("v2", "v3"):
        proc = pyz("deploy", make_build(tmp_path / version, version=version), root)
        assert proc.returncode == 0, output(proc)
    deploys = [h for h in history(root) if h["op"] == "deploy"]
    assert deploys[-1]["message"] == f"from the config under {minor}"
    second, third = release_names(root)  # keep = 2 pruned the first
    proc = pyz("rollback", root)
    assert proc.returncode == 0, output(proc)
    assert proc.stderr == "", proc.stderr  # no warning: the file was read
    assert current_target(root) == f"releases/{second}"
    assert seen.read_text().split() == [second, third, second]
    proc = pyz("activate", root, third)
    assert proc.returncode == 0, output(proc)
    proc = pyz("prune", root)  # keep = 2 from the file
    assert proc.returncode == 0, output(proc)
    proc = pyz("doctor", root, "--json")
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["config"]["status"] == "ok", checks["config"]


@pytest.mark.parametrize("minor", ["2.7", "3.8"])
def test_pyz_refuses_a_too_old_python_in_one_line(minor: str, pyz: Path) -> None:
    python = need_python(minor)
    isolate = ["-E", "-s"] if minor.startswith("2.") else ["-I"]  # 2.7 has no -I
    proc = run([python, *isolate, pyz, "--version"])
    assert proc.returncode == 1, output(proc)
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"atomic-deploy: error: needs Python 3.9 or newer; "
                                  f"this is Python {minor}."), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


# ---------------------------------------------------------------------------------------------
# sdist, wheel, and the README's quick start (slow: venvs and the package index)
# ---------------------------------------------------------------------------------------------

_HOOK = """\
import os, sys
from setuptools import build_meta
kind, out = sys.argv[1], sys.argv[2]
name = build_meta.build_sdist(out) if kind == "sdist" else build_meta.build_wheel(out)
print("BUILT " + os.path.join(out, name))
"""

# pip's words when the package index cannot be reached: an environment problem, not ours.
_NO_INDEX = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure "
                       r"in name resolution|Network is unreachable|No matching distribution found "
                       r"for setuptools|Could not find a version that satisfies the requirement "
                       r"setuptools")


def _bin(venv: Path, name: str) -> Path:
    return venv / "bin" / name


def _builder(tmp_path: Path) -> Path:
    """A venv with the build backend pyproject.toml asks for (setuptools>=61) and wheel."""
    venv = tmp_path / "build-venv"
    proc = run([sys.executable, "-m", "venv", venv], timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"cannot create a venv with {sys.executable}: {proc.stderr.strip()[-500:]}")
    proc = run([_bin(venv, "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                "setuptools>=61", "wheel"], timeout=300)
    if proc.returncode != 0:
        pytest.skip("cannot install the build backend (setuptools>=61, wheel) from the package "
                    f"index: {proc.stderr.strip()[-500:]}")
    return _bin(venv, "python")


def _build(python: Path, kind: str, project: Path, out: Path) -> Path:
    proc = run([python, "-c", _HOOK, kind, out], cwd=project, timeout=300)
    built = re.search(r"^BUILT (.+)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or not built:
        pytest.fail(f"building the {kind} failed:\n{output(proc)}")
    return Path(built.group(1))


@slow
def test_sdist_builds_a_wheel_that_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    project = copy_worktree(tmp_path / "repo")
    builder = _builder(tmp_path)
    dist = tmp_path / "dist"
    dist.mkdir()

    sdist = _build(builder, "sdist", project, dist)
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
        if hasattr(tarfile, "data_filter"):  # 3.12+, and 3.9.17+ etc.: no warning, no surprises
            t.extractall(tmp_path / "unpacked", filter="data")
        else:  # pragma: no cover - older patch releases
            t.extractall(tmp_path / "unpacked")
    for needed in ("pyproject.toml", "README.md", "PKG-INFO", "src/atomic_deploy/py.typed"):
        assert needed in members, f"{needed} missing from {sdist.name}"
    assert {f"src/{f}" for f in package_files()} <= members
    [unpacked] = (tmp_path / "unpacked").iterdir()

    # The wheel from the unpacked sdist, as pip does for a user installing from the sdist.
    wheel = _build(builder, "wheel", unpacked, dist)
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert {n for n in names if not n.startswith(info + "/")} == package_files()
    assert re.search(r"^atomic-deploy = atomic_deploy\._fastcli:run$", entry_points, re.MULTILINE)
    assert re.search(r"^Version: " + re.escape(VERSION) + "$", metadata, re.MULTILINE)
    assert "Requires-Python: >=3.9" in metadata
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.MULTILINE)
    runtime = [r for r in requires if "extra ==" not in r]
    # The one runtime dependency: tomli, on Pythons whose standard library has no tomllib.
    assert [r.replace("'", '"').replace(" ", "") for r in runtime] == \
        ['tomli>=1.1;python_version<"3.11"'], f"a runtime dependency crept in: {requires}"

    # A fresh venv; the wheel installed offline (it has no dependencies to fetch).
    venv = tmp_path / "venv"
    proc = run([sys.executable, "-m", "venv", venv], timeout=300)
    assert proc.returncode == 0, output(proc)
    proc = run([_bin(venv, "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                "--no-index", "--no-deps", wheel], timeout=300)
    assert proc.returncode == 0, output(proc)

    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = run([_bin(venv, "python"), "-c",
                "import atomic_deploy, os; print(os.path.dirname(atomic_deploy.__file__))"], cwd=work)
    assert proc.returncode == 0, output(proc)
    installed = Path(proc.stdout.strip())
    assert venv in installed.parents, f"imported from {installed}, not from the venv"
    assert (installed / "py.typed").is_file()

    proc = run([_bin(venv, "atomic-deploy"), "--version"], cwd=work)
    assert proc.returncode == 0, output(proc)
    assert proc.stdout.startswith(f"atomic-deploy {VERSION} ")
    build = make_build(tmp_path / "build", version="v7")
    root = tmp_path / "www"
    proc = run([_bin(venv, "atomic-deploy"), "deploy", build, root], cwd=work)
    assert proc.returncode == 0, output(proc)
    assert (root / "current" / "version.txt").read_text() == "v7\n"
    proc = run([_bin(venv, "python"), "-m", "atomic_deploy", "rollback", root], cwd=work)
    assert proc.returncode == 2, output(proc)


def readme_quick_start() -> str:
    """The body of README.md's first ```sh block."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert m, "README.md has no ```sh block"
    command = m.group(1).strip()
    assert command, "README.md's first ```sh block is empty"
    return command


@slow
def test_readme_quick_start_runs_verbatim(tmp_path: Path) -> None:
    command = readme_quick_start()
    project = copy_worktree(tmp_path / "repo")
    tmp = tmp_path / "tmp"  # where the demo's mkdtemp (and pip) put their files
    tmp.mkdir()
    proc = run(["bash", "-c", command], cwd=project, env=clean_env(TMPDIR=str(tmp)), timeout=600)
    if proc.returncode != 0 and _NO_INDEX.search(proc.stdout + proc.stderr):
        pytest.skip(f"the quick start needs the package index, which cannot be reached:\n"
                    f"{proc.stderr.strip()[-800:]}")
    assert proc.returncode == 0, f"$ {command}\n{output(proc)}"
    m = re.search(r"^Demo root: (\S+)", proc.stdout, re.MULTILINE)
    assert m, f"no 'Demo root:' line:\n{output(proc)}"
    assert (project / ".venv" / "bin" / "atomic-deploy").is_file(), "the .venv is not in the copy"
    demo = Path(m.group(1))
    assert tmp in demo.parents, demo
    assert current_target(demo / "www") is not None

"""Shared helpers: builds, running the real CLI in a subprocess, snapshots of a root on disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

if TYPE_CHECKING:
    from sshlab import Host, SSHLab

SRC = str(Path(__file__).resolve().parent.parent / "src")



Builds = Callable[[str], Path]  # the `builds` fixture: version name -> a build folder

def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("ATOMIC_DEPLOY_FAULT", None)
    if extra:
        env.update(extra)
    return env


def run_cli(*args: str | os.PathLike[str], fault: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60,
            cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m atomic_deploy ARGS` and return the finished process (text output)."""
    extra = dict(env or {})
    if fault:
        extra["ATOMIC_DEPLOY_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "atomic_deploy", *map(str, args)],
        env=cli_env(extra), capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


def start_cli(*args: str | os.PathLike[str], fault: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    extra = dict(env or {})
    if fault:
        extra["ATOMIC_DEPLOY_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "atomic_deploy", *map(str, args)],
        env=cli_env(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP}


def process_running(pid: int) -> bool:
    """Alive and not a zombie (where PID 1 does not reap orphans, a killed one stays a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return True


def wait_for(cond: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    """Poll a condition (never a bare sleep): fail the test if it does not hold in time."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def make_build(path: Path, files: dict[str, str] | None = None, version: str = "v1") -> Path:
    """A small build folder; by default index.html and version.txt naming ``version``."""
    files = files or {"index.html": f"<h1>{version}</h1>\n", "version.txt": f"{version}\n",
                      "assets/app.js": f"console.log('{version}');\n"}
    for rel, text in files.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return path


def snapshot(root: Path) -> dict[str, Any]:
    """Everything on disk under root, without following symlinks: path -> (kind, content)."""
    out: dict[str, Any] = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", None)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", f.read())
    return out


def current_target(root: Path) -> str | None:
    p = root / "current"
    return os.readlink(p) if os.path.islink(p) else None


def release_names(root: Path) -> list[str]:
    rel = root / "releases"
    if not rel.is_dir():
        return []
    return sorted(n for n in os.listdir(rel) if not n.startswith("."))


def hidden_entries(root: Path) -> list[str]:
    """Our own leftovers: hidden entries in releases/ and temp links in the state folder."""
    out = []
    rel = root / "releases"
    if rel.is_dir():
        out += [f"releases/{n}" for n in os.listdir(rel) if n.startswith(".")]
    tmp = root / ".atomic-deploy" / "tmp"
    if tmp.is_dir():
        out += [f"tmp/{n}" for n in os.listdir(tmp)]
    return out


def history(root: Path) -> list[dict[str, Any]]:
    p = root / ".atomic-deploy" / "history.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


@pytest.fixture
def builds(tmp_path: Path) -> Builds:
    """builds('v2') -> a build folder whose files name v2."""
    def make(version: str) -> Path:
        return make_build(tmp_path / "builds" / version, version=version)
    return make


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "www"


# ---------------------------------------------------------------- running as another user

NOBODY = 65534


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A folder uid 65534 can traverse (pytest's tmp_path is under a 0700 folder)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="atomic-deploy-nobody-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _as_nobody(python: str, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    import shutil

    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    return subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         python, "-m", "atomic_deploy", *map(str, args)],
        env=cli_env(), capture_output=True, text=True, timeout=60,
    )


_nobody_python: list[str] = []  # found once per session
_nobody_problems: list[str] = []


def _find_nobody_python() -> str | None:
    """This interpreter if uid 65534 can run it, else the system's python3. A pyenv interpreter
    under /root (mode 0700) cannot load its libpython as nobody; the tests run as nobody are
    about the tool meeting permission errors, which any supported Python shows."""
    if not _nobody_python and not _nobody_problems:
        for python in dict.fromkeys([sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]):
            if not os.path.exists(python):
                continue
            probe = _as_nobody(python, "--version")
            if probe.returncode == 0:
                _nobody_python.append(python)
                break
            _nobody_problems.append(f"{python}: {probe.stderr.strip()[-200:]}")
    return _nobody_python[0] if _nobody_python else None


def run_as_nobody(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """The real CLI as uid 65534 (setpriv), to meet permission errors while running as root."""
    python = _find_nobody_python()
    assert python is not None, _nobody_problems
    return _as_nobody(python, *args)


def require_unprivileged_runs() -> None:
    """Skip, saying why, where the CLI cannot be run as uid 65534."""
    import shutil

    if os.geteuid() != 0:
        pytest.skip("needs root, to run the CLI as uid 65534 with setpriv")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if _find_nobody_python() is None:
        pytest.skip(f"uid {NOBODY} cannot run any Python with PYTHONPATH={SRC} "
                    f"(interpreter or src not readable by nobody): {'; '.join(_nobody_problems)}")


# ---------------------------------------------------------------- a guard against deleting outside ROOT

class DeleteGuard:
    """Refuses, and records, any unlink/rmdir of an entry outside ``allowed`` (while ``on`` and
    once ``allowed`` is set).

    The entry is resolved as unlink and rmdir see it (its folder resolved, its own name not), so
    a product bug that followed a link out of ROOT, even to ``/``, fails the test instead of
    deleting anything.
    """

    def __init__(self) -> None:
        self.allowed: list[str] = []
        self.violations: list[str] = []
        self.deleted: list[str] = []
        self.on = True

    def check(self, path: Any, dir_fd: int | None) -> None:
        if not self.on or not self.allowed:
            return
        p = os.fsdecode(path)
        if dir_fd is not None:
            p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
        p = os.path.abspath(p)
        t = os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
        if not any(t.startswith(os.path.realpath(a) + os.sep) for a in self.allowed):
            self.violations.append(t)
            raise PermissionError(errno.EPERM, "test guard: refusing to delete outside ROOT", t)
        self.deleted.append(t)


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[DeleteGuard]:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("not Linux: the delete guard resolves dir_fd through /proc/self/fd")
    g = DeleteGuard()
    for name in ("unlink", "remove", "rmdir"):
        real = getattr(os, name)

        def wrapper(path: Any, *, dir_fd: int | None = None, _real: Any = real) -> None:
            g.check(path, dir_fd)
            _real(path, dir_fd=dir_fd)

        monkeypatch.setattr(os, name, wrapper)
    yield g


# ---------------------------------------------------------------- shared by many test files

LINK_MTIME_KEPT = os.utime in os.supports_follow_symlinks


@pytest.fixture(autouse=True)
def _no_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process operations read the fault seam from the environment: keep it clear, and let
    every test start with no fault already fired."""
    from atomic_deploy import _signals

    monkeypatch.delenv(_signals.FAULT_ENV, raising=False)
    monkeypatch.setattr(_signals, "_fired", set())


@pytest.fixture(autouse=True, scope="session")
def _user_cache_here(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What deploys keep in the user's cache (the source digest cache) goes to a folder of the
    test run, never the user's own: in-process, and through the CLI, which copies this
    environment."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The process printed exactly one line on stderr, an atomic-deploy error; return it."""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r} (exit {r.returncode})"
    assert lines[0].startswith("atomic-deploy: error:"), lines[0]
    return lines[0]


def set_distinct_mtimes(top: Path) -> None:
    """A different nanosecond mtime on every entry under ``top`` (and ``top``), set deepest
    first, since creating an entry changes its folder's mtime."""
    t = 1_500_000_000_123_456_789
    paths = sorted((os.path.join(d, n) for d, ds, fs in os.walk(top) for n in ds + fs),
                   key=lambda p: -p.count(os.sep))
    for i, p in enumerate([*paths, str(top)]):
        ns = t + i * 1_000_003_001
        if os.path.islink(p):
            if LINK_MTIME_KEPT:
                os.utime(p, ns=(ns, ns), follow_symlinks=False)
        else:
            os.utime(p, ns=(ns, ns))


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; any still running at the end is killed (by its own pid)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


# ---------------------------------------------------------------- hypothesis profiles

try:
    from hypothesis import HealthCheck
    from hypothesis import settings as _hsettings
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass
else:
    # `pytest tests/test_model.py --hypothesis-profile=long`: thousands of model-test steps.
    _hsettings.register_profile(
        "long", max_examples=200, stateful_step_count=30, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    # What .ci/run runs after the suites: about 2,000 commands, 5 minutes here. (Not named
    # "ci": hypothesis loads its own profile of that name by itself when CI is set.)
    _hsettings.register_profile(
        "thorough", max_examples=75, stateful_step_count=30, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ---------------------------------------------------------------- under CI, guarantees are never skipped

# With CI set (CI=true, as .ci/run and most CI services set it), a skipped test in a file that
# the README's "Guarantees" table names as proof fails the run: a green CI run means every
# guarantee was tested. The only skips allowed there are for a platform this one is not: their
# reasons start with one of these prefixes, and the prefix must be true here
# (docs/reliability.md, "What a green CI run means").
CI_ALLOWED_SKIP_PREFIXES = {
    # the test reads /proc or calls a Linux-only API, and this is not Linux
    "not Linux:": not sys.platform.startswith("linux"),
    # the test exercises macOS-only behaviour (F_FULLFSYNC, clonefile), and this is not macOS
    "not macOS:": sys.platform != "darwin",
    # the test needs a tool that has dropped this Python (ansible-core 2.17+: 3.10 and newer)
    "Python 3.9:": sys.version_info[:2] == (3, 9),
}
_README = Path(__file__).resolve().parent.parent / "README.md"


def guaranteed_test_files() -> set[str]:
    """Test files (tests/test_x.py) named in the README's Guarantees table."""
    import re

    text = _README.read_text(encoding="utf-8")
    start = text.index("## Guarantees")
    end = text.index("\n## ", start + 1)
    return set(re.findall(r"`(tests/test_\w+\.py)", text[start:end]))


def _ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


_blocked_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.skipped or not _ci() or hasattr(report, "wasxfail"):
        return
    path = report.nodeid.split("::", 1)[0]
    if path not in guaranteed_test_files():
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
    if not any(reason.startswith(p) and true for p, true in CI_ALLOWED_SKIP_PREFIXES.items()):
        _blocked_skips.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _blocked_skips:
        terminalreporter.section("guarantee tests skipped under CI", sep="=", red=True, bold=True)
        for line in _blocked_skips:
            terminalreporter.line(line)
        terminalreporter.line(
            "these files back a README guarantee: install what they need, or, for a platform "
            "this is not, start the skip reason with one of " + ", ".join(CI_ALLOWED_SKIP_PREFIXES)
            + " (and be right about it: the prefix is checked against this platform)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _blocked_skips and exitstatus == 0:
        session.exitstatus = 1


# ---------------------------------------------------------------- OpenSSH test hosts (tests/sshlab.py)

@pytest.fixture
def ssh_lab() -> Iterator[SSHLab]:
    """A fresh SSHLab (tests/sshlab.py) with no hosts yet; everything is torn down afterwards,
    also when the test fails. Skips where OpenSSH's server is not installed."""
    import sshlab

    problem = sshlab.unavailable()
    if problem:
        pytest.skip(problem)
    lab = sshlab.SSHLab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab(ssh_lab: SSHLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SSHLab:
    """ssh_lab, with this test's own tool cache and the lab's ssh command in the environment
    the CLI gets (tests/fleetlab.py: env, cli)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ATOMIC_DEPLOY_SSH", ssh_lab.ssh_command)
    return ssh_lab


@pytest.fixture
def hosts(lab: SSHLab) -> list[Host]:
    """Three test hosts, web1 to web3."""
    return [lab.add_host(f"web{i}") for i in (1, 2, 3)]

"""A root shared with Capistrano: its rollback orders releases by folder mtime (`ls -xt`), so
each release folder gets the time it was made, never the build folder's (1980 in a
reproducible build). Then the real `cap` (Debian's capistrano package) on the same root, run
with SSHKit's local backend (no ssh): its rollback after our deploys, ours after its deploy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import Builds, current_target, make_build, release_names, run_cli, wait_for

Y1980 = 315_532_800  # 1980-01-01 00:00:00 UTC, what reproducible builds pin mtimes to


def _pinned_build(path: Path, version: str) -> Path:
    """A build whose every mtime, its own folder's included, is 1980."""
    make_build(path, version=version)
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (Y1980, Y1980))
    os.utime(path, (Y1980, Y1980))
    return path


def _deploy(source: Path | str, root: Path, *extra: str) -> str:
    r = run_cli("deploy", source, root, "--json", *extra)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["release"])


def _made_now(path: Path, started: float) -> bool:
    return started - 1 <= os.stat(path).st_mtime <= time.time() + 1


@pytest.mark.parametrize("source", ["folder", "tarball", "shared-and-check"])
def test_release_folder_gets_the_time_it_was_made(tmp_path: Path, root: Path,
                                                  source: str) -> None:
    build = _pinned_build(tmp_path / "build", "v1")
    extra: list[str] = []
    src: Path = build
    if source == "tarball":
        src = tmp_path / "build.tar.gz"
        with tarfile.open(src, "w:gz") as tar:
            tar.add(build, arcname=".")  # "./" itself is an entry, with its 1980 mtime
        with tarfile.open(src) as tar:
            assert tar.getmember(".").mtime == Y1980
    elif source == "shared-and-check":
        extra = ["--shared-dir", "storage", "--check", "test -f index.html"]
    started = time.time()
    rid = _deploy(src, root, *extra)
    top = root / "releases" / rid
    assert _made_now(top, started), os.stat(top).st_mtime
    # Files and folders inside keep theirs, as cp -a does.
    assert os.stat(top / "index.html").st_mtime == Y1980
    assert os.stat(top / "assets").st_mtime == Y1980
    assert os.stat(top / "assets" / "app.js").st_mtime == Y1980
    # The build folder itself is not touched, and the release matches its manifest.
    assert os.stat(build).st_mtime == Y1980
    r = run_cli("verify", root, rid)
    assert r.returncode == 0, r.stdout + r.stderr


def _ls_xt(root: Path) -> list[str]:
    """The order Capistrano's deploy:rollback reads releases in: newest mtime first."""
    out = subprocess.run(["ls", "-xt", str(root / "releases")], capture_output=True, text=True,
                         check=True, env={**os.environ, "LC_ALL": "C", "COLUMNS": "1000"})
    return out.stdout.split()


def test_ls_xt_lists_pinned_builds_in_deploy_order(tmp_path: Path, root: Path,
                                                   builds: Builds) -> None:
    """Without the `cap` binary: the ordering its rollback relies on. An older build folder
    deployed last must still sort first."""
    older = builds("recent")  # mtime: now, before the pinned ones below are deployed
    started = time.time()
    ids = [_deploy(_pinned_build(tmp_path / f"b{i}", f"v{i}"), root) for i in range(3)]
    ids.append(_deploy(older, root))
    mtimes = [os.stat(root / "releases" / i).st_mtime_ns for i in ids]
    assert mtimes == sorted(mtimes) and _made_now(root / "releases" / ids[0], started)
    assert _ls_xt(root) == ids[::-1]


# ------------------------------------------------------------------------------ real Capistrano

CAP = shutil.which("cap")
needs_cap = pytest.mark.skipif(CAP is None, reason="Capistrano (`cap`) is not installed "
                               "(Debian: apt-get install capistrano)")

CAPFILE = """\
require "capistrano/setup"
require "capistrano/deploy"
require "capistrano/scm/git"
install_plugin Capistrano::SCM::Git
"""

DEPLOY_RB = """\
set :application, "app"
set :repo_url, "file://{repo}"
set :branch, "main"
set :deploy_to, "{root}"
set :keep_releases, 10
# Run every command on this machine (SSHKit's local backend): no ssh, no sshd.
set :sshkit_backend, SSHKit::Backend::Local
set :pty, false
set :format, :dot
"""


class Cap:
    """A Capistrano project deploying a local git repository to ``root``."""

    def __init__(self, tmp_path: Path, root: Path) -> None:
        self.root = root
        self.proj = tmp_path / "cap"
        self.work = tmp_path / "cap-src"
        repo = tmp_path / "repo.git"
        (self.proj / "config" / "deploy").mkdir(parents=True)
        (self.proj / "Capfile").write_text(CAPFILE)
        (self.proj / "config" / "deploy.rb").write_text(DEPLOY_RB.format(repo=repo, root=root))
        (self.proj / "config" / "deploy" / "production.rb").write_text(
            'server "localhost", roles: %w{app web}\n')
        make_build(self.work, version="cap")
        self.git("init", "-q", "-b", "main")
        self.git("add", ".")
        self.git("commit", "-q", "-m", "cap v1")
        subprocess.run(["git", "clone", "-q", "--bare", str(self.work), str(repo)], check=True)

    def git(self, *args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
                       cwd=self.work, check=True, capture_output=True)

    def run(self, task: str) -> subprocess.CompletedProcess[str]:
        assert CAP is not None
        env = {**os.environ, "HOME": str(self.proj)}
        return subprocess.run([CAP, "production", task], cwd=self.proj, env=env,
                              capture_output=True, text=True, timeout=120)

    def deploy(self) -> str:
        before = set(release_names(self.root))
        r = self.run("deploy")
        assert r.returncode == 0, r.stdout + r.stderr
        (new,) = set(release_names(self.root)) - before
        return new


def _current_release(root: Path) -> str:
    target = current_target(root)
    assert target is not None
    return os.path.basename(target)


def _past(release: str) -> bool:
    """The clock's UTC second is past ``release`` (ids can run ahead of it): Capistrano names
    its release after the clock and would otherwise write into ours."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) > release


@needs_cap
def test_cap_rollback_after_our_deploys_goes_to_our_previous_release(tmp_path: Path,
                                                                     root: Path) -> None:
    cap = Cap(tmp_path, root)
    a = cap.deploy()
    b = _deploy(_pinned_build(tmp_path / "b", "b"), root)
    c = _deploy(_pinned_build(tmp_path / "c", "c"), root)
    assert release_names(root) == [a, b, c] and _current_release(root) == c

    r = cap.run("deploy:rollback")
    assert r.returncode == 0, r.stdout + r.stderr
    # It went back to our previous release and removed (archived) the one it left: c.
    assert _current_release(root) == b
    assert release_names(root) == [a, b]
    assert (root / f"rolled-back-release-{c}.tar.gz").is_file()
    assert (root / "current" / "version.txt").read_text() == "b\n"

    r = cap.run("deploy:rollback")  # once more: to its own release, removing ours
    assert r.returncode == 0, r.stdout + r.stderr
    assert _current_release(root) == a and release_names(root) == [a]
    assert (root / "current" / "version.txt").read_text() == "cap\n"

    # And we carry on from what it left.
    r = run_cli("status", root, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["current"] == a
    d = _deploy(_pinned_build(tmp_path / "d", "d"), root)
    assert release_names(root) == [a, d] and current_target(root) == f"releases/{d}"


@needs_cap
def test_our_commands_after_a_cap_deploy(tmp_path: Path, root: Path) -> None:
    cap = Cap(tmp_path, root)
    a = cap.deploy()
    b = _deploy(_pinned_build(tmp_path / "b", "b"), root)
    wait_for(lambda: _past(b), what="the clock to pass our release id")
    c = cap.deploy()
    assert release_names(root) == [a, b, c]
    assert os.readlink(root / "current") == str(root / "releases" / c)  # Capistrano's: absolute

    r = run_cli("status", root, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["current"] == c and st["releases"] == 3
    r = run_cli("list", root, "--json")
    assert r.returncode == 0, r.stderr
    assert [x["id"] for x in json.loads(r.stdout)["releases"]] == [a, b, c]

    r = run_cli("rollback", root, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["release"] == b
    assert current_target(root) == f"releases/{b}"
    assert (root / "current" / "version.txt").read_text() == "b\n"

    # The next deploy counts Capistrano's releases among the 5 it keeps, and makes current
    # relative again.
    d = _deploy(_pinned_build(tmp_path / "d", "d"), root)
    assert release_names(root) == [a, b, c, d] and current_target(root) == f"releases/{d}"

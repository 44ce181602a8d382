"""The Ansible collection (ansible_collections/atomic_deploy/core, docs/ansible.md), run by the
real ansible-playbook against sshd test hosts, and the CLI's --if-changed that makes its
``changed`` truthful."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import current_target, history, make_build, release_names, run_cli, snapshot
from sshlab import SSHLab

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "ansible.md"
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- --if-changed (no Ansible)

def _disk(root: Path) -> dict[str, object]:
    """The root's tree, less the lock holder's note (every command that locks rewrites it)."""
    return {k: v for k, v in snapshot(root).items() if k != ".atomic-deploy/holder.json"}


def test_if_changed_same_build_does_nothing(tmp_path: Path) -> None:
    build = make_build(tmp_path / "b", version="v1")
    root = tmp_path / "root"
    first = json.loads(run_cli("deploy", build, root, "--if-changed", "--json").stdout)
    assert first["unchanged"] is False and first["activated"] is True
    records = len(history(root))
    before = _disk(root)
    for cmd in ("deploy", "prepare"):
        r = run_cli(cmd, build, root, "--if-changed", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["unchanged"] is True and out["release"] == first["release"]
        assert out["manifest"] == first["manifest"]
    assert _disk(root) == before  # no release, no history record, no leftovers
    assert release_names(root) == [first["release"]] and len(history(root)) == records
    r = run_cli("deploy", build, root, "--if-changed")
    assert r.stdout.strip() == f"unchanged: {first['release']} is already this build"


def test_if_changed_sees_a_change_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    build = make_build(tmp_path / "b", {"a.txt": "one"})
    root = tmp_path / "root"
    first = json.loads(run_cli("deploy", build, root, "--if-changed", "--json").stdout)
    f = build / "a.txt"
    st = f.stat()
    f.write_text("two")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only the bytes differ
    r = run_cli("deploy", build, root, "--if-changed", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["unchanged"] is False and out["release"] != first["release"]
    assert current_target(root) == f"releases/{out['release']}"
    assert (root / "current" / "a.txt").read_text() == "two"


def test_if_changed_after_a_deploy_without_digests_deploys(tmp_path: Path) -> None:
    """The current release's manifest has no content digests: equal is not known, so deploy."""
    build = make_build(tmp_path / "b", version="v1")
    root = tmp_path / "root"
    run_cli("deploy", build, root)
    out = json.loads(run_cli("deploy", build, root, "--if-changed", "--json").stdout)
    assert out["unchanged"] is False and len(release_names(root)) == 2


# ---------------------------------------------------------------- the collection, for real

def _ansible_missing() -> str | None:
    if sys.version_info < (3, 10):
        return ("Python 3.9: the collection needs ansible-core 2.17+ (rescue on every host "
                "under any_errors_fatal), whose controller needs Python 3.10+")
    for tool in ("ansible-playbook", "ansible-galaxy"):
        if not (BIN / tool).exists():
            return f"{tool} is not installed beside {sys.executable} (pip install -e '.[test]')"
    return None


def _playbook() -> str:
    """The two-phase playbook of docs/ansible.md, as the page shows it."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "docs/ansible.md should show one playbook"
    return blocks[0]


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection built by tools/build_collection.py and installed: its collections path."""
    problem = _ansible_missing()
    if problem:
        pytest.skip(problem)
    tmp = tmp_path_factory.mktemp("collection")
    r = subprocess.run([sys.executable, str(REPO / "tools" / "build_collection.py"),
                        "--output-path", str(tmp / "dist")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    tarball = r.stdout.strip()
    path = tmp / "collections"
    r = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(path),
                        tarball], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list((REPO / "ansible_collections/atomic_deploy/core/files").glob("*.pyz"))
    return path


class Fleet:
    def __init__(self, lab: SSHLab, collections: Path, work: Path) -> None:
        self.lab = lab
        self.hosts = [lab.add_host(f"web{i}") for i in (1, 2, 3)]
        self.work = work
        self.playbook = work / "deploy.yml"
        self.playbook.write_text(_playbook())
        self.env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(collections),
                    "ANSIBLE_CONFIG": str(work / "none.cfg"), "ANSIBLE_NOCOLOR": "1",
                    "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCAL_TEMP": str(work / "local-tmp"),
                    "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "cp"),
                    "ANSIBLE_RETRY_FILES_ENABLED": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else \
            shutil.which("python3") or sys.executable
        self.root = lab.hosts["web1"].remote_path("/srv/app")

    def inventory(self, health: dict[str, str]) -> Path:
        lines = ["[web]"]
        for h in self.hosts:
            common = (f"-o UserKnownHostsFile={self.lab.known_hosts} -o HostKeyAlias={h.alias} "
                      "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes")
            build = h.remote_path("/srv/build")
            log = h.remote_path("/srv/switches")
            lines.append(
                f"{h.alias} ansible_host=127.0.0.1 ansible_port={h.port} "
                f"ansible_user={self.lab.user} ansible_ssh_private_key_file={self.lab.client_key} "
                f"ansible_ssh_common_args='{common}' ansible_python_interpreter={self.python} "
                f"build={build} app_root={h.remote_path('/srv/app')} "
                f"health_check='{health.get(h.alias, 'true')}' "
                f"""after_switch='["echo $ATOMIC_DEPLOY_RELEASE >> {log}"]'""")
        path = self.work / "hosts"
        path.write_text("\n".join(lines) + "\n")
        return path

    def build(self, version: str) -> None:
        """The same build (mtimes too) on every host."""
        one = make_build(self.work / f"build-{version}", version=version)
        for h in self.hosts:
            b = h.path("/srv/build")
            if b.exists():
                shutil.rmtree(b)
            shutil.copytree(one, b)

    def play(self, *args: str, health: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(self.inventory(health or {})),
                            str(self.playbook), *args], capture_output=True, text=True,
                           cwd=self.work, env=self.env, timeout=600)
        return r

    def recap(self, r: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
        out = {}
        for m in re.finditer(r"^(web\d)\s*:\s*(.*)$", r.stdout, re.M):
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        assert set(out) == {"web1", "web2", "web3"}, r.stdout + r.stderr
        return out

    def current(self) -> dict[str, str | None]:
        return {h.alias: current_target(h.path("/srv/app")) for h in self.hosts}

    def switches(self, alias: str) -> list[str]:
        return self.lab.hosts[alias].path("/srv/switches").read_text().split()


def test_two_phase_playbook(ssh_lab: SSHLab, collection: Path, tmp_path: Path) -> None:
    fleet = Fleet(ssh_lab, collection, tmp_path)

    # A first deploy: every host prepared, then activated; the tool installed in each root.
    fleet.build("v1")
    r = fleet.play()
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(v["changed"] == 2 and v["failed"] == 0 for v in fleet.recap(r).values())
    cur = fleet.current()
    assert None not in cur.values()
    r1 = {alias: str(target).split("/")[1] for alias, target in cur.items()}  # each host's own id
    manifests = {json.loads(run_cli("status", h.path("/srv/app"), "--json").stdout)["manifests"][
        r1[h.alias]] for h in fleet.hosts}
    assert len(manifests) == 1  # the same build on every host
    tools = list(fleet.hosts[2].path("/srv/app/.atomic-deploy/bin").glob("atomic-deploy-*.pyz"))
    assert len(tools) == 1
    name = tools[0].name
    assert hashlib.sha256(tools[0].read_bytes()).hexdigest()[:16] == name.rsplit("-", 1)[1][:16]

    # A tool that is not the one it should be is never run: replaced, then used.
    tools[0].write_bytes(b"#!/usr/bin/env python3\nraise SystemExit(9)\n")

    # The same build again: nothing changes anywhere.
    before = {h.alias: _disk(h.path("/srv/app")) for h in fleet.hosts[:2]}
    r = fleet.play()
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(v["changed"] == 0 for v in fleet.recap(r).values()), r.stdout
    assert {h.alias: _disk(h.path("/srv/app")) for h in fleet.hosts[:2]} == before
    assert release_names(fleet.hosts[2].path("/srv/app")) == [r1["web3"]]
    assert hashlib.sha256(tools[0].read_bytes()).hexdigest()[:16] == name.rsplit("-", 1)[1][:16]

    # Check mode with a new build: nothing changes on any host.
    fleet.build("v2")
    before = {h.alias: _disk(h.path("/srv/app")) for h in fleet.hosts}
    r = fleet.play("--check", "--diff")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {h.alias: _disk(h.path("/srv/app")) for h in fleet.hosts} == before
    assert all(v["changed"] == 1 for v in fleet.recap(r).values()), r.stdout

    # The new build, whose health check fails on web2: every host ends on the old release.
    r = fleet.play("--diff", health={"web2": "false"})
    assert r.returncode != 0, r.stdout
    recap = fleet.recap(r)
    assert recap["web2"]["rescued"] == 1 and recap["web2"]["failed"] == 1, r.stdout
    assert "health-check command exit status 1" in r.stdout and '"exit_code": 4' in r.stdout, r.stdout
    assert fleet.current() == cur
    for h in fleet.hosts:
        root = h.path("/srv/app")
        names = release_names(root)
        assert len(names) == 2 and names[0] == r1[h.alias], names
        r2 = names[1]
        listing = json.loads(run_cli("list", root, "--json").stdout)["releases"]
        assert {x["id"]: x["state"] for x in listing} == {r1[h.alias]: "current", r2: "bad"}
        log = fleet.switches(h.alias)
        assert log[-2:] == [r2, r1[h.alias]], (h.alias, log)  # it had switched, and was switched back
    assert f"-current: {r1[h.alias]}\n+current: {r2}" in r.stdout  # --diff: the activation


def test_a_url_build_fetched_by_the_host_and_checked(ssh_lab: SSHLab, collection: Path,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``src`` a URL with ``sha256``: the host fetches and checks it; the same URL again is
    ``changed: false``; a wrong sha256 fails the task with the tool's line, nothing deployed."""
    import threading

    from test_url_source import _Server, sha, tarball

    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    srv = _Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        data = tarball()
        srv.routes["/app.tar.gz"] = lambda h: h.body(data)
        fleet = Fleet(ssh_lab, collection, tmp_path)
        fleet.hosts = fleet.hosts[:1]
        web1 = fleet.hosts[0]
        play = tmp_path / "url.yml"

        def run(digest: str) -> subprocess.CompletedProcess[str]:
            play.write_text(
                "- hosts: web\n  gather_facts: false\n  tasks:\n"
                "    - atomic_deploy.core.atomic_deploy:\n"
                "        root: '{{ app_root }}'\n"
                f"        src: '{srv.url}/app.tar.gz'\n"
                f"        sha256: '{digest}'\n")
            return subprocess.run([str(BIN / "ansible-playbook"), "-i",
                                   str(fleet.inventory({})), "--limit", "web1", str(play)],
                                  capture_output=True, text=True, cwd=tmp_path, env=fleet.env,
                                  timeout=600)

        r = run("0" * 64)
        assert r.returncode != 0 and "sha256" in r.stdout, r.stdout + r.stderr
        assert not release_names(web1.path("/srv/app"))
        r = run(sha(data))
        assert r.returncode == 0, r.stdout + r.stderr
        assert (web1.path("/srv/app/current") / "version.txt").read_text() == "v1\n"
        assert re.search(r"web1\s*:.*changed=1", r.stdout), r.stdout
        r = run(sha(data))
        assert r.returncode == 0 and re.search(r"web1\s*:.*changed=0", r.stdout), r.stdout
        assert len(release_names(web1.path("/srv/app"))) == 1
    finally:
        srv.shutdown()
        srv.server_close()

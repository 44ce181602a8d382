"""Self-sourced sessions: fleets whose hosts fetch the build themselves (``--pull``, against a
loopback HTTP server the test starts) and local roots mixed into a fleet (their session a local
subprocess that copies the build itself). Real sshd test hosts (tests/sshlab.py); every test
checks every root's disk from outside."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atomic_deploy._signals import FLEET_STEPS
from conftest import make_build, run_cli, wait_for
from sshlab import Host, SSHLab
from test_url_source import SECRET, _Handler, _Server, sha, tarball

APP = "/srv/app"


@pytest.fixture
def lab(ssh_lab: SSHLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SSHLab:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ATOMIC_DEPLOY_SSH", ssh_lab.ssh_command)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return ssh_lab


@pytest.fixture
def hosts(lab: SSHLab) -> list[Host]:
    return [lab.add_host(f"web{i}") for i in (1, 2, 3)]


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def cli(*args: Any, **kw: Any) -> Any:
    kw.setdefault("timeout", 180)
    kw.setdefault("env", {k: os.environ[k] for k in ("XDG_CACHE_HOME", "ATOMIC_DEPLOY_SSH")})
    return run_cli(*args, **kw)


def current(root: Path) -> str | None:
    link = root / "current"
    return os.readlink(link) if os.path.islink(link) else None


def hidden(root: Path) -> list[str]:
    rel = root / "releases"
    return [n for n in os.listdir(rel) if n.startswith(".")] if rel.is_dir() else []


def releases(root: Path) -> list[str]:
    rel = root / "releases"
    return sorted(n for n in os.listdir(rel) if not n.startswith(".")) if rel.is_dir() else []


def idle(h: Host) -> bool:
    if (h.path(APP) / ".atomic-deploy" / "journal.json").exists():
        return False
    for pid in h.processes():
        try:
            if b"atomic-deploy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return False
        except OSError:
            continue
    return True


def no_secret_under(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                assert b"s3cr3t" not in p.read_bytes(), p


def test_pull_fleet_each_host_fetches_the_url_itself(hosts: list[Host], server: _Server,
                                                     tmp_path: Path) -> None:
    local = tmp_path / "local-app"  # a local root in the fleet fetches it itself too
    roots = [h.path(APP) for h in hosts] + [local]
    v1 = tarball({"version.txt": "v1\n", "big.bin": os.urandom(64_000).hex()})
    data = tarball({"version.txt": "v2\n", "big.bin": os.urandom(64_000).hex()})

    def private(body: bytes) -> Any:
        def answer(h: _Handler) -> None:
            if h.headers.get("Authorization") != SECRET:
                h.send_error(401)
            else:
                h.body(body)
        return answer

    server.routes["/app-1.tar.gz"] = private(v1)
    server.routes["/app-2.tar.gz"] = private(data)
    r = cli("deploy", server.url + "/app-1.tar.gz", "--pull", *[h.dest(APP) for h in hosts],
            local, "--sha256", sha(v1), "--header", f"Authorization: {SECRET}", "--json")
    assert r.returncode == 0, r.stderr
    server.requests.clear()
    r = cli("deploy", server.url + "/app-2.tar.gz", "--pull", *[h.dest(APP) for h in hosts],
            local, "--sha256", sha(data), "--header", f"Authorization: {SECRET}", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    rel = d["release"]
    assert d["outcome"] == "deployed"
    for root in roots:
        assert current(root) == f"releases/{rel}"
        assert (root / "current" / "version.txt").read_text() == "v2\n"
        assert not hidden(root)
        no_secret_under(root)
    # One fetch per root, each with the header: the deploying machine sent no build.
    assert [p for p, _ in server.requests] == ["/app-2.tar.gz"] * 4
    assert all(h.get("Authorization") == SECRET for _, h in server.requests)
    assert "s3cr3t" not in r.stdout + r.stderr


def test_pull_fleet_one_host_gets_a_mismatch_nobody_switches(hosts: list[Host],
                                                             server: _Server,
                                                             tmp_path: Path) -> None:
    roots = [h.path(APP) for h in hosts]
    r = cli("deploy", make_build(tmp_path / "v1"), *[h.dest(APP) for h in hosts])
    assert r.returncode == 0, r.stderr
    before = {root: (current(root), releases(root)) for root in roots}
    data = tarball({"version.txt": "v2\n"})
    served = [0]
    lock = threading.Lock()

    def one_is_tampered(h: _Handler) -> None:  # the third request gets other bytes
        with lock:
            served[0] += 1
            n = served[0]
        h.body(data if n < 3 else tarball({"version.txt": "evil\n"}))

    server.routes["/app.tar.gz"] = one_is_tampered
    r = cli("deploy", server.url + "/app.tar.gz", "--pull", *[h.dest(APP) for h in hosts],
            "--sha256", sha(data), "--json")
    assert r.returncode == 2, r.stderr  # as for one root: the server's bytes are wrong
    d = json.loads(r.stdout)
    assert d["outcome"] == "nothing switched" and d["exit_code"] == 2
    assert "does not match its sha256" in d["error"]
    assert served[0] == 3
    for root in roots:
        assert (current(root), releases(root)) == before[root]  # nobody switched
        assert (root / "current" / "version.txt").read_text() == "v1\n"
        assert not hidden(root)


def test_pull_needs_a_url(hosts: list[Host], tmp_path: Path) -> None:
    r = cli("deploy", make_build(tmp_path / "b"), "--pull", hosts[0].dest(APP),
            hosts[1].dest(APP))
    assert r.returncode == 2 and "--pull needs a URL" in r.stderr
    r = cli("deploy", "https://example.invalid/a.tar.gz", "--pull", hosts[0].dest(APP))
    assert r.returncode == 2 and "needs --sha256" in r.stderr
    assert not (hosts[0].path(APP) / "releases").exists()


def test_pull_to_one_host(hosts: list[Host], server: _Server) -> None:
    data = tarball()
    url = server.serve("/app.tar.gz", data)
    r = cli("deploy", url, "--pull", hosts[0].dest(APP), "--sha256", sha(data))
    assert r.returncode == 0, r.stderr
    assert (hosts[0].path(APP) / "current" / "version.txt").read_text() == "v1\n"
    assert len(server.requests) == 1


def test_local_roots_mixed_into_a_fleet(hosts: list[Host], tmp_path: Path) -> None:
    local = tmp_path / "local" / "app"
    local.parent.mkdir()
    remote = [h.dest(APP) for h in hosts[:2]]
    roots = [h.path(APP) for h in hosts[:2]] + [local]
    r = cli("deploy", make_build(tmp_path / "v1", version="v1"), *remote, local, "--json")
    assert r.returncode == 0, r.stderr
    v1 = json.loads(r.stdout)["release"]
    told = 'echo $ATOMIC_DEPLOY_RELEASE >> "$ATOMIC_DEPLOY_ROOT/../told"'
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *remote, local, "--json",
            "--after-switch", "true")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    v2 = d["release"]
    assert {h["host"] for h in d["hosts"]} == {*remote, str(local)}
    for root in roots:
        assert current(root) == f"releases/{v2}"
        assert (root / "current" / "version.txt").read_text() == "v2\n"
        assert not hidden(root)

    r = cli("status", *remote, local, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["mixed"] is False and {h["current"] for h in st["hosts"]} == {v2}

    r = cli("rollback", *remote, local, "--after-switch", told)
    assert r.returncode == 0, r.stderr
    for root in roots:
        assert current(root) == f"releases/{v1}"
    # each root's own hook ran where it is (the local root's here), told the restored release
    for root in roots:
        assert (root.parent / "told").read_text().split() == [v1]

    # A local root on another release: status says mixed, naming it
    r = cli("deploy", make_build(tmp_path / "v3", version="v3"), local)
    assert r.returncode == 0, r.stderr
    r = cli("status", *remote, local)
    assert r.returncode == 1 and r.stdout.startswith("mixed: ") and str(local) in r.stdout


def test_a_failed_check_on_the_local_root_switches_nobody(hosts: list[Host],
                                                          tmp_path: Path) -> None:
    local = tmp_path / "app"
    remote = [h.dest(APP) for h in hosts[:2]]
    r = cli("deploy", make_build(tmp_path / "v1"), *remote, local)
    assert r.returncode == 0, r.stderr
    flag = tmp_path / "broken"
    flag.write_text("")
    # the check fails only where the flag file exists: on this machine, not on the hosts
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *remote, local,
            "--check", f"test ! -e {flag}", "--json")
    assert r.returncode == 4, r.stderr
    d = json.loads(r.stdout)
    assert d["outcome"] == "nothing switched" and str(local) in d["error"]
    for root in [h.path(APP) for h in hosts[:2]] + [local]:
        assert (root / "current" / "version.txt").read_text() == "v1\n"
        assert len(releases(root)) == 1 and not hidden(root)


def test_a_url_pushed_to_a_remote_root_is_fetched_here(hosts: list[Host],
                                                       server: _Server) -> None:
    data = tarball()
    url = server.serve("/app.tar.gz", data)
    r = cli("deploy", url, hosts[0].dest(APP), "--sha256", sha(data))
    assert r.returncode == 0, r.stderr
    assert (hosts[0].path(APP) / "current" / "version.txt").read_text() == "v1\n"
    r = cli("deploy", url, hosts[0].dest(APP), "--sha256", "d" * 64)
    assert r.returncode == 2 and "does not match" in r.stderr
    assert len(releases(hosts[0].path(APP))) == 1


@pytest.mark.parametrize("step", FLEET_STEPS)
def test_mixed_fleet_deploying_process_killed_in_each_phase(hosts: list[Host], tmp_path: Path,
                                                            step: str) -> None:
    """The local root's session outlives the killed process only to undo its own part, as a
    host's does: its input ends."""
    local = tmp_path / "app"
    remote = [hosts[0].dest(APP)]
    roots = [hosts[0].path(APP), local]
    r = cli("deploy", make_build(tmp_path / "v1"), *remote, local, "--json")
    assert r.returncode == 0, r.stderr
    v1 = json.loads(r.stdout)["release"]
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *remote, local,
            fault=f"{step}:KILL")
    assert r.returncode == -signal.SIGKILL

    def settled(root: Path) -> bool:
        st = json.loads(cli("status", root, "--json").stdout)
        return st["recovery"] is None and st["lock_holder"] is None

    wait_for(lambda: settled(local), what="the local session to finish on its own")
    wait_for(lambda: idle(hosts[0]), what="web1 to finish on its own")
    ends = {current(root) for root in roots}
    assert len(ends) == 1
    assert (ends != {f"releases/{v1}"}) == (step == "fleet-committing")
    for root in roots:
        assert not hidden(root)
        assert not (root / ".atomic-deploy" / "journal.json").exists()


def test_a_local_session_gets_its_arguments_on_stdin(tmp_path: Path) -> None:
    """Never on its command line, which every local user can read (ps): a header is a
    credential."""
    from atomic_deploy.remote._local import LocalConnection, local_root

    root = local_root(str(tmp_path / "app"))
    proc = LocalConnection(root).start(["status", "--json", "--header-is-not-here", SECRET,
                                        "--", root.path])
    _, err = proc.communicate(timeout=60)
    assert SECRET not in " ".join(map(str, proc.args))
    assert proc.returncode == 2 and b"--header-is-not-here" in err  # the arguments did arrive


def test_local_roots_alone_are_no_fleet(tmp_path: Path) -> None:
    r = run_cli("deploy", make_build(tmp_path / "b"), tmp_path / "a", tmp_path / "extra")
    assert r.returncode == 2 and "at least one remote root" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "extra").exists()

"""Remote roots, end to end: the real CLI deploying over the system's OpenSSH client to real
sshd servers, each test host with its own /srv (tests/sshlab.py), with real rsync.

Every test asserts on the host's disk from outside (``host.path``), and on exit codes and the
one error line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from atomic_deploy._signals import SESSION_STEPS
from atomic_deploy.errors import InvalidInput
from atomic_deploy.remote import RemoteRoot, parse_root
from conftest import error_line, make_build, run_cli, start_cli, wait_for
from sshlab import Host, SSHLab

# -- addresses (no ssh needed) ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("web1:/srv/app", RemoteRoot("web1", "/srv/app")),
    ("deploy@web1:/srv/app", RemoteRoot("web1", "/srv/app", "deploy")),
    ("web1:app", RemoteRoot("web1", "app")),
    ("ssh://deploy@web1:2222/srv/app", RemoteRoot("web1", "/srv/app", "deploy", 2222)),
    ("ssh://web1/srv/app", RemoteRoot("web1", "/srv/app")),
    ("ssh://[::1]:2222/srv/app", RemoteRoot("::1", "/srv/app", None, 2222)),
    ("[::1]:/srv/app", RemoteRoot("::1", "/srv/app")),
    ("u@[::1]:/srv/app", RemoteRoot("::1", "/srv/app", "u")),
    ("./a:b", None), ("/x:y", None), ("plain", None), (":path", None), ("a/b:c", None),
])
def test_remote_root_forms(text: str, want: RemoteRoot | None) -> None:
    assert parse_root(text) == want


@pytest.mark.parametrize("text", [
    "-oProxyCommand=x:/srv", "web1:", "web1::module", "ssh://web1",
    "ssh://web1:99999/srv", "we b1:/srv", "a;b:/srv", "ssh://-x/srv", "-l:/srv",
])
def test_bad_remote_roots_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_root(text)


def test_option_injection_through_the_host_is_one_line_exit_2(tmp_path: Path) -> None:
    build = make_build(tmp_path / "build")
    r = run_cli("deploy", "--", build, "-oProxyCommand=touch:/srv/app")
    assert r.returncode == 2, r.stderr
    assert "would be read by ssh as an option" in error_line(r)
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["deploy", "BUILD", "-oProxyCommand=touch:/srv/app"],  # before `--`: an unknown option
    ["deploy", "BUILD", "-oProxyCommand=touch:/srv/app", "--json"],
    ["deploy", "BUILD", "-l:/srv/app"],
    ["deploy", "BUILD", "--evil@web1:/srv/app"],
    ["deploy", "BUILD", "web1:/srv/app", "-oX=y:/srv/app"],  # in a fleet's roots
    ["status", "-oProxyCommand=touch:/srv/app"],  # argparse says ROOT is missing
    ["rollback", "-oProxyCommand=touch:/srv/app", "--to", "1"],
])
def test_a_dash_host_before_the_double_dash_is_the_same_refusal(tmp_path: Path,
                                                                 argv: list[str]) -> None:
    build = make_build(tmp_path / "build")
    r = run_cli(*[str(build) if a == "BUILD" else a for a in argv])
    assert r.returncode == 2, r.stderr
    line = error_line(r)
    assert "would be read by ssh as an option; nothing was changed" in line, line
    if "--json" in argv:
        out = json.loads(r.stdout)
        assert out["exit_code"] == 2 and out["command"] == argv[0] and not out["ok"]


@pytest.mark.parametrize("argv", [
    ["deploy", "BUILD", "--after-switch=touch:/srv/app"],  # an option's value: not a root
    ["deploy", "BUILD", "-m:/srv/app"],
    ["deploy", "BUILD", "--bogus"],
])
def test_options_that_look_like_roots_keep_argparses_line(tmp_path: Path,
                                                          argv: list[str]) -> None:
    r = run_cli(*[str(make_build(tmp_path / "build")) if a == "BUILD" else a for a in argv])
    assert r.returncode == 2
    assert "read by ssh as an option" not in error_line(r)


# -- the lab ---------------------------------------------------------------------------------


@pytest.fixture
def lab(ssh_lab: SSHLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SSHLab:
    # The tool built for upload is cached per test, not in the user's home.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ATOMIC_DEPLOY_SSH", ssh_lab.ssh_command)
    return ssh_lab


@pytest.fixture
def web1(lab: SSHLab) -> Host:
    return lab.add_host("web1")


def cli(*args: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 120)
    kw.setdefault("env", {k: os.environ[k] for k in ("XDG_CACHE_HOME", "ATOMIC_DEPLOY_SSH")})
    return run_cli(*args, **kw)


def data(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def current(host: Host, root: str = "/srv/app") -> str:
    return os.readlink(host.path(root) / "current")


def idle(host: Host, root: str = "/srv/app") -> bool:
    """The host has finished whatever it was doing: no journal, no tool process left."""
    state = host.path(root) / ".atomic-deploy"
    return not (state / "journal.json").exists() and not any(
        "atomic-deploy" in cmd for cmd in _host_commands(host))


def _host_commands(host: Host) -> list[str]:
    out = []
    for pid in host.processes():
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                "utf-8", "replace"))
    return out


# -- every command ---------------------------------------------------------------------------


def test_deploy_status_list_rollback_with_hooks_on_the_host(lab: SSHLab, web1: Host,
                                                            tmp_path: Path) -> None:
    web2 = lab.add_host("web2")
    v1 = make_build(tmp_path / "v1", version="v1")
    v2 = make_build(tmp_path / "v2", version="v2")
    told = "echo $ATOMIC_DEPLOY_RELEASE >> /srv/told"
    r = cli("deploy", v1, web1.dest(), "--after-switch", told, "--json",
            "--health-check", "test -f /srv/app/current/version.txt")
    assert r.returncode == 0, r.stderr
    first = data(r)["release"]
    assert (web1.path("/srv/app/current/version.txt")).read_text() == "v1\n"
    assert not web2.path("/srv/app").exists()  # the other host's /srv is untouched
    assert web1.path("/srv/told").read_text().split() == [first]
    assert not web2.path("/srv/told").exists()

    r = cli("deploy", v2, web1.dest(), "-m", "second", "--after-switch", told)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("deployed ")
    assert web1.path("/srv/app/current/version.txt").read_text() == "v2\n"

    r = cli("status", web1.dest())
    assert r.returncode == 0, r.stderr
    assert f"rollback target  {first}" in r.stdout
    st = data(cli("status", web1.dest(), "--json"))
    assert st["root"] == "/srv/app" and st["rollback_target"] == first
    r = cli("list", web1.dest(), "--json")
    assert next(x["id"] for x in data(r)["releases"]) == first

    r = cli("rollback", web1.dest(), "--after-switch", told)
    assert r.returncode == 0, r.stderr
    assert current(web1) == f"releases/{first}"
    assert web1.path("/srv/told").read_text().split()[-1] == first

    r = cli("status", web2.dest())  # not a root there: the same exit code as locally
    assert r.returncode == 2
    assert "does not exist" in error_line(r) or "not a deploy root" in r.stdout + r.stderr


def test_prepare_activate_verify_prune_recover_doctor(web1: Host, tmp_path: Path) -> None:
    ids = []
    for v in ("v1", "v2", "v3"):
        r = cli("prepare", make_build(tmp_path / v, version=v), web1.dest())
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())
    assert not (web1.path("/srv/app") / "current").exists()
    r = cli("activate", web1.dest(), ids[1])
    assert r.returncode == 0, r.stderr
    assert current(web1) == f"releases/{ids[1]}"
    assert cli("verify", web1.dest()).returncode == 0
    (web1.path("/srv/app/current/version.txt")).write_text("hot-patched")
    r = cli("verify", web1.dest(), "--json")
    assert r.returncode == 1
    r = cli("prune", web1.dest(), "--keep", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert data(r)["deleted"] == [ids[0]] or ids[0] in data(r)["deleted"]
    r = cli("recover", web1.dest())
    assert r.returncode == 0 and "nothing to recover" in r.stdout
    r = cli("doctor", web1.dest(), "--json")
    assert r.returncode in (0, 1) and data(r)["root"] == "/srv/app"
    checks = {c["name"]: c for c in data(r)["checks"]}
    assert checks["transfer"]["status"] == "ok" and "rsync" in checks["transfer"]["detail"]
    assert checks["remote python"]["detail"].startswith("Python 3.")
    r = cli("doctor", web1.dest())
    assert "transfer" in r.stdout and r.stdout.rstrip().endswith("ok")
    r = cli("activate", web1.dest(), "20990101000000")
    assert r.returncode == 2 and "unknown release id" in error_line(r)


def test_every_commands_error_line_and_header_name_the_host(web1: Host,
                                                            tmp_path: Path) -> None:
    """The host's tool knows only its path: what comes back names the host, in text and in
    --json, for every command (as deploy's own errors, `web1 refused the login`, do)."""
    missing = "web1:/srv/none"
    for cmd in ("status", "list", "verify", "activate", "rollback", "prune", "recover",
                "adopt"):
        extra = ["20990101000000"] if cmd == "activate" else []
        r = cli(cmd, missing, *extra)
        assert r.returncode == 2, (cmd, r.stderr)
        assert error_line(r).startswith("atomic-deploy: error: web1: ROOT "), (cmd, r.stderr)
        assert "/srv/none" in error_line(r) and error_line(r).count("web1") == 1
        r = cli(cmd, missing, *extra, "--json")
        assert r.returncode == 2 and data(r)["host"] == missing, (cmd, r.stdout)
        assert data(r)["error"].startswith("web1: "), (cmd, r.stdout)
    r = cli("doctor", missing)
    assert r.returncode == 1 and "root           web1: ROOT /srv/none does not exist" in r.stdout
    assert data(cli("doctor", missing, "--json"))["host"] == missing

    v1 = make_build(tmp_path / "v1", version="v1")
    r = cli("deploy", v1, web1.dest(), "--json")
    assert r.returncode == 0 and data(r)["host"] == web1.dest(), r.stdout
    first = data(r)["release"]
    r = cli("status", web1.dest())
    assert r.stdout.splitlines()[0] == f"root             {web1.dest()}", r.stdout
    assert data(cli("status", web1.dest(), "--json"))["host"] == web1.dest()
    r = cli("list", web1.dest())
    assert r.stdout.splitlines()[0] == f"releases on {web1.dest()}", r.stdout
    assert r.stdout.splitlines()[1].split()[0] == "RELEASE"
    assert data(cli("list", web1.dest(), "--json"))["host"] == web1.dest()
    for args in (["activate", web1.dest(), "20990101000000"],
                 ["rollback", web1.dest(), "--to", "20990101000000", "--dry-run"],
                 ["deploy", v1, web1.dest(), "--health-check", "false", "--health-retries", "0"],
                 ["prepare", v1, web1.dest(), "--check", "false"]):
        r = cli(*args)
        assert r.returncode in (2, 4), (args, r.stderr)
        line = error_line(r) if args[0] in ("activate", "rollback") else r.stderr.splitlines()[-1]
        assert line.startswith("atomic-deploy: error: web1: "), (args, r.stderr)
    assert current(web1) == f"releases/{first}"


def test_adopt_over_ssh(web1: Host) -> None:
    app = web1.path("/srv/app")
    (app / "current").mkdir(parents=True)
    (app / "current" / "index.html").write_text("legacy")
    r = cli("adopt", web1.dest())
    assert r.returncode == 0, r.stderr
    assert os.path.islink(app / "current")
    assert (app / "current" / "index.html").read_text() == "legacy"


# -- transfer --------------------------------------------------------------------------------


def test_second_deploy_sends_only_changed_files_and_never_stale_bytes(web1: Host,
                                                                     tmp_path: Path) -> None:
    build = tmp_path / "build"
    files = {f"f{i:03}.txt": f"content {i}\n" for i in range(40)}
    make_build(build, files)
    assert cli("deploy", build, web1.dest()).returncode == 0
    (build / "f007.txt").write_text("changed 7\n")
    # Same size, same mtime, new bytes: what size+mtime would call unchanged.
    st = os.stat(build / "f011.txt")
    (build / "f011.txt").write_text("CONTENT 11\n")
    os.utime(build / "f011.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = cli("deploy", build, web1.dest(), "--json")
    assert r.returncode == 0, r.stderr
    d = data(r)
    assert d["files"] == 40 and d["linked"] == 38  # f007 and f011 were sent, the rest linked
    cur = web1.path("/srv/app/current")
    assert (cur / "f011.txt").read_text() == "CONTENT 11\n"
    assert (cur / "f007.txt").read_text() == "changed 7\n"
    prev = web1.path("/srv/app/releases") / d["previous"]
    assert os.stat(cur / "f001.txt").st_ino == os.stat(prev / "f001.txt").st_ino
    # --trust-mtime: rsync's quick check, its risk stated: the same-size, same-mtime change
    # is then not seen.
    (build / "f011.txt").write_text("content 11\n")
    os.utime(build / "f011.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = cli("deploy", build, web1.dest(), "--trust-mtime", "--json")
    assert r.returncode == 0, r.stderr
    assert (web1.path("/srv/app/current") / "f011.txt").read_text() == "CONTENT 11\n"
    assert cli("verify", web1.dest()).returncode == 0  # the manifest matches the release


def _inode(path: Path) -> int:
    return os.lstat(path).st_ino


def _seeded(build: Path, host: Host) -> subprocess.CompletedProcess[str]:
    """Two deploys of ``build``: the second (by --checksum) records the digests the next
    deploy compares with."""
    assert cli("deploy", build, host.dest()).returncode == 0
    r = cli("deploy", build, host.dest(), "--json")
    assert r.returncode == 0, r.stderr
    return r


def test_second_deploy_links_by_digest_and_sends_the_rest(web1: Host, tmp_path: Path) -> None:
    build = tmp_path / "build"
    make_build(build, {f"d{i % 3}/f{i:03}.txt": f"content {i}\n" for i in range(30)})
    os.symlink("d0/f000.txt", build / "link")
    r = cli("deploy", build, web1.dest(), "--json")
    assert r.returncode == 0, r.stderr
    assert data(r)["transfer"]["compared"] is None  # nothing to compare with: all sent
    # A first release is not read again for digests; the next deploy compares by --checksum
    # and the host hashes that release, so the one after goes by digest.
    assert data(cli("verify", web1.dest(), "--content", "--json"))["no_digest"] == 30
    r = cli("deploy", build, web1.dest(), "--json")
    assert data(r)["transfer"]["compared"] == "checksum"
    first = data(r)["release"]
    v = data(cli("verify", web1.dest(), "--content", "--json"))
    assert v["clean"] and v["content_checked"] == 30 and v["no_digest"] == 0
    (build / "d1/f001.txt").write_text("changed 1, longer\n")
    (build / "new.txt").write_text("new\n")
    r = cli("deploy", build, web1.dest(), "--json")
    assert r.returncode == 0, r.stderr
    d = data(r)
    assert d["transfer"]["compared"] == "digest"
    assert d["transfer"]["sent"] == 2 and d["transfer"]["sent_bytes"] == 18 + 4
    assert d["files"] == 31 and d["linked"] == 29
    cur, prev = web1.path("/srv/app/current"), web1.path(f"/srv/app/releases/{first}")
    assert _inode(cur / "d0/f003.txt") == _inode(prev / "d0/f003.txt")
    assert _inode(cur / "d1/f001.txt") != _inode(prev / "d1/f001.txt")
    assert (cur / "d1/f001.txt").read_text() == "changed 1, longer\n"
    assert (cur / "new.txt").read_text() == "new\n"
    assert os.readlink(cur / "link") == "d0/f000.txt"
    assert os.stat(cur).st_mode == os.stat(build).st_mode
    for rel in ("d0", "d1", "d2"):  # folders as rsync -a gives them
        assert os.stat(cur / rel).st_mode == os.stat(build / rel).st_mode
        assert os.stat(cur / rel).st_mtime_ns == os.stat(build / rel).st_mtime_ns
    v = data(cli("verify", web1.dest(), "--content", "--json"))
    assert v["clean"] and v["no_digest"] == 0, v


def test_the_build_is_hashed_through_its_digest_cache_and_never_sends_stale_bytes(
        web1: Host, tmp_path: Path) -> None:
    from atomic_deploy import _manifest

    cache = tmp_path / "digest-cache"
    env = {_manifest.CACHE_ENV: str(cache)}
    build = make_build(tmp_path / "build", {f"f{i}.txt": f"file {i}\n" for i in range(8)})
    for f in build.iterdir():
        os.utime(f, (1_577_836_800, 1_577_836_800))  # one mtime for all, as reproducible builds
    _seeded(build, web1)
    # The file's last change must be older than the racily-clean margin to be remembered.
    newest = max(f.lstat().st_ctime_ns for f in build.iterdir())
    wait_for(lambda: time.time_ns() > newest + _manifest._COARSE_MARGIN_NS,
             what="the build's files to age")
    r = cli("deploy", build, web1.dest(), "--json", env=env)
    assert data(r)["transfer"]["compared"] == "digest" and data(r)["transfer"]["sent"] == 0
    (entry,) = cache.iterdir()  # one cache file, for this build folder
    assert (entry.stat().st_size - _manifest._HEADER) // _manifest._REC == 8
    # Same size, same mtime, new bytes: the cache (keyed by the lstat, ctime included) misses.
    f = build / "f3.txt"
    f.write_text("FILE 3\n")
    os.utime(f, (1_577_836_800, 1_577_836_800))
    r = cli("deploy", build, web1.dest(), "--json", env=env)
    assert data(r)["transfer"]["sent"] == 1, r.stderr
    assert web1.path("/srv/app/current/f3.txt").read_text() == "FILE 3\n"
    # --no-digest-cache: read again, not remembered
    before = entry.read_bytes()
    r = cli("deploy", build, web1.dest(), "--json", "--no-digest-cache", env=env)
    assert r.returncode == 0 and data(r)["transfer"]["sent"] == 0, r.stderr
    assert entry.read_bytes() == before


def test_a_live_file_written_in_place_is_sent_not_linked(web1: Host, tmp_path: Path) -> None:
    build = make_build(tmp_path / "build", {"a.txt": "aaaa\n", "b.txt": "bbbb\n"})
    _seeded(build, web1)
    live = web1.path("/srv/app/current/a.txt")
    before = _inode(live)
    live.write_text("HOT!\n")  # hot-patched on the host: same size, new mtime
    r = cli("deploy", build, web1.dest(), "--json", "--compress")  # (the offer zlib'd)
    assert r.returncode == 0, r.stderr
    d = data(r)
    assert d["transfer"]["compared"] == "digest" and d["transfer"]["sent"] == 1
    cur = web1.path("/srv/app/current")
    assert (cur / "a.txt").read_text() == "aaaa\n" and _inode(cur / "a.txt") != before
    assert cli("verify", web1.dest(), "--content").returncode == 0


def test_a_mode_change_is_sent_and_leaves_the_live_file_alone(web1: Host,
                                                              tmp_path: Path) -> None:
    build = make_build(tmp_path / "build", {"run.sh": "echo hi\n", "b.txt": "b\n"})
    os.chmod(build / "run.sh", 0o644)
    r = _seeded(build, web1)
    old = web1.path(f"/srv/app/releases/{data(r)['release']}/run.sh")
    os.chmod(build / "run.sh", 0o755)
    r = cli("deploy", build, web1.dest(), "--json")
    assert r.returncode == 0, r.stderr
    assert data(r)["transfer"]["sent"] == 1 and data(r)["linked"] == 1
    new = web1.path("/srv/app/current/run.sh")
    assert os.stat(new).st_mode & 0o777 == 0o755 and _inode(new) != _inode(old)
    assert os.stat(old).st_mode & 0o777 == 0o644  # the previous release kept its mode


def test_a_current_release_without_digests_falls_back_to_checksum(web1: Host,
                                                                  tmp_path: Path) -> None:
    build = make_build(tmp_path / "build", {f"f{i}.txt": f"{i}\n" for i in range(10)})
    r = _seeded(build, web1)
    # As a release deployed by an earlier version records it: no digests.
    manifest = web1.path(f"/srv/app/.atomic-deploy/manifests/{data(r)['release']}.jsonl")
    head, *rows = manifest.read_text().splitlines()
    rows = [json.dumps([*json.loads(x)[:5], None if json.loads(x)[1] == "file"
                        else json.loads(x)[5]], separators=(",", ":")) for x in rows]
    manifest.write_text("\n".join([head.replace('"blake2b-256"', "null"), *rows]) + "\n")
    assert data(cli("verify", web1.dest(), "--content", "--json"))["no_digest"] == 10
    (build / "f3.txt").write_text("three\n")
    r = cli("deploy", build, web1.dest(), "--json")
    assert r.returncode == 0, r.stderr
    d = data(r)
    assert d["transfer"]["compared"] == "checksum" and d["linked"] == 9
    assert web1.path("/srv/app/current/f3.txt").read_text() == "three\n"
    # ... and the new release's manifest has them again, so the next deploy goes by digest.
    v = data(cli("verify", web1.dest(), "--content", "--json"))
    assert v["clean"] and v["no_digest"] == 0
    r = cli("deploy", build, web1.dest(), "--json")
    assert data(r)["transfer"]["compared"] == "digest" and data(r)["transfer"]["sent"] == 0


def test_a_folder_of_the_live_release_turned_symlink_is_never_linked_through(
        web1: Host, tmp_path: Path) -> None:
    build = make_build(tmp_path / "build", {"d/a.txt": "a\n", "d/b.txt": "b\n", "c.txt": "c\n"})
    _seeded(build, web1)
    cur = web1.path("/srv/app/current")
    elsewhere = web1.path("/srv/elsewhere")
    os.rename(cur / "d", elsewhere)  # the same files, the same inodes, reached by a symlink
    os.symlink(str(web1.remote_path("/srv/elsewhere")), cur / "d")
    names = os.stat(elsewhere / "a.txt").st_nlink
    r = cli("deploy", build, web1.dest(), "--json")
    assert r.returncode == 0, r.stderr
    d = data(r)
    assert d["transfer"]["compared"] == "digest" and d["transfer"]["sent"] == 2, d
    new = web1.path("/srv/app/current")
    assert not (new / "d").is_symlink() and (new / "d/a.txt").read_text() == "a\n"
    assert _inode(new / "d/a.txt") != _inode(elsewhere / "a.txt")
    assert os.stat(elsewhere / "a.txt").st_nlink == names  # never given another name


def test_the_probe_upload_and_session_share_one_ssh_session(lab: SSHLab, web1: Host,
                                                           tmp_path: Path) -> None:
    """One ssh session runs the bootstrap for the probe, the tool's upload and its run (only
    rsync opens another)."""
    log = tmp_path / "ssh.log"
    wrapper = tmp_path / "ssh-logged"
    wrapper.write_text("#!/bin/sh\n"
                       f"for a; do case $a in *'python3 -c'*) echo bootstrap >> {log};; esac; done\n"
                       'exec ssh "$@"\n')
    wrapper.chmod(0o755)
    ssh = lab.ssh_command.replace("ssh", str(wrapper), 1)
    assert ssh.startswith(str(wrapper))
    build = make_build(tmp_path / "build", {"a.txt": "a\n"})
    env = {"ATOMIC_DEPLOY_SSH": ssh, "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}
    r = cli("deploy", build, web1.dest(), env=env)  # the tool is uploaded: probe, install, run
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["bootstrap"]
    log.unlink()
    r = cli("status", web1.dest(), env=env)
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["bootstrap"]


def test_a_host_failing_while_it_links_says_why(web1: Host, tmp_path: Path) -> None:
    build = make_build(tmp_path / "build", {"a.txt": "a\n", "b.txt": "b\n"})
    _seeded(build, web1)
    before = current(web1)
    live = web1.path("/srv/app/current/a.txt")
    # An immutable file cannot be hard-linked: the host's link fails mid-offer.
    if subprocess.run(["chattr", "+i", str(live)], capture_output=True).returncode != 0:
        pytest.skip("no chattr +i here")
    try:
        r = cli("deploy", build, web1.dest())
    finally:
        subprocess.run(["chattr", "-i", str(live)], check=True)
    assert r.returncode == 1, r.stderr
    assert "lost the connection" not in r.stderr
    assert "deploy failed" in error_line(r) and "not permitted" in error_line(r)
    assert current(web1) == before
    assert not [n for n in os.listdir(web1.path("/srv/app/releases")) if n.startswith(".")]


def test_tar_stream_when_the_host_has_no_rsync(lab: SSHLab, tmp_path: Path) -> None:
    host = lab.add_host("norsync", rsync=False)
    build = make_build(tmp_path / "build", {"a/b.txt": "b", "c.txt": "c"})
    os.symlink("c.txt", build / "link")
    r = cli("deploy", build, host.dest(), "--json")
    assert r.returncode == 0, r.stderr
    checks = {c["name"]: c for c in data(cli("doctor", host.dest(), "--json"))["checks"]}
    assert checks["transfer"]["status"] == "warn" and "tar stream" in checks["transfer"]["detail"]
    cur = host.path("/srv/app/current")
    assert (cur / "a/b.txt").read_text() == "b"
    assert os.readlink(cur / "link") == "c.txt"
    assert (cur / "c.txt").read_text() == "c"
    # Everything was sent: not read again on the host for digests nobody compares.
    assert data(cli("verify", host.dest(), "--content", "--json"))["no_digest"] == 2


def test_the_tool_is_uploaded_once_and_reused(web1: Host, tmp_path: Path) -> None:
    build = make_build(tmp_path / "build")
    r = cli("status", web1.dest())  # read-only on a new root: runs from memory, writes nothing
    assert r.returncode == 2
    assert not web1.path("/srv/app").exists()
    assert cli("deploy", build, web1.dest()).returncode == 0
    bindir = web1.path("/srv/app/.atomic-deploy/bin")
    (tool,) = list(bindir.glob("*.pyz"))
    (fast,) = list(bindir.glob("*.pyz.cpython-*.zip"))  # its modules compiled for the host
    assert fast.name.startswith(tool.name)
    assert oct(tool.stat().st_mode & 0o777) == "0o700"
    assert oct(bindir.stat().st_mode & 0o777) == "0o700"
    before = tool.stat()
    assert cli("deploy", build, web1.dest()).returncode == 0
    assert cli("status", web1.dest()).returncode == 0
    after = tool.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # A tampered tool is never run: status runs the good one from memory, and the next
    # mutating command puts the good one back.
    good = tool.read_bytes()
    tool.write_bytes(good.replace(b"def main(", b"def main_tampered("))
    assert cli("status", web1.dest()).returncode == 0
    assert cli("deploy", build, web1.dest()).returncode == 0
    assert tool.read_bytes() == good


# -- failures: one line, exit code, the host sound -------------------------------------------


def test_changed_host_key_is_refused(web1: Host, tmp_path: Path) -> None:
    web1.regenerate_host_key(trust=False)
    r = cli("status", web1.dest())
    assert r.returncode == 2
    assert "host key of web1 has changed" in error_line(r)
    assert r.stderr.count("\n") == 1


def test_unknown_host_key_needs_accept_new(lab: SSHLab, web1: Host, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    ssh = f"{lab.ssh_command} -o UserKnownHostsFile={empty}"
    r = cli("status", web1.dest(), "--ssh", ssh)
    assert r.returncode == 2 and "not in known_hosts" in error_line(r)
    r = cli("deploy", make_build(tmp_path / "b"), web1.dest(), "--ssh", ssh,
            "--accept-new-host-keys")
    assert r.returncode == 0, r.stderr
    assert empty.read_text().strip()


def test_refused_login(web1: Host) -> None:
    web1.refuse_login()
    r = cli("status", web1.dest())
    assert r.returncode == 2 and "refused the login" in error_line(r)


def test_nothing_listens(lab: SSHLab) -> None:
    lab.add_alias("dead", lab.unused_port())
    r = cli("status", "dead:/srv/app")
    assert r.returncode == 2 and "nothing listens for ssh on dead" in error_line(r)


def test_a_host_that_never_answers_is_given_up_in_bounded_time(web1: Host) -> None:
    web1.pause()
    try:
        started = time.monotonic()
        r = cli("status", web1.dest(), "--connect-timeout", "2")
        assert time.monotonic() - started < 30
        assert r.returncode == 2 and "did not answer within 2 s" in error_line(r)
    finally:
        web1.resume()


def test_a_host_without_python3(lab: SSHLab, tmp_path: Path) -> None:
    host = lab.add_host("nopy", python=False)
    r = cli("deploy", make_build(tmp_path / "b"), host.dest())
    assert r.returncode == 2
    assert "cannot run python3 on nopy" in error_line(r)
    assert not host.path("/srv/app").exists()


def test_disk_full_on_the_host_during_the_transfer(lab: SSHLab, tmp_path: Path) -> None:
    host = lab.add_host("small", disk_mb=3)
    assert cli("deploy", make_build(tmp_path / "small"), host.dest()).returncode == 0
    before = current(host)
    big = make_build(tmp_path / "big")
    (big / "blob").write_bytes(os.urandom(4 << 20))
    r = cli("deploy", big, host.dest())
    assert r.returncode == 1, r.stderr
    assert "atomic-deploy: error: small: " in r.stderr and "nothing was switched" in r.stderr
    assert current(host) == before
    releases = host.path("/srv/app/releases")
    assert not [n for n in os.listdir(releases) if n.startswith(".")]
    assert cli("status", host.dest()).returncode == 0


@pytest.mark.parametrize("step", SESSION_STEPS)
def test_deploying_process_killed_at_each_step(web1: Host, tmp_path: Path, step: str) -> None:
    told = "echo $ATOMIC_DEPLOY_RELEASE >> /srv/told"
    assert cli("deploy", make_build(tmp_path / "v1", version="v1"), web1.dest()).returncode == 0
    before = current(web1)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), web1.dest(), "--json",
            "--after-switch", told, fault=f"{step}:KILL")
    assert r.returncode == -signal.SIGKILL
    wait_for(lambda: idle(web1), what="the host to finish on its own")
    after = current(web1)
    version = web1.path("/srv/app/current/version.txt").read_text()
    if step == "session-committing":
        assert after != before and version == "v2\n"
    else:
        assert after == before and version == "v1\n"
    if step == "session-switched":  # it had switched and told: now told of the restored one
        assert web1.path("/srv/told").read_text().split()[-1] == before.split("/")[-1]
    st = data(cli("status", web1.dest(), "--json"))
    assert st["recovery"] is None and not st["leftovers"]
    assert not [n for n in os.listdir(web1.path("/srv/app/releases")) if n.startswith(".")]


@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_deploying_process_interrupted_tells_the_host(web1: Host, tmp_path: Path,
                                                      sig: str) -> None:
    assert cli("deploy", make_build(tmp_path / "v1", version="v1"), web1.dest()).returncode == 0
    before = current(web1)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), web1.dest(),
            fault=f"session-switched:{sig}")
    assert r.returncode == 128 + getattr(signal, f"SIG{sig}")
    assert f"error: web1: interrupted by SIG{sig}; switched back" in error_line(r)
    assert current(web1) == before


def test_connection_killed_mid_switch(web1: Host, tmp_path: Path) -> None:
    assert cli("deploy", make_build(tmp_path / "v1", version="v1"), web1.dest()).returncode == 0
    before = current(web1)
    pause = tmp_path / "go"
    p = start_cli("deploy", make_build(tmp_path / "v2", version="v2"), web1.dest(),
                  "--after-switch", "echo $ATOMIC_DEPLOY_RELEASE >> /srv/told",
                  fault=f"session-switched:PAUSE:{pause}",
                  env={k: os.environ[k] for k in ("XDG_CACHE_HOME", "ATOMIC_DEPLOY_SSH")})
    wait_for(lambda: Path(f"{pause}.paused").exists(), timeout=120, what="the switch")
    assert current(web1) != before  # switched, waiting for the commit
    web1.kill_sessions()
    wait_for(lambda: idle(web1), what="the host to undo on its own")
    assert current(web1) == before
    assert web1.path("/srv/told").read_text().split()[-1] == before.split("/")[-1]
    pause.touch()
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert "lost the connection to web1" in err
    assert err.count("atomic-deploy: error:") == 1


def test_connection_killed_mid_transfer(web1: Host, tmp_path: Path) -> None:
    assert cli("deploy", make_build(tmp_path / "v1", version="v1"), web1.dest()).returncode == 0
    before = current(web1)
    big = make_build(tmp_path / "big", version="v2")
    (big / "blob").write_bytes(os.urandom(96 << 20))
    p = start_cli("deploy", big, web1.dest(),
                  env={k: os.environ[k] for k in ("XDG_CACHE_HOME", "ATOMIC_DEPLOY_SSH")})
    releases = web1.path("/srv/app/releases")

    def receiving() -> bool:
        return any(n.startswith(".") and any(os.scandir(releases / n))
                   for n in os.listdir(releases))

    wait_for(receiving, timeout=120, what="rsync to start writing")
    web1.kill_sessions()
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert err.count("atomic-deploy: error:") == 1 and "web1" in err, err
    assert len(err.strip().splitlines()) == 1, err
    wait_for(lambda: idle(web1), what="the host to undo on its own")
    assert current(web1) == before
    assert not [n for n in os.listdir(releases) if n.startswith(".")]


# -- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "a b", "q'uote\"d", "$(touch${IFS}pwned)", "semi;colon", "new\nline", "bad\udcffbyte",
])
def test_hostile_paths_and_messages_never_reach_a_shell(web1: Host, tmp_path: Path,
                                                       name: str) -> None:
    root = f"/srv/{name}"
    build = make_build(tmp_path / "build", {f"{name}.txt": "x"} if "\n" not in name else None)
    # An injected command would run in the login's home folder (this machine's, too).
    home = Path(os.path.expanduser("~"))
    r = cli("deploy", build, f"web1:{root}", "-m", f"msg {name} `touch pwned2`", "--json")
    assert r.returncode == 0, r.stderr
    assert os.path.islink(web1.path("/srv") / os.fsencode(name).decode(
        sys.getfilesystemencoding(), "surrogateescape") / "current")
    h = cli("list", f"web1:{root}", "--json")
    assert h.returncode == 0, h.stderr
    assert data(h)["releases"][0]["message"] == f"msg {name} `touch pwned2`"
    assert not (home / "pwned").exists() and not (home / "pwned2").exists()


def test_a_deploying_machine_gone_silent_is_given_up(web1: Host, tmp_path: Path) -> None:
    """Its network vanished without closing the connection (here: the process is stopped, so
    its pings stop): the host undoes the deploy on its own rather than holding the lock."""
    assert cli("deploy", make_build(tmp_path / "v1", version="v1"), web1.dest()).returncode == 0
    before = current(web1)
    pause = tmp_path / "go"
    env = {k: os.environ[k] for k in ("XDG_CACHE_HOME", "ATOMIC_DEPLOY_SSH")}
    env["ATOMIC_DEPLOY_PING_INTERVAL"] = "0.5"
    p = start_cli("deploy", make_build(tmp_path / "v2", version="v2"), web1.dest(),
                  fault=f"session-switched:PAUSE:{pause}", env=env)
    wait_for(lambda: Path(f"{pause}.paused").exists(), timeout=120, what="the switch")
    os.kill(p.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: idle(web1) and current(web1) == before, timeout=60,
                 what="the host to give up")
    finally:
        os.kill(p.pid, signal.SIGCONT)

    pause.touch()
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert "no word from the deploying machine" in err
    assert current(web1) == before


def test_config_errors_in_the_hosts_file_name_it(web1: Host, tmp_path: Path) -> None:
    build = make_build(tmp_path / "b")
    assert cli("deploy", build, web1.dest()).returncode == 0
    web1.path("/srv/app/atomic-deploy.toml").write_text("keep = [\n")
    r = cli("deploy", build, web1.dest())
    assert r.returncode == 2 and "web1:/srv/app/atomic-deploy.toml" in error_line(r)
    r = cli("rollback", web1.dest())  # rollback is the way out: a warning, and it goes on
    assert "going on without the config file" in r.stderr
    assert r.returncode == 2 and "nothing to roll back to" in r.stderr.splitlines()[-1]


@pytest.mark.parametrize("version", ["2.7", "3.8"])
def test_a_host_whose_python3_is_too_old(web1: Host, tmp_path: Path, version: str) -> None:
    import glob

    found = sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python"))
    if not found:
        pytest.skip(f"no Python {version} installed here")
    r = cli("deploy", make_build(tmp_path / "b"), web1.dest(), "--remote-python", found[-1])
    assert r.returncode == 2
    assert f"on this host is Python {version}" in error_line(r)
    assert "needs Python 3.9 or newer there" in error_line(r)
    assert not web1.path("/srv/app").exists()


def _oldest_python() -> str | None:
    import glob

    found = sorted(glob.glob("/root/.pyenv/versions/3.9.*/bin/python3"))
    return found[-1] if found else None


@pytest.mark.skipif(_oldest_python() is None, reason="no Python 3.9 installed here")
def test_a_host_whose_python3_is_the_oldest_supported(web1: Host, tmp_path: Path) -> None:
    py = _oldest_python()
    assert py is not None
    (tmp_path / "b").mkdir()
    build = make_build(tmp_path / "b")
    r = cli("deploy", build, web1.dest(), "--remote-python", py, "--json")
    assert r.returncode == 0, r.stderr
    # The host's config file applies (parsed on this side: that python needs no TOML parser).
    web1.path("/srv/app/atomic-deploy.toml").write_text("keep = 1\n")
    for _ in range(2):
        r = cli("deploy", build, web1.dest(), "--remote-python", py, "--json")
        assert r.returncode == 0, r.stderr
    assert len(data(r)["pruned"]) == 1  # current and the rollback target kept
    r = cli("status", web1.dest(), "--remote-python", py)
    assert r.returncode == 0, r.stderr


def test_the_lock_holder_on_a_host_shows_the_command_typed_here(web1: Host,
                                                                tmp_path: Path) -> None:
    """A second deploy was shown the host's internal command line (`deploy --session
    vm:/tmp/... --check sleep 6 -- /srv/app`): it is shown the one typed on the deploying
    machine, shell-quoted, and which machine that is."""
    import shlex
    import socket

    assert cli("deploy", make_build(tmp_path / "v1"), web1.dest()).returncode == 0
    go = tmp_path / "go"
    build = make_build(tmp_path / "v2", version="v2")
    holder = start_cli("deploy", build, web1.dest(), "--check", "test -n 'a b'",
                       fault=f"session-sealed:PAUSE:{go}",
                       env={k: os.environ[k] for k in ("XDG_CACHE_HOME", "ATOMIC_DEPLOY_SSH")})
    try:
        wait_for(lambda: Path(f"{go}.paused").exists(), timeout=120, what="the lock held")
        r = cli("deploy", make_build(tmp_path / "v3", version="v3"), web1.dest())
        assert r.returncode == 3, r.stderr
        typed = shlex.join(["atomic-deploy", "deploy", str(build), web1.dest(), "--check",
                            "test -n 'a b'"])
        assert f"running: {typed} (from {socket.gethostname()})" in error_line(r)
        assert "--session" not in r.stderr and " -- " not in r.stderr
        shown = data(cli("status", web1.dest(), "--json"))["lock_holder"]["command"]
        assert shown == f"{typed} (from {socket.gethostname()})"
    finally:
        go.touch()
        holder.communicate(timeout=120)
    assert holder.returncode == 0

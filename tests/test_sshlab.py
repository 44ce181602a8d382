"""The SSH test harness itself (tests/sshlab.py): real sshd hosts on loopback, each with its own
/srv, and the faults the remote-root tests make them show."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import process_running, wait_for
from sshlab import Host, SSHLab


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def needs_isolation(lab: SSHLab) -> None:
    if not lab.isolated:
        pytest.skip("needs mount namespaces (root, unshare): hosts share this machine's /srv")


def running_sleeps(host: Host) -> list[int]:
    return [p for p in host.processes() if comm(p) == "sleep"]


def test_hosts_have_their_own_srv_at_the_same_path(ssh_lab: SSHLab) -> None:
    needs_isolation(ssh_lab)
    web1, web2 = ssh_lab.add_host("web1"), ssh_lab.add_host("web2")
    name = f"sshlab-probe-{os.getpid()}"
    web1.path(f"/srv/{name}").write_text("one\n")
    web2.path(f"/srv/{name}").write_text("two\n")

    assert ssh_lab.ssh("web1", f"cat /srv/{name}").stdout == "one\n"
    assert ssh_lab.ssh("web2", f"cat /srv/{name}").stdout == "two\n"
    # Written over ssh: lands on that host's disk only, never in this machine's /srv.
    r = ssh_lab.ssh("web2", "mkdir -p /srv/app && echo hi > /srv/app/new")
    assert r.returncode == 0, r.stderr
    assert web2.path("/srv/app/new").read_text() == "hi\n"
    assert not web1.path("/srv/app").exists()
    assert not os.path.exists(f"/srv/{name}")
    # run() is inside the host too.
    assert web1.run(["cat", f"/srv/{name}"]).stdout == "one\n"


def test_rsync_over_ssh_to_a_host(ssh_lab: SSHLab, tmp_path: Path) -> None:
    web1 = ssh_lab.add_host("web1")
    src = tmp_path / "build"
    (src / "assets").mkdir(parents=True)
    (src / "index.html").write_text("<h1>v1</h1>\n")
    (src / "assets" / "app.js").write_text("x\n")
    r = subprocess.run(["rsync", "-a", "-e", ssh_lab.ssh_command, f"{src}/", web1.dest("/srv/app") + "/"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (web1.path("/srv/app") / "index.html").read_text() == "<h1>v1</h1>\n"
    assert (web1.path("/srv/app") / "assets" / "app.js").read_text() == "x\n"


def test_rsync_false_hides_rsync_on_that_host_only(ssh_lab: SSHLab, tmp_path: Path) -> None:
    web1, web2 = ssh_lab.add_host("web1"), ssh_lab.add_host("web2", rsync=False)
    probe = "command -v rsync; echo rc=$?; python3 -c 'import shutil; print(shutil.which(\"rsync\"))'"
    assert ssh_lab.ssh("web1", probe).stdout.splitlines()[0].endswith("/rsync")
    assert ssh_lab.ssh("web2", probe).stdout.splitlines() == ["rc=1", "None"]
    assert ssh_lab.ssh("web2", "rsync --version").returncode == 127

    (tmp_path / "f").write_text("x")
    r = subprocess.run(["rsync", "-a", "-e", ssh_lab.ssh_command, str(tmp_path / "f"), web2.dest("/srv/f")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "rsync" in r.stderr
    assert not web2.path("/srv/f").exists()
    assert web1.rsync and not web2.rsync


def test_python_false_hides_python3_on_that_host_only(ssh_lab: SSHLab) -> None:
    ssh_lab.add_host("web1")
    ssh_lab.add_host("web2", python=False)
    probe = "for p in python python3 python3.9 python3.11 python3.13; do command -v $p; done; echo end"
    found = ssh_lab.ssh("web1", probe).stdout.splitlines()
    assert any(p.endswith("/python3") for p in found), found
    assert ssh_lab.ssh("web2", probe).stdout.splitlines() == ["end"]
    assert ssh_lab.ssh("web2", "python3 -c 1").returncode == 127
    left = ssh_lab.ssh("web2", "ls /usr/bin | grep -E '^python[0-9.]*$'").stdout.split()
    assert left == [], left
    assert ssh_lab.ssh("web1", "python3 -c 'print(6 * 7)'").stdout == "42\n"


def test_a_paused_host_makes_connects_time_out(ssh_lab: SSHLab) -> None:
    web1 = ssh_lab.add_host("web1")
    web1.pause()
    start = time.monotonic()
    r = ssh_lab.ssh("web1", "true", options=["-o", "ConnectTimeout=2", "-o", "BatchMode=yes"])
    took = time.monotonic() - start
    assert r.returncode == 255
    assert "timed out" in r.stderr, r.stderr
    assert took < 20, took
    web1.resume()
    assert ssh_lab.ssh("web1", "true").returncode == 0


def test_a_stopped_host_refuses_and_starts_again_with_its_disk(ssh_lab: SSHLab) -> None:
    web1 = ssh_lab.add_host("web1")
    assert ssh_lab.ssh("web1", "echo kept > /srv/kept").returncode == 0
    web1.stop()
    assert not web1.running
    r = ssh_lab.ssh("web1", "true", options=["-o", "ConnectTimeout=10"])
    assert r.returncode == 255 and "Connection refused" in r.stderr, r.stderr
    assert web1.run(["cat", web1.remote_path("/srv/kept")]).stdout == "kept\n"  # no sshd needed
    port = web1.port
    web1.start()
    assert web1.port == port
    assert ssh_lab.ssh("web1", "cat /srv/kept").stdout == "kept\n"


def test_unused_port_refuses(ssh_lab: SSHLab) -> None:
    ssh_lab.add_alias("down", ssh_lab.unused_port())
    r = ssh_lab.ssh("down", "true", options=["-o", "ConnectTimeout=10"])
    assert r.returncode == 255 and "Connection refused" in r.stderr, r.stderr


def test_kill_sessions_drops_a_live_connection(ssh_lab: SSHLab) -> None:
    web1 = ssh_lab.add_host("web1")
    client = subprocess.Popen([*ssh_lab.ssh_argv(), "web1", "sleep 30"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: bool(running_sleeps(web1)), 60, "the remote sleep to run")
        [sleep] = running_sleeps(web1)
        start = time.monotonic()
        assert web1.kill_sessions() >= 1
        client.wait(timeout=20)
        assert time.monotonic() - start < 20
        assert client.returncode == 255
        # The command lost its connection but, as after a network cut, still runs on the host.
        assert process_running(sleep) and sleep in web1.processes()
        web1.kill_sessions(commands=True)
        wait_for(lambda: not process_running(sleep), 30, "the orphaned sleep to be killed")
        # The listener was left alone: new logins work.
        assert ssh_lab.ssh("web1", "true").returncode == 0
    finally:
        if client.poll() is None:
            client.kill()
        client.communicate(timeout=30)


def test_a_changed_host_key_is_refused(ssh_lab: SSHLab) -> None:
    web1 = ssh_lab.add_host("web1")
    old = web1.public_key()
    web1.regenerate_host_key()
    assert web1.public_key() != old
    r = ssh_lab.ssh("web1", "true", options=["-o", "BatchMode=yes"])
    assert r.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr, r.stderr
    web1.trust_host_key()
    assert ssh_lab.ssh("web1", "true").returncode == 0


def test_refused_login(ssh_lab: SSHLab) -> None:
    web1 = ssh_lab.add_host("web1", refuse_login=True)
    r = ssh_lab.ssh("web1", "true", options=["-o", "BatchMode=yes"])
    assert r.returncode == 255 and "Permission denied" in r.stderr, r.stderr
    web1.allow_login()
    assert ssh_lab.ssh("web1", "true").returncode == 0
    web1.refuse_login()
    assert ssh_lab.ssh("web1", "true", options=["-o", "BatchMode=yes"]).returncode == 255


def test_a_small_disk_fills_up(ssh_lab: SSHLab) -> None:
    web1 = ssh_lab.add_host("web1", disk_mb=1)
    r = ssh_lab.ssh("web1", "dd if=/dev/zero of=/srv/fill bs=64k count=64")
    assert r.returncode != 0 and "No space left on device" in r.stderr, r.stderr
    assert web1.path("/srv/fill").stat().st_size <= 1024 * 1024
    # From outside too: host.path is the same small file system.
    with pytest.raises(OSError) as e:
        web1.path("/srv/more").write_bytes(b"x" * 1024 * 1024)
    assert e.value.errno == errno.ENOSPC
    assert ssh_lab.ssh("web1", "df -k /srv | tail -n 1").stdout.split()[1] == "1024"


def test_close_leaves_nothing_behind() -> None:
    lab = SSHLab()
    try:
        web1 = lab.add_host("web1", disk_mb=1 if lab.isolated else None)
        web2 = lab.add_host("web2")
        client = subprocess.Popen([*lab.ssh_argv(), "web2", "sleep 60"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: bool(running_sleeps(web2)), 60, "the remote sleep to run")
        web1.pause()
        pids = [web1.pid, web2.pid, *web2.processes()]
        tmpfs = str(web1.path())
    finally:
        lab.close()
    client.wait(timeout=30)
    assert not [p for p in pids if p is not None and process_running(p)]
    assert not lab.dir.exists()
    with open("/proc/self/mountinfo") as f:
        assert tmpfs not in f.read()


def test_fallback_without_namespaces() -> None:
    lab = SSHLab(isolate=False)
    try:
        web1, web2 = lab.add_host("web1"), lab.add_host("web2")
        assert web1.remote_path("/srv/app") == str(web1.path("/srv/app")) != web2.remote_path("/srv/app")
        app = web1.remote_path("/srv/app")
        r = lab.ssh("web1", f"mkdir -p {app} && echo a > {app}/x")
        assert r.returncode == 0, r.stderr
        assert web1.path("/srv/app/x").read_text() == "a\n"
        assert web1.dest() == f"web1:{web1.path('/srv/app')}"
        with pytest.raises(pytest.skip.Exception):
            lab.add_host("web3", rsync=False)
    finally:
        lab.close()


def test_sshd_is_installed_where_ci_runs() -> None:
    """CI installs openssh-server and rsync (.ci/run): the lab's tests must not skip there."""
    if not os.environ.get("CI"):
        pytest.skip("only checked under CI")
    assert shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")
    assert shutil.which("rsync")

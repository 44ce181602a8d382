"""Real OpenSSH servers on loopback, one per test host, for the tests of remote roots.

Use it through the ``ssh_lab`` fixture (tests/conftest.py)::

    def test_x(ssh_lab: SSHLab) -> None:
        web1 = ssh_lab.add_host("web1")
        web2 = ssh_lab.add_host("web2", rsync=False)
        run_cli("deploy", build, web1.dest("/srv/app"), "--ssh", ssh_lab.ssh_command)
        assert (web1.path("/srv/app") / "current").is_symlink()   # web1's disk, seen from here

How a host is made:

- The lab (one per test) owns a private temp folder holding a client key, an ``ssh_config``
  with one ``Host`` entry per host alias (127.0.0.1, its port, ``User`` root, the client key,
  ``HostKeyAlias`` = the alias, ``StrictHostKeyChecking yes``) and the ``known_hosts`` file the
  lab fills with each host's key. ``BatchMode`` is not set: that is the tool's business.
  ``ssh_lab.ssh_command`` is ``ssh -F <lab>/ssh_config``, ready for ``--ssh`` or ``rsync -e``.
- Each host runs its own ``sshd -D -e`` (own host key, own authorized_keys, a free loopback
  port, its log in ``host.log()``) inside its own mount namespace: a holder process made with
  ``unshare --mount --propagation private`` bind-mounts the host's folder over ``/srv``, and
  sshd is started in that namespace with ``nsenter``, so every login (and everything it runs)
  sees that host's own ``/srv``, as on separate machines. ``host.path("/srv/app")`` is where
  that folder is on this machine's disk, for assertions from outside. The namespace outlives
  sshd, so a host keeps its disk across ``stop()``/``start()`` and ``host.run()`` works on a
  stopped host. Mounts never propagate out: this machine's ``/srv`` is untouched.
- Each host also masks the login user's shell start-up files (``~/.bashrc``, ``~/.profile``...)
  so a login gets sshd's plain default PATH, as on a fresh server.
- ``rsync=False`` / ``python=False`` remove ``rsync`` / every ``python``, ``python3``,
  ``python3.N`` from that host's PATH directories (a read-only overlay with whiteouts: the
  commands are absent, ``command -v`` finds nothing, running one is exit 127).
  ``disk_mb=N`` makes the host's ``/srv`` a tmpfs of N MB (writes then fail with ENOSPC).
- Where mount namespaces are not available (not root, or ``unshare`` fails) the lab falls back
  to one folder per host and ``lab.isolated`` is False: the remote path of ``/srv/app`` is then
  ``str(host.path("/srv/app"))``, so write tests with ``host.remote_path()``/``host.dest()``;
  options that need a namespace skip the test.

Hosts start in about 0.1-0.3 s each (ready means: the port answers with an SSH banner and an
``ssh HOST true`` succeeded). Everything is torn down by ``lab.close()``, which the fixture
calls even when the test fails: every process in each host's namespace is killed, mounts go
with the namespaces (the ``disk_mb`` tmpfs is unmounted), the temp folder is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import process_running, wait_for

SRV = "/srv"  # the one folder each host has its own copy of
START_TIMEOUT = 60.0  # generous: 2 shared cores
# sshd's default PATH for root and users on Debian, and usual elsewhere: where a login looks
PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/games")
RC_FILES = (".bashrc", ".bash_profile", ".bash_login", ".profile", ".bash_logout", ".zshenv", ".zshrc")
_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def unavailable() -> str | None:
    """Why a lab cannot run here, or None."""
    for tool in ("sshd", "ssh", "ssh-keygen"):
        if _which(tool) is None:
            return f"{tool} is not installed (Debian package openssh-server / openssh-client)"
    return None


def namespaces_work() -> bool:
    """Root, and a private mount namespace can be made (not in every container)."""
    if os.geteuid() != 0 or _which("unshare") is None or _which("nsenter") is None:
        return False
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                       capture_output=True, timeout=60)
    return r.returncode == 0


def free_port() -> int:
    """A loopback port nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL if the test process dies, so nothing outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every process."""
    out: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        out[int(name)] = (int(stat.rsplit(")", 1)[1].split()[1]), comm)
    return out


def _descendants(pid: int) -> list[tuple[int, str]]:
    table = _proc_table()
    found: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, comm) in table.items():
            if ppid == parent:
                found.append((child, comm))
                todo.append(child)
    return found


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _unreaped(pid: int) -> bool:
    """Running, or a zombie its parent has yet to reap (not one left to PID 1, which in a
    container may reap nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" or fields[1] != "1"


def _banner(port: int) -> bool:
    """The port accepts a connection and sends an SSH identification line."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            data = b""
            while b"\n" not in data:
                chunk = s.recv(256)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"SSH-")
    except OSError:
        return False


class HostError(RuntimeError):
    """A host could not be started or controlled (the message holds the tail of its sshd log)."""


class Host:
    """One test host: its own sshd on 127.0.0.1:``port``, its own ``/srv``."""

    def __init__(self, lab: SSHLab, alias: str, *, rsync: bool, python: bool,
                 disk_mb: int | None, refuse_login: bool) -> None:
        self.lab = lab
        self.alias = alias
        self.dir = lab.dir / "hosts" / alias
        self.fs = self.dir / "fs"  # this host's "/" for the per-host paths
        self.key = self.dir / "ssh_host_ed25519_key"
        self.authorized_keys = self.dir / "authorized_keys"
        self.sshd_config = self.dir / "sshd_config"
        self.log_file = self.dir / "sshd.log"
        self.rsync = rsync
        self.python = python
        self.disk_mb = disk_mb
        self.port = 0
        self._sshd: subprocess.Popen[bytes] | None = None
        self._holder: subprocess.Popen[bytes] | None = None
        self._tmpfs = False
        self._paused = False
        self._orphans: list[int] = []  # commands whose sshd session was killed (fallback mode)
        (self.fs / SRV.lstrip("/")).mkdir(parents=True)
        if refuse_login:
            self.refuse_login()
        else:
            self.allow_login()
        self._keygen()

    # ------------------------------------------------------------ paths

    def path(self, p: str = SRV) -> Path:
        """Where this host's ``p`` (under /srv) is on this machine's disk."""
        norm = os.path.normpath(p)
        if not norm.startswith("/") or not (norm == SRV or norm.startswith(SRV + "/")):
            raise ValueError(f"only {SRV} is per host; {p!r} is not under it")
        return self.fs / norm.lstrip("/")

    def remote_path(self, p: str = SRV) -> str:
        """The name of this host's ``p`` in commands sent over ssh: ``p`` itself where hosts are
        isolated, else the per-host folder."""
        return p if self.lab.isolated else str(self.path(p))

    def dest(self, p: str = SRV + "/app") -> str:
        """``ALIAS:PATH`` for this host's ``p``, as the tool and rsync take it."""
        return f"{self.alias}:{self.remote_path(p)}"

    # ------------------------------------------------------------ life cycle

    @property
    def pid(self) -> int | None:
        """The listening sshd, while running."""
        return self._sshd.pid if self._sshd is not None and self._sshd.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        """Start sshd (on the port it had, if it had one) and wait until it answers and, unless
        its key is refused or its host key untrusted on purpose, until ``ssh ALIAS true`` works."""
        if self.running:
            return
        if self.lab.isolated and self._holder is None:
            self._make_namespace()
        keep_port = self.port != 0
        for _attempt in range(5):
            if not keep_port:
                self.port = free_port()
            self._write_sshd_config()
            self._spawn_sshd()
            try:
                self._await_ready()
                return
            except HostError:
                if keep_port or "Address already in use" not in self.log():
                    raise  # only a lost race for a free port is worth another try
        raise HostError(f"{self.alias}: no free port found; log:\n{self.log()[-2000:]}")

    def stop(self) -> None:
        """Terminate sshd and its sessions: new connections are refused, live ones drop. The
        host's disk stays (``start()`` brings it back on the same port)."""
        if self._sshd is None:
            return
        if self._sshd.poll() is None:
            self.resume()
            self.kill_sessions()
            self._sshd.terminate()
            try:
                self._sshd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._sshd.kill()
                self._sshd.wait(timeout=30)
        self._sshd = None

    def pause(self) -> None:
        """SIGSTOP the listening sshd: the kernel still accepts connections, but no SSH banner
        comes, so clients hang in the handshake (until their ConnectTimeout)."""
        assert self._sshd is not None
        os.kill(self._sshd.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        assert self._sshd is not None
        os.kill(self._sshd.pid, signal.SIGCONT)
        self._paused = False

    def kill_sessions(self, commands: bool = False) -> int:
        """SIGKILL the per-connection sshd processes (the listener's descendants), so every
        live connection drops at once; the commands they ran lose their connection but keep
        running unless ``commands``. Returns how many processes were killed."""
        if self._sshd is None:
            return 0
        gone: list[int] = []
        for pid, comm in reversed(_descendants(self._sshd.pid)):  # deepest first, so parents reap
            if comm.startswith("sshd") or commands:
                _kill(pid)
                gone.append(pid)
            else:
                self._orphans.append(pid)
        if commands:
            for pid in self.processes():
                _kill(pid)
                gone.append(pid)
        if not self._paused:
            # Give their parents a moment to reap them (no zombies left where PID 1 reaps none).
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not any(_unreaped(p) for p in gone), 5, "killed sessions to be reaped")
        return len(gone)

    def processes(self) -> list[int]:
        """Processes living on this host other than its sshd listener: sessions, commands they
        started (also ones whose session was killed), ``run()`` commands in progress."""
        own = {p.pid for p in (self._sshd, self._holder) if p is not None}
        if self._holder is not None:
            ns = self._namespace()
            pids = []
            for pid in _proc_table():
                try:
                    if os.readlink(f"/proc/{pid}/ns/mnt") == ns:
                        pids.append(pid)
                except OSError:
                    continue
        else:
            listener = self.pid
            pids = [pid for pid, _ in _descendants(listener)] if listener is not None else []
            pids += self._orphans
        return sorted(p for p in set(pids) if p not in own and process_running(p))

    def regenerate_host_key(self, trust: bool = False) -> None:
        """Restart sshd (same port, same disk) with a new host key. The lab's known_hosts keeps
        the old one unless ``trust``, so clients see "host key changed" and refuse."""
        was_running = self.running
        self.stop()
        self.key.unlink()
        Path(f"{self.key}.pub").unlink()
        self._keygen()
        if trust:
            self.trust_host_key()
        if was_running:
            self.start()

    def trust_host_key(self) -> None:
        """Put this host's current key in the lab's known_hosts (replacing the old one)."""
        self.lab._trusted[self.alias] = self.public_key()
        self.lab._write_known_hosts()

    def public_key(self) -> str:
        """The host key, ``TYPE BASE64``."""
        kind, b64 = Path(f"{self.key}.pub").read_text().split()[:2]
        return f"{kind} {b64}"

    def refuse_login(self) -> None:
        """Keys are refused from now on (an authorized_keys without the client key)."""
        self.authorized_keys.write_text("")

    def allow_login(self) -> None:
        self.authorized_keys.write_text(Path(f"{self.lab.client_key}.pub").read_text())

    def run(self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command on this host, as the test's user, without ssh (inside its mount
        namespace; in fallback mode simply here: pass paths through ``remote_path``)."""
        cmd = list(argv)
        if self._holder is not None:
            cmd = ["nsenter", "--mount", "--target", str(self._holder.pid), "--", *cmd]
        return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                              check=check)

    def log(self) -> str:
        """sshd's log (all its starts)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Kill everything on this host and drop its namespace and mounts."""
        try:
            if self._sshd is not None and self._sshd.poll() is None:
                self.resume()
                self.kill_sessions(commands=True)
            for _ in range(100):  # again while a dying command's children show up
                left = self.processes()
                if not left:
                    break
                for pid in left:
                    _kill(pid)
            for proc in (self._sshd, self._holder):
                if proc is not None:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait(timeout=30)
                    if proc.stdin is not None:
                        proc.stdin.close()
            self._sshd = self._holder = None
            for pid in self._orphans:
                _kill(pid)
        finally:
            if self._tmpfs:
                if subprocess.run(["umount", str(self.path())], capture_output=True).returncode:
                    subprocess.run(["umount", "-l", str(self.path())], capture_output=True)
                self._tmpfs = False

    # ------------------------------------------------------------ internals

    def _keygen(self) -> None:
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", f"sshlab-{self.alias}",
                        "-f", str(self.key)], check=True, capture_output=True, timeout=60)

    def _namespace(self) -> str:
        assert self._holder is not None
        return os.readlink(f"/proc/{self._holder.pid}/ns/mnt")

    def _hidden(self) -> dict[str, list[str]]:
        """Real PATH directory -> names to remove from it."""
        out: dict[str, list[str]] = {}
        for d in dict.fromkeys(os.path.realpath(d) for d in PATH_DIRS):
            if not os.path.isdir(d):
                continue
            names = sorted(n for n in os.listdir(d)
                           if (not self.rsync and n == "rsync")
                           or (not self.python and _PYTHON.fullmatch(n)))
            if names:
                out[d] = names
        return out

    def _make_namespace(self) -> None:
        """The holder: a process in a new mount namespace where /srv is this host's folder."""
        srv = self.path()
        if self.disk_mb is not None:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.disk_mb}m,mode=0755",
                            f"sshlab-{self.alias}", str(srv)], check=True, capture_output=True)
            self._tmpfs = True
        q = shlex.quote
        lines = ["set -e", f"mount --bind {q(str(srv))} {q(SRV)}"]
        hidden = self._hidden()
        if hidden:
            # Whiteouts (0/0 character devices) in an overlay's top layer hide those entries of
            # the layer below: the commands are gone, not merely unusable.
            wh = self.dir / "whiteouts"
            wh.mkdir()
            lines.append(f"mount -t tmpfs -o size=1m,mode=0755 sshlab-wh {q(str(wh))}")
            for i, (d, names) in enumerate(hidden.items()):
                layer = q(f"{wh}/{i}")
                lines.append(f"mkdir {layer}")
                lines += [f"mknod {layer}/{q(n)} c 0 0" for n in names]
                # Without overlayfs: a non-executable empty file over each (exec fails with 126).
                lines.append(f"mount -t overlay sshlab-hide -o ro,lowerdir={layer}:{q(d)} {q(d)} || "
                             "{ " + "; ".join(f"mount --bind {q(str(self.lab.empty))} {q(d + '/' + n)}"
                                              for n in names) + "; }")
        home = pwd.getpwuid(os.geteuid()).pw_dir
        for rc in RC_FILES:
            if os.path.isfile(os.path.join(home, rc)):
                lines.append(f"mount --bind {q(str(self.lab.empty))} {q(os.path.join(home, rc))}")
        lines += ["echo ready", "exec cat >/dev/null"]  # lives until the lab closes its stdin
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent)
        out = self._holder.stdout
        assert out is not None
        if out.readline() != b"ready\n":
            err = self._holder.communicate(timeout=30)[1].decode(errors="replace")
            self._holder = None
            raise HostError(f"{self.alias}: could not set up its mount namespace: {err.strip()}")
        out.close()

    def _write_sshd_config(self) -> None:
        root = os.geteuid() == 0
        self.sshd_config.write_text("\n".join([
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.key}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password" if root else "",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PidFile none",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "PermitUserRC no",
            "PermitUserEnvironment no",
            "X11Forwarding no",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "LoginGraceTime 60",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            "",
        ]))

    def _spawn_sshd(self) -> None:
        sshd = _which("sshd")
        assert sshd is not None
        sshd = os.path.realpath(sshd)  # sshd re-executes itself: it needs an absolute path
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation dir
        cmd = [sshd, "-D", "-e", "-f", str(self.sshd_config)]
        if self._holder is not None:
            cmd = ["nsenter", "--mount", "--target", str(self._holder.pid), "--", *cmd]
        with open(self.log_file, "ab") as log:
            log.write(f"---- sshlab: starting {self.alias} on port {self.port}\n".encode())
            log.flush()
            # nsenter execs sshd (no fork for a mount namespace): the pid is the listener's.
            self._sshd = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          preexec_fn=_die_with_parent)
        self.lab._refresh_config()

    def _await_ready(self) -> None:
        assert self._sshd is not None
        proc = self._sshd

        def up() -> bool:
            if proc.poll() is not None:
                raise HostError(f"{self.alias}: sshd exited ({proc.returncode}); log:\n"
                                f"{self.log()[-2000:]}")
            return _banner(self.port)

        wait_for(up, START_TIMEOUT, f"{self.alias}'s sshd to answer on port {self.port}")
        # A whole login too, unless the test made it fail on purpose (refused key, changed host key).
        if self.authorized_keys.read_text() and self.lab._trusted.get(self.alias) == self.public_key():
            r = self.lab.ssh(self.alias, "true", options=["-o", "BatchMode=yes"])
            if r.returncode != 0:
                raise HostError(f"{self.alias}: `ssh {self.alias} true` failed ({r.returncode}): "
                                f"{r.stderr.strip()}; sshd log:\n{self.log()[-2000:]}")


class SSHLab:
    """A set of test hosts and the client side to reach them (see the module's docstring)."""

    def __init__(self, isolate: bool | None = None) -> None:
        problem = unavailable()
        if problem:
            raise HostError(problem)
        self.isolated = namespaces_work() if isolate is None else isolate
        self.dir = Path(tempfile.mkdtemp(prefix="sshlab-"))
        os.chmod(self.dir, 0o700)
        self.hosts: dict[str, Host] = {}
        self._aliases: dict[str, int] = {}
        self._trusted: dict[str, str] = {}
        self.client_key = self.dir / "client_key"
        self.ssh_config = self.dir / "ssh_config"
        self.known_hosts = self.dir / "known_hosts"
        self.empty = self.dir / "empty"  # a non-executable empty file, to mask files with
        self.empty.write_text("")
        os.chmod(self.empty, 0o644)
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", "sshlab-client",
                        "-f", str(self.client_key)], check=True, capture_output=True, timeout=60)
        self._write_known_hosts()
        self._refresh_config()
        if self.isolated:
            os.makedirs(SRV, exist_ok=True)  # the mount point each host's folder goes over

    @property
    def ssh_command(self) -> str:
        """``ssh -F <lab>/ssh_config``: for ``--ssh`` and ``rsync -e``."""
        return f"ssh -F {shlex.quote(str(self.ssh_config))}"

    def ssh_argv(self, *options: str) -> list[str]:
        """``ssh -F <config> OPTIONS``: append the alias and the remote command."""
        return ["ssh", "-F", str(self.ssh_config), *options]

    def ssh(self, alias: str, command: str, *, options: Sequence[str] = (), input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``ssh -F <config> OPTIONS ALIAS COMMAND`` (a shell command line run by the host)."""
        return subprocess.run([*self.ssh_argv(*options), alias, command], input=input,
                              capture_output=True, text=True, timeout=timeout)

    def add_host(self, alias: str = "web1", *, rsync: bool = True, python: bool = True,
                 disk_mb: int | None = None, refuse_login: bool = False, start: bool = True) -> Host:
        """A new host named ``alias`` in ssh_config, started (unless ``start=False``)."""
        if alias in self.hosts or alias in self._aliases:
            raise ValueError(f"{alias} is already in the lab")
        if not self.isolated and not (rsync and python and disk_mb is None):
            pytest.skip("rsync=False, python=False and disk_mb need mount namespaces (root, unshare)")
        host = Host(self, alias, rsync=rsync, python=python, disk_mb=disk_mb, refuse_login=refuse_login)
        self.hosts[alias] = host
        self._trusted[alias] = host.public_key()
        self._write_known_hosts()
        if start:
            host.start()
        return host

    def add_alias(self, alias: str, port: int) -> None:
        """One more ``Host`` entry in ssh_config: ``alias`` is 127.0.0.1:``port`` (for example an
        ``unused_port()``, where nothing listens)."""
        if alias in self.hosts or alias in self._aliases:
            raise ValueError(f"{alias} is already in the lab")
        self._aliases[alias] = port
        self._refresh_config()

    def unused_port(self) -> int:
        """A loopback port where nothing listens (connections are refused)."""
        return free_port()

    def close(self) -> None:
        """Tear everything down; safe to call twice."""
        errors: list[BaseException] = []
        for host in self.hosts.values():
            try:
                host.close()
            except Exception as e:  # close the others anyway
                errors.append(e)
        if self.dir.exists():
            deadline = time.monotonic() + 30
            while True:
                try:
                    shutil.rmtree(self.dir)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)  # a killed process may still hold a mount for a moment
        if errors:
            raise errors[0]

    # ------------------------------------------------------------ internals

    def _write_known_hosts(self) -> None:
        self.known_hosts.write_text("".join(f"{alias} {key}\n" for alias, key in self._trusted.items()))

    def _refresh_config(self) -> None:
        entries = {**{a: h.port for a, h in self.hosts.items()}, **self._aliases}
        blocks = [f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  HostKeyAlias {alias}\n"
                  for alias, port in entries.items()]
        blocks.append("\n".join([
            "Host *",
            f"  User {self.user}",
            f"  IdentityFile {self.client_key}",
            "  IdentitiesOnly yes",
            "  PreferredAuthentications publickey",
            f"  UserKnownHostsFile {self.known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  CheckHostIP no",
            "  UpdateHostKeys no",
            "  ControlMaster no",
            "  ControlPath none",
            "",
        ]))
        tmp = self.ssh_config.with_name(".ssh_config.tmp")
        tmp.write_text("\n".join(blocks))
        os.replace(tmp, self.ssh_config)  # a client reading it never sees half a file

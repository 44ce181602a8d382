"""The system's OpenSSH client, driven the way Ansible's ssh connection plugin drives it.

So ``~/.ssh/config``, keys, the agent, ProxyJump and known_hosts work as the user set them.
One master connection per host (``ControlMaster``/``ControlPersist``, ``ControlPath`` with
``%C`` in a private 0700 folder) carries every command and transfer of one atomic-deploy run
and is closed at its end. ``BatchMode=yes``: never a prompt. Host key checking stays as the
user configured it (``--accept-new-host-keys`` adds ``StrictHostKeyChecking=accept-new``).
``ConnectTimeout`` bounds the connect and the banner exchange (a stopped sshd), and
``ServerAliveInterval`` finds a host that stops answering mid-operation.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import select
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any

from .._layout import show
from ..errors import ConnectFailed
from ._address import RemoteRoot
from ._bootstrap import BOOTSTRAP, EXIT_OLD_PYTHON
from ._ship import Tool

SSH_ENV = "ATOMIC_DEPLOY_SSH"
ALIVE_INTERVAL = 5  # seconds between keep-alives; 3 unanswered ones drop the connection
MASTER_PERSIST = 120  # an orphaned master (this process killed) goes away after this long


@dataclass
class SshSettings:
    command: list[str] = field(default_factory=lambda: ["ssh"])
    connect_timeout: float = 10.0
    accept_new_host_keys: bool = False
    python: str = "python3"

    @classmethod
    def from_text(cls, command: str | None, **kw: Any) -> SshSettings:
        text = command or os.environ.get(SSH_ENV) or "ssh"
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise ConnectFailed(f"--ssh {text!r}: {exc}", "nothing was changed") from None
        if not argv:
            raise ConnectFailed("--ssh is empty", "nothing was changed")
        return cls(command=argv, **kw)


@dataclass
class Probe:
    python: tuple[int, ...]
    have_tool: bool
    rsync: bool
    root_exists: bool
    config: bytes | None = None  # ROOT/atomic-deploy.toml on the host, if there is one
    config_error: str | None = None  # it exists but could not be read
    digests: bool = False  # the current release's manifest records content digests


class Connection:
    """One host: its master connection and the commands run over it."""

    def __init__(self, root: RemoteRoot, settings: SshSettings) -> None:
        self.root = root
        self.settings = settings
        self._dir: str | None = None
        self.master = False
        self._held: subprocess.Popen[bytes] | None = None  # the bootstrap waiting for a request

    # -- command lines ----------------------------------------------------------------------
    def ssh_options(self) -> list[str]:
        """Options every ssh of this connection gets (rsync's ``-e`` too)."""
        s = self.settings
        opts = ["-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={max(1, math.ceil(s.connect_timeout))}",
                "-o", f"ServerAliveInterval={ALIVE_INTERVAL}", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR"]
        if self._dir is not None:
            opts += ["-o", f"ControlPath={self._dir}/%C"]
        if s.accept_new_host_keys:
            opts += ["-o", "StrictHostKeyChecking=accept-new"]
        if self.root.port:
            opts += ["-p", str(self.root.port)]
        return opts

    def ssh_argv(self, remote_command: str, *, master: bool = False) -> list[str]:
        mux = ["-o", "ControlMaster=yes", "-o", f"ControlPersist={MASTER_PERSIST}"] if master \
            else ["-o", "ControlMaster=no"]
        return [*self.settings.command, *self.ssh_options(), *mux, "--",
                self.root.destination, remote_command]

    def rsh(self) -> str:
        """The ssh command as rsync's ``-e`` takes it (quoted words, over the master)."""
        return " ".join(shlex.quote(a) for a in
                        [*self.settings.command, *self.ssh_options(), "-o", "ControlMaster=no"])

    def _bootstrap_command(self) -> str:
        return f"exec {shlex.quote(self.settings.python)} -c {shlex.quote(BOOTSTRAP)}"

    @staticmethod
    def request(mode: str, root: str, tool: Tool, **extra: Any) -> bytes:
        req = {"mode": mode, "root": root, "name": tool.name, "sha256": tool.sha256, **extra}
        return json.dumps(req).encode() + b"\n"  # ASCII: non-UTF-8 paths travel as \udcXX

    # -- the connection ---------------------------------------------------------------------
    def connect(self, tool: Tool) -> Probe:
        """Open the master connection and ask the host what it has, in one round trip. The
        bootstrap that answered stays, waiting for the next request (an upload, the tool's
        run): the command that follows needs no channel, shell or Python start of its own."""
        self._dir = tempfile.mkdtemp(prefix="atomic-deploy-ssh-")  # 0700
        self._held = self._open(master=True)
        out = self._ask(self.request("probe", self.root.path, tool))
        self.master = True
        try:
            info = json.loads(out.splitlines()[-1])
            config = info.get("config")
            return Probe(tuple(info["python"]), bool(info["have"]), bool(info["rsync"]),
                         bool(info["root"]),
                         base64.b64decode(config) if isinstance(config, str) else None,
                         info.get("config_error"), bool(info.get("digests")))
        except (ValueError, KeyError, IndexError, TypeError):
            raise ConnectFailed(f"{self.root.label} answered the probe with {out[-200:]!r}; "
                                "is its login shell printing something?",
                                "nothing was changed") from None

    def install(self, tool: Tool, create_root: bool) -> None:
        """Upload the tool into ROOT/.atomic-deploy/bin (see _bootstrap)."""
        req = self.request("install", self.root.path, tool, size=len(tool.data),
                           create=create_root) + tool.data
        if self._held is not None:
            self._ask(req)
        else:
            self._call(req)

    def _open(self, *, master: bool = False) -> subprocess.Popen[bytes]:
        """The bootstrap on the host, stdin, stdout and stderr pipes. Its own session: a
        Ctrl-C on the terminal reaches only this process, which tells the host why it stops
        instead of just vanishing."""
        try:
            return subprocess.Popen(self.ssh_argv(self._bootstrap_command(), master=master),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise ConnectFailed(f"cannot run {show(self.settings.command[0])}: "
                                f"{exc.strerror or exc}", "nothing was changed") from None

    def _ask(self, data: bytes) -> str:
        """Send a request to the waiting bootstrap (``_held``); its answer line (and whatever
        a login script printed before it). Failures as _call's."""
        proc = self._held
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        timeout = self.settings.connect_timeout + 60
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(data)
            proc.stdin.flush()  # (a dead ssh: its exit status and stderr say why, below)
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        got = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._drop_held()
                raise ConnectFailed(f"{self.root.label} did not answer within {timeout:g} s",
                                    "nothing was changed")
            # Unbuffered, and the bootstrap writes nothing after its answer until it is asked
            # again: nothing of what follows is read here.
            chunk = os.read(fd, 65536)
            got += chunk
            if not chunk or (got.endswith(b"\n") and _answered(got)):
                break
        if not chunk:  # the bootstrap (or ssh) ended: why
            self._held = None
            _, err = proc.communicate()  # (stderr read to its end, however long)
            code = proc.returncode
            _close_all(proc)
            if code != 0:
                raise self.failure(code, err.decode("utf-8", "replace"))
        return got.decode("utf-8", "replace")

    def _drop_held(self) -> None:
        """End the waiting bootstrap: its input closed (it exits), the ssh reaped."""
        proc, self._held = self._held, None
        if proc is None:
            return
        _close_all(proc)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _call(self, stdin: bytes, *, master: bool = False) -> str:
        timeout = self.settings.connect_timeout + 60
        try:
            proc = subprocess.run(self.ssh_argv(self._bootstrap_command(), master=master),
                                  input=stdin, capture_output=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise ConnectFailed(f"{self.root.label} did not answer within {timeout:g} s",
                                "nothing was changed") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot run {show(self.settings.command[0])}: "
                                f"{exc.strerror or exc}", "nothing was changed") from None
        if proc.returncode != 0:
            raise self.failure(proc.returncode, proc.stderr.decode("utf-8", "replace"))
        return proc.stdout.decode("utf-8", "replace")

    def start(self, argv: list[str], tool: Tool, *, installed: bool,
              mutating: bool = False) -> subprocess.Popen[bytes]:
        """The tool running on the host with ``argv``: stdin, stdout and stderr are pipes,
        stdin already past the request (and, from memory, the tool's bytes). Run by the
        bootstrap that answered the probe when it still waits, else over a new channel."""
        if installed:
            head = self.request("run", self.root.path, tool, argv=argv, mutating=mutating)
        else:
            head = self.request("memrun", self.root.path, tool, argv=argv,
                                size=len(tool.data)) + tool.data
        proc, self._held = self._held, None
        if proc is None or proc.poll() is not None:
            if proc is not None:
                _close_all(proc)
            proc = self._open()
        assert proc.stdin is not None
        try:
            proc.stdin.write(head)
            proc.stdin.flush()
        except BrokenPipeError:  # the ssh died at once: its exit status and stderr say why
            with contextlib.suppress(OSError):
                proc.stdin.close()  # (and what is left in the buffer is not flushed again)
        return proc

    def close(self) -> None:
        """Close the master (``ssh -O exit``) and remove the control folder."""
        folder = self._dir
        if folder is None:
            return
        self._drop_held()  # asked nothing more (an error here before the command started)
        if self.master:
            cmd = [*self.settings.command, *self.ssh_options(), "-O", "exit", "--",
                   self.root.destination]
            # Not waited for (about 10 ms): a background shell tells the master to exit, then
            # removes the control folder. (If that fails, ControlPersist ends the master.)
            script = '("$@" </dev/null >/dev/null 2>&1; rm -rf -- "$0") &'
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["sh", "-c", script, folder, *cmd], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=30, check=True)
                self._dir = None
                self.master = False
                return
        shutil.rmtree(folder, ignore_errors=True)
        self._dir = None
        self.master = False

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- errors -------------------------------------------------------------------------------
    def failure(self, code: int, stderr: str) -> ConnectFailed:
        """One line for a failed ssh or bootstrap: what happened on which host, what to do."""
        label = self.root.label
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {code}"
        text = stderr
        nothing = "nothing was changed"
        if code == 255:
            if "HOST IDENTIFICATION HAS CHANGED" in text or ("Host key for" in text and \
                    "has changed" in text):
                return ConnectFailed(
                    f"the host key of {label} has changed since it was recorded in "
                    "known_hosts: refusing to connect (if the host was really reinstalled, "
                    f"check the new key and remove the old one: ssh-keygen -R {self.root.host})",
                    nothing)
            if "Host key verification failed" in text or "No ED25519 host key" in text or \
                    "host key is not known" in text:
                return ConnectFailed(
                    f"the host key of {label} is not in known_hosts: refusing to connect "
                    f"without checking it (connect once with ssh {self.root.destination} and "
                    "check the key, or pass --accept-new-host-keys)", nothing)
            if "Permission denied" in text or "Too many authentication failures" in text:
                return ConnectFailed(
                    f"{label} refused the login ({last}): check the user name, the key and "
                    "the ssh agent; atomic-deploy never asks for a password", nothing)
            if "Connection refused" in text:
                return ConnectFailed(f"nothing listens for ssh on {label} (connection refused)",
                                     nothing)
            if "timed out" in text.lower() or "Connection timed out" in text:
                return ConnectFailed(
                    f"{label} did not answer within {self.settings.connect_timeout:g} s "
                    "(--connect-timeout)", nothing)
            if "Could not resolve hostname" in text:
                return ConnectFailed(f"cannot resolve the host name {self.root.host!r}", nothing)
            return ConnectFailed(f"cannot connect to {label}: {last}", nothing)
        if code in (126, 127):
            return ConnectFailed(
                f"cannot run {self.settings.python} on {label} ({last}): atomic-deploy needs "
                "python3 3.9 or newer on the host (--remote-python PATH names another)", nothing)
        prefix = "atomic-deploy: error: "
        why = last[len(prefix):] if last.startswith(prefix) else last
        if code == EXIT_OLD_PYTHON:
            return ConnectFailed(f"{label}: {why}", nothing)
        return ConnectFailed(f"{label}: {why}", nothing)


def _answered(out: bytes) -> bool:
    """Whether ``out`` ends with the bootstrap's answer (a JSON object line), not only with
    what a login script printed before it."""
    last = out.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        return isinstance(json.loads(last), dict)
    except ValueError:
        return False


def _close_all(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()


def pump_lines(stream: IO[bytes], emit: Any) -> None:
    """Pass each line of ``stream`` to ``emit`` (as text) until it ends: a host's stderr."""
    for raw in iter(stream.readline, b""):
        emit(raw.decode("utf-8", "surrogateescape").rstrip("\n"))

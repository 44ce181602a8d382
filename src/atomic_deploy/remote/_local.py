"""A local root in a fleet (``deploy ./build web1:/srv/app /srv/local``), driven exactly like a
remote one: its session is this same tool run as a local subprocess (``python -m
atomic_deploy deploy --session ... SOURCE ROOT``), the same protocol on its stdin and stdout, no
ssh. It is self-sourced: it reads the build itself (copies the local folder, or fetches the
URL), so nothing is transferred to it. Its end of input ending (this process killed) undoes its
work by the same session rules as on a host.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from ._address import RemoteRoot
from ._ship import Tool
from ._ssh import Connection, Probe, SshSettings

# The tool's own package, wherever it was imported from (a venv, PYTHONPATH, the .pyz).
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class LocalRoot(RemoteRoot):
    """A root on this machine, as a member of a fleet."""

    @property
    def label(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def local_root(text: str) -> LocalRoot:
    return LocalRoot(host="localhost", path=os.path.abspath(text))


def tool_argv(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "atomic_deploy", *argv]


# A session's arguments travel as the first line of its stdin, as they do to a host, never on
# its command line (which every local user can read in ps): --header values are credentials.
_FROM_STDIN = ("import json, sys\n"
               "sys.argv = ['atomic-deploy', *json.loads(sys.stdin.buffer.readline())]\n"
               "from atomic_deploy._fastcli import run\n"
               "run()\n")


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_PARENT + (os.pathsep + path if path else "")
    # A fault injected into this process (tests) is this process's, as on a remote host.
    env.pop("ATOMIC_DEPLOY_FAULT", None)
    return env


class LocalConnection(Connection):
    """``Connection``'s interface for a local root: nothing to connect, the tool is here."""

    self_sourced = True  # its session reads the build itself: nothing is transferred

    def __init__(self, root: LocalRoot) -> None:
        super().__init__(root, SshSettings(command=["ssh"]))

    def probe_here(self) -> Probe:
        return Probe(python=tuple(sys.version_info[:3]), have_tool=True, rsync=False,
                     root_exists=os.path.isdir(self.root.path))

    def start(self, argv: list[str], tool: Tool | None = None, *, installed: bool = True,
              mutating: bool = False) -> subprocess.Popen[bytes]:
        # Its own session, as ssh is started: a Ctrl-C on the terminal reaches only this
        # process, which tells the session why it stops.
        proc = subprocess.Popen([sys.executable, "-c", _FROM_STDIN], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, env=tool_env())
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(argv).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:  # it died at once: its exit status and stderr say why
            with contextlib.suppress(OSError):
                proc.stdin.close()
        return proc

    def close(self) -> None:
        return None


def run_here(root: LocalRoot, argv: list[str]) -> tuple[int, str, list[str]]:
    """A one-shot command (status, list) on a local root: exit code, stdout, stderr lines."""
    proc = subprocess.run(tool_argv(argv), stdin=subprocess.DEVNULL, capture_output=True,
                          env=tool_env(), check=False)
    return (proc.returncode, proc.stdout.decode("utf-8", "surrogateescape"),
            proc.stderr.decode("utf-8", "replace").splitlines())

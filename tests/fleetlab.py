"""What the fleet tests share: the lab's environment for the CLI, and each host's root as seen
from here (every test host's /srv is its own folder, tests/sshlab.py)."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from conftest import run_cli
from sshlab import Host

APP = "/srv/app"


def env(**extra: str) -> dict[str, str]:
    """The environment the ``lab`` fixture set up (tool cache, ssh command), plus ``extra``."""
    return {**{k: os.environ[k] for k in ("XDG_CACHE_HOME", "ATOMIC_DEPLOY_SSH")}, **extra}


def cli(*args: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 180)
    kw.setdefault("env", env())
    return run_cli(*args, **kw)


def dests(hosts: list[Host]) -> list[str]:
    return [h.dest(APP) for h in hosts]


def current(h: Host) -> str | None:
    link = h.path(APP) / "current"
    return os.readlink(link) if os.path.islink(link) else None

"""Shared helpers: builds, running the real CLI in a subprocess, snapshots of a root on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("ATOMIC_DEPLOY_FAULT", None)
    if extra:
        env.update(extra)
    return env


def run_cli(*args: str | os.PathLike[str], fault: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m atomic_deploy ARGS` and return the finished process (text output)."""
    extra = dict(env or {})
    if fault:
        extra["ATOMIC_DEPLOY_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "atomic_deploy", *map(str, args)],
        env=cli_env(extra), capture_output=True, text=True, timeout=timeout,
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
def builds(tmp_path: Path) -> Callable[[str], Path]:
    """builds('v2') -> a build folder whose files name v2."""
    def make(version: str) -> Path:
        return make_build(tmp_path / "builds" / version, version=version)
    return make


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "www"

"""Build the Ansible collection atomic_deploy.core (ansible_collections/atomic_deploy/core).

The collection carries the single-file tool its module sends to each host: the same
deterministic build, named the same way, that remote roots upload (atomic_deploy.remote._ship).
It is written into the collection's files/ for the build and removed afterwards, so the source
tree holds no built file. Needs ansible-galaxy (ansible-core) on PATH or beside this Python.

    python tools/build_collection.py [--output-path dist]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTION = os.path.join(HERE, "ansible_collections", "atomic_deploy", "core")
sys.path.insert(0, os.path.join(HERE, "src"))

from atomic_deploy._version import __version__  # noqa: E402
from atomic_deploy.remote import _ship  # noqa: E402


def ansible_galaxy() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
    found = beside if os.path.exists(beside) else shutil.which("ansible-galaxy")
    if found is None:
        sys.exit("build_collection: ansible-galaxy not found (pip install ansible-core)")
    return found


def galaxy_version() -> str:
    with open(os.path.join(COLLECTION, "galaxy.yml"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("version:"):
                return line.split(":", 1)[1].strip()
    raise SystemExit("build_collection: galaxy.yml has no version")


def build(output: str) -> str:
    """Build the collection into ``output``; returns the tarball's path."""
    if galaxy_version() != __version__:
        sys.exit(f"build_collection: galaxy.yml's version {galaxy_version()} is not the "
                 f"tool's {__version__}")
    files = os.path.join(COLLECTION, "files")
    for old in glob.glob(os.path.join(files, "atomic-deploy-*.pyz")):
        os.unlink(old)
    data = _ship.build()
    tool = _ship._named(data)
    pyz = os.path.join(files, tool.name)
    with open(pyz, "wb") as f:
        f.write(data)
    try:
        os.makedirs(output, exist_ok=True)
        subprocess.run([ansible_galaxy(), "collection", "build", "--force", "--output-path",
                        output, COLLECTION], check=True, stdout=subprocess.DEVNULL)
    finally:
        os.unlink(pyz)
    return os.path.join(output, f"atomic_deploy-core-{__version__}.tar.gz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-path", default=os.path.join(HERE, "dist"))
    print(build(os.path.abspath(ap.parse_args().output_path)))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Build dist/atomic-deploy.pyz: the whole tool as one executable file.

    python3 tools/build_pyz.py [--output PATH]

Needs only a stock python3 (3.9 or newer): the archive is made with the standard ``zipapp``
module from ``src/atomic_deploy``, and runs anywhere a python3 3.9+ is on PATH::

    ./dist/atomic-deploy.pyz deploy ./build /var/www/app
    python3 dist/atomic-deploy.pyz --version

The archive's own ``__main__.py`` (written here, not zipapp's ``main=`` wrapper, which drops
the return value) ends with ``sys.exit(main())``, so the exit status is the documented exit code.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "atomic_deploy"
DEFAULT_OUTPUT = REPO / "dist" / "atomic-deploy.pyz"
INTERPRETER = "/usr/bin/env python3"
MIN_PYTHON = (3, 9)

# Runs before the package is imported, so it must parse and run on any Python, even 2.7:
# an old interpreter gets one line and exit status 1, not a traceback.
MAIN_PY = """\
# -*- coding: utf-8 -*-
# Entry point of atomic-deploy.pyz (written by tools/build_pyz.py).
import sys

if sys.version_info < {min_python!r}:
    sys.stderr.write(
        "atomic-deploy: error: needs Python {min_text} or newer; this is Python %s (%s)\\n"
        % (sys.version.split()[0], sys.executable or "python")
    )
    sys.exit(1)

from atomic_deploy._fastcli import run

run()
"""


def package_version(package: Path = PACKAGE) -> str:
    """``__version__`` from the package's ``__init__.py``, read without importing it."""
    text = (package / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if not match:
        raise SystemExit(f"build_pyz: no __version__ in {package / '__init__.py'}")
    return match.group(1)


def build(output: Path, package: Path = PACKAGE) -> Path:
    """Write the archive to ``output`` (atomically: a temp file renamed into place)."""
    if not (package / "cli.py").is_file():
        raise SystemExit(f"build_pyz: {package} does not look like the atomic_deploy package")
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="atomic-deploy-pyz.") as tmp:
        staging = Path(tmp) / "app"
        shutil.copytree(package, staging / "atomic_deploy",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        main_py = MAIN_PY.format(min_python=MIN_PYTHON,
                                 min_text=".".join(map(str, MIN_PYTHON)))
        (staging / "__main__.py").write_text(main_py, encoding="utf-8")
        partial = output.with_name(f".{output.name}.partial.{os.getpid()}")
        try:
            zipapp.create_archive(staging, partial, interpreter=INTERPRETER, compressed=True)
            # zipapp adds only the owner's execute bit; give it to everyone who may read it.
            mode = partial.stat().st_mode
            partial.chmod(mode | (mode & 0o444) >> 2)
            os.replace(partial, output)
        finally:
            if partial.exists():
                partial.unlink()
    return output


def smoke_test(archive: Path, version: str) -> str:
    """Run ``archive --version`` with this interpreter, isolated (``-I``: no user site, no
    PYTHONPATH), and check that it names ``version``; returns what it printed."""
    proc = subprocess.run([sys.executable, "-I", str(archive), "--version"],
                          capture_output=True, text=True, timeout=60, check=False)
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out.startswith(f"atomic-deploy {version} "):
        raise SystemExit(f"build_pyz: `{archive} --version` exited {proc.returncode} and printed "
                         f"{out!r}, expected atomic-deploy {version}:\n{proc.stderr.strip()}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build_pyz.py",
        description="Build atomic-deploy as one executable zipapp file (Python 3.9+, stdlib only).",
    )
    parser.add_argument("--output", "-o", metavar="PATH", type=Path, default=DEFAULT_OUTPUT,
                        help="where to write the archive (default: dist/atomic-deploy.pyz in "
                             "the repository)")
    args = parser.parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        parser.error(f"needs Python 3.9 or newer (the archive's own minimum); this is "
                     f"{sys.version.split()[0]}")
    archive = build(args.output)
    said = smoke_test(archive, package_version())
    print(f"built {archive} ({archive.stat().st_size / 1024:.0f} KB): {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

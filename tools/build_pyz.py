#!/usr/bin/env python3
"""Build dist/atomic-deploy.pyz: the whole tool as one executable file.

    python3 tools/build_pyz.py [--output PATH]

Needs a python3 3.9 or newer: the archive is made with the standard ``zipapp`` module from
``src/atomic_deploy``, and runs anywhere a python3 3.9+ is on PATH::

    ./dist/atomic-deploy.pyz deploy ./build /var/www/app
    python3 dist/atomic-deploy.pyz --version

The archive's own ``__main__.py`` (written here, not zipapp's ``main=`` wrapper, which drops
the return value) ends with ``sys.exit(main())``, so the exit status is the documented exit code.

Config files are TOML, read with the standard ``tomllib`` on Python 3.11+ and with ``tomli``
before that. The archive must read them on 3.9 and 3.10 too, so ``tomli`` (pure Python, MIT
licence) goes into it, next to ``atomic_deploy/``, with its licence file as ``tomli/LICENSE``:
taken from the ``tomli`` installed for the interpreter running this script, or else downloaded
as its pure-Python wheel with ``pip download`` (the package index must then be reachable).
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
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "atomic_deploy"
DEFAULT_OUTPUT = REPO / "dist" / "atomic-deploy.pyz"
INTERPRETER = "/usr/bin/env python3"
MIN_PYTHON = (3, 9)
TOMLI = "tomli>=1.1"  # as in pyproject.toml's dependencies
_LICENCE_NAMES = ("LICENSE", "LICENCE", "COPYING")

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
    """``__version__`` from the package's ``_version.py``, read without importing it."""
    text = (package / "_version.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if not match:
        raise SystemExit(f"build_pyz: no __version__ in {package / '_version.py'}")
    return match.group(1)


def _tomli_file(rel: str) -> bool:
    """Whether a path inside tomli's distribution belongs in the archive: its Python sources
    and py.typed (compiled modules some wheels also carry cannot be imported from a zip)."""
    parts = rel.split("/")
    return len(parts) == 2 and parts[0] == "tomli" and (parts[1].endswith(".py")
                                                        or parts[1] == "py.typed")


def _is_licence(rel: str) -> bool:
    parts = rel.split("/")
    return parts[0].endswith(".dist-info") and parts[-1].upper().startswith(_LICENCE_NAMES)


def _write_tomli(dest: Path, files: dict[str, bytes], where: str) -> str:
    """Write tomli's sources and licence (``files``: path in the distribution -> content) under
    ``dest``; returns tomli's version."""
    sources = {rel: data for rel, data in files.items() if _tomli_file(rel)}
    licences = [data for rel, data in sorted(files.items()) if _is_licence(rel)]
    if "tomli/__init__.py" not in sources or "tomli/_parser.py" not in sources or not licences:
        raise SystemExit(f"build_pyz: tomli from {where} has no Python sources or no licence "
                         "file")
    for rel, data in sources.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    (dest / "tomli" / "LICENSE").write_bytes(licences[0])
    match = re.search(rb"""^__version__\s*=\s*["']([^"']+)["']""", sources["tomli/__init__.py"],
                      re.MULTILINE)
    return match.group(1).decode() if match else "unknown"


def _installed_tomli() -> tuple[dict[str, bytes], str] | None:
    """tomli's files as installed for this interpreter, if it is installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution("tomli")
    except metadata.PackageNotFoundError:
        return None
    files = {}
    for f in dist.files or []:
        rel = f.as_posix()
        if _tomli_file(rel) or _is_licence(rel):
            files[rel] = Path(str(dist.locate_file(f))).read_bytes()
    if "tomli/_parser.py" not in files:  # a compiled-only install: use the pure wheel instead
        return None
    return files, f"the installed tomli ({dist.locate_file('')})"


def _downloaded_tomli(tmp: Path) -> tuple[dict[str, bytes], str]:
    """tomli's pure-Python wheel, fetched with pip for the oldest Python the archive runs on."""
    wheels = tmp / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "--implementation", "py", "--abi", "none",
         "--platform", "any", "--python-version", ".".join(map(str, MIN_PYTHON)),
         "--dest", str(wheels), TOMLI],
        capture_output=True, text=True, timeout=600, check=False)
    found = sorted(wheels.glob("tomli-*.whl")) if wheels.is_dir() else []
    if proc.returncode != 0 or not found:
        raise SystemExit("build_pyz: tomli is not installed for this Python and `pip download "
                         f"{TOMLI}` failed (install it: {sys.executable} -m pip install "
                         f"'{TOMLI}'):\n{proc.stderr.strip()[-2000:]}")
    with zipfile.ZipFile(found[-1]) as z:
        files = {n: z.read(n) for n in z.namelist() if _tomli_file(n) or _is_licence(n)}
    return files, f"{found[-1].name}, downloaded"


def bundle_tomli(dest: Path, scratch: Path) -> str:
    """Put tomli and its licence under ``dest``; returns a note of which version, from where."""
    files, where = _installed_tomli() or _downloaded_tomli(scratch)
    return f"tomli {_write_tomli(dest, files, where)} from {where}"


def build(output: Path, package: Path = PACKAGE) -> tuple[Path, str]:
    """Write the archive to ``output`` (atomically: a temp file renamed into place); returns
    its path and which tomli went into it."""
    if not (package / "cli.py").is_file():
        raise SystemExit(f"build_pyz: {package} does not look like the atomic_deploy package")
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="atomic-deploy-pyz.") as tmp:
        staging = Path(tmp) / "app"
        shutil.copytree(package, staging / "atomic_deploy",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        tomli = bundle_tomli(staging, Path(tmp))
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
    return output, tomli


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
        description="Build atomic-deploy as one executable zipapp file (Python 3.9+; tomli "
                    "bundled for reading config files before 3.11).",
    )
    parser.add_argument("--output", "-o", metavar="PATH", type=Path, default=DEFAULT_OUTPUT,
                        help="where to write the archive (default: dist/atomic-deploy.pyz in "
                             "the repository)")
    args = parser.parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        parser.error(f"needs Python 3.9 or newer (the archive's own minimum); this is "
                     f"{sys.version.split()[0]}")
    archive, tomli = build(args.output)
    said = smoke_test(archive, package_version())
    print(f"built {archive} ({archive.stat().st_size / 1024:.0f} KB, with {tomli}): {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

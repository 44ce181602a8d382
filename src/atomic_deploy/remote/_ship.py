"""The single-file tool this machine uploads to a host: made from the installed package.

Content-addressed: the file's name carries the version and the first 16 hex digits of its
sha256, and the host checks the whole digest before every use. Built deterministically (sorted
members, fixed timestamps), so the same installed package always gives the same bytes and one
upload serves every later command; cached in ``$XDG_CACHE_HOME/atomic-deploy`` (else
``~/.cache/atomic-deploy``) under a key made of the package files' names, sizes and mtimes.

``tomli`` (the TOML parser Python 3.9 and 3.10 lack) goes in when it is installed here, so a
host with an older python3 reads its config file too.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile
from dataclasses import dataclass

from .._version import __version__

_EPOCH = (1980, 1, 1, 0, 0, 0)

# The archive's entry point; parses on any Python so an old one gets one line, not a traceback.
MAIN_PY = """\
# -*- coding: utf-8 -*-
# Entry point of atomic-deploy.pyz.
import sys

if sys.version_info < (3, 9):
    sys.stderr.write(
        "atomic-deploy: error: needs Python 3.9 or newer; this is Python %s (%s)\\n"
        % (sys.version.split()[0], sys.executable or "python")
    )
    sys.exit(1)

from atomic_deploy._fastcli import run

run()
"""


@dataclass(frozen=True)
class Tool:
    name: str  # atomic-deploy-<version>-<sha256[:16]>.pyz
    sha256: str
    data: bytes


def _package_files() -> list[tuple[str, str]]:
    """(name in the archive, path on disk) of every module to ship."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(here):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py") or name == "py.typed":
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, os.path.dirname(here)).replace(os.sep, "/")
                out.append((rel, path))
    try:
        import tomli  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return out
    tdir = os.path.dirname(os.path.abspath(tomli.__file__))
    for name in sorted(os.listdir(tdir)):
        if name.endswith(".py") or name == "py.typed":
            out.append((f"tomli/{name}", os.path.join(tdir, name)))
    return out


def _running_archive() -> str | None:
    """The .pyz this process runs from, if it runs from one: shipped as it is."""
    loader = getattr(sys.modules[__name__.rsplit(".", 2)[0]], "__loader__", None)
    archive = getattr(loader, "archive", None)
    return archive if isinstance(archive, str) and os.path.isfile(archive) else None


def build() -> bytes:
    """The archive's bytes, the same for the same files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        members = [("__main__.py", None), *_package_files()]
        for rel, path in sorted(members, key=lambda m: m[0]):
            info = zipfile.ZipInfo(rel, _EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            if path is None:
                data = MAIN_PY.encode()
            else:
                with open(path, "rb") as f:
                    data = f.read()
            z.writestr(info, data)
    return b"#!/usr/bin/env python3\n" + buf.getvalue()


def _cache_dir() -> str:
    from .._platform import user_cache_dir

    return user_cache_dir()


def _fingerprint() -> str:
    h = hashlib.sha256(__version__.encode())
    for rel, path in _package_files():
        st = os.stat(path)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:24]


def tool() -> Tool:
    """The tool to ship, from the cache when the installed files have not changed."""
    archive = _running_archive()
    if archive is not None:
        with open(archive, "rb") as f:
            data = f.read()
        return _named(data)
    key = _fingerprint()
    cache = os.path.join(_cache_dir(), f"build-{key}.pyz")
    try:
        with open(cache, "rb") as f:
            return _named(f.read())
    except OSError:
        pass
    data = build()
    try:  # a cache that cannot be written only costs the next command a build
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        tmp = f"{cache}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, cache)
    except OSError:
        pass
    return _named(data)


def _named(data: bytes) -> Tool:
    digest = hashlib.sha256(data).hexdigest()
    return Tool(f"atomic-deploy-{__version__}-{digest[:16]}.pyz", digest, data)

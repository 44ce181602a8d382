"""Deterministic synthetic builds for the benchmarks (standard library only).

- ``web``: a web-app-like build, by default 20,000 files / ~224 MB in 800 folders: mostly small
  text assets (JS chunks, CSS, HTML, JSON, source maps), some images and fonts, a few large
  bundles; a couple of symlinks and an empty folder, as real builds have.
- ``nm``: a node_modules-like build, by default 200,000 files in ~20,000 folders: many tiny
  files (package.json, README, index.js, .d.ts), deep nesting, ``.bin`` symlinks.
- ``changed_copy``: an exact copy of a build (content, modes, mtimes) in which a given fraction
  of the files got new content and a new mtime, as an incremental rebuild would leave it.

File content is cheap pseudo-random bytes (a pool of random blocks at seeded offsets, plus a
per-file header) so that no two files are equal and nothing compresses or deduplicates by
accident; generation is bounded by the disk, not by Python.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

MB = 1024 * 1024
_POOL_SIZE = 8 * MB
BASE_MTIME = 1_700_000_000  # fixed, so two generations of the same data set are identical


def _pool(seed: int) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(_POOL_SIZE) if hasattr(rnd, "randbytes") else os.urandom(_POOL_SIZE)


def _content(pool: bytes, rnd: random.Random, size: int, tag: str) -> bytes:
    head = f"/* {tag} */\n".encode()
    if size <= len(head):
        return head[:size]
    out = [head]
    left = size - len(head)
    while left > 0:
        n = min(left, _POOL_SIZE // 2)
        off = rnd.randrange(0, _POOL_SIZE - n)
        out.append(pool[off:off + n])
        left -= n
    return b"".join(out)


def _write(path: str, data: bytes, mode: int, mtime: int) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def _web_sizes(rnd: random.Random, files: int, total: int) -> list[int]:
    # Log-normal sizes (median ~4 KB) plus a handful of big bundles, scaled to the target total.
    sizes = [max(0, int(rnd.lognormvariate(8.3, 1.4))) for _ in range(files)]
    for i in rnd.sample(range(files), max(1, files // 2000)):
        sizes[i] = rnd.randint(1 * MB, 6 * MB)
    scale = total / max(1, sum(sizes))
    return [max(0, int(s * scale)) for s in sizes]


def make_web(path: str, files: int = 20_000, total_mb: int = 224, dirs: int = 800,
             seed: int = 1) -> None:
    """The 20k-file web build (created fresh at ``path``)."""
    rnd = random.Random(seed)
    pool = _pool(seed)
    os.makedirs(path)
    folders = [""]
    top = ["assets", "static", "js", "css", "img", "fonts", "locales", "docs", "api", "media"]
    while len(folders) < dirs:
        parent = rnd.choice(folders[: max(1, len(folders))])
        if parent.count("/") >= 5:
            continue
        name = rnd.choice(top) if parent == "" else f"d{len(folders):04d}"
        rel = os.path.join(parent, name) if parent else name
        if rel in folders:
            rel = f"{rel}{len(folders)}"
        folders.append(rel)
        os.makedirs(os.path.join(path, rel), exist_ok=True)
    exts = [".js", ".js", ".js", ".css", ".html", ".json", ".map", ".png", ".svg", ".woff2"]
    for i, size in enumerate(_web_sizes(rnd, files, total_mb * MB)):
        rel = os.path.join(rnd.choice(folders), f"f{i:06d}{rnd.choice(exts)}")
        mode = 0o755 if i % 500 == 0 else 0o644
        _write(os.path.join(path, rel), _content(pool, rnd, size, rel), mode,
               BASE_MTIME + rnd.randrange(0, 86400))
    os.makedirs(os.path.join(path, "empty", "folder"))
    os.symlink("index.html", os.path.join(path, "default.html"))
    _write(os.path.join(path, "index.html"), b"<!doctype html><h1>bench</h1>\n", 0o644, BASE_MTIME)
    _set_dir_times(path)


def make_nm(path: str, files: int = 200_000, total_mb: int = 600, seed: int = 2) -> None:
    """The node_modules-like build: ~10 files per package folder, nested dependencies."""
    rnd = random.Random(seed)
    pool = _pool(seed)
    nm = os.path.join(path, "node_modules")
    os.makedirs(os.path.join(nm, ".bin"))
    avg = total_mb * MB // files
    made = 0
    pkg = 0
    stack = [nm]
    while made < files:
        parent = stack[-1] if rnd.random() < 0.6 else rnd.choice(stack)
        pdir = os.path.join(parent, f"pkg{pkg:06d}")
        pkg += 1
        os.makedirs(os.path.join(pdir, "lib"))
        os.makedirs(os.path.join(pdir, "dist"))
        names = ["package.json", "README.md", "LICENSE", "index.js", "index.d.ts"]
        names += [f"lib/m{j}.js" for j in range(rnd.randint(1, 6))]
        names += [f"dist/b{j}.js" for j in range(rnd.randint(0, 4))]
        for name in names:
            size = max(0, int(rnd.expovariate(1 / avg)))
            _write(os.path.join(pdir, name), _content(pool, rnd, size, name), 0o644,
                   BASE_MTIME + rnd.randrange(0, 86400))
            made += 1
            if made >= files:
                break
        if pkg % 7 == 0:
            os.symlink(os.path.relpath(os.path.join(pdir, "index.js"), os.path.join(nm, ".bin")),
                       os.path.join(nm, ".bin", f"tool{pkg}"))
        if pdir.count(os.sep) - nm.count(os.sep) < 8 and rnd.random() < 0.3:
            sub = os.path.join(pdir, "node_modules")
            os.makedirs(sub, exist_ok=True)
            stack.append(sub)
        if len(stack) > 1 and rnd.random() < 0.25:
            stack.pop()
    _set_dir_times(path)


def _set_dir_times(path: str) -> None:
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        os.utime(dirpath, (BASE_MTIME, BASE_MTIME))


def changed_copy(src: str, dst: str, fraction: float, seed: int = 3) -> int:
    """Copy ``src`` to ``dst`` exactly, then rewrite ``fraction`` of its files; returns how many."""
    if shutil.which("cp"):
        subprocess.run(["cp", "-a", src, dst], check=True)
    else:  # pragma: no cover - every benchmark host has cp
        shutil.copytree(src, dst, symlinks=True)
    regular = sorted(
        os.path.join(d, f) for d, _ds, fs in os.walk(dst) for f in fs
        if not os.path.islink(os.path.join(d, f))
    )
    rnd = random.Random(seed)
    pool = _pool(seed)
    chosen = rnd.sample(regular, max(1, int(len(regular) * fraction)))
    for p in chosen:
        st = os.stat(p)
        # Same size half of the time: the unchanged-file test must not rely on size alone.
        size = st.st_size if rnd.random() < 0.5 else st.st_size + rnd.randint(1, 4096)
        _write(p, _content(pool, rnd, size, "changed " + p), st.st_mode & 0o7777,
               BASE_MTIME + 10 * 86400 + rnd.randrange(0, 86400))
    _set_dir_times(dst)
    return len(chosen)


def describe(path: str) -> tuple[int, int, int]:
    """(regular files, folders, bytes) under ``path``."""
    nfiles = ndirs = nbytes = 0
    for d, ds, fs in os.walk(path):
        ndirs += len(ds)
        for f in fs:
            st = os.lstat(os.path.join(d, f))
            if not os.path.islink(os.path.join(d, f)):
                nfiles += 1
                nbytes += st.st_size
    return nfiles, ndirs, nbytes

"""Shared data (Capistrano ``linked_dirs``/``linked_files``, Deployer ``shared_dirs``/``files``).

``ROOT/shared/PATH`` is linked into each new release, by a relative symlink, while the release is
still staged, so it is in place before the release can become reachable. A shared folder that
does not exist yet is seeded from the release's own copy (Deployer), or created empty; a shared
file that does not exist is an error before anything is switched (Capistrano), unless
``create_missing``. The release's own copy is removed only inside the staged release, and
nothing here ever deletes or rewrites anything under ``ROOT/shared``.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Callable

from ._layout import Layout, random_suffix, remove_entry, show
from .errors import InvalidInput

SHARED = "shared"


def shared_root(layout: Layout) -> str:
    return os.path.join(layout.root, SHARED)


def normalize(path: str) -> str:
    """A shared path relative to the release: no absolute path, no '..', not empty."""
    norm = posixpath.normpath(path.strip())
    if (not path.strip() or os.path.isabs(path) or norm in (".", "") or norm.startswith("../")
            or norm == ".." or "\0" in path or norm.split("/")[0] == ".atomic-deploy"):
        raise InvalidInput(f"invalid shared path {show(path)!r}: give a path inside the release, "
                           "like storage or config/.env", "nothing was changed")
    return norm


def check_files_exist(layout: Layout, files: list[str], create_missing: bool) -> None:
    """Fail before any copying if a shared file is missing (Capistrano's behaviour)."""
    if create_missing:
        return
    for rel in files:
        target = os.path.join(shared_root(layout), normalize(rel))
        if not os.path.isfile(target):
            raise InvalidInput(
                f"shared file {show(os.path.join(SHARED, rel))} does not exist in ROOT; create it, "
                "or pass --create-missing to start with an empty file",
                "nothing was changed",
            )


def _real_parents(base: str, rel: str) -> str:
    """Create the folders leading to ``base/rel`` inside the staged release, refusing to go
    through a symlink (which could point anywhere, even outside ROOT)."""
    cur = base
    for part in rel.split("/")[:-1]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidInput(f"cannot link shared path {show(rel)}: {show(part)} in the release "
                               "is not a real folder")
    return cur


def link_shared(
    layout: Layout,
    staged: str,
    dirs: list[str],
    files: list[str],
    create_missing: bool,
    copy: Callable[[str, str], object],
) -> list[str]:
    """Seed and link shared paths into the staged release; returns what was done, in words."""
    done: list[str] = []
    base = shared_root(layout)
    for kind, paths in (("dir", dirs), ("file", files)):
        for raw in paths:
            rel = normalize(raw)
            target = os.path.join(base, rel)
            inrel = os.path.join(staged, rel)
            parent = _real_parents(staged, rel)
            if not os.path.lexists(target):
                done.append(_seed(target, inrel, kind, create_missing, copy))
            elif kind == "dir" and not os.path.isdir(target):
                raise InvalidInput(f"{show(os.path.join(SHARED, rel))} exists but is not a folder")
            elif kind == "file" and os.path.isdir(target):
                raise InvalidInput(f"{show(os.path.join(SHARED, rel))} is a folder, not a file")
            remove_entry(parent, os.path.basename(rel))
            # Relative from the link's folder: the release may live at its staged name now and at
            # releases/<id> later, at the same depth, so the same text works in both places.
            os.symlink(os.path.relpath(target, parent), inrel)
            done.append(f"linked {rel} -> {SHARED}/{rel}")
    return done


def _seed(target: str, inrel: str, kind: str, create_missing: bool,
          copy: Callable[[str, str], object]) -> str:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = os.path.join(os.path.dirname(target), f".atomic-deploy-seed.{random_suffix()}")
    try:
        if kind == "dir":
            own = os.path.lexists(inrel) and stat.S_ISDIR(os.lstat(inrel).st_mode)
            os.mkdir(tmp, 0o700)
            if own:
                copy(inrel, tmp)
            else:
                os.chmod(tmp, 0o755)
            os.rename(tmp, target)
            return (f"seeded {SHARED}/{os.path.basename(target)} from the release" if own
                    else f"created empty {SHARED} folder for {os.path.basename(target)}")
        if not create_missing:  # checked up front too; kept here for direct API callers
            raise InvalidInput(f"shared file {show(target)} does not exist")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o644)
        os.close(fd)
        os.rename(tmp, target)
        return f"created empty shared file {os.path.basename(target)}"
    except BaseException:
        if os.path.lexists(tmp):
            remove_entry(os.path.dirname(tmp), os.path.basename(tmp))
        raise

"""Shared data (Capistrano ``linked_dirs``/``linked_files``, Deployer ``shared_dirs``/``files``).

``ROOT/shared/PATH`` is linked into each new release, by a relative symlink, while the release is
still staged, so it is in place before the release can become reachable. A shared folder that
does not exist yet is seeded from the release's own copy (Deployer), or created empty; a shared
file that does not exist is an error before anything is switched (Capistrano), unless
``create_missing``. The release's own copy is removed only inside the staged release, and
nothing here ever deletes or rewrites anything under ``ROOT/shared``.

A path whose type is not the one asked for (a file in the release or in ``shared/`` given as
``--shared-dir``, a folder as ``--shared-file``) is refused before anything is seeded: linking
it anyway would serve an empty folder or file in place of the release's content. ``shared/``
and the folders under it are never symlinks (seeding would write through them, out of ROOT);
a shared entry itself may be one (it is only ever linked to, never written through).
"""

from __future__ import annotations

import os
import posixpath
import stat

from ._jsonfile import random_suffix
from ._layout import Layout, remove_entry, show
from .errors import InvalidInput

TYPE_CHECKING = False  # typing costs start-up time at every deploy
if TYPE_CHECKING:
    from typing import Callable

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


_FLAG = {"dir": "--shared-dir", "file": "--shared-file"}
_WORD = {"dir": "a folder", "file": "a file"}


def _kind_of(st: os.stat_result) -> str:
    return "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"


def _shared_folders(layout: Layout, rel: str, create: bool) -> str:
    """``ROOT/shared`` and the folders under it on the way to ``rel``, refusing a symlink among
    them (seeding would write through it, out of ROOT) and, with ``create``, making the missing
    ones; returns the folder that holds ``rel``."""
    cur = shared_root(layout)
    parts = [SHARED, *rel.split("/")[:-1]]
    for i, part in enumerate(parts):
        if i:
            cur = os.path.join(cur, part)
        shown = show("/".join(parts[:i + 1]))
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create:
                return cur
            os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise InvalidInput(f"ROOT/{shown} is a symlink; refusing to use it (shared data is "
                               "kept inside ROOT: make it a real folder)", "nothing was changed")
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidInput(f"ROOT/{shown} exists but is not a folder", "nothing was changed")
    return cur


def _check_shared_entry(layout: Layout, kind: str, rel: str) -> bool:
    """Whether ``shared/rel`` exists; refuses one of the other type (a symlink there is followed:
    it is never written through)."""
    _shared_folders(layout, rel, create=False)
    target = os.path.join(shared_root(layout), rel)
    if not os.path.lexists(target):
        return False
    try:
        have = _kind_of(os.stat(target))
    except OSError:
        have = "other"  # a dangling symlink
    if have != kind:
        other = next(k for k in _FLAG if k != kind)
        what = _WORD.get(have, "neither a file nor a folder")
        hint = (f"; move it aside, or share it as {_WORD[other]} with {_FLAG[other]} {show(rel)}"
                if have == other else "")
        raise InvalidInput(f"{show(os.path.join(SHARED, rel))} is {what}, but {_FLAG[kind]} "
                           f"{show(rel)} asks for {_WORD[kind]}{hint}",
                           "nothing was changed")
    return True


def check_shared(layout: Layout, dirs: list[str], files: list[str],
                 create_missing: bool) -> None:
    """Before any copying: no symlink on the way into ``shared/``, no shared entry of the other
    type, and every shared file present unless ``create_missing`` (Capistrano's behaviour)."""
    for kind, paths in (("dir", dirs), ("file", files)):
        for raw in paths:
            rel = normalize(raw)
            if not _check_shared_entry(layout, kind, rel) and kind == "file" \
                    and not create_missing:
                raise InvalidInput(
                    f"shared file {show(os.path.join(SHARED, rel))} does not exist in ROOT; "
                    "create it, or pass --create-missing to start with an empty file",
                    "nothing was changed",
                )


def _check_release_entry(staged: str, kind: str, rel: str) -> None:
    """The release's own copy of a shared path must be of the type asked for: a file linked as
    a shared folder would be replaced by an empty folder, a folder (a web root) linked as a
    shared file by an empty file, and the deploy would report success."""
    cur = staged
    parts = rel.split("/")
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return
        last = i == len(parts) - 1
        if not last:
            if not stat.S_ISDIR(st.st_mode):
                raise InvalidInput(f"cannot link shared path {show(rel)}: {show(part)} in the "
                                   "release is not a real folder")
            continue
        have = "link" if stat.S_ISLNK(st.st_mode) else _kind_of(st)
        if have in ("link", kind):
            return  # the release's own symlink is replaced, as it always was
        other = next(k for k in _FLAG if k != kind)
        if have == other:
            raise InvalidInput(f"{show(rel)} is {_WORD[other]} in the release, but "
                               f"{_FLAG[kind]} {show(rel)} links {_WORD[kind]} there; use "
                               f"{_FLAG[other]} {show(rel)}")
        raise InvalidInput(f"{show(rel)} in the release is neither a file nor a folder")


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
    wanted = [(kind, normalize(raw)) for kind, paths in (("dir", dirs), ("file", files))
              for raw in paths]
    # Every path checked before anything is seeded or removed: a mistake in the last one must
    # not leave the first ones half done.
    for kind, rel in wanted:
        _check_release_entry(staged, kind, rel)
        _check_shared_entry(layout, kind, rel)
    for kind, rel in wanted:
        target = os.path.join(base, rel)
        inrel = os.path.join(staged, rel)
        parent = _real_parents(staged, rel)
        if not _check_shared_entry(layout, kind, rel):
            _shared_folders(layout, rel, create=True)
            done.append(_seed(target, inrel, kind, create_missing, copy))
        remove_entry(parent, os.path.basename(rel))
        # Relative from the link's folder: the release may live at its staged name now and at
        # releases/<id> later, at the same depth, so the same text works in both places.
        os.symlink(os.path.relpath(target, parent), inrel)
        done.append(f"linked {rel} -> {SHARED}/{rel}")
    return done


def _seed(target: str, inrel: str, kind: str, create_missing: bool,
          copy: Callable[[str, str], object]) -> str:
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

"""``adopt``: migrate a root whose ``current`` is a real folder (legacy layouts, capistrano #1398).

With an atomic exchange the folder moves into ``releases/<id>`` and ``current`` becomes a link
without any instant at which ``current/...`` fails to resolve:

1. ``releases/<id>`` is made a symlink to ``../.atomic-deploy/tmp/adopt.<r>``, and
   ``tmp/adopt.<r>`` a symlink with the text ``releases/<id>``;
2. exchange ``tmp/adopt.<r>`` <-> ``current``: ``current`` is now the link, and resolves through
   ``releases/<id>`` to the folder, which now sits at ``tmp/adopt.<r>``;
3. exchange ``tmp/adopt.<r>`` <-> ``releases/<id>``: the folder is at ``releases/<id>``;
4. remove the leftover link.

Without one (BSDs, filesystems that refuse it): rename the folder into ``releases/<id>``, then
rename a new link over ``current``; readers see ``current`` missing between the two renames.
Both ways are journaled: after a crash the next command finishes the migration.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import _platform
from ._history import record
from ._layout import Layout, check_root_for_write, random_suffix, read_current, show
from ._recovery import clear_journal, write_journal
from ._signals import checkpoint
from ._switch import link_text, point_current
from .errors import InvalidInput

if TYPE_CHECKING:
    from .operations import _Session

ADOPT_STEPS = ("lock-acquired", "adopt-links-made", "adopt-exchanged", "adopt-moved")


def check_adoptable(root: str, release: str | None) -> Layout:
    layout = Layout(os.path.abspath(root))
    kind = read_current(layout).kind
    if kind == "symlink":
        raise InvalidInput(f"{show(layout.current)} is already a symlink; nothing to adopt",
                           "nothing was changed")
    if kind != "directory":
        raise InvalidInput(f"{show(layout.current)} is not a folder ({kind}); nothing to adopt",
                           "nothing was changed")
    return check_root_for_write(root, create=False, allow_current_dir=True)


def adopt_locked(s: _Session, rid: str, use_exchange: bool) -> str:
    layout = s.layout
    method = _platform.exchange_name() if use_exchange else None
    tmp_name = f"adopt.{random_suffix()}"
    journal: dict[str, Any] = {"op": "adopt", "release": rid, "tmp": tmp_name,
                               "method": method or "rename", "pid": os.getpid()}
    write_journal(layout, journal)
    if method is not None:
        try:
            _exchange_way(layout, rid, tmp_name)
        except OSError as exc:
            if read_current(layout).kind != "directory":
                raise  # something moved: recovery from the journal finishes it
            _cleanup_links(layout, rid, tmp_name)
            method = None
            journal["method"] = "rename"
            journal["exchange_error"] = exc.strerror
            write_journal(layout, journal)
    if method is None:
        os.rename(layout.current, layout.release(rid))
        checkpoint("adopt-moved")
        point_current(layout, link_text(rid))
        _platform.fsync_dir(layout.releases)
        method = "two-step rename (current briefly absent)"
    record(layout, "adopt", "ok", release=rid, method=method)
    clear_journal(layout)
    return method


def _exchange_way(layout: Layout, rid: str, tmp_name: str) -> None:
    tmp = os.path.join(layout.tmp, tmp_name)
    os.symlink(os.path.join("..", ".atomic-deploy", "tmp", tmp_name), layout.release(rid))
    os.symlink(link_text(rid), tmp)
    checkpoint("adopt-links-made")
    _platform.exchange(tmp, layout.current)
    checkpoint("adopt-exchanged")
    _platform.exchange(tmp, layout.release(rid))
    checkpoint("adopt-moved")
    os.unlink(tmp)
    _platform.fsync_dir(layout.releases)
    _platform.fsync_dir(layout.root)
    _platform.fsync_dir(layout.tmp)


def _cleanup_links(layout: Layout, rid: str, tmp_name: str) -> None:
    for path in (layout.release(rid), os.path.join(layout.tmp, tmp_name)):
        if os.path.islink(path):
            os.unlink(path)


def finish_adopt(layout: Layout, journal: dict[str, Any]) -> str:
    """Crash recovery: wherever the migration stopped, complete it (the folder is never lost)."""
    rid = str(journal.get("release"))
    tmp = os.path.join(layout.tmp, str(journal.get("tmp")))
    rel = layout.release(rid)
    cur = read_current(layout)
    if cur.kind == "directory":
        _cleanup_links(layout, rid, str(journal.get("tmp")))  # nothing moved yet
        return "nothing had moved; current is still the original folder"
    if os.path.isdir(tmp) and not os.path.islink(tmp) and os.path.islink(rel):
        _platform.exchange(tmp, rel)  # step 3 of the exchange way
    if os.path.islink(tmp):
        os.unlink(tmp)
    if os.path.isdir(rel) and not os.path.islink(rel) and cur.kind == "absent":
        point_current(layout, link_text(rid))  # two-step way stopped between its renames
    return f"migration completed; current -> {read_current(layout).target}"

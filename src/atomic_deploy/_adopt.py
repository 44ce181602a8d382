"""``adopt``: migrate a root whose ``current`` is a real folder (legacy layouts, capistrano #1398).

With an atomic exchange the folder moves into ``releases/<id>`` and ``current`` becomes a link
in one step, so there is no instant at which ``current/...`` fails to resolve:

1. ``releases/<id>`` is made a symlink whose text is what ``current`` must hold
   (``releases/<id>``: meaningless where it is, as nothing resolves it there);
2. exchange ``releases/<id>`` <-> ``current``: the folder is at ``releases/<id>`` and ``current``
   is the link to it. A reader looks ``current`` up once and gets either the folder or the link;
   both lead to the same folder, which is complete and stays where it is.

(An earlier design went through a second temp link and two exchanges; a reader that had read
the first link's text before the second exchange could then find its target gone: ENOENT.)

Without one (BSDs, filesystems that refuse it): rename the folder into ``releases/<id>``, then
rename a new link over ``current``; readers see ``current`` missing between the two renames.
Both ways are journaled: after a crash the next command finishes the migration.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import _platform
from ._history import SERVED, record
from ._layout import Layout, check_root_for_write, read_current, show
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
    journal: dict[str, Any] = {"op": "adopt", "release": rid, "method": method or "rename",
                               "pid": os.getpid()}
    write_journal(layout, journal)
    if method is not None:
        try:
            _exchange_way(layout, rid)
        except OSError as exc:
            if read_current(layout).kind != "directory":
                raise  # something moved: recovery from the journal finishes it
            _cleanup_links(layout, rid, None)
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
    record(layout, "adopt", "ok", release=rid, method=method, states={rid: SERVED})
    clear_journal(layout)
    return method


def _exchange_way(layout: Layout, rid: str) -> None:
    rel = layout.release(rid)
    os.symlink(link_text(rid), rel)  # what current will be, created where the folder will be
    checkpoint("adopt-links-made")
    _platform.exchange(rel, layout.current)
    checkpoint("adopt-exchanged")
    _platform.fsync_dir(layout.releases)
    _platform.fsync_dir(layout.root)
    checkpoint("adopt-moved")


def _cleanup_links(layout: Layout, rid: str, tmp_name: str | None) -> None:
    paths = [layout.release(rid)]
    if tmp_name:  # a journal of the earlier two-exchange design
        paths.append(os.path.join(layout.tmp, tmp_name))
    for path in paths:
        if os.path.islink(path):
            os.unlink(path)


def finish_adopt(layout: Layout, journal: dict[str, Any]) -> str:
    """Crash recovery: wherever the migration stopped, complete it (the folder is never lost)."""
    rid = str(journal.get("release"))
    tmp_name = journal.get("tmp")  # set only by the earlier two-exchange design
    rel = layout.release(rid)
    cur = read_current(layout)
    if cur.kind == "directory":
        _cleanup_links(layout, rid, tmp_name if isinstance(tmp_name, str) else None)
        return "nothing had moved; current is still the original folder"
    if isinstance(tmp_name, str):
        tmp = os.path.join(layout.tmp, tmp_name)
        if os.path.isdir(tmp) and not os.path.islink(tmp) and os.path.islink(rel):
            _platform.exchange(tmp, rel)  # its second exchange
        if os.path.islink(tmp):
            os.unlink(tmp)
    if os.path.isdir(rel) and not os.path.islink(rel) and cur.kind == "absent":
        point_current(layout, link_text(rid))  # two-step way stopped between its renames
    _platform.fsync_dir(layout.releases)
    _platform.fsync_dir(layout.root)
    return f"migration completed; current -> {read_current(layout).target}"

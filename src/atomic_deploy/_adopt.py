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
Both ways are journaled: after a crash the next command finishes the migration
(_recovery.finish_adopt). A signal or an error stops it where it is safe: before the folder
moved, the link is removed and nothing changed; after, the migration is finished on the spot
(current is never left missing or half-made).
"""

from __future__ import annotations

import os
from typing import Any

from . import _platform
from ._history import SERVED, now_iso, record
from ._layout import Layout, check_root_for_write, read_current, show
from ._recovery import (
    _error_for,
    clear_journal,
    describe_current,
    finish_adopt,
    remove_adopt_links,
    write_journal,
)
from ._signals import checkpoint
from ._switch import link_text, point_current
from .errors import InterruptedBySignal, InvalidInput, OperationFailed

ADOPT_STEPS = ("lock-acquired", "adopt-links-made", "adopt-exchanged", "adopt-moved",
               "committed")


def check_adoptable(root: str, release: str | None) -> Layout:
    check_current_is_folder(Layout(os.path.abspath(root)))
    return check_root_for_write(root, create=False, allow_current_dir=True)


def check_current_is_folder(layout: Layout) -> None:
    """Checked before taking the lock (a quick refusal) and again holding it: another adopt
    may have moved the folder meanwhile, and adopting its link would make current dangle."""
    kind = read_current(layout).kind
    if kind == "symlink":
        raise InvalidInput(f"{show(layout.current)} is already a symlink; nothing to adopt",
                           "nothing was changed")
    if kind != "directory":
        raise InvalidInput(f"{show(layout.current)} is not a folder ({kind}); nothing to adopt",
                           "nothing was changed")


def adopt_locked(layout: Layout, rid: str, use_exchange: bool) -> str:
    """The migration itself, under the lock; returns the method used."""
    method = _platform.exchange_name() if use_exchange else None
    journal: dict[str, Any] = {"op": "adopt", "release": rid, "method": method or "rename",
                               "pid": os.getpid(), "started": now_iso()}
    write_journal(layout, journal)
    try:
        method = _migrate(layout, rid, journal, method)
    except BaseException as exc:
        raise _stopped(layout, rid, journal, exc) from None
    record(layout, "adopt", "ok", release=rid, method=method, states={rid: SERVED})
    clear_journal(layout)
    try:
        checkpoint("committed")
    except InterruptedBySignal as exc:
        raise InterruptedBySignal(
            exc.signum, f"the adopt had completed; {describe_current(layout)}") from None
    return method


_TWO_STEP = "two-step rename (current briefly absent)"


def _migrate(layout: Layout, rid: str, journal: dict[str, Any], method: str | None) -> str:
    if method is not None:
        try:
            _exchange_way(layout, rid)
            return method
        except OSError as exc:
            if read_current(layout).kind != "directory":
                raise  # something moved: _stopped finishes it
            remove_adopt_links(layout, rid, None)
            journal["method"] = "rename"
            journal["exchange_error"] = exc.strerror
            write_journal(layout, journal)
    os.rename(layout.current, layout.release(rid))
    checkpoint("adopt-moved")
    point_current(layout, link_text(rid))
    _platform.fsync_dir(layout.releases)
    return _TWO_STEP


def _stopped(layout: Layout, rid: str, journal: dict[str, Any],
             exc: BaseException) -> BaseException:
    """Deal with a signal or error mid-adopt; return the error to raise, naming the state.

    Before the folder moved, undoing is safe (remove the link made for the exchange); after,
    undoing would mean moving the live folder back, so the migration is finished instead and
    recorded as done.
    """
    try:
        if read_current(layout).kind == "directory":
            remove_adopt_links(layout, rid, None)
            _platform.fsync_dir(layout.releases)
            clear_journal(layout)
            state = "nothing was changed; current is still the original folder"
        else:
            finish_adopt(layout, journal)
            method = journal.get("method")
            record(layout, "adopt", "ok", release=rid,
                   method=_TWO_STEP if method == "rename" else method, states={rid: SERVED})
            clear_journal(layout)
            state = f"the folder was adopted as releases/{rid} anyway; " \
                    f"{describe_current(layout)}"
    except OSError as cleanup_exc:
        # The journal stays: the next command holding the lock finishes the migration.
        return OperationFailed(
            f"adopt failed ({exc}) and settling it failed too ({cleanup_exc})",
            "the next atomic-deploy command on this root will finish the migration")
    return _error_for(exc, "adopt", state)


def _exchange_way(layout: Layout, rid: str) -> None:
    rel = layout.release(rid)
    os.symlink(link_text(rid), rel)  # what current will be, created where the folder will be
    checkpoint("adopt-links-made")
    _platform.exchange(rel, layout.current)
    checkpoint("adopt-exchanged")
    _platform.fsync_dir(layout.releases)
    _platform.fsync_dir(layout.root)
    checkpoint("adopt-moved")

"""The switch: a symlink at a unique temp name, then one rename(2) over ``current``.

``rename`` replaces the old link in one step, so a reader resolving ``current`` sees the old
release or the new one, never nothing. ``ln -sfn`` on macOS, the BSDs and busybox instead unlinks
and re-creates, leaving a gap. Temp names are random and created exclusively (symlink fails on
EEXIST), so a stale or planted link can never be what gets renamed into place.
"""

from __future__ import annotations

import contextlib
import os

from . import _platform
from ._jsonfile import random_suffix
from ._layout import RELEASES, Layout

TYPE_CHECKING = False  # typing costs start-up time at every deploy
if TYPE_CHECKING:
    from typing import Callable


def link_text(release: str) -> str:
    return f"{RELEASES}/{release}"


def _make_temp_link(layout: Layout, target: str) -> str:
    for _ in range(100):
        tmp = os.path.join(layout.tmp, f"current.{random_suffix()}")
        try:
            os.symlink(target, tmp)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temp link in {layout.tmp}")


def point_current(
    layout: Layout,
    target: str | None,
    checkpoint: Callable[[str], None] = lambda step: None,
) -> None:
    """Make ``current`` a link with exactly ``target`` as text (None: no ``current`` at all)."""
    if target is None:
        try:
            os.unlink(layout.current)
        except FileNotFoundError:
            return
        _platform.fsync_dir(layout.root)
        return
    tmp = _make_temp_link(layout, target)
    try:
        checkpoint("temp-link-created")
        os.replace(tmp, layout.current)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    checkpoint("switched")
    _platform.fsync_dir(layout.root)
    checkpoint("switch-synced")


def switch_to_release(
    layout: Layout, release: str, checkpoint: Callable[[str], None] = lambda step: None
) -> None:
    point_current(layout, link_text(release), checkpoint)

"""What both command-line entry points (_fastcli, cli) do once the reader of stdout is gone."""

from __future__ import annotations

import sys


def drop_stdout() -> None:
    """Point stdout at /dev/null so that nothing fails again when it is flushed at exit."""
    import contextlib
    import os

    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

"""The library's log messages (logger ``atomic_deploy``), without importing ``logging`` where no
one configured it.

Used as a library, every message goes to ``logging.getLogger("atomic_deploy")`` as it always
did (``logging`` is imported at the first one). The command line instead installs a sink for the
length of a command (``set_sink``): messages at or above its level go straight to it, the way
the logger with only the CLI's handler on it and no propagation passed them on before, and a
deploy no longer pays about 4 ms for ``logging`` (with ``traceback``, ``threading``, ``string``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs start-up time at every command
if TYPE_CHECKING:
    from typing import Callable

    Sink = tuple[int, Callable[[int, str], None]]

DEBUG = 10
INFO = 20
WARNING = 30

_sink: Sink | None = None


def set_sink(sink: Sink | None) -> Sink | None:
    """Send messages at or above ``sink[0]`` to ``sink[1](level, message)`` (None: back to
    ``logging``); returns the sink that was set before."""
    global _sink
    before, _sink = _sink, sink
    return before


def _emit(level: int, msg: str, args: tuple[object, ...]) -> None:
    sink = _sink
    if sink is not None:
        if level >= sink[0]:
            sink[1](level, msg % args if args else msg)
        return
    import logging

    logging.getLogger("atomic_deploy").log(level, msg, *args, stacklevel=3)  # the caller's line


def debug(msg: str, *args: object) -> None:
    _emit(DEBUG, msg, args)


def info(msg: str, *args: object) -> None:
    _emit(INFO, msg, args)


def warning(msg: str, *args: object) -> None:
    _emit(WARNING, msg, args)

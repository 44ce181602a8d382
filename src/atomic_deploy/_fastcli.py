"""The command line's entry point: answers ``status``, ``list`` and ``--version`` before argparse
is loaded.

Building the full parser (argparse, logging, every subcommand's options) costs several times
what an empty interpreter does, so the two read-only commands run from here when given in
their plain forms::

    atomic-deploy status ROOT [--json] [-q] [--no-color]
    atomic-deploy list ROOT [--json] [-q] [--no-color]
    atomic-deploy --version

Everything else (other commands, other options, any spelling argparse would read differently,
and every error) goes to ``cli.main``, which is the one parser and the one error handler: an
error here only means the command is run again there, which is safe because these commands only
read. The output is the same either way; tests/test_fastcli.py compares the two.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

_FLAGS = ("--json", "-q", "--quiet", "--no-color")  # status and list have no others but -v


def run() -> NoReturn:
    """The program's entry (console script, ``python -m``, the .pyz): main(), then exit.

    Exits without the interpreter's teardown: after a deploy, freeing every module and object
    one by one takes about 10 ms (measured with strace: no system call in that time), which is
    all the work left. Safe because nothing is left to it: files, locks, worker threads and
    processes are closed, joined and reaped by the operations themselves, the CLI's log
    sink is reset, and the output streams are flushed here.
    """
    import contextlib
    import gc

    # Start-up allocates only what lives until exit (modules, functions, parsers, the parsed
    # history), so collections during it find nothing to free: about 1 ms of `status` and 3 ms
    # of a deploy. main() turns them back on before the full CLI runs a command.
    gc.disable()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # closed by the caller (`>&-`)
            continue
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away: what it read was all it wanted
            pass
        except OSError as exc:  # disk full: say so where it can still be said
            code = code or 1
            if stream is sys.stdout and sys.stderr is not None:
                with contextlib.suppress(OSError):
                    sys.stderr.write(f"atomic-deploy: error: could not write the output "
                                     f"({exc.strerror or exc})\n")
                    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    code = _quick(args)
    if code is not None:
        return code
    import gc

    from .cli import main as full

    if not gc.isenabled():  # off since run(): what exists now is kept for good, so collections
        gc.freeze()  # from here on (the command's own garbage) never walk it again
        gc.enable()
    return full(args)


def version_text() -> str:
    """What ``--version`` prints: cli.version_text()'s words, without importing ``platform``
    (which imports ``re``): os.uname() is where platform.system(), release() and machine() read
    them on POSIX, and sys.version starts with what platform.python_version() returns."""
    from ._version import __version__

    u = os.uname()
    return (f"atomic-deploy {__version__} (Python {sys.version.split()[0]}, "
            f"{u.sysname} {u.release} {u.machine})")


def _quick(args: list[str]) -> int | None:
    """The exit code, or None when cli.main must handle the command."""
    if args == ["--version"] and hasattr(os, "uname"):
        return _write(version_text(), 0)
    if len(args) < 2 or args[0] not in ("status", "list"):
        return None
    roots = [a for a in args[1:] if a not in _FLAGS]
    if len(roots) != 1 or roots[0].startswith("-") or not roots[0]:
        return None  # missing or extra arguments, other options, "--": argparse decides
    if ":" in roots[0].split("/", 1)[0] or roots[0].startswith("ssh://"):
        return None  # a remote root (host:/path): over ssh, by cli.main
    as_json = "--json" in args
    quiet = "-q" in args or "--quiet" in args
    code = 0
    try:
        from . import _render, query

        # Only the output that is printed is built: 1,000 rows cost as much as the JSON.
        out: str | list[str] | None = None
        if args[0] == "status":
            s = query.status(roots[0])
            code = _render.status_exit_code(s)
            if as_json:
                out = _json_out("status", s.to_dict())
            elif not quiet:
                out = _render.format_status(s)
        else:
            rows = query.release_rows(roots[0])
            if as_json:
                out = _render.list_json(rows)
            elif not quiet:
                out = _render.format_rows(rows)
    except KeyboardInterrupt:  # as cli.main says it
        print("atomic-deploy: interrupted; nothing was changed", file=sys.stderr)
        return 130
    except Exception:
        return None
    return _write(out, code)


def _json_out(command: str, payload: dict[str, Any]) -> str:
    from ._jsonfile import dumps
    from ._render import envelope

    return dumps(envelope(command, payload))


def _write(text: str | list[str] | None, code: int) -> int | None:
    """Write ``text`` (or its pieces, one after the other) and a newline to stdout: ``code``,
    or None when cli.main must run the command again to report what went wrong in its words."""
    if sys.stdout is None:  # closed by the caller: nothing to write to, as print() does
        return code
    try:
        if text is not None:
            for piece in (text,) if isinstance(text, str) else text:
                sys.stdout.write(piece)  # not text + "\n": a copy of 1,000 releases' rows
            sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`| head`): the output just ends
        from ._stdout import drop_stdout

        drop_stdout()
    except OSError:  # disk full: cli.main says so, in its words
        return None
    return code

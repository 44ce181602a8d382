"""The command line's entry point: answers ``status``, ``list``, ``--version`` and a plain
``deploy`` before argparse is loaded.

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

A deploy changes the root, so it is never run twice: whether it runs here is decided from the
arguments alone, before anything is done::

    atomic-deploy deploy SOURCE ROOT [-q] [--json] [--no-color] [--no-fsync] [--keep N|all]
                                     [-m TEXT]

with SOURCE a local path, ROOT a local root without a config file, and each option given once
in exactly that spelling (what argparse would read the same way). The options, the output and
every error's message and exit code then come from the same code as cli.main's (``_clicore``,
and ``cli._failure`` for errors, imported only when one happens).
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
    # of a deploy. main() turns them back on before the full CLI or the quick deploy runs one.
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
    if args[:1] == ["deploy"]:
        deploy = _deploy_args(args)
        return None if deploy is None else _deploy(deploy)
    if len(args) < 2 or args[0] not in ("status", "list"):
        return None
    roots = [a for a in args[1:] if a not in _FLAGS]
    if len(roots) != 1 or roots[0].startswith("-") or not roots[0]:
        return None  # missing or extra arguments, other options, "--": argparse decides
    if ":" in roots[0].split("/", 1)[0] or roots[0].startswith(("ssh://", "@")):
        return None  # a remote root (host:/path) or a named fleet (@NAME): by cli.main
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


class _Args:
    """The attributes of argparse's Namespace that a deploy reads (the others: None)."""

    def __init__(self) -> None:
        self.command = "deploy"
        self.source: str | None = None
        self.root: str | None = None

    def __getattr__(self, name: str) -> Any:  # an option not given
        if name.startswith("__"):
            raise AttributeError(name)
        return None


# The flags the quick deploy reads as argparse would: store_true ones (--no-fsync stores False
# in ``fsync``), and the ones taking a value.
_DEPLOY_FLAGS = {"-q": "quiet", "--quiet": "quiet", "--json": "json", "--no-color": "no_color",
                 "--no-fsync": "fsync"}
_DEPLOY_VALUES = {"--keep": "keep", "-m": "message", "--message": "message"}


def _deploy_args(args: list[str]) -> _Args | None:
    """``deploy SOURCE ROOT`` with only the options above, each once, as _Args; None for
    anything else (cli.main reads it)."""
    ns = _Args()
    paths: list[int] = []
    given: set[str] = set()
    i = 1
    while i < len(args):
        a = args[i]
        if a in _DEPLOY_FLAGS:
            setattr(ns, _DEPLOY_FLAGS[a], a != "--no-fsync")
        elif a in _DEPLOY_VALUES:
            dest = _DEPLOY_VALUES[a]
            if dest in given or i + 1 == len(args):
                return None
            value = args[i + 1]
            if value.startswith("-") or (dest == "keep" and not (
                    value == "all" or (value.isascii() and value.isdigit()))):
                return None  # argparse's reading (or its error) decides
            given.add(dest)
            setattr(ns, dest, value if dest == "message" or value == "all" else int(value))
            i += 1
        elif a.startswith("-") or not a:
            return None  # another option, "--", "-"
        else:
            paths.append(i)
        i += 1
    if len(paths) != 2 or paths[1] != paths[0] + 1:
        return None
    ns.source, ns.root = args[paths[0]], args[paths[1]]
    if ":" in ns.source or ":" in ns.root.split("/", 1)[0] or ns.root.startswith(
            ("ssh://", "@")):
        return None  # a URL source, a remote root (host:/path), a named fleet (@NAME)
    from ._config import FILENAME

    if os.path.lexists(os.path.join(ns.root, FILENAME)):
        return None  # a config file: whatever it says, cli.main reads it
    return ns


def _deploy(args: _Args) -> int:
    """What cli.main does for ``deploy SOURCE ROOT``, without the parser."""
    import gc

    from . import _clicore, _log
    from .operations import deploy

    if not gc.isenabled():  # as main() does before the full CLI runs a command
        gc.freeze()
        gc.enable()
    if sys.stderr is None:  # started with fd 2 closed: errors and hook output go nowhere
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    _clicore._out.reset(sys.stdout, args)
    _clicore._err.reset(sys.stderr, args)
    level = _log.WARNING if args.quiet else _log.INFO
    saved = _log.set_sink((level, _clicore._log_line))
    try:
        try:
            opts = _clicore._options(args, args.root)
            progress = _clicore._progress_for(args, args.source)
            opts.progress = progress
            try:
                r = deploy(args.source, args.root or "", opts)
            finally:
                if progress is not None:
                    progress.close()
            _clicore._staged(args, "deploy", r)
            return 0
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            from .cli import _failure

            return _failure(args, exc)
    finally:
        _log.set_sink(saved)


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

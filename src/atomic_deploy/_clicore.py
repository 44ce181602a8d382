"""The command line's pieces that need no argument parser: the output streams and their colours,
DeployOptions from flags and the config file, and what a deploy prints. Shared by ``cli`` and the
quick deploy of ``_fastcli``, so that both say and do exactly the same; ``args`` is argparse's
Namespace there, an object with the same attributes here."""

from __future__ import annotations

import contextlib
import os
import sys

from . import _log
from ._jsonfile import dumps
from ._layout import show
from ._render import envelope, human_bytes
from ._stdout import drop_stdout
from .errors import InvalidInput

TYPE_CHECKING = False  # typing costs start-up time at every command
if TYPE_CHECKING:
    from typing import Any, ClassVar


class _OutputError(Exception):
    """The result could not be written to stdout (disk full, I/O error): reported by _main with
    what the command did, since the operation itself may have completed."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc.strerror or str(exc))


def _out_line(text: str, end: str = "\n") -> None:
    """Write a result to stdout. A reader that went away (`| head`, `| true`) just ends the
    output: the command's exit code stays what the operation's outcome was. Other write errors
    raise _OutputError. A closed stdout (None) takes nothing, as print() does."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.write(text + end)
        sys.stdout.flush()
    except BrokenPipeError:
        drop_stdout()
    except OSError as exc:
        raise _OutputError(exc) from None


def _out_quiet(text: str) -> None:
    """For the JSON error object: the error itself is already on stderr, so a failed write of
    the object adds nothing."""
    with contextlib.suppress(_OutputError):
        _out_line(text)


def _redacted(argv: list[str]) -> list[str]:
    """The command line as it may be recorded (history, lock holder): no header values, no
    credentials in URLs."""
    out: list[str] = []
    for i, a in enumerate(argv):
        if i and argv[i - 1] == "--header":
            a = "***"
        elif a.startswith("--header="):
            a = "--header=***"
        elif "://" in a and ("@" in a or "?" in a):
            from ._fetch import redact_safe

            a = redact_safe(a)
        out.append(a)
    return out


# What a shell word may hold unquoted (shlex.quote's set; shlex imports re, which a deploy skips).
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./_-")


def _shell_join(argv: list[str]) -> str:
    """``shlex.join(argv)``: each word as a POSIX shell reads it back, quoted only when needed."""
    return " ".join(a if a and _SAFE.issuperset(a) else "'" + a.replace("'", "'\"'\"'") + "'"
                    for a in argv)


def _command_line(args: Any) -> str:
    """The command line the lock holder shows: as typed,
    shell-quoted, redacted; on a remote root's host, the one typed on the deploying machine
    (given with the hidden ``--command-line``), never the session's internal options."""
    given = getattr(args, "command_line", None)
    if given:
        return str(given)
    return _shell_join(["atomic-deploy", *_redacted(sys.argv[1:])])


def _log_line(level: int, msg: str) -> None:
    """The library's log messages while a command runs (the sink of _log)."""
    if level >= _log.WARNING:
        msg = _err("yellow", msg)
    elif level < _log.INFO:
        msg = _err("dim", msg)
    _err_line(f"atomic-deploy: {msg}")


def _err_line(text: str) -> None:
    """Write one line to stderr, for hook output and log messages while an operation runs.

    Output that cannot be written never changes an outcome: a reader that went away, a full
    disk or an I/O error ends what stderr shows, and the operation goes on. Nothing reports it
    (the only place to say so is stderr itself). No stderr at all (fd 2 closed, sys.stderr
    None) takes nothing: print(file=None) would write to stdout instead.
    """
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):  # ValueError: the stream was closed
        _drop_stderr()


def _drop_stderr() -> None:
    """Point stderr at /dev/null: what is still buffered, later lines and the flush at exit
    then all succeed, so the exit code stays the operation's."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, sys.stderr.fileno())
        finally:
            os.close(fd)
    except (OSError, ValueError, AttributeError):
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


class _Style:
    """ANSI colour for one stream: only on a terminal, never with NO_COLOR or --no-color."""

    CODES: ClassVar[dict[str, str]] = {
        "red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}

    def __init__(self, stream: Any, args: Any) -> None:
        self.reset(stream, args)

    def reset(self, stream: Any, args: Any) -> None:
        """For the command about to run (cli.main, the quick deploy): the instances stay the
        same objects, so every module that imported them sees the change."""
        self.on = (
            not getattr(args, "no_color", False)
            and not os.environ.get("NO_COLOR")
            and os.environ.get("TERM") != "dumb"
            and hasattr(stream, "isatty") and stream.isatty()
        )

    def __call__(self, color: str, text: str) -> str:
        return f"\033[{self.CODES[color]}m{text}\033[0m" if self.on else text


_out = _Style(None, None)
_err = _Style(None, None)


def _emit(args: Any, payload: dict[str, Any], text: str, *,
          data: bool = False) -> None:
    """JSON with --json; else ``text``, which -q silences unless it is the command's data."""
    if getattr(args, "json", False):
        _out_line(dumps(envelope(args.command, payload)))
    elif text and (data or not getattr(args, "quiet", False)):
        _out_line(text)


# Option name -> (config key, default when neither flag nor config gives one).
_SETTINGS: dict[str, Any] = {
    "keep": None, "wait": 0.0, "message": None, "git": None, "ref": "HEAD",
    "strip_components": 0, "revision": None, "refuse_external_links": False,
    "shared_dirs": [], "shared_files": [],
    "create_missing": False, "check": [], "after_switch": [], "on_failure": [],
    "health_check": None, "health_url": None, "health_timeout": 10.0, "health_retries": 3,
    "health_interval": 1.0, "hook_timeout": 600.0, "link_unchanged": False, "checksum": False,
    "trust_mtime": False, "link_writable": False, "digest": False, "jobs": None, "fsync": True,
}
_HOOK_KEYS = ("check", "after_switch", "on_failure", "health_check")


def _options(args: Any, root: str | None,
             config: dict[str, Any] | None = None) -> Any:
    """DeployOptions from flags, then the config file (``config``, or read from ROOT), then
    defaults."""
    from . import _config
    from .operations import DeployOptions

    if config is None and getattr(args, "config_json", None):
        config = _config.from_json(args.config_json)
    if config is None:
        config = _config.load(root, getattr(args, "config", None)) \
            if root and not getattr(args, "no_config", False) else {}
        bad = _config_problem(args, root, config)
        if bad:
            raise bad[1]
    values: dict[str, Any] = {}
    for key, default in _SETTINGS.items():
        flag = getattr(args, key, None)
        value = flag if flag is not None else config.get(key, default)
        if key in _HOOK_KEYS and key in config and flag is None:
            value = _config.hooks(key, value)  # a list of strings is a list of commands
        values[key] = value
    if getattr(args, "no_digest_cache", None):
        from ._manifest import CACHE_ENV

        os.environ[CACHE_ENV] = "0"  # read where the copy hashes the build (_manifest)
    values["command"] = _command_line(args)
    if getattr(args, "if_changed", None):
        values["if_changed"] = True
    if not getattr(args, "quiet", False):
        values["on_output"] = lambda line: _err_line(_err("dim", "  | ") + line)
    return DeployOptions(**values)


def _warn(message: str) -> None:
    _err_line(f"atomic-deploy: {_err('yellow', 'warning:')} {show(message)}")


def _config_problem(args: Any, root: str | None,
                    config: dict[str, Any]) -> tuple[str, InvalidInput] | None:
    """The first config setting whose value the options check refuses, as (key, error naming
    the file); None when there is none. Flags are checked on their own first: their own
    mistake is reported as theirs, by the operation."""
    if not config:
        return None
    from . import _config
    from .operations import validate_options

    try:
        validate_options(_options(args, root, {}))
    except InvalidInput:
        return None
    path = _config.config_path(root or ".", getattr(args, "config", None))
    for key in sorted(config):
        try:
            validate_options(_options(args, root, {key: config[key]}))
        except InvalidInput as exc:
            return key, InvalidInput(f"{show(path or _config.FILENAME)}: {key} = "
                                     f"{config[key]!r}: {exc.message}", exc.state)
    return None


def _progress_for(args: Any, source: str | None) -> Any:
    """A progress line on stderr for long copies: only on a terminal, never with -q."""
    if (getattr(args, "quiet", False) or source is None or not os.path.isdir(source)
            or not sys.stderr.isatty() or os.environ.get("TERM") == "dumb"):
        return None
    from ._progress import Progress, measure

    try:
        files, size = measure(source)
    except OSError:
        return None  # the deploy itself reports unreadable sources
    return Progress(sys.stderr, files, size)


def _staged(args: Any, cmd: str, r: Any) -> None:
    """What a deploy or prepare prints once ``r`` (its DeployResult) is in."""
    if r.unchanged:
        _emit(args, r.to_dict(), f"unchanged: {r.release} is already this build", data=True)
        return
    if cmd == "prepare":
        _emit(args, r.to_dict(), r.release, data=True)  # the id is data: -q keeps it
        for w in r.warnings:
            _warn(w)
        return
    linked = f", {r.linked} hard-linked" if r.linked else ""
    text = (f"{_out('green', 'deployed')} {_out('bold', r.release)} "
            f"(previous: {r.previous or 'none'}; {r.files} file{'s' if r.files != 1 else ''}{linked}, "
            f"{human_bytes(r.bytes)}, {r.seconds:.2f}s)")
    if r.pruned:
        text += f"\npruned {len(r.pruned)}: {', '.join(r.pruned)}"
    _emit(args, r.to_dict(), text)
    for w in r.warnings:  # after the commit point: the exit code stays 0
        _warn(w)

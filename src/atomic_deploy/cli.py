"""Command-line interface: with its quick path for status and list (_fastcli), the only module that
prints or knows exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
from collections.abc import Sequence

from . import _log
from ._clicore import (
    _command_line,
    _config_problem,
    _emit,
    _err,
    _err_line,
    _log_line,
    _options,
    _out,
    _out_line,
    _out_quiet,
    _OutputError,
    _progress_for,
    _staged,
    _warn,
)
from ._layout import show
from ._render import (
    JSON_SCHEMA,
    count,
    envelope,
    format_list,
    format_status,
    status_exit_code,
)
from ._stdout import drop_stdout
from ._version import __version__
from .errors import AtomicDeployError, InvalidInput

TYPE_CHECKING = False  # typing costs start-up time at every command
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from .fleet import FleetOptions, FleetResult

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3

# Commands that change nothing in any root (demo and race make and remove their own).
_READ_ONLY = ("status", "list", "verify", "doctor", "completion", "man")
_BAD_ROOT_ERRNOS = (errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ELOOP)

COMMANDS = ("deploy", "prepare", "activate", "rollback", "status", "list", "verify", "prune",
            "recover", "adopt", "demo", "race", "completion", "man", "doctor")

EPILOG = """\
exit codes:
  0    success
  1    the operation failed (current left as it was, or switched back); a URL source's
       download failed (no connection, a timeout, cut short, HTTP 5xx)
  2    usage error or invalid input (bad path, unknown release, nothing to roll back to);
       a URL source refused (HTTP 4xx, a redirect loop) or not matching --sha256;
       a remote host unreachable, refusing the login or its host key, or without python3
  3    another process holds the root's lock (the message names it)
  4    a check, hook or health check failed (release removed, or switched back and marked bad)
  5    a fleet is left mixed (the message names every host's release), also when
       --max-fail let hosts fail
  status: 0 current serves a complete release, 1 it does not (absent, dangling,
        outside releases/, not a link), 2 not a deploy root
  verify: 0 the release matches its manifest, 1 it differs, 2 no manifest (or bad input)
  doctor: 0 no check failed, 1 a check failed
  several roots: list, verify, doctor, prune, recover and adopt run on each host and
        exit with the highest code any host gave
  129  interrupted by SIGHUP, 130 by SIGINT, 143 by SIGTERM, after rolling back

The original tool's form `atomic-deploy SOURCE ROOT` is the same as `deploy SOURCE ROOT`
(a first word close to a command's name, and no existing path, is a mistyped command).
"""


class _Version(argparse.Action):
    """--version, with the text computed only when asked (platform costs start-up time)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        _out_line(version_text())
        parser.exit()


class UsageError(Exception):
    """argparse's complaint, reported by main() as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        raise UsageError(f"{message} (see: {self.prog} --help)")

    def _get_formatter(self) -> argparse.HelpFormatter:
        # The width argparse gives itself, without the import of shutil it makes for it (2 ms
        # of every command: add_argument() makes a formatter to check each option's metavar).
        make: Any = self.formatter_class  # typeshed's protocol for it lists prog= alone
        return make(prog=self.prog, width=_terminal_columns() - 2)  # type: ignore[no-any-return]


class _TopParser(_Parser):
    """The parser of the whole command line: an option no part of it knows is reported with
    the command's own help (argparse reports it from here, the top level)."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            message = f"unrecognized arguments: {' '.join(extras)}"
            command = getattr(parsed, "command", None)
            if command:
                _usage(command, message)
            self.error(message)
        return parsed


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            stdout: Any = sys.__stdout__  # None when started without one: AttributeError
            columns = os.get_terminal_size(stdout.fileno()).columns or 80
        except (AttributeError, ValueError, OSError):
            columns = 80
    return columns


class _CommandParser(_Parser):
    """A command's parser: options may stand between its positional arguments
    (``deploy ./build --hosts hosts.txt /srv/app``), which plain parsing refuses once it
    has passed the first positional."""

    _intermixed = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._intermixed or (args is not None and "--" in args):
            # parse_known_intermixed_args calls back in here; and after "--" (a path that
            # starts with "-") it would not take what follows as positional arguments.
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def _seconds(text: str) -> float:
    """argparse type for a number of seconds: finite and not negative (``nan`` would never
    compare as past a deadline, so ``--wait nan`` would wait forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, "
                                         f"not {text!r}")
    return value


def _keep(text: str) -> int | str:
    """argparse type for --keep: a number of releases, or ``all`` (no pruning)."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of releases or 'all': {text!r}") from None


def _prune_keep(text: str) -> int | str:
    """argparse type for prune's --keep: a number of releases (``all`` is read, to be refused
    in words: it turns pruning off)."""
    try:
        return _keep(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a number of releases: {text!r}") from None


def _add_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=_seconds, default=None, metavar="SECONDS",
                   help="wait this long for another process's lock (default: fail at once)")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON object on stdout")


def _add_config(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", metavar="FILE",
                   help="settings file (default: ROOT/atomic-deploy.toml if it exists)")
    g.add_argument("--no-config", action="store_true",
                   help="read no settings file: flags and defaults only")


def _add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")


def _add_switch_hooks(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("after the switch")
    g.add_argument("--after-switch", action="append", metavar="CMD",
                   help="run after the switch, e.g. reload a service (sh -c; repeatable)")
    g.add_argument("--on-failure", action="append", metavar="CMD",
                   help="run when the operation fails or is rolled back (sh -c; repeatable)")
    g.add_argument("--health-check", metavar="CMD",
                   help="after the switch; non-zero exit switches back and marks the release bad")
    g.add_argument("--health-url", metavar="URL",
                   help="after the switch; a non-2xx answer switches back and marks it bad")
    g.add_argument("--health-timeout", type=_seconds, metavar="SECONDS",
                   help="per attempt (default 10)")
    g.add_argument("--health-retries", type=int, metavar="N",
                   help="extra attempts before giving up (default 3)")
    g.add_argument("--health-interval", type=_seconds, metavar="SECONDS",
                   help="pause between attempts (default 1)")
    g.add_argument("--hook-timeout", type=_seconds, metavar="SECONDS",
                   help="kill a hook (and its process group) after this long (default 600)")


def _add_stage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", nargs="?",
                   help="build folder, tarball (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz), or a "
                        "tarball's URL (https://, http://, file://)")
    p.add_argument("root", metavar="ROOT", nargs="?")
    p.add_argument("--message", "-m", metavar="TEXT", help="note recorded in the history")
    g = p.add_argument_group("sources")
    g.add_argument("--git", metavar="REPO", help="export a git revision instead of SOURCE")
    g.add_argument("--ref", metavar="REF", help="revision for --git (default HEAD)")
    g.add_argument("--strip-components", type=int, metavar="N",
                   help="drop N leading path components from tarball members")
    g.add_argument("--revision", metavar="TEXT",
                   help="record this revision in the history and a REVISION file")
    g.add_argument("--refuse-external-links", action="store_true", default=None,
                   help="fail (exit 2) if a folder build has symlinks pointing outside it "
                        "(default: copy them as they are, with a warning)")
    _add_fetch(p)
    g = p.add_argument_group("shared data (kept in ROOT/shared, linked into every release)")
    g.add_argument("--shared-dir", action="append", metavar="PATH", dest="shared_dirs",
                   help="relative folder; seeded from the release on first use (repeatable)")
    g.add_argument("--shared-file", action="append", metavar="PATH", dest="shared_files",
                   help="relative file; must exist in ROOT/shared (repeatable)")
    g.add_argument("--create-missing", action="store_true", default=None,
                   help="create missing shared files empty instead of failing")
    g = p.add_argument_group("checks")
    g.add_argument("--check", action="append", metavar="CMD",
                   help="run inside the new release before the switch; failure aborts (exit 4)")
    g = p.add_argument_group("copying")
    g.add_argument("--link-unchanged", action="store_true", default=None,
                   help="reuse files identical to the current release, contents compared: "
                        "cloned where the filesystem can, else hard-linked")
    g.add_argument("--checksum", action="store_true", default=None,
                   help="with --link-unchanged, read the current release's files too instead "
                        "of trusting the digests its manifest recorded")
    g.add_argument("--trust-mtime", action="store_true", default=None,
                   help="with --link-unchanged, link on size and mtime alone without reading "
                        "contents (faster; RISK: a file changed without changing size or mtime, "
                        "as reproducible builds do, is deployed with its OLD bytes)")
    g.add_argument("--digest", action="store_true", default=None,
                   help="record every file's blake2b content digest in the release's manifest "
                        "(for verify --content)")
    g.add_argument("--link-writable", action="store_true", default=None,
                   help="with --link-unchanged, also link group/other-writable files")
    g.add_argument("--if-changed", action="store_true", default=None,
                   help="do nothing (exit 0; --json: unchanged) when the build is the current "
                        "release, contents compared by manifest (implies --digest; local ROOT)")
    g.add_argument("--no-digest-cache", action="store_true", default=None,
                   help="read every file of the build to compare or record its digest, instead "
                        "of trusting digests cached (in $XDG_CACHE_HOME/atomic-deploy/digests, "
                        "~/.cache by default) for files whose inode, size, mtime and ctime are "
                        "unchanged")
    g.add_argument("--jobs", type=int, metavar="N", help="parallel copy threads")
    g.add_argument("--no-fsync", dest="fsync", action="store_false", default=None,
                   help="skip flushing to disk before the switch (faster, not crash-safe)")
    _add_wait(p)
    _add_config(p)
    _add_json(p)


def _add_fetch(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("URL sources (SOURCE https://..., http://..., file://...)")
    g.add_argument("--sha256", metavar="HEX|auto",
                   help="the tarball's sha256, checked before anything becomes a release "
                        "(required for http and https); 'auto': read it from URL.sha256")
    g.add_argument("--header", action="append", metavar="'NAME: VALUE'",
                   help="send this HTTP header (repeatable), e.g. an Authorization for a "
                        "private store; never printed or recorded")
    g.add_argument("--fetch-timeout", type=_seconds, metavar="SECONDS",
                   help="give up on a server that does not answer, or sends nothing, for "
                        "this long (default 30)")
    g.add_argument("--insecure-no-checksum", action="store_true", default=None,
                   help="deploy an http(s) URL without --sha256 (anyone who can change the "
                        "bytes on the way decides what runs)")
    g.add_argument("--pull", action="store_true", default=None,
                   help="with remote roots and a URL: each host fetches and checks the URL "
                        "itself (this machine sends no build)")


def _fetch_options(args: argparse.Namespace, source: str | None) -> Any:
    """FetchOptions for a URL source, with a progress line on a terminal; None when neither
    the source is a URL nor any of its options was given."""
    given = [getattr(args, k, None) for k in ("sha256", "header", "fetch_timeout",
                                               "insecure_no_checksum")]
    url = source is not None and source.split(":", 1)[0].lower() in ("http", "https", "file")
    if not url and not any(v is not None for v in given):
        return None
    from . import _fetch

    opts = _fetch.FetchOptions(sha256=args.sha256, headers=list(args.header or []),
                               insecure_no_checksum=bool(args.insecure_no_checksum))
    if args.fetch_timeout is not None:
        opts.timeout = args.fetch_timeout
    if (url and not getattr(args, "quiet", False) and sys.stderr is not None
            and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"):
        from ._progress import DownloadProgress

        opts.progress = DownloadProgress(sys.stderr, _fetch.redact_safe(source or "")
                                         .rsplit("/", 1)[-1])
    return opts


def _close_progress(fetch: Any) -> None:
    if fetch is not None and fetch.progress is not None:
        fetch.progress.close()


def _common() -> _Parser:
    """-q/-v/--no-color, accepted before or after the command."""
    common = _Parser(add_help=False)
    g = common.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="print only errors and warnings (and --json data)")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="also print each step as it happens")
    g.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS,
                   help="no colour (also: NO_COLOR=1 in the environment)")
    return common


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, just that subcommand (what parsing its arguments needs:
    the other twelve's options cost a few milliseconds of every command's start-up)."""

    def want(name: str) -> bool:
        return only is None or name == only

    common = _common()
    parser = _TopParser(
        prog="atomic-deploy",
        parents=[common],
        description="Zero-downtime, crash-safe release deploys: copy a build into "
                    "ROOT/releases/<id> and switch the ROOT/current symlink with one rename(2).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show the version, Python and platform, and exit")
    sub: Any = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=_CommandParser)
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> _Parser:
        p: _Parser = _add(name, parents=[common], **kw)
        return p

    sub.add_parser = add_parser

    if want("deploy"):
        p = sub.add_parser("deploy", help="copy SOURCE into a new release and switch current to it")
        _add_stage_options(p)
        p.add_argument("--keep", type=_keep, metavar="N|all",
                       help="afterwards prune to N good releases (default 5; current and rollback "
                            "target kept); 'all' prunes nothing")
        _add_switch_hooks(p)
        _add_dry_run(p)

    if want("prepare"):
        p = sub.add_parser("prepare", help="stage a complete release, print its id, do not switch")
        _add_stage_options(p)
        p.add_argument("--on-failure", action="append", metavar="CMD",
                       help="run when preparing fails (sh -c; repeatable)")
        p.add_argument("--hook-timeout", type=_seconds, metavar="SECONDS",
                       help="kill a hook (and its process group) after this long (default 600)")
        _add_dry_run(p)

    if want("activate"):
        p = sub.add_parser("activate", help="switch current to an existing complete release",
                           description="Switch current to RELEASE_ID: activate ROOT RELEASE_ID; "
                           "for several roots (a fleet), activate ROOT ROOT... --to RELEASE_ID.")
        p.add_argument("root", metavar="ROOT")
        p.add_argument("release", metavar="RELEASE_ID", nargs="?")
        p.add_argument("--to", metavar="RELEASE_ID", dest="release_opt",
                       help="the release to switch to (the form for several roots)")
        _add_switch_hooks(p)
        _add_wait(p)
        _add_config(p)
        _add_dry_run(p)
        _add_json(p)

    if want("rollback"):
        p = sub.add_parser("rollback", help="switch back to the newest good release before current")
        p.add_argument("root", metavar="ROOT")
        p.add_argument("--to", metavar="RELEASE_ID", help="roll back to this release instead")
        _add_switch_hooks(p)
        _add_wait(p)
        _add_config(p)
        _add_dry_run(p)
        _add_json(p)

    if want("status"):
        p = sub.add_parser("status", help="current, rollback target, lock holder, interrupted work",
                           description="Show ROOT's current release, rollback target, releases, "
                           "lock holder and interrupted work. Read-only, takes no lock. Exit 0: "
                           "current serves a complete release (also with an interrupted operation "
                           "waiting for recovery); 1: it does not (absent, dangling, outside "
                           "releases/, a folder or file), the report printed in full; 2: ROOT is "
                           "not a deploy root.")
        p.add_argument("root", metavar="ROOT")
        _add_json(p)

    if want("list"):
        p = sub.add_parser("list", help="releases in deploy order with their state")
        p.add_argument("root", metavar="ROOT")
        _add_json(p)

    if want("verify"):
        p = sub.add_parser("verify", help="compare a release with its manifest (drift, hot-patches)",
                           description="Report every file of RELEASE (default: the current one) "
                           "that differs from the manifest recorded when it was deployed: added, "
                           "missing, or changed type, mode, size, mtime or symlink text; with "
                           "--content also its bytes (where a digest was recorded). Read-only, "
                           "takes no lock. Exit 0: no difference; 1: differences; 2: no manifest, "
                           "unknown release or bad ROOT.")
        p.add_argument("root", metavar="ROOT")
        p.add_argument("release", metavar="RELEASE_ID", nargs="?",
                       help="the release to check (default: current)")
        p.add_argument("--release", metavar="RELEASE_ID", dest="release_opt",
                       help="the release to check (the form for several roots)")
        p.add_argument("--content", action="store_true",
                       help="also compare file contents with the recorded digests (reads them)")
        _add_json(p)

    if want("prune"):
        p = sub.add_parser("prune", help="delete old releases, never current or the rollback target")
        p.add_argument("root", metavar="ROOT")
        p.add_argument("--keep", type=_prune_keep, metavar="N",
                       help="number of good releases to keep (default 5; bad ones do not count)")
        _add_wait(p)
        _add_config(p)
        _add_dry_run(p)
        _add_json(p)

    if want("recover"):
        p = sub.add_parser("recover", help="finish or undo an interrupted operation now")
        p.add_argument("root", metavar="ROOT")
        _add_wait(p)
        _add_dry_run(p)
        _add_json(p)

    if want("adopt"):
        p = sub.add_parser("adopt", help="migrate a root whose current is a real folder")
        p.add_argument("root", metavar="ROOT")
        p.add_argument("--id", metavar="RELEASE_ID", help="name for the adopted release")
        p.add_argument("--no-exchange", action="store_true",
                       help="use the two-step rename even where an atomic exchange exists")
        _add_wait(p)
        _add_dry_run(p)
        _add_json(p)

    if want("demo"):
        p = sub.add_parser("demo", help="deploy a bundled example site into a temporary root")
        p.add_argument("--root", metavar="DIR", help="use this (new or empty) folder as the demo root")
        _add_json(p)

    if want("race"):
        p = sub.add_parser("race", help="show the ln -sfn race next to atomic-deploy's switch",
                           description="Reader processes read <tmp>/current/version in a loop while a "
                           "writer switches current between two releases, once per strategy: naive "
                           "(unlink + symlink, what ln -sfn does on macOS, BSD and busybox), ln (this "
                           "system's ln -sfn), atomic (atomic-deploy's own switch). Exits 1 if the "
                           "atomic strategy saw any error.")
        p.add_argument("--seconds", type=_seconds, default=2.0, help="time per strategy (default 2)")
        p.add_argument("--readers", type=int, default=4, help="reader processes (default 4)")
        _add_json(p)

    if want("doctor"):
        p = sub.add_parser("doctor", help="check that ROOT's filesystem and state are fit for deploys",
                           description="Read-only checks of ROOT: filesystem type, rename over a "
                           "symlink, flock, fsync, reflink, free space, current, stray entries, "
                           "leftovers, interrupted work, the lock, permissions, the config file "
                           "and its hooks (can their programs run). A read-only mount is named as "
                           "such. Probes run in a "
                           "private folder inside ROOT that is removed afterwards. Exits 1 if any "
                           "check fails (warnings do not).")
        p.add_argument("root", metavar="ROOT")
        _add_json(p)

    if want("completion"):
        from ._completion import SHELLS, install_hint

        p = sub.add_parser("completion", help="print a shell completion script",
                           description="Print a completion script for SHELL, generated from this "
                           "command's own options.",
                           epilog="install:\n" + "\n".join(
                               "  " + install_hint(s).replace("\n", "\n    ") for s in SHELLS),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish")
        _add_json(p)

    if want("man"):
        p = sub.add_parser("man", help="the atomic-deploy(1) man page: shown by man(1) on a "
                           "terminal, else printed as roff")
        p.add_argument("--output", "-o", metavar="FILE", help="write the page to FILE instead")
        _add_json(p)
    for name, p in sub.choices.items():
        if name in _ROOT_COMMANDS:
            _add_remote(p, stage=name in ("deploy", "prepare"))
        if name in _FLEET_COMMANDS:
            _add_fleet(p, stage=name in ("deploy", "prepare"))
        if name in _ROLLING_COMMANDS:
            _add_rolling(p)
    return parser


# Commands that take several roots (a fleet): docs/fleet.md.
_FLEET_COMMANDS = ("deploy", "prepare", "status", "rollback", "activate", "list", "verify",
                   "prune", "recover", "adopt", "doctor")
# Of those, the ones that run on each host on its own (not two-phase): docs/fleet.md.
_PER_HOST = ("list", "verify", "prune", "recover", "adopt", "doctor")


def _add_fleet(p: argparse.ArgumentParser, stage: bool) -> None:
    # activate's and verify's come after their optional RELEASE_ID: completed as folders
    # there (metavar ROOT), zsh would offer folders instead of release ids. Those two take
    # several roots with --to / --release, so nothing is lost.
    after_release = p.prog.endswith((" activate", " verify"))
    p.add_argument("more_roots", metavar="MORE_ROOT" if after_release else "ROOT", nargs="*",
                   help="more roots: the command acts on all of them as one fleet")
    g = p.add_argument_group("fleets (several roots: ROOT ROOT..., --hosts FILE ROOT, or @NAME: "
                             "[fleets.NAME] in --config FILE or ./atomic-deploy.toml)")
    g.add_argument("--hosts", metavar="FILE",
                   help="one [user@]host per line (# comments); ROOT is then the path on each")
    g.add_argument("--parallel", type=int, metavar="N",
                   help="hosts connected and worked on at once (default 10)")
    if p.prog.endswith((" deploy", " prepare", " rollback", " activate")):
        g.add_argument("--host-timeout", type=_seconds, metavar="SECONDS",
                       help="give up on a host that says nothing for this long in a phase "
                            "(default: no limit)")


# Fleet commands that switch, and so can switch in batches (docs/fleet.md#rolling).
_ROLLING_COMMANDS = ("deploy", "rollback")


def _add_rolling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rolling (fleets only)")
    # No "%" in a metavar: argparse %-formats the usage line it goes into.
    g.add_argument("--rolling", type=_rolling_size, metavar="N",
                   help="switch N hosts at a time (N%%: that share of them, rounded up), in "
                        "the order given, each batch's after-switch hooks and health checks "
                        "passing before the next; the commit follows the last batch")
    g.add_argument("--rolling-wait", type=_seconds, metavar="SECONDS",
                   help="pause between batches (with --rolling)")
    g.add_argument("--max-fail", type=_max_fail, metavar="N",
                   help="up to N hosts may fail after the switch: they switch back alone, the "
                        "others commit, exit 5 (the fleet is mixed); one more and every host "
                        "switches back (default 0)")


def _rolling_size(text: str) -> tuple[int, float]:
    """argparse type for --rolling: (hosts per batch, 0) or (0, percentage)."""
    percent = text.endswith("%")
    try:
        value = float(text[:-1]) if percent else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hosts or a percentage: {text!r}") \
            from None
    if percent and (not math.isfinite(value) or not 0 < value <= 100):
        raise argparse.ArgumentTypeError(f"a percentage over 0 and at most 100%, not {text!r}")
    if not percent and value < 1:
        raise argparse.ArgumentTypeError(f"1 or more hosts per batch, not {text!r}")
    return (0, value) if percent else (int(value), 0.0)


def _max_fail(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hosts: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"0 or more hosts, not {text!r}")
    return value


def _rolling_options(args: argparse.Namespace, roots: list[str] | None) -> dict[str, Any]:
    """FleetOptions' rolling fields from --rolling, --rolling-wait and --max-fail; a usage
    error when given without a fleet (``roots`` None)."""
    given = [flag for flag, dest in (("--rolling", "rolling"), ("--rolling-wait", "rolling_wait"),
                                     ("--max-fail", "max_fail"))
             if getattr(args, dest, None) is not None]
    if given and roots is None:
        _usage(args.command, f"{given[0]} is for a fleet: give several roots, or --hosts FILE")
    if getattr(args, "rolling_wait", None) is not None and getattr(args, "rolling", None) is None:
        _usage(args.command, "--rolling-wait needs --rolling")
    count, percent = getattr(args, "rolling", None) or (0, 0.0)
    return {"rolling": count, "rolling_percent": percent,
            "rolling_wait": getattr(args, "rolling_wait", None) or 0.0,
            "max_fail": getattr(args, "max_fail", None) or 0}


# Commands that take a ROOT, which may be a remote root (host:/path, ssh://host:port/path).
_ROOT_COMMANDS = ("deploy", "prepare", "activate", "rollback", "status", "list", "verify",
                  "prune", "recover", "adopt", "doctor")
# Options of this machine's side only: never passed on to the tool on the host.
_LOCAL_ONLY = ("ssh", "remote_python", "connect_timeout", "accept_new_host_keys", "compress",
               "config", "source", "root", "session", "config_json", "more_roots", "hosts",
               "parallel", "host_timeout", "release_opt", "pull", "plan_source",
               "command_line")
# A URL source's options: used where the URL is fetched (here, or on the host with --pull).
_FETCH_ONLY = ("sha256", "header", "fetch_timeout", "insecure_no_checksum")


# The fleet's business, never a host's (each host is told when to switch).
_ROLLING_LOCAL = ("rolling", "rolling_wait", "max_fail")


def _add_remote(p: argparse.ArgumentParser, stage: bool) -> None:
    g = p.add_argument_group("remote roots ([user@]host:/path or ssh://[user@]host[:port]/path)")
    g.add_argument("--ssh", metavar="COMMAND",
                   help="the ssh command to use, e.g. \"ssh -F ./ssh_config\" (default: "
                        "$ATOMIC_DEPLOY_SSH, else ssh)")
    g.add_argument("--remote-python", metavar="PATH",
                   help="the host's Python 3.9+ (default: python3 on its PATH)")
    g.add_argument("--connect-timeout", type=_seconds, metavar="SECONDS",
                   help="give up on a host that does not answer in this long (default 10)")
    g.add_argument("--accept-new-host-keys", action="store_true", default=None,
                   help="add unknown host keys to known_hosts (StrictHostKeyChecking="
                        "accept-new); a changed key is still refused")
    if stage:
        g.add_argument("--compress", action="store_true", default=None,
                       help="compress the transfer (for slow links)")
    if stage or p.prog.endswith((" activate", " rollback")):
        # The host's side of a remote deploy or a fleet's switch: the session protocol on
        # stdin and stdout.
        p.add_argument("--session", metavar="LABEL", help=argparse.SUPPRESS)
    if stage:
        # The host's side of a remote root's --dry-run: the build's part of the plan, made
        # where the build is (a JSON list of steps).
        p.add_argument("--plan-source", metavar="JSON", help=argparse.SUPPRESS)
    if "--config" not in p._option_string_actions:
        # A command that reads no root's settings still takes this machine's file (ssh
        # settings, the fleets of @NAME); without it, `--config` would be taken for an
        # abbreviation of the hidden --config-json.
        g.add_argument("--config", metavar="FILE",
                       help="this machine's settings file: ssh settings for remote roots, the "
                            "fleets for @NAME (default for @NAME: ./atomic-deploy.toml)")
    p.add_argument("--config-json", metavar="JSON", help=argparse.SUPPRESS)
    # The host's side: the command line typed on the deploying machine, for the lock holder.
    p.add_argument("--command-line", metavar="TEXT", help=argparse.SUPPRESS)


def version_text() -> str:
    import platform

    return (f"atomic-deploy {__version__} (Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()} {platform.machine()})")


def _normalize(argv: list[str]) -> list[str]:
    """Accept the original tool's `atomic-deploy SOURCE ROOT` form: a first word that is no
    command, followed by one more word, is read as deploy's (so a missing SOURCE is reported
    as one, exit 2). A first word that is close to a command's name (`stauts`) and is no
    existing path is a mistyped command instead, left to argparse's message."""
    if len(argv) < 2 or argv[0] in COMMANDS or argv[0].startswith("-"):
        return argv
    if os.path.exists(argv[0]) or "/" in argv[0] or argv[0].startswith("."):
        return ["deploy", *argv]
    if argv[1].startswith("-") or (len(argv) > 2 and not argv[2].startswith("-")):
        return argv  # not SOURCE ROOT [options]
    import difflib

    return argv if difflib.get_close_matches(argv[0], COMMANDS, 1, 0.75) else ["deploy", *argv]


# What rollback takes from the config file; the rest of the file is not its business.
_ROLLBACK_KEYS = ("wait", "after_switch", "on_failure", "health_check", "health_url",
                  "health_timeout", "health_retries", "health_interval", "hook_timeout")


def _rollback_options(args: argparse.Namespace) -> Any:
    """Rollback is the way out of a bad deploy: a config file it cannot read, or a setting in it
    that is wrong, is a warning and the rollback goes on without it (hooks that can be read
    still run). A bad flag is still an error: it was typed just now."""
    from . import _config

    if args.config_json:
        config = {k: v for k, v in _config.from_json(args.config_json).items()
                  if k in _ROLLBACK_KEYS}
    else:
        config = {} if args.no_config else _config.load_lenient(
            args.root, args.config, _ROLLBACK_KEYS, _warn)
    while True:
        bad = _config_problem(args, args.root, config)
        if bad is None:
            return _options(args, args.root, config)
        _warn(f"{bad[1].message}; going on without it")
        del config[bad[0]]


def _usage(cmd: str, message: str) -> NoReturn:
    """A usage error found after parsing, pointing at the command's own help."""
    raise UsageError(f"{message} (see: atomic-deploy {cmd} --help)")


def _stage_paths(args: argparse.Namespace, parser_error: Any) -> tuple[str | None, str]:
    if getattr(args, "session", None) is not None:  # the build comes over the session
        if args.source is not None and args.root is not None:
            return str(args.source), str(args.root)  # self-sourced: this host reads SOURCE
        root = args.root if args.root is not None else args.source
        if root is None or (args.root is not None and args.source is not None):
            parser_error("with --session give only ROOT")
        return None, str(root)
    if args.git is not None:
        if args.root is None and args.source is not None:
            return None, str(args.source)
        parser_error("with --git give only ROOT")
    if args.source is None or args.root is None:
        parser_error("SOURCE and ROOT are required")
    return str(args.source), str(args.root)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cmd = args.command
    # Only what each command needs is imported: status and list stay quick to start.
    if cmd in ("status", "list"):
        from . import query
    elif cmd in ("deploy", "prepare", "activate", "rollback", "prune", "recover", "adopt"):
        from . import operations
    if cmd in ("deploy", "prepare") and getattr(args, "plan_source", None) is not None:
        return _host_stage_plan(args)
    if cmd in ("deploy", "prepare"):
        source, root = _stage_paths(args, lambda m: _usage(cmd, m))
        opts = _options(args, root)
        opts.fetch = _fetch_options(args, source)
        if args.pull:
            _usage(cmd, "--pull is for remote roots (each host fetches the URL itself)")
        if args.dry_run:
            from ._plan import plan_deploy

            return _plan(args, plan_deploy(source, root, opts, cmd == "deploy"))
        fn = operations.deploy if cmd == "deploy" else operations.prepare
        progress = _progress_for(args, source)
        opts.progress = progress
        opts.session = getattr(args, "channel", None)
        if opts.session is not None and source is not None:
            opts.session.self_sourced = True
        try:
            r = fn(source, root, opts)
        finally:
            if progress is not None:
                progress.close()
            _close_progress(opts.fetch)
        _staged(args, cmd, r)
        return EXIT_OK
    elif cmd == "activate":
        opts = _options(args, args.root)
        opts.session = getattr(args, "channel", None)
        if args.dry_run:
            from ._plan import plan_activate_steps

            return _plan(args, plan_activate_steps(args.root, args.release, opts))
        a = operations.activate(args.root, args.release, opts)
        _emit(args, a.to_dict(), f"activated {a.release} (previous: {a.previous or 'none'})")
    elif cmd == "rollback":
        opts = _rollback_options(args)
        opts.session = getattr(args, "channel", None)
        if args.dry_run:
            from ._plan import plan_rollback_steps

            return _plan(args, plan_rollback_steps(args.root, args.to, opts))
        a = operations.rollback(args.root, args.to, opts)
        _emit(args, a.to_dict(), f"rolled back to {a.release} ({a.marked_bad} marked bad)")
    elif cmd == "prune":
        _prune_keep_at_least_1(args)
        opts = _options(args, args.root)
        if opts.keep == operations.KEEP_ALL:
            _usage(cmd, "keep = all turns pruning off; give prune --keep N")
        operations.validate_options(opts)
        keep = operations.DEFAULT_KEEP if opts.keep is None else opts.keep
        if args.dry_run:
            from ._plan import plan_prune_steps

            return _plan(args, plan_prune_steps(args.root, keep))
        p = operations.prune(args.root, keep, wait=opts.wait, command=opts.command)
        text = (f"pruned {len(p.deleted)}: {', '.join(p.deleted)}" if p.deleted
                else "nothing to prune") + f"; {len(p.kept)} kept"
        _emit(args, p.to_dict(), text)
        for w in p.warnings:
            _warn(w)
    elif cmd == "recover":
        # No config file: recovery runs the hooks its journal recorded, whatever the file says now.
        rec = operations.recover_root(args.root, _options(args, None), dry_run=args.dry_run)
        if rec.dry_run:
            text = f"would {rec.action}" if rec.action else "nothing to recover"
        else:
            text = rec.action or "nothing to recover"
        if rec.leftovers and not rec.dry_run:
            text += f"\nleftovers that could not be removed: {', '.join(rec.leftovers)}"
        _emit(args, rec.to_dict(), text)
    elif cmd == "adopt":
        if args.dry_run:
            from ._plan import plan_adopt_steps

            return _plan(args, plan_adopt_steps(args.root, args.id, not args.no_exchange))
        ad = operations.adopt(args.root, args.id, wait=args.wait or 0.0,
                              command=_command_line(args), use_exchange=not args.no_exchange)
        _emit(args, ad.to_dict(), f"adopted the folder as releases/{ad.release} using {ad.method}")
    elif cmd == "status":
        s = query.status(args.root)
        _emit(args, s.to_dict(), format_status(s))
        return status_exit_code(s)
    elif cmd == "list":
        rels = query.list_releases(args.root)
        _emit(args, {"releases": [r.to_dict() for r in rels]}, format_list(rels))
    elif cmd == "verify":
        return _verify(args)
    elif cmd == "doctor":
        from ._doctor import doctor, exit_status, format_checks

        checks = doctor(args.root)
        code = exit_status(checks)
        _emit(args, {"root": os.path.abspath(args.root), "healthy": code == 0,
                     "checks": [c.to_dict() for c in checks]}, format_checks(checks))
        return code
    elif cmd == "completion":
        from ._completion import completion_script, install_hint

        script = completion_script(parser, args.shell)
        if args.json:
            _emit(args, {"shell": args.shell, "script": script,
                         "install": install_hint(args.shell)}, "")
            return EXIT_OK
        _out_line(script, end="")
        if sys.stdout is not None and sys.stdout.isatty():
            print(f"# install with:\n# {install_hint(args.shell)}", file=sys.stderr)
    elif cmd == "man":
        from ._manpage import default_date, manpage

        page = manpage(parser, __version__, default_date())
        if args.json:
            _emit(args, {"format": "roff", "page": page}, "")
            return EXIT_OK
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(page)
        elif not _page_man(page):
            _out_line(page, end="")
    elif cmd == "race":
        return _race(args)
    elif cmd == "demo":
        from ._demo import run_demo

        summary = run_demo(args.root, main, as_json=args.json)
        if args.json:
            _emit(args, summary, "")
    return EXIT_OK


def _prune_keep_at_least_1(args: argparse.Namespace) -> None:
    """prune's --keep (else the config file's keep) below 1, refused in prune's own words:
    the options check's words for it offer 'all', which prune refuses (it turns pruning off)."""
    keep, where = args.keep, ""
    if keep is None and not args.no_config:
        from . import _config

        if args.config_json:
            keep = _config.from_json(args.config_json).get("keep")
            where = f"--config-json: keep = {keep!r}: "
        else:
            path, table = _config.read(args.root, args.config)
            keep = table.get("keep")
            where = f"{show(path or _config.FILENAME)}: keep = {keep!r}: "
    if isinstance(keep, int) and not isinstance(keep, bool) and keep < 1:
        raise InvalidInput(f"{where}--keep must be at least 1 (the number of good releases "
                           "prune keeps, besides current and the rollback target)",
                           "nothing was changed")


def _page_man(page: str) -> bool:
    """On a terminal, show ``page`` as man(1) shows pages: formatted and paged (`man -l -`
    reads it from stdin). False, and nothing shown, when stdout is no terminal (the roff is the
    output: `man > atomic-deploy.1`) or there is no man that can."""
    if sys.stdout is None or not sys.stdout.isatty():
        return False
    import shutil
    import signal
    import subprocess

    man = shutil.which("man")
    if man is None:
        return False
    # Ctrl-C belongs to the pager (less ignores it); it must not kill man under it.
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.run([man, "-l", "-"], input=page, text=True, stderr=subprocess.PIPE,
                              check=False)
    except OSError:
        return False
    finally:
        signal.signal(signal.SIGINT, saved)
    return proc.returncode == 0


def _verify(args: argparse.Namespace) -> int:
    from ._manifest import verify_root

    v = verify_root(args.root, args.release, args.content)
    lines = [f"{d['change']:8} {show(d['path'])}"
             + (f" ({', '.join(d['fields'])})" if d["fields"] else "") for d in v.differences]
    n = len(v.differences)
    entries = count(v.entries, "entry", "entries")
    summary = (f"release {v.release} matches its manifest ({entries}"
               if v.clean else
               f"release {v.release} differs from its manifest: {count(n, 'path')} ({entries}")
    if args.content:
        whose = "file's" if v.content_checked == 1 else "files'"
        summary += f"; {v.content_checked} {whose} contents compared"
        if v.no_digest:
            summary += (f", {v.no_digest} without a recorded digest (deploy with --digest or "
                        "--link-unchanged to record them)")
    lines.append(summary + ")")
    _emit(args, v.to_dict(), "\n".join(lines), data=True)
    return EXIT_OK if v.clean else EXIT_FAILED


def _plan(args: argparse.Namespace, steps: list[str]) -> int:
    _emit(args, {"dry_run": True, "plan": steps},
          "dry run, nothing changed; would:\n" + "\n".join(f"  {s}" for s in steps))
    return EXIT_OK


def _race(args: argparse.Namespace) -> int:
    from ._race import COLUMNS, run_race

    if args.seconds <= 0 or args.readers < 1:
        raise InvalidInput("--seconds must be positive and --readers at least 1")
    results = run_race(args.seconds, args.readers)
    atomic_errors = sum(r.errors for r in results if r.strategy == "atomic")
    # The same names as the JSON keys, meaning the same (docs/json.md).
    rows = [COLUMNS, *(r.row() for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.append("attempts: reads tried; reads: those that opened the file; errors: enoent + "
                 "torn + other_errors; error_rate: errors / attempts")
    for r in results:
        if r.strategy == "ln":
            verdict = "atomic here" if r.errors == 0 else "NOT atomic here"
            lines.append(f"ln on this system: {r.note}: {verdict}")
    lines.append("atomic: no reader ever saw a missing or torn file" if atomic_errors == 0
                 else f"atomic: {atomic_errors} reader errors: this is a bug, please report it")
    _emit(args, {"results": [r.to_dict() for r in results], "seconds": args.seconds,
                 "readers": args.readers}, "\n".join(lines))
    return EXIT_OK if atomic_errors == 0 else EXIT_FAILED


def _usage_error(message: str, as_json: bool, command: str | None) -> int:
    """``command``: the command's name when known (null in the JSON object otherwise)."""
    print(f"atomic-deploy: {_err('red', 'error:')} {show(message)}", file=sys.stderr)
    if as_json:
        _out_quiet(json.dumps({"schema": JSON_SCHEMA, "command": command, "ok": False,
                               "error": message, "state": "nothing was changed",
                               "exit_code": EXIT_USAGE}, sort_keys=True))
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    if sys.stderr is None:  # started with fd 2 closed: errors and hook output go nowhere
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    argv = _normalize(list(sys.argv[1:] if argv is None else argv))
    # `completion` and `man` describe every command; everything else needs only its own.
    only = argv[0] if argv and argv[0] in COMMANDS and argv[0] not in ("completion", "man") \
        else None
    parser = build_parser(only)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    except UsageError as exc:
        refused = _dash_host(parser, argv, str(exc))
        if refused is not None:  # the line `-- -oProxyCommand=x:/srv` gives (exit 2)
            return _report(argparse.Namespace(command=argv[0], json="--json" in argv), refused)
        word = next((a for a in argv if not a.startswith("-")), None)  # -q etc. take no value
        return _usage_error(str(exc), "--json" in argv, word if word in COMMANDS else None)
    except _OutputError as exc:  # --version
        print(f"atomic-deploy: error: could not write the output ({exc})", file=sys.stderr)
        return EXIT_FAILED
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _out.reset(sys.stdout, args)
    _err.reset(sys.stderr, args)
    # The library logs; for the length of this command its messages go to stderr only (not
    # to `logging`, which is not even imported). Restored afterwards so that main() called
    # in-process leaves the caller's logging as it was.
    level = (_log.DEBUG if getattr(args, "verbose", False)
             else _log.WARNING if getattr(args, "quiet", False) else _log.INFO)
    saved = _log.set_sink((level, _log_line))
    try:
        if getattr(args, "session", None) is not None:
            return _session_main(args, parser)
        return _main(args, parser)
    finally:
        _log.set_sink(saved)


def _dash_host(parser: argparse.ArgumentParser, argv: list[str],
               message: str) -> AtomicDeployError | None:
    """A remote root whose host starts with ``-`` (``-oProxyCommand=x:/srv/app``), given
    before ``--``, is taken by argparse for an unknown option: its complaint (unrecognized
    arguments, or ROOT missing) is replaced by the refusal such a root gets after ``--``.
    Only for an argument no option of the command takes (``--message=a:/b`` is a message)."""
    if not argv or argv[0] not in _ROOT_COMMANDS or not message.startswith(
            ("unrecognized arguments:", "the following arguments are required:")):
        return None
    from .remote._address import dash_host_refusal

    options = [o for a in _subparser(parser, argv[0])._actions for o in a.option_strings]
    given = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    for arg in given:
        name = arg.split("=", 1)[0]
        if arg.startswith("--") and any(o.startswith(name) for o in options):
            continue  # an option (argparse takes a prefix of one's name too)
        if not arg.startswith("--") and arg[:2] in options:
            continue  # a short option with its value joined: -m:/x is a message
        refused = dash_host_refusal(arg)
        if refused is not None:
            return refused
    return None


def _session_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The host's side of a remote deploy: the protocol owns stdout; what the command would
    print there goes back in the protocol's last message (its stderr passes through)."""
    import io

    from .remote._session import SessionChannel

    real = sys.stdout
    args.channel = SessionChannel(args.session, sys.stdin.buffer, real.buffer)
    captured = io.StringIO()
    sys.stdout = captured
    try:
        code = _main(args, parser)
    finally:
        sys.stdout = real
    args.channel.finish(code, captured.getvalue())
    return code


def _main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        roots = _fleet_roots(args)
        _rolling_options(args, roots)  # a usage error without a fleet
        if roots is not None:
            return _fleet(args, parser, roots)
        remote = _remote_root(args)
        if remote is not None:
            return _remote(args, parser, remote)
        return _run(args, parser)
    except (UsageError, SystemExit, AtomicDeployError, KeyboardInterrupt, _OutputError,
            OSError) as exc:
        return _failure(args, exc)


def _failure(args: Any, exc: BaseException) -> int:
    """What a command that raised ``exc`` prints, and its exit code (also for the quick deploy
    in _fastcli, whose ``args`` has the attributes of argparse's)."""
    if isinstance(exc, UsageError):  # parser.error() for combinations argparse cannot express
        return _usage_error(str(exc), getattr(args, "json", False),
                            getattr(args, "command", None))
    if isinstance(exc, SystemExit):
        return int(exc.code or 0)
    if isinstance(exc, AtomicDeployError):
        return _report(args, exc)
    if isinstance(exc, KeyboardInterrupt):
        print("atomic-deploy: interrupted; nothing was changed", file=sys.stderr)
        return 130
    if isinstance(exc, _OutputError):
        done = ("nothing was changed" if args.command in _READ_ONLY
                else f"the {args.command} itself completed (see: atomic-deploy list)")
        print(f"atomic-deploy: {_err('red', 'error:')} could not write the output ({exc}); "
              f"{done}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, BrokenPipeError):
        # Reader went away (`| head`): nothing to report; avoid a second error at exit.
        drop_stdout()
        return EXIT_FAILED
    if not isinstance(exc, OSError):
        raise exc
    where = f" ({exc.filename})" if isinstance(exc.filename, str) else ""
    if args.command not in _READ_ONLY:
        print(f"atomic-deploy: {_err('red', 'error:')} {show(f'{exc.strerror or exc}{where}')}",
              file=sys.stderr)
        return EXIT_FAILED
    # A root whose state is not what it should be (releases/ a file, the history a
    # folder, unreadable): nothing was changed, and for these it is the input that is bad.
    from .errors import OperationFailed

    message = f"cannot read the root: {exc.strerror or exc}{where}"
    kind = InvalidInput if exc.errno in _BAD_ROOT_ERRNOS else OperationFailed
    return _report(args, kind(message, "nothing was changed"))


def _report(args: argparse.Namespace, exc: AtomicDeployError) -> int:
    """The one error line on stderr (and the JSON error object under --json)."""
    # show(): a newline inside a path or id must not split the one error line.
    print(f"atomic-deploy: {_err('red', 'error:')} {show(str(exc))}", file=sys.stderr)
    if getattr(args, "json", False):
        payload = {"schema": JSON_SCHEMA, "command": args.command, "ok": False,
                   "error": exc.message, "state": exc.state, "exit_code": exc.exit_code}
        if getattr(args, "remote_host", None):  # a single remote root's (docs/remote.md)
            payload["host"] = args.remote_host
        _out_quiet(json.dumps(payload, sort_keys=True))
    return exc.exit_code


# -- remote roots ---------------------------------------------------------------------------

def _remote_root(args: argparse.Namespace) -> Any:
    """The RemoteRoot the command's ROOT names, or None for a local root."""
    if args.command not in _ROOT_COMMANDS or getattr(args, "session", None) is not None:
        return None
    root = args.root
    if args.command in ("deploy", "prepare") and root is None and args.git is not None:
        root = args.source
    if not isinstance(root, str) or not (":" in root.split("/", 1)[0]
                                         or root.startswith("ssh://")):
        return None
    from .remote import parse_root

    return parse_root(root)


def _subparser(parser: argparse.ArgumentParser, command: str) -> Any:
    sub: Any = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _remote_argv(parser: argparse.ArgumentParser, args: argparse.Namespace, path: str,
                 config: dict[str, Any] | None) -> list[str]:
    """The command line for the tool on the host: the same command and options, ROOT its path
    there, minus what is this machine's business. ``config``: the settings to send in place
    of the host reading a file (None: none to send)."""
    flags: list[str] = [args.command]
    positional: list[str] = []
    actions = _subparser(parser, args.command)._actions
    for action in actions:
        dest = action.dest
        # A tarball is extracted here, and --trust-mtime is rsync's quick check, here too.
        if dest in _LOCAL_ONLY or dest in _ROLLING_LOCAL or dest == "help" or (
                dest in ("strip_components", "trust_mtime", *_FETCH_ONLY)
                and args.command in ("deploy", "prepare")):
            if dest == "root" or (dest == "source" and args.command not in
                                  ("deploy", "prepare")):
                positional.append(path)
            continue
        value = getattr(args, dest, None)
        if not action.option_strings:
            if value is not None:
                positional.append(str(value))
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            if value is True:
                flags.append(flag)
        elif isinstance(action, argparse._StoreFalseAction):
            if value is False:
                flags.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value or []:
                flags += [flag, str(item)]
        elif value is not None:
            flags += [flag, str(value)]
    from ._config import REMOTE_KEYS

    if config is not None and any(a.dest == "no_config" for a in actions):
        flags += ["--config-json",
                  json.dumps({k: v for k, v in config.items() if k not in REMOTE_KEYS})]
    return [*flags, "--", *positional]


def _remote_setup(args: argparse.Namespace, where: str) -> tuple[Any, dict[str, Any]]:
    """The ssh settings (flags, then the --config file) and that file's settings."""
    from .remote._ssh import SshSettings

    config: dict[str, Any] = {}
    if getattr(args, "config", None):
        from . import _config

        config = _config.load(".", args.config)
    timeout = args.connect_timeout if args.connect_timeout is not None \
        else float(config.get("connect_timeout", 10.0))
    settings = SshSettings.from_text(
        args.ssh or config.get("ssh"), connect_timeout=timeout,
        accept_new_host_keys=bool(args.accept_new_host_keys
                                  or config.get("accept_new_host_keys")),
        python=args.remote_python or config.get("remote_python") or "python3")
    return settings, config


def _session_build(args: argparse.Namespace,
                   source: str | None) -> tuple[str, str | None, list[str], Any]:
    """For deploy and prepare: (the build folder to send, a scratch folder to remove, the host
    tool's own options, the transfer settings)."""
    import socket

    from .remote import _client

    build, scratch, revision = _local_build(args, source)
    label = f"{socket.gethostname()}:{os.path.abspath(source or args.git or build)}"
    front = ["--session", label]
    if revision and args.revision is None:
        front += ["--revision", revision]
    transfer = _client.Transfer(
        progress=not getattr(args, "quiet", False) and sys.stderr is not None
        and sys.stderr.isatty() and os.environ.get("TERM") != "dumb",
        cache_digests=scratch is None and not getattr(args, "no_digest_cache", None))
    return build, scratch, front, transfer


def _argv_maker(args: argparse.Namespace, parser: argparse.ArgumentParser,
                config: dict[str, Any], front: list[str], transfer: Any) -> Any:
    def argv_for(remote: Any, probe: Any) -> list[str]:
        sent = _remote_config(args, parser, remote, probe, config)
        settings = sent if sent is not None else {}
        if transfer is not None:
            transfer.compress = bool(args.compress or settings.get("compress"))
            transfer.trust_mtime = bool(args.trust_mtime if args.trust_mtime is not None
                                        else settings.get("trust_mtime"))
        argv = _remote_argv(parser, args, remote.path, sent)
        return [argv[0], *front, "--command-line", _typed_here(args), *argv[1:]]

    return argv_for


def _typed_here(args: argparse.Namespace) -> str:
    """What the lock holder on a host shows: the command line typed on this machine, and
    which machine that is (the holder's own host is the one it runs on)."""
    import socket

    return f"{_command_line(args)} (from {socket.gethostname()})"


def _remote(args: argparse.Namespace, parser: argparse.ArgumentParser, remote: Any) -> int:
    import shutil

    from .remote import _client
    from .remote._named import named_output

    cmd = args.command
    args.remote_host = str(remote)  # named in an error's --json object (_report)
    settings, config = _remote_setup(args, str(remote))
    if getattr(args, "dry_run", False):
        return _remote_dry_run(args, parser, remote, settings, config)
    front: list[str] = []  # the host's tool's own options, before the user's
    if cmd == "doctor":
        front.append("--json")  # this side adds its own checks, then prints the report
    build, scratch, transfer = None, None, None
    if cmd in ("deploy", "prepare"):
        source, _ = _stage_paths(args, lambda m: _usage(cmd, m))
        build, scratch, more, transfer = _session_sources(args, source)
        front += more
    argv_for = _argv_maker(args, parser, config, front, transfer)
    if build is not None:
        argv_for = _self_sourced(args, argv_for, build)
    try:
        outcome = _client.run(remote, lambda probe: argv_for(remote, probe), settings,
                              _host_err_line(remote), mutating=cmd not in _READ_ONLY,
                              create_root=cmd in ("deploy", "prepare"), build=build,
                              transfer=transfer)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if cmd == "doctor" and outcome.stdout:
        return _remote_doctor(args, remote, outcome)
    if outcome.stdout:
        out = _with_transfer(args, outcome.stdout, outcome.transfer)
        _out_line(named_output(cmd, out, remote, getattr(args, "json", False)), end="")
    return outcome.exit_code


def _host_err_line(remote: Any) -> Any:
    """_err_line for a remote root's stderr: its error line names the host (remote/_named)."""
    from .remote._named import error_message

    def emit(line: str) -> None:
        message = error_message(line, remote)
        _err_line(line if message is None else f"atomic-deploy: {_err('red', 'error:')} {message}")

    return emit


def _with_transfer(args: argparse.Namespace, out: str, transfer: Any) -> str:
    """A remote deploy's --json with how the build went over added (remote.md)."""
    if not getattr(args, "json", False) or transfer is None or not transfer.method:
        return out
    try:
        payload = json.loads(out)
    except ValueError:
        return out
    if not isinstance(payload, dict) or not payload.get("ok"):
        return out
    payload["transfer"] = transfer.summary()
    return json.dumps(payload, sort_keys=True) + "\n"


def _fleet_roots(args: argparse.Namespace) -> list[str] | None:
    """The roots of a command given several (or --hosts FILE, or @NAME), else None."""
    from . import _config

    if args.command in ("activate", "verify"):
        _release_argument(args)
    if args.command not in _FLEET_COMMANDS or getattr(args, "session", None) is not None:
        return None
    given = [r for r in (args.root, *(args.more_roots or [])) if r is not None]
    if args.command in ("deploy", "prepare") and args.git is not None and args.source:
        given.insert(0, args.source)
    if any(_config.is_fleet_name(r) for r in given):
        return _named_fleet(args, given)
    if args.hosts:
        from .fleet import read_hosts

        if len(given) != 1:
            _usage(args.command, "with --hosts FILE give one ROOT: the path on every host")
        return read_hosts(args.hosts, given[0])
    if len(given) <= 1:
        return None
    return given


def _named_fleet(args: argparse.Namespace, given: list[str]) -> list[str] | None:
    """The roots of ``@NAME``, from the fleets table of the --config file or else of
    ./atomic-deploy.toml, which then is the command's --config file (docs/fleet.md)."""
    from . import _config
    from .fleet import named_fleet

    if len(given) != 1 or args.hosts:
        _usage(args.command, f"a named fleet ({next(r for r in given if r.startswith('@'))}) "
                             "is given alone: no other ROOT, no --hosts")
    path = getattr(args, "config", None)
    if not path:
        if not os.path.isfile(_config.FILENAME):
            raise InvalidInput(
                f"{given[0]} names a fleet, but there is no --config FILE and no "
                f"{_config.FILENAME} in this folder ({show(os.getcwd())}) to define it",
                "nothing was changed")
        path = _config.FILENAME
        if hasattr(args, "config") and not getattr(args, "no_config", False):
            args.config = path  # the file that names the fleet sets its options too
    where, table = _config.read(".", path)
    roots = named_fleet(where or path, table, given[0][1:])
    if len(roots) == 1:  # one root: the command as for that root alone
        if args.command in ("deploy", "prepare") and args.git is not None and args.source:
            args.source = roots[0]
        else:
            args.root = roots[0]
        return None
    return roots


def _fleet(args: argparse.Namespace, parser: argparse.ArgumentParser, texts: list[str]) -> int:
    from .fleet import check_distinct
    from .remote import parse_root

    check_distinct(texts)
    if all(parse_root(text) is None for text in texts):
        # A local root joins a fleet of remote ones; several local paths alone are far more
        # likely an extra argument by mistake than a fleet.
        _usage(args.command, f"{len(texts)} local roots given "
                             f"({', '.join(map(show, texts))}): a fleet needs at least one "
                             "remote root (host:/path)")
    roots = []
    for text in texts:
        remote = parse_root(text)
        if remote is None:  # a local root: its session runs here, as a subprocess
            from .remote._local import local_root

            remote = local_root(text)
        roots.append((remote, text))
    if getattr(args, "dry_run", False) and args.command in ("deploy", "prepare"):
        # Each host's own plan (docs/fleet.md#dry-runs): nothing is done, so nothing together.
        return _fleet_each(args, parser, roots)
    if args.command == "status":
        return _fleet_status(args, parser, roots)
    if args.command == "rollback":
        return _fleet_rollback(args, parser, roots)
    if args.command in _PER_HOST:
        return _fleet_each(args, parser, roots)
    if args.command == "activate":
        return _fleet_activate(args, parser, roots)
    return _fleet_deploy(args, parser, roots)


def _fleet_deploy(args: argparse.Namespace, parser: argparse.ArgumentParser,
                  roots: list[tuple[Any, str]]) -> int:
    import shutil

    from .fleet import FleetOptions, deploy_fleet

    cmd = args.command
    if args.parallel is not None and args.parallel < 1:
        _usage(cmd, "--parallel must be 1 or more")
    settings, config = _remote_setup(args, roots[0][1])
    source = None if args.git is not None else args.source
    if source is None and args.git is None:
        _usage(cmd, "SOURCE and ROOT are required")
    build, scratch, front, transfer = _session_sources(args, source)
    front.append("--json")  # each host's result and error, read here
    argv_for = _self_sourced(args, _argv_maker(args, parser, config, front, transfer), build)
    opts = FleetOptions(parallel=args.parallel or 10, host_timeout=args.host_timeout,
                        activate=cmd == "deploy", ordered_locking=bool(args.wait),
                        **_rolling_options(args, []))
    lines = _err_line if not getattr(args, "quiet", False) else (lambda line: None)
    table = _fleet_table(args, roots)
    if table is not None:
        lines, opts.on_event = table.line, table.event
    try:
        r = deploy_fleet(roots, build, argv_for, settings, lines, transfer, opts)
    except BaseException:
        _fleet_table_close(table, None)
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    _fleet_table_close(table, r)
    payload = r.to_dict()
    if r.exit_code != 0 and r.error:
        print(f"atomic-deploy: {_err('red', 'error:')} {show(r.error)}", file=sys.stderr)
    if getattr(args, "json", False):
        _out_line(json.dumps({**envelope(cmd, payload), "ok": r.exit_code == 0},
                             sort_keys=True))
        return r.exit_code
    verb = "deployed" if cmd == "deploy" else "prepared"
    if r.exit_code == 0:
        skew = f"switch skew {r.skew * 1000:.1f} ms; " if r.skew is not None else ""
        head = f"{verb} {r.release} to {_n_hosts(len(r.hosts))} ({skew}{r.seconds:.2f}s)"
        if len(r.batches) > 1:
            head = _rolling_head(r, verb)
    else:
        head = f"{r.outcome}: {_n_hosts(len(r.hosts))}"
    width = max(len(h.host) for h in r.hosts)
    phases = max(9, *(len(h.phase) for h in r.hosts))
    rows = [f"  {h.host:<{width}}  {h.phase:<{phases}}  {h.release or '-':<14}  "
            # "-": it never got as far as sealing a release, so nothing was counted
            + (f"{count(h.files, 'file')}, {h.linked} linked" if h.files or h.linked else "-")
            + _host_result(h)
            for h in r.hosts]
    _emit(args, payload, "\n".join([head, *rows, *_fleet_pruned(r.hosts)]))
    return r.exit_code


def _fleet_pruned(hosts: list[Any]) -> list[str]:
    """One line per host whose deploy pruned, worded as one root's deploy says it."""
    return [f"{h.host}: pruned {len(h.pruned)}: {', '.join(h.pruned)}" for h in hosts
            if h.pruned]


def _already(on_target: list[str]) -> str:
    """A rollback's or activate's head: how many hosts were already there (left alone)."""
    return f"; {len(on_target)} already on it" if on_target else ""


def _with_already(r: Any, given: list[str], on_target: list[str], target: str) -> int:
    """Put the hosts left alone (already on ``target``) into a rollback's or activate's
    result, in the order given, and into the list of a mixed fleet's hosts; returns how many
    it switched."""
    from .fleet import with_unchanged

    moved = len(r.hosts)
    r.hosts = with_unchanged(r.hosts, given, on_target, target)
    if r.exit_code != 0 and r.error and on_target:  # the hosts' states: those left alone too
        r.error += "".join(f"; {text} on {target}" for text in on_target)
    return moved


def _fleet_unchanged(args: argparse.Namespace, given: list[str], target: str) -> int:
    """A rollback or activate that found every host already on ``target``: each is in
    --json's ``hosts``, phase ``unchanged``."""
    from .fleet import with_unchanged

    hosts = [h.to_dict() for h in with_unchanged([], given, given, target)]
    _emit(args, {"release": target, "outcome": "unchanged", "exit_code": 0, "hosts": hosts},
          f"every host is already on {target}")
    return EXIT_OK


def _host_result(h: Any) -> str:
    """A fleet host's row ends with its error (without the state its own line gave: the row
    says where it is), or what happened to it (``not started: ...``)."""
    said = getattr(h, "brief", None) or h.error or h.note
    return f"  ({said})" if said else ""


def _n_hosts(n: int) -> str:
    return f"{n} host" if n == 1 else f"{n} hosts"


def _rolling_head(r: Any, verb: str) -> str:
    """A rolling deploy's summary: the worst skew within a batch, and how long the fleet was
    mixed (from the first host's switch to the last's)."""
    worst = max((b.skew for b in r.batches if b.skew is not None), default=None)
    skew = f"switch skew {worst * 1000:.1f} ms at most in a batch; " if worst is not None else ""
    mixed = f"mixed for {r.skew:.2f}s; " if r.skew is not None else ""
    return (f"{verb} {r.release} to {_n_hosts(len(r.hosts))} in {len(r.batches)} batches "
            f"({skew}{mixed}{r.seconds:.2f}s)")


def _fleet_rollback(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    roots: list[tuple[Any, str]]) -> int:
    """Every host to one release, two-phase like a deploy: ``--to``, or the newest release
    that is good on every host and older than the one they all serve."""
    from .fleet import FleetOptions

    settings, config = _remote_setup(args, roots[0][1])
    lists = _fleet_listings(args, settings, roots)
    currents = {next((i for i, st in rel.items() if st == "current"), None) for rel in lists}
    if args.to is not None:
        missing = [text for (_, text), rel in zip(roots, lists) if args.to not in rel]
        if missing:
            raise InvalidInput(f"release {args.to} is not on {', '.join(missing)}",
                               "nothing was changed")
        target = args.to
    elif len(currents) != 1 or None in currents:
        where = "; ".join(f"{text} on "
                          f"{next((i for i, st in rel.items() if st == 'current'), 'nothing')}"
                          for (_, text), rel in zip(roots, lists))
        raise InvalidInput(f"the fleet is mixed ({where}): say which release every host goes "
                           "to with --to RELEASE_ID", "nothing was changed")
    else:
        (current,) = currents
        common = set.intersection(*({i for i, st in rel.items() if st == "good"}
                                    for rel in lists))
        older = sorted(i for i in common if current is not None and i < current)
        if not older:
            raise InvalidInput(f"nothing to roll back to: no release older than {current} is "
                               "good on every host", "nothing was changed")
        target = older[-1]
    # Hosts already on the target stay as they are (a mixed fleet converging).
    given = [text for _, text in roots]
    on_target = [text for (_, text), rel in zip(roots, lists) if rel.get(target) == "current"]
    roots = [item for item, rel in zip(roots, lists) if rel.get(target) != "current"]
    for text in on_target:
        _err_line(f"{text}: already on {target}")
    if not roots:
        return _fleet_unchanged(args, given, target)
    if args.dry_run:  # each host's plan of going to the fleet's target
        args.to = target
        return _fleet_each(args, parser, roots)
    front = ["--session", "fleet", "--json"]
    base = _argv_maker(args, parser, config, front, None)

    def argv_for(remote: Any, probe: Any) -> list[str]:
        argv: list[str] = base(remote, probe)
        if args.to is None:
            argv[1:1] = ["--to", target]
        return argv

    opts = FleetOptions(parallel=args.parallel or 10, host_timeout=args.host_timeout,
                        ordered_locking=bool(args.wait), **_rolling_options(args, []))
    r = _fleet_switch(args, roots, argv_for, settings, opts)
    moved = _with_already(r, given, on_target, target)
    if r.exit_code != 0 and r.error:
        print(f"atomic-deploy: {_err('red', 'error:')} {show(r.error)}", file=sys.stderr)
    payload = r.to_dict()
    if getattr(args, "json", False):
        _out_line(json.dumps({**envelope("rollback", payload), "ok": r.exit_code == 0},
                             sort_keys=True))
        return r.exit_code
    bad, each_bad = _marked_bad(r.hosts)
    head = (f"rolled back {_n_hosts(moved)} to {r.release}{bad}{_already(on_target)}"
            if r.exit_code == 0 else f"{r.outcome}: {_n_hosts(len(r.hosts))}")
    rows = [f"  {h.host}  {h.release or '-'}  (previous {h.previous or '-'}{each_bad.get(h.host, '')})"
            + _host_result(h) for h in r.hosts]
    _emit(args, payload, "\n".join([head, *rows]))
    return r.exit_code


def _marked_bad(hosts: list[Any]) -> tuple[str, dict[str, str]]:
    """What a fleet rollback marked bad, as one root's says it (``(X marked bad)``): in the
    head when every host that rolled back marked the same release, else on each host's row
    (host -> what its row adds)."""
    marked = {h.marked_bad for h in hosts if h.phase == "committed"}
    if len(marked) == 1 and None not in marked:
        return f" ({marked.pop()} marked bad)", {}
    return "", {h.host: f"; {h.marked_bad} marked bad" for h in hosts if h.marked_bad}


def _fleet_status(args: argparse.Namespace, parser: argparse.ArgumentParser,
                  roots: list[tuple[Any, str]]) -> int:
    """Each host's status, side by side; "mixed" when they do not all serve one release."""
    import concurrent.futures

    from .remote import _client

    settings, _config = _remote_setup(args, roots[0][1])

    def one(item: tuple[Any, str]) -> dict[str, Any]:
        remote, text = item
        try:
            out = _client.run(remote, lambda probe: ["status", "--json", "--", remote.path],
                              settings, lambda line: None, mutating=False)
            payload = json.loads(out.stdout) if out.stdout.strip() else {}
            return {"host": text, "exit_code": out.exit_code, **{
                k: payload.get(k) for k in ("current", "rollback_target", "serving", "lock_holder",
                                            "recovery")},
                "error": payload.get("error")}
        except AtomicDeployError as exc:
            return {"host": text, "exit_code": 2, "current": None, "error": exc.message}

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel or 10) as ex:
        hosts = list(ex.map(one, roots))
    code, mixed, head = _fleet_status_head(hosts)
    width = max(len(h["host"]) for h in hosts)
    rows = [_fleet_status_row(h, width) for h in hosts]
    # Exit 1 (mixed, or a host not serving) is a finding: ok stays true, as for one root.
    _emit(args, {"mixed": mixed, "hosts": hosts, "exit_code": code, "ok": code != 2},
          "\n".join([head, *rows]))
    return code


def _fleet_status_row(h: dict[str, Any], width: int) -> str:
    """A host's row: its current release and rollback target, ``none`` as one root's status
    says; ``unknown`` for a host that could not be asked (its error at the end)."""
    none = "unknown" if h["exit_code"] == 2 else "none"
    return (f"  {h['host']:<{width}}  {h.get('current') or none:<14}  "
            f"rollback target {h.get('rollback_target') or none}"
            + (f"  ({h['error']})" if h.get("error") else ""))


def _fleet_status_head(hosts: list[dict[str, Any]]) -> tuple[int, bool, str]:
    """The exit code, whether the fleet is mixed, and the head line of a fleet's status. A
    host whose status failed (unreachable, not a deploy root: exit 2) serves a release not
    known here: it is named as unknown, never said to be on nothing, and does not make the
    hosts that answered alike a mixed fleet."""
    asked = [h for h in hosts if h["exit_code"] != 2]
    unasked = [h for h in hosts if h["exit_code"] == 2]
    currents = {h.get("current") for h in asked}
    mixed = len(currents) > 1
    code = 2 if unasked else 1 if mixed or any(h["exit_code"] != 0 for h in asked) else 0
    names = ", ".join(h["host"] for h in unasked)
    if mixed:
        head = "mixed: " + "; ".join(
            f"{h['host']} on {h.get('current') or 'nothing'}" if h["exit_code"] != 2
            else f"{h['host']} unknown" for h in hosts)
    elif not asked:
        head = f"no host's release is known: {names}"
    elif unasked:
        head = f"every other host on {next(iter(currents)) or 'nothing'}; unknown: {names}"
    else:
        head = f"every host on {next(iter(currents)) or 'nothing'}"
    return code, mixed, head


def _release_argument(args: argparse.Namespace) -> None:
    """activate and verify name a release: ``ROOT RELEASE_ID`` for one root, or ``ROOT
    ROOT... --to/--release RELEASE_ID`` for a fleet. With the option every positional
    argument is a root; so is a second one naming a remote root (``host:/path``: it holds "/",
    which no release id has); a release id among several roots is refused. Leaves the release
    in ``args.release`` and the roots in ``more_roots``."""
    more = list(getattr(args, "more_roots", None) or [])
    release, option = args.release, getattr(args, "release_opt", None)
    remote = "/" in release and (":" in release.split("/", 1)[0]
                                 or release.startswith("ssh://")) if release else False
    if release is not None and (option is not None or remote):
        more.insert(0, release)
        release = None
    elif release is not None and (more or getattr(args, "hosts", None)):
        flag = "--to" if args.command == "activate" else "--release"
        _usage(args.command, f"with several roots give the release with {flag} RELEASE_ID "
                             f"(every other argument is a root): {args.command} ROOT ROOT... "
                             f"{flag} RELEASE_ID")
    args.release, args.release_opt, args.more_roots = \
        option if option is not None else release, None, more
    if args.command == "activate" and args.release is None \
            and getattr(args, "session", None) is None:
        _usage("activate", "give the release: activate ROOT RELEASE_ID, or for several roots "
                           "activate ROOT ROOT... --to RELEASE_ID")


def _fleet_table(args: argparse.Namespace, roots: list[tuple[Any, str]]) -> Any:
    """The live table of a two-phase fleet command: on a terminal (stderr), never with -q or
    TERM=dumb; else None (one line per host per phase, as in a log)."""
    stream = sys.stderr
    if (getattr(args, "quiet", False) or stream is None or not stream.isatty()
            or os.environ.get("TERM") == "dumb"):
        return None
    from ._fleettable import FleetTable

    return FleetTable(stream, [text for _, text in roots])


def _fleet_table_close(table: Any, r: FleetResult | None) -> None:
    """The table's last frame and a summary line: how many hosts ended in which phase."""
    if table is None:
        return
    if r is None:
        table.close(None)
        return
    skew = f"; switch skew {r.skew * 1000:.1f} ms" if r.skew is not None else ""
    table.close(f"{r.outcome}: {_n_hosts(len(r.hosts))}", f"{skew}; {r.seconds:.2f}s")


def _fleet_switch(args: argparse.Namespace, roots: list[tuple[Any, str]], argv_for: Any,
                  settings: Any, opts: FleetOptions) -> FleetResult:
    """Switch every root to the release its command names (rollback, activate), with the live
    table on a terminal."""
    from .fleet import deploy_fleet
    from .remote import _client

    lines = _err_line if not getattr(args, "quiet", False) else (lambda line: None)
    table = _fleet_table(args, roots)
    if table is not None:
        lines, opts.on_event = table.line, table.event
    try:
        r = deploy_fleet(roots, None, argv_for, settings, lines, _client.Transfer(), opts)
    except BaseException:
        _fleet_table_close(table, None)
        raise
    _fleet_table_close(table, r)
    return r


def _fleet_listings(args: argparse.Namespace, settings: Any,
                    roots: list[tuple[Any, str]]) -> list[dict[str, str]]:
    """Each root's releases and their states (its ``list --json``), asked in parallel."""
    import concurrent.futures

    from .remote import _client

    def listing(item: tuple[Any, str]) -> dict[str, str]:
        remote, text = item
        out = _client.run(remote, lambda probe: ["list", "--json", "--", remote.path],
                          settings, lambda line: None, mutating=False)
        if out.exit_code != 0:
            raise InvalidInput(f"{text}: cannot list its releases: {_host_error(out)}",
                               "nothing was changed")
        return {r["id"]: r["state"] for r in json.loads(out.stdout)["releases"]}

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel or 10) as ex:
        return list(ex.map(listing, roots))


def _host_error(out: Any) -> str:
    """The error a host's ``--json`` command gave (its object's ``error``), else its exit code."""
    try:
        error = json.loads(out.stdout).get("error")
    except (ValueError, AttributeError):
        error = None
    return str(error) if error else f"exit {out.exit_code}"


def _fleet_activate(args: argparse.Namespace, parser: argparse.ArgumentParser,
                    roots: list[tuple[Any, str]]) -> int:
    """``activate ROOT... --to RELEASE_ID``: every host to that release, two-phase like a
    fleet rollback (all locked, then all switched, all switched back if one fails)."""
    from .fleet import FleetOptions

    if args.parallel is not None and args.parallel < 1:
        _usage("activate", "--parallel must be 1 or more")
    target = str(args.release)
    settings, config = _remote_setup(args, roots[0][1])
    lists = _fleet_listings(args, settings, roots)
    missing = [text for (_, text), rel in zip(roots, lists) if target not in rel]
    if missing:
        raise InvalidInput(f"release {target} is not on {', '.join(missing)}",
                           "nothing was changed")
    # Hosts already on it stay as they are (a mixed fleet converging).
    given = [text for _, text in roots]
    on_target = [text for (_, text), rel in zip(roots, lists) if rel.get(target) == "current"]
    for text in on_target:
        _err_line(f"{text}: already on {target}")
    roots = [item for item, rel in zip(roots, lists) if rel.get(target) != "current"]
    if not roots:
        return _fleet_unchanged(args, given, target)
    if args.dry_run:  # each host's plan
        return _fleet_each(args, parser, roots)
    argv_for = _argv_maker(args, parser, config, ["--session", "fleet", "--json"], None)
    opts = FleetOptions(parallel=args.parallel or 10, host_timeout=args.host_timeout,
                        ordered_locking=bool(args.wait))
    r = _fleet_switch(args, roots, argv_for, settings, opts)
    moved = _with_already(r, given, on_target, target)
    if r.exit_code != 0 and r.error:
        print(f"atomic-deploy: {_err('red', 'error:')} {show(r.error)}", file=sys.stderr)
    payload = r.to_dict()
    if getattr(args, "json", False):
        _out_line(json.dumps({**envelope("activate", payload), "ok": r.exit_code == 0},
                             sort_keys=True))
        return r.exit_code
    head = (f"activated {r.release} on {_n_hosts(moved)}{_already(on_target)} "
            f"({r.seconds:.2f}s)" if r.exit_code == 0
            else f"{r.outcome}: {_n_hosts(len(r.hosts))}")
    rows = [f"  {h.host}  {h.release or '-'}  (previous {h.previous or '-'})"
            + _host_result(h) for h in r.hosts]
    _emit(args, payload, "\n".join([head, *rows]))
    return r.exit_code


# A host's exit 1 that is a finding, not a failure (the host's object says ok: true).
_FINDINGS = ("verify", "doctor")


def _fleet_each(args: argparse.Namespace, parser: argparse.ArgumentParser,
                roots: list[tuple[Any, str]]) -> int:
    """list, verify, doctor, recover, prune, adopt over a fleet: the command runs on every
    host on its own (``--parallel`` at a time); each host's output comes back whole, every
    line prefixed with the host, hosts in the order given. Exit: 0 when every host gave 0,
    else the highest code a host gave (2, could not be asked or bad input, before 1)."""
    import concurrent.futures
    import threading

    from .fleet import host_line
    from .remote import _client

    cmd = args.command
    if args.parallel is not None and args.parallel < 1:
        _usage(cmd, "--parallel must be 1 or more")
    settings, config = _remote_setup(args, roots[0][1])
    if cmd == "adopt" and args.id is None:
        from ._layout import new_release_id

        args.id = new_release_id(set())  # one id on every host, as a fleet deploy gives
    as_json = bool(getattr(args, "json", False))
    front = ["--json"] if as_json or cmd == "doctor" else []
    dry_run = bool(getattr(args, "dry_run", False))
    argv_for = _dry_run_argv(args, parser, config, front, _fleet_source(args)) if dry_run \
        else _argv_maker(args, parser, config, front, None)
    lock = threading.Lock()

    def one(item: tuple[Any, str]) -> dict[str, Any]:
        remote, text = item

        def say(line: str) -> None:
            with lock:  # one whole line at a time: hosts never interleave mid-line
                _err_line(host_line(text, line))

        host: dict[str, Any] = {"host": text, "exit_code": 0, "ok": True, "error": None,
                                "result": None}
        try:
            out = _client.run(remote, lambda probe: argv_for(remote, probe), settings, say,
                              mutating=cmd not in _READ_ONLY and not dry_run)
        except AtomicDeployError as exc:
            say(f"error: {exc.message}")
            return {**host, "exit_code": exc.exit_code, "ok": False, "error": exc.message,
                    "text": ""}
        code, stdout = int(out.exit_code), str(out.stdout)
        if cmd == "doctor":
            report = _remote_doctor_report(remote, out)
            if report is not None:
                code, payload, stdout = report
                stdout = json.dumps(envelope(cmd, payload)) if as_json else stdout + "\n"
        result: Any = None
        if as_json and stdout.strip():
            with contextlib.suppress(ValueError):
                result = json.loads(stdout)
        ok = result.get("ok") is not False if isinstance(result, dict) else \
            code == 0 or (cmd in _FINDINGS and code == 1)
        error = result.get("error") if isinstance(result, dict) else None
        if not ok and error is None:
            error = f"exit status {code}"
        return {**host, "exit_code": code, "ok": ok, "error": error, "result": result,
                "text": stdout}

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel or 10) as ex:
        hosts = list(ex.map(one, roots))
    code = max(int(h["exit_code"]) for h in hosts)
    failed = [h for h in hosts if not h["ok"]]
    if failed:
        what = "; ".join(f"{h['host']} (exit {h['exit_code']})" for h in failed)
        did = f"{cmd} --dry-run gave no plan" if dry_run else f"{cmd} failed"
        print(f"atomic-deploy: {_err('red', 'error:')} {did} on {len(failed)} of "
              f"{_n_hosts(len(hosts))}: {show(what)}", file=sys.stderr)
    if as_json:
        _out_line(json.dumps({**envelope(cmd, {
            **({"dry_run": True} if dry_run else {}), "exit_code": code,
            "hosts": [{k: v for k, v in h.items() if k != "text"} for h in hosts]}),
            "ok": not failed}, sort_keys=True))
        return code
    for h in hosts:
        for line in str(h["text"]).splitlines():
            _out_line(f"{h['host']}: {line}")
    return code


def _remote_config(args: argparse.Namespace, parser: argparse.ArgumentParser, remote: Any,
                   probe: Any, local: dict[str, Any]) -> dict[str, Any] | None:
    """The settings to send to the host's tool (None: nothing to send). ``--config FILE`` is
    read here; otherwise the host's own ROOT/atomic-deploy.toml, fetched by the probe, is parsed
    here (the host's python then needs no TOML parser) with the command's own rules."""
    from . import _config

    if not any(a.dest == "no_config" for a in _subparser(parser, args.command)._actions):
        return None  # a command that reads no root's settings (its --config is this machine's)
    if getattr(args, "config", None):
        return local
    if getattr(args, "no_config", False) or (probe.config is None and not probe.config_error):
        return None
    import posixpath

    where = f"{remote.label}:{posixpath.join(remote.path, _config.FILENAME)}"
    if probe.config_error:
        problem = InvalidInput(f"config file {show(where)} cannot be read: {probe.config_error}",
                               "nothing was changed")
        if args.command != "rollback":
            raise problem
        _warn(f"{problem.message}; going on without the config file")
        return {}
    fetched = (where, probe.config)
    if args.command == "rollback":
        return _config.load_lenient(".", None, _ROLLBACK_KEYS, _warn, fetched)
    return _config.load(".", None, fetched)


def _remote_doctor(args: argparse.Namespace, remote: Any, outcome: Any) -> int:
    """The host's checks, and this side's: the host's python, how builds will travel."""
    report = _remote_doctor_report(remote, outcome)
    if report is None:
        _out_line(outcome.stdout, end="")
        return int(outcome.exit_code)
    code, payload, text = report
    from .remote._named import named_checks

    payload["host"] = str(remote)
    _emit(args, payload, named_checks(text, remote))
    return code


def _remote_doctor_report(remote: Any, outcome: Any) -> tuple[int, dict[str, Any], str] | None:
    """(exit code, JSON payload, text) of a remote doctor, this side's checks added; None
    when the host's answer is not a doctor report."""
    import shutil

    from ._doctor import OK, WARN, Check, exit_status, format_checks

    try:
        payload = json.loads(outcome.stdout)
        checks = [Check(**c) for c in payload["checks"]]
    except (ValueError, KeyError, TypeError):
        return None
    probe = outcome.probe
    if probe is not None:
        version = ".".join(map(str, probe.python))
        checks.append(Check("remote python", OK, f"Python {version} on {remote.label}"))
        here = shutil.which("rsync") is not None
        if probe.rsync and here:
            checks.append(Check("transfer", OK, "rsync over ssh: files unchanged since the "
                                "current release are hard-linked, not sent; contents "
                                "compared by the digests of its manifest"))
        else:
            where = "on the host" if not probe.rsync else "on this machine"
            checks.append(Check("transfer", WARN, f"no rsync {where}: builds go as a tar "
                                "stream, every file sent and stored anew",
                                f"install rsync {where}"))
    code = exit_status(checks)
    return code, {"root": payload.get("root"), "healthy": code == 0,
                  "checks": [c.to_dict() for c in checks]}, format_checks(checks)


def _local_build(args: argparse.Namespace, source: str | None) -> tuple[str, str | None,
                                                                         str | None]:
    """(folder to send, scratch folder to remove, revision): the source is read here."""
    import tempfile

    from . import _sources

    if args.git is not None:
        scratch = tempfile.mkdtemp(prefix="atomic-deploy-build-")
        build = os.path.join(scratch, "build")
        os.mkdir(build)
        repo = os.path.abspath(args.git) if os.path.exists(args.git) else args.git
        try:
            commit = _sources.export_git(repo, args.ref or "HEAD", build)
        except BaseException:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return build, scratch, commit
    assert source is not None
    fetch = _fetch_options(args, source)
    if fetch is not None:
        return _fetched_build(args, source, fetch)
    if os.path.isfile(source):
        if _sources.tarball_kind(source) is None:
            raise InvalidInput(f"source {show(source)} is a file but not a tar archive "
                               "(.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)", "nothing was changed")
        scratch = tempfile.mkdtemp(prefix="atomic-deploy-build-")
        build = os.path.join(scratch, "build")
        os.mkdir(build)
        try:
            ex = _sources.extract_tarball(source, build, args.strip_components or 0)
        except BaseException:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
            raise
        if ex.single_folder is not None:
            _warn(_sources.one_folder_hint(source, ex.single_folder))
        return build, scratch, None
    if args.strip_components:
        raise InvalidInput("--strip-components applies to tarball sources only",
                           "nothing was changed")
    from ._copy import check_source

    return check_source(source, None), None, None


def _fetched_build(args: argparse.Namespace, source: str,
                   fetch: Any) -> tuple[str, str | None, str | None]:
    """A URL source of a remote deploy, fetched and checked here into a scratch folder (the
    hosts then get it as any build); with --pull each host fetches it instead."""
    import shutil
    import tempfile

    from . import _fetch, _sources

    if not _fetch.is_url(source):
        raise InvalidInput("--sha256, --header, --fetch-timeout and --insecure-no-checksum "
                           "apply to URL sources (http://, https://, file://)",
                           "nothing was changed")
    fetch.url = source
    _fetch.check(source, fetch)
    scratch = tempfile.mkdtemp(prefix="atomic-deploy-build-")
    build = os.path.join(scratch, "build")
    os.mkdir(build)
    try:
        ex = _fetch.fetch_into(source, build, fetch, lambda step: None,
                               strip_components=args.strip_components or 0)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        _close_progress(fetch)
    if ex.single_folder is not None:
        _warn(_sources.one_folder_hint(_fetch.redact(source), ex.single_folder))
    return build, scratch, None


def _session_sources(args: argparse.Namespace,
                     source: str | None) -> tuple[str, str | None, list[str], Any]:
    """``_session_build``, or with --pull: nothing read here, every host fetches the URL
    (the transfer method "pull": only control messages go to the hosts)."""
    if not getattr(args, "pull", False):
        return _session_build(args, source)
    from . import _fetch
    from .remote import _client

    if source is None or not _fetch.is_url(source):
        _usage(args.command, "--pull needs a URL as SOURCE (https://, http://, file://): each "
                             "host fetches it itself")
    fetch = _fetch_options(args, source)
    _fetch.check(source, fetch)  # refused here, before any host is touched
    transfer = _client.Transfer(method="pull")
    return source, None, ["--session", _fetch.redact(source)], transfer


def _self_sourced(args: argparse.Namespace, argv_for: Any, build: str) -> Any:
    """The host command lines of self-sourced sessions: with --pull every host is given the
    URL and its options (it fetches and checks it itself); a local root of a fleet is given
    the build folder (it copies it itself). The others receive the build as before."""
    from .remote._local import LocalRoot

    pull = bool(getattr(args, "pull", False))

    def argv(remote: Any, probe: Any) -> list[str]:
        made: list[str] = argv_for(remote, probe)
        if not pull and not isinstance(remote, LocalRoot):
            return made
        assert made[-2] == "--"  # deploy and prepare: [..., "--", ROOT]
        extra: list[str] = []
        if pull:
            if args.sha256 is not None:
                extra += ["--sha256", args.sha256]
            for header in args.header or []:
                extra += ["--header", header]
            if args.fetch_timeout is not None:
                extra += ["--fetch-timeout", repr(args.fetch_timeout)]
            if args.insecure_no_checksum:
                extra.append("--insecure-no-checksum")
            if args.strip_components:
                extra += ["--strip-components", str(args.strip_components)]
        src = build if pull else os.path.abspath(build)
        return [*made[:-2], *extra, "--", src, made[-1]]

    return argv


# -- --dry-run on remote roots (docs/remote.md#dry-runs) ------------------------------------

def _remote_dry_run(args: argparse.Namespace, parser: argparse.ArgumentParser, remote: Any,
                    settings: Any, config: dict[str, Any]) -> int:
    """The plan of the command on one remote root, made by the host's tool run as a read-only
    command: from ROOT/.atomic-deploy/bin when that holds this exact tool, else from memory
    (nothing uploaded, nothing written on the host)."""
    from .remote import _client

    source = None
    if args.command in ("deploy", "prepare"):
        source, _ = _stage_paths(args, lambda m: _usage(args.command, m))
    argv_for = _dry_run_argv(args, parser, config, [], source)
    outcome = _client.run(remote, lambda probe: argv_for(remote, probe), settings,
                          _host_err_line(remote), mutating=False)
    if outcome.stdout:
        _out_line(_host_named(args, outcome.stdout, remote), end="")
    return outcome.exit_code


def _host_named(args: argparse.Namespace, out: str, remote: Any) -> str:
    """A remote dry run's output, the host named: ``host`` in --json, in the first line else."""
    from .remote._named import named_output

    host = str(remote)
    if getattr(args, "json", False):
        return named_output(args.command, out, remote, True)
    local = "dry run, nothing changed"
    if out.startswith(local):
        return f"dry run on {host}, nothing changed" + out[len(local):]
    return f"dry run on {host}: {out}"  # recover's one line: "would ..." or "nothing to ..."


def _fleet_source(args: argparse.Namespace) -> str | None:
    """A fleet deploy's SOURCE (None with --git: every positional argument is a root)."""
    if args.command not in ("deploy", "prepare") or args.git is not None:
        return None
    if args.source is None:
        _usage(args.command, "SOURCE and ROOT are required")
    return str(args.source)


def _dry_run_argv(args: argparse.Namespace, parser: argparse.ArgumentParser,
                  config: dict[str, Any], front: list[str], source: str | None) -> Any:
    """The host command lines of a dry run. For deploy and prepare the build is here: its
    part of the plan is made here (the source checked, nothing fetched, extracted or sent)
    and given to the host's tool, which adds the root's part."""
    base = _argv_maker(args, parser, config, front, None)
    if args.command not in ("deploy", "prepare"):
        return base
    import socket

    from ._plan import remote_source_steps
    from .operations import DeployOptions

    pull = bool(getattr(args, "pull", False))
    fetch = _fetch_options(args, source)
    if fetch is not None:
        fetch.progress = None  # nothing is fetched
    if pull:
        from . import _fetch

        if source is None or not _fetch.is_url(source):
            _usage(args.command, "--pull needs a URL as SOURCE (https://, http://, file://): "
                                 "each host fetches it itself")
        _fetch.check(source, fetch)
    opts = DeployOptions(git=args.git, ref=args.ref or "HEAD",
                         strip_components=args.strip_components or 0, fetch=fetch)
    described = remote_source_steps(source, opts, pull, socket.gethostname())

    def argv_for(remote: Any, probe: Any) -> list[str]:
        argv: list[str] = base(remote, probe)
        steps = list(described)
        how = _transfer_step(args, remote, probe, pull)
        if how is not None:
            steps.insert(1, how)
        return [argv[0], "--plan-source", json.dumps(steps), *argv[1:]]

    return argv_for


def _transfer_step(args: argparse.Namespace, remote: Any, probe: Any, pull: bool) -> str | None:
    """How the build would travel to this host, as far as its probe says (no file is hashed
    or compared in a dry run)."""
    import shutil

    from .remote._local import LocalRoot

    if pull or isinstance(remote, LocalRoot):
        return None  # the host (a local root: this machine) reads the build itself
    if not (probe.rsync and shutil.which("rsync")):
        where = "on the host" if not probe.rsync else "here"
        return f"send every file as a tar stream (no rsync {where})"
    if args.trust_mtime:
        return ("send it by rsync: files of the host's current release with the same size "
                "and mtime (--trust-mtime) are hard-linked there, not sent")
    if probe.digests:
        return ("send it by rsync: files the host's current release holds unchanged (content "
                "digests of its manifest compared with the build's) are hard-linked there, "
                "not sent")
    return ("send it by rsync: files the host's current release (if any) holds with the same "
            "contents (--checksum) are hard-linked there, not sent")


def _host_stage_plan(args: argparse.Namespace) -> int:
    """The host's side of a remote deploy's or prepare's --dry-run: the plan for ROOT, with
    the build's part as the deploying machine described it (--plan-source)."""
    from ._plan import plan_deploy

    if not args.dry_run:
        raise UsageError("--plan-source is for --dry-run")
    try:
        described = json.loads(args.plan_source)
    except ValueError:
        described = None
    if not (isinstance(described, list) and described
            and all(isinstance(step, str) for step in described)):
        raise UsageError("--plan-source takes a JSON list of steps")
    root = args.root if args.root is not None else args.source
    if root is None:
        raise UsageError("ROOT is required")
    opts = _options(args, root)
    return _plan(args, plan_deploy(None, root, opts, args.command == "deploy", described))

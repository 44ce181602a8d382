"""The atomic-deploy(1) man page, generated from the argparse parser.

Commands, options and help texts come from the parser and the exit codes from its epilog, so the
page cannot drift from ``--help``. Only FILES (the root layout) and SEE ALSO are written here,
and FILES takes its names from ``_layout``.
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap
import time
from collections.abc import Mapping

from . import _layout
from ._completion import Command, Option, Positional, commands, metavar_of
from ._config import FILENAME as CONFIG_FILENAME

# argparse's own group titles: their options are listed without a heading.
_DEFAULT_GROUPS = ("positional arguments", "optional arguments", "options")
_EXIT_HEADING = re.compile(r"^\s*exit (codes|status)\s*:?\s*$", re.IGNORECASE)
_EXIT_LINE = re.compile(r"^\s*(\d+(?:\s*[,/-]\s*\d+)*)\s{2,}(\S.*)$")
# A command's own codes within the block: "  status: 0 current serves ..."
_EXIT_FOR = re.compile(r"^\s*([a-z][a-z ]*):\s+(\S.*)$")
_OPTION_TOKEN = re.compile(r"(?<![\w-])-{1,2}[A-Za-z0-9][\w-]*")


def _escape(text: str) -> str:
    r"""Text for a roff body line: backslashes as \e, and no line may start with a control
    character ('.' or "'"), which roff would read as a request."""
    text = text.replace("\\", "\\e")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def _prose(text: str, prog: str) -> str:
    """Escaped running text; hyphens in option names and the program name become \\- so they
    render (and copy-paste) as ASCII minus signs, not typographic hyphens."""
    out = _escape(text)
    out = _OPTION_TOKEN.sub(lambda m: m.group(0).replace("-", "\\-"), out)
    return out.replace(prog, prog.replace("-", "\\-"))


def _literal(text: str) -> str:
    """An option name, command or path: every hyphen is a minus."""
    return _escape(text).replace("-", "\\-")


def _quoted_arg(text: str) -> str:
    """A macro argument in double quotes (.TH, .SS)."""
    return '"' + text.replace('"', '\\(dq') + '"'


def _option_label(o: Option) -> str:
    value = f" \\fI{_literal(o.metavar)}\\fR" if o.takes_value else ""
    return ", ".join(f"\\fB{_literal(s)}\\fR{value}" for s in o.strings)


def _positional_usage(p: Positional) -> str:
    name = f"\\fI{_literal(p.metavar)}\\fR"
    if p.nargs in ("*", argparse.REMAINDER):
        return f"[{name} ...]"
    if p.nargs == "+":
        return f"{name} [{name} ...]"
    if isinstance(p.nargs, int):
        return " ".join([name] * p.nargs)
    return f"[{name}]" if p.optional else name


def _synopsis(prog: str, cmd: Command, has_options: bool) -> str:
    parts = [f"\\fB{_literal(prog)}{' ' + _literal(cmd.name) if cmd.name else ''}\\fR"]
    if has_options:
        parts.append("[\\fIoptions\\fR]")
    parts += [_positional_usage(p) for p in cmd.positionals]
    return " ".join(parts)


def _paragraphs(text: str | None) -> list[str]:
    """Blank-line separated paragraphs, each folded onto one line."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text or "") if p.strip()]


def _blocks(text: str | None, prog: str) -> list[str]:
    """Roff for free text (a description or epilog): a paragraph per blank-line separated block,
    except that a block whose later lines are indented ("install:" then commands) is kept line
    for line, unfilled, so commands are neither re-wrapped nor hyphenated."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text or ""):
        lines = [line.rstrip() for line in block.strip("\n").split("\n") if line.strip()]
        if not lines:
            continue
        if len(lines) > 1 and all(line[:1].isspace() for line in lines[1:]):
            body = textwrap.dedent("\n".join(lines[1:])).split("\n")
            out += [".PP", _prose(lines[0].strip(), prog), ".RS", ".nf",
                    *[_literal(line) for line in body], ".fi", ".RE"]
        else:
            out += [".PP", _prose(" ".join(block.split()), prog)]
    return out


def split_epilog(epilog: str | None) -> tuple[list[tuple[str, str]], list[str]]:
    """(exit codes, other paragraphs) from an epilog with an 'exit codes:' block.

    The block is a heading line followed by lines of ``CODE  text`` (two or more spaces between);
    a more indented line without a code continues the previous entry.
    """
    codes: list[tuple[str, str]] = []
    rest: list[str] = []
    for block in re.split(r"\n\s*\n", epilog or ""):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if _EXIT_HEADING.match(lines[0]):
            for line in lines[1:]:
                m = _EXIT_LINE.match(line) or _EXIT_FOR.match(line)
                if m:
                    codes.append((m.group(1), " ".join(m.group(2).split())))
                elif codes:
                    codes[-1] = (codes[-1][0], codes[-1][1] + " " + " ".join(line.split()))
        else:
            rest.append(block.strip("\n"))
    return codes, rest


def _options_block(cmd: Command, prog: str, skip: set[str]) -> list[str]:
    """.TP entries for a parser's arguments, group by group, in the parser's order."""
    out: list[str] = []
    by_action = {id(a): a for a in cmd.parser._actions}
    described = {o.strings: o for o in cmd.options}
    positionals = {p.metavar: p for p in cmd.positionals}
    for group in cmd.parser._action_groups:
        entries: list[str] = []
        for action in group._group_actions:
            if id(action) not in by_action or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            if action.option_strings:
                o = described.get(tuple(action.option_strings))
                if o is None or set(o.strings) & skip:
                    continue
                entries += [".TP", _option_label(o), _prose(o.help, prog)]
            else:
                p = positionals.get(metavar_of(action))
                if p is None or not p.help:
                    continue  # named in the synopsis; nothing more to say
                entries += [".TP", f"\\fI{_literal(p.metavar)}\\fR", _prose(p.help, prog)]
        if not entries:
            continue
        if group.title and group.title not in _DEFAULT_GROUPS:
            out += [".PP", f"\\fI{_prose(group.title, prog)}:\\fR"]
        out += entries
    return out


def default_date(environ: Mapping[str, str] | None = None) -> str:
    """Today (UTC) as YYYY-MM-DD, or the day of $SOURCE_DATE_EPOCH so that packagers get the
    same page from the same sources (reproducible builds)."""
    env = os.environ if environ is None else environ
    try:
        when = float(env["SOURCE_DATE_EPOCH"])
    except (KeyError, ValueError):
        when = time.time()
    return time.strftime("%Y-%m-%d", time.gmtime(when))


def manpage(parser: argparse.ArgumentParser, version: str, date: str) -> str:
    """The roff source of prog(1) for ``parser`` (``man -l`` renders it)."""
    prog = parser.prog
    top, subs = commands(parser)
    description = _paragraphs(parser.description)
    codes, notes = split_epilog(parser.epilog)
    # NAME carries the description's first clause, as whatis(1) and apropos(1) show it.
    summary = re.split(r"[:.](?:\s|$)", description[0], maxsplit=1)[0] if description else prog
    out = [
        f'.\\" Generated from the argument parser of {_escape(prog)} {_escape(version)}; '
        "regenerate it, do not edit it.",
        f".TH {_quoted_arg(_literal(prog.upper()))} 1 {_quoted_arg(_escape(date))} "
        f"{_quoted_arg(_literal(prog) + ' ' + _escape(version))} {_quoted_arg('User Commands')}",
        ".SH NAME",
        f"{_literal(prog)} \\- {_prose(summary, prog)}",
        ".SH SYNOPSIS",
    ]
    # Options shared with the top level (given before or after the command) are described once,
    # under OPTIONS, not again under every command.
    top_strings = {s for o in top.options for s in o.strings}
    for cmd in subs or [top]:
        own = [o for o in cmd.options if not set(o.strings) & top_strings and not o.exits]
        out += [".PP", _synopsis(prog, cmd, bool(own) or cmd is top)]
    for o in top.options:
        if o.exits:
            out += [".PP", f"\\fB{_literal(prog)}\\fR {_option_label(o).split(', ')[-1]}"]
    out.append(".SH DESCRIPTION")
    for block in [parser.description or "", *notes]:
        out += _blocks(block, prog)
    if top.options:
        out.append(".SH OPTIONS")
        out += _options_block(top, prog, skip=set())
    if subs:
        out.append(".SH COMMANDS")
        for cmd in subs:
            out += [f".SS {_quoted_arg(_literal(cmd.name))}", _synopsis(prog, cmd, True), ".PP"]
            out.append(_prose(_sentence(cmd.help), prog))
            if cmd.description and cmd.description != cmd.help:
                out += _blocks(cmd.parser.description, prog)
            out += _options_block(cmd, prog, skip=top_strings)
            out += _blocks(cmd.parser.epilog, prog)
    out.append(".SH EXIT STATUS")
    if codes:
        for code, text in codes:
            out += [".TP", f"\\fB{_escape(code)}\\fR", _prose(text, prog)]
    else:
        out += [".PP", "0 on success, non-zero on failure."]
    out += [".SH FILES", *_files(prog)]
    out += [
        ".SH SEE ALSO",
        ".BR ln (1),",
        ".BR rename (2),",
        ".BR symlink (7),",
        ".BR flock (2),",
        ".BR fsync (2)",
        ".PP",
        f"{_prose(prog + ' --help', prog)}, {_prose(prog + ' COMMAND --help', prog)}; "
        "docs/design.md in the source distribution explains every step and decision.",
    ]
    return "\n".join(out) + "\n"


def _sentence(text: str) -> str:
    """A help fragment ("copy SOURCE into ...") as a sentence for running text."""
    if not text:
        return text
    if text[0].islower():
        text = text[0].upper() + text[1:]
    return text + ("." if text[-1].isalnum() or text[-1] == ")" else "")


def _files(prog: str) -> list[str]:
    state, releases, current = _layout.STATE_DIR, _layout.RELEASES, _layout.CURRENT
    entries = [
        (f"ROOT/{current}", f"relative symlink to {releases}/ID, the live release; replaced "
                            "with one rename(2), never removed first"),
        (f"ROOT/{releases}/ID/", "one complete release per folder; ids are UTC timestamps "
                                 "(YYYYMMDDHHMMSS) in deploy order"),
        (f"ROOT/{releases}/{_layout.STAGING_PREFIX}*", "a release being copied: hidden, never "
                                                        "reachable through current"),
        (f"ROOT/{releases}/{_layout.TRASH_PREFIX}*", "a release being deleted"),
        (f"ROOT/{state}/lock", "flock(2) target serialising every mutating command; never "
                               "deleted or renamed"),
        (f"ROOT/{state}/holder.json", "who holds the lock (pid, host, start time, command)"),
        (f"ROOT/{state}/journal.json", "the operation in flight; present after a crash until the "
                                       "next mutating command recovers it"),
        (f"ROOT/{state}/history.jsonl", "append-only log of every deploy, prepare, activate, "
                                        "rollback, prune and recovery"),
        (f"ROOT/{state}/tmp/", "temporary links made while switching current (empty when idle)"),
        (f"ROOT/{CONFIG_FILENAME}", "settings read by every command unless --config names "
                                    "another file or --no-config is given; flags given on the "
                                    "command line win; rollback warns and goes on without a file "
                                    "or setting it cannot use"),
    ]
    out: list[str] = []
    for path, text in entries:
        out += [".TP", f"\\fI{_literal(path)}\\fR", _prose(text, prog)]
    return out

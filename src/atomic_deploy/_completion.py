"""Shell completion scripts for bash, zsh and fish, generated from the argparse parser.

Nothing here knows our commands: the scripts are built by walking the parser (its subcommands,
each one's option strings, which options take a value, its positionals), so a new option or
subcommand shows up in completion without touching this file. The one convention used is the
metavar: ``ROOT``/``DIR``/``REPO`` complete folders, ``SOURCE``/``FILE`` complete paths, and
``RELEASE_ID`` completes the release folders of the ROOT already typed on the line.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

SHELLS = ("bash", "zsh", "fish")

# What a value is, keyed by metavar: the parser's metavars are where the meaning of a value is
# already written down, so reading them keeps the scripts free of per-command knowledge.
_KIND_BY_METAVAR = {
    "ROOT": "dir",
    "DIR": "dir",
    "REPO": "dir",
    "SOURCE": "path",
    "FILE": "path",
    "RELEASE_ID": "release",
}
# The positional whose value names the root that RELEASE_ID values are listed from.
_ROOT_METAVAR = "ROOT"


@dataclass(frozen=True)
class Option:
    strings: tuple[str, ...]  # "--message", "-m", in the parser's order
    takes_value: bool
    metavar: str  # for display; "" for flags
    kind: str  # "path", "dir", "release", "none" or "words:a b c" (for a value)
    help: str
    repeatable: bool  # append/count actions may be given more than once
    exits: bool  # --help/--version: nothing else makes sense after them

    @property
    def long(self) -> list[str]:
        return [s for s in self.strings if s.startswith("--")]


@dataclass(frozen=True)
class Positional:
    metavar: str
    nargs: str | int | None
    kind: str
    help: str

    @property
    def optional(self) -> bool:
        return self.nargs in ("?", "*", argparse.REMAINDER)

    @property
    def repeats(self) -> bool:
        return self.nargs in ("*", "+", argparse.REMAINDER)


@dataclass(frozen=True)
class Command:
    """One level of the command line: the top level ("" name) or one subcommand."""

    name: str
    help: str
    description: str
    options: list[Option]
    positionals: list[Positional]
    parser: argparse.ArgumentParser

    @property
    def value_options(self) -> list[str]:
        return [s for o in self.options if o.takes_value for s in o.strings]

    @property
    def root_index(self) -> int:
        """Index of the positional naming ROOT (for RELEASE_ID completion), or -1."""
        return next((i for i, p in enumerate(self.positionals) if p.metavar == _ROOT_METAVAR), -1)


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def help_text(action: argparse.Action, prog: str) -> str:
    """The action's help with argparse's %(...)s expanded, as argparse itself would show it."""
    text = action.help
    if not text or text == argparse.SUPPRESS:
        return ""
    params: dict[str, object] = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in action.choices or ())
    with contextlib.suppress(KeyError, TypeError, ValueError):
        text = text % params  # on failure it was not a format string: show it as written
    return _clean(text)


def metavar_of(action: argparse.Action) -> str:
    """The value's name as argparse's help would print it."""
    if action.metavar is not None:
        mv = action.metavar
        return " ".join(mv) if isinstance(mv, tuple) else str(mv)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _kind(action: argparse.Action) -> str:
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "words:" + " ".join(str(c) for c in action.choices)
    return _KIND_BY_METAVAR.get(str(action.metavar), "none")


def subparsers_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[
        argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _describe(name: str, help_: str, parser: argparse.ArgumentParser) -> Command:
    options: list[Option] = []
    positionals: list[Positional] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        text = help_text(action, parser.prog)
        if action.option_strings:
            takes_value = action.nargs != 0
            options.append(Option(
                strings=tuple(action.option_strings),
                takes_value=takes_value,
                metavar=metavar_of(action) if takes_value else "",
                kind=_kind(action) if takes_value else "none",
                help=text,
                repeatable=isinstance(action, (argparse._AppendAction, argparse._CountAction,
                                               argparse._AppendConstAction)),
                exits=isinstance(action, (argparse._HelpAction, argparse._VersionAction)),
            ))
        else:
            positionals.append(Positional(metavar_of(action), action.nargs, _kind(action), text))
    return Command(name, help_, _clean(parser.description), options, positionals, parser)


def commands(parser: argparse.ArgumentParser) -> tuple[Command, list[Command]]:
    """The top level and every subcommand (aliases included, each as its own name)."""
    top = _describe("", _clean(parser.description), parser)
    subs: list[Command] = []
    action = subparsers_action(parser)
    if action is not None:
        helps = {a.dest: help_text(a, parser.prog) for a in action._choices_actions}
        for name, sub in action.choices.items():
            subs.append(_describe(name, helps.get(name, ""), sub))
    return top, subs


def _ident(prog: str) -> str:
    """A shell function name made from the program name (atomic-deploy -> _atomic_deploy)."""
    return "_" + re.sub(r"[^A-Za-z0-9_]", "_", prog)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` ("bash", "zsh" or "fish"); ValueError otherwise."""
    if shell == "bash":
        return _bash(parser)
    if shell == "zsh":
        return _zsh(parser)
    if shell == "fish":
        return _fish(parser)
    raise ValueError(f"unknown shell {shell!r}: choose one of {', '.join(SHELLS)}")


def install_hint(shell: str, prog: str = "atomic-deploy") -> str:
    """How to install the script for ``shell``, as commands to paste."""
    if shell == "bash":
        d = "~/.local/share/bash-completion/completions"
        return (f"mkdir -p {d} && {prog} completion bash > {d}/{prog}\n"
                f"(needs the bash-completion package; or add `eval \"$({prog} completion bash)\"` "
                "to ~/.bashrc)")
    if shell == "zsh":
        return (f"mkdir -p ~/.zfunc && {prog} completion zsh > ~/.zfunc/_{prog}\n"
                "then in ~/.zshrc, before `compinit`: fpath=(~/.zfunc $fpath) "
                "(any folder on $fpath works)")
    if shell == "fish":
        d = "~/.config/fish/completions"
        return f"mkdir -p {d} && {prog} completion fish > {d}/{prog}.fish"
    raise ValueError(f"unknown shell {shell!r}: choose one of {', '.join(SHELLS)}")


# --- bash -----------------------------------------------------------------------------------


def _sq(text: str) -> str:
    """Single-quote for POSIX shells (bash, zsh)."""
    return "'" + text.replace("'", "'\\''") + "'"


def _bash_spec_lines(cmd: Command, label: str) -> Iterator[str]:
    pos = " ".join(_sq(p.kind + ("+" if p.repeats else "")) for p in cmd.positionals)
    opts = " ".join(s for o in cmd.options for s in o.strings)
    yield (f"    {label}) opts={_sq(opts)}; valopts={_sq(' '.join(cmd.value_options))}; "
           f"pos=({pos}); rootpos={cmd.root_index}; hassub=0 ;;")


def _bash(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    fn = _ident(prog)
    top, subs = commands(parser)
    names = " ".join(c.name for c in subs)
    top_pos = " ".join(_sq(p.kind + ("+" if p.repeats else "")) for p in top.positionals)
    spec: list[str] = [f"    '') opts={_sq(' '.join(s for o in top.options for s in o.strings))}; "
                       f"valopts={_sq(' '.join(top.value_options))}; "
                       f"pos=({_sq('words:' + names) if subs else top_pos}); rootpos=-1; "
                       f"hassub={1 if subs else 0} ;;"]
    kinds: list[str] = []
    for cmd in [top, *subs]:
        if cmd is not top:
            spec.extend(_bash_spec_lines(cmd, _sq(cmd.name)))
        for o in cmd.options:
            if o.takes_value and o.kind != "none":
                kinds.extend(f"    {_sq(cmd.name + ' ' + s)}) REPLY={_sq(o.kind)} ;;" for s in o.strings)
    return _BASH_TEMPLATE.format(
        prog=prog, fn=fn, spec="\n".join(spec), kinds="\n".join(kinds) or "    '') ;;",
    )


# Doubled braces are literal braces for str.format.
_BASH_TEMPLATE = r"""# bash completion for {prog}; generated from its argument parser by
# `{prog} completion bash`: regenerate it after upgrading, do not edit it.

# Sets, for subcommand $1 ("" is the top level): opts (every option string), valopts (those that
# take a value), pos (one value kind per positional; a "+" suffix means it repeats) and rootpos
# (the index of the ROOT positional that release ids are listed from, or -1); hassub=1 when the
# next positional is the subcommand.
{fn}_spec() {{
    case $1 in
{spec}
    *) opts=''; valopts=''; pos=(); rootpos=-1; hassub=0 ;;
    esac
}}

# REPLY = the value kind of option $2 of subcommand $1.
{fn}_optkind() {{
    REPLY=none
    case "$1 $2" in
{kinds}
    esac
}}

# Release folders of root $1 (hidden staging/trash folders and plain files are not releases).
{fn}_releases() {{
    local root=$1 name
    case $root in
    "~") root=$HOME ;;
    "~/"*) root=$HOME/${{root#"~/"}} ;;
    esac
    [[ -d $root/releases ]] || return 0
    while IFS= read -r name; do
        [[ -d $root/releases/$name && ! -L $root/releases/$name ]] && printf '%s\n' "$name"
    done < <(command ls -1 -- "$root/releases" 2>/dev/null)
}}

# COMPREPLY = the completions of $cur as a value of kind $1 ($2: the ROOT typed, if any).
{fn}_values() {{
    local IFS=$'\n' kind=$1 name
    case $kind in
    path|dir)
        # Quote and mark folders like any file name (bash 4+; harmless without compopt).
        type compopt &>/dev/null && compopt -o filenames 2>/dev/null
        if [[ $kind == dir ]]; then
            COMPREPLY=($(compgen -d -- "$cur"))
        else
            COMPREPLY=($(compgen -f -- "$cur"))
        fi ;;
    release)
        [[ -n $2 ]] || return 0
        COMPREPLY=()
        for name in $({fn}_releases "$2"); do
            [[ $name == "$cur"* ]] && COMPREPLY+=("$name")
        done ;;
    words:*)
        COMPREPLY=($(IFS=$' \t\n'; compgen -W "${{kind#words:}}" -- "$cur")) ;;
    esac
}}

{fn}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} cmd='' optfor='' opts valopts rootpos hassub REPLY
    local -a pos=() posvals=()
    local i w skip=0 dashdash=0
    COMPREPLY=()
    {fn}_spec ''
    # `--opt=value`: "=" is in COMP_WORDBREAKS, so bash hands it over as a word of its own.
    if [[ $cur == = ]]; then
        optfor=${{COMP_WORDS[COMP_CWORD-1]}}
        cur=''
    elif (( COMP_CWORD >= 2 )) && [[ ${{COMP_WORDS[COMP_CWORD-1]}} == = ]]; then
        optfor=${{COMP_WORDS[COMP_CWORD-2]}}
    fi
    # Walk the words before the cursor: find the subcommand and the positionals given so far,
    # stepping over option values so that `-m TEXT` never counts TEXT as a positional.
    for (( i = 1; i < COMP_CWORD; i++ )); do
        w=${{COMP_WORDS[i]}}
        if (( skip > 0 )); then
            skip=$(( skip - 1 ))
            continue
        fi
        if (( !dashdash )) && [[ $w == -- ]]; then
            dashdash=1
            continue
        fi
        if (( !dashdash )) && [[ $w == -?* ]]; then
            if [[ " $valopts " == *" $w "* ]]; then
                skip=1
                [[ ${{COMP_WORDS[i+1]}} == = ]] && skip=2
            elif [[ ${{COMP_WORDS[i+1]}} == = ]]; then
                skip=2
            fi
            continue
        fi
        if (( hassub )); then
            cmd=$w
            {fn}_spec "$cmd"
            dashdash=0
            continue
        fi
        posvals+=("$w")
    done
    local root=''
    (( rootpos >= 0 && rootpos < ${{#posvals[@]}} )) && root=${{posvals[rootpos]}}
    if [[ -z $optfor ]] && (( skip == 1 )); then
        optfor=${{COMP_WORDS[COMP_CWORD-1]}}
    fi
    if [[ -n $optfor ]]; then
        {fn}_optkind "$cmd" "$optfor"
        {fn}_values "$REPLY" "$root"
        return 0
    fi
    if (( !dashdash )) && [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return 0
    fi
    local n=${{#posvals[@]}} kind=''
    if (( n < ${{#pos[@]}} )); then
        kind=${{pos[n]}}
    elif (( ${{#pos[@]}} > 0 )) && [[ ${{pos[${{#pos[@]}}-1]}} == *+ ]]; then
        kind=${{pos[${{#pos[@]}}-1]}}
    fi
    if [[ -n $kind ]]; then
        {fn}_values "${{kind%+}}" "$root"
    else
        # No positional left to fill: offer the options.
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    fi
    return 0
}}

complete -F {fn} {prog}
"""


# --- zsh ------------------------------------------------------------------------------------


def _zsh_desc(text: str) -> str:
    # _arguments reads the explanation up to the first unescaped "]".
    return re.sub(r"([\\\[\]])", r"\\\1", text)


def _zsh_msg(text: str) -> str:
    # Message and action fields are separated by colons.
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _zsh_action(kind: str) -> str:
    if kind == "path":
        return "_files"
    if kind == "dir":
        return "_files -/"
    if kind == "release":
        return "->release"
    if kind.startswith("words:"):
        words = kind[len("words:"):].split()
        return "(" + " ".join(re.sub(r"([^A-Za-z0-9_.,+@%/=-])", r"\\\1", w) for w in words) + ")"
    return "( )"  # a value is required but nothing is offered; zsh shows the message (metavar)


def _zsh_specs(cmd: Command) -> list[str]:
    specs: list[str] = []
    for o in cmd.options:
        if o.exits:
            excl = "(- *)"
        elif o.repeatable:
            excl = "*"
        else:
            excl = "(" + " ".join(o.strings) + ")"
        for s in o.strings:
            name = s + ("=" if o.takes_value and s.startswith("--") else "")
            value = f":{_zsh_msg(o.metavar)}:{_zsh_action(o.kind)}" if o.takes_value else ""
            specs.append(_sq(f"{excl}{name}[{_zsh_desc(o.help)}]{value}"))
    for p in cmd.positionals:
        msg, action = _zsh_msg(p.metavar), _zsh_action(p.kind)
        if p.nargs in ("*", argparse.REMAINDER):
            specs.append(_sq(f"*::{msg}:{action}"))
        elif p.nargs == "+":
            specs += [_sq(f":{msg}:{action}"), _sq(f"*::{msg}:{action}")]
        elif isinstance(p.nargs, int):
            specs += [_sq(f":{msg}:{action}")] * p.nargs
        else:
            specs.append(_sq(f"{':' if p.optional else ''}:{msg}:{action}"))
    return specs


def _zsh(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    fn = _ident(prog)
    top, subs = commands(parser)
    out = [
        f"#compdef {prog}",
        f"# zsh completion for {prog}; generated from its argument parser by",
        f"# `{prog} completion zsh`: regenerate it after upgrading, do not edit it.",
        "",
        "# Release folders of root $1 (hidden staging/trash folders are not releases).",
        f"{fn}_releases() {{",
        "  local root=$1 expl",
        "  local -a ids",
        "  [[ $root == '~' || $root == '~/'* ]] && root=$HOME${root#\\~}",
        "  if [[ -z $root || ! -d $root/releases ]]; then",
        "    _message 'release id (give ROOT first)'",
        "    return 1",
        "  fi",
        "  ids=( $root/releases/*(N/:t) )",
        "  ids=( ${ids:#.*} )",
        "  _wanted releases expl 'release id' compadd -a ids",
        "}",
        "",
    ]
    for i, cmd in enumerate(subs):
        specs = _zsh_specs(cmd)
        out += [
            f"{fn}__{i}() {{  # {cmd.name}",
            "  local curcontext=$curcontext state state_descr line",
            "  typeset -A opt_args",
            "  _arguments -C -S \\",
            *[f"    {s} \\" for s in specs],
            "    && return 0",
            "  case $state in",
            f"    (release) {fn}_releases \"${{(Q)line[{cmd.root_index + 1}]}}\" ;;"
            if cmd.root_index >= 0 else "    (release) _message 'release id' ;;",
            "  esac",
            "}",
            "",
        ]
    described = [_sq(f"{c.name.replace(':', chr(92) + ':')}:{c.help}") for c in subs]
    out += [
        f"{fn}() {{",
        "  local curcontext=$curcontext state state_descr line",
        "  typeset -A opt_args",
        "  local -a subcommands",
        "  subcommands=(",
        *[f"    {d}" for d in described],
        "  )",
        "  _arguments -C -S \\",
        *[f"    {s} \\" for s in _zsh_specs(top)],
    ]
    if subs:
        out += [
            "    ':command:->command' \\",
            "    '*:: :->argument' \\",
            "    && return 0",
            "  case $state in",
            f"    (command) _describe -t commands '{_zsh_msg(prog)} command' subcommands ;;",
            "    (argument)",
            f"      curcontext=${{curcontext%:*:*}}:{prog}-$words[1]:",
            "      case $words[1] in",
            *[f"        ({_zsh_pattern(c.name)}) {fn}__{i} ;;" for i, c in enumerate(subs)],
            "      esac ;;",
            "  esac",
        ]
    else:
        out.append("    && return 0")
    out += [
        "}",
        "",
        "# Autoloaded from $fpath the file is the body of the completion function itself; sourced",
        f"# (e.g. `source <({prog} completion zsh)`) it only registers the function.",
        f"if [[ $funcstack[1] == _{prog} ]]; then",
        f"  {fn} \"$@\"",
        "elif (( $+functions[compdef] )); then",
        f"  compdef {fn} {prog}",
        "fi",
        "",
    ]
    return "\n".join(out)


def _zsh_pattern(name: str) -> str:
    return re.sub(r"([^A-Za-z0-9_.-])", r"\\\1", name)


# --- fish -----------------------------------------------------------------------------------


def _fq(text: str) -> str:
    """Single-quote for fish (only \\ and ' are special inside)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_flag(s: str) -> str:
    if s.startswith("--"):
        return f"-l {_fq(s[2:])}"
    if len(s) == 2:
        return f"-s {_fq(s[1:])}"
    return f"-o {_fq(s[1:])}"  # old-style -long option


def _fish_values(kind: str, cmd: str, root_index: int, fn: str) -> str:
    if kind == "path":
        return "-F"
    if kind == "dir":
        return "-f -a '(__fish_complete_directories (commandline -ct))'"
    if kind == "release":
        return f"-f -a {_fq(f'({fn}_releases {cmd} {root_index})')}" if root_index >= 0 else "-f"
    if kind.startswith("words:"):
        return f"-f -a {_fq(kind[len('words:'):])}"
    return "-f"


def _fish(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    fn = "_" + _ident(prog)  # fish convention: helpers start with two underscores
    top, subs = commands(parser)
    c = f"complete -c {_fq(prog)}"
    valopt_cases = [f"        case {_fq(cmd.name)}\n"
                    f"            set valopts {' '.join(_fq(s) for s in cmd.value_options)}"
                    for cmd in subs if cmd.value_options]
    out = [
        f"# fish completion for {prog}; generated from its argument parser by",
        f"# `{prog} completion fish`: regenerate it after upgrading, do not edit it.",
        "",
        "# The words typed so far that are neither options nor option values: the subcommand",
        "# first, then its positionals.",
        f"function {fn}_words",
        "    set -l tokens (commandline -opc)",
        "    set -e tokens[1]",
        f"    set -l valopts {' '.join(_fq(s) for s in top.value_options)}",
        "    set -l skip 0",
        "    set -l dashdash 0",
        "    set -l seen 0",
        "    for t in $tokens",
        "        if test $skip = 1",
        "            set skip 0",
        "            continue",
        "        end",
        "        if test $dashdash = 0; and test \"$t\" = --",
        "            set dashdash 1",
        "            continue",
        "        end",
        "        if test $dashdash = 0; and string match -q -- '-?*' $t",
        "            # --opt=value carries its value; --opt VALUE does not.",
        "            if not string match -q -- '*=*' $t; and contains -- $t $valopts",
        "                set skip 1",
        "            end",
        "            continue",
        "        end",
        "        echo $t",
        "        if test $seen = 0",
        "            set seen 1",
        "            set dashdash 0",
        f"            set valopts ({fn}_valopts $t)",
        "        end",
        "    end",
        "end",
        "",
        "# The options of subcommand $argv[1] that take a value.",
        f"function {fn}_valopts",
        "    set -l valopts",
        "    switch $argv[1]",
        *valopt_cases,
        "    end",
        "    printf '%s\\n' $valopts",
        "end",
        "",
        "# True when nothing but options has been typed: the subcommand comes next.",
        f"function {fn}_needs_command",
        f"    test (count ({fn}_words)) -eq 0",
        "end",
        "",
        "# True when the subcommand is $argv[1] (and, with $argv[2], when the positional being",
        "# typed is number $argv[2], counting from 0; a trailing + means that one or any later).",
        f"function {fn}_using",
        f"    set -l words ({fn}_words)",
        "    test (count $words) -ge 1; and test \"$words[1]\" = \"$argv[1]\"; or return 1",
        "    set -q argv[2]; or return 0",
        "    set -l n (math (count $words) - 1)",
        "    if string match -q -- '*+' $argv[2]",
        "        test $n -ge (string trim -r -c + -- $argv[2])",
        "    else",
        "        test $n -eq $argv[2]",
        "    end",
        "end",
        "",
        "# Release folders of the ROOT typed as positional $argv[2] of subcommand $argv[1].",
        f"function {fn}_releases",
        f"    set -l words ({fn}_words)",
        "    set -l i (math $argv[2] + 2)",
        "    set -q words[$i]; or return 0",
        "    set -l root (string replace -r '^~(?=/|$)' $HOME -- $words[$i])",
        "    for d in $root/releases/*",
        "        if test -d $d; and not test -L $d",
        "            basename -- $d",
        "        end",
        "    end",
        "end",
        "",
        f"{c} -f",
    ]
    for o in top.options:
        out.append(f"{c} -n {fn}_needs_command {' '.join(_fish_flag(s) for s in o.strings)} "
                   f"{'-r ' + _fish_values(o.kind, '', -1, fn) + ' ' if o.takes_value else ''}"
                   f"-d {_fq(o.help)}")
    for cmd in subs:
        out.append(f"{c} -n {fn}_needs_command -a {_fq(cmd.name)} -d {_fq(cmd.help)}")
    for cmd in subs:
        out.append("")
        out.append(f"# {cmd.name}")
        cond = _fq(f"{fn}_using {cmd.name}")
        for o in cmd.options:
            value = f"-r {_fish_values(o.kind, cmd.name, cmd.root_index, fn)} " if o.takes_value else ""
            out.append(f"{c} -n {cond} {' '.join(_fish_flag(s) for s in o.strings)} {value}"
                       f"-d {_fq(o.help)}")
        for i, p in enumerate(cmd.positionals):
            slot = f"{i}+" if p.repeats else str(i)
            pcond = _fq(f"{fn}_using {cmd.name} {slot}")
            out.append(f"{c} -n {pcond} {_fish_values(p.kind, cmd.name, cmd.root_index, fn)}"
                       + (f" -d {_fq(p.help or p.metavar)}" if p.kind.startswith("words:") else ""))
    out.append("")
    return "\n".join(out)

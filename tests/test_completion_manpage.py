"""Shell completion scripts and the man page, both generated from the argparse parser."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from atomic_deploy._completion import SHELLS, completion_script, install_hint
from atomic_deploy._manpage import default_date, manpage, split_epilog
from atomic_deploy.cli import EPILOG, build_parser
from conftest import run_cli

BASH = shutil.which("bash")
ZSH = shutil.which("zsh")
FISH = shutil.which("fish")
GROFF = shutil.which("groff")
MAN = shutil.which("man")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("no subcommands")


def _all_names(parser: argparse.ArgumentParser) -> tuple[list[str], set[str]]:
    """Subcommand names and long options, read straight from argparse (not via our walker)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    longs = set()
    for p in [parser, *sub.choices.values()]:
        longs |= {s for a in p._actions if a.help != argparse.SUPPRESS
                  for s in a.option_strings if s.startswith("--")}
    return list(sub.choices), longs


@pytest.fixture
def releases_root(tmp_path: Path) -> Path:
    """A root with two releases plus things that are not releases."""
    root = tmp_path / "www root"  # a space: paths must survive the shells' word splitting
    for rid in ("20260101000000", "20260102000000"):
        (root / "releases" / rid).mkdir(parents=True)
    (root / "releases" / ".atomic-deploy-staging.20260103000000.ab").mkdir()
    (root / "releases" / "notes.txt").write_text("not a release\n")
    return root


# --- bash -----------------------------------------------------------------------------------


def _script(tmp_path: Path, shell: str, parser: argparse.ArgumentParser | None = None) -> Path:
    path = tmp_path / f"completion.{shell}"
    path.write_text(completion_script(parser or build_parser(), shell))
    return path


def bash_complete(script: Path, *words: str) -> list[str]:
    """COMPREPLY for the command line ``words`` (the last one is being completed)."""
    assert BASH
    prog = (
        'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); '
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}; _atomic_deploy; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    r = subprocess.run([BASH, "--norc", "--noprofile", "-c", prog, "bash", str(script), *words],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return [line for line in r.stdout.splitlines() if line]


needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


@needs_bash
def test_bash_script_is_valid_syntax(tmp_path: Path) -> None:
    r = subprocess.run([BASH or "bash", "-n", str(_script(tmp_path, "bash"))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs_bash
def test_bash_completes_subcommands_and_options(tmp_path: Path) -> None:
    script = _script(tmp_path, "bash")
    assert "deploy" in bash_complete(script, "atomic-deploy", "de")
    assert set(bash_complete(script, "atomic-deploy", "de")) == {"deploy", "demo"}
    assert bash_complete(script, "atomic-deploy", "deploy", "--ke") == ["--keep"]
    # An option's value is not a positional: `-m "two words"` must not shift anything.
    assert bash_complete(script, "atomic-deploy", "deploy", "-m", "two words", "--ke") == ["--keep"]
    # Top-level options before the command do not hide it.
    assert "deploy" in bash_complete(script, "atomic-deploy", "-v", "de")
    assert "--version" in bash_complete(script, "atomic-deploy", "--ver")


@needs_bash
def test_bash_completes_release_ids_from_the_root_on_the_line(tmp_path: Path,
                                                              releases_root: Path) -> None:
    script = _script(tmp_path, "bash")
    root = str(releases_root)
    ids = ["20260101000000", "20260102000000"]
    assert bash_complete(script, "atomic-deploy", "activate", root, "") == ids
    assert bash_complete(script, "atomic-deploy", "activate", root, "20260102") == ids[1:]
    assert bash_complete(script, "atomic-deploy", "rollback", root, "--to", "") == ids
    assert bash_complete(script, "atomic-deploy", "rollback", "--wait", "3", root, "--to", "") == ids
    # --to=VALUE: bash hands "=" over as a word of its own.
    assert bash_complete(script, "atomic-deploy", "rollback", root, "--to", "=", "") == ids
    assert bash_complete(script, "atomic-deploy", "rollback", root, "--to", "=") == ids
    # Without a ROOT on the line there is nothing to list.
    assert bash_complete(script, "atomic-deploy", "rollback", "--to", "") == []


@needs_bash
def test_bash_completes_paths_for_positionals(tmp_path: Path, releases_root: Path) -> None:
    script = _script(tmp_path, "bash")
    prefix = str(releases_root)[:-2]
    assert bash_complete(script, "atomic-deploy", "status", prefix) == [str(releases_root)]
    (tmp_path / "build.tar.gz").write_bytes(b"")
    # SOURCE may be a tarball: files complete; ROOT is a folder: files do not.
    assert str(tmp_path / "build.tar.gz") in bash_complete(
        script, "atomic-deploy", "deploy", str(tmp_path / "bui"))
    assert bash_complete(script, "atomic-deploy", "deploy", "src", str(tmp_path / "bui")) == []


@needs_bash
def test_bash_picks_up_new_options_and_commands(tmp_path: Path) -> None:
    parser = build_parser()
    _subparser(parser, "deploy").add_argument("--frobnicate", metavar="LEVEL")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    zap = sub.add_parser("zap", help="a brand-new command")
    zap.add_argument("--flavour", choices=["salty", "sweet"])
    script = _script(tmp_path, "bash", parser)
    assert bash_complete(script, "atomic-deploy", "deploy", "--frob") == ["--frobnicate"]
    assert bash_complete(script, "atomic-deploy", "za") == ["zap"]
    assert bash_complete(script, "atomic-deploy", "zap", "--flavour", "s") == ["salty", "sweet"]
    for shell in SHELLS:
        text = completion_script(parser, shell)
        assert "frobnicate" in text and "zap" in text and "salty" in text, shell
    page = manpage(parser, "0", "2026-01-01")
    assert "\\-\\-frobnicate" in page and "a brand\\-new command" not in page
    assert "A brand-new command." in page


# --- every name in every script -------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_every_subcommand_and_long_option_is_in_the_script(shell: str) -> None:
    parser = build_parser()
    names, longs = _all_names(parser)
    text = completion_script(parser, shell)
    assert len(names) >= 10 and len(longs) >= 20  # the walk found the real parser
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (shell, name)
    for opt in longs:
        # fish names long options without their dashes: `-l keep`.
        needle = f"-l '{opt[2:]}'" if shell == "fish" else opt
        assert needle in text, (shell, opt)


def test_unknown_shell_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shell"):
        completion_script(build_parser(), "tcsh")
    with pytest.raises(ValueError, match="unknown shell"):
        install_hint("tcsh")


def test_install_hints_name_the_documented_places() -> None:
    assert ("atomic-deploy completion bash > ~/.local/share/bash-completion/completions/"
            "atomic-deploy") in install_hint("bash")
    assert "> ~/.zfunc/_atomic-deploy" in install_hint("zsh")
    assert "fpath" in install_hint("zsh")
    assert ("atomic-deploy completion fish > ~/.config/fish/completions/atomic-deploy.fish"
            in install_hint("fish"))


# --- zsh ------------------------------------------------------------------------------------

needs_zsh = pytest.mark.skipif(ZSH is None, reason="zsh is not installed (apt-get install zsh)")

# Drives an interactive zsh on a pseudo-terminal: loads compinit and the script, wraps compadd
# to record every match offered, presses TAB after the given line, and waits for the completion
# system's own "finished" hook instead of sleeping.
_ZSH_DRIVER = r"""
zmodload zsh/zpty || exit 90
script=$1 out=$2 line=$3
wait_for() { local i; for i in {1..400}; do [[ -e $1 ]] && return 0; sleep 0.05; done; return 1 }
zpty z zsh -f -i
zpty -w z "PS1=''; autoload -U compinit; compinit -u -D; source ${(q)script}; bindkey '^I' complete-word"
zpty -w z "rec=${(q)out}"
zpty -w z 'compadd() { local -a m; builtin compadd -O m "$@"; print -rl -- $m >> $rec; builtin compadd "$@" }'
zpty -w z '_doc_done() { print done > $rec.done }; comppostfuncs=(_doc_done)'
zpty -w z "print ready > ${(q)out}.ready"
wait_for $out.ready || exit 91
zpty -w -n z "$line"$'\t'
wait_for $out.done || exit 92
zpty -d z
"""


def zsh_complete(tmp_path: Path, script: Path, line: str) -> set[str]:
    assert ZSH
    driver = tmp_path / "driver.zsh"
    driver.write_text(_ZSH_DRIVER)
    out = tmp_path / "zsh-matches"
    for p in (out, Path(f"{out}.ready"), Path(f"{out}.done")):
        p.unlink(missing_ok=True)
    r = subprocess.run([ZSH, "-f", str(driver), str(script), str(out), line],
                       capture_output=True, text=True, timeout=60)
    if r.returncode == 90:
        pytest.skip("zsh has no zsh/zpty module")
    assert r.returncode == 0, (r.returncode, r.stderr)
    return set(out.read_text().split("\n")) - {""} if out.exists() else set()


@needs_zsh
def test_zsh_script_is_valid_syntax(tmp_path: Path) -> None:
    r = subprocess.run([ZSH or "zsh", "-n", str(_script(tmp_path, "zsh"))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs_zsh
def test_zsh_script_registers_when_sourced(tmp_path: Path) -> None:
    script = _script(tmp_path, "zsh")
    r = subprocess.run([ZSH or "zsh", "-f", "-c",
                        f"autoload -U compinit; compinit -u -D; source {script}; "
                        "print -r -- $_comps[atomic-deploy]"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "_atomic_deploy"


@needs_zsh
def test_zsh_completes_interactively(tmp_path: Path, releases_root: Path) -> None:
    script = _script(tmp_path, "zsh")
    assert {"deploy", "demo"} <= zsh_complete(tmp_path, script, "atomic-deploy de")
    assert "--keep" in zsh_complete(tmp_path, script, "atomic-deploy deploy --ke")
    root = str(releases_root).replace(" ", "\\ ")
    ids = {"20260101000000", "20260102000000"}
    assert zsh_complete(tmp_path, script, f"atomic-deploy activate {root} ") == ids
    assert zsh_complete(tmp_path, script, f"atomic-deploy rollback {root} --to ") == ids


# --- fish -----------------------------------------------------------------------------------

needs_fish = pytest.mark.skipif(FISH is None, reason="fish is not installed (apt-get install fish)")


def fish_complete(script: Path, line: str) -> list[str]:
    assert FISH
    r = subprocess.run([FISH, "--no-config", "-c", 'source $argv[1]; complete -C $argv[2]',
                        str(script), line], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [row.split("\t")[0] for row in r.stdout.splitlines()]


@needs_fish
def test_fish_script_is_valid_syntax(tmp_path: Path) -> None:
    r = subprocess.run([FISH or "fish", "--no-execute", str(_script(tmp_path, "fish"))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs_fish
def test_fish_completes(tmp_path: Path, releases_root: Path) -> None:
    script = _script(tmp_path, "fish")
    assert set(fish_complete(script, "atomic-deploy de")) == {"deploy", "demo"}
    assert fish_complete(script, "atomic-deploy deploy --ke") == ["--keep"]
    assert fish_complete(script, "atomic-deploy deploy -m 'two words' --ke") == ["--keep"]
    root = str(releases_root).replace(" ", "\\ ")
    ids = ["20260101000000", "20260102000000"]
    assert fish_complete(script, f"atomic-deploy activate {root} ") == ids
    assert fish_complete(script, f"atomic-deploy rollback {root} --to ") == ids


# --- man page -------------------------------------------------------------------------------


def test_split_epilog_reads_exit_codes() -> None:
    codes, rest = split_epilog(EPILOG)
    assert [c for c, _ in codes][:5] == ["0", "1", "2", "3", "4"]
    assert dict(codes)["0"] == "success"
    assert any("SOURCE ROOT" in p for p in rest)
    wrapped = "exit codes:\n  0    fine\n  1    broken in a long way\n         that wraps\n"
    assert split_epilog(wrapped) == ([("0", "fine"), ("1", "broken in a long way that wraps")], [])
    # a command's own codes are entries of their own, never run into the code above them
    assert dict(codes)["5"].endswith("--max-fail let hosts fail")
    assert dict(codes)["status"].startswith("0 current serves a complete release")
    assert dict(codes)["several roots"].endswith("exit with the highest code any host gave")


def test_default_date_honours_source_date_epoch() -> None:
    assert default_date({"SOURCE_DATE_EPOCH": "0"}) == "1970-01-01"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", default_date({}))


def test_indented_epilog_blocks_stay_unfilled() -> None:
    parser = argparse.ArgumentParser(prog="tool", description="d")
    sub = parser.add_subparsers()
    sub.add_parser("go", help="go", epilog="install:\n  tool go --now > ~/x\n\nplain text here")
    page = manpage(parser, "1", "today")
    assert ".nf\ntool go \\-\\-now > ~/x\n.fi" in page
    assert ".PP\nplain text here" in page


def test_manpage_sections_and_names() -> None:
    parser = build_parser()
    page = manpage(parser, "9.9.9", "2026-02-03")
    assert page.startswith('.\\"')
    assert '.TH "ATOMIC\\-DEPLOY" 1 "2026-02-03" "atomic\\-deploy 9.9.9"' in page
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "FILES",
                    "SEE ALSO"):
        assert f".SH {section}" in page or f'.SH "{section}"' in page
    names, longs = _all_names(parser)
    for name in names:
        assert f".SS {_roff(name)}" in page or f'.SS "{_roff(name)}"' in page
    for opt in longs:
        assert _roff(opt) in page, opt
    assert "\\fB\\-\\-keep\\fR \\fIN\\fR" in page
    # No line may start with a roff control character unless it is a request we meant.
    for line in page.splitlines():
        if line.startswith("'"):
            raise AssertionError(line)


def _roff(name: str) -> str:
    return name.replace("-", "\\-")


def test_manpage_escapes_roff_specials() -> None:
    parser = argparse.ArgumentParser(prog="tool-x", description=".dot first: then a back\\slash")
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("go", help="'quoted start", description="a\n.line starting with a dot")
    p.add_argument("--dry-run", action="store_true", help="see --other-flag, not ln -sfn")
    page = manpage(parser, "1", "today")
    assert "\\&.dot first" in page
    assert "back\\eslash" in page
    assert "\\&'quoted start" in page
    assert "see \\-\\-other\\-flag, not ln \\-sfn" in page
    assert "tool\\-x \\- \\&.dot first" in page or "tool\\-x \\- .dot first" in page
    assert not [line for line in page.splitlines() if line.startswith(".dot")]


def _render(page: str, tmp_path: Path) -> tuple[str, str]:
    """(text, warnings) as groff renders the page."""
    assert GROFF
    src = tmp_path / "atomic-deploy.1"
    src.write_text(page)
    r = subprocess.run([GROFF, "-man", "-Tutf8", "-ww", "-rLL=250n", "-P-c", str(src)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = re.sub(r".\x08", "", r.stdout)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text.replace("\u2212", "-").replace("\u2010", "-"), r.stderr


@pytest.mark.skipif(GROFF is None, reason="groff is not installed (apt-get install groff-base)")
def test_manpage_renders_without_warnings(tmp_path: Path) -> None:
    parser = build_parser()
    text, warnings = _render(manpage(parser, "1.0", "2026-01-01"), tmp_path)
    assert warnings == ""
    assert "EXIT STATUS" in text
    names, longs = _all_names(parser)
    for name in names:
        assert re.search(rf"^\s+{re.escape(name)}$", text, re.MULTILINE), name
    flat = " ".join(text.split())
    for opt in longs:
        assert opt in flat, opt
    assert "another process holds the root's lock" in flat
    assert "ROOT/.atomic-deploy/journal.json" in flat


@pytest.mark.skipif(MAN is None, reason="man is not installed (apt-get install man-db)")
def test_man_dash_l_renders_it(tmp_path: Path) -> None:
    src = tmp_path / "atomic-deploy.1"
    src.write_text(manpage(build_parser(), "1.0", "2026-01-01"))
    env = {**os.environ, "MANWIDTH": "200", "MANPAGER": "cat", "PAGER": "cat", "LC_ALL": "C.UTF-8"}
    r = subprocess.run([MAN or "man", "--warnings", "-l", str(src)], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    text = re.sub(r".\x08", "", r.stdout)
    assert "EXIT STATUS" in text and "COMMANDS" in text and "FILES" in text


# --- through the CLI ---------------------------------------------------------------------------


def _has_command(name: str) -> bool:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return name in sub.choices


@pytest.mark.parametrize("shell", SHELLS)
def test_cli_completion_prints_the_generated_script(shell: str) -> None:
    assert _has_command("completion"), "cli.py has no `completion` command (README documents it)"
    r = run_cli("completion", shell)
    assert r.returncode == 0, r.stderr
    assert r.stdout == completion_script(build_parser(), shell)
    assert "completion" in r.stdout
    assert "doctor" in r.stdout


def test_cli_man_prints_or_writes_the_page(tmp_path: Path) -> None:
    assert _has_command("man"), "cli.py has no `man` command (README documents it)"
    env = {"SOURCE_DATE_EPOCH": "86400"}
    r = run_cli("man", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('.\\"') and '"1970-01-02"' in r.stdout
    out = tmp_path / "atomic-deploy.1"
    r2 = run_cli("man", "--output", out, env=env)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == ""
    assert out.read_text() == r.stdout

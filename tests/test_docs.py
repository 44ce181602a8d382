"""Documentation that is generated or promised stays true."""

from __future__ import annotations

import re
from pathlib import Path

from atomic_deploy import __version__
from atomic_deploy._manpage import manpage
from atomic_deploy.cli import COMMANDS, build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_committed_man_page_is_generated_from_the_current_parser() -> None:
    committed = (DOCS / "atomic-deploy.1").read_text()
    date = re.search(r'^\.TH "[^"]+" 1 "([^"]+)"', committed, re.M)
    assert date, "no .TH line"
    assert committed == manpage(build_parser(), __version__, date.group(1)), (
        "regenerate it: atomic-deploy man > docs/atomic-deploy.1")


def test_json_doc_covers_every_command() -> None:
    text = (DOCS / "json.md").read_text()
    for cmd in COMMANDS:
        assert f"`{cmd}`" in text, cmd


def test_design_doc_lists_every_fault_step() -> None:
    from atomic_deploy import _signals

    text = " ".join((DOCS / "design.md").read_text().split())
    section = text[text.index("## Fault injection"):text.index("## Durability")]
    steps = {*_signals.DEPLOY_STEPS, *_signals.SWITCH_STEPS, *_signals.PRUNE_STEPS,
             *_signals.UNDO_STEPS, *_signals.RECOVER_STEPS, "lock-wait"}
    missing = [s for s in sorted(steps) if not re.search(rf"\b{re.escape(s)}\b", section)]
    assert not missing, f"docs/design.md 'Fault injection' does not name {missing}"

"""``--dry-run``: what deploy, activate, rollback, prune and adopt would do, computed without
changing anything (no lock taken, no folder created)."""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING

from ._history import History
from ._layout import Layout, check_root_parent, new_release_id, read_current, release_dirs, show
from ._shared import SHARED, check_shared, normalize

if TYPE_CHECKING:
    from .operations import DeployOptions, Hook


def _hook_text(cmd: Hook) -> str:
    """The hook exactly as it will run, in shell words: a string is ``sh -c STRING``, an
    argument list its own words (so ["echo a", "echo b"] cannot pass for two commands)."""
    return shlex.join(["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd))


def _hooks_plan(phase: str, hooks: list[Hook]) -> list[str]:
    return [f"run {phase} hook: {_hook_text(h)}" for h in hooks]


def _health_plan(opts: DeployOptions) -> list[str]:
    steps = _hooks_plan("after-switch", opts.after_switch)
    if opts.health_check is not None:
        steps.append(f"run health check: {_hook_text(opts.health_check)} "
                     f"({opts.health_retries} retries, {opts.health_timeout:g}s timeout)")
    if opts.health_url is not None:
        steps.append(f"check {opts.health_url} ({opts.health_retries} retries)")
    if steps:
        steps.append("if any of these fail: switch back and mark the new release bad")
    return steps


def plan_deploy(source: str | None, root: str, opts: DeployOptions, activate: bool,
                described: list[str] | None = None) -> list[str]:
    """``described``: the build's part of the plan, made where the build is (a remote root's
    dry run: [how it gets into the staging folder, further steps]); None: ``source`` here."""
    from .operations import KEEP_ALL, keep_after, plan_prune, validate_options

    validate_options(opts)

    if described is None:
        described = _source_steps(source, root, opts)
    layout = Layout(os.path.abspath(root))
    history = History.load(layout)
    rid = new_release_id(set(release_dirs(layout)) | history.used_ids())
    steps = []
    check_root_parent(root)
    if not os.path.isdir(layout.root):
        steps.append(f"create ROOT {show(layout.root)}")
    flush = "flush it" if opts.fsync else "do not flush it to disk (fsync off)"
    steps.append(f"{described[0]} into a hidden staging folder, {flush}, rename it to "
                 f"releases/{rid}")
    steps += described[1:]
    if opts.revision:
        steps.append(f"write REVISION {opts.revision}")
    check_shared(layout, opts.shared_dirs, opts.shared_files, create_missing=True)
    for d in opts.shared_dirs:
        rel = normalize(d)
        exists = os.path.isdir(os.path.join(layout.root, SHARED, rel))
        steps.append(f"link {rel} -> {SHARED}/{rel}" + ("" if exists else " (seed it first)"))
    for f in opts.shared_files:
        rel = normalize(f)
        exists = os.path.isfile(os.path.join(layout.root, SHARED, rel))
        steps.append(f"link {rel} -> {SHARED}/{rel}" + (
            "" if exists else " (create it empty)" if opts.create_missing else " (MISSING: error)"))
    steps += _hooks_plan("check", opts.check)
    cur = read_current(layout)
    if activate:
        steps.append(f"switch current from {cur.target or 'nothing'} to releases/{rid}")
        steps += _health_plan(opts)
    keep = keep_after(opts, activate)
    if keep is not None:
        # Pruning follows the commit: count the new release, and the history record that the
        # real run will have written by then, so the list is what the real run deletes.
        previous = cur.release if cur.resolves else None
        after = History([*history.records, {
            "v": 2, "op": "deploy" if activate else "prepare", "outcome": "ok", "release": rid,
            "previous": previous, "states": {rid: "served" if activate else "complete"}}])
        victims, _ = plan_prune(after, layout, keep, new=rid,
                                current=rid if activate else None)
        default = " (the default; --keep all turns pruning off)" if opts.keep is None else ""
        steps.append(f"prune to {keep}{default}: delete {', '.join(victims) or 'nothing'}")
    elif opts.keep == KEEP_ALL:
        steps.append("prune nothing (keep = all)")
    return steps


def _source_steps(source: str | None, root: str | None, opts: DeployOptions) -> list[str]:
    """What filling the staging folder from ``source`` takes (validated, nothing read but
    the folder's listing or the archive's member list), then any warning about it. ``root``:
    None when the root is on another machine."""
    from .operations import _source_kind

    if (root is None and source is not None and opts.git is None and opts.fetch is None
            and os.path.isdir(source)):
        from ._copy import check_source

        kind, src = "dir", check_source(source, None)
    else:
        kind, src = _source_kind(source, root or "", opts)
    what = {"dir": f"copy {show(src)}", "tar": f"extract {show(src)}",
            "git": f"export {opts.ref} of git repository {show(src)}",
            "url": f"fetch {show(src)} (not fetched in a dry run), check its sha256, "
                   "extract it"}[kind]
    if kind == "dir":
        files = sum(len(f) for _d, _s, f in os.walk(src))
        what += f" ({files} file{'' if files == 1 else 's'})"
    steps = [what]
    if kind == "tar" and not opts.strip_components:
        from ._sources import one_folder_hint, single_top_folder

        folder = single_top_folder(src)
        if folder is not None:
            steps.append(f"warning: {one_folder_hint(src, folder)}")
    return steps


def remote_source_steps(source: str | None, opts: DeployOptions, pull: bool,
                        here: str) -> list[str]:
    """The build's part of a remote root's dry-run plan, made on the deploying machine
    (``here``: its name): what it reads here, or with ``pull`` what the host fetches."""
    if pull:
        from ._fetch import redact

        assert source is not None
        return [f"have the host fetch {show(redact(source))} (not fetched in a dry run), "
                "check its sha256 there, extract it"]
    steps = _source_steps(source, None, opts)
    verb, _, rest = steps[0].partition(" ")
    if verb == "copy":
        steps[0] = f"send {rest} from {here}"
    else:
        steps[0] = f"{steps[0]} on {here}, and send the result"
    return steps


def plan_rollback_steps(root: str, to: str | None, opts: DeployOptions) -> list[str]:
    from ._layout import existing_root
    from .operations import plan_rollback, validate_options

    validate_options(opts)

    layout = existing_root(root)
    target, current = plan_rollback(History.load(layout), layout, to)
    return [f"switch current from releases/{current} to releases/{target}",
            f"mark {current} bad", *_health_plan(opts)]


def plan_prune_steps(root: str, keep: int) -> list[str]:
    from ._layout import existing_root
    from .operations import plan_prune

    layout = existing_root(root)
    victims, ordered = plan_prune(History.load(layout), layout, keep)
    kept = [n for n in ordered if n not in victims]
    return [f"delete releases/{v}" for v in victims] + [f"keep {', '.join(kept) or 'nothing'}"]


def _existing_root_for_switch(root: str) -> Layout:
    """What the real command's root checks refuse, without the folders they create."""
    from ._layout import check_current_is_link, existing_root

    layout = existing_root(root)
    check_current_is_link(layout)
    if not os.path.isdir(layout.releases):
        from .errors import InvalidInput

        raise InvalidInput(f"nothing deployed in {show(root)} yet (no releases/ folder); nothing "
                           "to roll back to, activate or prune", "nothing was changed")
    return layout


def plan_activate_steps(root: str, release: str, opts: DeployOptions) -> list[str]:
    from ._history import BAD, release_states
    from .operations import _check_release, check_not_swapped, validate_options

    validate_options(opts)
    check_not_swapped(root, release)
    layout = _existing_root_for_switch(root)
    _check_release(layout, release)
    cur = read_current(layout)
    steps = []
    if cur.healthy and cur.release == release:
        steps.append(f"{release} is already current: switch current to it again (same link)")
    else:
        steps.append(f"switch current from {cur.target or 'nothing'} to releases/{release}")
    if release_states(History.load(layout), layout, [release]).get(release) == BAD:
        steps.append(f"clear the bad mark of {release}")
    return steps + _health_plan(opts)


def plan_adopt_steps(root: str, release: str | None, use_exchange: bool) -> list[str]:
    from . import _platform
    from ._adopt import check_current_is_folder
    from ._layout import existing_root
    from .operations import check_new_adopt_id

    layout = existing_root(root)
    check_current_is_folder(layout)
    history = History.load(layout)
    rid = check_new_adopt_id(layout, history, release)
    exchange = _platform.exchange_name() if use_exchange else None
    how = (f"in one step with {exchange} (two renames, current briefly absent, where the "
           "filesystem refuses it)" if exchange else
           "with two renames (current briefly absent)")
    return [f"move the folder current to releases/{rid} and make current a link to it, {how}",
            f"record {rid} in the history as a release that has served"]

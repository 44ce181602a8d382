"""The model behind tests/test_model.py: a root as the docs describe it, and what each command,
with or without an injected fault, may leave behind.

A root is its releases (id -> build and state), what ``current`` is, and at most one interrupted
operation waiting for recovery. Each command maps a state to a list of allowed outcomes (exit
codes and the state after); the test runs the real command and picks the outcome the tool
landed in. Only where the docs allow several outcomes (a signal racing the commit, an adopt
stopped half-way) is there more than one; the invariants are checked on the chosen one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, replace

# Release states, as in src/atomic_deploy/_history.py (pending: a new release current points to
# before its operation committed; the tool has no record for it yet, so it counts as foreign).
COMPLETE, SERVED, BAD, FOREIGN, PENDING = "complete", "served", "bad", "foreign", "pending"
DIR = "<a real folder>"  # current is a folder (a root to adopt)
NEW = "<new release>"  # the id a deploy, prepare or adopt will pick, resolved after the run

EXIT_SIGNAL = {"INT": 130, "TERM": 143, "HUP": 129}
DOCUMENTED_EXITS = {0, 1, 2, 3, 4, 129, 130, 143}

DEPLOY_BEFORE_SWITCH = ("journal-written", "staging-created", "copy-file", "copied", "flushed",
                        "release-renamed", "release-synced", "temp-link-created")
PREPARE_STEPS = DEPLOY_BEFORE_SWITCH[:-1]
SWITCH_BEFORE_SWITCH = ("journal-written", "temp-link-created")
RECOVERY_HOOK_STEPS = ("hook-after-switch", "switching-back", "switched-back")


@dataclass(frozen=True)
class Rel:
    build: str
    state: str


@dataclass(frozen=True)
class Pending:
    """An operation stopped by kill -9 (or left journaled): what recovery will make of it."""

    op: str
    kind: str  # undo | finish | switchback | done (prune, adopt: kept as it is)
    before: State  # the root before the operation (what undoing it gives)
    after: State  # the root once the next mutating command has recovered it
    release: str | None = None  # a new release: listed only while current points to it
    build: str | None = None
    hooks: bool = False  # after-switch hook recorded in the journal
    target_healthy: bool = True


@dataclass(frozen=True)
class State:
    rels: dict[str, Rel] = field(default_factory=dict)
    current: str | None = None  # a release id, DIR or None (no current)
    pending: Pending | None = None
    exists: bool = True  # ROOT exists at all
    link_abs: bool = False  # current is an absolute link (Capistrano's), until a switch

    def visible(self) -> dict[str, Rel]:
        """The releases status and list show: an uncommitted new release only while current
        points to it (docs/json.md)."""
        p = self.pending
        if p is not None and p.release is not None and p.build is not None \
                and self.current == p.release:
            return {**self.rels, p.release: Rel(p.build, PENDING)}
        return dict(self.rels)

    def with_rel(self, rid: str, build: str, state: str) -> State:
        return replace(self, rels={**self.rels, rid: Rel(build, state)})

    def mark_ids(self, states: dict[str, str]) -> State:
        rels = dict(self.rels)
        for rid, s in states.items():
            rels[rid] = Rel(rels[rid].build, s)
        return replace(self, rels=rels)

    def without(self, *ids: str) -> State:
        return replace(self, rels={k: v for k, v in self.rels.items() if k not in ids})

    def at(self, current: str | None) -> State:
        return replace(self, current=current,
                       link_abs=self.link_abs and current == self.current)

    def switched_to(self, current: str | None) -> State:
        """current after a completed switch: a relative link written by the tool."""
        return replace(self, current=current, link_abs=False)

    def substitute(self, new_id: str) -> State:
        """Replace the NEW placeholder by the id the tool picked."""
        def sub(x: str | None) -> str | None:
            return new_id if x == NEW else x

        rels = {sub(k) or k: v for k, v in self.rels.items()}
        p = self.pending
        if p is not None:
            p = replace(p, before=p.before.substitute(new_id), after=p.after.substitute(new_id),
                        release=sub(p.release))
        return replace(self, rels=rels, current=sub(self.current), pending=p)

    def mentions_new(self) -> bool:
        p = self.pending
        return (NEW in self.rels or self.current == NEW
                or (p is not None and (p.release == NEW or p.after.mentions_new())))


@dataclass(frozen=True)
class Outcome:
    exits: frozenset[int]
    state: State
    why: str
    known_bug: str | None = None  # an outcome the docs do not allow, tolerated: see KNOWN_BUGS


# Behaviour that contradicts the docs, found by this model: the model tolerates an entry (so
# the random runs go on to look for other problems) unless ATOMIC_DEPLOY_MODEL_STRICT=1, and a
# strict xfail test in test_model.py reproduces it. Remove both once the tool is fixed.
KNOWN_BUGS: dict[str, str] = {}


def _natural(name: str) -> list[tuple[int, object]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|\D+", name)]


def generated(name: str) -> bool:
    """Named like a release id (the tool's own rule for these tests' names: 14 digits)."""
    return name.isdigit()


def order_key(name: str) -> tuple[int, int, list[tuple[int, object]]]:
    """Deploy order: generated ids numerically, after every other name (natural order); a new
    release after all of them (test_model checks that the id the tool picks sorts last)."""
    if name == NEW:
        return (2, 0, [])
    return (1, int(name), []) if generated(name) else (0, 0, _natural(name))


def ordered(rels: dict[str, Rel]) -> list[str]:
    return sorted(rels, key=order_key)


def rollback_target(rels: dict[str, Rel], current: str | None) -> str | None:
    """The newest release older than current that has served (or is foreign), never bad, never
    only prepared (README, docs/design.md)."""
    if current is None or current not in rels:
        return None
    names = ordered(rels)
    for name in reversed(names[: names.index(current)]):
        if rels[name].state in (SERVED, FOREIGN):
            return name
    return None


def prune_victims(s: State, keep: int) -> list[str]:
    """prune --keep N as documented: the N newest good releases, current and its rollback
    target are kept; bad ones never count and are kept when newer than the oldest kept good
    one; a folder neither named like an id nor known to the history is never deleted."""
    names = ordered(s.rels)
    good = [n for n in names if s.rels[n].state != BAD]
    kept_good = set(good[-keep:])
    oldest = min((names.index(n) for n in kept_good), default=len(names))
    protected = {s.current, rollback_target(s.rels, s.current)}
    out = []
    for i, n in enumerate(names):
        if n in kept_good or n in protected:
            continue
        if not (generated(n) or s.rels[n].state != FOREIGN):
            continue
        if s.rels[n].state == BAD and i > oldest:
            continue
        out.append(n)
    return out


def fault_exit(action: str) -> int:
    if action == "KILL":
        return -9
    return EXIT_SIGNAL.get(action, 1)  # an errno name: the operation failed


def one(exits: int | set[int], state: State, why: str) -> Outcome:
    return Outcome(frozenset({exits} if isinstance(exits, int) else exits), state, why)


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class Command:
    op: str  # deploy prepare activate rollback prune adopt recover
    build: str | None = None
    hooks: bool = False  # --after-switch 'test -f HEALTHY'
    keep: int | None = None
    release: str | None = None  # activate ID, rollback --to ID
    fault: tuple[str, str] | None = None  # (step, action)

    def describe(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                        if getattr(self, f.name) not in (None, False))


def recovery_steps(p: Pending) -> tuple[str, ...]:
    """The fault steps a command passes while recovering ``p``."""
    steps: tuple[str, ...] = ("recovering",)
    restored_told = p.hooks and p.before.current not in (None, DIR)
    if p.kind == "finish" and p.hooks:
        steps += ("hook-after-switch",)
        if not p.target_healthy:
            steps += ("switching-back", "switched-back")
    elif p.kind == "switchback":
        steps += ("switching-back", "switched-back")
        if restored_told:
            steps += ("hook-after-switch",)
    return steps


def expect(m: State, cmd: Command, healthy: dict[str, bool]) -> list[Outcome]:
    """Every outcome the docs allow for ``cmd`` run on ``m`` (``healthy``: build -> whether
    the after-switch hook passes in a release of it)."""
    op, fault = cmd.op, cmd.fault
    step, action = fault if fault else ("", "")
    x = fault_exit(action) if fault else 0

    # Refused before the lock is taken: nothing is recovered, nothing changes.
    if not m.exists and op not in ("deploy", "prepare"):
        return [one(2, m, f"{op}: no root")]
    if op == "adopt" and m.current != DIR:
        return [one(2, m, "adopt: current is not a folder")]
    if op != "adopt" and m.current == DIR:
        return [one(2, m, f"{op}: current is a real folder (adopt it first)")]

    if op in ("deploy", "prepare"):
        m = replace(m, exists=True)  # ROOT is created before the lock is taken
    if step == "lock-acquired":
        return [one(x, m, "stopped before recovering")]
    base = m
    fired = False
    p = m.pending
    if p is not None:
        rsteps = recovery_steps(p)
        if step == "recovering":
            return [one(x, m, "stopped while recovering")]
        if step in rsteps:
            fired = True
            if action == "KILL" or action not in EXIT_SIGNAL:
                # Recovery stopped: the journal stays; current may already be switched back.
                back = m.at(p.before.current)
                return [one(x, m, "recovery stopped"), one(x, back, "recovery stopped, switched back")]
            # A signal during recovery: recovery completes (a signal must not stop the
            # switch-back), the command itself stops at its next checkpoint.
            codes = {x}
            if op == "recover":
                codes.add(0)
            if op in ("activate", "rollback"):
                codes.add(2)
            if step == "hook-after-switch" and p.kind == "finish":
                # Stopped while re-running the hooks that decide: nothing decided, the
                # operation is left for the next command.
                return [one(x, m, "recovery stopped while re-running the hooks")]
            return [one(codes, p.after, "recovered, then stopped by the signal")]
        base = p.after
    f = None if fired else fault
    return _op(base, cmd, f, healthy)


def _op(b: State, cmd: Command, fault: tuple[str, str] | None,
        healthy: dict[str, bool]) -> list[Outcome]:
    op = cmd.op
    step, action = fault if fault else ("", "")
    x = fault_exit(action) if fault else 0
    if op == "recover":
        return [one(0, b, "recovered")]
    if op in ("deploy", "prepare"):
        assert cmd.build is not None
        if op == "prepare":
            done = b.with_rel(NEW, cmd.build, COMPLETE)
            if step in PREPARE_STEPS:
                return _before_switch(b, x, action, op, NEW, cmd.build)
            if step == "committed":
                return [one(x, done, "prepared, then the fault")]
            return [one(0, done, "prepared")]
        done = b.with_rel(NEW, cmd.build, SERVED).switched_to(NEW)
        unh = b.with_rel(NEW, cmd.build, BAD)
        outs = _switch(b, op, NEW, cmd.build, done, unh, DEPLOY_BEFORE_SWITCH, cmd, fault,
                       healthy[cmd.build])
        if cmd.keep is None:
            return outs
        return [o2 for o in outs for o2 in _keep_after(o, cmd, fault)]
    if op == "activate":
        t = cmd.release
        if t is None or t not in b.rels:
            return [one(2, b, "activate: unknown release")]
        done = b.mark_ids({t: SERVED}).switched_to(t)
        unh = b.mark_ids({t: BAD})
        return _switch(b, op, t, None, done, unh, SWITCH_BEFORE_SWITCH, cmd, fault,
                       healthy[b.rels[t].build])
    if op == "rollback":
        cur = b.current
        if cur is None or cur not in b.rels:
            return [one(2, b, "rollback: no current release")]
        t = cmd.release if cmd.release is not None else rollback_target(b.rels, cur)
        if t is None or t not in b.rels or t == cur:
            return [one(2, b, "rollback: no target / unknown / already current")]
        done = b.mark_ids({cur: BAD, t: SERVED}).switched_to(t)
        unh = b.mark_ids({t: BAD})
        return _switch(b, op, t, None, done, unh, SWITCH_BEFORE_SWITCH, cmd, fault,
                       healthy[b.rels[t].build])
    if op == "prune":
        assert cmd.keep is not None
        return _prune(b, cmd.keep, fault, after_deploy=False)
    if op == "adopt":
        return _adopt(b, fault)
    raise AssertionError(op)


def _before_switch(b: State, x: int, action: str, op: str, rel: str | None,
                   build: str | None) -> list[Outcome]:
    if action == "KILL":
        p = Pending(op, "undo", before=b, after=b, release=rel, build=build)
        return [one(x, replace(b, pending=p), "killed before the switch: recovery undoes it")]
    return [one(x, b, "stopped before the switch: undone")]


def _switch(b: State, op: str, target: str, build: str | None, done: State, unh: State,
            before_steps: tuple[str, ...], cmd: Command,
            fault: tuple[str, str] | None, target_healthy: bool) -> list[Outcome]:
    step, action = fault if fault else ("", "")
    x = fault_exit(action) if fault else 0
    unhealthy = cmd.hooks and not target_healthy
    final, final_exit = (unh, 4) if unhealthy else (done, 0)
    prev = b.current

    def pend(kind: str, after: State, current: str | None) -> State:
        p = Pending(op, kind, before=b, after=after, release=target if build else None,
                    build=build, hooks=cmd.hooks, target_healthy=target_healthy)
        return replace(b, current=current, pending=p)

    if step in before_steps:
        return _before_switch(b, x, action, op, target if build else None, build)
    after_switch = ("switched", "switch-synced") + (("hook-after-switch",) if cmd.hooks else ())
    if step in after_switch:
        if action == "KILL" and target == prev and not b.link_abs:
            # The link text did not change: recovery sees nothing switched and undoes it.
            return [one(x, pend("undo", b, target), "killed after a switch to itself: undone")]
        if action == "KILL":
            return [one(x, pend("finish", final, target),
                        "killed after the switch: recovery finishes it (or switches back)")]
        return [one(x, b, "stopped after the switch: switched back")]
    if unhealthy and step in ("switching-back", "switched-back"):
        if action == "KILL":
            return [one(x, pend("switchback", unh, target if step == "switching-back" else prev),
                        "killed while switching back: recovery finishes the switch-back")]
        if action in EXIT_SIGNAL:
            return [one({4, x}, unh, "signal while switching back: switched back, marked bad")]
        return [one(1, unh, "I/O error while switching back: kept and marked bad"),
                one(1, b, "I/O error while switching back: removed (deploy) or left as it was")]
    if step == "committed" and not unhealthy:
        return [one(x, done, "fault after the commit: done")]
    return [one(final_exit, final, "unhealthy: switched back" if unhealthy else "done")]


def _keep_after(o: Outcome, cmd: Command, fault: tuple[str, str] | None) -> list[Outcome]:
    """deploy --keep: a completed deploy (exit 0) then prunes in the same run."""
    if o.exits != frozenset({0}) or o.state.pending is not None:
        return [o]
    return _prune(o.state, cmd.keep or 1, fault, after_deploy=True)


def _prune(b: State, keep: int, fault: tuple[str, str] | None,
           after_deploy: bool) -> list[Outcome]:
    step, action = fault if fault else ("", "")
    x = fault_exit(action) if fault else 0
    victims = prune_victims(b, keep)
    everything = b.without(*victims)
    if step == "journal-written" and not after_deploy:
        if action == "KILL":
            return [one(x, replace(b, pending=Pending("prune", "done", before=b, after=b)),
                        "prune killed before deleting")]
        return [one(x, b, "prune stopped before deleting")]
    if step in ("victim-hidden", "victim-removed") and victims:
        first = b.without(victims[0])
        if action == "KILL":
            return [one(x, replace(first, pending=Pending("prune", "done", before=first,
                                                          after=first)),
                        "prune killed at its first victim: that one is gone")]
        if action not in EXIT_SIGNAL and after_deploy:
            return [one(0, first, "deploy done, its prune failed: a warning")]
        return [one(x, first, "prune stopped at its first victim: that one is gone")]
    if step == "committed" and not after_deploy:
        return [one(x, everything, "pruned, then the fault")]
    return [one(0, everything, "pruned" + (" after the deploy" if after_deploy else ""))]


def _adopt(b: State, fault: tuple[str, str] | None) -> list[Outcome]:
    step, action = fault if fault else ("", "")
    x = fault_exit(action) if fault else 0
    done = b.with_rel(NEW, "legacy", SERVED).switched_to(NEW)

    def pend(after: State, current: str | None) -> State:
        p = Pending("adopt", "done", before=b, after=after, release=NEW, build="legacy")
        return replace(b, current=current, pending=p)

    # A signal or error mid-adopt undoes it before the folder moved and finishes it after;
    # only kill -9 leaves a journal (finished, or undone, by the next adopt or command).
    if step == "adopt-links-made":
        if action == "KILL":
            return [one(x, pend(b, DIR), "adopt killed before the exchange")]
        if action in EXIT_SIGNAL:
            return [one(x, b, "adopt stopped before the exchange: undone")]
        return [one(0, done, "exchange failed: adopted by two renames")]
    if step in ("adopt-exchanged", "adopt-moved"):
        if action == "KILL":
            return [one(x, pend(done, NEW), "adopt killed after the exchange")]
        return [one(x, done, "adopt stopped after the exchange: finished")]
    if step == "committed":
        return [one(x, done, "adopted, then the fault")]
    return [one(0, done, "adopted")]

"""Model-based test: random sequences of deploy, prepare, activate, rollback, prune, adopt and
recover, through the real CLI, with a random fault (ATOMIC_DEPLOY_FAULT=STEP:ACTION) injected at a
random step, checked after every command against a small model of the root
(tests/model_support.py).

After every command: the tool landed in one of the outcomes the model allows (exit code,
``current``, the releases listed and their bad marks, whether an interrupted operation waits for
recovery), and the invariants hold: ``current`` resolves to a complete release holding exactly
one of the builds, ``status --json`` names the model's rollback target, nothing outside ROOT
changed, no traceback, every exit code documented, no leftovers once nothing is interrupted.

The default run is short (a few dozen command sequences, under a minute). The long run, for CI:
``pytest tests/test_model.py --hypothesis-profile=long`` (profile registered in conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from atomic_deploy._adopt import ADOPT_STEPS
from atomic_deploy._signals import DEPLOY_STEPS, PRUNE_STEPS, SWITCH_STEPS
from conftest import run_cli, snapshot
from model_support import (
    DIR,
    DOCUMENTED_EXITS,
    FOREIGN,
    KNOWN_BUGS,
    Command,
    Outcome,
    Rel,
    State,
    expect,
    rollback_target,
)

# Builds: name -> whether the after-switch hook used here (`test -f HEALTHY`) passes in it.
BUILDS = {"b1": True, "b2": True, "b3": False, "b4": True, "b5": False}
OTHER_BUILDS = {"f0": True, "f1": True, "f2": True, "legacy": True}  # made by hand / legacy
HEALTHY = {**BUILDS, **OTHER_BUILDS}
HOOK = "test -f HEALTHY"

ACTIONS = ("KILL", "INT", "TERM", "HUP", "EIO", "ENOSPC")
RECOVERY = ("recovering", "hook-after-switch", "switching-back", "switched-back")
STEPS = {
    "deploy": DEPLOY_STEPS + RECOVERY + ("victim-hidden", "victim-removed"),
    "prepare": (*DEPLOY_STEPS[:9], "committed", *RECOVERY),
    "activate": SWITCH_STEPS + RECOVERY,
    "rollback": SWITCH_STEPS + RECOVERY,
    "prune": PRUNE_STEPS + RECOVERY,
    "adopt": ADOPT_STEPS + RECOVERY,
    "recover": ("lock-acquired", *RECOVERY),
}


STRICT = os.environ.get("ATOMIC_DEPLOY_MODEL_STRICT") == "1"  # known bugs fail the run
# A file to append one JSON line per command to (op, fault, exit, outcome): run statistics.
LOG = os.environ.get("ATOMIC_DEPLOY_MODEL_LOG")


def faults(op: str) -> st.SearchStrategy[tuple[str, str] | None]:
    return st.one_of(st.none(), st.tuples(st.sampled_from(STEPS[op]), st.sampled_from(ACTIONS)))


def _profile_name() -> str:
    get = getattr(settings, "get_current_profile_name", None)
    return get() if get is not None else str(getattr(settings, "_current_profile", "default"))


@dataclass
class Observation:
    exists: bool
    current: str | None = None  # release id, DIR or None
    listed: dict[str, str] = field(default_factory=dict)  # id -> list state
    bad: set[str] = field(default_factory=set)
    previous: str | None = None
    interrupted: dict[str, Any] | None = None
    leftovers: list[str] = field(default_factory=list)
    disk: dict[str, str | None] = field(default_factory=dict)  # release dir -> its build
    status: dict[str, Any] = field(default_factory=dict)


class RootMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="atomic-deploy-model-"))
        self.root = self.tmp / "www"
        self.outside = self.tmp / "outside"
        self.builds = self.tmp / "builds"
        self.outside.mkdir()
        (self.outside / "keep.txt").write_text("not ours\n")
        for name, ok in HEALTHY.items():
            self._make_build(self.builds / name, name, ok)
        self.outside_before = (snapshot(self.outside), snapshot(self.builds))
        self.model = State(exists=False)
        self.seen: set[str] = set()
        self.trace: list[str] = []  # the CLI commands run, for the failure message
        self.obs = Observation(exists=False)
        self.last_killed = False
        self.strict = STRICT

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _make_build(self, path: Path, name: str, healthy: bool) -> None:
        (path / "assets").mkdir(parents=True)
        (path / "version.txt").write_text(f"{name}\n")
        (path / "assets" / "app.js").write_text(f"console.log({name!r});\n")
        # A link out of the release: deleting a release must never follow it.
        os.symlink(self.outside, path / "escape")
        if healthy:
            (path / "HEALTHY").write_text("")

    # ------------------------------------------------------------ setup

    @initialize(target=ids, layout=st.sampled_from(["empty", "capistrano", "legacy"]),
                adopt_fault=faults("adopt"),
                refused=st.sampled_from(["deploy", "prepare", "rollback", "prune", "recover"]))
    def setup(self, layout: str, adopt_fault: tuple[str, str] | None = None,
              refused: str = "deploy") -> Any:
        rels: dict[str, Rel] = {}
        current: str | None = None
        if layout == "capistrano":
            # Another tool's releases (no history), current an absolute link.
            for rid, build in (("manual", "f0"), ("20200101000000", "f1"),
                               ("20200102000000", "f2")):
                shutil.copytree(self.builds / build, self.root / "releases" / rid, symlinks=True)
                rels[rid] = Rel(build, FOREIGN)
            os.symlink(self.root / "releases" / "20200102000000", self.root / "current")
            current = "20200102000000"
        elif layout == "legacy":
            shutil.copytree(self.builds / "f1", self.root / "releases" / "20200101000000",
                            symlinks=True)
            rels["20200101000000"] = Rel("f1", FOREIGN)
            shutil.copytree(self.builds / "legacy", self.root / "current", symlinks=True)
            current = DIR
        self.model = State(rels=rels, current=current, exists=layout != "empty",
                           link_abs=layout == "capistrano")
        self.seen = set(rels)
        self.trace.append(f"# layout: {layout}")
        self.obs = self._observe()
        new: list[str] = []
        if layout == "legacy":
            # current is a folder: every command but adopt refuses the root (exit 2) until it
            # is adopted; adopt (with a fault, then again until it is done) here, so that the
            # random commands that follow all get a root they can work on.
            argv = {"deploy": ["deploy", str(self.builds / "b1"), str(self.root)],
                    "prepare": ["prepare", str(self.builds / "b1"), str(self.root)],
                    "rollback": ["rollback", str(self.root)],
                    "prune": ["prune", str(self.root), "--keep", "1"],
                    "recover": ["recover", str(self.root)]}[refused]
            self._run(Command(refused, build="b1", keep=1), argv)
            new += self.adopt(adopt_fault)
            while self.model.current == DIR:
                new += self.adopt(None)
        return multiple(*rels, *new)

    # ------------------------------------------------------------ running a command

    def _run(self, cmd: Command, argv: list[str]) -> list[str]:
        outcomes = expect(self.model, cmd, HEALTHY)
        spec = f"{cmd.fault[0]}:{cmd.fault[1]}" if cmd.fault else None
        r = run_cli(*argv, fault=spec)
        shown = " ".join(a.replace(str(self.tmp), "$T") for a in argv)
        self.trace.append((f"ATOMIC_DEPLOY_FAULT={spec} " if spec else "")
                          + f"atomic-deploy {shown}  -> exit {r.returncode}")
        where = "\n".join(self.trace)
        assert "Traceback" not in r.stderr, f"traceback:\n{r.stderr}\n{where}"
        assert r.returncode in DOCUMENTED_EXITS or (r.returncode == -9 and spec
                                                    and spec.endswith(":KILL")), \
            f"undocumented exit {r.returncode}: {r.stderr}\n{where}"
        for line in r.stderr.splitlines():
            assert line.startswith("atomic-deploy:"), f"stray stderr line {line!r}\n{where}"
        if r.returncode not in (0, -9):
            assert "error:" in r.stderr, f"exit {r.returncode} without an error line\n{where}"
        self.last_killed = r.returncode == -9
        obs = self._observe()
        observed_ids = set(obs.listed) | set(obs.disk)
        if obs.interrupted and isinstance(obs.interrupted.get("release"), str):
            observed_ids.add(obs.interrupted["release"])
        fresh = observed_ids - self.seen
        assert len(fresh) <= 1, f"several new releases {fresh}\n{where}"
        new_id = next(iter(fresh), None)
        if new_id is not None:
            stamps = [int(i) for i in self.seen if i.isdigit()]
            assert new_id.isdigit() and int(new_id) > max(stamps, default=0), \
                f"new id {new_id} not after every earlier id\n{where}"
        candidates = []
        for o in outcomes:
            state = o.state.substitute(new_id) if new_id is not None else o.state
            if state.mentions_new():
                continue
            candidates.append(replace(o, state=state))
        chosen = [o for o in candidates if self._matches(o, r.returncode, obs)]
        chosen.sort(key=lambda o: o.known_bug is not None)  # a documented outcome first
        assert chosen, self._mismatch(cmd, r, obs, candidates, where)
        if chosen[0].known_bug is not None:
            assert not self.strict, f"known bug {chosen[0].known_bug}: {KNOWN_BUGS[chosen[0].known_bug]}" \
                f"\n{where}"
            self.trace.append(f"#   (known bug: {chosen[0].known_bug})")
        self._log(cmd, r.returncode, chosen[0])
        self.model = chosen[0].state
        self.seen |= observed_ids
        self.obs = obs
        return [new_id] if new_id is not None else []

    def _log(self, cmd: Command, rc: int, o: Outcome) -> None:
        if LOG:
            with open(LOG, "a") as f:
                f.write(json.dumps({"op": cmd.op, "fault": cmd.fault, "exit": rc, "why": o.why,
                                    "known_bug": o.known_bug}) + "\n")

    def _matches(self, o: Outcome, rc: int, obs: Observation) -> bool:
        s = o.state
        if rc not in o.exits or s.exists != obs.exists:
            return False
        if not obs.exists:
            return True
        vis = s.visible()
        bad = {i for i, r in vis.items() if r.state == "bad" and i != s.current}
        return (s.current == obs.current and set(vis) == set(obs.listed)
                and all(obs.disk.get(i) == r.build for i, r in vis.items())
                and bad == obs.bad and (s.pending is not None) == (obs.interrupted is not None))

    def _mismatch(self, cmd: Command, r: Any, obs: Observation, candidates: list[Outcome],
                  where: str) -> str:
        def show(s: State) -> str:
            rels = ", ".join(f"{k}={v.build}/{v.state}" for k, v in sorted(s.visible().items()))
            return (f"current={s.current} [{rels}] interrupted={s.pending is not None}")

        allowed = "\n".join(f"  exit {sorted(o.exits)}: {show(o.state)}  ({o.why})"
                            for o in candidates)
        return (f"the tool left a state the model does not allow after {cmd.describe()}\n"
                f"exit {r.returncode}, stderr: {r.stderr.strip()}\n"
                f"observed: current={obs.current} listed={obs.listed} bad={sorted(obs.bad)} "
                f"interrupted={obs.interrupted and obs.interrupted.get('op')} "
                f"disk={obs.disk}\nallowed:\n{allowed}\nsequence:\n{where}")

    def _observe(self) -> Observation:
        if not os.path.lexists(self.root):
            return Observation(exists=False)
        st_r = run_cli("status", self.root, "--json")
        ls_r = run_cli("list", self.root, "--json")
        for r in (st_r, ls_r):
            # status exits 1 when current serves no release (and says so under --json)
            assert r.returncode in (0, 1) and "Traceback" not in r.stderr, \
                f"{r.args[3]} failed: {r.returncode} {r.stderr}\n" + "\n".join(self.trace)
        status, listing = json.loads(st_r.stdout), json.loads(ls_r.stdout)
        assert ls_r.returncode == 0
        assert st_r.returncode == (0 if status["serving"] else 1) \
            and status["serving"] == (status["current_state"] == "ok"), status
        obs = Observation(exists=True, status=status, previous=status["previous"],
                          interrupted=status["interrupted"], leftovers=status["leftovers"])
        cur = self.root / "current"
        if os.path.islink(cur):
            text = os.readlink(cur)
            prefix = ("releases/", f"{self.root}/releases/")
            obs.current = next((text[len(p):] for p in prefix if text.startswith(p)), text)
        elif os.path.isdir(cur):
            obs.current = DIR
        obs.listed = {r["id"]: r["state"] for r in listing["releases"]}
        obs.bad = {i for i, s in obs.listed.items() if s == "bad"}
        assert set(status["bad"]) == obs.bad, f"status and list disagree: {status} {listing}"
        rel = self.root / "releases"
        if rel.is_dir():
            for e in os.scandir(rel):
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False):
                    v = Path(e.path) / "version.txt"
                    obs.disk[e.name] = v.read_text().strip() if v.is_file() else None
        return obs

    # ------------------------------------------------------------ the commands

    def _mutable(self) -> bool:
        return self.model.exists and self.model.current != DIR

    @rule(target=ids, build=st.sampled_from(sorted(BUILDS)), fault=faults("deploy"))
    def deploy(self, build: str, fault: tuple[str, str] | None, hooks: bool = False,
               keep: int | None = None) -> Any:
        argv = ["deploy", str(self.builds / build), str(self.root)]
        argv += ["--after-switch", HOOK] if hooks else []
        # No keep: no pruning (what the model knows), not the default of 5.
        argv += ["--keep", str(keep) if keep else "all"]
        return multiple(*self._run(Command("deploy", build=build, hooks=hooks, keep=keep,
                                           fault=fault), argv))

    @rule(target=ids, build=st.sampled_from(sorted(BUILDS)), hooks=st.booleans(),
          keep=st.none() | st.integers(1, 3), fault=faults("deploy"))
    def deploy_with(self, build: str, hooks: bool, keep: int | None,
                    fault: tuple[str, str] | None) -> Any:
        """deploy with --after-switch (a hook that fails in some builds) and/or --keep."""
        return self.deploy(build, fault, hooks, keep)

    @rule(target=ids, build=st.sampled_from(sorted(BUILDS)), fault=faults("prepare"))
    def prepare(self, build: str, fault: tuple[str, str] | None) -> Any:
        argv = ["prepare", str(self.builds / build), str(self.root)]
        return multiple(*self._run(Command("prepare", build=build, fault=fault), argv))

    @precondition(_mutable)
    @rule(release=ids, hooks=st.booleans(), fault=faults("activate"))
    def activate(self, release: str, hooks: bool, fault: tuple[str, str] | None) -> None:
        argv = ["activate", str(self.root), release] + (["--after-switch", HOOK] if hooks else [])
        self._run(Command("activate", release=release, hooks=hooks, fault=fault), argv)

    @precondition(_mutable)
    @rule(hooks=st.booleans(), fault=faults("rollback"))
    def rollback(self, hooks: bool, fault: tuple[str, str] | None) -> None:
        argv = ["rollback", str(self.root)] + (["--after-switch", HOOK] if hooks else [])
        self._run(Command("rollback", hooks=hooks, fault=fault), argv)

    @precondition(_mutable)
    @rule(release=ids, hooks=st.booleans(), fault=faults("rollback"))
    def rollback_to(self, release: str, hooks: bool, fault: tuple[str, str] | None) -> None:
        argv = ["rollback", str(self.root), "--to", release]
        argv += ["--after-switch", HOOK] if hooks else []
        self._run(Command("rollback", release=release, hooks=hooks, fault=fault), argv)

    @precondition(_mutable)
    @rule(keep=st.integers(1, 3), fault=faults("prune"))
    def prune(self, keep: int, fault: tuple[str, str] | None) -> None:
        self._run(Command("prune", keep=keep, fault=fault),
                  ["prune", str(self.root), "--keep", str(keep)])

    def adopt(self, fault: tuple[str, str] | None) -> list[str]:
        """Run by setup for a root whose current is a folder (never valid afterwards)."""
        return self._run(Command("adopt", fault=fault), ["adopt", str(self.root)])

    @precondition(_mutable)
    @rule(fault=faults("recover"))
    def recover(self, fault: tuple[str, str] | None) -> None:
        self._run(Command("recover", fault=fault), ["recover", str(self.root)])

    # ------------------------------------------------------------ invariants

    @invariant()
    def current_is_one_complete_release(self) -> None:
        cur = self.model.current
        if cur is None or cur == DIR:
            return
        link = self.root / "current"
        real = os.path.realpath(link)
        assert real == os.path.realpath(self.root / "releases" / cur), (real, cur, self.trace)
        build = self.model.visible()[cur].build
        assert snapshot(Path(real)) == snapshot(self.builds / build), \
            f"current ({cur}) is not exactly build {build}\n" + "\n".join(self.trace)

    @invariant()
    def releases_are_complete_builds(self) -> None:
        for rid, rel in self.model.visible().items():
            assert snapshot(self.root / "releases" / rid) == snapshot(self.builds / rel.build), \
                f"release {rid} is not exactly build {rel.build}\n" + "\n".join(self.trace)

    @invariant()
    def rollback_target_agrees(self) -> None:
        if not self.obs.exists:
            return
        s = self.model
        want = rollback_target(s.visible(), s.current) if s.current != DIR else None
        assert self.obs.previous == want, (
            f"status says the rollback target is {self.obs.previous}, the model {want}\n"
            + "\n".join(self.trace))

    @invariant()
    def nothing_outside_root_changed(self) -> None:
        assert (snapshot(self.outside), snapshot(self.builds)) == self.outside_before, \
            "something outside ROOT changed\n" + "\n".join(self.trace)

    @invariant()
    def no_leftovers_when_idle(self) -> None:
        if self.obs.exists and self.model.pending is None:
            assert self.obs.leftovers == [], (
                f"leftovers {self.obs.leftovers} with nothing interrupted\n"
                + "\n".join(self.trace))


_LONG = _profile_name() in ("long", "thorough")  # these profiles decide the run's size
RootMachine.TestCase.settings = settings(
    settings() if _LONG else settings(max_examples=10, stateful_step_count=12),
    deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)
TestModel = RootMachine.TestCase


# ---------------------------------------------------------------- minimal sequences found

def _replay(layout: str, *steps: tuple[str, dict[str, Any]],
            adopt_fault: tuple[str, str] | None = None) -> None:
    """Run one sequence of rules through the machine, known bugs not tolerated."""
    m = RootMachine()
    m.strict = True
    try:
        m.setup(layout, adopt_fault)
        for name, kwargs in steps:
            getattr(m, name)(**kwargs)
            for check in (m.current_is_one_complete_release, m.releases_are_complete_builds,
                          m.rollback_target_agrees, m.nothing_outside_root_changed,
                          m.no_leftovers_when_idle):
                check()
    finally:
        m.teardown()


def _deploy(build: str, hooks: bool = False, keep: int | None = None,
            fault: tuple[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    return "deploy_with", {"build": build, "hooks": hooks, "keep": keep, "fault": fault}


def test_model_replays_an_adopted_root() -> None:
    _replay("legacy", _deploy("b1"), ("rollback", {"hooks": True, "fault": None}),
            adopt_fault=("adopt-links-made", "KILL"))


def test_model_replays_a_plain_history() -> None:
    """The model and the tool agree on a fault-free history (and the replay helper works)."""
    _replay("capistrano", _deploy("b1", keep=2), _deploy("b2"),
            ("rollback", {"hooks": False, "fault": None}), ("prune", {"keep": 1, "fault": None}))


def test_switch_back_io_error_still_marks_the_release_bad() -> None:
    # Found by this model: deploy b1; deploy b3 --after-switch 'test -f HEALTHY' with EIO at
    # switching-back kept b3's release without a state ("good (unmanaged)"), so after one more
    # deploy `rollback` went to it. Now it is kept and marked bad.
    _replay("empty", _deploy("b1"), _deploy("b3", hooks=True, fault=("switching-back", "EIO")),
            _deploy("b2"), ("rollback", {"hooks": False, "fault": None}))


def test_signal_while_recovery_reruns_hooks_leaves_it_for_the_next_command() -> None:
    # Found by this model: deploy b1; deploy b2 --after-switch 'test -f HEALTHY' killed at
    # switched; `recover` with INT at hook-after-switch switched b2 away and marked it bad
    # (exit 0) though its hook passed. Now recovery stops (exit 130) and the next command
    # finishes the deploy.
    _replay("empty", _deploy("b1"), _deploy("b2", hooks=True, fault=("switched", "KILL")),
            ("recover", {"fault": ("hook-after-switch", "INT")}), ("recover", {"fault": None}))

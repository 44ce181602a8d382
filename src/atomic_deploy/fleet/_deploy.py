"""One release to many hosts, all-or-nothing: the two-phase coordinator.

Every host runs the same session as a single-host deploy (remote/_session.py); this module
steps them together:

1. **Connect** every host in parallel (``parallel`` at a time): master connection, probe,
   the tool installed where missing. A host that cannot be reached: nothing started anywhere.
2. **Lock**: each host's session takes its root's lock, recovers, and proposes a release id.
   With ``--wait``, one host after the other in one sorted order (two fleet deploys that
   overlap cannot deadlock: both go for the same first host); without, all at once (a
   refused lock fails at once, so nothing can wait on anything). The fleet's id is the
   greatest proposal: later than every release on every host, so free everywhere.
3. **Prepare** in parallel: transfer, seal under the fleet's id, ``--check``. A barrier: if
   any host fails, every host is told to abort (its staged release removed); nobody switched.
4. **Switch**: the ``switch`` messages go out back to back to hosts already waiting; each
   host switches, runs its after-switch hooks and health check and says when it switched
   (its clock): the skew is the spread of those times. If any host fails, every host that
   switched is told to switch back (its after-switch hooks run for the restored release)
   and to keep the release marked bad.
5. **Commit** every host. The only window in which a crash of this process leaves the fleet
   mixed is between the first and the last ``commit`` message (they go out back to back).

**Rolling** (``rolling``): step 4 in batches of hosts, in the order given; each batch switched,
hooked and health-checked before the next is told to switch (``rolling_wait`` seconds
between). Switched hosts wait for their commit with their sessions open (the pings keep them
from giving up), so a failing batch can still switch every earlier one back; the commit goes
out after the last batch. **max_fail**: up to that many hosts may fail after the switch (each
switches itself back and stays on its previous release); the others go on and commit, and
the fleet is reported mixed (exit 5). One more failure: all-or-nothing again.

Each host's deadline per phase is ``host_timeout``; a host that misses it is named, aborted,
and counted as failed.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .._signals import fault_point
from ..errors import AtomicDeployError, ConnectFailed, InterruptedBySignal
from ..remote import _ship
from ..remote._address import RemoteRoot
from ..remote._client import (
    HostSession,
    HostTimeout,
    Transfer,
    TransferFailed,
    _LocalSignal,
    build_index,
    connect,
    forget_index,
    signals_raised,
)
from ..remote._ssh import Connection, Probe, SshSettings, pump_lines

Emit = Callable[[str], None]
# A host's progress, for a caller that shows it (the CLI's live table): called with the host's
# outcome so far and what just happened to it: connecting, connected, locked, transferring,
# prepared, switched, committed, failed, undone. Calls never overlap (or overlap an Emit).
OnEvent = Callable[["HostOutcome", str], None]
ArgvFor = Callable[[RemoteRoot, Probe], list[str]]

# Exit codes of a fleet deploy (the CLI's too): a host unreachable before anything started is
# 2, a failed check or health check 4, anything else that failed 1, a fleet left mixed 5.
EXIT_MIXED = 5
_UNKNOWN = "unknown (it could not be asked)"


@dataclass
class HostOutcome:
    host: str  # as given: web1:/srv/app
    ok: bool = False
    phase: str = "connect"  # the last phase it reached: connect, locked, prepared, switched,
    #                         committed; "not started": another host stopped the fleet first
    release: str | None = None  # the release it serves at the end, where known
    previous: str | None = None
    exit_code: int = 0
    error: str | None = None
    files: int = 0
    bytes: int = 0
    linked: int = 0
    switched_at: float | None = None
    seconds: float = 0.0
    batch: int | None = None  # its switch batch (1, 2...); None: never told to switch
    # Why a host that did not fail itself ended where it did (phase "not started"):
    # "web2:/srv/app could not be reached; nothing changed here".
    note: str | None = None
    # What its committed command did besides switching, as its own result says: the releases
    # its --keep deleted, and (rollback) the release it marked bad.
    pruned: list[str] = field(default_factory=list)
    marked_bad: str | None = None
    # Its error without the state its own error line gave (the row's phase and release say
    # where it is): what the summary and its row repeat. Not in --json (``error`` is whole).
    brief: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["brief"]
        return out


@dataclass
class FleetResult:
    release: str | None
    activated: bool
    outcome: str  # deployed, prepared, nothing switched, switched back, mixed, interrupted
    exit_code: int
    hosts: list[HostOutcome] = field(default_factory=list)
    skew: float | None = None  # seconds between the first and the last host's switch
    error: str | None = None
    seconds: float = 0.0
    batches: list[Batch] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "activated": self.activated, "outcome": self.outcome,
                "exit_code": self.exit_code, "error": self.error, "skew_ms": _ms(self.skew),
                "seconds": round(self.seconds, 3), "hosts": [h.to_dict() for h in self.hosts],
                "batches": [b.to_dict() for b in self.batches]}


@dataclass
class Batch:
    """One switch batch (the whole fleet is one batch unless rolling)."""

    hosts: list[str]
    switched: list[str] = field(default_factory=list)  # switched and healthy
    failed: list[str] = field(default_factory=list)
    skew: float | None = None  # between the first and the last host of the batch to switch
    seconds: float = 0.0  # from the switch messages to the last host's answer

    def to_dict(self) -> dict[str, Any]:
        return {"hosts": self.hosts, "switched": self.switched, "failed": self.failed,
                "skew_ms": _ms(self.skew), "seconds": round(self.seconds, 3)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _spread(times: list[float]) -> float | None:
    return max(times) - min(times) if times else None


@dataclass
class FleetOptions:
    parallel: int = 10
    host_timeout: float | None = None  # per host, per phase
    activate: bool = True
    # Waiting for locks (--wait): taken one host after the other in one sorted order, so two
    # fleets that overlap cannot each hold a lock the other waits for. Without waiting, a
    # refused lock fails at once (nothing can deadlock), so all are taken in parallel.
    ordered_locking: bool = False
    # Rolling: hosts per switch batch (``rolling``), or that percentage of the hosts
    # (``rolling_percent``, rounded up); 0: every host in one batch.
    rolling: int = 0
    rolling_percent: float = 0.0
    rolling_wait: float = 0.0  # seconds between batches
    max_fail: int = 0  # hosts that may fail after the switch and stay on their previous release

    def batch_size(self, hosts: int) -> int:
        if self.rolling_percent:
            return max(1, math.ceil(hosts * self.rolling_percent / 100))
        return self.rolling if self.rolling > 0 else max(1, hosts)
    on_event: OnEvent | None = None


def _switched_line(ran: object) -> str:
    """The host's switched line, naming only what it ran after the switch (and so passed)."""
    names = {"after-switch": "after-switch hooks", "health-check": "health check"}
    done = [names[r] for r in ran if r in names] if isinstance(ran, list) else []
    if not done:
        return "switched"
    return f"switched, {' and '.join(done)} passed"


class _Host:
    def __init__(self, root: RemoteRoot, text: str, order: int,
                 note: Callable[[_Host, str], None] | None = None) -> None:
        self.root = root
        self.order = order  # its place in the list given: rolling batches follow it
        self.out = HostOutcome(text)
        self.note = note or (lambda host, event: None)
        self.conn: Connection | None = None
        self.probe: Probe | None = None
        self.installed = False
        self.session: HostSession | None = None
        self.ready: dict[str, Any] | None = None
        self.done: dict[str, Any] | None = None
        self.started = time.monotonic()

    def fail(self, code: int, error: str, brief: str | None = None) -> None:
        self.out.ok = False
        if not self.out.error:
            self.out.exit_code, self.out.error = code, error
            self.out.brief = brief or error
            self.note(self, "failed")


class Fleet:
    """A fleet deploy (or prepare) of ``build`` to ``roots``."""

    def __init__(self, roots: list[tuple[RemoteRoot, str]], build: str | None,
                 argv_for: ArgvFor,
                 settings: SshSettings, emit: Emit, transfer: Transfer,
                 opts: FleetOptions) -> None:
        # The order given (command line, --hosts FILE lines): output, --json and batches
        # follow it; only locks taken with --wait go in a sorted order (_phases).
        self.hosts = [_Host(r, text, i, self.note) for i, (r, text) in enumerate(roots)]
        self.batches: list[Batch] = []
        self.build, self.argv_for, self.settings = build, argv_for, settings
        self.transfer, self.opts = transfer, opts
        self._emit_lock = threading.Lock()
        self._emit = emit
        self.tool = _ship.tool()

    # -- output -------------------------------------------------------------------------------
    def say(self, host: _Host, text: str) -> None:
        """One whole line, prefixed with the host: lines of several hosts never interleave."""
        with self._emit_lock:
            self._emit(host_line(host.out.host, text))

    def note(self, host: _Host, event: str) -> None:
        """Tell the caller's ``on_event`` (if any) what just happened to ``host``."""
        if self.opts.on_event is not None:
            with self._emit_lock:
                self.opts.on_event(host.out, event)

    # -- the phases ---------------------------------------------------------------------------
    def run(self) -> FleetResult:
        started = time.monotonic()
        try:
            with signals_raised():
                result = self._phases()
        except _LocalSignal as stop:
            result = self._interrupted(stop.signum)
        finally:
            self._close()
        for h in self.hosts:
            if h.out.error and not h.out.ok and h.out.phase != "undone":
                h.out.phase = "failed"  # not the last phase it reached (fleet.md, Output)
        result.hosts = [h.out for h in self.hosts]
        result.batches = self.batches
        result.seconds = time.monotonic() - started
        return result

    def _pool(self, fn: Callable[[_Host], None], hosts: list[_Host]) -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.opts.parallel)) as ex:
            for f in [ex.submit(fn, h) for h in hosts]:
                f.result()

    def _phases(self) -> FleetResult:
        activate = self.opts.activate
        # 1. connect
        self._pool(self._connect, self.hosts)
        down = [h for h in self.hosts if h.conn is None]
        if down:
            self._not_started(self._which(down, "could not be reached"))
            return self._result(None, "nothing changed", 2, self._names(down, "unreachable"))
        # 2. lock
        if self.opts.ordered_locking:
            for h in sorted(self.hosts, key=lambda h: h.out.host):
                self._lock(h)
                if h.ready is None:
                    break
        else:
            self._pool(self._lock, self.hosts)
        refused = [h for h in self.hosts if h.ready is None and h.out.error]
        if refused or any(h.ready is None for h in self.hosts):
            self._not_started(self._which(refused, "could not start"))  # --wait: not asked
            return self._abort_all(None, "nothing changed",
                                   self._names(refused, "could not start"),
                                   reason=self._which(refused, "could not start"))
        release = max(str(h.ready["release"]) for h in self.hosts if h.ready)
        fault_point("fleet-locked")
        if self.build is not None:
            # 3. prepare
            self._pool(lambda h: self._prepare(h, release), self.hosts)
            unprepared = [h for h in self.hosts if h.out.phase != "prepared"]
            if unprepared:
                return self._abort_all(release, "nothing switched",
                                       self._names(unprepared, "failed to prepare"),
                                       reason=self._which(unprepared, "failed to prepare"))
            fault_point("fleet-prepared")
        if not activate:
            return self._commit(release, "prepared", None)
        # 4. switch, in batches when rolling (else all hosts in one)
        order = sorted(self.hosts, key=lambda h: h.order)
        size = self.opts.batch_size(len(order))
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        failed: list[_Host] = []
        for number, hosts in enumerate(batches, 1):
            if number > 1 and self.opts.rolling_wait:
                time.sleep(self.opts.rolling_wait)  # a signal still interrupts it (run())
            failed += self._switch_batch(number, hosts, len(batches))
            if len(failed) > self.opts.max_fail:
                return self._switch_back(release, failed)
            if number < len(batches):
                fault_point("fleet-batch-switched")
        survivors = [h for h in self.hosts if h.out.phase == "switched"]
        if not survivors:  # every host failed, within --max-fail: nothing to commit
            return self._switch_back(release, failed)
        fault_point("fleet-switched")
        # Rolling: from the first host's switch to the last's, across the batches (each
        # batch's own is in self.batches). None if a host did not say when it switched.
        times = [h.out.switched_at for h in survivors if h.out.switched_at is not None]
        skew = _spread(times) if len(times) == len(survivors) else None
        if failed:
            why = self._names(failed, f"{len(failed)} of {_hosts(len(self.hosts))} failed after "
                              f"the switch and switched back (--max-fail {self.opts.max_fail})")
            return self._commit(release, "deployed", skew, survivors, why)
        return self._commit(release, "deployed", skew)

    def _switch_batch(self, number: int, hosts: list[_Host], count: int) -> list[_Host]:
        """Switch ``hosts`` together and wait for each one's after-switch hooks and health
        check; the hosts that failed."""
        batch = Batch([h.out.host for h in hosts])
        self.batches.append(batch)
        started = time.monotonic()
        for h in hosts:
            assert h.session is not None
            h.out.batch = number
            h.session.send("switch")
        self._pool(self._await_switch, hosts)
        batch.seconds = time.monotonic() - started
        ok = [h for h in hosts if h.out.phase == "switched"]
        failed = [h for h in hosts if h.out.phase != "switched"]
        batch.switched = [h.out.host for h in ok]
        batch.failed = [h.out.host for h in failed]
        batch.skew = _spread([h.out.switched_at for h in ok if h.out.switched_at is not None])
        if count > 1:  # one line per batch, as each ends
            skew = f"skew {batch.skew * 1000:.1f} ms, " if batch.skew is not None else ""
            line = (f"batch {number}/{count}: {len(ok)} of {_hosts(len(hosts))} switched and "
                    f"healthy ({skew}{batch.seconds:.2f}s)")
            if failed:
                line += "; failed: " + ", ".join(batch.failed)
            with self._emit_lock:
                self._emit(line)
        return failed

    def _connect(self, h: _Host) -> None:
        self.note(h, "connecting")
        try:
            h.conn, h.probe, h.installed = connect(h.root, self.settings, self.tool,
                                                   mutating=True, create_root=True)
        except AtomicDeployError as exc:
            h.fail(exc.exit_code, exc.message)
            self.say(h, f"error: {exc.message}")
            return
        self.note(h, "connected")
        if (self.build is not None and h.probe is not None and h.probe.digests
                and self.transfer.method != "pull" and not self.transfer.trust_mtime):
            # hashing overlaps the other hosts' connects and locks
            build_index(self.build, self.transfer.cache_digests)

    def _lock(self, h: _Host) -> None:
        assert h.conn is not None and h.probe is not None
        try:
            argv = self.argv_for(h.root, h.probe)
        except AtomicDeployError as exc:
            h.fail(exc.exit_code, exc.message)
            self.say(h, f"error: {exc.message}")
            return
        proc = h.conn.start(argv, self.tool, installed=h.installed, mutating=True)
        assert proc.stderr is not None
        threading.Thread(target=pump_lines, args=(proc.stderr, lambda line: self.say(h, line)),
                         daemon=True).start()
        t = Transfer(compress=self.transfer.compress, trust_mtime=self.transfer.trust_mtime)
        if self.transfer.method == "pull" or getattr(h.conn, "self_sourced", False):
            t.method = "pull"  # the host (or local root) reads the build itself
        else:
            t.method = "rsync" if h.probe.rsync and shutil.which("rsync") else "tar"
        h.session = HostSession(h.conn, proc, t, lambda line: self.say(h, line))
        ev = self._next(h)
        if ev is not None and ev["event"] == "ready":
            h.ready, h.out.phase = ev, "locked"
            link = ev.get("link_dest")
            h.out.previous = ev.get("previous") or (str(link).rsplit("/", 1)[-1] if link
                                                    else None)
            self.note(h, "locked")
        else:
            self._ended(h, ev)

    def _next(self, h: _Host, switching: bool = False) -> dict[str, Any] | None:
        """``switching``: the host was told to switch, so silence may come after its switch
        (the reply lost or late): it is told to undo as a switched host failing is, a
        deploy's new release kept there marked bad, as on the hosts switched back with it."""
        assert h.session is not None
        try:
            return h.session.next_event(self.opts.host_timeout)
        except HostTimeout as exc:
            h.fail(1, exc.message)
            self.say(h, f"error: {exc.message}")
            h.session.send("abort", reason="it did not answer in time",
                           bad=switching and self.build is not None)
            return None

    def _ended(self, h: _Host, ev: dict[str, Any] | None) -> None:
        """The host ended its session (``done``), or went silent: record why."""
        if ev is not None and ev.get("event") == "done":
            h.done = ev
            code = int(ev.get("exit", 1))
            if code != 0:
                err, state = _error_of(ev) or (f"exit status {code}", None)
                h.fail(code, f"{err}; {state}" if state else err, err)
            return
        if h.out.error is None:
            assert h.session is not None
            exc = h.session.lost(h.session.proc.poll())
            h.fail(1, str(exc))
            self.say(h, f"error: {exc}")

    def _prepare(self, h: _Host, release: str) -> None:
        assert h.session is not None and h.ready is not None and self.build is not None
        self.note(h, "transferring")
        try:
            h.session.transfer_build(self.build, h.ready)
        except (TransferFailed, OSError) as exc:
            h.fail(1, str(exc))
            self.say(h, f"error: {exc}")
            return
        h.session.send("seal", release=release)
        ev = self._next(h)
        if ev is not None and ev["event"] == "sealed":
            h.out.phase = "prepared"
            h.out.files, h.out.bytes = int(ev.get("files", 0)), int(ev.get("bytes", 0))
            h.out.linked = int(ev.get("linked", 0))
            self.note(h, "prepared")
            files = f"{h.out.files} file{'' if h.out.files == 1 else 's'}"
            self.say(h, f"prepared {release} ({files}, {h.out.linked} linked)")
        else:
            self._ended(h, ev)

    def _await_switch(self, h: _Host) -> None:
        ev = self._next(h, switching=True)
        if ev is not None and ev["event"] == "switched":
            h.out.phase = "switched"
            at = ev.get("at")
            h.out.switched_at = float(at) if isinstance(at, (int, float)) else None
            self.say(h, _switched_line(ev.get("ran")))
            self.note(h, "switched")
        else:
            self._ended(h, ev)  # it switched back by itself (or never switched)

    # -- endings ------------------------------------------------------------------------------
    def _not_started(self, why: str) -> None:
        """The hosts never asked to lock (no session, no error of their own) because ``why``:
        nothing was changed there, and their phase says so rather than ``connect``."""
        for h in self.hosts:
            if h.session is None and not h.out.error:
                h.out.phase = "not started"
                h.out.note = f"{why}; nothing changed here"
                self.say(h, f"not started: {h.out.note}")
                self.note(h, "not started")

    def _commit(self, release: str, outcome: str, skew: float | None,
                hosts: list[_Host] | None = None, failures: str | None = None) -> FleetResult:
        """Commit ``hosts`` (default: every host); the others failed within --max-fail."""
        chosen = self.hosts if hosts is None else hosts
        for h in chosen:  # back to back: the window a crash here leaves mixed
            assert h.session is not None
            h.session.send("commit")
        fault_point("fleet-committing")
        self._pool(self._await_done, self.hosts)
        for h in self.hosts:
            if h in chosen and h.done is not None and int(h.done.get("exit", 1)) == 0:
                h.out.ok, h.out.phase, h.out.exit_code = True, "committed", 0
                _took_result(h.out, h.done)
                h.out.release = release if self.opts.activate else h.out.previous
                self.say(h, f"committed: on {h.out.release}" if self.opts.activate
                         else f"committed: {release} prepared")
                self.note(h, "committed")
            elif h not in chosen and h.done is not None:
                h.out.release = h.out.previous  # it switched itself back
        return self._settle(release, outcome, 0, failures, skew)

    def _await_done(self, h: _Host) -> None:
        if h.session is None or h.done is not None:
            return
        try:
            ev = h.session.until_done(self.opts.host_timeout)
        except HostTimeout as exc:
            h.fail(1, exc.message)
            return
        self._ended(h, ev)

    def _abort_all(self, release: str | None, outcome: str, error: str,
                   bad: bool = False, reason: str | None = None) -> FleetResult:
        """Tell every host still in its session to undo, and wait for each to say so."""
        culprits = {id(h) for h in self.hosts if h.out.error}
        for h in self.hosts:
            if h.session is not None and h.done is None:
                # Only a switched host keeps the release (marked bad); one still waiting for
                # its batch removes it, as in a failed prepare.
                h.session.send("abort", reason=reason or error,
                               bad=bad and h.out.phase == "switched")
        self._pool(self._await_done, self.hosts)
        for h in self.hosts:
            if h.done is not None or h.session is None:
                h.out.release = h.out.previous  # it undid its part (or never started)
                if id(h) not in culprits and h.session is not None:
                    h.out.phase = "undone"
                    self.say(h, f"undone: on {h.out.previous or 'nothing'}")
                if h.out.phase != "not started":
                    self.note(h, "failed" if id(h) in culprits else "undone")
        return self._settle(release, outcome, self._failure_code(), error)

    def _switch_back(self, release: str, failed: list[_Host]) -> FleetResult:
        why = self._names(failed, "failed after the switch")
        # A new release that failed on one host is bad everywhere; an existing one that a
        # rollback or activate went to stays as it was on the hosts where it did not fail
        # (a host that failed marked it bad itself, as its own health check says).
        return self._abort_all(release, "switched back", why, bad=self.build is not None,
                               reason=self._which(failed, "failed after the switch"))

    def _interrupted(self, signum: int) -> FleetResult:
        self._not_started(InterruptedBySignal(signum).message)
        for h in self.hosts:
            if h.session is not None and h.done is None:
                h.session.stop_child()
                h.session.send("abort", signal=signum)
        self._pool(self._await_done, self.hosts)
        for h in self.hosts:
            if h.done is not None or h.session is None:
                h.out.release = h.out.previous
                if h.session is not None:
                    h.out.phase = "undone"
                    self.note(h, "undone")
        exc = InterruptedBySignal(signum)
        return self._settle(None, "interrupted", exc.exit_code, exc.message)

    def _settle(self, release: str | None, outcome: str, code: int, error: str | None,
                skew: float | None = None) -> FleetResult:
        """Ask every host that went silent where it ended (it undid its own unfinished work),
        then say whether the fleet is on one release; if not, exactly which host is on what."""
        lost = [h for h in self.hosts if h.session is not None and h.done is None]
        self._pool(self._verify, lost)
        # Hosts whose session never got the lock were not touched: they count for nothing.
        touched = [h for h in self.hosts if h.ready is not None]
        ends = {h.out.release for h in touched}
        unknown = [h for h in touched if h.out.release == _UNKNOWN]
        if len(ends) > 1 or unknown:
            where = "; ".join(f"{h.out.host} on {h.out.release or 'no release'}"
                              if h.ready is not None else f"{h.out.host} unchanged"
                              for h in self.hosts)
            return self._result(release, "mixed", EXIT_MIXED,
                                f"{error + '; ' if error else ''}the fleet is mixed: {where}",
                                skew)
        if error and code and ends and outcome in ("nothing switched", "switched back"):
            (end,) = ends  # what the hosts' own states said, for the fleet as a whole
            error += f"; {outcome}: {_hosts(len(touched))} on {end or 'no release'}"
        return self._result(release, outcome, code, error, skew)

    def _verify(self, h: _Host) -> None:
        """A host whose session ended without a word: ask it again, on a new connection, once
        it has finished undoing (no journal, lock free), which release it serves."""
        from ..remote import _client

        deadline = time.monotonic() + (self.opts.host_timeout or 60.0)
        while True:
            try:
                out = _client.run(h.root, lambda probe: ["status", "--json", "--", h.root.path],
                                  self.settings, lambda line: None, mutating=False)
                st = json.loads(out.stdout)
                if st.get("interrupted") is None and st.get("lock_holder") is None:
                    h.out.release = st.get("current")
                    return
            except (AtomicDeployError, ValueError):
                pass
            if time.monotonic() > deadline:
                h.out.release = _UNKNOWN
                return
            time.sleep(0.5)  # the host is another machine: asking again is the only way

    def _failure_code(self) -> int:
        codes = [h.out.exit_code for h in self.hosts if h.out.exit_code]
        # As on one root: a failed check 4, a lock held 3, bad input or a URL source refused
        # (its bytes not matching --sha256) 2; anything else 1.
        return next((code for code in (4, 3, 2) if code in codes), 1)

    def _result(self, release: str | None, outcome: str, code: int, error: str | None,
                skew: float | None = None) -> FleetResult:
        if error and code and outcome == "nothing changed":
            error += "; nothing changed on any host"
        return FleetResult(release, self.opts.activate, outcome, code, skew=skew, error=error)

    @staticmethod
    def _which(hosts: list[_Host], what: str) -> str:
        """What another host's undo says: the hosts' names only (their errors are on their
        own lines), so a fleet's output does not repeat one error on every host."""
        return f"{', '.join(h.out.host for h in hosts) or 'another host'} {what}"

    @staticmethod
    def _names(hosts: list[_Host], what: str) -> str:
        """``what: HOST, HOST (error); HOST (another error)``: each host's error without the
        state (its own line says it in full), hosts that failed alike named together."""
        why: dict[str, list[str]] = {}
        for h in hosts:
            why.setdefault(h.out.brief or h.out.error or "no answer", []).append(h.out.host)
        return f"{what}: " + "; ".join(f"{', '.join(names)} ({error})"
                                        for error, names in why.items())

    def _close(self) -> None:
        if self.build is not None:
            forget_index(self.build)
        for h in self.hosts:
            if h.session is not None:
                h.session.close()
            if h.conn is not None:
                h.conn.close()
        for h in self.hosts:
            h.out.seconds = round(time.monotonic() - h.started, 3)


def host_line(host: str, line: str) -> str:
    """A line a host's tool wrote (or one said here about the host), prefixed with the host
    in place of the tool's name: ``web1:/srv/app: error: ...``, whoever said it."""
    return f"{host}: {line[len(_TOOL):] if line.startswith(_TOOL) else line}"


_TOOL = "atomic-deploy: "


def _hosts(n: int) -> str:
    return f"{n} host" if n == 1 else f"{n} hosts"


def _took_result(out: HostOutcome, done: dict[str, Any]) -> None:
    """What the host's committed command says it did besides switching (its ``--json``
    object): the releases it pruned, the release it marked bad."""
    try:
        payload = json.loads(str(done.get("stdout") or "null"))
    except ValueError:
        return
    if not isinstance(payload, dict):
        return
    pruned = payload.get("pruned")
    if isinstance(pruned, list):
        out.pruned = [str(p) for p in pruned]
    bad = payload.get("marked_bad")
    out.marked_bad = bad if isinstance(bad, str) else None


def _error_of(done: dict[str, Any]) -> tuple[str, str | None] | None:
    """The error a host's ``done`` carries (its command ran with --json), and the state it
    says the root is in."""
    try:
        payload = json.loads(str(done.get("stdout") or "null"))
    except ValueError:
        return None
    if isinstance(payload, dict) and payload.get("ok") is False:
        state = payload.get("state")
        return str(payload.get("error")), str(state) if state else None
    return None


def with_unchanged(hosts: list[HostOutcome], given: list[str], already: list[str],
                   release: str) -> list[HostOutcome]:
    """A rollback's or activate's hosts, in the order ``given``: those it switched
    (``hosts``), and those left alone because they were already on ``release`` (``already``),
    phase ``unchanged``, so that every host of the command is in its result."""
    left = {text: HostOutcome(text, ok=True, phase="unchanged", release=release,
                              previous=release,
                              note=f"already on {release}; nothing changed here")
            for text in already}
    moved = {h.host: h for h in hosts}
    return [moved.get(text) or left[text] for text in given if text in moved or text in left]


def deploy_fleet(roots: list[tuple[RemoteRoot, str]], build: str | None, argv_for: ArgvFor,
                 settings: SshSettings, emit: Emit, transfer: Transfer,
                 opts: FleetOptions) -> FleetResult:
    """Deploy ``build`` to every root (``build`` None: switch every root to the release its
    command names, as for a fleet's rollback)."""
    if not roots:
        raise ConnectFailed("no hosts", "nothing was changed")
    return Fleet(roots, build, argv_for, settings, emit, transfer, opts).run()

#!/usr/bin/env python3
"""Remote deploys over OpenSSH against rsync over the same ssh, side by side in one run.

One loopback host: a real sshd started here (tests/sshlab.py: its own mount namespace, so its
``/srv`` is its own folder; root and ``unshare`` needed for that, else a plain folder). The
benchmark tree is bench.py's 20,000-file, 224 MB web build and its 1%-changed copy
(benchmarks/datasets.py). Every variant uses the same ssh command and the same ssh options, the
ones atomic-deploy gives its own ssh (``atomic_deploy.remote._ssh.Connection``): BatchMode,
ConnectTimeout, ServerAlive*, LogLevel=ERROR, and one ControlMaster per run in a fresh
ControlPath folder. What each variant runs, all of it timed (local wall time of the whole
command; CPU is this machine's side only, the host's processes are not counted):

  atomic-deploy              ``atomic-deploy deploy BUILD web1:/srv/app --json``: master + probe,
                             (first deploy: upload of the tool), the tool's session on the host,
                             the build hashed here, its unchanged files hard-linked by digest on
                             the host, ``rsync -a --files-from=-`` of the rest into its staging
                             folder (first deploy: ``rsync -a``), seal, switch, commit,
                             ``ssh -O exit``
  rsync -a                   ``ssh -o ControlMaster=yes ... web1 true`` (opens the master), then
                             ``rsync -a -e "ssh ... -o ControlMaster=no" BUILD/ web1:DST/`` into a
                             new folder, then ``ssh -O exit``
  rsync -a --link-dest       the same, with ``--link-dest=<previous copy>`` into a new folder
  (extras, for the breakdown; --no-extras drops them)
  rsync ... --checksum       the peer with ``--checksum`` added, as the tool ran rsync before
                             its transfer by digest
  atomic-deploy --trust-mtime  the tool with rsync's size+mtime check (--link-dest) instead of
                             digests
                             (given with --link-unchanged, which --trust-mtime requires)

Suites:

  full       into an empty destination: a fresh ROOT for the tool (so its first deploy: the
             tool is uploaded too), a removed folder for rsync
  incr       the 1%-changed build over the base one: the tool and the peers alternate between
             the two builds, so every run sends the same 1% (200 files) and links the rest
  nochange   the build that is current deployed again (the goal: <= 1.5 s wall)

All variants of a suite run in alternation, rotated each round (bench.run_suite), with
``sync`` before every timed run; untimed between runs: old releases pruned on the host, old
peer copies removed. Prints medians and ratios to the suite's reference peer::

    sudo .venv/bin/python benchmarks/remote.py                  # 3 rounds, about 4 minutes here
    sudo .venv/bin/python benchmarks/remote.py --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests"), str(REPO / "src")]
import bench  # noqa: E402  (benchmarks/ is not a package)
from bench import Budget, Sample, Variant, rmtree, run_suite, timed_rusage  # noqa: E402

import sshlab  # noqa: E402
from atomic_deploy.remote import parse_root  # noqa: E402
from atomic_deploy.remote._ssh import Connection, SshSettings  # noqa: E402

GOALS = {"full": ("rsync -a", 1.2), "incr": ("rsync -a --link-dest", 1.2)}
NOCHANGE_GOAL_S = 1.5
TRUST_MTIME = ("--link-unchanged", "--trust-mtime")  # the CLI takes the second only with the first


class Peer:
    """rsync over the tool's ssh options and one ControlMaster per run, into new folders under
    ``base`` on the host; remembers the last copy (the next --link-dest) and what it holds."""

    def __init__(self, lab: sshlab.SSHLab, host: sshlab.Host, base: str) -> None:
        self.lab, self.host, self.base = lab, host, base
        self.settings = SshSettings.from_text(lab.ssh_command)
        self.counter = itertools.count(1)
        self.last: str | None = None  # remote path of the newest copy
        self.holds: Path | None = None  # the build it holds

    def command(self, build: Path, dst: str, link_dest: str | None, checksum: bool) -> list[str]:
        conn = Connection(parse_root(f"{self.host.alias}:{dst}"), self.settings)  # type: ignore[arg-type]
        conn._dir = tempfile.mkdtemp(prefix="rbench-ssh-")  # as Connection.connect makes it
        opts = [*self.settings.command, *conn.ssh_options()]
        rsync = ["rsync", "-a", *(["--checksum"] if checksum else []),
                 *([f"--link-dest={link_dest}"] if link_dest else []),
                 "-e", conn.rsh(), f"{build}/", f"{self.host.alias}:{dst}/"]
        steps = [conn.ssh_argv("true", master=True), rsync,
                 [*opts, "-O", "exit", "--", self.host.alias]]
        script = " && ".join(shlex.join(s) for s in steps)
        return ["sh", "-c", f"{script}; s=$?; rm -rf {shlex.quote(conn._dir)}; exit $s"]

    def run(self, build: Path, *, link: bool, checksum: bool = False) -> Sample:
        dst = f"{self.base}/c{next(self.counter)}"
        self.host.path(self.base).mkdir(parents=True, exist_ok=True)  # rsync makes one level
        sample = timed_rusage(self.command(build, dst, self.last if link else None, checksum))
        self.last, self.holds = dst, build
        return sample

    def tidy(self) -> None:
        """Keep only the newest copy (untimed)."""
        top = self.host.path(self.base)
        if top.exists():
            for p in top.iterdir():
                if self.last is None or p.name != Path(self.last).name:
                    rmtree(str(p))


class Deployer:
    """atomic-deploy deploying to ``root`` on the host; remembers which build is current."""

    def __init__(self, host: sshlab.Host, root: str) -> None:
        self.host, self.root = host, root
        self.holds: Path | None = None

    def run(self, build: Path, *flags: str) -> Sample:
        s = timed_rusage([*bench.CLI, "deploy", str(build), self.host.dest(self.root), "--json",
                          *flags])
        self.holds = build
        return s

    def tidy(self) -> None:
        """Prune to the current release and the rollback target (untimed, over ssh)."""
        if self.host.path(self.root).exists():
            subprocess.run([*bench.CLI, "prune", self.host.dest(self.root), "--keep", "2"],
                           env=bench.ENV, check=True, capture_output=True)

    def wipe(self) -> None:
        rmtree(str(self.host.path(self.root)))
        self.holds = None


def other(a: Path, b: Path, holds: Path | None) -> Path:
    return b if holds == a else a


class RemoteBudget(Budget):
    WEIGHTS: ClassVar[dict[str, float]] = {"full": 3.0, "incr": 2.0, "nochange": 1.0}


def suite_full(lab: sshlab.SSHLab, host: sshlab.Host, base: Path, repeats: int,
               budget: Budget, extras: bool) -> dict[str, Any]:
    first = Deployer(host, "/srv/full")
    fresh = Peer(lab, host, "/srv/peer-full")

    def wipe() -> None:
        rmtree(str(host.path(fresh.base)))

    vs = [Variant("rsync -a", lambda: fresh.run(base, link=False), wipe, wipe),
          Variant("atomic-deploy (first deploy)", lambda: first.run(base), first.wipe,
                  first.wipe)]
    if extras:
        vs.insert(1, Variant("rsync -a --checksum", lambda: fresh.run(
            base, link=False, checksum=True), wipe, wipe))
    return run_suite(f"remote full deploy, {base.name}", vs, repeats, budget, "rsync -a")


def suites(lab: sshlab.SSHLab, host: sshlab.Host, sets: dict[str, Path], which: list[str],
           repeats: int, budget: Budget, extras: bool) -> list[dict[str, Any]]:
    base, changed = sets["web"], sets["web-1pct"]
    results: list[dict[str, Any]] = []
    tool = Deployer(host, "/srv/app")  # incr and nochange go on from the same state
    peer = Peer(lab, host, "/srv/peer")

    def ready() -> None:
        """The tool's root and the peer's newest copy hold a build (untimed)."""
        if tool.holds is None:
            tool.wipe()
            tool.run(base)  # also installs the tool on the host
        if peer.last is None:
            rmtree(str(host.path(peer.base)))
            peer.run(base, link=False)

    for i, name in enumerate(which):
        budget.start_suite(name, which[i:])
        if name == "full":
            results.append(suite_full(lab, host, base, repeats, budget, extras))
        elif name == "incr":
            ready()
            vs = [Variant("rsync -a --link-dest",
                          lambda: peer.run(other(base, changed, peer.holds), link=True),
                          peer.tidy, peer.tidy),
                  Variant("atomic-deploy", lambda: tool.run(other(base, changed, tool.holds)),
                          tool.tidy, tool.tidy)]
            if extras:
                vs.insert(1, Variant("rsync -a --checksum --link-dest", lambda: peer.run(
                    other(base, changed, peer.holds), link=True, checksum=True),
                    peer.tidy, peer.tidy))
                vs.append(Variant("atomic-deploy --trust-mtime", lambda: tool.run(
                    other(base, changed, tool.holds), *TRUST_MTIME), tool.tidy, tool.tidy))
            results.append(run_suite(f"remote incremental deploy, {changed.name}", vs, repeats,
                                     budget, "rsync -a --link-dest"))
        elif name == "nochange":
            ready()
            vs = [Variant("rsync -a --link-dest", lambda: peer.run(
                      peer.holds or base, link=True), peer.tidy, peer.tidy),
                  Variant("atomic-deploy", lambda: tool.run(tool.holds or base), tool.tidy,
                          tool.tidy)]
            if extras:
                vs.insert(1, Variant("rsync -a --checksum --link-dest", lambda: peer.run(
                    peer.holds or base, link=True, checksum=True), peer.tidy, peer.tidy))
                vs.append(Variant("atomic-deploy --trust-mtime", lambda: tool.run(
                    tool.holds or base, *TRUST_MTIME), tool.tidy, tool.tidy))
            results.append(run_suite(f"remote no-change deploy, {base.name}", vs, repeats,
                                     budget, "rsync -a --link-dest"))
    return results


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for res in results:
        rows = {r["variant"]: r for r in res["rows"]}
        tool = next(r for n, r in rows.items() if n.startswith("atomic-deploy")
                    and "trust-mtime" not in n)
        if res["title"].startswith("remote full"):
            ref, bound = GOALS["full"]
            lines.append(f"full: {tool['wall_ratio']:.2f}x {ref} (goal <= {bound}x): "
                         + ("met" if tool["wall_ratio"] <= bound else "NOT met"))
        elif res["title"].startswith("remote incremental"):
            ref, bound = GOALS["incr"]
            lines.append(f"incremental: {tool['wall_ratio']:.2f}x {ref} (goal <= {bound}x): "
                         + ("met" if tool["wall_ratio"] <= bound else "NOT met"))
        else:
            lines.append(f"no change: {tool['wall']:.2f} s wall (goal <= {NOCHANGE_GOAL_S} s): "
                         + ("met" if tool["wall"] <= NOCHANGE_GOAL_S else "NOT met"))
    return lines


def main(argv: list[str] | None = None) -> int:
    all_suites = ["full", "incr", "nochange"]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/var/tmp/atomic-deploy-bench",
                   help="data sets (shared with bench.py) and the tool's cache")
    p.add_argument("--suites", default=",".join(all_suites),
                   help=f"comma separated: {','.join(all_suites)}")
    p.add_argument("--repeats", type=int, default=3, help="rounds per suite (default 3)")
    p.add_argument("--quick", action="store_true", help="bench.py's 5,000-file build")
    p.add_argument("--no-extras", action="store_true",
                   help="only the tool and the goals' peers (no --checksum / --trust-mtime rows)")
    p.add_argument("--max-minutes", type=float, default=20,
                   help="stop starting new rounds after this long (default 20)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    args = p.parse_args(argv)
    which = args.suites.split(",")
    unknown = set(which) - set(all_suites)
    if unknown:
        p.error(f"unknown suites: {', '.join(sorted(unknown))}")
    for tool in ("rsync", "ssh", "sshd"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            p.error(f"{tool} is not installed")
    work = Path(args.workdir)
    (work / "scratch").mkdir(parents=True, exist_ok=True)
    subprocess.run([bench.PY, "-m", "compileall", "-q", str(REPO / "src" / "atomic_deploy")],
                   env=bench.ENV, check=False, stdout=subprocess.DEVNULL)
    sets = bench.ensure_data(work, args.quick, False)
    lab = sshlab.SSHLab()
    try:
        host = lab.add_host("web1")
        # The tool's upload is built once (cached), in the work folder, not in a home folder.
        bench.ENV.update(ATOMIC_DEPLOY_SSH=lab.ssh_command,
                         XDG_CACHE_HOME=str(work / "scratch" / "cache"))
        rsync_v = subprocess.run(["rsync", "--version"], capture_output=True, text=True)
        ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
        # What a login there runs (sshd's PATH, not this shell's).
        host_py = lab.ssh(host.alias, "command -v python3; python3 --version").stdout.split()
        print(f"atomic-deploy remote bench: {os.uname().sysname} {os.uname().release}, "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]} here, {' '.join(host_py)} "
              f"on the host; {rsync_v.stdout.splitlines()[0]}; {ssh_v.stderr.strip()}; host "
              f"{'in its own mount namespace' if lab.isolated else 'a plain folder'} on "
              f"{bench.fs_type(host.path())}; load average {os.getloadavg()[0]:.2f}",
              flush=True)
        budget = RemoteBudget(args.max_minutes)
        results = suites(lab, host, sets, which, args.repeats, budget, not args.no_extras)
    finally:
        lab.close()
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if budget.skipped:
        print("skipped for the time limit: " + "; ".join(budget.skipped))
    print("\n".join(verdicts(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(bench.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

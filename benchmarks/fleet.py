#!/usr/bin/env python3
"""Fleet deploys over OpenSSH: atomic-deploy against parallel rsync and Capistrano 3, in one run.

N loopback hosts (default 3, ``--hosts 8`` for eight), each a real sshd in its own mount
namespace with its own ``/srv`` (tests/sshlab.py; root and ``unshare`` needed). The tree is a
10,000-file, 112 MB web build made by benchmarks/datasets.py (``make_web`` with 10,000 files
in 400 folders) and a copy of it with one file changed (``changed_copy``). Three ways to put it
on every host, each timed as a whole from this machine (wall time of the command; CPU and peak
RSS of this machine's side only, the hosts' processes are not counted):

  atomic-deploy     ``atomic-deploy deploy BUILD web1:/srv/app ... webN:/srv/app --json``: every
                    host prepared (the unchanged files hard-linked by digest from its current
                    release, rsync of the rest), then every host switched at once
  parallel rsync    one ``rsync -a`` per host, all at once, each over its own ControlMaster
                    opened first (the ssh options atomic-deploy gives its own ssh), into a new
                    folder; for a one-file change with ``--link-dest`` to that host's previous
                    copy. No switch: it is the transfer-only floor
  Capistrano 3      the real ``cap production deploy`` (Debian's capistrano, SSHKit over net-ssh
                    with the lab's ssh_config, its default parallel runner) from a local bare
                    git repository that every host clones by a file:// URL (the hosts share
                    this machine's filesystem outside /srv); branch ``base`` is the build,
                    branch ``onefile`` the build with one file changed

Suites, every tool in alternation, the order rotated each round, ``sync`` before each run:

  full      every host's folder removed first (untimed): atomic-deploy's first deploy (the
            tool is uploaded too), Capistrano's first deploy (the repository mirrored too),
            rsync into an empty folder
  onefile   every tool alternates between the two builds, so every run changes one file;
            also (unless --no-extras) atomic-deploy with rsync's size+mtime check instead of
            --checksum (``--link-unchanged --trust-mtime``), on the same root, for where the
            time goes

Switch skew: after every deploy of atomic-deploy and Capistrano, the ctime of each host's
``current`` symlink (stat'ed through the host's folder on this machine, lstat), max minus min
over the hosts; both tools replace ``current`` by a rename, which sets its ctime. Extra one-file
deploys are added until each tool has ``--skew-deploys`` (default 10); the worst is reported.
ctime comes from the kernel's coarse clock (one tick: 4 ms at HZ=250) unless fine-grained
timestamps apply, so differences below a tick are not resolved. atomic-deploy's own
``skew_ms`` (the hosts' clocks, same machine here) is reported next to it.

Peak RSS: GNU time's ``%M`` around the deploying command: the largest single process of its
tree (for atomic-deploy the Python process, for Capistrano the Ruby one, for parallel rsync
the largest rsync or ssh).

    sudo nice -n 5 .venv/bin/python benchmarks/fleet.py                 # 3 hosts, 2-4 min here
    sudo nice -n 5 .venv/bin/python benchmarks/fleet.py --hosts 8 --json out.json   # 6-9 min
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests"), str(REPO / "src")]
import bench  # noqa: E402  (benchmarks/ is not a package)
import datasets  # noqa: E402
from bench import Budget, Sample, Variant, rmtree, timed_rusage  # noqa: E402

import sshlab  # noqa: E402
from atomic_deploy.remote import parse_root  # noqa: E402
from atomic_deploy.remote._ssh import Connection, SshSettings  # noqa: E402

FILES, TOTAL_MB, DIRS = 10_000, 112, 400
TOOL, RSYNC, CAP = "atomic-deploy", "parallel rsync -a", "Capistrano 3"
TRUST = "atomic-deploy --trust-mtime"
TRUST_FLAGS = ("--link-unchanged", "--trust-mtime")  # the CLI takes the second with the first
# The goals: (what, measured against, bound)
GOAL_FULL_RSYNC, GOAL_FULL_CAP, GOAL_ONE_CAP, GOAL_SKEW_MS = 1.2, 0.3, 0.1, 10.0

CAPFILE = """\
require "capistrano/setup"
require "capistrano/deploy"
require "capistrano/scm/git"
install_plugin Capistrano::SCM::Git
"""

DEPLOY_RB = """\
set :application, "app"
set :repo_url, "file://{repo}"
set :branch, ENV.fetch("BRANCH")
set :deploy_to, "/srv/cap"
set :tmp_dir, "/srv/cap-tmp"  # per host (its git-ssh wrapper), not this machine's shared /tmp
set :keep_releases, 5
set :pty, false
set :format, :dot
set :log_level, :info
set :ssh_options, {{ config: "{ssh_config}", non_interactive: true }}
"""


# --------------------------------------------------------------------------- data


def ensure_data(work: Path) -> tuple[Path, Path, str]:
    """The 10,000-file build, its one-file-changed copy (made once) and the changed path."""
    base, changed = work / f"web{FILES}", work / f"web{FILES}-1file"
    marker = work / f"web{FILES}.ok"
    if not marker.exists():
        for p in (base, changed):
            rmtree(str(p))
        print(f"building web{FILES} ({FILES} files, {TOTAL_MB} MB) ...", flush=True)
        work.mkdir(parents=True, exist_ok=True)
        datasets.make_web(str(base), files=FILES, total_mb=TOTAL_MB, dirs=DIRS)
        datasets.changed_copy(str(base), str(changed), 0.0)  # max(1, 0): exactly one file
        marker.write_text("ok\n")
    diff = [os.path.relpath(os.path.join(d, f), changed) for d, _ds, fs in os.walk(changed)
            for f in fs if not os.path.islink(os.path.join(d, f))
            and os.lstat(os.path.join(d, f)).st_mtime > datasets.BASE_MTIME + 86400]
    assert len(diff) == 1, diff
    return base, changed, diff[0]


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "gc.auto=0", "-c", "user.name=bench",
                    "-c", "user.email=bench@example.invalid",
                    *args], cwd=cwd, check=True, capture_output=True)


def make_repo(work: Path, base: Path, changed: Path) -> Path:
    """A bare repository: branch ``base`` = the build, ``onefile`` = one file changed; packed,
    as a git server holds it."""
    repo = work / "fleet-repo.git"
    if (repo / "ok").exists():
        return repo
    tree = work / "fleet-repo-work"
    rmtree(str(tree))
    rmtree(str(repo))
    subprocess.run(["cp", "-a", str(base), str(tree)], check=True)
    git(tree, "init", "-q", "-b", "base")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "build")
    git(tree, "checkout", "-q", "-b", "onefile")
    subprocess.run(["rsync", "-a", "--exclude=/.git", f"{changed}/", f"{tree}/"], check=True)
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "one file changed")
    subprocess.run(["git", "clone", "-q", "--bare", "--no-local", str(tree), str(repo)],
                   check=True)
    git(repo, "gc", "-q")
    rmtree(str(tree))
    (repo / "ok").write_text("ok\n")
    return repo


# --------------------------------------------------------------------------- the three tools


def host_ctime_ns(host: sshlab.Host, path: str) -> int:
    return os.lstat(host.path(path)).st_ctime_ns


class Switcher:
    """A tool that switches ``current`` on every host: remembers which build it holds and the
    skew of each deploy (ctime spread of the hosts' ``current``)."""

    root = ""
    name = ""

    def __init__(self, hosts: list[sshlab.Host]) -> None:
        self.hosts = hosts
        self.holds: str | None = None  # "base" or "onefile"
        self.skews_ms: list[float] = []
        self.own_skews_ms: list[float] = []

    def measure(self) -> None:
        times = [host_ctime_ns(h, f"{self.root}/current") for h in self.hosts]
        self.skews_ms.append((max(times) - min(times)) / 1e6)

    def wipe(self) -> None:
        for h in self.hosts:
            rmtree(str(h.path(self.root)))
        self.holds = None

    def other(self) -> str:
        return "onefile" if self.holds == "base" else "base"


class AtomicDeploy(Switcher):
    root, name = "/srv/app", TOOL

    def __init__(self, hosts: list[sshlab.Host], builds: dict[str, Path]) -> None:
        super().__init__(hosts)
        self.builds = builds

    def run(self, which: str, *flags: str) -> Sample:
        s = timed_rusage([*bench.CLI, "deploy", str(self.builds[which]),
                          *(h.dest(self.root) for h in self.hosts), "--json", *flags])
        out = json.loads(s.out)
        assert out["outcome"] == "deployed", out
        self.holds = which
        self.measure()
        self.own_skews_ms.append(float(out["skew_ms"]))
        return s


class Capistrano(Switcher):
    root, name = "/srv/cap", CAP

    def __init__(self, hosts: list[sshlab.Host], lab: sshlab.SSHLab, repo: Path,
                 proj: Path) -> None:
        super().__init__(hosts)
        self.proj = proj
        (proj / "config" / "deploy").mkdir(parents=True, exist_ok=True)
        (proj / "Capfile").write_text(CAPFILE)
        (proj / "config" / "deploy.rb").write_text(
            DEPLOY_RB.format(repo=repo, ssh_config=lab.ssh_config))
        (proj / "config" / "deploy" / "production.rb").write_text("".join(
            f'server "{h.alias}", roles: %w{{app web}}\n' for h in hosts))

    def run(self, which: str) -> Sample:
        cap = shutil.which("cap")
        assert cap is not None
        # Capistrano names a release after the UTC second: never two in one second.
        last = max((p.name for p in self.hosts[0].path(f"{self.root}/releases").glob("*")),
                   default="") if self.hosts[0].path(f"{self.root}/releases").exists() else ""
        while time.strftime("%Y%m%d%H%M%S", time.gmtime()) <= last:
            time.sleep(0.05)
        s = timed_rusage(["env", f"HOME={self.proj}", f"BRANCH={which}", cap, "production",
                          "deploy"], cwd=str(self.proj))
        self.holds = which
        self.measure()
        return s


class ParallelRsync:
    """One ``rsync -a`` per host, concurrently, each over its own ControlMaster (the ssh
    options atomic-deploy uses), into a new folder under /srv/peer."""

    base = "/srv/peer"

    def __init__(self, lab: sshlab.SSHLab, hosts: list[sshlab.Host],
                 builds: dict[str, Path]) -> None:
        self.lab, self.hosts, self.builds = lab, hosts, builds
        self.settings = SshSettings.from_text(lab.ssh_command)
        self.counter = 0
        self.last: str | None = None
        self.holds: str | None = None

    def _one(self, host: sshlab.Host, build: Path, dst: str, link: str | None,
             ctl: str) -> str:
        conn = Connection(parse_root(host.dest(dst)), self.settings)  # type: ignore[arg-type]
        conn._dir = ctl  # as Connection.connect makes it
        rsync = ["rsync", "-a", *([f"--link-dest={link}"] if link else []), "-e", conn.rsh(),
                 f"{build}/", f"{host.alias}:{host.remote_path(dst)}/"]
        steps = [conn.ssh_argv("true", master=True), rsync,
                 [*self.settings.command, *conn.ssh_options(), "-O", "exit", "--", host.alias]]
        return " && ".join(shlex.join(s) for s in steps)

    def run(self, which: str, link: bool) -> Sample:
        self.counter += 1
        dst = f"{self.base}/c{self.counter}"
        ctls = [tempfile.mkdtemp(prefix="fbench-ssh-") for _ in self.hosts]
        for h in self.hosts:
            h.path(self.base).mkdir(parents=True, exist_ok=True)  # rsync makes one level
        jobs = [self._one(h, self.builds[which], dst, self.last if link else None, c)
                for h, c in zip(self.hosts, ctls)]
        script = "\n".join([*(f"( {j} ) & p{i}=$!" for i, j in enumerate(jobs)), "s=0",
                            *(f"wait $p{i} || s=1" for i in range(len(jobs))), "exit $s"])
        try:
            sample = timed_rusage(["sh", "-c", script])
        finally:
            for c in ctls:
                shutil.rmtree(c, ignore_errors=True)
        self.last, self.holds = dst, which
        return sample

    def tidy(self) -> None:
        """Keep only each host's newest copy (untimed)."""
        for h in self.hosts:
            top = h.path(self.base)
            if top.exists():
                for p in top.iterdir():
                    if self.last is None or p.name != Path(self.last).name:
                        rmtree(str(p))

    def wipe(self) -> None:
        for h in self.hosts:
            rmtree(str(h.path(self.base)))
        self.last = self.holds = None

    def other(self) -> str:
        return "onefile" if self.holds == "base" else "base"


# --------------------------------------------------------------------------- checks


def check_hosts(hosts: list[sshlab.Host], current: str, builds: dict[str, Path], which: str,
                changed: str) -> None:
    """Every host serves the build it was given (the changed file, and the file count)."""
    want = (builds[which] / changed).read_bytes()
    for h in hosts:
        top = h.path(current)
        if top.is_symlink():  # Capistrano's is absolute: a path on the host
            target = os.readlink(top)
            top = h.path(target) if target.startswith("/") else top.parent / target
        got = (top / changed).read_bytes()
        assert got == want, f"{h.alias}:{current}/{changed} is not {which}'s"


# --------------------------------------------------------------------------- running


def rounds(title: str, variants: list[Variant], repeats: int, budget: Budget,
           after: Callable[[str], None]) -> int:
    """Round-robin as bench.run_suite; ``after(name)`` checks each run (untimed)."""
    print(f"\n== {title}", flush=True)
    done = 0
    for r in range(repeats):
        if time.monotonic() > budget.deadline and done >= 1:
            budget.skipped.append(f"{title}: {repeats - r} of {repeats} rounds")
            break
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            v.setup()
            bench.sync()
            try:
                s = v.run()
                v.samples.append(s)
                print(f"  {v.name:<18} {s.wall:8.3f} s  (load {os.getloadavg()[0]:.2f})",
                      flush=True)
                after(v.name)
            finally:
                v.cleanup()
        done += 1
    return done


def row(v: Variant) -> dict[str, Any]:
    return {"wall": v.median("wall"), "cpu": v.median("cpu"),
            "peak_mb": max((s.maxrss_kb for s in v.samples), default=0) / 1024,
            "walls": [round(s.wall, 4) for s in v.samples]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=3, help="loopback hosts (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per suite (default 3)")
    p.add_argument("--skew-deploys", type=int, default=10,
                   help="deploys per switching tool whose skew is measured (default 10)")
    p.add_argument("--workdir", default="/var/tmp/atomic-deploy-bench/fleet",
                   help="data set, git repository and the tool's cache")
    p.add_argument("--max-minutes", type=float, default=40,
                   help="stop starting new rounds after this long (default 40)")
    p.add_argument("--no-extras", action="store_true",
                   help=f"no '{TRUST}' row in the one-file suite")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--pull-suite", action="store_true",
                   help="only push against pull: the build folder pushed to every host, "
                        "against every host fetching its tarball from a loopback HTTP server "
                        "(deploy URL --pull)")
    args = p.parse_args(argv)
    if args.pull_suite:
        return pull_suite(args)
    for prog in ("rsync", "ssh", "git", "cap"):
        if shutil.which(prog) is None:
            p.error(f"{prog} is not installed")
    if not sshlab.namespaces_work():
        p.error("needs root and unshare (each host its own /srv)")
    work = Path(args.workdir)
    base, changed, changed_rel = ensure_data(work)
    builds = {"base": base, "onefile": changed}
    repo = make_repo(work, base, changed)
    subprocess.run([bench.PY, "-m", "compileall", "-q", str(REPO / "src" / "atomic_deploy")],
                   env=bench.ENV, check=False, stdout=subprocess.DEVNULL)
    started = time.monotonic()
    load_before = os.getloadavg()
    lab = sshlab.SSHLab()
    proj = Path(tempfile.mkdtemp(prefix="fbench-cap-"))
    budget = Budget(args.max_minutes)
    try:
        hosts = [lab.add_host(f"web{i + 1}") for i in range(args.hosts)]
        bench.ENV.update(ATOMIC_DEPLOY_SSH=lab.ssh_command,
                         XDG_CACHE_HOME=str(work / "cache"))
        versions = {
            "rsync": subprocess.run(["rsync", "--version"], capture_output=True,
                                    text=True).stdout.splitlines()[0],
            "ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
            "cap": subprocess.run(["cap", "--version"], capture_output=True,
                                  text=True).stdout.strip(),
            "git": subprocess.run(["git", "--version"], capture_output=True,
                                  text=True).stdout.strip(),
        }
        nfiles, ndirs, nbytes = datasets.describe(str(base))
        print(f"atomic-deploy fleet bench: {args.hosts} hosts, {nfiles} files / {ndirs} folders "
              f"/ {nbytes / 2**20:.0f} MB; {os.uname().sysname} {os.uname().release}, "
              f"{os.cpu_count()} CPUs; {'; '.join(versions.values())}; load average "
              f"{load_before[0]:.2f}", flush=True)

        tool = AtomicDeploy(hosts, builds)
        cap = Capistrano(hosts, lab, repo, proj)
        peer = ParallelRsync(lab, hosts, builds)

        def check(name: str) -> None:
            if name in (TOOL, TRUST):
                check_hosts(hosts, f"{tool.root}/current", builds, tool.holds or "", changed_rel)
            elif name == CAP:
                check_hosts(hosts, f"{cap.root}/current", builds, cap.holds or "", changed_rel)
            else:
                check_hosts(hosts, peer.last or "", builds, peer.holds or "", changed_rel)

        # full: from nothing, always the base build
        full = [Variant(RSYNC, lambda: peer.run("base", link=False), peer.wipe),
                Variant(TOOL, lambda: tool.run("base"), tool.wipe),
                Variant(CAP, lambda: cap.run("base"), cap.wipe)]
        n_full = rounds(f"full deploy to {args.hosts} hosts", full, args.repeats, budget, check)

        # one file changed: each alternates between the two builds
        one = [Variant(RSYNC, lambda: peer.run(peer.other(), link=True), peer.tidy),
               Variant(TOOL, lambda: tool.run(tool.other())),
               Variant(CAP, lambda: cap.run(cap.other()))]
        if not args.no_extras:
            one.insert(2, Variant(TRUST, lambda: tool.run(tool.other(), *TRUST_FLAGS)))
        n_one = rounds(f"one-file-change deploy to {args.hosts} hosts", one, args.repeats,
                       budget, check)

        # more deploys (one file changed) until each switching tool has --skew-deploys
        print(f"\n== switch skew: one-file deploys until {args.skew_deploys} per tool",
              flush=True)
        while min(len(tool.skews_ms), len(cap.skews_ms)) < args.skew_deploys:
            if time.monotonic() > budget.deadline:
                budget.skipped.append(f"skew: {len(tool.skews_ms)} / {len(cap.skews_ms)} "
                                      f"deploys of {args.skew_deploys}")
                break
            for sw in (tool, cap):
                if len(sw.skews_ms) < args.skew_deploys:
                    bench.sync()
                    sw.run(sw.other())
                    check(sw.name)
        print(f"  {TOOL}: ctime skews ms {[round(x, 2) for x in tool.skews_ms]}; own skew_ms "
              f"{tool.own_skews_ms}\n  {CAP}: ctime skews ms "
              f"{[round(x, 2) for x in cap.skews_ms]}", flush=True)
    finally:
        lab.close()
        shutil.rmtree(proj, ignore_errors=True)
    load_after = os.getloadavg()

    res: dict[str, Any] = {
        "hosts": args.hosts, "files": nfiles, "folders": ndirs, "bytes": nbytes,
        "rounds": {"full": n_full, "onefile": n_one}, "versions": versions,
        "kernel": os.uname().release, "cpus": os.cpu_count(),
        "load_before": load_before, "load_after": load_after,
        "minutes": round((time.monotonic() - started) / 60, 1), "skipped": budget.skipped,
        "tools": {},
    }
    fulls, ones = {v.name: v for v in full}, {v.name: v for v in one}
    for name in (RSYNC, TOOL, CAP):
        res["tools"][name] = {"full": row(fulls[name]), "onefile": row(ones[name])}
    if TRUST in ones:
        res["tools"][TRUST] = {"onefile": row(ones[TRUST])}
    res["tools"][TOOL]["skew_ctime_ms"] = tool.skews_ms
    res["tools"][TOOL]["skew_own_ms"] = tool.own_skews_ms
    res["tools"][CAP]["skew_ctime_ms"] = cap.skews_ms
    t, r, c = (res["tools"][n] for n in (TOOL, RSYNC, CAP))
    res["goals"] = [
        {"goal": f"full <= {GOAL_FULL_RSYNC}x {RSYNC}",
         "value": t["full"]["wall"] / r["full"]["wall"], "bound": GOAL_FULL_RSYNC},
        {"goal": f"full <= {GOAL_FULL_CAP}x {CAP}",
         "value": t["full"]["wall"] / c["full"]["wall"], "bound": GOAL_FULL_CAP},
        {"goal": f"one-file change <= {GOAL_ONE_CAP}x {CAP}",
         "value": t["onefile"]["wall"] / c["onefile"]["wall"], "bound": GOAL_ONE_CAP},
        {"goal": f"switch skew <= {GOAL_SKEW_MS:g} ms, worst of {len(tool.skews_ms)} deploys "
                 "(ctime)", "value": max(tool.skews_ms), "bound": GOAL_SKEW_MS},
    ]
    for g in res["goals"]:
        g["met"] = g["value"] <= g["bound"]
    print(table(res))
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"{res['minutes']} min")
    if budget.skipped:
        print("skipped for the time limit: " + "; ".join(budget.skipped))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def table(res: dict[str, Any]) -> str:
    """The results as a Markdown table, then the goals."""
    tools = res["tools"]
    r, c = tools[RSYNC], tools[CAP]
    lines = [f"\n{res['hosts']} hosts, {res['files']:,} files, {res['bytes'] / 2**20:.0f} MB "
             f"(median of {res['rounds']['full']} / {res['rounds']['onefile']} rounds)\n",
             "| tool | full s | x rsync | x Capistrano | one-file s | x rsync | x Capistrano "
             "| skew ms, worst (median), ctime | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in tools.items():
        if "full" not in t:  # the extra row: one-file only
            lines.append(f"| {name} | - | - | - | {t['onefile']['wall']:.2f} "
                         f"| {t['onefile']['wall'] / r['onefile']['wall']:.2f} "
                         f"| {t['onefile']['wall'] / c['onefile']['wall']:.2f} | (counted above) "
                         f"| {t['onefile']['peak_mb']:.0f} |")
            continue
        sk = t.get("skew_ctime_ms")
        skew = (f"{max(sk):.1f} ({statistics.median(sk):.1f}) of {len(sk)}" if sk else "-")
        if "skew_own_ms" in t:
            skew += f"; own: {max(t['skew_own_ms']):.1f}"
        peak = max(t["full"]["peak_mb"], t["onefile"]["peak_mb"])
        lines.append(
            f"| {name} | {t['full']['wall']:.2f} | {t['full']['wall'] / r['full']['wall']:.2f} "
            f"| {t['full']['wall'] / c['full']['wall']:.2f} | {t['onefile']['wall']:.2f} "
            f"| {t['onefile']['wall'] / r['onefile']['wall']:.2f} "
            f"| {t['onefile']['wall'] / c['onefile']['wall']:.2f} | {skew} | {peak:.0f} |")
    lines.append("")
    lines += [f"- {g['goal']}: {g['value']:.2f}: {'met' if g['met'] else 'NOT met'}"
              for g in res["goals"]]
    return "\n".join(lines)



# --------------------------------------------------------------------------- push against pull

PUSH, PULL = "push (deploy BUILD)", "pull (deploy URL --pull)"


def pull_suite(args: argparse.Namespace) -> int:
    """Full deploys to every host (each host's root wiped first, untimed; the tool already
    installed there): the build folder pushed from here (rsync), against the same build as an
    uncompressed tarball that every host fetches from ``python3 -m http.server`` on loopback,
    checked by sha256 (its CPU and memory are not this machine's deploying side: it stands
    for the artifact store). CPU and peak RSS are the deploying command's only."""
    import hashlib
    import socket

    work = Path(args.workdir)
    base, _changed, changed_rel = ensure_data(work)
    served = work / "pull"
    served.mkdir(exist_ok=True)
    tar = served / "app.tar"
    if not tar.exists():
        subprocess.run(["tar", "-C", str(base), "-cf", str(tar), "."], check=True)
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                             str(port), "--directory", str(served)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/app.tar"
    lab = sshlab.SSHLab()
    budget = Budget(args.max_minutes)
    try:
        hosts = [lab.add_host(f"web{i + 1}") for i in range(args.hosts)]
        bench.ENV.update(ATOMIC_DEPLOY_SSH=lab.ssh_command, XDG_CACHE_HOME=str(work / "cache"))
        for name in ("http_proxy", "HTTP_PROXY"):
            bench.ENV.pop(name, None)
        tool = AtomicDeploy(hosts, {"base": base})
        dests = [h.dest(tool.root) for h in hosts]

        def deploy(*how: str) -> Sample:
            s = timed_rusage([*bench.CLI, "deploy", *how, *dests, "--json"])
            assert json.loads(s.out)["outcome"] == "deployed", s.out
            tool.holds = "base"
            return s

        def wipe() -> None:  # the releases, not the installed tool
            for h in hosts:
                for sub in ("releases", "current"):
                    p = h.path(f"{tool.root}/{sub}")
                    if p.is_symlink():
                        p.unlink()
                    elif p.exists():
                        rmtree(str(p))

        deploy(str(base))  # installs the tool everywhere (untimed)
        variants = [Variant(PUSH, lambda: deploy(str(base)), wipe),
                    Variant(PULL, lambda: deploy(url, "--pull", "--sha256", digest), wipe)]
        n = rounds(f"full deploy to {args.hosts} hosts: push against pull", variants,
                   args.repeats, budget,
                   lambda name: check_hosts(hosts, f"{tool.root}/current", {"base": base},
                                            "base", changed_rel))
    finally:
        lab.close()
        http.terminate()
        http.wait()
    res = {"hosts": args.hosts, "bytes": tar.stat().st_size, "rounds": n,
           "tools": {v.name: row(v) for v in variants}}
    print(f"\n{args.hosts} hosts, a {tar.stat().st_size / 2**20:.0f} MB build (median of {n}):")
    print("| way | wall s | CPU s here | peak RSS here MB |\n| --- | ---: | ---: | ---: |")
    for name, r in res["tools"].items():
        print(f"| {name} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['peak_mb']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

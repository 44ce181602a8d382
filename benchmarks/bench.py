#!/usr/bin/env python3
"""atomic-deploy against cp, rsync and the naive flow, side by side in one run.

Builds the data sets once (cached in --workdir), then runs every variant of a suite in
alternation (round-robin, in a rotated order each round) so that a slow or noisy moment of the
machine hits all variants alike, and prints per variant the median wall time, the median CPU
time (user+system of the process and its children) and the ratio to the suite's reference. Every
timed run starts from the same state: destination removed and the filesystem synced beforehand,
untimed; sources warm in the page cache (a deploy usually follows a build).

Suites (--suites, comma separated; default: all but "scale" in --quick mode):

  full     fresh full deploy of the web build: atomic-deploy (durable and --no-fsync) vs cp -a,
           cp -a && sync, rsync -a, shutil.copytree, the naive cp -r + ln -sfn flow
  fullshm  the same on tmpfs (--tmpfs): where the disk costs nothing, the copy engine's own
           per-file work shows
  incr     incremental deploy of the 1% and 10% changed builds with --link-unchanged vs
           rsync -a --link-dest, cp -al, and atomic-deploy's own full deploy
  jobs     copy_tree with 1, 2, 4, 8 threads on the work folder's filesystem and on tmpfs
  cow      loop-mounted btrfs and XFS (root only): deploy vs cp -a --reflink=auto, shared
           extents checked with FIEMAP
  scale    the 200k-file node_modules build: deploy time and peak memory vs cp -a
  scaleshm the same on tmpfs (--tmpfs)
  releases status/list (text, --json) on a root with 1,000 releases vs python3 -c pass;
           prune 900 vs rm -rf
  startup  status/--version/a one-file deploy vs python3 -c pass, and the biggest imports

    python3 benchmarks/bench.py                       # everything, about 15 minutes here
    python3 benchmarks/bench.py --quick               # smaller data, 2 repeats, under 2 min
    python3 benchmarks/bench.py --suites full,incr --repeats 7 --markdown out.md --chart out.png

The total run time is bounded by --max-minutes: once spent, remaining repeats are skipped
(and said so). Standard library only; the chart needs matplotlib (pip install matplotlib), a
benchmark-only dependency; without it the chart is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import datasets  # noqa: E402  (benchmarks/ is not a package)

PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
ENV.pop("ATOMIC_DEPLOY_FAULT", None)
# Bytecode is compiled once up front (main) and must be used: an installed package has its .pyc
# files, and recompiling every module on every run would be charged to atomic-deploy.
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
CLI = [PY, "-m", "atomic_deploy"]
# The source digest cache of every deploy the benchmark runs (set in main): the incremental
# suite measures it warm (a build folder reused between builds) and cold (a fresh checkout).
DIGEST_CACHE = os.path.join(tempfile.gettempdir(), "atomic-deploy-bench-digests")
PIP_SCRIPT = ("import re, sys\nfrom atomic_deploy._fastcli import run\n"
              "sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\nsys.exit(run())")
ON_LINUX = sys.platform.startswith("linux")
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None

# The library path, run in a child so it is timed like the peers (interpreter start included).
LIB_SNIPPET = r"""
import json, os, sys, time
from atomic_deploy import _copy, _platform
src, dst, jobs, link, fsync = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
os.mkdir(dst, 0o700)
t0 = time.perf_counter()
st = _copy.copy_tree(src, dst, lambda step: None, False, jobs=jobs or None,
                     **({"link_dest": link} if link else {}))
t1 = time.perf_counter()
if fsync == "1":
    _platform.sync_filesystem(dst)
t2 = time.perf_counter()
print(json.dumps({"copy": t1 - t0, "flush": t2 - t1, "linked": st.linked, "cloned": st.cloned,
                  "copied": st.copied, "jobs": st.jobs}))
"""


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    wall: float
    cpu: float
    maxrss_kb: int
    out: str = ""


@dataclass
class Variant:
    name: str
    run: Callable[[], Sample]  # the timed part only
    setup: Callable[[], None] = lambda: None  # untimed, before every run
    cleanup: Callable[[], None] = lambda: None  # untimed, after every run
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str = "wall") -> float:
        vals = [getattr(s, attr) for s in self.samples]
        return statistics.median(vals) if vals else float("nan")


class Budget:
    """The run's time limit, shared out: each suite gets the time left times its weight over the
    weight of the suites still to run, each part of a suite an equal slice of that. A suite
    stops starting rounds once its slice is spent, after at least one round (so every suite
    reports; a run can overshoot by at most one round of the suites after the limit)."""

    WEIGHTS: ClassVar[dict[str, float]] = {
        "full": 3.0, "fullshm": 1.5, "incr": 3.0, "jobs": 2.0, "cow": 1.5, "scale": 3.0,
        "scaleshm": 2.0, "releases": 1.5, "startup": 0.3}

    def __init__(self, minutes: float) -> None:
        self.deadline = time.monotonic() + minutes * 60
        self.suite_deadline = self.deadline
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def start_suite(self, name: str, still_to_run: list[str]) -> None:
        total = sum(self.WEIGHTS[s] for s in still_to_run)
        self.suite_deadline = time.monotonic() + max(0.0, self.left()) * self.WEIGHTS[name] / total

    def part(self, index: int, parts: int) -> None:
        now = time.monotonic()
        self.part_deadline = now + max(0.0, self.suite_deadline - now) / (parts - index)

    part_deadline = float("inf")


def timed_rusage(cmd: list[str], cwd: str | None = None, timeout: float = 600,
                 memory: bool = True) -> Sample:
    """Run ``cmd``: wall time, CPU (user+sys, children included, from wait4) and peak RSS.

    Peak RSS comes from GNU time's %M when it is installed: the kernel's ru_maxrss of a child
    that this process started also counts this process's own memory (inherited up to exec).
    ``memory=False`` runs the command bare, for the start-up suites: GNU time's own exec and
    fork would add the same 3-4 ms to every variant, which pulls every ratio toward 1.
    The wait blocks in wait4 (a timer kills the command at ``timeout``), so the wall time has
    no polling granularity. Output goes to temp files, so nothing blocks on a pipe.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss:
        if GNU_TIME and memory:
            cmd = [GNU_TIME, "-q", "-f", "%M", "-o", rss.name, *cmd]
        prog = shutil.which(cmd[0]) or cmd[0]
        actions = [(os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, err.fileno(), 2)]
        env = dict(ENV)
        if cwd is not None:  # posix_spawn has no cwd on every Python: go through sh
            cmd, prog = ["sh", "-c", 'cd "$0" && exec "$@"', cwd, *cmd], "/bin/sh"
        t0 = time.perf_counter()
        pid = os.posix_spawn(prog, cmd, env, file_actions=actions)
        killed: list[bool] = []

        def kill() -> None:
            killed.append(True)
            os.kill(pid, 9)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        if killed:
            raise RuntimeError(f"timed out after {timeout}s: {' '.join(cmd)}")
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().decode()
        if code != 0:
            raise RuntimeError(f"failed ({code}): {' '.join(cmd)}\n{err.read().decode()[-2000:]}")
        peak = rss.read().strip().splitlines() if memory else []
    return Sample(wall, ru.ru_utime + ru.ru_stime, int(peak[-1]) if peak else 0, text)


def quick(cmd: list[str]) -> Sample:
    """A start-up measurement: the command bare (see timed_rusage), no peak memory."""
    return timed_rusage(cmd, memory=False)


def sync() -> None:
    os.sync()


def rmtree(path: str) -> None:
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--", path], check=True)


def run_suite(title: str, variants: list[Variant], repeats: int, budget: Budget,
              reference: str) -> dict[str, Any]:
    """Round-robin: every round runs every variant once, starting one later each round."""
    print(f"\n== {title}", flush=True)
    done_rounds = 0
    deadline = min(budget.suite_deadline, budget.part_deadline)
    budget.part_deadline = float("inf")
    for r in range(repeats):
        if time.monotonic() > deadline and done_rounds >= 1:
            budget.skipped.append(f"{title}: {repeats - r} of {repeats} rounds")
            break
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            v.setup()
            sync()
            try:
                v.samples.append(v.run())
            finally:
                v.cleanup()
        done_rounds += 1
    return report(title, variants, reference, done_rounds)


def report(title: str, variants: list[Variant], reference: str, rounds: int) -> dict[str, Any]:
    ref = next(v for v in variants if v.name == reference)
    ref_wall, ref_cpu = ref.median("wall"), ref.median("cpu")
    rows = []
    width = max(len(v.name) for v in variants)
    print(f"{'variant':<{width}}  {'wall s':>8}  {'x ref':>6}  {'cpu s':>7}  {'x ref':>6}  "
          f"{'peak MB':>7}   (median of {rounds}; reference: {reference})")
    for v in variants:
        wall, cpu = v.median("wall"), v.median("cpu")
        rss = max((s.maxrss_kb for s in v.samples), default=0) / 1024
        row = {"variant": v.name, "wall": wall, "cpu": cpu, "wall_ratio": wall / ref_wall,
               "cpu_ratio": cpu / ref_cpu if ref_cpu else float("nan"), "peak_mb": rss,
               "walls": [round(s.wall, 4) for s in v.samples]}
        rows.append(row)
        print(f"{v.name:<{width}}  {wall:8.3f}  {row['wall_ratio']:6.2f}  {cpu:7.3f}  "
              f"{row['cpu_ratio']:6.2f}  {rss:7.1f}", flush=True)
    return {"title": title, "reference": reference, "rounds": rounds, "rows": rows}


# --------------------------------------------------------------------------- data sets


def ensure_data(work: Path, quick: bool, need_nm: bool) -> dict[str, Path]:
    """Build (once) the data sets; a marker file records the parameters they were built with."""
    web_files, web_mb, web_dirs = (5_000, 56, 200) if quick else (20_000, 224, 800)
    sets: dict[str, Path] = {}
    name = f"web{web_files}"
    base = work / "data" / name
    marker = work / "data" / f"{name}.ok"
    if not marker.exists():
        for p in (base, work / "data" / f"{name}-1pct", work / "data" / f"{name}-10pct"):
            rmtree(str(p))
        print(f"building {name} ({web_files} files, {web_mb} MB) ...", flush=True)
        base.parent.mkdir(parents=True, exist_ok=True)
        datasets.make_web(str(base), files=web_files, total_mb=web_mb, dirs=web_dirs)
        datasets.changed_copy(str(base), str(work / "data" / f"{name}-1pct"), 0.01)
        datasets.changed_copy(str(base), str(work / "data" / f"{name}-10pct"), 0.10, seed=4)
        marker.write_text("ok\n")
    sets["web"] = base
    sets["web-1pct"] = work / "data" / f"{name}-1pct"
    sets["web-10pct"] = work / "data" / f"{name}-10pct"
    if need_nm:
        nm_files = 20_000 if quick else 200_000
        nm = work / "data" / f"nm{nm_files}"
        nm_marker = work / "data" / f"nm{nm_files}.ok"
        if not nm_marker.exists():
            rmtree(str(nm))
            print(f"building nm{nm_files} ({nm_files} files) ...", flush=True)
            datasets.make_nm(str(nm), files=nm_files, total_mb=nm_files * 3 // 1000)
            nm_marker.write_text("ok\n")
        sets["nm"] = nm
    return sets


# --------------------------------------------------------------------------- variants


def deploy_cmd(src: Path, root: Path, *flags: str) -> list[str]:
    return [*CLI, "deploy", str(src), str(root), "--json", *flags]


def cli_flags_supported() -> set[str]:
    out = subprocess.run([*CLI, "deploy", "--help"], env=ENV, capture_output=True, text=True)
    return {f for f in ("--no-fsync", "--link-unchanged", "--jobs", "--checksum", "--trust-mtime",
                        "--digest", "--no-digest-cache") if f in out.stdout}


def lib_cmd(src: Path, dst: Path, jobs: int = 0, link: str = "", fsync: bool = True) -> list[str]:
    return [PY, "-c", LIB_SNIPPET, str(src), str(dst), str(jobs), link, "1" if fsync else "0"]


def fresh(path: Path) -> Callable[[], None]:
    return lambda: rmtree(str(path))


def on_tmpfs(sets: dict[str, Path], key: str, shm: Path) -> Path:
    """The data set ``key`` copied into the tmpfs (untimed, once per run)."""
    src = shm / "data" / sets[key].name
    if not src.exists():
        src.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(sets[key]), str(src)], check=True)
    return src


def suite_full(sets: dict[str, Path], scratch: Path, repeats: int, budget: Budget,
               flags: set[str], where: str = "") -> dict[str, Any]:
    src = sets["web"]
    dst = scratch / "dst"
    root = scratch / "root"
    clean = fresh(dst)
    clean_root = fresh(root)
    vs = [
        Variant("cp -a", lambda: timed_rusage(["cp", "-a", str(src), str(dst)]), clean, clean),
        Variant("cp -a && sync",
                lambda: timed_rusage(["sh", "-c", f'cp -a "{src}" "{dst}" && sync']), clean, clean),
        Variant("rsync -a", lambda: timed_rusage(["rsync", "-a", f"{src}/", f"{dst}/"]),
                clean, clean),
        Variant("shutil.copytree", lambda: timed_rusage(
            [PY, "-c", "import shutil,sys; shutil.copytree(sys.argv[1], sys.argv[2], symlinks=True)",
             str(src), str(dst)]), clean, clean),
        Variant("naive cp -r + ln -sfn", lambda: timed_rusage(
            ["sh", "-c", f'mkdir -p "{root}/releases" && cp -r "{src}" "{root}/releases/r1" && '
                         f'ln -sfn releases/r1 "{root}/current"']), clean_root, clean_root),
        Variant("atomic-deploy deploy", lambda: timed_rusage(deploy_cmd(src, root)),
                clean_root, clean_root),
        Variant("copy_tree + syncfs (lib)", lambda: timed_rusage(lib_cmd(src, dst)), clean, clean),
        Variant("copy_tree, no flush (lib)", lambda: timed_rusage(lib_cmd(src, dst, fsync=False)),
                clean, clean),
    ]
    if "--no-fsync" in flags:
        vs.append(Variant("atomic-deploy deploy --no-fsync",
                          lambda: timed_rusage(deploy_cmd(src, root, "--no-fsync")),
                          clean_root, clean_root))
    if shutil.which("rsync") is None:
        vs = [v for v in vs if not v.name.startswith("rsync")]
    return run_suite(f"full deploy, {src.name}{where}", vs, repeats, budget, "cp -a")


def suite_incr(sets: dict[str, Path], scratch: Path, repeats: int, budget: Budget,
               flags: set[str]) -> list[dict[str, Any]]:
    results = []
    if "--link-unchanged" not in flags:
        print("\n(incr: this atomic-deploy has no --link-unchanged; library path only)")
    for part, which in enumerate(("web-1pct", "web-10pct")):
        budget.part(part, 2)
        base, changed = sets["web"], sets[which]
        root = scratch / "root"
        rmtree(str(root))
        # The base release as a previous --link-unchanged deploy leaves it: with its files'
        # digests in its manifest (--digest), which the next deploy compares against.
        first = json.loads(subprocess.run(deploy_cmd(base, root, *(
            ["--no-fsync"] if "--no-fsync" in flags else []), *(
            ["--digest"] if "--digest" in flags else [])), env=ENV, check=True,
            capture_output=True, text=True).stdout)
        prev = Path(first["path"])
        dst = scratch / "dst"
        clean = fresh(dst)

        def undo_deploy(root: Path = root, prev: Path = prev) -> None:
            # Put the root back to "base is current", untimed: drop the new release.
            for name in os.listdir(root / "releases"):
                if name != prev.name:
                    rmtree(str(root / "releases" / name))
            tmp = root / "current.bench"
            os.symlink(f"releases/{prev.name}", tmp)
            os.replace(tmp, root / "current")

        vs = [
            Variant("rsync -a --link-dest", lambda c=changed, p=prev, d=dst: timed_rusage(
                ["rsync", "-a", f"--link-dest={p}", f"{c}/", f"{d}/"]), clean, clean),
            Variant("rsync -a --link-dest && sync", lambda c=changed, p=prev, d=dst: timed_rusage(
                ["sh", "-c", f'rsync -a --link-dest="{p}" "{c}/" "{d}/" && sync']), clean, clean),
            Variant("cp -al", lambda p=prev, d=dst: timed_rusage(["cp", "-al", str(p), str(d)]),
                    clean, clean),
            Variant("cp -a (full copy)", lambda c=changed, d=dst: timed_rusage(["cp", "-a", str(c), str(d)]),
                    clean, clean),
            Variant("copy_tree link_dest (lib)", lambda c=changed, p=prev, d=dst: timed_rusage(
                lib_cmd(c, d, link=str(p), fsync=False)), clean, clean),
        ]
        def warm(c: Path = changed, r: Path = root, undo: Callable[[], None] = undo_deploy) -> None:
            # The source digest cache as a previous deploy of this build folder left it (a
            # build folder reused between builds): made once, untimed, if no run made it yet.
            import hashlib

            name = hashlib.blake2b(os.path.realpath(c).encode(), digest_size=16).hexdigest()
            if not os.path.exists(os.path.join(DIGEST_CACHE, name)):
                subprocess.run(deploy_cmd(c, r, "--link-unchanged", "--no-fsync"), env=ENV,
                               check=True, capture_output=True)
                undo()

        def cold() -> None:  # a fresh checkout, or no cache: every file of the build is read
            rmtree(DIGEST_CACHE)

        if "--link-unchanged" in flags:
            vs += [
                Variant("atomic-deploy --link-unchanged", lambda c=changed, r=root: timed_rusage(
                    deploy_cmd(c, r, "--link-unchanged")), setup=warm, cleanup=undo_deploy),
                Variant("atomic-deploy --link-unchanged --no-fsync",
                        lambda c=changed, r=root: timed_rusage(
                            deploy_cmd(c, r, "--link-unchanged", "--no-fsync")),
                        cleanup=undo_deploy),
                *([Variant("atomic-deploy --link-unchanged, cold digest cache",
                           lambda c=changed, r=root: timed_rusage(
                               deploy_cmd(c, r, "--link-unchanged")),
                           setup=cold, cleanup=undo_deploy)]
                  if "--no-digest-cache" in flags else []),
                Variant("atomic-deploy --link-unchanged --checksum",
                        lambda c=changed, r=root: timed_rusage(
                            deploy_cmd(c, r, "--link-unchanged", "--checksum", "--no-fsync")),
                        cleanup=undo_deploy),
            ]
        if "--trust-mtime" in flags:  # the size+mtime check alone (the default before 0.x)
            vs += [
                Variant("atomic-deploy --link-unchanged --trust-mtime",
                        lambda c=changed, r=root: timed_rusage(
                            deploy_cmd(c, r, "--link-unchanged", "--trust-mtime")),
                        cleanup=undo_deploy),
            ]
        if "--link-unchanged" in flags:
            vs += [
                Variant("atomic-deploy full", lambda c=changed, r=root: timed_rusage(
                    deploy_cmd(c, r)), cleanup=undo_deploy),
            ]
        results.append(run_suite(f"incremental deploy, {changed.name}", vs, repeats, budget,
                                 "rsync -a --link-dest"))
        rmtree(str(root))
    return results


def suite_jobs(sets: dict[str, Path], scratch: Path, repeats: int, budget: Budget,
               shm: Path | None) -> list[dict[str, Any]]:
    results = []
    places = [("work folder", scratch, sets["web"])]
    if shm is not None:
        places.append(("tmpfs", shm, shm / "src"))
    for part, (label, where, src) in enumerate(places):
        budget.part(part, len(places))
        if label == "tmpfs" and not src.exists():
            subprocess.run(["cp", "-a", str(sets["web"]), str(src)], check=True)
        dst = where / "dst"
        clean = fresh(dst)
        vs = [Variant("cp -a", lambda s=src, d=dst: timed_rusage(["cp", "-a", str(s), str(d)]),
                      clean, clean)]
        for n in (1, 2, 4, 0):
            vs.append(Variant(f"copy_tree jobs={n or 'auto'}", lambda s=src, n=n, d=dst:
                              timed_rusage(lib_cmd(s, d, jobs=n, fsync=False)), clean, clean))
        results.append(run_suite(f"threads, {label} ({fs_type(where)})", vs, repeats, budget,
                                 "cp -a"))
    return results


def fs_type(path: Path) -> str:
    """The filesystem type of ``path`` from /proc/mounts (stat -f calls ext4 "ext2/ext3")."""
    real, best, kind = os.path.realpath(path), "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                mnt = fields[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, fields[2]
    except OSError:
        out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
        kind = out.stdout.strip() or "?"
    return kind


# --------------------------------------------------------------------------- copy-on-write


def shared_fraction(path: Path) -> float:
    """Fraction of the bytes of regular files under ``path`` in extents FIEMAP marks shared."""
    import array
    import fcntl
    import struct

    fs_ioc_fiemap = 0xC020660B
    shared_flag = 0x2000
    total = shared = 0
    for d, _ds, fs in os.walk(path):
        for f in fs:
            p = os.path.join(d, f)
            if os.path.islink(p):
                continue
            size = os.path.getsize(p)
            if not size:
                continue
            total += size
            count = 64
            hdr = struct.pack("=QQLLLL", 0, 2**64 - 1, 1, 0, count, 0)  # FIEMAP_FLAG_SYNC
            buf = array.array("B", hdr + b"\0" * (56 * count))
            with open(p, "rb") as fh:
                fcntl.ioctl(fh.fileno(), fs_ioc_fiemap, buf, True)
            mapped = struct.unpack_from("=L", buf, 20)[0]
            for i in range(mapped):
                _lo, _ph, length, _r1, _r2, flags = struct.unpack_from("=QQQQQL", buf, 32 + 56 * i)
                if flags & shared_flag:
                    shared += length
    return min(1.0, shared / total) if total else 0.0


class LoopFs:
    def __init__(self, kind: str, image: Path, mnt: Path, size_mb: int) -> None:
        self.kind, self.image, self.mnt, self.size_mb = kind, image, mnt, size_mb

    def __enter__(self) -> LoopFs:
        self.image.unlink(missing_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mb * 1024 * 1024)
        mkfs = ["mkfs.btrfs", "-q", "-f", str(self.image)] if self.kind == "btrfs" else \
            ["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(self.image)]
        subprocess.run(mkfs, check=True, capture_output=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mnt)], check=True,
                       capture_output=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mnt)], check=False, capture_output=True)
        self.image.unlink(missing_ok=True)


def suite_cow(sets: dict[str, Path], scratch: Path, repeats: int, budget: Budget,
              flags: set[str]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    if os.geteuid() != 0 or not ON_LINUX:
        print("\n(cow: needs root on Linux for loop mounts; skipped)")
        return results
    for part, (kind, tool) in enumerate((("btrfs", "mkfs.btrfs"), ("xfs", "mkfs.xfs"))):
        budget.part(part, 2)
        if shutil.which(tool) is None:
            print(f"\n(cow: {tool} not installed; apt-get install btrfs-progs xfsprogs)")
            continue
        src_mb = sum(f.stat().st_size for f in sets["web"].rglob("*") if f.is_file()) // 2**20
        with LoopFs(kind, scratch / f"{kind}.img", scratch / f"mnt-{kind}",
                    max(1024, src_mb * 3 + 600)) as fs:
            src = fs.mnt / "build"
            subprocess.run(["cp", "-a", str(sets["web"]), str(src)], check=True)
            sync()
            dst, root = fs.mnt / "dst", fs.mnt / "root"
            clean, clean_root = fresh(dst), fresh(root)
            vs = [
                Variant("cp -a --reflink=auto", lambda s=src, d=dst: timed_rusage(
                    ["cp", "-a", "--reflink=auto", str(s), str(d)]), clean, clean),
                Variant("cp -a --reflink=auto && sync", lambda s=src, d=dst: timed_rusage(
                    ["sh", "-c", f'cp -a --reflink=auto "{s}" "{d}" && sync']), clean, clean),
                Variant("copy_tree (lib)", lambda s=src, d=dst: timed_rusage(
                    lib_cmd(s, d, fsync=False)), clean, clean),
                Variant("atomic-deploy deploy", lambda s=src, r=root: timed_rusage(
                    deploy_cmd(s, r)), clean_root, clean_root),
            ]
            if "--no-fsync" in flags:
                vs.append(Variant("atomic-deploy deploy --no-fsync", lambda s=src, r=root:
                                  timed_rusage(deploy_cmd(s, r, "--no-fsync")),
                                  clean_root, clean_root))
            # The same deploy with every file copied by the calling process (no worker
            # processes): what the worker processes gain, within the same run.
            vs.append(Variant("atomic-deploy deploy, in-process copy", lambda s=src, r=root:
                              timed_rusage(["env", "ATOMIC_DEPLOY_COPY_PROCESSES=0",
                                            *deploy_cmd(s, r)]), clean_root, clean_root))
            res = run_suite(f"copy-on-write, {kind} (loop)", vs, repeats, budget,
                            "cp -a --reflink=auto")
            # Shared extents, checked on a fresh deploy.
            out = json.loads(subprocess.run(deploy_cmd(src, root), env=ENV, check=True,
                                            capture_output=True, text=True).stdout)
            res["shared_fraction"] = shared_fraction(Path(out["path"]))
            print(f"shared extents in the deployed release: {res['shared_fraction']:.1%}")
            rmtree(str(root))
            results.append(res)
    return results


# --------------------------------------------------------------------------- scale


def suite_scale(sets: dict[str, Path], scratch: Path, repeats: int, budget: Budget,
                flags: set[str], where: str = "") -> dict[str, Any]:
    src = sets["nm"]
    dst, root = scratch / "dst", scratch / "root"
    clean, clean_root = fresh(dst), fresh(root)
    nf = ["--no-fsync"] if "--no-fsync" in flags else []
    vs = [
        Variant("cp -a", lambda: timed_rusage(["cp", "-a", str(src), str(dst)], timeout=1800),
                clean, clean),
        Variant("atomic-deploy deploy" + (" --no-fsync" if nf else ""),
                lambda: timed_rusage(deploy_cmd(src, root, *nf), timeout=1800),
                clean_root, clean_root),
        Variant("python3 -c pass", lambda: timed_rusage([PY, "-c", "pass"])),
    ]
    return run_suite(f"scale, {src.name}{where} (peak memory)", vs, repeats, budget, "cp -a")


def make_many_releases(root: Path, n: int) -> None:
    """A root with ``n`` small releases, made through the library (not timed)."""
    sys.path.insert(0, str(REPO / "src"))
    import atomic_deploy

    build = root.parent / "tiny-build"
    rmtree(str(build))
    for i in range(4):
        (build / f"d{i}").mkdir(parents=True)
        for j in range(5):
            (build / f"d{i}" / f"f{j}.txt").write_text(f"{i} {j}\n")
    for _ in range(n):
        try:  # keep="all": deploys prune to 5 releases by default
            atomic_deploy.deploy(str(build), str(root), fsync=False, keep="all")
        except TypeError:  # a version without the fsync or keep option
            atomic_deploy.deploy(str(build), str(root))


def suite_releases(scratch: Path, repeats: int, budget: Budget,
                   count: int = 1000) -> list[dict[str, Any]]:
    template = scratch / f"many-template-{count}"
    if not (template / ".atomic-deploy").exists() or len(
            os.listdir(template / "releases")) < count:
        rmtree(str(template))
        print(f"making a root with {count:,} releases ...", flush=True)
        make_many_releases(template, count)
    vs = [
        Variant("python3 -c pass", lambda: quick([PY, "-c", "pass"])),
        Variant("atomic-deploy status", lambda: quick([*CLI, "status", str(template)])),
        Variant("atomic-deploy list", lambda: quick([*CLI, "list", str(template)])),
        Variant("atomic-deploy status --json",
                lambda: quick([*CLI, "status", str(template), "--json"])),
        Variant("atomic-deploy list --json",
                lambda: quick([*CLI, "list", str(template), "--json"])),
    ]
    budget.part(0, 3)  # status/list are quick; prune (and its copies) gets the rest
    results = [run_suite(f"{count:,} releases: status and list", vs, repeats, budget,
                         "python3 -c pass")]
    work = scratch / "many"
    names = sorted(os.listdir(template / "releases"))
    keep = count // 10
    victims = names[:count - keep]

    def copy_root() -> None:
        rmtree(str(work))
        subprocess.run(["cp", "-a", str(template), str(work)], check=True)

    vs = [
        Variant(f"rm -rf ({len(victims)} folders)", lambda: timed_rusage(
            ["rm", "-rf", *[str(work / "releases" / n) for n in victims]]), copy_root),
        Variant(f"atomic-deploy prune --keep {keep}", lambda: timed_rusage(
            [*CLI, "prune", str(work), "--keep", str(keep)]), copy_root),
    ]
    budget.part(0, 1)
    results.append(run_suite(f"prune {len(victims)} of {count:,} releases", vs, repeats, budget,
                             f"rm -rf ({len(victims)} folders)"))
    rmtree(str(work))
    return results


def suite_startup(scratch: Path, repeats: int, budget: Budget) -> dict[str, Any]:
    root = scratch / "startup-root"
    if not root.exists():
        make_many_releases(root, 3)
    # The everyday deploy: a one-file build into a root that has a previous release and keeps
    # five (so each run prunes one), durable, on the work folder's filesystem.
    one, deploy_root = scratch / "one-file-build", scratch / "one-file-root"
    one.mkdir(exist_ok=True)
    (one / "index.html").write_text("hello\n")
    rmtree(str(deploy_root))
    subprocess.run([*CLI, "deploy", str(one), str(deploy_root), "-q"], env=ENV, check=True)
    vs = [
        Variant("atomic-deploy deploy (one file)",
                lambda: quick([*CLI, "deploy", str(one), str(deploy_root)])),
        Variant("python3 -c pass", lambda: quick([PY, "-c", "pass"])),
        Variant("python3 -S -c pass", lambda: quick([PY, "-S", "-c", "pass"])),
        Variant("atomic-deploy --version", lambda: quick([*CLI, "--version"])),
        Variant("atomic-deploy status", lambda: quick([*CLI, "status", str(root)])),
        # What pip's `atomic-deploy` script runs: its wrapper imports re before our code.
        Variant("atomic-deploy status (pip's script)",
                lambda: quick([PY, "-c", PIP_SCRIPT, "status", str(root)])),
        Variant("import atomic_deploy", lambda: quick([PY, "-c", "import atomic_deploy"])),
    ]
    res = run_suite("start-up", vs, max(repeats, 10), budget, "python3 -c pass")
    res["imports"] = biggest_imports([*CLI, "status", str(root)])
    print("biggest imports of `status` (cumulative, microseconds):")
    for us, name in res["imports"][:12]:
        print(f"  {us:8d}  {name}")
    res["deploy_imports"] = biggest_imports([*CLI, "deploy", str(one), str(deploy_root)])
    print("biggest imports of a one-file deploy (cumulative, microseconds):")
    for us, name in res["deploy_imports"][:12]:
        print(f"  {us:8d}  {name}")
    return res


def biggest_imports(cmd: list[str]) -> list[tuple[int, str]]:
    out = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=ENV, capture_output=True,
                         text=True)
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cum, name = (x.strip() for x in line[len("import time:"):].split("|"))
        rows.append((int(cum), name))
    return sorted(rows, reverse=True)


# --------------------------------------------------------------------------- output


def markdown(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        lines.append(f"\n**{res['title']}** (median of {res['rounds']}; ratio to "
                     f"`{res['reference']}`)\n")
        lines.append("| variant | wall s | x ref | CPU s | x ref | peak MB |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for r in res["rows"]:
            lines.append(f"| {r['variant']} | {r['wall']:.3f} | {r['wall_ratio']:.2f} | "
                         f"{r['cpu']:.3f} | {r['cpu_ratio']:.2f} | {r['peak_mb']:.0f} |")
        if "shared_fraction" in res:
            lines.append(f"\nShared extents in the deployed release: "
                         f"{res['shared_fraction']:.1%}.")
    return "\n".join(lines) + "\n"


def chart(results: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: chart skipped; pip install matplotlib)")
        return
    shown = [r for r in results if len(r["rows"]) > 1]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.2 + 0.42 * sum(
        len(r["rows"]) for r in shown)), squeeze=False)
    for ax, res in zip(axes[:, 0], shown):
        names = [r["variant"] for r in res["rows"]][::-1]
        ratios = [r["wall_ratio"] for r in res["rows"]][::-1]
        colors = ["#d62728" if any(k in n for k in ("atomic-deploy", "atomic_deploy", "copy_tree"))
                  else "#7f7f7f" for n in names]
        ax.barh(names, ratios, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        for i, v in enumerate(ratios):
            ax.text(v, i, f" {v:.2f}x", va="center", fontsize=8)
        ax.set_title(f"{res['title']} (wall time / {res['reference']})", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"chart written to {path}")


def main(argv: list[str] | None = None) -> int:
    all_suites = ["full", "fullshm", "incr", "jobs", "cow", "scale", "scaleshm", "releases",
                  "startup"]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/var/tmp/atomic-deploy-bench",
                   help="data sets and scratch space; on the filesystem to measure")
    p.add_argument("--suites", default=None, help=f"comma separated: {','.join(all_suites)}")
    p.add_argument("--repeats", type=int, default=None, help="rounds per suite (default 3; 2 quick)")
    p.add_argument("--quick", action="store_true",
                   help="5,000-file web build, 20,000-file node_modules, 2 rounds")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new rounds after this long (default 13; 1.6 quick)")
    p.add_argument("--tmpfs", default="/dev/shm",
                   help="a tmpfs for the threads, fullshm and scaleshm suites ('' skips them)")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    p.add_argument("--chart", metavar="PNG", help="write a bar chart (needs matplotlib)")
    p.add_argument("--render", metavar="JSON", nargs="+",
                   help="run nothing: redo --markdown/--chart from saved --json results (later "
                        "files replace suites of the same title)")
    args = p.parse_args(argv)
    if args.render:
        merged: dict[str, dict[str, Any]] = {}
        for path in args.render:
            for res in json.loads(Path(path).read_text()):
                merged[res["title"]] = res
        results = list(merged.values())
        if args.markdown:
            Path(args.markdown).write_text(markdown(results))
        if args.chart:
            chart(results, args.chart)
        return 0
    suites = args.suites.split(",") if args.suites else (
        [s for s in all_suites if s not in ("scale", "scaleshm")] if args.quick else all_suites)
    unknown = set(suites) - set(all_suites)
    if unknown:
        p.error(f"unknown suites: {', '.join(sorted(unknown))}")
    repeats = args.repeats or (2 if args.quick else 3)
    budget = Budget(args.max_minutes if args.max_minutes else (1.6 if args.quick else 13))
    work = Path(args.workdir).resolve()
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    for name in ("json", "markdown", "chart"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    # `python -c` and `-m` search the current folder first on every import: every variant
    # runs from the same small folder, not from wherever this script was started.
    os.chdir(scratch)
    global DIGEST_CACHE
    DIGEST_CACHE = str(scratch / "digest-cache")  # never the user's own
    ENV["ATOMIC_DEPLOY_DIGEST_CACHE"] = DIGEST_CACHE
    for leftover in ("dst", "root", "many"):
        rmtree(str(scratch / leftover))
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "src" / "atomic_deploy")], env=ENV,
                   check=False, stdout=subprocess.DEVNULL)
    flags = cli_flags_supported()
    print(f"atomic-deploy bench: {os.uname().sysname} {os.uname().release}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, work folder "
          f"{work} ({fs_type(work)}); load average {os.getloadavg()[0]:.2f}")
    sets = ensure_data(work, args.quick, "scale" in suites or "scaleshm" in suites)
    shm: Path | None = None
    if args.tmpfs and {"jobs", "fullshm", "scaleshm"} & set(suites) and os.path.isdir(args.tmpfs):
        shm = Path(tempfile.mkdtemp(prefix="adbench-", dir=args.tmpfs))
    results: list[dict[str, Any]] = []
    try:
        for i, s in enumerate(suites):
            budget.start_suite(s, suites[i:])
            if s == "full":
                results.append(suite_full(sets, scratch, repeats, budget, flags))
            elif s == "incr":
                results += suite_incr(sets, scratch, repeats, budget, flags)
            elif s == "jobs":
                results += suite_jobs(sets, scratch, repeats, budget, shm)
            elif s == "cow":
                results += suite_cow(sets, scratch, repeats, budget, flags)
            elif s == "scale":
                results.append(suite_scale(sets, scratch, max(1, repeats // 2), budget, flags))
            elif s in ("fullshm", "scaleshm") and shm is None:
                print(f"\n({s}: no tmpfs at {args.tmpfs!r}; skipped)")
            elif s == "fullshm" and shm is not None:
                results.append(suite_full({"web": on_tmpfs(sets, "web", shm)}, shm, repeats,
                                          budget, flags, ", tmpfs"))
            elif s == "scaleshm" and shm is not None:
                results.append(suite_scale({"nm": on_tmpfs(sets, "nm", shm)}, shm,
                                           max(1, repeats // 2), budget, flags, ", tmpfs"))
            elif s == "releases":
                results += suite_releases(scratch, repeats, budget, 200 if args.quick else 1000)
            elif s == "startup":
                results.append(suite_startup(scratch, repeats, budget))
    finally:
        if shm is not None:
            rmtree(str(shm))
        for leftover in ("dst", "root", "many"):
            rmtree(str(scratch / leftover))
    if budget.skipped:
        print("\nskipped for the time limit: " + "; ".join(budget.skipped))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(results))
    if args.chart:
        chart(results, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""HTTP errors seen by clients while `current` is being switched under load.

Starts a private nginx on 127.0.0.1 (a free high port; its own config, pid, logs and temp paths
in a temporary folder; never the system service) whose document root is `ROOT/current`, and
drives it with wrk for a fixed time per mode while a switcher flips `current` between two small
sites A and B as fast as it can:

  naive          unlink(current) + symlink(target, current) in a loop: what `ln -sfn` does on
                 macOS, the BSDs and busybox. `current` is missing for a moment on every switch.
  ln             this system's `ln -sfn` as a subprocess in a loop. GNU coreutils >= 9.0 replaces
                 the link with a temporary link + rename(2); older versions unlink first. A
                 separate lstat probe (see --probe-seconds) reports whether it turned out atomic.
  atomic-deploy  real `atomic-deploy deploy --keep 5` CLI runs of builds A and B, alternating.

For each mode it reports requests, non-2xx responses, wrk socket errors and switches (deploys)
done, plus which site answered (proof that nginx followed the switches) and responses whose body
was neither site.

Only 127.0.0.1 is ever contacted. Standard library only (Python 3.9+); needs the `nginx` and `wrk`
programs (Debian/Ubuntu: `apt-get install -y nginx wrk`, which the script runs itself when root).

    python3 benchmarks/http_under_deploy.py [--seconds 5] [--connections 32]
                                            [--modes naive,ln,atomic-deploy] [--json]

Exit codes: 0 if the atomic-deploy mode saw exactly 0 non-2xx responses and 0 socket errors (with
at least one request served and one deploy done, and no failed deploy); 1 otherwise (also on the
hard timeout, or if a mode could not run); 2 if nginx or wrk is missing and cannot be installed,
or on a usage error; 130 on Ctrl-C. Errors in the naive mode are expected and do not affect it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

MODES = ("naive", "ln", "atomic-deploy")
HOST = "127.0.0.1"  # the only address this script ever sends traffic to
WRK_THREADS = 2
MARKERS = {"A": "ADBENCH-SITE-A", "B": "ADBENCH-SITE-B"}
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
KEEP = 5

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_MISSING = 2
EXIT_INTERRUPTED = 130


class HardTimeout(Exception):
    """The whole benchmark ran past --timeout."""


class BenchError(Exception):
    """A mode could not be run (nginx did not start, wrk output unreadable, ...)."""


@dataclass
class ProbeResult:
    """A tight os.stat() loop on current/index.html while a switcher runs (no HTTP)."""

    switcher: str
    seconds: float
    probes: int = 0
    misses: int = 0
    switches: int = 0


@dataclass
class ModeResult:
    mode: str
    seconds: int
    connections: int
    requests: int = 0
    non_2xx: int = 0
    non_2xx_or_3xx_wrk: int = 0  # wrk's own "Non-2xx or 3xx responses" line (status > 399)
    socket_errors: int = 0
    socket_errors_detail: dict[str, int] = field(default_factory=dict)
    status_counts: dict[str, int] = field(default_factory=dict)
    served_a: int = 0
    served_b: int = 0
    bad_body: int = 0
    requests_per_sec: float = 0.0
    switches: int = 0
    switch_failures: int = 0
    switch_failure_sample: str = ""
    switcher_seconds: float = 0.0
    releases_left: int | None = None
    ln_atomic: bool | None = None
    probe: ProbeResult | None = None
    probe_control: ProbeResult | None = None
    error: str = ""


# --------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[http_under_deploy] {msg}", file=sys.stderr, flush=True)


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def first_line(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    out = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return out[0].strip() if out else "unknown"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def kill_group(proc: subprocess.Popen[Any] | None, first: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Stop a child started with start_new_session=True, and everything in its process group."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # The group may outlive its leader (nginx workers): make sure it is gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


# --------------------------------------------------------------------------------------------
# tools


def ensure_tools() -> dict[str, str] | None:
    """Paths of nginx, wrk and ln; installs nginx and wrk with apt-get when missing and root."""
    missing = [name for name in ("nginx", "wrk") if which(name) is None]
    if missing and os.geteuid() == 0 and which("apt-get"):
        log(f"missing {', '.join(missing)}: running apt-get install -y nginx wrk")
        log("note: on some systems installing the nginx package also starts the system nginx "
            "service; this benchmark neither uses nor touches it")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

        def apt(*cmd: str) -> int:
            # apt's chatter goes to stderr, so that --json output stays one JSON object
            return subprocess.run(["apt-get", *cmd], env=env, stdout=sys.stderr, timeout=900,
                                  check=False).returncode

        try:
            if apt("install", "-y", "nginx", "wrk") != 0:
                log("apt-get install failed; running apt-get update and retrying once")
                apt("update")
                apt("install", "-y", "nginx", "wrk")
        except (OSError, subprocess.TimeoutExpired) as exc:
            log(f"apt-get failed: {exc}")
        missing = [name for name in ("nginx", "wrk") if which(name) is None]
    if missing:
        print(
            f"error: this benchmark needs {' and '.join(missing)} on PATH (or in /usr/sbin).\n"
            "  Debian/Ubuntu:  sudo apt-get install -y nginx wrk\n"
            "  Fedora:         sudo dnf install -y nginx wrk\n"
            "  macOS:          brew install nginx wrk\n"
            "(run this script as root on Debian/Ubuntu and it installs them itself)",
            file=sys.stderr,
        )
        return None
    ln = which("ln")
    if ln is None:
        print("error: `ln` not found on PATH", file=sys.stderr)
        return None
    return {"nginx": str(which("nginx")), "wrk": str(which("wrk")), "ln": ln}


def atomic_deploy_command(given: str) -> list[str]:
    """--atomic-deploy, else the installed CLI next to this Python (a virtualenv), PATH, -m."""
    if given:
        return shlex.split(given)
    beside = Path(sys.executable).parent / "atomic-deploy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    on_path = shutil.which("atomic-deploy")
    if on_path:
        return [on_path]
    return [sys.executable, "-m", "atomic_deploy"]


def machine_info(tools: dict[str, str], ad_cmd: list[str]) -> dict[str, Any]:
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return {
        "nproc": nproc,
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\""]),
        "python": platform.python_version(),
        "nginx": first_line([tools["nginx"], "-v"]),
        "wrk": first_line([tools["wrk"], "-v"]),
        "ln": first_line([tools["ln"], "--version"]),
        "atomic_deploy": first_line([*ad_cmd, "--version"]),
        "atomic_deploy_cmd": " ".join(ad_cmd),
        "repo_commit": repo_commit(),
    }


def repo_commit() -> str:
    """The checkout this script sits in: short commit, `-dirty` with uncommitted tracked changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


# --------------------------------------------------------------------------------------------
# sites, nginx, wrk


def write_site(path: Path, name: str) -> None:
    marker = MARKERS[name]
    (path / "assets").mkdir(parents=True)
    (path / "index.html").write_text(textwrap.dedent(f"""\
        <!doctype html>
        <html lang="en">
        <head>
          <meta charset="utf-8">
          <title>Site {name}</title>
          <link rel="stylesheet" href="assets/style.css">
          <script src="assets/app.js" defer></script>
        </head>
        <body>
          <img src="assets/logo.svg" alt="logo">
          <h1>Site {name}</h1>
          <p>{marker}</p>
        </body>
        </html>
        """))
    color = "#2a7" if name == "A" else "#a27"
    (path / "assets" / "style.css").write_text(f"body {{ font-family: sans-serif; color: {color}; }}\n")
    (path / "assets" / "app.js").write_text(f"document.title = 'Site {name} loaded';\n")
    (path / "assets" / "logo.svg").write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">'
        f'<rect width="16" height="16" fill="{color}"/></svg>\n')
    for p in [path, path / "assets"]:
        p.chmod(0o755)
    for p in path.rglob("*"):
        if p.is_file():
            p.chmod(0o644)


NGINX_CONF = """\
# private benchmark instance; started by benchmarks/http_under_deploy.py
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{
    worker_connections 1024;
}}

http {{
    types {{
        text/html html;
        text/css css;
        application/javascript js;
        image/svg+xml svg;
    }}
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;

    # Resolve ROOT/current afresh on every request: no descriptor/stat cache, symlinks allowed.
    open_file_cache off;
    disable_symlinks off;
    sendfile on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    server_tokens off;

    server {{
        listen {host}:{port};
        server_name localhost;
        root {root}/current;
        location / {{
        }}
    }}
}}
"""


def nginx_supports_e(nginx: str) -> bool:
    try:
        proc = subprocess.run([nginx, "-h"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(r"^\s*-e\s", proc.stdout + proc.stderr, re.MULTILINE) is not None


def start_nginx(nginx: str, prefix: Path, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start nginx in the foreground on HOST:<free port>; returns (process, port) once it serves."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    # As root, nginx's workers run as the compiled-in unprivileged user; they only need to read
    # the (0755/0644) sites, so name that user explicitly only when it exists.
    user = ""
    if os.geteuid() == 0:
        for candidate in ("www-data", "nginx", "nobody"):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(candidate)
                user = f"user {candidate};"
                break
    extra = ["-e", str(prefix / "error.log")] if nginx_supports_e(nginx) else []
    last_error = ""
    for _attempt in range(3):
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            workers=max(1, min(2, os.cpu_count() or 1)), prefix=prefix, user=user, host=HOST,
            port=port, root=root))
        out = open(prefix / "nginx.stdout", "wb")  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(
                [nginx, "-p", str(prefix), "-c", str(conf), *extra, "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        try:
            wait_until_serving(proc, port)
            return proc, port
        except BenchError as exc:
            kill_group(proc)
            last_error = str(exc)
            logs = ""
            for name in ("nginx.stdout", "error.log"):
                with contextlib.suppress(OSError):
                    logs += (prefix / name).read_text(errors="replace")
            last_error += "\n" + "\n".join(line[:300] for line in logs.splitlines()[-6:])
            if "Address already in use" not in logs:
                break
    raise BenchError(f"nginx did not start: {last_error}")


def http_get(port: int, path: str = "/index.html") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_until_serving(proc: subprocess.Popen[bytes], port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"nginx exited with status {proc.returncode}")
        try:
            status, body = http_get(port)
            if status == 200 and any(m.encode() in body for m in MARKERS.values()):
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"nginx did not serve index.html within {timeout:.0f} s (last: {last})")


WRK_LUA = """\
-- Counts responses by status class and which site answered; by benchmarks/http_under_deploy.py
local threads = {}
local names = {"n_2xx", "n_3xx", "n_403", "n_404", "n_4xx_other", "n_5xx", "n_other",
               "site_a", "site_b", "bad_body"}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  n_2xx = 0; n_3xx = 0; n_403 = 0; n_404 = 0; n_4xx_other = 0; n_5xx = 0; n_other = 0
  site_a = 0; site_b = 0; bad_body = 0
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    n_2xx = n_2xx + 1
    if body and string.find(body, "@MARKER_A@", 1, true) then
      site_a = site_a + 1
    elseif body and string.find(body, "@MARKER_B@", 1, true) then
      site_b = site_b + 1
    else
      bad_body = bad_body + 1
    end
  elseif status >= 300 and status < 400 then
    n_3xx = n_3xx + 1
  elseif status == 403 then
    n_403 = n_403 + 1
  elseif status == 404 then
    n_404 = n_404 + 1
  elseif status >= 400 and status < 500 then
    n_4xx_other = n_4xx_other + 1
  elseif status >= 500 and status < 600 then
    n_5xx = n_5xx + 1
  else
    n_other = n_other + 1
  end
end

function done(summary, latency, requests)
  local parts = {}
  for _, name in ipairs(names) do
    local total = 0
    for _, t in ipairs(threads) do
      total = total + (t:get(name) or 0)
    end
    table.insert(parts, name .. "=" .. string.format("%d", total))
  end
  io.write("ADBENCH " .. table.concat(parts, " ") .. "\\n")
end
""".replace("@MARKER_A@", MARKERS["A"]).replace("@MARKER_B@", MARKERS["B"])


def parse_wrk(out: str, result: ModeResult) -> None:
    m = re.search(r"^\s*(\d+) requests in ", out, re.MULTILINE)
    if not m:
        raise BenchError(f"could not read wrk's request count from:\n{out}")
    result.requests = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    detail = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if m:
        detail = dict(zip(detail, (int(g) for g in m.groups())))
    result.socket_errors_detail = detail
    result.socket_errors = sum(detail.values())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result.non_2xx_or_3xx_wrk = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result.requests_per_sec = float(m.group(1)) if m else 0.0
    m = re.search(r"^ADBENCH (.*)$", out, re.MULTILINE)
    if not m:
        raise BenchError(f"wrk's Lua script printed no counts:\n{out}")
    counts = {k: int(v) for k, v in (kv.split("=", 1) for kv in m.group(1).split())}
    result.served_a = counts.pop("site_a")
    result.served_b = counts.pop("site_b")
    result.bad_body = counts.pop("bad_body")
    result.status_counts = {k[2:]: v for k, v in counts.items() if v}
    result.non_2xx = sum(v for k, v in counts.items() if k != "n_2xx")
    if sum(counts.values()) != result.requests:
        log(f"note: Lua counted {sum(counts.values())} responses, wrk reports {result.requests}")


# --------------------------------------------------------------------------------------------
# switchers: each runs in a thread until `stop` is set


class Switcher(threading.Thread):
    def __init__(self, kind: str, root: Path, ln: str, ad_cmd: list[str], builds: dict[str, Path]):
        super().__init__(name=f"switcher-{kind}", daemon=True)
        self.kind = kind
        self.root = root
        self.ln = ln
        self.ad_cmd = ad_cmd
        self.builds = builds
        self.stop = threading.Event()
        self.switches = 0
        self.failures = 0
        self.failure_sample = ""
        self.seconds = 0.0
        self.exception: BaseException | None = None

    def run(self) -> None:
        start = time.monotonic()
        try:
            {"naive": self._naive, "ln": self._ln, "atomic-deploy": self._atomic_deploy}[self.kind]()
        except BaseException as exc:  # reported by the main thread
            self.exception = exc
        finally:
            self.seconds = time.monotonic() - start

    def _targets(self) -> Iterator[str]:
        while True:
            yield "releases/B"
            yield "releases/A"

    def _naive(self) -> None:
        current = str(self.root / "current")
        for target in self._targets():
            if self.stop.is_set():
                return
            os.unlink(current)
            os.symlink(target, current)
            self.switches += 1

    def _ln(self) -> None:
        for target in self._targets():
            if self.stop.is_set():
                return
            # cwd=ROOT so the link text is the relative `releases/X`, as in the other modes.
            proc = subprocess.run([self.ln, "-sfn", target, "current"], cwd=self.root,
                                  capture_output=True, text=True, timeout=30, check=False)
            self._count(proc)

    def _atomic_deploy(self) -> None:
        while True:
            for name in ("B", "A"):
                if self.stop.is_set():
                    return
                cmd = [*self.ad_cmd, "deploy", str(self.builds[name]), str(self.root),
                       "--keep", str(KEEP), "--wait", "10", "-m", f"http_under_deploy {name}"]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
                self._count(proc)

    def _count(self, proc: subprocess.CompletedProcess[str]) -> None:
        if proc.returncode == 0:
            self.switches += 1
        else:
            self.failures += 1
            if not self.failure_sample:
                self.failure_sample = f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}"


PROBE_CODE = """\
import json, os, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
probes = misses = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for _ in range(200):
        probes += 1
        try:
            os.stat(path)
        except FileNotFoundError:
            misses += 1
print(json.dumps({"probes": probes, "misses": misses}))
"""


def make_release_root(base: Path, builds: dict[str, Path]) -> Path:
    """ROOT/releases/{A,B} copied from the builds, current -> releases/A."""
    root = base
    (root / "releases").mkdir(parents=True)
    root.chmod(0o755)
    (root / "releases").chmod(0o755)
    for name, src in builds.items():
        shutil.copytree(src, root / "releases" / name, symlinks=True)
    os.symlink("releases/A", root / "current")
    return root


def run_probe(kind: str, work: Path, builds: dict[str, Path], ln: str, seconds: float) -> ProbeResult:
    """Race a switcher against os.stat(current/index.html) in another process, without HTTP."""
    root = make_release_root(work / f"probe-{kind}", builds)
    result = ProbeResult(switcher=kind, seconds=seconds)
    sw = Switcher(kind, root, ln, [], builds)
    sw.start()
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE_CODE, str(root / "current" / "index.html"),
                               str(seconds)], capture_output=True, text=True, timeout=seconds + 30,
                              check=True)
    finally:
        sw.stop.set()
        sw.join(timeout=30)
    data = json.loads(proc.stdout)
    result.probes, result.misses, result.switches = data["probes"], data["misses"], sw.switches
    if sw.exception is not None:
        raise BenchError(f"probe switcher {kind} failed: {sw.exception!r}")
    return result


# --------------------------------------------------------------------------------------------
# one mode


def run_mode(mode: str, args: argparse.Namespace, tools: dict[str, str], ad_cmd: list[str],
             builds: dict[str, Path], work: Path, procs: list[subprocess.Popen[Any]]) -> ModeResult:
    result = ModeResult(mode=mode, seconds=args.seconds, connections=args.connections)
    base = work / mode
    base.mkdir()
    base.chmod(0o755)
    if mode == "atomic-deploy":
        root = base / "root"
        root.mkdir()
        root.chmod(0o755)
        first = subprocess.run([*ad_cmd, "deploy", str(builds["A"]), str(root), "--keep", str(KEEP)],
                               capture_output=True, text=True, timeout=120, check=False)
        if first.returncode != 0:
            raise BenchError(f"initial atomic-deploy deploy failed ({first.returncode}): {first.stderr}")
    else:
        root = make_release_root(base / "root", builds)

    nginx, port = start_nginx(tools["nginx"], base / "nginx", root)
    procs.append(nginx)
    lua = base / "count.lua"
    lua.write_text(WRK_LUA)
    url = f"http://{HOST}:{port}/index.html"
    assert url.startswith("http://127.0.0.1:")
    switcher = Switcher(mode, root, tools["ln"], ad_cmd, builds)
    wrk: subprocess.Popen[str] | None = None
    try:
        log(f"mode {mode}: nginx on {HOST}:{port}, wrk -t{WRK_THREADS} -c{args.connections} "
            f"-d{args.seconds}s for {args.seconds} s while switching")
        switcher.start()
        wrk = subprocess.Popen(
            [tools["wrk"], f"-t{WRK_THREADS}", f"-c{args.connections}", f"-d{args.seconds}s",
             "-s", str(lua), url],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        procs.append(wrk)
        out, _ = wrk.communicate(timeout=args.seconds + 60)
    finally:
        switcher.stop.set()
        switcher.join(timeout=150)
        kill_group(wrk)
    if wrk.returncode != 0:
        raise BenchError(f"wrk exited with status {wrk.returncode}:\n{out}")
    if switcher.exception is not None:
        raise BenchError(f"switcher failed: {switcher.exception!r}")
    parse_wrk(out, result)
    result.switches = switcher.switches
    result.switch_failures = switcher.failures
    result.switch_failure_sample = switcher.failure_sample
    result.switcher_seconds = round(switcher.seconds, 2)
    kill_group(nginx)
    procs.remove(nginx)

    releases = [p for p in (root / "releases").iterdir() if not p.name.startswith(".")]
    result.releases_left = len(releases)
    if mode == "ln" and args.probe_seconds > 0:
        log(f"mode ln: lstat probe, {args.probe_seconds} s of `ln -sfn` and {args.probe_seconds} s "
            "of unlink+symlink as a control")
        result.probe = run_probe("ln", base, builds, tools["ln"], args.probe_seconds)
        result.probe_control = run_probe("naive", base, builds, tools["ln"], args.probe_seconds)
    if mode == "ln":
        http_clean = result.non_2xx == 0 and result.socket_errors == 0
        if not http_clean or (result.probe is not None and result.probe.misses > 0):
            result.ln_atomic = False
        elif result.probe is not None and result.probe_control is not None \
                and result.probe_control.misses > 0:
            result.ln_atomic = True  # the probe sees the naive gap but never an ln gap
        elif result.probe is None:
            result.ln_atomic = True if result.switches > 0 else None
    return result


# --------------------------------------------------------------------------------------------
# output


def verdict(results: list[ModeResult]) -> tuple[int, str]:
    ad = [r for r in results if r.mode == "atomic-deploy"]
    if not ad:
        return EXIT_OK, "atomic-deploy mode not run: nothing to check"
    r = ad[0]
    if r.error:
        return EXIT_FAILED, f"FAIL: atomic-deploy mode did not run: {r.error.splitlines()[0]}"
    problems = []
    if r.non_2xx:
        problems.append(f"{r.non_2xx} non-2xx responses")
    if r.socket_errors:
        problems.append(f"{r.socket_errors} socket errors")
    if r.bad_body:
        problems.append(f"{r.bad_body} 2xx responses with neither site's body")
    if r.requests == 0:
        problems.append("no requests served")
    if r.switches == 0:
        problems.append("no deploy completed")
    if r.switch_failures:
        problems.append(f"{r.switch_failures} failed deploys")
    if problems:
        return EXIT_FAILED, "FAIL: atomic-deploy: " + ", ".join(problems)
    return EXIT_OK, (f"OK: atomic-deploy: 0 non-2xx, 0 socket errors in {r.requests} requests "
                     f"across {r.switches} deploys")


def render_table(results: list[ModeResult], machine: dict[str, Any]) -> str:
    lines = [
        f"machine: {machine['nproc']} CPUs, kernel {machine['kernel']}, {machine['os']}",
        f"         {machine['nginx']}; {machine['wrk']}; {machine['ln']}",
        f"         {machine['atomic_deploy']} ({machine['atomic_deploy_cmd']}, "
        f"checkout {machine['repo_commit']})",
        "",
    ]
    head = ("mode", "requests", "non-2xx", "socket err", "switches", "failed", "served A/B", "req/s")
    rows = [head]
    for r in results:
        if r.error:
            rows.append((r.mode, "error", "", "", "", "", "", ""))
            continue
        rows.append((r.mode, str(r.requests), str(r.non_2xx), str(r.socket_errors), str(r.switches),
                     str(r.switch_failures), f"{r.served_a}/{r.served_b}", f"{r.requests_per_sec:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for r in results:
        if r.error:
            lines.append(f"{r.mode}: ERROR {r.error}")
            continue
        extra = []
        if r.status_counts:
            extra.append("statuses " + ", ".join(f"{k}={v}" for k, v in r.status_counts.items()))
        if r.socket_errors:
            extra.append("socket errors " + ", ".join(f"{k} {v}" for k, v in r.socket_errors_detail.items()))
        if r.bad_body:
            extra.append(f"{r.bad_body} 2xx with neither site's body")
        if r.switch_failure_sample:
            extra.append(f"first failure: {r.switch_failure_sample.strip()}")
        if r.releases_left is not None:
            extra.append(f"{r.releases_left} releases left")
        lines.append(f"{r.mode}: " + "; ".join(extra))
        if r.mode == "ln":
            verdict_text = {True: "atomic", False: "NOT atomic", None: "inconclusive"}[r.ln_atomic]
            probe = ""
            if r.probe is not None and r.probe_control is not None:
                probe = (f" (stat probe: {r.probe.misses} misses in {r.probe.probes} probes over "
                         f"{r.probe.switches} ln runs; control unlink+symlink: "
                         f"{r.probe_control.misses} misses in {r.probe_control.probes} probes over "
                         f"{r.probe_control.switches} switches)")
            lines.append(f"ln: `{machine['ln']}` ln -sfn turned out {verdict_text}{probe}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Count HTTP errors from a local nginx while ROOT/current is switched "
                    "(naive unlink+symlink, ln -sfn, atomic-deploy).",
        epilog="exit: 0 atomic-deploy had 0 non-2xx and 0 socket errors; 1 otherwise; "
               "2 nginx/wrk missing or usage error; 130 interrupted",
    )
    p.add_argument("--seconds", type=int, default=5, help="wrk duration per mode (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {','.join(MODES)} (default: all, in that order)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--probe-seconds", type=float, default=2.0,
                   help="seconds of the no-HTTP stat probe deciding whether ln -sfn is atomic "
                        "(0 disables; default 2)")
    p.add_argument("--timeout", type=int, default=0,
                   help="hard limit for the whole run in seconds "
                        "(default: 120 + per mode 110 + --seconds + 2 x --probe-seconds)")
    p.add_argument("--atomic-deploy", metavar="CMD", default="",
                   help="how to run the CLI, e.g. '/usr/local/bin/atomic-deploy' (default: the one "
                        "beside this Python, else on PATH, else PYTHON -m atomic_deploy)")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        p.error(f"--modes: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(MODES)}")
    args.modes = list(dict.fromkeys(modes))
    if args.seconds < 1:
        p.error("--seconds must be at least 1")
    if args.connections < WRK_THREADS:
        p.error(f"--connections must be at least {WRK_THREADS} (wrk runs {WRK_THREADS} threads)")
    if args.timeout <= 0:
        args.timeout = 120 + len(args.modes) * (args.seconds + 2 * int(args.probe_seconds) + 110)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ensure_tools()
    if tools is None:
        return EXIT_MISSING
    ad_cmd = atomic_deploy_command(args.atomic_deploy)
    machine = machine_info(tools, ad_cmd)

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise HardTimeout(f"hard timeout of {args.timeout} s reached")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (a background job)
    signal.alarm(args.timeout)
    procs: list[subprocess.Popen[Any]] = []
    results: list[ModeResult] = []
    work = Path(tempfile.mkdtemp(prefix="http-under-deploy-"))
    try:
        work.chmod(0o755)  # nginx workers (an unprivileged user when we are root) must traverse it
        builds = {}
        for name in MARKERS:
            builds[name] = work / "builds" / name
            write_site(builds[name], name)
        (work / "builds").chmod(0o755)
        for mode in args.modes:
            try:
                results.append(run_mode(mode, args, tools, ad_cmd, builds, work, procs))
            except BenchError as exc:
                log(f"mode {mode}: {exc}")
                results.append(ModeResult(mode=mode, seconds=args.seconds,
                                          connections=args.connections, error=str(exc)))
            finally:
                for proc in procs:
                    kill_group(proc)
                procs.clear()
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_INTERRUPTED
    except HardTimeout as exc:
        log(str(exc))
        return EXIT_FAILED
    finally:
        signal.alarm(0)
        for proc in procs:
            kill_group(proc, grace=2.0)
        shutil.rmtree(work, ignore_errors=True)

    code, summary = verdict(results)
    if args.json:
        print(json.dumps({
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine,
            "settings": {"seconds": args.seconds, "connections": args.connections,
                         "wrk_threads": WRK_THREADS, "keep": KEEP, "url_host": HOST},
            "results": [asdict(r) for r in results],
            "verdict": summary,
            "exit_code": code,
        }, indent=2))
    else:
        print(render_table(results, machine))
        print()
        print(summary)
    return code


if __name__ == "__main__":
    sys.exit(main())

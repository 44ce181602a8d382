"""Real clients under load during fleet deploys. Each of 3 sshd test hosts (tests/sshlab.py) runs
its own nginx inside its own mount namespace, serving that host's own /srv/app/current; one wrk
per host drives it while the fleet is deployed to again and again. Clients must see no error,
every host must serve both builds in turn and end on the fleet's one release. The switch skew of
every deploy (`skew_ms` of `--json`) is printed: worst and median."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli, wait_for
from sshlab import Host, SSHLab, free_port

APP = "/srv/app"
DEPLOYS = 10  # under load, alternating builds B and A (A was deployed first, before the load)
MARKERS = {"A": "FLEET-LOAD-BUILD-A", "B": "FLEET-LOAD-BUILD-B"}
MORE = 200  # requests each nginx must serve before the first and after the last deploy
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"

NGINX_CONF = """\
# a private instance on one test host (tests/test_fleet_under_load.py); paths are the host's own
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{
    worker_connections 256;
}}
http {{
    types {{
        text/html html;
        application/javascript js;
    }}
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    # current is resolved afresh on every request, as docs/servers.md asks
    open_file_cache off;
    disable_symlinks off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {root}/current;
        location / {{
        }}
        location = /nginx_status {{
            stub_status;
        }}
    }}
}}
"""

# Counts every response: 2xx naming build A, 2xx naming build B, any other 2xx, and non-2xx.
WRK_LUA = """\
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  site_a = 0; site_b = 0; bad_body = 0; non_2xx = 0; last_bad = 0
end
function response(status, headers, body)
  if status >= 200 and status < 300 then
    if body and string.find(body, "@A@", 1, true) then
      site_a = site_a + 1
    elseif body and string.find(body, "@B@", 1, true) then
      site_b = site_b + 1
    else
      bad_body = bad_body + 1
    end
  else
    non_2xx = non_2xx + 1
    last_bad = status
  end
end
function done(summary, latency, requests)
  local parts = {}
  for _, name in ipairs({"site_a", "site_b", "bad_body", "non_2xx", "last_bad"}) do
    local total = 0
    for _, t in ipairs(threads) do
      if name == "last_bad" then
        total = math.max(total, t:get(name) or 0)
      else
        total = total + (t:get(name) or 0)
      end
    end
    table.insert(parts, name .. "=" .. string.format("%d", total))
  end
  io.write("FLEETLOAD " .. table.concat(parts, " ") .. "\\n")
end
""".replace("@A@", MARKERS["A"]).replace("@B@", MARKERS["B"])


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN)


def _tools() -> tuple[str, str]:
    """nginx (with its stub_status module) and wrk, else skip saying what to install."""
    nginx, wrk = _which("nginx"), _which("wrk")
    if nginx is None:
        pytest.skip("nginx is not installed (Debian package nginx; .ci/run installs it)")
    if wrk is None:
        pytest.skip("wrk is not installed (Debian package wrk; .ci/run installs it)")
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30)
    if "http_stub_status_module" not in built.stdout + built.stderr:
        pytest.skip(f"{nginx} was built without the stub_status module (Debian's nginx has it)")
    return nginx, wrk


def _build(path: Path, name: str) -> Path:
    """A small site whose index.html names its build."""
    (path / "assets").mkdir(parents=True)
    (path / "index.html").write_text(f"<!doctype html>\n<title>build {name}</title>\n"
                                     f"<p>{MARKERS[name]}</p>\n<script src=assets/app.js></script>\n")
    (path / "assets" / "app.js").write_text(f"console.log('build {name}');\n")
    return path


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


class Nginx:
    """An nginx started inside a test host (``host.run``: its mount namespace, so its ``/srv``)
    with its config, pid, logs and temp files in that host's ``/srv/nginx``."""

    def __init__(self, lab: SSHLab, host: Host, binary: str) -> None:
        self.host = host
        self.binary = binary
        self.prefix = host.remote_path("/srv/nginx")  # as the host names it
        self.port = 0
        host.path("/srv/nginx/tmp").mkdir(parents=True)
        root = os.geteuid() == 0
        if root and lab.isolated and _has_user("www-data"):
            self.user = "user www-data;"  # as on a real server (/srv is the host's own, mode 0755)
        else:
            # Not root: the workers are this user. Root without namespaces: the host's folder
            # lies in the lab's private (0700) folder, which only root can pass.
            self.user = "user root;" if root else ""

    def argv(self, *extra: str) -> list[str]:
        return [self.binary, "-p", self.prefix, "-c", f"{self.prefix}/nginx.conf",
                "-e", f"{self.prefix}/error.log", *extra]

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace")[-2000:]
                       for p in (self.host.path("/srv/nginx/error.log"),
                                 self.host.path("/srv/nginx/stderr.log")) if p.exists())

    def start(self) -> None:
        """Start it (it puts itself in the background once it listens) and wait until it
        serves this host's current."""
        for _attempt in range(5):
            self.port = free_port()
            self.host.path("/srv/nginx/nginx.conf").write_text(NGINX_CONF.format(
                prefix=self.prefix, user=self.user, port=self.port,
                root=self.host.remote_path(APP)))
            # Its output to a file: the background nginx must not hold host.run's pipes open.
            r = self.host.run(["sh", "-c", 'exec "$@" </dev/null >/dev/null 2>>"$0"',
                               f"{self.prefix}/stderr.log", *self.argv()])
            if r.returncode == 0:
                break
            if "Address already in use" not in self.logs():  # only a lost port race is retried
                raise AssertionError(f"{self.host.alias}: nginx did not start: {self.logs()}")
        else:
            raise AssertionError(f"{self.host.alias}: nginx found no free port: {self.logs()}")
        wait_for(lambda: self.serving() is not None, 30, f"{self.host.alias}'s nginx to serve")

    def serving(self) -> str | None:
        """Which build index.html names, or None (no answer, not 200, neither build)."""
        try:
            status, body = _get(self.port, "/index.html")
        except OSError:
            return None
        found = [name for name, marker in MARKERS.items() if marker in body]
        return found[0] if status == 200 and len(found) == 1 else None

    def requests(self) -> int:
        """Requests served so far (stub_status)."""
        status, body = _get(self.port, "/nginx_status")
        assert status == 200, body
        return int(body.splitlines()[2].split()[2])

    def stop(self) -> None:
        if self.port and self.host.path("/srv/nginx/nginx.pid").exists():
            self.host.run(self.argv("-s", "stop"), timeout=30)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class WrkResult:
    requests: int
    socket_errors: dict[str, int]
    counts: dict[str, int]
    output: str


class Wrk:
    """One wrk against one nginx's index.html, run until ``stop()`` (SIGINT: wrk then prints
    its summary and the Lua script's counts)."""

    def __init__(self, binary: str, script: Path, port: int) -> None:
        # --timeout 10s: a response held up by the 2 shared cores is slow, not lost; the zero
        # socket errors asserted are connections refused or reset, failed reads and writes.
        self.proc = subprocess.Popen(
            [binary, "-t1", "-c4", "-d300s", "--timeout", "10s", "-s", str(script),
             f"http://127.0.0.1:{port}/index.html"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)

    def stop(self) -> WrkResult:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, f"wrk exited {self.proc.returncode}:\n{out}"
        m = re.search(r"^\s*(\d+) requests in ", out, re.MULTILINE)
        assert m, out
        errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
        e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if e:
            errors = dict(zip(errors, map(int, e.groups())))
        c = re.search(r"^FLEETLOAD (.*)$", out, re.MULTILINE)
        assert c, out
        counts = {k: int(v) for k, v in (kv.split("=", 1) for kv in c.group(1).split())}
        return WrkResult(int(m.group(1)), errors, counts, out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


@pytest.fixture
def lab(ssh_lab: SSHLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SSHLab:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ATOMIC_DEPLOY_SSH", ssh_lab.ssh_command)
    return ssh_lab


def cli(*args: Any) -> subprocess.CompletedProcess[str]:
    env = {k: os.environ[k] for k in ("XDG_CACHE_HOME", "ATOMIC_DEPLOY_SSH")}
    return run_cli(*args, env=env, timeout=180)


def current(h: Host) -> str | None:
    link = h.path(APP) / "current"
    return os.readlink(link) if os.path.islink(link) else None


def _load(lab: SSHLab, hosts: list[Host], tmp_path: Path, servers: list[Nginx],
          load: list[Wrk]) -> None:
    """Each host's nginx started, then a wrk on each, until each nginx is seen under load. Both
    lists are filled as things start, for the caller's cleanup."""
    nginx_bin, wrk_bin = _tools()
    for h in hosts:
        servers.append(Nginx(lab, h, nginx_bin))
        servers[-1].start()
    script = tmp_path / "count.lua"
    script.write_text(WRK_LUA)
    before = [s.requests() for s in servers]
    load.extend(Wrk(wrk_bin, script, s.port) for s in servers)
    wait_for(lambda: all(s.requests() > b + MORE for s, b in zip(servers, before)), 60,
             "every nginx to be under load")


def _more_load(servers: list[Nginx]) -> None:
    """Wait until every nginx has served MORE further requests (the load goes on meanwhile)."""
    before = [s.requests() for s in servers]
    wait_for(lambda: all(s.requests() > b + MORE for s, b in zip(servers, before)), 60,
             "every nginx to serve more requests")


def test_clients_of_three_hosts_see_no_error_during_10_fleet_deploys(lab: SSHLab,
                                                                      tmp_path: Path) -> None:
    _tools()
    hosts = [lab.add_host(f"web{i}") for i in (1, 2, 3)]
    dests = [h.dest(APP) for h in hosts]
    builds = {name: _build(tmp_path / "builds" / name, name) for name in MARKERS}
    r = cli("deploy", builds["A"], *dests, "--json")
    assert r.returncode == 0, r.stderr
    final = "BA"[(DEPLOYS - 1) % 2]
    servers: list[Nginx] = []
    load: list[Wrk] = []
    results: list[WrkResult] = []
    served: list[str | None] = []
    deploys: list[dict[str, Any]] = []
    try:
        _load(lab, hosts, tmp_path, servers, load)
        started = time.monotonic()
        for i in range(DEPLOYS):
            name = "BA"[i % 2]
            r = cli("deploy", builds[name], *dests, "--json")
            assert r.returncode == 0, f"deploy {i + 1} of {DEPLOYS} exited {r.returncode}: {r.stderr}"
            d = json.loads(r.stdout)
            assert d["outcome"] == "deployed" and d["exit_code"] == 0, d
            deploys.append(d)
        took = time.monotonic() - started
        _more_load(servers)  # clients kept being served after the last switch too
        results = [w.stop() for w in load]
        served = [s.serving() for s in servers]
    finally:
        for w in load:
            w.kill()
        for s in servers:
            s.stop()

    skews = [float(d["skew_ms"]) for d in deploys]
    total = sum(res.requests for res in results)
    print(f"\n{DEPLOYS} fleet deploys to 3 hosts in {took:.1f} s under load; "
          f"{total} requests, per host {[res.requests for res in results]}; "
          f"switch skew: worst {max(skews):.1f} ms, median {statistics.median(skews):.1f} ms "
          f"(all: {', '.join(f'{s:.1f}' for s in skews)})")
    for h, res in zip(hosts, results):
        assert res.socket_errors == dict.fromkeys(("connect", "read", "write", "timeout"), 0), \
            f"{h.alias}: {res.output}"
        assert res.counts["non_2xx"] == 0, f"{h.alias}: {res.output}"
        assert res.counts["bad_body"] == 0, f"{h.alias}: {res.output}"
        assert res.counts["site_a"] + res.counts["site_b"] == res.requests, f"{h.alias}: {res.output}"
        # This host's own nginx followed this host's switches: it served both builds.
        assert res.counts["site_a"] > 0 and res.counts["site_b"] > 0, f"{h.alias}: {res.output}"
    last = deploys[-1]["release"]
    assert [d["release"] for d in deploys] == sorted({d["release"] for d in deploys})
    for h in hosts:
        assert current(h) == f"releases/{last}", h.alias
        assert MARKERS[final] in (h.path(APP) / "current" / "index.html").read_text(), h.alias
    assert served == [final] * len(hosts)  # what each host's nginx served at the end
    r = cli("status", *dests, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["mixed"] is False, r.stdout + r.stderr


def test_the_harness_counts_the_errors_of_a_missing_current(lab: SSHLab, tmp_path: Path) -> None:
    """The load above can fail: while a host's current is missing, its clients get non-2xx."""
    _tools()
    host = lab.add_host("web1")
    r = cli("deploy", _build(tmp_path / "A", "A"), host.dest(APP))
    assert r.returncode == 0, r.stderr
    link = host.path(APP) / "current"
    target = os.readlink(link)
    servers: list[Nginx] = []
    load: list[Wrk] = []
    try:
        _load(lab, [host], tmp_path, servers, load)
        os.unlink(link)
        try:
            _more_load(servers)
        finally:
            os.symlink(target, link)
        _more_load(servers)
        [result] = [w.stop() for w in load]
    finally:
        for w in load:
            w.kill()
        for s in servers:
            s.stop()
    assert result.counts["non_2xx"] > MORE, result.output
    assert result.counts["last_bad"] == 404, result.output
    assert result.counts["site_a"] > 0, result.output

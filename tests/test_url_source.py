"""URL sources: a tarball fetched over HTTP (or file://), streamed into the safe extractor and
checked against --sha256 before anything becomes a release. Each failure against a real local
HTTP server (started here, in a thread): one line, its exit code, nothing staged left."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import signal
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import (
    error_line,
    hidden_entries,
    history,
    make_build,
    release_names,
    run_cli,
    start_cli,
    wait_for,
)

SECRET = "Bearer s3cr3t-t0ken-never-shown"
Route = Callable[["_Handler"], None]


def tarball(files: dict[str, str] | None = None, top: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in (files or {"index.html": "<h1>v1</h1>\n",
                                     "version.txt": "v1\n"}).items():
            data = text.encode()
            info = tarfile.TarInfo(top + name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers.items())))
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self.send_error(404)
            return
        route(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- answers ---------------------------------------------------------------------------
    def body(self, data: bytes, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()  # stalled answers wait for this

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve(self, path: str, data: bytes) -> str:
        self.routes[path] = lambda h: h.body(data)
        return self.url + path


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def untouched(root: Path) -> None:
    """Nothing staged is left: no hidden entry, no release, no journal."""
    assert hidden_entries(root) == []
    assert release_names(root) == []
    assert not (root / ".atomic-deploy" / "journal.json").exists()
    assert not os.path.lexists(root / "current")


def test_deploy_a_url_checked_by_sha256(server: _Server, root: Path) -> None:
    data = tarball()
    url = server.serve("/app.tar.gz", data)
    r = run_cli("deploy", url, root, "--sha256", sha(data), "--json")
    assert r.returncode == 0, r.stderr
    rel = json.loads(r.stdout)["release"]
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert release_names(root) == [rel] and hidden_entries(root) == []
    assert history(root)[-1]["source"] == url


def test_sha256_auto_reads_the_file_next_to_it(server: _Server, root: Path) -> None:
    data = tarball()
    url = server.serve("/dist/app-1.4.tar.gz", data)
    # sha256sum's own format, several files listed: the line naming this one counts
    server.serve("/dist/app-1.4.tar.gz.sha256",
                 f"{'0' * 64}  other.tar.gz\n{sha(data)}  app-1.4.tar.gz\n".encode())
    r = run_cli("deploy", url, root, "--sha256", "auto")
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "index.html").read_text() == "<h1>v1</h1>\n"
    assert [p for p, _ in server.requests] == ["/dist/app-1.4.tar.gz.sha256",
                                               "/dist/app-1.4.tar.gz"]


def test_sha256_auto_without_the_file(server: _Server, root: Path) -> None:
    url = server.serve("/app.tar.gz", tarball())
    r = run_cli("deploy", url, root, "--sha256", "auto")
    assert r.returncode == 2
    assert "HTTP 404" in error_line(r) and "checksum file" in error_line(r)
    untouched(root)


def test_mismatch_leaves_nothing_and_the_old_release_serves(server: _Server, root: Path,
                                                            tmp_path: Path) -> None:
    run_cli("deploy", make_build(tmp_path / "b"), root).check_returncode()
    before = release_names(root)
    data = tarball({"version.txt": "evil\n"})
    url = server.serve("/app.tar.gz", data)
    r = run_cli("deploy", url, root, "--sha256", sha(b"something else"))
    assert r.returncode == 2
    line = error_line(r)
    assert "does not match its sha256" in line and sha(data) in line
    assert "nothing was switched" in line
    assert release_names(root) == before and hidden_entries(root) == []
    assert (root / "current" / "version.txt").read_text() == "v1\n"


def test_an_error_page_is_reported_as_a_mismatch(server: _Server, root: Path) -> None:
    url = server.serve("/app.tar.gz", b"<html>Login required</html>\n" * 20)
    r = run_cli("deploy", url, root, "--sha256", sha(tarball()))
    assert r.returncode == 2 and "does not match its sha256" in error_line(r)
    untouched(root)


def test_truncated_body(server: _Server, root: Path) -> None:
    data = tarball({"big.bin": "x" * 200_000})

    def cut(h: _Handler) -> None:  # announces the whole length, sends half, hangs up
        h.body(data[:len(data) // 2], length=len(data))
        h.close_connection = True

    server.routes["/app.tar.gz"] = cut
    r = run_cli("deploy", server.url + "/app.tar.gz", root, "--sha256", sha(data))
    assert r.returncode == 1
    assert "was cut short" in error_line(r)
    untouched(root)


def test_redirects_are_followed_and_a_loop_refused(server: _Server, root: Path) -> None:
    data = tarball()
    server.serve("/real.tar.gz", data)

    def to(where: str) -> Route:
        def answer(h: _Handler) -> None:
            h.send_response(302)
            h.send_header("Location", where)
            h.send_header("Content-Length", "0")
            h.end_headers()
        return answer

    server.routes["/latest.tar.gz"] = to("/real.tar.gz")
    server.routes["/a.tar.gz"] = to("/b.tar.gz")
    server.routes["/b.tar.gz"] = to("/a.tar.gz")
    r = run_cli("deploy", server.url + "/a.tar.gz", root, "--sha256", sha(data))
    assert r.returncode == 2 and "redirect loop" in error_line(r)
    untouched(root)
    r = run_cli("deploy", server.url + "/latest.tar.gz", root, "--sha256", sha(data))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("status", "code"), [(404, 2), (403, 2), (500, 1), (503, 1)])
def test_http_errors(server: _Server, root: Path, status: int, code: int) -> None:
    server.routes["/app.tar.gz"] = lambda h: h.send_error(status)
    r = run_cli("deploy", server.url + "/app.tar.gz", root, "--sha256", "a" * 64)
    assert r.returncode == code
    assert f"HTTP {status}" in error_line(r)
    untouched(root)


def test_server_that_stalls_mid_body(server: _Server, root: Path) -> None:
    data = tarball({"big.bin": os.urandom(150_000).hex()})  # incompressible

    def stall(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[:100_000])
        h.wfile.flush()
        server.release.wait(60)  # never sends the rest while the test runs

    server.routes["/app.tar.gz"] = stall
    r = run_cli("deploy", server.url + "/app.tar.gz", root, "--sha256", sha(data),
                "--fetch-timeout", "1")
    assert r.returncode == 1
    line = error_line(r)
    assert "stalled: no data for 1 s" in line and "--fetch-timeout" in line
    untouched(root)


def test_server_that_never_answers(server: _Server, root: Path) -> None:
    server.routes["/app.tar.gz"] = lambda h: server.release.wait(60) and None
    r = run_cli("deploy", server.url + "/app.tar.gz", root, "--sha256", "a" * 64,
                "--fetch-timeout", "1")
    assert r.returncode == 1 and "no answer within 1 s" in error_line(r)
    untouched(root)


def test_connect_timeout(root: Path) -> None:
    # A listening socket whose accept queue is full: the kernel drops further SYNs, so the
    # connection is never made (as with a host behind a firewall that drops packets).
    with socket.socket() as lsn:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(0)
        port = lsn.getsockname()[1]
        fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        try:
            r = run_cli("deploy", f"http://127.0.0.1:{port}/app.tar.gz", root, "--sha256",
                        "a" * 64, "--fetch-timeout", "1")
        finally:
            for s in fillers:
                s.close()
    assert r.returncode == 1
    assert "no answer within 1 s" in error_line(r)
    untouched(root)


def test_nothing_listens(root: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("deploy", f"http://127.0.0.1:{port}/app.tar.gz", root, "--sha256", "a" * 64)
    assert r.returncode == 1 and "Connection refused" in error_line(r)
    untouched(root)


def test_http_needs_a_checksum_unless_told_otherwise(server: _Server, root: Path) -> None:
    url = server.serve("/app.tar.gz", tarball())
    r = run_cli("deploy", url, root)
    assert r.returncode == 2
    assert "needs --sha256" in error_line(r) and "--insecure-no-checksum" in error_line(r)
    assert not root.exists() and server.requests == []  # nothing fetched, nothing made
    r = run_cli("deploy", url, root, "--insecure-no-checksum")
    assert r.returncode == 0, r.stderr
    r = run_cli("deploy", url, root, "--insecure-no-checksum", "--sha256", "a" * 64)
    assert r.returncode == 2 and "contradict" in error_line(r)
    r = run_cli("deploy", url, root, "--sha256", "abc")
    assert r.returncode == 2 and "64 hex digits" in error_line(r)


def test_file_url_and_strip_components(tmp_path: Path, root: Path) -> None:
    data = tarball(top="app-1.4/")
    path = tmp_path / "app-1.4.tar.gz"
    path.write_bytes(data)
    r = run_cli("deploy", path.as_uri(), root, "--strip-components", "1")
    assert r.returncode == 0, r.stderr  # file:// needs no checksum: a local path's trust
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    r = run_cli("deploy", (tmp_path / "missing.tar.gz").as_uri(), root)
    assert r.returncode == 2 and "does not exist" in error_line(r)
    r = run_cli("deploy", path.as_uri(), root, "--sha256", "b" * 64)
    assert r.returncode == 2 and "does not match" in error_line(r)
    assert len(release_names(root)) == 1 and hidden_entries(root) == []


def test_sha256_with_a_plain_path_is_refused(tmp_path: Path, root: Path) -> None:
    path = tmp_path / "app.tar.gz"
    path.write_bytes(tarball())
    r = run_cli("deploy", path, root, "--sha256", sha(path.read_bytes()))
    assert r.returncode == 2 and "file:// URL" in error_line(r)


def test_headers_are_sent_and_never_shown_or_recorded(server: _Server, root: Path,
                                                      tmp_path: Path) -> None:
    data = tarball()

    def private(h: _Handler) -> None:
        if h.headers.get("Authorization") != SECRET:
            h.send_error(401)
            return
        h.body(data)

    server.routes["/private/app.tar.gz"] = private
    url = server.url + "/private/app.tar.gz"
    r = run_cli("deploy", url, root, "--sha256", sha(data))
    assert r.returncode == 2 and "HTTP 401" in error_line(r)
    for extra in ([], ["--json"], ["-v"]):
        r = run_cli("deploy", url, root, "--sha256", sha(data), "--header",
                    f"Authorization: {SECRET}", "--header", "X-Trace: 1", "-m", "m", *extra)
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr and "s3cr3t" not in r.stdout + r.stderr
    r = run_cli("deploy", url, root, "--sha256", "c" * 64, f"--header=Authorization: {SECRET}")
    assert r.returncode == 2 and "s3cr3t" not in r.stderr
    r = run_cli("status", root, "--json")
    assert "s3cr3t" not in r.stdout
    for dirpath, _dirs, files in os.walk(root):  # history, journal, manifests, lock
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                assert b"s3cr3t" not in p.read_bytes(), p
    assert len(history(root)) == 5  # the 401, three deploys, the mismatch


def test_the_lock_holder_shows_no_header_value(server: _Server, root: Path) -> None:
    data = tarball({"big.bin": os.urandom(150_000).hex()})

    def stall(h: _Handler) -> None:
        h.body(data[:50_000], length=len(data))
        server.release.wait(60)

    server.routes["/app.tar.gz"] = stall
    proc = start_cli("deploy", server.url + "/app.tar.gz", root, "--sha256", sha(data),
                     "--header", f"Authorization: {SECRET}")
    try:
        holder: dict[str, Any] = {}

        def locked() -> bool:
            r = run_cli("status", root, "--json")
            holder.update(json.loads(r.stdout).get("lock_holder") or {}) if r.stdout else None
            return bool(holder)

        wait_for(locked, what="the deploy to hold the lock")
        assert "--header '***'" in holder["command"] and "s3cr3t" not in holder["command"]
    finally:
        server.release.set()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "cut short" in err and "s3cr3t" not in err
    untouched(root)


def test_a_header_is_not_sent_to_another_host_on_redirect(server: _Server, root: Path) -> None:
    data = tarball()
    server.serve("/app.tar.gz", data)
    port = server.server_address[1]

    def away(h: _Handler) -> None:  # same server, but another host name: another origin
        h.send_response(302)
        h.send_header("Location", f"http://localhost:{port}/app.tar.gz")
        h.send_header("Content-Length", "0")
        h.end_headers()

    server.routes["/redirect.tar.gz"] = away
    r = run_cli("deploy", server.url + "/redirect.tar.gz", root, "--sha256", sha(data),
                "--header", f"Authorization: {SECRET}")
    assert r.returncode == 0, r.stderr
    (_, h1), (_, h2) = server.requests
    assert h1.get("Authorization") == SECRET and "Authorization" not in h2


def test_proxy_from_the_environment(server: _Server, root: Path) -> None:
    data = tarball()
    # The proxy is this same server: a request for http://artifacts.invalid/... reaching it
    # with the whole URL in its request line is one a proxy was asked to fetch.
    server.routes["http://artifacts.invalid/app.tar.gz"] = lambda h: h.body(data)
    r = run_cli("deploy", "http://artifacts.invalid/app.tar.gz", root, "--sha256", sha(data),
                env={"http_proxy": server.url})
    assert r.returncode == 0, r.stderr
    assert server.requests[0][0] == "http://artifacts.invalid/app.tar.gz"


def test_url_with_credentials_is_recorded_without_them(server: _Server, root: Path) -> None:
    data = tarball()
    server.serve("/app.tar.gz", data)
    url = server.url.replace("http://", "http://user:pw-secret@") + "/app.tar.gz?sig=q-secret"
    r = run_cli("deploy", url, root, "--sha256", sha(data))
    assert r.returncode == 0, r.stderr
    text = (root / ".atomic-deploy" / "history.jsonl").read_text()
    assert "pw-secret" not in text and "q-secret" not in text
    assert history(root)[-1]["source"] == server.url + "/app.tar.gz?..."
    assert server.requests[0][1]["Authorization"] == "Basic dXNlcjpwdy1zZWNyZXQ="


def test_dry_run_fetches_nothing(server: _Server, root: Path) -> None:
    url = server.serve("/app.tar.gz", tarball())
    r = run_cli("deploy", url, root, "--sha256", "a" * 64, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "fetch " + url in r.stdout and server.requests == []


def test_download_progress_line() -> None:
    from atomic_deploy._progress import DownloadProgress

    out = io.StringIO()
    p = DownloadProgress(out, "app.tar.gz")  # type: ignore[arg-type]
    p(512 * 1024, 1024 * 1024)
    assert "fetching app.tar.gz  512.0 KB/1.0 MB (50%)" in out.getvalue()
    p.close()
    assert out.getvalue().endswith("\r")


def test_a_signal_mid_download_leaves_nothing(server: _Server, root: Path) -> None:
    data = tarball({"big.bin": os.urandom(400_000).hex()})

    def drip(h: _Handler) -> None:  # a slow server: data keeps coming, a little at a time
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        for i in range(0, len(data), 4096):
            if server.release.wait(0.2):  # the whole body would take 40 s
                return
            try:
                h.wfile.write(data[i:i + 4096])
                h.wfile.flush()
            except OSError:
                return

    server.routes["/app.tar.gz"] = drip
    proc = start_cli("deploy", server.url + "/app.tar.gz", root, "--sha256", sha(data))
    try:
        wait_for(lambda: any(n.startswith(".") for n in os.listdir(root / "releases"))
                 if (root / "releases").is_dir() else False, what="the staging folder")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)  # acted on between chunks, not at the end
    finally:
        server.release.set()
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err
    untouched(root)

"""Builds fetched by URL (``http://``, ``https://``, ``file://``): the body is streamed straight
into the safe tar extractor (``_sources``), never held whole in memory or on disk, and hashed on
the way; the staged tree counts only once the whole body was read and its sha256 matched. The
caller (operations) removes the staging folder on any error, so a mismatch, a cut-short body or
a stalled server leaves nothing behind.

Standard library only: ``urllib`` (proxies from the environment, as it reads them). Request
headers (``--header``, for private stores) are sent as given and never appear in an error, a
log line or a record; they are dropped when a redirect leads to another host, as curl does.

Errors: what the server or the bytes got wrong (an HTTP 4xx, a redirect loop, a checksum
mismatch, no tar archive) is InvalidInput (exit 2); what the network got wrong (cannot connect,
a timeout, a body cut short, an HTTP 5xx) is OperationFailed (exit 1: trying again may work).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from ._layout import show
from ._sources import ExtractStats, extract_stream
from .errors import AtomicDeployError, InvalidInput, OperationFailed

SCHEMES = ("http", "https", "file")
NEEDS_CHECKSUM = ("http", "https")  # file:// is as trusted as a tarball's path
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 16
_MAX_SUMS = 1 << 16  # a .sha256 file is a line or a few; never read a whole build as one
_HEX = re.compile(r"[0-9a-fA-F]{64}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NOTHING = "nothing was changed"


def is_url(source: str | None) -> bool:
    """Is ``source`` a URL this tool fetches (rather than a path)?"""
    return source is not None and source.split(":", 1)[0].lower() in SCHEMES \
        and source[len(source.split(":", 1)[0]):].startswith("://")


@dataclass
class FetchOptions:
    """How to fetch a URL source (``--sha256``, ``--header``, ``--fetch-timeout``,
    ``--insecure-no-checksum``)."""

    sha256: str | None = None  # 64 hex digits, "auto" (URL.sha256), or None
    headers: list[str] = field(default_factory=list)  # "Name: value"
    timeout: float = DEFAULT_TIMEOUT  # connect, and each read: a stalled server is given up
    insecure_no_checksum: bool = False
    progress: Callable[[int, int | None], None] | None = None
    url: str = ""  # the URL itself, credentials and all (never recorded)
    digest: str | None = None  # filled in: the body's sha256, once checked


def redact(url: str) -> str:
    """``url`` as it may be shown and recorded: no user:password@, no query string (a
    presigned URL's signature is a credential)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "") if parts.netloc else ""
    query = "?..." if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + query


def check(url: str, opts: FetchOptions) -> None:
    """Everything about the URL and its options that can be refused before any connection."""
    scheme = url.split(":", 1)[0].lower()
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidInput(f"invalid URL {show(redact_safe(url))}: {exc}", _NOTHING) from None
    if scheme in NEEDS_CHECKSUM and not parts.hostname:
        raise InvalidInput(f"invalid URL {show(redact_safe(url))}: no host", _NOTHING)
    if scheme == "file" and parts.netloc not in ("", "localhost"):
        raise InvalidInput(f"file:// URLs name a file on this machine, not on {parts.netloc}",
                           _NOTHING)
    if any(c in url for c in "\r\n\0 "):
        raise InvalidInput("a URL cannot contain spaces or control characters (escape them: "
                           "%20)", _NOTHING)
    if opts.sha256 is not None and opts.sha256 != "auto" and not _HEX.fullmatch(opts.sha256):
        raise InvalidInput("--sha256 takes 64 hex digits, or 'auto' (the URL.sha256 file next "
                           "to it)", _NOTHING)
    if opts.sha256 is not None and opts.insecure_no_checksum:
        raise InvalidInput("--sha256 and --insecure-no-checksum contradict each other", _NOTHING)
    if scheme in NEEDS_CHECKSUM and opts.sha256 is None and not opts.insecure_no_checksum:
        raise InvalidInput(f"an {scheme}:// source needs --sha256 HEX (or --sha256 auto: the "
                           "URL.sha256 file next to it): nothing may become a release unchecked "
                           "(--insecure-no-checksum to deploy it anyway)", _NOTHING)
    for header in opts.headers:
        _parse_header(header)
    if opts.timeout <= 0:
        raise InvalidInput("--fetch-timeout must be more than 0 seconds", _NOTHING)


def redact_safe(url: str) -> str:
    try:
        return redact(url)
    except ValueError:
        return url.split("?", 1)[0].split("@")[-1]


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    # Never show the value: it is usually a credential.
    if not sep or not _TOKEN.fullmatch(name):
        raise InvalidInput(f"--header takes 'Name: value'; {show(name[:40])!r}... is not one",
                           _NOTHING)
    if any(c in value for c in "\r\n\0"):
        raise InvalidInput(f"--header {name}: the value cannot hold a line break", _NOTHING)
    return name, value


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects (10 at most, a loop refused), minus the user's headers when the
    redirect leads to another host: a credential for one store is not sent to the next."""

    def __init__(self, private: set[str]) -> None:
        self.private = private

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for name in list(new.headers):
                if name.lower() in self.private:
                    del new.headers[name]
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urllib.parse.urlsplit(url)
    return p.scheme.lower(), (p.hostname or "").lower(), p.port


def _open(url: str, opts: FetchOptions, what: str) -> Any:
    """The response for ``url``; errors as the module docstring says."""
    headers = dict(_parse_header(h) for h in opts.headers)
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None:  # user:password@ becomes basic auth, as curl makes it
        import base64

        pair = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(
            parts.password or "")
        headers.setdefault("Authorization",
                           "Basic " + base64.b64encode(pair.encode()).decode("ascii"))
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    headers.setdefault("User-Agent", "atomic-deploy")
    req = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(_Redirects({k.lower() for k in headers}))
    label = show(redact_safe(url))
    try:
        return opener.open(req, timeout=opts.timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:
            raise InvalidInput(f"fetching {what} {label} failed: a redirect loop, or more "
                               f"than {_Redirects.max_redirections} redirects", _NOTHING) from None
        reason = f"HTTP {exc.code} {exc.reason}".rstrip()
        cls = OperationFailed if exc.code >= 500 else InvalidInput
        raise cls(f"fetching {what} {label} failed: {reason}", _NOTHING) from None
    except urllib.error.URLError as exc:
        raise _network_error(exc.reason, what, label, opts.timeout) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _network_error(exc, what, label, opts.timeout) from None


def _network_error(reason: Any, what: str, label: str, timeout: float) -> AtomicDeployError:
    if isinstance(reason, FileNotFoundError):
        return InvalidInput(f"{what} {label} does not exist", _NOTHING)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return OperationFailed(f"fetching {what} {label} failed: no answer within "
                               f"{timeout:g} s (--fetch-timeout)", _NOTHING)
    why = (reason.strerror or str(reason)) if isinstance(reason, OSError) else str(reason)
    if isinstance(reason, PermissionError):
        return InvalidInput(f"cannot read {what} {label}: {why}", _NOTHING)
    return OperationFailed(f"fetching {what} {label} failed: {why}", _NOTHING)


class _Body:
    """The response body as the extractor reads it: hashed and counted on the way, a stall or
    a body cut short raised as OperationFailed (never OSError: the extractor would take that
    for a corrupt archive)."""

    def __init__(self, resp: Any, label: str, opts: FetchOptions,
                 checkpoint: Callable[[str], None] | None = None) -> None:
        self.resp, self.label, self.opts = resp, label, opts
        self.checkpoint = checkpoint
        self.sha = hashlib.sha256()
        self.done = 0
        length = resp.headers.get("Content-Length") if resp.headers else None
        self.total: int | None = int(length) if length and length.isdigit() else None
        self.ended = False

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            return b"".join(iter(lambda: self.read(_CHUNK), b""))
        if self.ended or n == 0:
            return b""
        if self.checkpoint is not None:
            # A signal acts between chunks, not only between files (one big file, a slow
            # server); the step is the copy's own (silent under -v, its faults apply).
            self.checkpoint("copy-file")
        try:
            data: bytes = self.resp.read(n)
        except (socket.timeout, TimeoutError):
            raise OperationFailed(
                f"the download of {self.label} stalled: no data for {self.opts.timeout:g} s "
                f"after {self.done} bytes (--fetch-timeout)") from None
        except http.client.IncompleteRead:
            raise self._short() from None
        except (OSError, http.client.HTTPException) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise OperationFailed(f"the download of {self.label} failed after {self.done} "
                                  f"bytes: {why or type(exc).__name__}") from None
        if not data:
            self.ended = True
            if self.total is not None and self.done < self.total:
                raise self._short()
            return b""
        self.done += len(data)
        self.sha.update(data)
        if self.opts.progress is not None:
            self.opts.progress(self.done, self.total)
        return data

    def _short(self) -> OperationFailed:
        of = f" of {self.total}" if self.total is not None else ""
        return OperationFailed(f"the download of {self.label} was cut short: {self.done}{of} "
                               "bytes received")

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def expected_digest(url: str, opts: FetchOptions) -> str | None:
    """The sha256 the body must have: ``--sha256 HEX``, or with ``auto`` the one the
    ``URL.sha256`` file holds (sha256sum's format; a file of several lines must name the
    URL's file)."""
    if opts.sha256 is None:
        return None
    if opts.sha256 != "auto":
        return opts.sha256.lower()
    parts = urllib.parse.urlsplit(url)
    sums_url = urllib.parse.urlunsplit(parts._replace(path=parts.path + ".sha256"))
    label = show(redact_safe(sums_url))
    resp = _open(sums_url, opts, "the checksum file")
    with resp:
        body = _Body(resp, label, FetchOptions(timeout=opts.timeout))
        text = body.read(_MAX_SUMS + 1)
    if len(text) > _MAX_SUMS:
        raise InvalidInput(f"the checksum file {label} is too large to be one", _NOTHING)
    name = urllib.parse.unquote(os.path.basename(parts.path))
    lines = [line.split() for line in text.decode("utf-8", "replace").splitlines()
             if line.strip() and not line.startswith("#")]
    found = [w[0] for w in lines if _HEX.fullmatch(w[0]) and (
        len(lines) == 1 or (len(w) > 1 and w[1].lstrip("*") in (name, "./" + name)))]
    if len(found) != 1:
        raise InvalidInput(f"the checksum file {label} holds no sha256 for {show(name)} "
                           "(sha256sum's format: HEX  NAME)", _NOTHING)
    return found[0].lower()


def fetch_into(url: str, dest: str, opts: FetchOptions, checkpoint: Callable[[str], None], *,
               strip_components: int = 0, fsync_each: bool = False) -> ExtractStats:
    """Fetch the tar archive at ``url`` into the existing, empty folder ``dest`` (as
    ``extract_tarball`` would extract it) and check the whole body's sha256. Returns only once
    the digest matched; on any error ``dest`` holds a partial tree the caller removes."""
    check(url, opts)
    want = expected_digest(url, opts)
    label = show(redact_safe(url))
    resp = _open(url, opts, "the build")
    with resp:
        body = _Body(resp, label, opts, checkpoint)
        try:
            stats = extract_stream(body, dest, f"the download {label}", checkpoint,
                                   fsync_each=fsync_each, strip_components=strip_components)
            body.drain()  # the digest is of every byte, trailing padding included
        except InvalidInput:
            # Not a (whole) tar archive: if the bytes are not the ones expected either, that
            # is the clearer news (an HTML error page, the wrong file).
            if want is not None:
                body.drain()
                _compare(want, body, label)
            raise
    _compare(want, body, label)
    opts.digest = body.sha.hexdigest()
    return stats


def _compare(want: str | None, body: _Body, label: str) -> None:
    got = body.sha.hexdigest()
    if want is not None and got != want:
        raise InvalidInput(f"the download {label} does not match its sha256: expected {want}, "
                           f"got {got} ({body.done} bytes)")

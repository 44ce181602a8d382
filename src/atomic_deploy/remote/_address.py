"""Which ROOT arguments name a root on another machine, and how they are spelt.

Two forms, as rsync and scp read them::

    [user@]host:path            a colon before any slash; ``./a:b`` and ``/x:y`` stay local
    ssh://[user@]host[:port]/path

A host that starts with ``-`` is refused: ssh would read it as an option.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInput


@dataclass(frozen=True)
class RemoteRoot:
    host: str
    path: str
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        """What ssh is given as its destination (the port goes to ``-p``)."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def label(self) -> str:
        """The host as the user wrote it, for messages: ``deploy@web1``."""
        where = self.destination
        return f"{where}:{self.port}" if self.port else where

    def __str__(self) -> str:
        return f"{self.label}:{self.path}" if not self.port else \
            f"ssh://{self.label}{self.path}"


def _bad(text: str, why: str) -> InvalidInput:
    from .._layout import show

    return InvalidInput(f"remote root {show(text)!r}: {why}", "nothing was changed")


def _user_host(text: str, userhost: str) -> tuple[str | None, str]:
    user, _, host = userhost.rpartition("@")
    if host.startswith("[") and host.endswith("]"):  # [::1]
        host = host[1:-1]
    if not host:
        raise _bad(text, "no host name before the colon")
    if host.startswith("-") or user.startswith("-"):
        raise _bad(text, "a host or user starting with '-' would be read by ssh as an option")
    if any(c.isspace() or c in "/\\'\"`$;&|<>()*?!{}" for c in host + user) or "\0" in text:
        raise _bad(text, "the host or user name has characters no host name has")
    return (user or None), host


def parse_root(text: str) -> RemoteRoot | None:
    """The remote root ``text`` names, or None when it is a local path."""
    if text.startswith("ssh://"):
        rest = text[len("ssh://"):]
        authority, slash, path = rest.partition("/")
        if not slash or not path:
            raise _bad(text, "an ssh:// root needs a path after the host, as in "
                             "ssh://user@host:2222/srv/app")
        userinfo, at, hostport = authority.rpartition("@")
        port_text: str = ""
        if hostport.startswith("[") and "]" in hostport:  # [::1]:2222
            end = hostport.index("]") + 1
            hostport, port_text = hostport[:end], hostport[end:]
            if port_text and not port_text.startswith(":"):
                raise _bad(text, "unexpected text after the ]")
            port_text = port_text[1:]
        elif ":" in hostport:
            hostport, _, port_text = hostport.partition(":")
        port: int | None = None
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise _bad(text, f"{port_text!r} is not a port number")
            port = int(port_text)
        host_part = userinfo + at + hostport
        user, host = _user_host(text, host_part)
        return RemoteRoot(host, "/" + path, user, port)
    colon = text.find(":")
    first_slash = text.find("/")
    if colon <= 0 or (first_slash != -1 and first_slash < colon):
        return None  # ./a:b, /x:y, :path and plain paths are local (rsync's rule)
    if text.startswith("["):  # [::1]:/srv/app
        end = text.find("]:")
        if end == -1:
            return None
        colon = end + 1
    userhost, path = text[:colon], text[colon + 1:]
    if "@[" in userhost:  # user@[::1]:path
        end = text.find("]:")
        if end != -1:
            userhost, path = text[:end + 1], text[end + 2:]
    if path.startswith(":"):
        raise _bad(text, "host::module is rsync daemon syntax; give host:/path")
    if not path:
        raise _bad(text, "no path after the colon (give host:/srv/app)")
    user, host = _user_host(text, userhost)
    return RemoteRoot(host, path, user)


def dash_host_refusal(text: str) -> InvalidInput | None:
    """The refusal ``parse_root`` gives ``text`` when it names a remote root whose host or
    user starts with ``-`` (``-oProxyCommand=x:/srv/app``); None for anything else."""
    if not text.startswith("-"):
        return None
    try:
        parse_root(text)
    except InvalidInput as exc:
        return exc if "starting with '-'" in exc.message else None
    return None

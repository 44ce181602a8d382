"""A single remote root's output with the host named in it (docs/remote.md#output).

The host's tool knows only its path (``/srv/app``); on this machine the user may be deploying
to several hosts that all have ``/srv/app``. So what comes back is rewritten here: the error
line says ``web1: ...`` (as the errors raised on this side, ``web1 refused the login``, do),
``status`` says ``root  web1:/srv/app``, ``list`` starts ``releases on web1:/srv/app``, and
every ``--json`` object gets ``"host": "web1:/srv/app"`` (as a dry run's and a fleet's do),
doctor's ``root`` check says ``web1: /srv/app is a writable directory``.
"""

from __future__ import annotations

import json

from ._address import RemoteRoot

ERROR = "atomic-deploy: error: "


def error_message(line: str, root: RemoteRoot) -> str | None:
    """The message of the host's error line, the host named first; None when ``line`` is not
    an error line (hook output, warnings, progress pass through as they are)."""
    if not line.startswith(ERROR):
        return None
    return named(line[len(ERROR):], root)


def named(message: str, root: RemoteRoot) -> str:
    """``message`` with ``LABEL: `` in front, unless it already starts with the host."""
    label = root.label
    if message.startswith((f"{label}: ", f"{label} ", f"{root}")):
        return message
    return f"{label}: {message}"


def named_output(command: str, out: str, root: RemoteRoot, as_json: bool) -> str:
    """What the host's tool printed on stdout, the host named in it."""
    if as_json:
        try:
            payload = json.loads(out)
        except ValueError:
            return out
        if not isinstance(payload, dict):
            return out
        payload["host"] = str(root)
        if payload.get("ok") is False and isinstance(payload.get("error"), str):
            payload["error"] = named(payload["error"], root)
        return json.dumps(payload, sort_keys=True) + "\n"
    if command == "status":
        first, nl, rest = out.partition("\n")
        key, sep, _path = first.partition("  ")
        if key == "root" and sep:  # "root  /srv/app" (the value aligned with the others)
            return f"{key}{sep}{_path[:len(_path) - len(_path.lstrip())]}{root}{nl}{rest}"
    elif command == "list" and out.strip():
        if out.strip() == "no releases":
            return f"no releases on {root}\n"
        return f"releases on {root}\n{out}"
    return out


def named_checks(text: str, root: RemoteRoot) -> str:
    """doctor's checks with the host named in the ``root`` check's detail:
    ``fail  root  web1: ROOT /srv/app does not exist``."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        status, sep, rest = line.partition("  ")
        name = rest.lstrip()
        if sep and status.strip() and name.startswith("root  "):
            detail = name[len("root"):].lstrip()
            lines[i] = line[:len(line) - len(detail)] + named(detail, root)
            break
    return "\n".join(lines)

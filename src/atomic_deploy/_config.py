"""``atomic-deploy.toml``: every flag's value, per root. Flags given on the command line win.

Read with ``tomllib`` on Python 3.11+ and with ``tomli`` (the same parser, a dependency on older
Pythons, bundled in the single-file build) before that. Every problem with the file is one
``InvalidInput`` line, never a traceback: ``load`` refuses it, ``load_lenient`` (for commands
that must not be blocked by it, like rollback) reports it and goes on without it.
"""

from __future__ import annotations

import os
import sys

from ._layout import show
from .errors import InvalidInput

TYPE_CHECKING = False  # typing costs start-up time at every deploy
if TYPE_CHECKING:
    from typing import Any, Callable

FILENAME = "atomic-deploy.toml"

# key -> accepted Python types. A hook key holds a shell string (one command) or a list of
# commands, each a shell string or an argument list (see ``hooks``).
_HOOK = (str, list)
# Hook keys that hold any number of commands, like their repeatable flags; health_check is one.
HOOK_LISTS = ("check", "after_switch", "on_failure")
_ARGV_EXAMPLE = '[["systemctl", "reload", "nginx"]]'
KEYS: dict[str, tuple[type, ...]] = {
    "keep": (int, str),  # a number of releases, or "all" (checked with the other options)
    "wait": (int, float),
    "message": (str,),
    "shared_dirs": (list,),
    "shared_files": (list,),
    "create_missing": (bool,),
    "check": _HOOK,
    "after_switch": _HOOK,
    "on_failure": _HOOK,
    "health_check": _HOOK,
    "health_url": (str,),
    "health_timeout": (int, float),
    "health_retries": (int,),
    "health_interval": (int, float),
    "hook_timeout": (int, float),
    "strip_components": (int,),
    "refuse_external_links": (bool,),
    "revision": (str,),
    "link_unchanged": (bool,),
    "checksum": (bool,),
    "trust_mtime": (bool,),
    "link_writable": (bool,),
    "digest": (bool,),
    "jobs": (int,),
    "fsync": (bool,),
    # remote roots: read from the --config file on the deploying machine
    "ssh": (str,),
    "remote_python": (str,),
    "connect_timeout": (int, float),
    "accept_new_host_keys": (bool,),
    "compress": (bool,),
    # named fleets, for ROOT given as @NAME: read from the deploying machine's file (fleet.md)
    "fleets": (dict,),
}
# The keys above that only the deploying machine's side uses.
REMOTE_KEYS = ("ssh", "remote_python", "connect_timeout", "accept_new_host_keys", "compress",
               "fleets")


def _parser(path: str) -> Any:
    """``tomllib`` on 3.11+, else ``tomli``; InvalidInput when neither can be imported (a
    source install that skipped dependencies)."""
    try:
        if sys.version_info >= (3, 11):
            import tomllib

            return tomllib
        import tomli  # type: ignore[import-not-found,unused-ignore]

        return tomli
    except ImportError:
        raise InvalidInput(
            f"cannot read {show(path)}: TOML config files need Python 3.11+ or the tomli "
            f"package, which this installation lacks (Python {sys.version.split()[0]}; "
            "pip install tomli)",
            "nothing was changed",
        ) from None


def config_path(root: str, explicit: str | None = None) -> str | None:
    """The config file that applies: ``explicit``, or ``ROOT/atomic-deploy.toml`` if present."""
    if explicit:
        return explicit
    path = os.path.join(root, FILENAME)
    return path if os.path.isfile(path) else None


# A remote root's own config file, as (where it is, for messages; its bytes): read from the
# host with the first round trip and parsed here, so the host's python needs no TOML parser.
Fetched = tuple[str, bytes]


def read(root: str, explicit: str | None = None,
         fetched: Fetched | None = None) -> tuple[str | None, dict[str, Any]]:
    """(path, table) of the config file, keys with dashes spelled with underscores; (None, {})
    when there is none. Values are not checked (see ``check_value``)."""
    path = fetched[0] if fetched is not None else config_path(root, explicit)
    if path is None:
        return None, {}

    def bad(what: str) -> InvalidInput:
        return InvalidInput(f"config file {show(path)} {what}", "nothing was changed")

    try:
        if fetched is not None:
            raw = fetched[1]
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except FileNotFoundError:
        raise bad("does not exist") from None
    except IsADirectoryError:
        raise bad("is a folder, not a file") from None
    except OSError as exc:
        raise bad(f"cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                  "TOML files are UTF-8") from None
    toml = _parser(path)
    try:
        data = toml.loads(text)
    except Exception as exc:  # TOMLDecodeError; anything else the parser trips on, as one line
        raise InvalidInput(f"{show(path)}: {exc}", "nothing was changed") from None
    return path, {str(k).replace("-", "_"): v for k, v in data.items()}


def check_value(path: str, key: str, value: Any) -> None:
    """InvalidInput for an unknown key or a value of the wrong type."""
    if key not in KEYS:
        flag = key[3:] if key.startswith("no_") else ""
        if KEYS.get(flag) == (bool,):  # the spelling of a --no-X flag: the key is X
            raise InvalidInput(f"{show(path)}: unknown setting {key!r}: to turn {flag} off, "
                               f"write {flag} = false",
                               "nothing was changed")
        raise InvalidInput(f"{show(path)}: unknown setting {key!r} (known: "
                           f"{', '.join(sorted(KEYS))})", "nothing was changed")
    types = KEYS[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise InvalidInput(f"{show(path)}: {key} has the wrong type "
                           f"({type(value).__name__})", "nothing was changed")
    if key in HOOK_LISTS or key == "health_check":
        _check_hook_shape(path, key, value)
    elif key == "fleets":
        check_fleets(path, value)
    elif isinstance(value, list) and not all(isinstance(x, str) for x in value):
        raise InvalidInput(f"{show(path)}: {key} must be a list of strings",
                           "nothing was changed")


def is_fleet_name(text: str) -> bool:
    """``@NAME``: a fleet named in the config file (``./@x`` is the local folder ``@x``)."""
    return text.startswith("@")


def check_fleets(path: str, value: object) -> None:
    """InvalidInput unless ``value`` (the config file's ``fleets`` table) is a table of fleets,
    each ``roots = [ROOT, ...]``, or ``hosts = [[user@]host, ...]`` and ``root = PATH``."""

    def bad(what: str) -> InvalidInput:
        return InvalidInput(f"{show(path)}: {what}", "nothing was changed")

    if not isinstance(value, dict):
        raise bad("fleets must be a table of fleets: [fleets.NAME] with roots = [...], or "
                  "hosts = [...] and root = \"/path\"")
    for name, fleet in value.items():
        if not isinstance(fleet, dict):
            raise bad(f"fleets.{name} must be a table: roots = [...], or hosts = [...] and "
                      "root = \"/path\"")
        unknown = sorted(set(fleet) - {"roots", "hosts", "root"})
        if unknown:
            raise bad(f"fleets.{name}: unknown setting {unknown[0]!r} (known: hosts, root, "
                      "roots)")
        for key in ("roots", "hosts"):
            items = fleet.get(key)
            if items is not None and (not isinstance(items, list) or not items or not all(
                    isinstance(x, str) and x.strip() for x in items)):
                raise bad(f"fleets.{name}.{key} must be a list of one or more non-empty "
                          "strings")
        root = fleet.get("root")
        if "roots" in fleet and ("hosts" in fleet or "root" in fleet):
            raise bad(f"fleets.{name}: give roots = [...], or hosts = [...] and root, not both")
        if "roots" not in fleet and ("hosts" not in fleet or not isinstance(root, str)
                                     or not root):
            raise bad(f"fleets.{name}: give roots = [\"host:/path\", ...], or hosts = [...] "
                      "and root = \"/path\"")
        if isinstance(root, str) and (":" in root.split("/", 1)[0] or root.startswith("ssh://")):
            raise bad(f"fleets.{name}.root is the path on every host, not {root!r}")
        for host in fleet.get("hosts") or []:
            if any(c.isspace() for c in host) or "/" in host or ":" in host:
                raise bad(f"fleets.{name}.hosts: {host!r} is not one [user@]host")


def _check_hook_shape(path: str, key: str, value: Any) -> None:
    """A hook key: a string, or a list of commands, each a string or a list of strings. A list
    of strings is several shell commands (what a Deployer user writes), never one argv: an
    argument vector is a list inside the list. Empty commands are the options check's."""
    if isinstance(value, str):
        return
    for cmd in value:
        if not isinstance(cmd, (str, list)) or (
                isinstance(cmd, list) and not all(isinstance(x, str) for x in cmd)):
            raise InvalidInput(
                f"{show(path)}: {key} must be a command string or a list of commands, each a "
                f"string (run by sh -c) or a list of strings (an argument vector, no shell: "
                f"{_ARGV_EXAMPLE}); found {type(cmd).__name__} {cmd!r}", "nothing was changed")
    if key == "health_check" and len(value) != 1:
        raise InvalidInput(
            f"{show(path)}: health_check is one command, not a list of {len(value)}: a string "
            f"(run by sh -c), or [[\"curl\", \"-fsS\", \"URL\"]] for an argument vector",
            "nothing was changed")


def hooks(key: str, value: Any) -> Any:
    """A checked hook setting as DeployOptions holds it: for check, after_switch and
    on_failure a list of commands (a string is one), for health_check one command."""
    if key == "health_check":
        return value[0] if isinstance(value, list) and len(value) == 1 else value
    if isinstance(value, str):
        return [value]
    return list(value)


def from_json(text: str) -> dict[str, Any]:
    """Settings the deploying machine read from its --config file and passed on (--config-json)."""
    import json

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"--config-json: {exc}", "nothing was changed") from None
    if not isinstance(data, dict):
        raise InvalidInput("--config-json: not a table", "nothing was changed")
    for key, value in data.items():
        check_value("--config-json", key, value)
    return data


def load(root: str, explicit: str | None = None,
         fetched: Fetched | None = None) -> dict[str, Any]:
    """The validated settings from ``explicit`` or ``ROOT/atomic-deploy.toml`` (if present)."""
    path, data = read(root, explicit, fetched)
    for key, value in data.items():
        check_value(path or "", key, value)
    return data


def load_lenient(root: str, explicit: str | None, keys: tuple[str, ...],
                 warn: Callable[[str], None], fetched: Fetched | None = None) -> dict[str, Any]:
    """The settings among ``keys`` that can be used; every problem is passed to ``warn`` instead
    of raised: a file that cannot be read is skipped whole, a bad value on its own. Settings
    outside ``keys`` are not looked at (the command does not use them)."""
    try:
        path, data = read(root, explicit, fetched)
    except InvalidInput as exc:
        warn(f"{exc.message}; going on without the config file")
        return {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in KEYS and key not in keys:
            continue  # another command's setting; an unknown one may be a misspelt hook
        try:
            check_value(path or "", key, value)
        except InvalidInput as exc:
            warn(f"{exc.message}; going on without it")
            continue
        out[key] = value
    return out

"""``atomic-deploy.toml``: every flag's value, per root. Flags given on the command line win.

Read with ``tomllib`` on Python 3.11+, or the ``tomli`` package where installed; on older
Pythons without it a config file is an error with a clear message, never a traceback.
"""

from __future__ import annotations

import os
from typing import Any

from ._layout import show
from .errors import InvalidInput

FILENAME = "atomic-deploy.toml"

# key -> accepted Python types. A hook is a shell string or an argument list.
_HOOK = (str, list)
KEYS: dict[str, tuple[type, ...]] = {
    "keep": (int,),
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
    "revision": (str,),
    "link_unchanged": (bool,),
    "checksum": (bool,),
    "trust_mtime": (bool,),
    "link_writable": (bool,),
    "digest": (bool,),
    "jobs": (int,),
    "fsync": (bool,),
}


def _toml_loads(text: str, path: str) -> dict[str, Any]:
    try:
        import tomllib as toml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            import tomli as toml  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            raise InvalidInput(
                f"cannot read {show(path)}: TOML config files need Python 3.11+ or the tomli "
                "package (pip install tomli)",
                "nothing was changed",
            ) from None
    try:
        data = toml.loads(text)
    except Exception as exc:  # tomllib.TOMLDecodeError; tomli's has the same shape
        raise InvalidInput(f"{show(path)}: {exc}", "nothing was changed") from None
    if not isinstance(data, dict):  # pragma: no cover - TOML documents are tables
        raise InvalidInput(f"{show(path)}: not a table")
    return data


def load(root: str, explicit: str | None = None) -> dict[str, Any]:
    """The validated settings from ``explicit`` or ``ROOT/atomic-deploy.toml`` (if present)."""
    path = explicit or os.path.join(root, FILENAME)
    if not os.path.isfile(path):
        if explicit:
            raise InvalidInput(f"config file {show(path)} does not exist", "nothing was changed")
        return {}
    with open(path, encoding="utf-8") as f:
        data = _toml_loads(f.read(), path)
    data = {k.replace("-", "_"): v for k, v in data.items()}
    for key, value in data.items():
        if key not in KEYS:
            raise InvalidInput(f"{show(path)}: unknown setting {key!r} (known: "
                               f"{', '.join(sorted(KEYS))})", "nothing was changed")
        types = KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InvalidInput(f"{show(path)}: {key} has the wrong type "
                               f"({type(value).__name__})", "nothing was changed")
        if isinstance(value, list) and not all(isinstance(x, str) for x in value):
            raise InvalidInput(f"{show(path)}: {key} must be a list of strings",
                               "nothing was changed")
    return data

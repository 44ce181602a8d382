"""Which roots a fleet command acts on: several ROOT arguments, ``--hosts FILE`` and one
ROOT path, or ``@NAME``, a fleet named in the deploying machine's config file."""

from __future__ import annotations

from .._config import check_fleets
from .._layout import show
from ..errors import InvalidInput


def read_hosts(path: str, root_path: str) -> list[str]:
    """``[user@]host`` per line of ``path`` (blank lines and ``#`` comments skipped), each
    joined with ``root_path`` into ``host:root_path``."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidInput(f"cannot read the hosts file {show(path)}: {why}",
                           "nothing was changed") from None
    hosts = []
    for n, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        if any(c.isspace() for c in text) or "/" in text:
            raise InvalidInput(f"{show(path)} line {n}: {text!r} is not one [user@]host",
                               "nothing was changed")
        hosts.append(text)
    if not hosts:
        raise InvalidInput(f"the hosts file {show(path)} names no host", "nothing was changed")
    if ":" in root_path.split("/", 1)[0] or root_path.startswith("ssh://"):
        raise InvalidInput(f"with --hosts give ROOT as a path on the hosts, not {root_path!r}",
                           "nothing was changed")
    return [f"{h}:{root_path}" for h in hosts]


def named_fleet(path: str, table: dict[str, object], name: str) -> list[str]:
    """The roots of the fleet ``name`` (without its ``@``) in ``table``, the settings read
    from the config file ``path``."""
    fleets = table.get("fleets")
    if fleets is None:
        raise InvalidInput(f"no fleet named {name!r}: {show(path)} defines no fleets "
                           f"([fleets.{name or 'NAME'}] with roots = [...])", "nothing was changed")
    check_fleets(path, fleets)
    assert isinstance(fleets, dict)
    fleet = fleets.get(name)
    if fleet is None:
        known = ", ".join(sorted(fleets)) or "none"
        raise InvalidInput(f"no fleet named {name!r} in {show(path)} (fleets there: {known})",
                           "nothing was changed")
    if "roots" in fleet:
        return list(fleet["roots"])
    return [f"{host}:{fleet['root']}" for host in fleet["hosts"]]


def check_distinct(roots: list[str]) -> None:
    seen: set[str] = set()
    for r in roots:
        if r in seen:
            raise InvalidInput(f"{show(r)} is named twice", "nothing was changed")
        seen.add(r)

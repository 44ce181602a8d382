"""Small JSON state files written by rename, and the append-only JSON-lines log."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: importing typing costs more than all of `status` does
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, Callable, ClassVar

# Readers (status, list) import only os and the decoder's C scanner: `import json` pulls in `re`
# and enum, a third of what `atomic-deploy status` may cost in all. Writers use the encoder's C
# core (dumps, below) the same way.
_scan: Callable[[str, int], tuple[Any, int]] | None
try:
    from _json import make_scanner as _make_scanner
except ImportError:  # not CPython: json.loads below
    _scan = None
else:
    class _Decoder:
        """The attributes json.JSONDecoder() gives its scanner, with the same defaults."""

        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                          "-Infinity": float("-inf")}.__getitem__
        memo: ClassVar[dict[str, str]] = {}

    _scan = _make_scanner(_Decoder())  # type: ignore[arg-type]  # it reads only these attributes

_SPACE = " \t\n\r"  # what json.loads skips around a value


def loads(text: str) -> Any:
    """json.loads(text), without importing json when the text is well-formed."""
    if _scan is not None:
        start = len(text) - len(text.lstrip(_SPACE))
        try:
            value, end = _scan(text, start)
        except Exception:
            pass
        else:
            if end == len(text.rstrip(_SPACE)):
                return value
    import json

    return json.loads(text)


# And `--json` output through the encoder's C core, as json.dumps(value, sort_keys=True) runs it.
_make_encoder: Callable[..., Callable[[Any, int], Any]] | None
try:
    from _json import encode_basestring_ascii as _escape
    from _json import make_encoder as _make_encoder
except ImportError:  # not CPython: json.dumps below
    _make_encoder = None


def _not_serializable(value: Any) -> Any:
    raise TypeError  # json.dumps, below, says it in its words


def dumps(value: Any) -> str:
    """json.dumps(value, sort_keys=True), without importing json when the value is plain data."""
    if _make_encoder is not None and not isinstance(value, str):
        try:
            # Fresh markers (check_circular) each time, as json.dumps has; then indent None,
            # the default separators, sort_keys, skipkeys False, allow_nan True.
            encode = _make_encoder({}, _not_serializable, _escape, None, ": ", ", ", True,
                                   False, True)
            return "".join(encode(value, 0))
        except Exception:  # anything json.dumps would refuse, or another signature here
            pass
    import json

    return json.dumps(value, sort_keys=True)


class Record:
    """What a dataclass would give a plain ``__slots__`` class (dataclasses cost start-up time):
    equality, repr, and to_dict() for JSON output."""

    __slots__: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and type(other) is type(self) \
            and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass with eq

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({fields})"


# The default of a parameter that stands for a new empty list (a dataclass's
# ``field(default_factory=list)``): None would be a value a caller could mean.
FACTORY: Any = object()


def as_plain_dict(record: Record) -> dict[str, Any]:
    """What dataclasses.asdict() gives: the fields in order, lists, tuples and dicts in them
    (and Records) copied at any depth, so the result can be changed without changing
    ``record``."""
    return {k: _copied(getattr(record, k)) for k in record.__slots__}


def _copied(value: Any) -> Any:
    if isinstance(value, Record):
        return as_plain_dict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v) for v in value)
    if isinstance(value, dict):
        return type(value)((_copied(k), _copied(v)) for k, v in value.items())
    return value


def random_suffix() -> str:
    """64 random bits from the OS (what secrets.token_hex does, without its import cost): the
    hidden temp names of files written by rename, here and elsewhere."""
    return os.urandom(8).hex()


def write_json_atomic(path: str, data: Any, durable: bool = True,
                      sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never a torn one.

    ``durable``: the new file's data is flushed before the rename, and (with ``sync_dir``) the
    rename itself after it. Without ``sync_dir`` a power cut may bring back the old file, but
    never a torn or empty new one: for updates where the old content is still good enough.
    """
    import contextlib

    from . import _platform

    directory = os.path.dirname(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for attempt in range(100):  # a name already taken (planted, or a crash's) is skipped
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{random_suffix()}")
        try:
            fd = os.open(tmp, flags, 0o644)
            break
        except FileExistsError:
            if attempt == 99:
                raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(data) + "\n")
            f.flush()
            if durable:
                _platform.fsync_fd(f.fileno())
        if os.environ.get("ATOMIC_DEPLOY_FAULT"):  # only a fault, never a deferred signal, here
            from ._signals import _inject

            _inject(os.environ["ATOMIC_DEPLOY_FAULT"],
                    f"{os.path.basename(path).partition('.')[0]}-temp-written")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable and sync_dir:
        _platform.fsync_dir(directory)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return loads(f.read())


def append_json_line(path: str, record: dict[str, Any]) -> None:
    """Append one record durably. O_APPEND writes of one line do not interleave with others."""
    from . import _platform

    # ASCII-escaped: a path or message that is not valid UTF-8 (surrogates) still fits.
    line = (dumps(record) + "\n").encode("ascii")
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A power cut tore the previous line: start on a fresh line so this record survives.
            line = b"\n" + line
        os.write(fd, line)
        _platform.fsync_fd(fd)
    finally:
        os.close(fd)


def json_records(lines: Iterable[str], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append each line that is a JSON object to ``records``; skip the rest (a torn line)."""
    for line in lines:
        try:
            rec = loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def read_json_lines(path: str) -> list[dict[str, Any]]:
    """All well-formed records; a torn last line (power cut mid-append) is skipped, not fatal."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return json_records(f, [])
    except FileNotFoundError:
        return []

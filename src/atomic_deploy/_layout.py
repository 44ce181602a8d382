"""Where things live inside ROOT, release ids, and the only code allowed to delete anything."""

from __future__ import annotations

import errno
import os
import stat

from ._jsonfile import random_suffix, read_json

# `status` and `list` import this module: no typing, dataclasses, re or datetime at import time
# (each costs more than the rest of the command), hence plain classes below.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime as _dt
    from typing import Any, Callable

    from .errors import InvalidInput

STATE_DIR = ".atomic-deploy"
RELEASES = "releases"
CURRENT = "current"
# Half-built and half-deleted releases sit in releases/ under these hidden names, so a rename
# stays inside one folder (one filesystem) and nothing under them is ever reachable via current.
STAGING_PREFIX = ".atomic-deploy-staging."
TRASH_PREFIX = ".atomic-deploy-trash."
ID_FORMAT = "%Y%m%d%H%M%S"
# Operations that switch current, and the journal phase of one putting it back.
SWITCH_OPS = ("deploy", "activate", "rollback")
SWITCHING_BACK = "switching-back"
# Temp files of the state's atomic writes (``.holder.json.<random>``): left only by a kill.
STATE_TEMP_PREFIXES = (".holder.json.", ".journal.json.")


class Layout:
    """The paths of one root (absolute when made by the commands)."""

    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"Layout(root={self.root!r})"

    @property
    def releases(self) -> str:
        return os.path.join(self.root, RELEASES)

    @property
    def current(self) -> str:
        return os.path.join(self.root, CURRENT)

    @property
    def state(self) -> str:
        return os.path.join(self.root, STATE_DIR)

    @property
    def lock(self) -> str:
        return os.path.join(self.state, "lock")

    @property
    def holder(self) -> str:
        return os.path.join(self.state, "holder.json")

    @property
    def journal(self) -> str:
        return os.path.join(self.state, "journal.json")

    @property
    def history(self) -> str:
        return os.path.join(self.state, "history.jsonl")

    @property
    def tmp(self) -> str:
        return os.path.join(self.state, "tmp")

    def release(self, release_id: str) -> str:
        return os.path.join(self.releases, release_id)

    @property
    def manifests(self) -> str:
        return os.path.join(self.state, "manifests")

    def manifest(self, release_id: str) -> str:
        """The release's manifest (_manifest): what it held when it was deployed."""
        return os.path.join(self.manifests, release_id + ".jsonl")


def _invalid(message: str, state: str) -> InvalidInput:
    """InvalidInput(message, state). The error classes are loaded when one is raised:
    `status` and `list` that succeed never do."""
    from .errors import InvalidInput

    return InvalidInput(message, state)


def show(path: str) -> str:
    """A path for a one-line message: control characters (newlines) escaped, nothing else touched."""
    if not isinstance(path, str):  # an OSError's filename can be bytes or a descriptor number
        path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    if path.isprintable():
        return path
    return repr(path)[1:-1]


def valid_release_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not name.startswith(".") and "/" not in name \
        and "\0" not in name


_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_timestamp(name: str) -> bool:
    """``YYYYMMDDHHMMSS`` naming a real UTC second (without datetime: status imports this)."""
    y, mo, d = int(name[:4]), int(name[4:6]), int(name[6:8])
    h, mi, sec = int(name[8:10]), int(name[10:12]), int(name[12:14])
    if not (1 <= mo <= 12 and h < 24 and mi < 60 and sec < 60 and y >= 1):
        return False
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return 1 <= d <= (_DAYS[mo - 1] - (mo == 2 and not leap))


def release_kind(name: str) -> str:
    """The one parse of a release name.

    ``"timestamp"``: 14 digits naming a real UTC second (our ids, Capistrano's); ``"counter"``:
    fewer than 14 digits (Deployer's 1, 2, 3...); ``"name"``: anything else (made by hand, by
    another tool, or digits that are no timestamp such as ``20251399999999``). Timestamps and
    counters sort numerically after every name; names never crash anything.
    """
    if not (name.isascii() and name.isdigit()):
        return "name"
    if len(name) < 14:
        return "counter"
    return "timestamp" if len(name) == 14 and _is_timestamp(name) else "name"


def looks_generated(name: str) -> bool:
    """Names a deploy tool generates (our and Capistrano's timestamps, Deployer's counters);
    only these may be pruned when not in the history, and they sort numerically."""
    return release_kind(name) != "name"


def all_generated(names: list[str]) -> bool:
    """``all(map(looks_generated, names))``, at a fraction of the cost for our ids: status and
    list ask it of every release. When every name is 14 ASCII digits, their digits are checked
    a column at a time (hours, minutes and seconds as slices of all the names joined), and
    each day (most releases share one with others) once."""
    if names and set(map(len, names)) == {14}:
        digits = "".join(names)
        if not (digits.isascii() and digits.encode().isdigit()):  # (bytes check quicker)
            return all(map(looks_generated, names))
        # hour < 24, minute and second < 60: compared as digits, column by column
        if max(zip(digits[8::14], digits[9::14])) > ("2", "3") or max(digits[10::14]) > "5" \
                or max(digits[12::14]) > "5":
            return False
        return all(_is_timestamp(day + "000000") for day in {n[:8] for n in names})
    days: dict[str, bool] = {}
    for n in names:
        if len(n) == 14 and n.isdigit() and n.isascii():
            # The digits of a real second: hour < 24, minute and second < 60.
            if n[8:10] > "23" or n[10] > "5" or n[12] > "5":
                return False
            day = n[:8]
            ok = days.get(day)
            if ok is None:
                ok = days[day] = _is_timestamp(day + "000000")
            if not ok:
                return False
        elif release_kind(n) == "name":
            return False
    return True


def new_release_id(existing: set[str], now: _dt.datetime | None = None) -> str:
    """UTC timestamp, bumped a second past the newest id so ids stay unique and in deploy order.

    Two deploys in one second, or a clock stepped backwards, therefore get ids slightly ahead of the
    wall clock rather than colliding or sorting before an older release. Only real timestamps
    count: a folder named like no timestamp sorts before every generated id and never crashes this.
    """
    if now is None:  # datetime.now(timezone.utc)'s second, without importing datetime
        import time

        candidate = time.strftime(ID_FORMAT, time.gmtime())
    else:
        candidate = now.replace(microsecond=0, tzinfo=None).strftime(ID_FORMAT)
    newest = max((n for n in existing if release_kind(n) == "timestamp"), default=None)
    # Ids of real seconds, all 14 digits, sort as their times do: one before the candidate is
    # at least a second before it, so the candidate is already past it.
    if newest is None or newest < candidate:
        return candidate
    return _next_second(newest)  # past the candidate, which is not past the newest


def _next_second(name: str) -> str:
    """The id of the second after timestamp id ``name`` (a real second: release_kind checked
    it), as datetime + timedelta(seconds=1) gives it, without importing datetime."""
    y, mo, d = int(name[:4]), int(name[4:6]), int(name[6:8])
    h, mi, sec = int(name[8:10]), int(name[10:12]), int(name[12:14]) + 1
    if sec == 60:
        sec, mi = 0, mi + 1
    if mi == 60:
        mi, h = 0, h + 1
    if h == 24:
        h, d = 0, d + 1
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if d > _DAYS[mo - 1] - (mo == 2 and not leap):
        d, mo = 1, mo + 1
    if mo == 13:
        mo, y = 1, y + 1
    if y > 9999:  # 99991231235959: nothing can sort after it
        raise _invalid(f"release {name} is the last possible timestamp id; rename it",
                       "nothing was changed")
    return f"{y:04d}{mo:02d}{d:02d}{h:02d}{mi:02d}{sec:02d}"


class CurrentLink:
    """What ``ROOT/current`` is, read without following it."""

    __slots__ = ("kind", "release", "resolves", "target")

    def __init__(self, kind: str, target: str | None = None, release: str | None = None,
                 resolves: bool = False) -> None:
        self.kind = kind  # "absent", "symlink", "directory", "file", "other"
        self.target = target  # link text, exactly as stored
        self.release = release  # release id when the link points into releases/
        self.resolves = resolves  # the link leads to an existing folder

    def __repr__(self) -> str:
        return (f"CurrentLink(kind={self.kind!r}, target={self.target!r}, "
                f"release={self.release!r}, resolves={self.resolves!r})")

    @property
    def healthy(self) -> bool:
        return self.kind == "symlink" and self.release is not None and self.resolves


def release_of_target(layout: Layout, target: str) -> str | None:
    """The release whose folder link text ``target`` (``current``'s) leads into, or None.

    What we write, ``releases/ID`` naming a real folder, costs one lstat. Any other text
    (absolute, as Capistrano writes it; with ``..``, through the root's own name; into a
    subfolder; through a link in releases/) is resolved the way the kernel resolves it from
    ROOT (``realpath``: each symlink followed, ``..`` taken after it), and the release is the
    entry directly below the folder that *is* releases/ (same device and inode, so bind mounts
    and links to ROOT count), never a string prefix that a link could fake. Pruning relies on
    this to never delete the live release, whatever form the link has.
    """
    head, _, name = target.partition("/")
    if head == RELEASES and is_release_dir(layout, name):
        return name
    try:
        releases = os.stat(layout.releases)
    except OSError:
        return None
    path = os.path.realpath(os.path.join(layout.root, target))  # an absolute target stays itself
    parts = path.split(os.sep)  # absolute: parts[0] == ""
    for i in range(1, len(parts) - 1):
        try:
            st = os.stat(os.sep.join(parts[: i + 1]))
        except OSError:
            return None  # nothing resolves below here: not in releases/
        if st.st_ino == releases.st_ino and st.st_dev == releases.st_dev:
            name = parts[i + 1]
            return name if valid_release_name(name) else None
    return None


def read_current(layout: Layout) -> CurrentLink:
    try:
        st = os.lstat(layout.current)
    except FileNotFoundError:
        return CurrentLink("absent")
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(layout.current)
        release = release_of_target(layout, target)
        resolves = release is not None and is_release_dir(layout, release) and (
            target == f"{RELEASES}/{release}" or os.path.isdir(layout.current))
        return CurrentLink("symlink", target, release, resolves)
    if stat.S_ISDIR(st.st_mode):
        return CurrentLink("directory")
    if stat.S_ISREG(st.st_mode):
        return CurrentLink("file")
    return CurrentLink("other")


def is_release_dir(layout: Layout, name: str) -> bool:
    """A real folder (not a symlink) directly inside releases/."""
    if not valid_release_name(name):
        return False
    try:
        return stat.S_ISDIR(os.lstat(layout.release(name)).st_mode)
    except OSError:
        return False


def list_releases_dir(layout: Layout) -> list[os.DirEntry[str]]:
    """What releases/ holds (nothing when it is missing), for the functions below to share."""
    try:
        with os.scandir(layout.releases) as it:
            return list(it)
    except FileNotFoundError:
        return []


def release_dirs(layout: Layout, entries: list[os.DirEntry[str]] | None = None) -> list[str]:
    """Names of real folders in releases/; hidden entries, files and symlinks are not releases."""
    if entries is None:
        entries = list_releases_dir(layout)
    # A directory entry's name is never empty, ".", "..", nor holds "/" or NUL: of
    # valid_release_name's rules only the leading dot is left to check.
    return sorted([e.name for e in entries
                   if e.name[0] != "." and e.is_dir(follow_symlinks=False)])


def leftovers(layout: Layout, entries: list[os.DirEntry[str]] | None = None) -> list[str]:
    """Our own hidden staging/trash folders, temp links and state temp files left behind by a
    crash."""
    if entries is None:
        entries = list_releases_dir(layout)
    found = [os.path.join(RELEASES, e.name) for e in entries
             if e.name.startswith((STAGING_PREFIX, TRASH_PREFIX))]
    try:
        for e in os.scandir(layout.tmp):
            found.append(os.path.join(STATE_DIR, "tmp", e.name))
    except FileNotFoundError:
        pass
    found += [os.path.join(STATE_DIR, n) for n in state_temp_files(layout)]
    return sorted(found)


def state_temp_files(layout: Layout) -> list[str]:
    """Names of the state folder's leftover temp files (see STATE_TEMP_PREFIXES)."""
    try:
        with os.scandir(layout.state) as it:
            return [e.name for e in it if e.name.startswith(STATE_TEMP_PREFIXES)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_journal(layout: Layout) -> dict[str, Any] | None:
    """The interrupted operation's journal, if any; unreadable counts as interrupted too."""
    try:
        data = read_json(layout.journal)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"op": "unknown", "corrupt": True}
    return data if isinstance(data, dict) else {"op": "unknown", "corrupt": True}


def check_root_parent(root: str) -> None:
    """A ROOT that does not exist yet is created only inside an existing folder, as ``mkdir``
    (not ``mkdir -p``) would: a mistyped path must not grow a new tree somewhere."""
    path = os.path.abspath(root)
    if os.path.lexists(path):
        return
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        why = "is not a folder" if os.path.lexists(parent) else "does not exist either"
        raise _invalid(f"cannot create ROOT {show(root)}: its parent folder {show(parent)} "
                           f"{why} (mistyped path? only ROOT itself is created, never its "
                           "parents)", "nothing was changed")


def _mkdir_root(path: str) -> None:
    """Create ROOT itself (its parent exists: ``check_root_parent``), mode 0755 less the umask."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def check_root_for_write(root: str, create: bool, allow_current_dir: bool = False) -> Layout:
    """Validate ROOT for a mutating command and make its folders; raise InvalidInput if unusable.

    Only deploy and prepare (``create``) may create ROOT itself; the others need an existing root.
    """
    if os.path.lexists(root) and not os.path.isdir(root):
        raise _invalid(f"ROOT {show(root)} is not a directory", "nothing was changed")
    if not create and not os.path.isdir(root):
        raise _invalid(f"ROOT {show(root)} does not exist", "nothing was changed")
    layout = Layout(os.path.abspath(root))
    if create and os.path.isdir(layout.root):
        check_looks_like_a_root(layout)
    check_root_parent(root)
    try:
        _mkdir_root(layout.root)
    except OSError as exc:
        raise _invalid(
            f"cannot create ROOT {show(root)}: {exc.strerror}", "nothing was changed"
        ) from exc
    if not os.access(layout.root, os.W_OK | os.X_OK):
        why = "read-only filesystem" if _read_only(layout.root) else "permission denied"
        raise _invalid(f"ROOT {show(root)} is not writable ({why})", "nothing was changed")
    st = os.stat(layout.root)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        # Any local user could rename something over current or move releases/ aside.
        raise _invalid(f"ROOT {show(root)} is writable by every user; refusing to deploy "
                           "there (chmod o-w it)", "nothing was changed")
    if not allow_current_dir:
        check_current_is_link(layout)
    if not create and not allow_current_dir and not os.path.isdir(layout.releases):
        raise _invalid(f"nothing deployed in {show(root)} yet (no releases/ folder); nothing "
                           "to roll back to, activate or prune", "nothing was changed")
    for path in (layout.state, layout.releases, layout.tmp):
        try:
            os.mkdir(path, 0o755 if path != layout.tmp else 0o700)
        except FileExistsError:
            if os.path.islink(path):
                raise _invalid(f"{show(path)} is a symlink; refusing to use it",
                                   "nothing was changed") from None
            if not os.path.isdir(path):
                raise _invalid(
                    f"{show(path)} exists but is not a directory", "nothing was changed"
                ) from None
        except OSError as exc:
            raise _invalid(f"cannot create {show(path)}: {exc.strerror}",
                               "nothing was changed") from exc
    for path in (layout.state, layout.tmp):
        check_trusted(path, os.lstat(path))
    for path in (layout.history, layout.journal, layout.holder):
        if os.path.islink(path):
            raise _invalid(f"{show(path)} is a symlink; refusing to use it (remove it)",
                               "nothing was changed")
    return layout


# What a root (ours, Capistrano's, Deployer's, the bash tool's) may hold before its first deploy.
_ROOT_ENTRIES = {RELEASES, CURRENT, STATE_DIR, "shared", "atomic-deploy.toml", ".dep",
                 "revisions.log", ".deploy.lock", ".tmp", "repo", "release", "lost+found"}


def check_looks_like_a_root(layout: Layout) -> None:
    """Refuse to turn a folder full of other things (a build, a home) into a deploy root."""
    try:
        names = os.listdir(layout.root)
    except OSError:
        return  # the writability checks report it
    if not names or any(n in (RELEASES, CURRENT, STATE_DIR) for n in names):
        return
    others = sorted(n for n in names if n not in _ROOT_ENTRIES)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise _invalid(
            f"ROOT {show(layout.root)} is not empty ({show(shown)}) and is not a deploy root; "
            "give a new or empty folder (did you swap SOURCE and ROOT? The order is SOURCE ROOT)",
            "nothing was changed")


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_trusted(path: str, st: os.stat_result) -> None:
    """Refuse state that another unprivileged user could have planted or could tamper with."""
    uid = os.geteuid()
    if st.st_uid not in (0, uid):
        raise _invalid(
            f"{show(path)} is owned by uid {st.st_uid}, not by this user (uid {uid}) or root; "
            "refusing to use it (run as its owner)",
            "nothing was changed",
        )
    if st.st_mode & stat.S_IWOTH:
        raise _invalid(
            f"{show(path)} is writable by every user; refusing to use it (chmod o-w it)",
            "nothing was changed",
        )


def check_current_is_link(layout: Layout) -> None:
    cur = read_current(layout)
    if cur.kind == "directory":
        raise _invalid(
            f"{show(layout.current)} is a real directory, not a symlink; migrate it with "
            f"`atomic-deploy adopt {show(layout.root)}` (moves it into releases/ atomically)",
            "nothing was changed",
        )
    if cur.kind in ("file", "other"):
        raise _invalid(
            f"{show(layout.current)} is not a symlink but a {cur.kind}; releases are folders in "
            f"releases/: move it out of the way (mv {show(layout.current)} "
            f"{show(layout.current)}.old) and deploy again",
            "nothing was changed",
        )


def existing_root(root: str) -> Layout:
    """For read-only commands: ROOT must exist; nothing is created."""
    if not os.path.lexists(root):
        raise _invalid(f"ROOT {show(root)} does not exist", "nothing was changed")
    if not os.path.isdir(root):
        raise _invalid(f"ROOT {show(root)} is not a directory", "nothing was changed")
    return Layout(os.path.abspath(root))


def remove_entry(parent: str, name: str) -> None:
    """Delete ``parent/name`` without ever following a symlink, and only directly inside parent.

    A symlink or file is unlinked (never what a link points to). A folder is removed by an
    fd-based walk (``_remove_tree``) that never follows links inside it either. Our own trash
    folders (``TRASH_PREFIX``, what prune deletes) that turn out big are handed to ``rm -rf``
    once the walk has removed a first slice of them: for large trees rm is measurably faster
    than Python per entry, while for small ones starting a process costs more than the whole
    removal (docs/benchmarks.md). Without a working ``rm`` the walk simply goes on.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"refusing to delete {name!r}")
    path = os.path.join(parent, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    budget = _RM_AFTER if name.startswith(TRASH_PREFIX) else None
    if _remove_tree(parent, name, budget):
        return
    if not _rm_rf(parent, name):
        _remove_tree(parent, name, None)


_RM_AFTER = 4000  # entries removed in Python before a trash folder is handed to rm -rf
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_CLOEXEC", 0)


def _remove_tree(parent: str, name: str, budget: int | None) -> bool:
    """Remove the folder ``parent/name`` and everything in it, never following a symlink.

    Works on folder descriptors (openat/unlinkat): a path component swapped for a symlink while
    it runs cannot redirect it. A folder we may not write into (a read-only folder of a release)
    is made writable first, as it is ours to delete. With ``budget``, stops and returns False
    after about that many entries (the tree is then partly removed); True when it is gone.
    An error names the path it happened at (descriptor-based calls report only a descriptor
    number or a bare name).
    """
    left = [budget if budget is not None else -1]
    pfd = os.open(parent, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
    try:
        if not _empty_dir(pfd, name, left, os.path.join(parent, name)):
            return False
        _rmdir(pfd, name, parent)
    finally:
        os.close(pfd)
    return True


def _empty_dir(pfd: int, name: str, left: list[int], path: str) -> bool:
    """Delete everything inside ``name`` (a folder in ``pfd``, at ``path``); False if the
    budget ran out.

    Depth first with an explicit stack (no recursion limit); each folder is listed once, its
    files unlinked on the way and its subfolders kept by name until their turn.
    """
    stack: list[tuple[int, str, list[str] | None, str]] = [
        (_open_dir(pfd, name, os.path.dirname(path)), name, None, path)]
    try:
        while stack:
            fd, dname, subdirs, where = stack[-1]
            if subdirs is None:
                subdirs = []
                try:
                    with os.scandir(fd) as it:
                        entries = list(it)
                except OSError as exc:
                    raise _at(exc, where) from None
                for entry in entries:
                    if left[0] == 0:
                        return False
                    left[0] -= 1
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    else:
                        _unlink(fd, entry.name, where)
                stack[-1] = (fd, dname, subdirs, where)
            if subdirs:
                child = subdirs.pop()
                try:
                    stack.append((_open_dir(fd, child, where), child, None,
                                  os.path.join(where, child)))
                except FileNotFoundError:
                    pass
                except OSError as exc:  # replaced by a file or a symlink meanwhile: unlink it
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    _unlink(fd, child, where)
            else:
                stack.pop()
                os.close(fd)
                if stack:
                    _rmdir(stack[-1][0], dname, stack[-1][3])
        return True
    finally:
        for fd, _name, _subdirs, _where in stack:
            os.close(fd)


def _at(exc: OSError, path: str) -> OSError:
    """``exc`` again, naming ``path``."""
    return OSError(exc.errno, exc.strerror, path)


def _open_dir(dir_fd: int, name: str, dir_path: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise  # the caller unlinks it
        raise _at(exc, os.path.join(dir_path, name)) from None


def _make_writable(dir_fd: int) -> None:
    st = os.fstat(dir_fd)
    os.chmod(dir_fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


def _remove_at(remove: Callable[..., None], dir_fd: int, name: str, dir_path: str) -> None:
    """``remove`` (os.unlink or os.rmdir) of ``name`` in ``dir_fd`` (the folder at
    ``dir_path``); a read-only folder is made writable for us first, as ``rm -rf`` run by its
    owner would."""
    try:
        remove(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except PermissionError as exc:
        try:
            _make_writable(dir_fd)
        except OSError:  # not ours to make writable (another user's folder): say what was refused
            raise _at(exc, os.path.join(dir_path, name)) from None
        try:
            remove(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as again:
            raise _at(again, os.path.join(dir_path, name)) from None
    except OSError as exc:
        raise _at(exc, os.path.join(dir_path, name)) from None


def _unlink(dir_fd: int, name: str, dir_path: str) -> None:
    _remove_at(os.unlink, dir_fd, name, dir_path)


def _rmdir(dir_fd: int, name: str, dir_path: str) -> None:
    _remove_at(os.rmdir, dir_fd, name, dir_path)


def _rm_rf(parent: str, name: str) -> bool:
    """``rm -rf -- name`` run inside ``parent``; True if the folder is gone afterwards."""
    rm = _rm_program()
    if rm is None:
        return False
    import subprocess

    try:
        subprocess.run([rm, "-rf", "--", name], cwd=parent, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    except OSError:
        return False
    return not os.path.lexists(os.path.join(parent, name))


def _rm_program() -> str | None:
    for d in ("/bin", "/usr/bin"):  # a fixed place, not PATH: this runs as root in prune
        p = os.path.join(d, "rm")
        if os.access(p, os.X_OK):
            return p
    return None


def hide_release_dir(layout: Layout, name: str) -> str | None:
    """Rename a release to a hidden trash name (its new name), so a half-deleted tree is never a
    release; None if it was already gone."""
    if not is_release_dir(layout, name):
        return None
    trash = f"{TRASH_PREFIX}{name}.{random_suffix()}"
    try:
        os.rename(layout.release(name), os.path.join(layout.releases, trash))
    except FileNotFoundError:
        return None
    # Its manifest goes with it (after the rename: a crash in between leaves an unused manifest,
    # never a release without one). Release ids are never reused, so a leftover harms nothing.
    try:  # noqa: SIM105 - contextlib is an import status and list do not otherwise pay for
        os.unlink(layout.manifest(name))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return trash


def discard_release_dir(layout: Layout, name: str) -> None:
    trash = hide_release_dir(layout, name)
    if trash:
        remove_entry(layout.releases, trash)

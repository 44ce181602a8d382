"""``doctor``: can this root be deployed to safely, and is it in a sane state?

Read-only, with one exception: the filesystem probes (rename over a symlink, flock, fsync,
reflink) need files to try things on, and they are made inside a private folder
``ROOT/.atomic-deploy-doctor.<random>`` that is removed before returning. Probing ROOT itself,
not /tmp, matters: atomicity is a property of the filesystem that holds ROOT. The doctor takes
no lock, so it is safe to run next to a deploy; nothing it creates is ever visible through
``current``, in ``releases/`` or in the state folder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Callable

from . import _platform
from ._history import History
from ._layout import (
    STATE_DIR,
    Layout,
    check_trusted,
    leftovers,
    read_current,
    read_journal,
    release_dirs,
    show,
)
from ._lock import Holder, probe_holder
from .errors import InvalidInput

OK, WARN, FAIL = "ok", "warn", "fail"
PROBE_PREFIX = ".atomic-deploy-doctor."
FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int)
SIZE_WALK_LIMIT = 100_000  # entries: enough for any sane release, bounded time on a huge one
MOUNTINFO = "/proc/self/mountinfo"

# Where rename(2) and flock(2) are not the local-filesystem guarantees the tool relies on.
_NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "ocfs2", "gfs2", "davfs", "coda",
})
_SHARED_FS = frozenset({"9p", "virtiofs", "vboxsf", "vmhgfs", "prl_fs"})  # VM host folders
_VOLATILE_FS = frozenset({"tmpfs", "ramfs"})


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exit_status(checks: Iterable[Check]) -> int:
    """0 when nothing failed (warnings included), 1 when any check failed."""
    return 1 if any(c.status == FAIL for c in checks) else 0


def format_checks(checks: list[Check]) -> str:
    """Plain-text report, one check per line, fixes indented under their check."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append(f"{fails} failed, {warns} warning(s), {len(checks) - fails - warns} ok")
    return "\n".join(lines)


# --- mounts (pure, so they can be tested with sample text) ---------------------------------


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str


def _unescape_mount_field(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts from /proc/self/mountinfo text, in the kernel's order (later entries may shadow
    earlier ones on the same mount point). Malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)  # optional fields (shared:N, master:N) end at "-"
            mount_point = _unescape_mount_field(fields[4])
            fstype, source = fields[sep + 1], _unescape_mount_field(fields[sep + 2])
        except (ValueError, IndexError):
            continue
        mounts.append(Mount(mount_point, fstype, source))
    return mounts


def mount_for(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding absolute ``path``: the longest matching mount point, the last one when
    several are stacked on the same point (the one that is visible)."""
    best: Mount | None = None
    for m in mounts:
        mp = m.mount_point
        contains = mp == "/" or path == mp or path.startswith(mp.rstrip("/") + "/")
        if contains and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best


def classify_fstype(fstype: str) -> tuple[str, str]:
    """(status, note) for a filesystem type name as Linux reports it."""
    base = fstype.split(".", 1)[0]
    if fstype in _NETWORK_FS or base in _NETWORK_FS:
        return WARN, ("a network filesystem: rename(2) atomicity and flock(2) exclusion are not "
                      "guaranteed across clients")
    if base in ("fuse", "fuseblk"):
        return WARN, ("a FUSE filesystem: rename(2) atomicity and flock(2) depend on the "
                      "userspace driver and are not guaranteed")
    if fstype in _SHARED_FS:
        return WARN, ("a folder shared from a VM host: rename(2) atomicity and flock(2) are not "
                      "guaranteed")
    if fstype in _VOLATILE_FS:
        return OK, "in memory: releases vanish at reboot"
    return OK, "a local filesystem"


# --- the checks ----------------------------------------------------------------------------


def doctor(root: str) -> list[Check]:
    """Every check, in a fixed order; never raises for problems it finds on disk."""
    q = shlex.quote(root)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return [Check("root", FAIL, f"ROOT {show(root)} does not exist",
                      f"create it (mkdir -p {q}), or let the first "
                      f"`atomic-deploy deploy SOURCE {q}` create it")]
    except OSError as exc:
        return [Check("root", FAIL, f"cannot read ROOT {show(root)}: {exc.strerror}",
                      "run as the user that deploys, with access to every parent folder")]
    if not stat.S_ISDIR(st.st_mode):
        return [Check("root", FAIL, f"ROOT {show(root)} is not a directory",
                      "give the folder that holds (or will hold) current and releases/")]
    layout = Layout(os.path.abspath(root))
    writable = os.access(layout.root, os.W_OK | os.X_OK)
    checks = [_root_check(layout, writable, st, q)]
    checks.append(_guard("filesystem", lambda: _filesystem(layout)))
    checks.append(_guard("same filesystem", lambda: _same_filesystem(layout)))
    if writable:
        checks += _probes(layout)
    checks.append(_guard("free space", lambda: _free_space(layout, q)))
    checks.append(_guard("layout", lambda: _layout_check(layout)))
    checks.append(_guard("config", lambda: _config_check(layout)))
    checks.append(_guard("hooks", lambda: _hooks_check(layout)))
    checks += _permissions(layout)
    checks.append(_guard("current", lambda: _current(layout, q)))
    checks.append(_guard("stray entries", lambda: _stray(layout)))
    holder = probe_holder(layout)
    checks.append(_guard("leftovers", lambda: _leftovers(layout, holder is not None)))
    checks.append(_guard("interrupted", lambda: _interrupted(layout, holder, q)))
    checks.append(Check("lock", OK, "free" if holder is None else f"held by {holder.describe()}"))
    return checks


def _root_check(layout: Layout, writable: bool, st: os.stat_result, q: str) -> Check:
    if writable:
        return Check("root", OK, f"{show(layout.root)} is a writable directory")
    if _read_only_fs(layout.root):
        # No owner or mode makes a read-only mount writable: name the mount, not chown.
        mount = _mount_of(layout.root)
        where = f" (mounted read-only at {show(mount.mount_point)})" if mount else ""
        point = shlex.quote(mount.mount_point) if mount else "MOUNT_POINT"
        return Check("root", FAIL, f"{show(layout.root)} is on a read-only filesystem{where}: "
                     "nothing can be deployed here",
                     f"remount it read-write (mount -o remount,rw {point}), or keep ROOT on a "
                     "writable filesystem")
    uid = os.geteuid()
    fix = (f"chmod u+wx {q}" if st.st_uid == uid else
           f"run as the user that owns it (uid {st.st_uid}), or: chown {uid} {q}")
    return Check("root", FAIL, f"{show(layout.root)} is not writable by uid {uid}", fix)


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs flags here: the access check spoke already
        return False


def _mount_of(path: str) -> Mount | None:
    if not _platform.IS_LINUX:
        return None
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return None
    return mount_for(os.path.realpath(path), parse_mountinfo(text))


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    # One unreadable entry must not hide every other finding.
    try:
        return fn()
    except OSError as exc:
        where = f" ({show(str(exc.filename))})" if exc.filename else ""
        return Check(name, FAIL, f"could not check: {exc.strerror or exc}{where}",
                     "run as the user that deploys; check permissions along the path")


def _filesystem(layout: Layout) -> Check:
    if not _platform.IS_LINUX:
        return Check("filesystem", OK, "type unknown (only read from /proc on Linux)")
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return Check("filesystem", OK, f"type unknown ({MOUNTINFO} is not readable)")
    path = os.path.realpath(layout.root)
    mount = mount_for(path, parse_mountinfo(text))
    if mount is None:
        return Check("filesystem", OK, "type unknown (no mount found)")
    status, note = classify_fstype(mount.fstype)
    detail = f"{mount.fstype} on {show(mount.mount_point)} from {show(mount.source)}: {note}"
    if status == OK:
        return Check("filesystem", OK, detail)
    return Check("filesystem", status, detail,
                 "keep ROOT on a local filesystem (ext4, xfs, btrfs, apfs) and copy builds "
                 "to it")


def _same_filesystem(layout: Layout) -> Check:
    # current is switched by renaming a link from .atomic-deploy/tmp over ROOT/current, and
    # staging folders are renamed inside releases/: neither rename may cross a mount.
    root_dev = os.stat(layout.root).st_dev
    apart = []
    for path in (layout.releases, layout.tmp):
        try:
            if os.stat(path).st_dev != root_dev:
                apart.append(path)
        except FileNotFoundError:
            continue
    if apart:
        names = ", ".join(show(p) for p in apart)
        return Check("same filesystem", FAIL,
                     f"{names} on another filesystem than ROOT: current cannot be switched "
                     "atomically (every mutating command refuses)",
                     "do not mount anything on ROOT/releases or ROOT/.atomic-deploy; "
                     "mount the whole ROOT instead")
    return Check("same filesystem", OK, "releases/ and the state folder are on ROOT's filesystem")


def _probes(layout: Layout) -> list[Check]:
    try:
        probe = tempfile.mkdtemp(dir=layout.root, prefix=PROBE_PREFIX)
    except OSError as exc:
        return [Check("probes", FAIL, f"cannot create a folder in ROOT: {exc.strerror}",
                      "ROOT must be writable (and not on a read-only mount) for deploys")]
    checks: list[Check] = []
    try:
        checks.append(_guard("rename", lambda: _probe_rename(probe)))
        checks.append(_guard("flock", lambda: _probe_flock(probe)))
        checks.append(_guard("fsync", lambda: _probe_fsync(probe)))
        checks.append(_guard("reflink", lambda: _probe_reflink(probe)))
    finally:
        try:
            shutil.rmtree(probe)
        except OSError as exc:
            checks.append(Check("probes", WARN,
                                f"could not remove the probe folder {show(probe)}: {exc.strerror}",
                                f"rm -rf {shlex.quote(probe)}"))
    return checks


def _probe_rename(probe: str) -> Check:
    link, new = os.path.join(probe, "current"), os.path.join(probe, "current.new")
    os.symlink("releases/a", link)
    os.symlink("releases/b", new)
    try:
        os.replace(new, link)
    except OSError as exc:
        return Check("rename", FAIL, f"renaming a symlink over another failed: {exc.strerror}",
                     "use a local filesystem (ext4, xfs, btrfs, apfs) for ROOT")
    if os.readlink(link) != "releases/b" or os.path.lexists(new):
        return Check("rename", FAIL, "renaming a symlink over another did not replace it",
                     "use a local filesystem (ext4, xfs, btrfs, apfs) for ROOT")
    staging, release = os.path.join(probe, "staging"), os.path.join(probe, "release")
    os.mkdir(staging)
    os.rename(staging, release)
    # adopt swaps a folder and a link in one step where the system can; say whether it can.
    exchange = _platform.exchange_name()
    if exchange is not None:
        other = os.path.join(probe, "other")
        os.symlink("releases/c", other)
        try:
            _platform.exchange(other, link)
            swapped = os.readlink(link) == "releases/c"
        except OSError:
            swapped = False
        note = f"{exchange} works" if swapped else \
            f"{exchange} refused here (adopt uses two renames)"
    else:
        note = "no atomic exchange on this system (adopt uses two renames)"
    return Check("rename", OK, f"a symlink renamed over another replaces it in one step; {note}")


def _probe_flock(probe: str) -> Check:
    path = os.path.join(probe, "lock")
    fix = "use a local filesystem for ROOT: the lock is what keeps two deploys apart"
    fd1 = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fd2 = os.open(path, os.O_RDWR)  # a second open file description, as another process has
    try:
        try:
            fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return Check("flock", FAIL, f"flock(LOCK_EX) failed: {exc.strerror}", fix)
        try:
            fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return Check("flock", FAIL, f"a second flock failed oddly: {exc.strerror}", fix)
        else:
            return Check("flock", FAIL, "a second open of the lock file took the lock while it "
                         "was held: flock does not exclude here", fix)
        fcntl.flock(fd1, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return Check("flock", FAIL, f"the lock could not be taken after release: {exc.strerror}",
                         fix)
    finally:
        os.close(fd1)
        os.close(fd2)
    return Check("flock", OK, "exclusive: a second open is refused while the lock is held")


def _probe_fsync(probe: str) -> Check:
    path = os.path.join(probe, "data")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"atomic-deploy doctor\n")
        try:
            _platform.fsync_fd(fd)
        except OSError as exc:
            return Check("fsync", FAIL, f"fsync of a file failed: {exc.strerror}",
                         "check the disk and the kernel log (dmesg); deploys cannot be made "
                         "durable here")
        full = _full_fsync_note(fd)
    finally:
        os.close(fd)
    try:
        _platform.fsync_dir(probe)
    except OSError as exc:
        return Check("fsync", FAIL, f"fsync of a folder failed: {exc.strerror}",
                     "check the disk and the kernel log (dmesg)")
    return Check("fsync", OK, "fsync works on a file and on a folder" + full)


def _full_fsync_note(fd: int) -> str:
    op: int | None = getattr(fcntl, "F_FULLFSYNC", None)
    if op is None:
        return ""
    try:
        fcntl.fcntl(fd, op)
    except OSError:
        return "; F_FULLFSYNC refused here, so plain fsync is used (the drive cache may lose " \
               "the last writes on power loss)"
    return "; F_FULLFSYNC works (flushes the drive cache)"


def _probe_reflink(probe: str) -> Check:
    if not _platform.IS_LINUX:
        return Check("reflink", OK, "unknown (only probed on Linux)")
    src, dst = os.path.join(probe, "clone-src"), os.path.join(probe, "clone-dst")
    with open(src, "wb") as f:
        f.write(b"x" * 4096)
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.ioctl(dfd, FICLONE, sfd)
    except OSError:
        # EOPNOTSUPP/EINVAL/ENOTTY/EXDEV: this filesystem cannot share blocks between files.
        return Check("reflink", OK, "no (plain copies)")
    finally:
        os.close(sfd)
        os.close(dfd)
    return Check("reflink", OK, "yes: kernel-side copies (copy_file_range) may share blocks")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def tree_size(path: str, limit: int = SIZE_WALK_LIMIT) -> tuple[int, bool]:
    """(bytes in regular files under ``path``, True if the walk stopped at ``limit`` entries).

    Symlinks are never followed and hard-linked files count once.
    """
    total, count = 0, 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                count += 1
                if count > limit:
                    return total, True
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total, False


def _free_space(layout: Layout, q: str) -> Check:
    vfs = os.statvfs(layout.root)
    total, free = vfs.f_blocks * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize
    if total == 0:
        return Check("free space", OK, "unknown (the filesystem reports no size)")
    detail = f"{_human(free)} free of {_human(total)} ({free / total:.0%})"
    problems = []
    if free < total / 10:
        problems.append("under 10% free")
    cur = read_current(layout)
    if cur.healthy and cur.release is not None:
        size, capped = tree_size(layout.release(cur.release))
        detail += f"; current release {'at least ' if capped else ''}{_human(size)}"
        if free < 2 * size:
            problems.append("less than twice the current release")
    if vfs.f_files > 0 and vfs.f_favail < vfs.f_files / 10:
        problems.append(f"only {vfs.f_favail} of {vfs.f_files} inodes free")
    if problems:
        return Check("free space", WARN, f"{detail}: {'; '.join(problems)}",
                     f"free some space, or remove old releases: atomic-deploy prune {q} --keep N")
    return Check("free space", OK, detail)


def _layout_check(layout: Layout) -> Check:
    wrong = []
    for path in (layout.state, layout.releases, layout.tmp):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            wrong.append(f"{show(path)} is {kind}")
    if wrong:
        return Check("layout", FAIL, "; ".join(wrong),
                     "move it out of the way; atomic-deploy creates its own folders")
    if not os.path.isdir(layout.state):
        return Check("layout", OK, f"no {STATE_DIR}/ yet (the first deploy creates it)")
    return Check("layout", OK, "releases/ and the state folder are plain directories")


def _config_check(layout: Layout) -> Check:
    """ROOT/atomic-deploy.toml read as every command would read it, with this Python: a file
    it cannot read makes deploy, prepare, activate and prune refuse to run."""
    import sys

    from . import _config
    from .operations import DeployOptions, validate_options

    path = _config.config_path(layout.root)
    if path is None:
        return Check("config", OK, f"no {_config.FILENAME} (flags and defaults only)")
    python = f"Python {sys.version.split()[0]}"
    try:
        data = _config.load(layout.root)
        hooks = ("check", "after_switch", "on_failure", "health_check")
        kwargs: dict[str, Any] = {k: _config.hooks(k, v) if k in hooks else v
                                  for k, v in data.items()}
        validate_options(DeployOptions(**kwargs))
    except InvalidInput as exc:
        return Check("config", FAIL, f"{exc.message} (read with {python})",
                     "fix the file, or pass --no-config; until then deploy, prepare, activate "
                     "and prune refuse to run, and rollback warns and goes on without it")
    return Check("config", OK, f"{_config.FILENAME}: {len(data)} setting(s), readable by "
                 f"{python}")


_HOOK_KEYS = ("check", "after_switch", "health_check", "on_failure")


def _hook_commands(key: str, value: Any) -> list[str | list[str]]:
    """The commands one config hook setting holds, read as the deploy reads them: a string is
    one shell command, a list holds several (each a string or an argument list); health_check
    is one command."""
    from . import _config

    if value is None:
        return []
    cmd = _config.hooks(key, value)
    return [cmd] if key == "health_check" else list(cmd)


def _program_problem(program: str, where: str | None) -> str | None:
    """Why ``program`` (argv[0] of a hook) cannot be run, or None. A bare name is looked up in
    this process's PATH, as the hook's would be; a relative path is relative to the release the
    hook runs in (``where``: current's, the best guess before a deploy)."""
    if "/" not in program:
        if shutil.which(program) is None:
            return f"{program!r} is not found on PATH"
        return None
    relative = not os.path.isabs(program)
    if relative:
        if where is None:
            return None  # nothing deployed to resolve it against yet
        program = os.path.join(where, program)
    # In the current release: the release being deployed may still bring it.
    note = " in the current release" if relative else ""
    if not os.path.exists(program):
        return f"{show(program)} does not exist{note}"
    if os.path.isdir(program) or not os.access(program, os.X_OK):
        return f"{show(program)} is not executable{note}"
    return None


def _hooks_check(layout: Layout) -> Check:
    """The hooks of the config file: an argument-list hook whose program cannot be run fails
    every deploy that runs it (a check aborts it, an after-switch hook switches back)."""
    from . import _config
    from ._hooks import SHELL

    path = _config.config_path(layout.root)
    if path is None:
        return Check("hooks", OK, "none in a config file (hooks given as flags are not seen "
                     "here)")
    try:
        data = _config.load(layout.root)
    except InvalidInput:
        return Check("hooks", OK, "not checked: the config file cannot be read (see config)")
    cur = read_current(layout)
    where = layout.release(cur.release) if cur.healthy and cur.release else None
    problems: list[str] = []
    status, shell, argv = WARN, 0, 0
    for key in _HOOK_KEYS:
        for cmd in _hook_commands(key, data.get(key)):
            if isinstance(cmd, str):
                shell += 1
                continue
            argv += 1
            why = _program_problem(cmd[0], where) if cmd and isinstance(cmd[0], str) else None
            if why:
                problems.append(f"{key} = {cmd!r}: {why}")
                if not why.endswith("in the current release"):
                    status = FAIL
    if problems:
        return Check("hooks", status, "; ".join(problems),
                     "install the program or fix its path in the config file (an argument "
                     "list runs without a shell: give the full path, or a name on PATH)")
    if shell and not os.access(SHELL, os.X_OK):
        return Check("hooks", FAIL, f"{shell} shell command(s), but {SHELL} cannot be run",
                     f"install a POSIX shell as {SHELL}")
    parts = []
    if argv:
        parts.append(f"{argv} argument-list hook(s): their programs exist and are executable")
    if shell:
        parts.append(f"{shell} shell command(s): run by {SHELL}, which exists; what they run "
                     "is not checked")
    return Check("hooks", OK, "; ".join(parts) if parts else "none in the config file")


def _permissions(layout: Layout) -> list[Check]:
    """The same rule every mutating command applies (``_layout.check_trusted``)."""
    found: list[Check] = []
    for path in (layout.state, layout.tmp, layout.lock):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            found.append(Check("permissions", FAIL, f"cannot read {show(path)}: {exc.strerror}",
                               "run as the user that deploys"))
            continue
        if path == layout.lock and not stat.S_ISREG(st.st_mode):
            found.append(Check("permissions", FAIL,
                               f"{show(path)} is not a regular file (every command refuses it)",
                               f"remove it (rm {shlex.quote(path)}) while no deploy runs"))
            continue
        try:
            check_trusted(path, st)
        except InvalidInput as exc:
            if st.st_uid not in (0, os.geteuid()):
                fix = (f"run atomic-deploy as uid {st.st_uid} (its owner), or: "
                       f"chown -R {os.geteuid()} {shlex.quote(layout.state)}")
            else:
                fix = f"chmod o-w {shlex.quote(path)}"
            found.append(Check("permissions", FAIL, exc.message, fix))
    # Anyone who can write ROOT or releases/ can replace current or a release.
    for path in (layout.root, layout.releases):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if st.st_mode & stat.S_IWOTH:
            # The sticky bit (as on /tmp) stops others renaming our entries, not adding theirs.
            risk = "others can add entries" if st.st_mode & stat.S_ISVTX else \
                "any user can replace current or a release"
            found.append(Check("permissions", WARN, f"{show(path)} is writable by every user: {risk}",
                               f"chmod o-w {shlex.quote(path)}"))
    if not found:
        found.append(Check("permissions", OK, "state folder owned by this user or root, "
                           "not writable by others"))
    return found


def _current(layout: Layout, q: str) -> Check:
    cur = read_current(layout)
    if cur.kind == "absent":
        return Check("current", OK, "absent: nothing deployed yet")
    if cur.kind == "directory":
        return Check("current", FAIL, "a real directory, not a symlink: every deploy refuses it",
                     f"atomic-deploy adopt {q}  (moves it into releases/ atomically)")
    if cur.kind in ("file", "other"):
        kind = "a regular file" if cur.kind == "file" else "not a symlink"
        return Check("current", FAIL, f"{kind}: every deploy refuses it",
                     f"move {shlex.quote(layout.current)} out of the way (it is not a release), "
                     "then deploy again")
    if cur.release is None:
        return Check("current", WARN,
                     f"points outside releases/ ({show(cur.target or '')}): status shows it, "
                     "rollback refuses it",
                     f"switch to a release: atomic-deploy activate {q} ID (or deploy)")
    if not cur.resolves:
        newest = History.load(layout).order(release_dirs(layout))
        fix = (f"atomic-deploy activate {q} {newest[-1]}" if newest
               else f"atomic-deploy deploy SOURCE {q}")
        return Check("current", FAIL,
                     f"dangling: points to releases/{show(cur.release)}, which does not exist "
                     "(the site is down)", fix)
    note = "" if not os.path.isabs(cur.target or "") else \
        " (absolute link; the next switch writes it relative)"
    return Check("current", OK, f"-> releases/{show(cur.release)}{note}")


def _stray(layout: Layout) -> Check:
    try:
        entries = list(os.scandir(layout.releases))
    except FileNotFoundError:
        return Check("stray entries", OK, "no releases/ yet")
    stray = sorted(e.name for e in entries
                   if not e.name.startswith(".") and not e.is_dir(follow_symlinks=False))
    if stray:
        return Check("stray entries", WARN,
                     f"in releases/, ignored (files and symlinks are never releases): "
                     f"{', '.join(show(n) for n in stray)}",
                     f"move them out of {shlex.quote(layout.releases)}")
    return Check("stray entries", OK, "none in releases/")


def _leftovers(layout: Layout, locked: bool) -> Check:
    if locked:
        # Staging folders and temp links of the running operation are not leftovers.
        return Check("leftovers", OK, "not counted while an operation holds the lock")
    found = leftovers(layout)
    if found:
        return Check("leftovers", WARN,
                     f"{len(found)} from an interrupted run ({', '.join(show(n) for n in found)}); "
                     "the next deploy removes them")
    return Check("leftovers", OK, "none")


def _interrupted(layout: Layout, holder: Holder | None, q: str) -> Check:
    journal = read_journal(layout)
    if journal is None:
        return Check("interrupted", OK, "none")
    if holder is not None and journal.get("pid") == holder.pid:
        return Check("interrupted", OK,
                     f"{journal.get('op')} in progress right now (pid {journal.get('pid')})")
    if journal.get("corrupt"):
        return Check("interrupted", WARN,
                     "journal.json is unreadable; the next mutating command sets it aside and "
                     "leaves current as it is",
                     f"atomic-deploy status {q} shows the root as it is")
    what = f"{journal.get('op', '?')}" + (f" of {journal['release']}" if journal.get("release")
                                          else "")
    return Check("interrupted", WARN,
                 f"{what} by pid {journal.get('pid', '?')} (started {journal.get('started', '?')}) "
                 "did not finish; the next mutating command recovers it",
                 f"run any deploy, activate, rollback or prune on {q}, or look first: "
                 f"atomic-deploy status {q}")

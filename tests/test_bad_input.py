"""Bad input: one clear error line, the right exit code, and the root left as it was."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

import atomic_deploy
from atomic_deploy.cli import main
from conftest import (
    Builds,
    current_target,
    error_line,
    hidden_entries,
    history,
    make_build,
    release_names,
    require_unprivileged_runs,
    run_as_nobody,
    run_cli,
    snapshot,
)

# The holder file is the lock's own bookkeeping ("who holds the lock"), rewritten every time the
# lock is taken. Errors that can only be detected under the lock (unknown release id, nothing to
# roll back to) therefore change it and nothing else; everything else must be byte-identical.
HOLDER = os.path.join(".atomic-deploy", "holder.json")


def deploy(src: Path, root: Path, keep: int | None = None) -> str:
    """Setup step: a successful deploy, in-process (the bad input itself goes through the CLI)."""
    return atomic_deploy.deploy(str(src), str(root), keep=keep).release


def without_holder(snap: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snap.items() if k != HOLDER}


# --------------------------------------------------------------------------- source problems


def test_source_missing(tmp_path: Path, root: Path) -> None:
    r = run_cli("deploy", tmp_path / "no-such-build", root)
    assert r.returncode == 2
    line = error_line(r)
    assert "does not exist" in line and "no-such-build" in line
    assert not os.path.lexists(root)


def test_source_is_a_file(tmp_path: Path, root: Path) -> None:
    f = tmp_path / "build.txt"
    f.write_text("not a folder\n")
    r = run_cli("deploy", f, root)
    assert r.returncode == 2
    line = error_line(r)
    assert str(f) in line and "file" in line
    assert not os.path.lexists(root)
    assert f.read_text() == "not a folder\n"


def test_source_is_a_corrupt_archive(tmp_path: Path, builds: Builds, root: Path) -> None:
    # A file named like a tarball is read as one (tarball sources): a broken one is bad input,
    # and leaves no release behind.
    rid = deploy(builds("v1"), root)
    f = tmp_path / "build.tar"
    f.write_text("not a tar archive\n")
    rel_before = snapshot(root / "releases")
    r = run_cli("deploy", f, root)
    assert r.returncode == 2
    assert str(f) in error_line(r)
    assert snapshot(root / "releases") == rel_before
    assert hidden_entries(root) == []
    assert current_target(root) == f"releases/{rid}"


def test_source_empty(tmp_path: Path, root: Path) -> None:
    src = tmp_path / "empty"
    src.mkdir()
    r = run_cli("deploy", src, root)
    assert r.returncode == 2
    assert "empty" in error_line(r)
    assert not os.path.lexists(root)


def test_source_empty_keeps_existing_root(tmp_path: Path, builds: Builds, root: Path) -> None:
    rid = deploy(builds("v1"), root)
    src = tmp_path / "empty"
    src.mkdir()
    before = snapshot(root)
    r = run_cli("deploy", src, root)
    assert r.returncode == 2
    assert "empty" in error_line(r)
    assert snapshot(root) == before
    assert current_target(root) == f"releases/{rid}"


def test_source_equal_to_root(builds: Builds, root: Path) -> None:
    deploy(builds("v1"), root)
    before = snapshot(root)
    r = run_cli("deploy", root, root)
    assert r.returncode == 2
    assert "same directory" in error_line(r)
    assert snapshot(root) == before


def test_source_equal_to_root_via_symlink(tmp_path: Path, builds: Builds, root: Path) -> None:
    deploy(builds("v1"), root)
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    before = snapshot(root)
    r = run_cli("deploy", alias, root)
    assert r.returncode == 2
    error_line(r)
    assert snapshot(root) == before


@pytest.mark.parametrize("inside", ["current", "releases/{rid}", "releases/{rid}/assets"])
def test_source_inside_root(builds: Builds, root: Path, inside: str) -> None:
    rid = deploy(builds("v1"), root)
    before = snapshot(root)
    r = run_cli("deploy", root / inside.format(rid=rid), root)
    assert r.returncode == 2
    assert "inside ROOT" in error_line(r)
    assert snapshot(root) == before
    assert len(release_names(root)) == 1


def test_source_containing_root(tmp_path: Path) -> None:
    src = make_build(tmp_path / "site", version="v1")
    root = src / "www"
    before = snapshot(src)
    r = run_cli("deploy", src, root)
    assert r.returncode == 2
    assert "would contain itself" in error_line(r)
    assert not os.path.lexists(root)
    assert snapshot(src) == before


def test_source_sibling_with_common_prefix_is_fine(tmp_path: Path) -> None:
    # "/x/www-build" is not inside "/x/www": the containment check must compare path components.
    root = tmp_path / "www"
    src = make_build(tmp_path / "www-build", version="v1")
    rid = deploy(src, root)
    assert (root / "releases" / rid / "version.txt").read_text() == "v1\n"


# --------------------------------------------------------------------------- ROOT problems


def test_root_is_a_regular_file(builds: Builds, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.write_text("I am a file\n")
    src = builds("v1")
    before = snapshot(tmp_path)
    r = run_cli("deploy", src, root)
    assert r.returncode == 2
    assert "not a directory" in error_line(r)
    assert snapshot(tmp_path) == before
    assert root.read_text() == "I am a file\n"


@pytest.mark.parametrize("cmd", [["activate", "{root}", "20260101000000"], ["rollback", "{root}"],
                                 ["prune", "{root}", "--keep", "1"]])
def test_root_is_a_regular_file_other_commands(tmp_path: Path, cmd: list[str]) -> None:
    root = tmp_path / "www"
    root.write_text("I am a file\n")
    before = snapshot(tmp_path)
    r = run_cli(*[c.format(root=root) for c in cmd])
    assert r.returncode == 2
    assert "not a directory" in error_line(r)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("cmd", [["activate", "{root}", "20260101000000"], ["rollback", "{root}"],
                                 ["prune", "{root}", "--keep", "1"]])
def test_missing_root_is_not_created_by_other_commands(root: Path, cmd: list[str]) -> None:
    r = run_cli(*[c.format(root=root) for c in cmd])
    assert r.returncode == 2
    assert "does not exist" in error_line(r)
    assert not os.path.lexists(root)




def make_readable_build(base: Path) -> Path:
    src = make_build(base / "build", version="v2")
    for dirpath, dirnames, filenames in os.walk(src):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    os.chmod(src, 0o755)
    return src


def test_root_not_writable(nobody_dir: Path) -> None:
    require_unprivileged_runs()
    root = nobody_dir / "www"
    deploy(make_build(nobody_dir / "v1", version="v1"), root)  # owned by root, mode 0755
    os.chmod(root, 0o755)
    src = make_readable_build(nobody_dir)
    before = snapshot(root)
    r = run_as_nobody("deploy", src, root)
    assert r.returncode == 2, r.stderr
    line = error_line(r)
    assert "not writable" in line, line
    assert snapshot(root) == before


def test_root_cannot_be_created(nobody_dir: Path) -> None:
    require_unprivileged_runs()
    parent = nobody_dir / "locked"
    parent.mkdir(mode=0o755)
    os.chmod(parent, 0o755)
    root = parent / "www"
    src = make_readable_build(nobody_dir)
    r = run_as_nobody("deploy", src, root)
    assert r.returncode == 2, r.stderr
    assert "cannot create ROOT" in error_line(r)
    assert not os.path.lexists(root)


# --------------------------------------------------------------------------- a bad `current`


@pytest.mark.parametrize("kind", ["directory", "file"])
@pytest.mark.parametrize("cmd", ["deploy", "activate", "rollback", "prune"])
def test_current_not_a_symlink(builds: Builds, root: Path, kind: str, cmd: str) -> None:
    src = builds("v1")
    root.mkdir()
    if kind == "directory":
        (root / "current").mkdir()
        (root / "current" / "index.html").write_text("legacy site\n")
    else:
        (root / "current").write_text("legacy\n")
    before = snapshot(root)
    args = {"deploy": ["deploy", src, root], "activate": ["activate", root, "20260101000000"],
            "rollback": ["rollback", root], "prune": ["prune", root, "--keep", "1"]}[cmd]
    r = run_cli(*args)
    assert r.returncode == 2
    line = error_line(r)
    assert "current" in line and "not a symlink" in line
    # It says how to migrate, in terms of releases/.
    assert "releases/" in line, line
    assert snapshot(root) == before


def _status(root: Path) -> dict[str, Any]:
    r = run_cli("status", root, "--json")
    out = dict(json.loads(r.stdout))
    assert r.returncode == (0 if out["current_state"] == "ok" else 1), r.stderr
    return out


@pytest.mark.parametrize(("target", "state"), [
    ("releases/20200101000000", "dangling"),
    ("releases/gone-by-hand", "dangling"),
    ("{outside}", "outside-releases"),
    ("../elsewhere", "outside-releases"),
    ("/", "outside-releases"),
])
def test_bad_current_link_reported_and_repaired_by_deploy(
    tmp_path: Path, builds: Builds, root: Path, target: str, state: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = deploy(builds("v1"), root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("outside\n")
    text = target.format(outside=outside)
    os.unlink(root / "current")
    os.symlink(text, root / "current")

    st = _status(root)  # status --json, through the CLI
    assert st["current_state"] == state
    assert st["current_target"] == text
    before = snapshot(root)
    assert main(["status", str(root)]) == 1  # the text form, in-process: serves no release
    assert state in capsys.readouterr().out
    assert snapshot(root) == before  # status touches nothing

    r = run_cli("deploy", builds("v2"), root, "--json")
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)["release"]
    assert current_target(root) == f"releases/{rid}"
    assert (root / "current" / "version.txt").read_text() == "v2\n"
    assert atomic_deploy.status(str(root)).current_state == "ok"
    assert sorted(release_names(root)) == sorted([old, rid])
    assert (outside / "keep.txt").read_text() == "outside\n"
    assert hidden_entries(root) == []


def test_rollback_refuses_dangling_current(builds: Builds, root: Path) -> None:
    deploy(builds("v1"), root)
    deploy(builds("v2"), root)
    os.unlink(root / "current")
    os.symlink("releases/20200101000000", root / "current")
    before = snapshot(root)
    r = run_cli("rollback", root)
    assert r.returncode == 2
    assert "nothing to roll back from" in error_line(r)
    assert without_holder(snapshot(root)) == without_holder(before)


# --------------------------------------------------------------------------- stray entries


def test_stray_entries_in_releases_are_ignored_and_never_deleted(
    tmp_path: Path, builds: Builds, root: Path
) -> None:
    first = deploy(builds("v1"), root)
    rel = root / "releases"
    (rel / "README.txt").write_text("do not delete\n")
    (rel / "20200101000000").write_text("a file named like an id\n")
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "sentinel").write_text("outside\n")
    os.symlink(outside, rel / "link")
    os.symlink(outside, rel / "20200101000001")  # a symlink named like an id
    notes = rel / "notes"  # a hand-made folder: unmanaged, never deleted
    notes.mkdir()
    (notes / "todo.txt").write_text("notes\n")
    strays = {n: snapshot(rel)[n] for n in ("README.txt", "20200101000000", "link", "20200101000001")}

    ids = [first] + [deploy(builds(f"v{i}"), root) for i in (2, 3, 4)]
    ids.append(deploy(builds("v5"), root, keep=1))
    r = run_cli("prune", root, "--keep", "1")
    assert r.returncode == 0, r.stderr

    r = run_cli("list", root, "--json")
    assert r.returncode == 0, r.stderr
    listed = {x["id"]: x for x in json.loads(r.stdout)["releases"]}
    for name in ("README.txt", "link", "20200101000000", "20200101000001"):
        assert name not in listed
    # A hand-made folder is shown as an unmanaged release (design: "made by hand or another tool").
    assert listed["notes"]["managed"] is False
    assert set(listed) == {"notes", ids[-2], ids[-1]}

    snap = snapshot(rel)
    for name, entry in strays.items():
        assert snap[name] == entry
    assert (notes / "todo.txt").read_text() == "notes\n"
    assert (outside / "sentinel").read_text() == "outside\n"
    assert sorted(_status(root)["stray"]) == sorted(strays)


# --------------------------------------------------------------------------- release ids


def test_activate_unknown_release_id(builds: Builds, root: Path) -> None:
    rid = deploy(builds("v1"), root)
    before = snapshot(root)
    r = run_cli("activate", root, "20000101000000")
    assert r.returncode == 2
    line = error_line(r)
    assert "unknown release id" in line and "20000101000000" in line
    assert without_holder(snapshot(root)) == without_holder(before)
    assert current_target(root) == f"releases/{rid}"


def test_rollback_to_unknown_release_id(builds: Builds, root: Path) -> None:
    deploy(builds("v1"), root)
    rid = deploy(builds("v2"), root)
    before = snapshot(root)
    r = run_cli("rollback", root, "--to", "20000101000000")
    assert r.returncode == 2
    assert "unknown release id" in error_line(r)
    assert without_holder(snapshot(root)) == without_holder(before)
    assert current_target(root) == f"releases/{rid}"


BAD_IDS = ["../x", "..", ".atomic-deploy", "", "releases/x", "/etc", ".atomic-deploy-staging.x"]


@pytest.mark.parametrize("how", ["activate", "rollback --to"])
def test_malformed_release_ids_rejected(tmp_path: Path, builds: Builds, root: Path, how: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    deploy(builds("v1"), root)
    rid = deploy(builds("v2"), root)
    # Things those names could reach if they were used as paths.
    (tmp_path / "x").mkdir()
    (root / "releases" / "x").mkdir()
    before = snapshot(root)

    def args(bad: str) -> list[str]:
        return ["activate", str(root), bad] if how == "activate" else \
            ["rollback", str(root), "--to", bad]

    r = run_cli(*args("../x"))  # one through a real process, the rest in-process (same main())
    assert r.returncode == 2, r.stderr
    assert "unknown release id" in error_line(r)
    for bad in BAD_IDS:
        rc = main(args(bad))
        err = capsys.readouterr().err.splitlines()
        assert rc == 2, (bad, err)
        assert len(err) == 1 and err[0].startswith("atomic-deploy: error: unknown release id"), err
        assert current_target(root) == f"releases/{rid}", bad
    assert without_holder(snapshot(root)) == without_holder(before)


def test_rollback_with_a_single_release(builds: Builds, root: Path) -> None:
    rid = deploy(builds("v1"), root)
    before = snapshot(root)
    r = run_cli("rollback", root)
    assert r.returncode == 2
    assert "nothing to roll back to" in error_line(r)
    assert without_holder(snapshot(root)) == without_holder(before)
    assert current_target(root) == f"releases/{rid}"


def test_rollback_on_an_empty_root(root: Path) -> None:
    root.mkdir()
    r = run_cli("rollback", root)
    assert r.returncode == 2
    assert "nothing to roll back" in error_line(r)
    # Nothing was there, and nothing may be left behind (no state folder, no releases/).
    assert snapshot(root) == {}


# --------------------------------------------------------------------------- disk full, I/O error


@pytest.mark.parametrize(("fault", "cause", "procs"), [
    ("copy-file:ENOSPC", os.strerror(28), ""),
    ("copy-file:EIO", os.strerror(5), ""),
    ("flushed:EIO", os.strerror(5), ""),
    # the per-file checkpoint with the files copied by worker processes (tmpfs, clones)
    ("copy-file:ENOSPC", os.strerror(28), "1"),
    ("copy-file:EIO", os.strerror(5), "1"),
])
def test_io_error_during_copy_removes_staged_release(
    builds: Builds, root: Path, fault: str, cause: str, procs: str
) -> None:
    rid = deploy(builds("v1"), root)
    rel_before = snapshot(root / "releases")
    v2 = builds("v2")
    for i in range(300 if procs else 0):  # batches in flight in the workers
        (v2 / f"many{i % 3}").mkdir(exist_ok=True)
        (v2 / f"many{i % 3}" / f"f{i}.js").write_text(f"{i}\n")
    r = run_cli("deploy", v2, root, fault=fault,
                env={"ATOMIC_DEPLOY_COPY_PROCESSES": procs} if procs else None)
    assert r.returncode == 1, r.stderr
    line = error_line(r)
    assert cause in line, line
    assert hidden_entries(root) == []
    assert release_names(root) == [rid]
    assert snapshot(root / "releases") == rel_before
    assert current_target(root) == f"releases/{rid}"
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert not (root / ".atomic-deploy" / "journal.json").exists()
    assert history(root)[-1]["outcome"] == "failed"


@pytest.mark.parametrize("fault", ["copy-file:ENOSPC", "flushed:EIO"])
def test_io_error_on_first_deploy_leaves_no_release(builds: Builds, root: Path, fault: str) -> None:
    r = run_cli("deploy", builds("v1"), root, fault=fault)
    assert r.returncode == 1
    error_line(r)
    assert release_names(root) == []
    assert hidden_entries(root) == []
    assert not os.path.lexists(root / "current")


# --------------------------------------------------------------------------- awkward names

AWKWARD = "my site \u00fcn\u00efc\u00f8d\u00e9 \u2713\nsecond line"


def test_awkward_paths_deploy_correctly(tmp_path: Path) -> None:
    files = {
        "plain.txt": "plain\n",
        "with space.txt": "space\n",
        "\u00fcn\u00efc\u00f8d\u00e9/\u65e5\u672c\u8a9e \u2713.html": "unicode\n",
        "new\nline.txt": "newline\n",
        "dir with\nnewline/inner\tfile": "tab\n",
        "-starts-with-dash": "dash\n",
    }
    src = make_build(tmp_path / f"build {AWKWARD}", files=files)
    root = tmp_path / f"root {AWKWARD}"
    r = run_cli("deploy", src, root, "--json")  # the paths go through argv of a real process
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)["release"]
    assert current_target(root) == f"releases/{rid}"
    assert snapshot(root / "current") == snapshot(src)
    for rel, text in files.items():
        assert (root / "current" / rel).read_text() == text
    rid2 = deploy(src, root)
    r = run_cli("rollback", root)
    assert r.returncode == 0, r.stderr
    assert current_target(root) == f"releases/{rid}"
    r = run_cli("list", root)
    assert r.returncode == 0
    assert rid2 in r.stdout


def test_awkward_missing_source_error_is_one_line(tmp_path: Path) -> None:
    r = run_cli("deploy", tmp_path / f"missing {AWKWARD}", tmp_path / "www")
    assert r.returncode == 2
    line = error_line(r)
    assert "\\n" in line  # the newline is shown escaped
    assert "\u2713" in line  # printable unicode is shown as is
    assert not os.path.lexists(tmp_path / "www")


def test_awkward_empty_source_error_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / f"empty {AWKWARD}"
    empty.mkdir()
    r = run_cli("deploy", empty, tmp_path / "www")
    assert r.returncode == 2
    assert "empty" in error_line(r)


def test_awkward_root_file_error_is_one_line(tmp_path: Path) -> None:
    file_root = tmp_path / f"file root {AWKWARD}"
    file_root.write_text("x")
    r = run_cli("deploy", make_build(tmp_path / "b1"), file_root)
    assert r.returncode == 2
    assert "not a directory" in error_line(r)
    assert file_root.read_text() == "x"


def test_awkward_release_id_error_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / f"root {AWKWARD}"
    deploy(make_build(tmp_path / "b1"), root)
    r = run_cli("activate", root, f"bad {AWKWARD}")
    assert r.returncode == 2
    assert "unknown release id" in error_line(r)


def test_awkward_dangling_current_error_is_one_line(tmp_path: Path) -> None:
    # `current` pointing at a missing release whose name holds a newline: rollback refuses, and
    # its message quotes the link text, which must stay on one line.
    root = tmp_path / f"root {AWKWARD}"
    deploy(make_build(tmp_path / "b1"), root)
    deploy(make_build(tmp_path / "b2"), root)
    os.symlink(f"releases/gone {AWKWARD}", root / "current.tmp")
    os.replace(root / "current.tmp", root / "current")
    r = run_cli("rollback", root)
    assert r.returncode == 2
    assert "nothing to roll back from" in error_line(r)
    assert current_target(root) == f"releases/gone {AWKWARD}"


def test_awkward_fifo_name_error_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / f"root {AWKWARD}"
    rid = deploy(make_build(tmp_path / "b1"), root)
    src = make_build(tmp_path / f"fifo build {AWKWARD}")
    os.mkfifo(src / "pipe\nname")
    r = run_cli("deploy", src, root)
    assert r.returncode == 2
    line = error_line(r)
    assert "FIFO" in line and "pipe\\nname" in line
    assert hidden_entries(root) == []
    assert current_target(root) == f"releases/{rid}"


def test_awkward_root_error_during_copy_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / f"root {AWKWARD}"
    rid = deploy(make_build(tmp_path / "b1", version="v1"), root)
    r = run_cli("deploy", make_build(tmp_path / f"b2 {AWKWARD}", version="v2"), root,
                fault="copy-file:ENOSPC")
    assert r.returncode == 1
    error_line(r)
    assert current_target(root) == f"releases/{rid}"
    assert hidden_entries(root) == []


def test_socket_in_source_is_refused(tmp_path: Path, builds: Builds, root: Path) -> None:
    rid = deploy(builds("v1"), root)
    src = builds("v2")
    sock_path = src / "s"
    if len(str(sock_path)) > 100:
        pytest.skip("socket path too long for AF_UNIX")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(sock_path))
    finally:
        s.close()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    r = run_cli("deploy", src, root)
    assert r.returncode == 2
    line = error_line(r)
    assert "socket" in line and str(sock_path) in line
    assert current_target(root) == f"releases/{rid}"
    assert release_names(root) == [rid]
    assert hidden_entries(root) == []


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("cmd", [["deploy", "{src}", "{root}", "--keep", "0"],
                                 ["deploy", "{src}", "{root}", "--keep", "-3"],
                                 ["prune", "{root}", "--keep", "0"]])
def test_keep_zero_rejected(builds: Builds, root: Path, cmd: list[str]) -> None:
    src = builds("v1")
    r = run_cli(*[c.format(src=src, root=root) for c in cmd])
    assert r.returncode == 2
    assert "--keep" in error_line(r)
    assert not os.path.lexists(root)


def test_keep_zero_rejected_on_existing_root(builds: Builds, root: Path) -> None:
    deploy(builds("v1"), root)
    deploy(builds("v2"), root)
    before = snapshot(root)
    for args in (["prune", root, "--keep", "0"], ["deploy", builds("v3"), root, "--keep", "0"]):
        r = run_cli(*args)
        assert r.returncode == 2
        error_line(r)
        assert snapshot(root) == before


USAGE_ERRORS = [
    [],
    ["deploy"],
    ["deploy", "{src}"],
    ["deploy", "{src}", "{root}", "--bogus"],
    ["deploy", "{src}", "{root}", "--keep"],
    ["deploy", "{src}", "{root}", "--keep", "abc"],
    ["deploy", "{src}", "{root}", "extra"],
    ["activate", "{root}"],
    ["rollback"],
    ["rollback", "{root}", "--to"],
    ["prune", "{root}"],
    ["status"],
    ["list"],
    ["frobnicate"],
    ["--no-such-option"],
]


def test_usage_errors(builds: Builds, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = builds("v1")
    for cmd in USAGE_ERRORS:
        try:
            rc = main([c.format(src=src, root=root) for c in cmd])
        except SystemExit as exc:  # argparse's parser.error(), as the process would exit
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == 2, cmd
        assert err.strip(), cmd
        assert not os.path.lexists(root), cmd


@pytest.mark.parametrize("cmd", [["deploy", "{src}"], ["prune", "{root}", "--bogus", "--keep", "1"],
                                 []])
def test_usage_errors_exit_code_of_the_process(builds: Builds, root: Path, cmd: list[str]) -> None:
    src = builds("v1")
    r = run_cli(*[c.format(src=src, root=root) for c in cmd])
    assert r.returncode == 2, (cmd, r.stdout, r.stderr)
    if cmd:  # a usage error is one line that points at --help
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("atomic-deploy: error:")
        assert "--help" in r.stderr
    else:  # no command at all: the help itself
        assert "usage:" in r.stderr
    assert not os.path.lexists(root)


# --------------------------------------------------------------------------- numbers

# Every numeric option of every command. NaN compares false with everything, so before these
# were checked `--wait nan` waited forever for a held lock and `--hook-timeout nan` never fired.
NUMERIC_OPTIONS = [
    (cmd, opt)
    for cmd in ("deploy", "prepare")
    for opt in ("--wait", "--hook-timeout", "--strip-components", "--jobs")
] + [
    (cmd, opt)
    for cmd in ("deploy", "activate", "rollback")
    for opt in ("--health-timeout", "--health-retries", "--health-interval", "--hook-timeout",
                "--wait")
] + [("deploy", "--keep"), ("prune", "--keep"), ("prune", "--wait"), ("adopt", "--wait"),
     ("race", "--seconds"), ("race", "--readers")]
NOT_A_COUNT = ["nan", "NaN", "inf", "-inf", "-1", "-0.5", "1e999"]


def _numeric_argv(cmd: str, opt: str, value: str, src: Path, root: Path) -> list[str]:
    base = {"deploy": ["deploy", str(src), str(root)], "prepare": ["prepare", str(src), str(root)],
            "activate": ["activate", str(root), "r1"], "rollback": ["rollback", str(root)],
            "prune": ["prune", str(root), "--keep", "1"], "adopt": ["adopt", str(root)],
            "race": ["race"]}[cmd]
    return [*base, f"{opt}={value}"]


@pytest.mark.parametrize(("cmd", "opt"), sorted(set(NUMERIC_OPTIONS)))
def test_non_finite_and_negative_numbers_are_refused(builds: Builds, root: Path, cmd: str, opt: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    deploy(builds("v1"), root)
    before = snapshot(root)
    for value in NOT_A_COUNT:
        rc = main(_numeric_argv(cmd, opt, value, builds("v2"), root))
        err = capsys.readouterr().err
        assert rc == 2, (cmd, opt, value, err)
        assert err.count("\n") == 1 and err.startswith("atomic-deploy: error:"), err
        assert opt in err, err
        assert snapshot(root) == before, (cmd, opt, value)


def test_wait_nan_with_the_lock_held_fails_at_once(builds: Builds, root: Path) -> None:
    """The reported case: `--wait nan` behind a held lock waited forever."""
    from atomic_deploy._layout import Layout
    from atomic_deploy._lock import RootLock

    deploy(builds("v1"), root)
    with RootLock(Layout(str(root)), 0.0, "holder"):
        r = run_cli("deploy", builds("v2"), root, "--wait", "nan", timeout=30)
    assert r.returncode == 2
    assert "--wait" in error_line(r)
    assert len(release_names(root)) == 1


@pytest.mark.parametrize(("field", "value"), [
    ("wait", float("nan")), ("wait", float("inf")), ("wait", -1.0),
    ("health_timeout", float("nan")), ("health_timeout", float("inf")), ("health_timeout", 0.0),
    ("health_interval", float("nan")), ("health_interval", -0.1),
    ("hook_timeout", float("nan")), ("hook_timeout", float("-inf")), ("hook_timeout", 0.0),
])
def test_api_refuses_non_finite_seconds(builds: Builds, root: Path, field: str,
                                        value: float) -> None:
    """validate_options guards API callers (and config files) as the CLI's types guard flags."""
    first = deploy(builds("v1"), root)
    before = snapshot(root)
    calls = [lambda: atomic_deploy.deploy(str(builds("v2")), str(root), **{field: value}),
             lambda: atomic_deploy.activate(str(root), first, **{field: value})]
    if field == "wait":
        calls += [lambda: atomic_deploy.prune(str(root), 1, wait=value),
                  lambda: atomic_deploy.adopt(str(root), wait=value)]
    for call in calls:
        with pytest.raises(atomic_deploy.InvalidInput, match="finite"):
            call()
        assert without_holder(snapshot(root)) == without_holder(before)

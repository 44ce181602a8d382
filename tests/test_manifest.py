"""--link-unchanged never ships stale bytes nor lets a check write into other releases; every
release's manifest, and `verify` against it. Through the real CLI."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from conftest import Builds, current_target, error_line, hidden_entries, release_names, run_cli

EPOCH = 1_577_836_800  # SOURCE_DATE_EPOCH of a reproducible build: every file gets this mtime


def _same_size_same_mtime(path: Path, text: str) -> None:
    assert len(text) == path.stat().st_size
    path.write_text(text)
    os.utime(path, (EPOCH, EPOCH))


def _manifest(root: Path, release: str) -> tuple[dict[str, object], dict[str, list[object]]]:
    lines = (root / ".atomic-deploy" / "manifests" / f"{release}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines[1:]]
    return json.loads(lines[0]), {r[0]: r for r in rows}


# --------------------------------------------------------------------------- A: stale bytes


def test_link_unchanged_never_deploys_the_old_bytes_of_a_same_size_same_mtime_file(
        tmp_path: Path) -> None:
    build, root = tmp_path / "b", tmp_path / "R"
    build.mkdir()
    (build / "f.txt").write_text("AAAA\n")
    os.utime(build / "f.txt", (EPOCH, EPOCH))
    assert run_cli("deploy", build, root).returncode == 0
    _same_size_same_mtime(build / "f.txt", "BBBB\n")
    r = run_cli("deploy", "--link-unchanged", build, root)
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "f.txt").read_text() == "BBBB\n"
    assert "hard-linked" not in r.stdout

    # Unchanged again: now linked, compared by the digest the last release's manifest recorded.
    r = run_cli("deploy", "--link-unchanged", build, root, "--json")
    assert json.loads(r.stdout)["linked"] == 1
    old, new = release_names(root)[-2:]
    assert os.stat(root / "releases" / old / "f.txt").st_ino == \
        os.stat(root / "releases" / new / "f.txt").st_ino

    # Only on request does size+mtime suffice, with the risk its help spells out.
    _same_size_same_mtime(build / "f.txt", "CCCC\n")
    r = run_cli("deploy", "--link-unchanged", "--trust-mtime", build, root)
    assert r.returncode == 0 and "1 hard-linked" in r.stdout
    assert (root / "current" / "f.txt").read_text() == "BBBB\n"
    assert "OLD bytes" in " ".join(run_cli("deploy", "--help").stdout.split())


def test_a_previous_file_edited_in_place_is_not_trusted_by_its_recorded_digest(
        tmp_path: Path) -> None:
    """The manifest's digest is used only while the old file's size and mtime still match it:
    a hot-patched previous release is read, never linked on its stale digest."""
    build, root = tmp_path / "b", tmp_path / "R"
    build.mkdir()
    (build / "f.txt").write_text("AAAA\n")
    assert run_cli("deploy", build, root, "--link-unchanged").returncode == 0
    live = root / "current" / "f.txt"
    st = live.stat()
    live.write_text("HOT!\n")  # same size; mtime put back, as a careless patch script might
    os.utime(live, ns=(st.st_atime_ns, st.st_mtime_ns))
    # The recorded digest would say "same as the build": --checksum reads the old file instead.
    r = run_cli("deploy", build, root, "--link-unchanged", "--checksum")
    assert r.returncode == 0 and "hard-linked" not in r.stdout
    assert (root / "current" / "f.txt").read_text() == "AAAA\n"


@pytest.mark.parametrize("flags", [["--trust-mtime"], ["--link-unchanged", "--trust-mtime",
                                                       "--checksum"]])
def test_trust_mtime_needs_link_unchanged_and_contradicts_checksum(builds: Builds, root: Path,
                                                                   flags: list[str]) -> None:
    r = run_cli("deploy", builds("v1"), root, *flags)
    assert r.returncode == 2
    assert "--trust-mtime" in error_line(r)
    assert not root.exists() or release_names(root) == []


# --------------------------------------------------------------------------- B: write-through


@pytest.mark.parametrize(("check", "procs"), [
    ("echo x >> a.txt; exit 1", "0"), ("echo x >> a.txt; exit 1", "1"),
    ("echo x >> a.txt", "0"), ("chmod 600 a.txt", "1")])
def test_a_check_writing_into_a_hard_linked_file_fails_and_says_the_live_release_changed(
        tmp_path: Path, check: str, procs: str) -> None:
    build, root = tmp_path / "src", tmp_path / "R"
    build.mkdir()
    (build / "a.txt").write_text("hello\n")
    (build / "b.txt").write_text("other\n")
    assert run_cli("deploy", build, root).returncode == 0
    (v1,) = release_names(root)
    # procs "1": the files are linked in worker processes, which report them back
    r = run_cli("deploy", build, root, "--link-unchanged", "--check", check,
                env={"ATOMIC_DEPLOY_COPY_PROCESSES": procs})
    assert r.returncode == 4
    line = error_line(r)
    assert "live release's files were changed" in line and "a.txt" in line
    assert f"{v1} (current, live)" in line and "b.txt" not in line
    assert "the new release was removed" in line
    assert release_names(root) == [v1] and current_target(root) == f"releases/{v1}"
    assert hidden_entries(root) == []
    assert not (root / ".atomic-deploy" / "manifests").exists() or \
        sorted(os.listdir(root / ".atomic-deploy" / "manifests")) == [f"{v1}.jsonl"]


def test_a_check_replacing_or_removing_a_linked_file_changes_only_its_release(
        tmp_path: Path) -> None:
    build, root = tmp_path / "src", tmp_path / "R"
    build.mkdir()
    (build / "a.txt").write_text("hello\n")
    (build / "b.txt").write_text("other\n")
    assert run_cli("deploy", build, root).returncode == 0
    r = run_cli("deploy", build, root, "--link-unchanged", "--check",
                "rm a.txt; echo new > t && mv t b.txt")
    assert r.returncode == 0, r.stderr
    v1, v2 = release_names(root)
    assert (root / "releases" / v1 / "b.txt").read_text() == "other\n"
    assert (root / "releases" / v2 / "b.txt").read_text() == "new\n"
    # what the check left is what the manifest holds
    assert run_cli("verify", root).returncode == 0


# --------------------------------------------------------------------------- C: manifests


def _rich_build(path: Path) -> Path:
    (path / "assets").mkdir(parents=True)
    (path / "assets" / "app.js").write_text("console.log(1);\n")
    (path / "index.html").write_text("<h1>hi</h1>\n")
    (path / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(path / "run.sh", 0o755)
    (path / "empty").mkdir()
    os.symlink("index.html", path / "home.html")
    (path / "storage").mkdir()
    (path / "storage" / "seed.txt").write_text("seed\n")
    return path


def test_deploy_records_a_manifest_that_verify_finds_clean(tmp_path: Path) -> None:
    build, root = _rich_build(tmp_path / "b"), tmp_path / "R"
    r = run_cli("deploy", build, root, "--shared-dir", "storage", "--revision", "abc123",
                "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    header, rows = _manifest(root, out["release"])
    assert header == {"v": 1, "entries": len(rows), "digest": None}
    assert rows["run.sh"][1:5] == ["file", 0o755, 10, os.stat(build / "run.sh").st_mtime_ns]
    assert rows["assets"][1:3] == ["dir", os.stat(build / "assets").st_mode & 0o7777]
    assert rows["home.html"] == ["home.html", "symlink", None, None, None, "index.html"]
    assert rows["storage"][1] == "symlink" and "storage/seed.txt" not in rows  # shared now
    assert rows["REVISION"][1] == "file" and "empty" in rows
    assert out["manifest"] and out["manifest"] == \
        json.loads(run_cli("status", root, "--json").stdout)["manifests"][out["release"]]
    r = run_cli("verify", root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"release {out['release']} matches its manifest" in r.stdout


def test_verify_reports_every_kind_of_drift(tmp_path: Path) -> None:
    build, root = _rich_build(tmp_path / "b"), tmp_path / "R"
    assert run_cli("deploy", build, root, "--digest").returncode == 0
    (rid,) = release_names(root)
    rel = root / "releases" / rid
    with open(rel / "index.html", "a") as f:
        f.write("<!-- hot patch -->\n")  # size and mtime
    os.chmod(rel / "run.sh", 0o700)  # mode
    os.unlink(rel / "assets" / "app.js")  # missing
    (rel / "extra.php").write_text("<?php\n")  # added
    os.unlink(rel / "home.html")
    os.symlink("elsewhere", rel / "home.html")  # symlink text
    st = os.stat(rel / "storage" / "seed.txt")
    (rel / "storage" / "seed.txt").write_text("SEED\n")  # same size, same mtime: --content
    os.utime(rel / "storage" / "seed.txt", ns=(st.st_atime_ns, st.st_mtime_ns))

    r = run_cli("verify", root, "--json")
    assert r.returncode == 1
    got = json.loads(r.stdout)
    assert got["clean"] is False and got["release"] == rid
    diffs = {d["path"]: (d["change"], d["fields"]) for d in got["differences"]}
    assert diffs == {
        "index.html": ("changed", ["size", "mtime"]),
        "run.sh": ("changed", ["mode"]),
        "assets/app.js": ("missing", []),
        "extra.php": ("added", []),
        "home.html": ("changed", ["target"]),
    }
    r = run_cli("verify", root, rid, "--content")
    assert r.returncode == 1
    assert "changed  storage/seed.txt (content)" in r.stdout.splitlines()
    assert "changed  index.html (size, mtime)" in r.stdout.splitlines()


def test_verify_without_a_manifest_or_release_is_one_line_exit_2(builds: Builds, root: Path,
                                                                 tmp_path: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    (rid,) = release_names(root)
    os.unlink(root / ".atomic-deploy" / "manifests" / f"{rid}.jsonl")
    r = run_cli("verify", root)
    assert r.returncode == 2 and f"release {rid} has no manifest" in error_line(r)
    r = run_cli("verify", root, "20000101000000")
    assert r.returncode == 2 and "unknown release id" in error_line(r)
    r = run_cli("verify", tmp_path / "nope")
    assert r.returncode == 2 and "does not exist" in error_line(r)


def test_content_digests_are_recorded_with_digest_or_link_unchanged(tmp_path: Path) -> None:
    build, root = _rich_build(tmp_path / "b"), tmp_path / "R"
    assert run_cli("deploy", build, root, "--digest").returncode == 0
    assert run_cli("deploy", build, root, "--link-unchanged").returncode == 0
    for rid in release_names(root):
        header, rows = _manifest(root, rid)
        assert header["digest"] == "blake2b-256"
        files = [r for r in rows.values() if r[1] == "file"]
        assert files and all(isinstance(r[5], str) and len(r[5]) == 64 for r in files)
    r = run_cli("verify", root, "--content")
    assert r.returncode == 0 and "files' contents compared" in r.stdout


def test_same_build_on_two_roots_has_the_same_manifest_digest(tmp_path: Path) -> None:
    build = _rich_build(tmp_path / "b")
    digests = []
    for name in ("host1", "host2"):
        r = run_cli("deploy", build, tmp_path / name, "--digest", "--json")
        assert r.returncode == 0, r.stderr
        digests.append(json.loads(r.stdout)["manifest"])
        listed = json.loads(run_cli("list", tmp_path / name, "--json").stdout)["releases"]
        assert [x["manifest"] for x in listed] == [digests[-1]]
    assert digests[0] == digests[1]


def test_manifest_goes_with_its_release_when_pruned(builds: Builds, root: Path) -> None:
    for v in ("v1", "v2", "v3", "v4"):
        assert run_cli("deploy", builds(v), root).returncode == 0
    assert run_cli("prune", root, "--keep", "2").returncode == 0
    kept = release_names(root)
    assert sorted(os.listdir(root / ".atomic-deploy" / "manifests")) == \
        [f"{r}.jsonl" for r in kept]


def test_check_hooks_writing_files_are_in_the_manifest(builds: Builds, root: Path) -> None:
    r = run_cli("deploy", builds("v1"), root, "--check", "mkdir -p cache && echo c > cache/x",
                "--digest")
    assert r.returncode == 0, r.stderr
    (rid,) = release_names(root)
    _header, rows = _manifest(root, rid)
    assert rows["cache/x"][1] == "file" and rows["cache/x"][5]
    assert rows["index.html"][5]  # the copy's digest, kept
    assert run_cli("verify", root, "--content").returncode == 0


def test_tarball_release_has_a_manifest(tmp_path: Path, root: Path) -> None:
    build = _rich_build(tmp_path / "b")
    tarball = tmp_path / "app.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(build, arcname=".")
    assert run_cli("deploy", tarball, root).returncode == 0
    r = run_cli("verify", root)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_crashed_deploys_manifest_is_removed_by_recovery(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    (v1,) = release_names(root)
    r = run_cli("deploy", builds("v2"), root, fault="temp-link-created:KILL")
    assert r.returncode == -9
    manifests = root / ".atomic-deploy" / "manifests"
    assert len(os.listdir(manifests)) == 2  # written before the switch, with its release
    assert run_cli("deploy", builds("v3"), root).returncode == 0  # recovers first
    assert sorted(os.listdir(manifests)) == [f"{r}.jsonl" for r in release_names(root)]
    assert len(release_names(root)) == 2 and release_names(root)[0] == v1


def test_linked_files_under_a_shared_path_are_not_checked_through_the_shared_link(
        tmp_path: Path) -> None:
    """A shared folder replaces the release's copy: a check writing into ROOT/shared through
    it is not a write into another release."""
    build, root = tmp_path / "src", tmp_path / "R"
    (build / "storage").mkdir(parents=True)
    (build / "storage" / "log.txt").write_text("seed\n")
    (build / "a.txt").write_text("a\n")
    assert run_cli("deploy", build, root, "--shared-dir", "storage").returncode == 0
    r = run_cli("deploy", build, root, "--shared-dir", "storage", "--link-unchanged",
                "--check", "echo more >> storage/log.txt")
    assert r.returncode == 0, r.stderr
    assert (root / "shared" / "storage" / "log.txt").read_text() == "seed\nmore\n"


def test_file_digests_gives_each_recorded_file_and_nothing_else(tmp_path: Path) -> None:
    """The previous release's digests as --link-unchanged looks them up (kept compact, not as
    a dict): every file's (size, mtime, digest) of its manifest, None for anything else; an
    unreadable manifest gives none (the files are then read)."""
    from atomic_deploy import _manifest, operations

    build = tmp_path / "b"
    (build / "sub dir").mkdir(parents=True)
    names = ["a.txt", "sub dir/é \"q\".js", "sub dir/tab\tname", "empty"]
    for i, name in enumerate(names):
        (build / name).write_bytes(b"z" * (i * 1000))
    os.symlink("a.txt", build / "link")
    root = str(tmp_path / "R")
    result = operations.deploy(str(build), root, digest=True)
    layout = _manifest.Layout(root)
    found = _manifest.load(layout, result.release)
    assert found is not None
    got = _manifest.file_digests(layout, result.release)
    assert len(got) == len(names)
    for name in names:
        e = found[1][name]
        assert got.get(name) == (e[3], e[4], e[5]) and e[5]
    for other in ("sub dir", "link", "missing", ""):
        assert got.get(other) is None
    Path(layout.manifest(result.release)).write_text('{"v": 1, "digest": "blake2b-256"}\n[x\n')
    broken = _manifest.file_digests(layout, result.release)
    assert len(broken) == 0 and broken.get("a.txt") is None


@pytest.mark.parametrize("wide", [False, True])
def test_compact_digest_lookups_find_only_whole_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wide: bool) -> None:
    """PrevDigests and the source digest cache search their sorted records in C: a key found
    inside another record (here: in a digest) is not a match; with many records (``wide``)
    they are indexed by two bytes of the key, with the same answers."""
    from atomic_deploy import _manifest

    if wide:
        monkeypatch.setattr(_manifest, "_WIDE", 1)

    def key(rel: str) -> bytes:
        return _manifest.blake2b(rel.encode(), digest_size=16).digest()

    # "b" is absent, but its key sits in the digest of "a<i>", in the same bucket
    a = next(f"a{i}" for i in range(2_000_000)
             if key(f"a{i}")[:2 if wide else 1] == key("b")[:2 if wide else 1])
    rows = {a: (10, 20, (key("b") * 2).hex())}
    rows.update({f"f{i}": (i, -i, _manifest.blake2b(str(i).encode(), digest_size=32).hexdigest())
                 for i in range(300)})
    header = {"v": 1, "digest": "blake2b-256", "entries": len(rows)}
    text = json.dumps(header) + "\n" + "".join(
        json.dumps([rel, "file", 420, size, mtime, d], separators=(",", ":")) + "\n"
        for rel, (size, mtime, d) in sorted(rows.items()))
    layout = _manifest.Layout(str(tmp_path))
    os.makedirs(layout.manifests)
    Path(layout.manifest("r1")).write_text(text)
    got = _manifest.file_digests(layout, "r1")
    assert len(got) == len(rows)
    assert len(got.index) == (65537 if wide else 257)
    for rel, want in rows.items():
        assert got.get(rel) == want
    assert got.get("b") is None and got.get("f300") is None

    records = sorted(key(rel) + key(rel) * 2 for rel in rows)  # key, digest (its key twice)
    records.append(key(a) + key("b") * 2)  # (a's twice, replaced: sorted order kept)
    records = sorted({r[:16]: r for r in records}.values())
    cache = _manifest.DigestCache(None, str(tmp_path), 0, b"".join(records))
    for r in records:
        assert cache.get(r[:16]) == r[16:].hex()
    assert cache.get(key("b")) is None

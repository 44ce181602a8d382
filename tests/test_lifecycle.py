"""Shared data, config file, dry run, adopting existing roots (Capistrano, Deployer, legacy)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import atomic_deploy
from atomic_deploy import _platform
from conftest import Builds, current_target, history, make_build, release_names, run_cli, snapshot

# ---------------------------------------------------------------- shared data

def test_shared_dir_seeded_from_first_release_then_linked(tmp_path: Path, root: Path) -> None:
    b1 = make_build(tmp_path / "b1", {"index.html": "v1", "storage/seed.txt": "from v1",
                                      "storage/sub/x": "x"})
    r = run_cli("deploy", b1, root, "--shared-dir", "storage")
    assert r.returncode == 0, r.stderr
    shared = root / "shared" / "storage"
    assert (shared / "seed.txt").read_text() == "from v1"  # seeded (Deployer behaviour)
    link = root / "current" / "storage"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # relative link
    (shared / "upload.bin").write_text("user data")
    b2 = make_build(tmp_path / "b2", {"index.html": "v2", "storage/seed.txt": "from v2"})
    assert run_cli("deploy", b2, root, "--shared-dir", "storage").returncode == 0
    # not reseeded: the release's own copy was dropped inside the staged release only
    assert (root / "current" / "storage" / "seed.txt").read_text() == "from v1"
    assert (root / "current" / "storage" / "upload.bin").read_text() == "user data"
    assert (b2 / "storage" / "seed.txt").read_text() == "from v2"  # source untouched


def test_shared_dir_without_release_copy_is_created_empty(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root, "--shared-dir", "var/log").returncode == 0
    assert (root / "shared" / "var" / "log").is_dir()
    assert (root / "current" / "var" / "log").is_symlink()


def test_missing_shared_file_fails_before_anything(builds: Builds, root: Path) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    before = snapshot(root)
    r = run_cli("deploy", builds("v2"), root, "--shared-file", ".env")
    assert r.returncode == 2
    assert "shared" in r.stderr and "--create-missing" in r.stderr
    assert r.stderr.count("\n") == 1
    assert snapshot(root) == before


def test_shared_file_linked_and_create_missing(builds: Builds, root: Path) -> None:
    r = run_cli("deploy", builds("v1"), root, "--shared-file", "config/.env", "--create-missing")
    assert r.returncode == 0, r.stderr
    assert (root / "shared" / "config" / ".env").read_text() == ""
    (root / "shared" / "config" / ".env").write_text("SECRET=1")
    assert run_cli("deploy", builds("v2"), root, "--shared-file", "config/.env").returncode == 0
    assert (root / "current" / "config" / ".env").read_text() == "SECRET=1"


def test_shared_data_survives_prune_rollback_and_failed_deploy(builds: Builds, root: Path) -> None:
    for v in ("v1", "v2", "v3"):
        assert run_cli("deploy", builds(v), root, "--shared-dir", "data").returncode == 0
    (root / "shared" / "data" / "keep.txt").write_text("precious")
    assert run_cli("rollback", root).returncode == 0
    assert run_cli("prune", root, "--keep", "1").returncode == 0
    r = run_cli("deploy", builds("v4"), root, "--shared-dir", "data", fault="flushed:EIO")
    assert r.returncode == 1
    assert (root / "shared" / "data" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("bad", ["/etc", "../up", "..", "", "a/../../b", ".atomic-deploy"])
def test_invalid_shared_paths_rejected(builds: Builds, root: Path, bad: str) -> None:
    r = run_cli("deploy", builds("v1"), root, "--shared-dir", bad)
    assert r.returncode == 2, r.stderr
    assert not root.exists()


def test_shared_path_through_a_symlink_in_the_release_is_refused(tmp_path: Path,
                                                                 root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    b = make_build(tmp_path / "b", {"index.html": "x"})
    (b / "app").symlink_to(outside)
    r = run_cli("deploy", b, root, "--shared-dir", "app/storage")
    assert r.returncode == 2
    assert list(outside.iterdir()) == []
    assert release_names(root) == []


# ---------------------------------------------------------------- config file

def test_config_file_in_root_supplies_settings_and_flags_win(tmp_path: Path, builds: Builds,
                                                             root: Path) -> None:
    root.mkdir()
    (root / "atomic-deploy.toml").write_text(
        'keep = 2\nshared_dirs = ["storage"]\nmessage = "from config"\n')
    for v in ("v1", "v2", "v3", "v4"):
        assert run_cli("deploy", builds(v), root).returncode == 0
    assert len(release_names(root)) == 2  # keep = 2 from the file
    assert (root / "current" / "storage").is_symlink()
    assert history(root)[-2]["message"] == "from config"
    assert run_cli("deploy", builds("v5"), root, "-m", "flag").returncode == 0
    assert [h for h in history(root) if h["op"] == "deploy"][-1]["message"] == "flag"


def test_explicit_config_and_errors(tmp_path: Path, builds: Builds, root: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("bogus = 1\n")
    r = run_cli("deploy", builds("v1"), root, "--config", cfg)
    assert r.returncode == 2 and "unknown setting" in r.stderr and r.stderr.count("\n") == 1
    cfg.write_text("keep = 'two'\n")  # a string, but not "all"
    r = run_cli("deploy", builds("v1"), root, "--config", cfg)
    assert r.returncode == 2 and "keep = 'two'" in r.stderr and str(cfg) in r.stderr
    assert r.stderr.count("\n") == 1
    cfg.write_text("keep = 2.5\n")
    r = run_cli("deploy", builds("v1"), root, "--config", cfg)
    assert r.returncode == 2 and "wrong type" in r.stderr
    cfg.write_text("keep = [\n")
    r = run_cli("deploy", builds("v1"), root, "--config", cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("deploy", builds("v1"), root, "--config", tmp_path / "missing.toml")
    assert r.returncode == 2
    assert not root.exists()


def test_config_without_toml_support_is_one_clear_line(tmp_path: Path, builds: Builds,
                                                       root: Path) -> None:
    """Simulate Python < 3.11 without tomli: both modules unimportable."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("keep = 1\n")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tomllib'] = None\nsys.modules['tomli'] = None\n")
    r = run_cli("deploy", builds("v1"), root, "--config", cfg,
                env={"PYTHONPATH": f"{blocker}{os.pathsep}" + os.environ.get("PYTHONPATH", "")})
    assert r.returncode == 2, r.stderr
    assert "Python 3.11+" in r.stderr and "tomli" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# ---------------------------------------------------------------- dry run

def test_dry_run_deploy_rollback_prune_change_nothing(builds: Builds, root: Path) -> None:
    r = run_cli("deploy", builds("v1"), root, "--dry-run", "--shared-dir", "storage")
    assert r.returncode == 0 and "would" in r.stdout and "switch current" in r.stdout
    assert not root.exists()
    for v in ("v1", "v2", "v3"):
        run_cli("deploy", builds(v), root)
    before = snapshot(root)
    a, b, c = release_names(root)
    r = run_cli("deploy", builds("v4"), root, "--dry-run", "--keep", "1", "--json")
    plan = json.loads(r.stdout)["plan"]
    assert any("switch current from releases/" + c in s for s in plan)
    assert any("delete" in s and a in s for s in plan)
    r = run_cli("rollback", root, "--dry-run")
    assert r.returncode == 0 and f"releases/{b}" in r.stdout and f"mark {c} bad" in r.stdout
    r = run_cli("prune", root, "--keep", "1", "--dry-run", "--json")
    assert json.loads(r.stdout)["plan"][0] == f"delete releases/{a}"
    assert snapshot(root) == before


def _planned_victims(plan: list[str]) -> list[str]:
    rows = [s for s in plan if s.startswith("prune to ")]
    assert len(rows) == 1, plan
    listed = rows[0].split(": delete ", 1)[1]
    return [] if listed == "nothing" else listed.split(", ")


@pytest.mark.parametrize("setup", ["plain", "after-rollback", "old-current", "prepare"])
def test_dry_run_deploy_keep_lists_what_the_real_deploy_deletes(builds: Builds, root: Path,
                                                                setup: str) -> None:
    ids = [atomic_deploy.deploy(str(builds(v)), str(root)).release for v in ("v1", "v2", "v3",
                                                                            "v4")]
    if setup == "after-rollback":
        atomic_deploy.rollback(str(root))  # v4 bad, v3 current
    elif setup == "old-current":
        atomic_deploy.activate(str(root), ids[1])
    if setup == "prepare":  # prepare has no --keep flag; the config file's keep applies
        (root / "atomic-deploy.toml").write_text("keep = 2\n")
        cmd, keep = "prepare", []
    else:
        cmd, keep = "deploy", ["--keep", "2"]
    before = snapshot(root)
    r = run_cli(cmd, builds("v5"), root, *keep, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    planned = _planned_victims(json.loads(r.stdout)["plan"])
    assert snapshot(root) == before

    r = run_cli(cmd, builds("v5"), root, *keep, "--json")
    assert r.returncode == 0, r.stderr
    deleted = json.loads(r.stdout)["pruned"]
    assert deleted, "a case where the real run deletes something"
    assert planned == deleted
    assert [n for n in ids if n not in release_names(root)] == deleted


# ---------------------------------------------------------------- adopting roots

def _legacy_root(root: Path) -> None:
    (root / "current").mkdir(parents=True)
    (root / "current" / "index.html").write_text("legacy")


@pytest.mark.parametrize("exchange", [True, False])
def test_adopt_moves_a_real_current_folder_into_releases(root: Path, builds: Builds,
                                                         exchange: bool) -> None:
    _legacy_root(root)
    r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 2 and "adopt" in r.stderr
    args = ["adopt", root, "--id", "legacy", "--json"] + ([] if exchange else ["--no-exchange"])
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    if exchange and _platform.exchange_name():
        assert out["method"] == _platform.exchange_name()
    else:
        assert "two-step" in out["method"]
    assert current_target(root) == "releases/legacy"
    assert (root / "current" / "index.html").read_text() == "legacy"
    assert os.listdir(root / ".atomic-deploy" / "tmp") == []
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    assert run_cli("rollback", root).returncode == 0
    assert (root / "current" / "index.html").read_text() == "legacy"


def test_adopt_exchange_never_leaves_a_gap(root: Path, tmp_path: Path) -> None:
    """Readers during 25 adopts by exchange: every read through current succeeds.

    Between adopts the test puts a fresh real folder back at current with one exchange (so the
    readers see no gap from the test itself either); the adopted folders stay as releases.
    """
    if not _platform.exchange_name():
        pytest.skip("no atomic exchange on this system")
    from test_readers import _collect, _run_readers

    def legacy_folder(path: Path, byte: str) -> None:
        path.mkdir(parents=True)
        (path / "index.html").write_text("legacy")
        (path / "data").write_text(byte * 65536)
        (path / "a").write_text(byte)
        (path / "b").write_text(byte)

    legacy_folder(root / "current", "L")
    procs, stop = _run_readers(tmp_path, root, 2)
    try:
        for i in range(25):
            atomic_deploy.adopt(str(root), f"legacy{i}")
            assert current_target(root) == f"releases/legacy{i}"
            legacy_folder(root / "next", "MN"[i % 2])
            _platform.exchange(str(root / "next"), str(root / "current"))
            os.unlink(root / "next")  # the link that was current
    finally:
        results = _collect(tmp_path, procs, stop)
    assert [r["enoent"] for r in results] == [0, 0], results
    assert [r["torn"] for r in results] == [0, 0], results
    assert {"L", "M", "N"} <= set().union(*(set(r["seen"]) for r in results))  # type: ignore[call-overload]


@pytest.mark.parametrize("step", ["adopt-links-made", "adopt-exchanged", "adopt-moved"])
def test_adopt_killed_at_any_step_is_finished_by_the_next_command(root: Path, builds: Builds,
                                                                  step: str) -> None:
    _legacy_root(root)
    r = run_cli("adopt", root, "--id", "legacy", fault=f"{step}:KILL")
    assert r.returncode == -9
    # whatever the state, the legacy content is reachable or still in place
    assert (root / "current" / "index.html").read_text() == "legacy"
    r = run_cli("adopt", root, "--id", "legacy2")  # a retry, or any other command
    if r.returncode != 0:
        r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 0, r.stderr
    assert (root / "releases").is_dir()
    contents = {n: (root / "releases" / n / "index.html").read_text()
                for n in release_names(root) if (root / "releases" / n / "index.html").exists()}
    assert "legacy" in contents.values()
    assert os.listdir(root / ".atomic-deploy" / "tmp") == []


def test_capistrano_root_is_understood(tmp_path: Path, builds: Builds) -> None:
    root = tmp_path / "cap"
    rel = root / "releases"
    for name in ("20240101000000", "20240102000000", "20240103000000"):
        make_build(rel / name, {"index.html": name})
    (root / "shared").mkdir()
    (root / "revisions.log").write_text("Branch main (at abc) deployed as release 20240103000000\n")
    os.symlink(str(rel / "20240103000000"), root / "current")  # absolute, as Capistrano does
    s = json.loads(run_cli("status", root, "--json").stdout)
    assert s["current"] == "20240103000000" and s["previous"] == "20240102000000"
    assert run_cli("rollback", root).returncode == 0
    assert current_target(root) == "releases/20240102000000"  # now relative
    assert run_cli("prune", root, "--keep", "1").returncode == 0
    # current and the rollback target stay; the bad one is newer than the kept good one: kept
    assert release_names(root) == ["20240101000000", "20240102000000", "20240103000000"]
    assert run_cli("deploy", builds("v1"), root, "--keep", "2").returncode == 0
    assert "20240101000000" not in release_names(root)


def test_deployer_numbered_releases_are_ordered_numerically(tmp_path: Path,
                                                            builds: Builds) -> None:
    root = tmp_path / "dep"
    for n in ("1", "2", "10", "9"):
        make_build(root / "releases" / n, {"index.html": n})
    (root / ".dep").mkdir()
    (root / ".dep" / "releases_log").write_text("")
    os.symlink("releases/10", root / "current")
    rels = json.loads(run_cli("list", root, "--json").stdout)["releases"]
    assert [r["id"] for r in rels] == ["1", "2", "9", "10"]
    assert run_cli("rollback", root).returncode == 0
    assert current_target(root) == "releases/9"
    assert run_cli("deploy", builds("v1"), root, "--keep", "2").returncode == 0
    # keep 2 good: the new one and 9 (the rollback target); 10 is bad and newer than 9: kept
    assert release_names(root)[-1] > "2"
    assert "1" not in release_names(root) and "2" not in release_names(root)


# ---------------------------------------------------------------- tarball and git sources

def test_deploy_from_tarball_with_strip_components(tmp_path: Path, root: Path) -> None:
    import tarfile

    b = make_build(tmp_path / "app-1.0", {"index.html": "tar", "js/app.js": "x"})
    archive = tmp_path / "app.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(b, arcname="app-1.0")
    r = run_cli("deploy", archive, root, "--strip-components", "1", "--revision", "v1.0")
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "index.html").read_text() == "tar"
    assert (root / "current" / "REVISION").read_text() == "v1.0\n"
    assert history(root)[-1]["revision"] == "v1.0"


def test_hostile_tarball_is_refused_and_changes_nothing(tmp_path: Path, root: Path,
                                                        builds: Builds) -> None:
    import io
    import tarfile

    assert run_cli("deploy", builds("v1"), root).returncode == 0
    before = snapshot(root)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    r = run_cli("deploy", archive, root)
    assert r.returncode == 2 and r.stderr.count("\n") == 1

    def outside_state(snap: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in snap.items() if not k.startswith(".atomic-deploy/")}
    assert outside_state(snapshot(root)) == outside_state(before)
    assert history(root)[-1]["outcome"] == "failed"  # the attempt is logged
    assert not (root.parent / "escape.txt").exists()


def test_deploy_from_git_records_the_commit(tmp_path: Path, root: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    make_build(repo, {"index.html": "one"})

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "-C",
                               str(repo), *args], check=True, capture_output=True,
                              text=True).stdout.strip()
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    (repo / "index.html").write_text("two")
    git("commit", "-qam", "two")
    r = run_cli("deploy", "--git", repo, "--ref", first, root)
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "index.html").read_text() == "one"
    assert (root / "current" / "REVISION").read_text().strip() == first
    assert not (root / "current" / ".git").exists()
    assert history(root)[-1]["revision"] == first
    r = run_cli("deploy", "--git", repo, "--ref", "no-such-ref", root)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    r = run_cli("deploy", "--git", repo, "--ref", "--upload-pack=touch x", root)
    assert r.returncode == 2


# ---------------------------------------------------------------- the same features from the API

def test_lifecycle_from_the_python_api(tmp_path: Path, root: Path) -> None:
    b1 = make_build(tmp_path / "b1", {"index.html": "v1", "storage/a": "seed"})
    b2 = make_build(tmp_path / "b2", {"index.html": "v2"})
    seen = tmp_path / "seen"
    r1 = atomic_deploy.deploy(str(b1), str(root), shared_dirs=["storage"],
                              check=["test -f index.html"],
                              after_switch=[["sh", "-c", f'echo "$ATOMIC_DEPLOY_RELEASE" >> {seen}']])
    assert (root / "shared" / "storage" / "a").read_text() == "seed"
    with pytest.raises(atomic_deploy.CheckFailed) as info:
        atomic_deploy.deploy(str(b2), str(root), shared_dirs=["storage"],
                             health_check="exit 1", health_retries=0)
    assert info.value.exit_code == 4 and info.value.rolled_back
    assert current_target(root) == f"releases/{r1.release}"
    assert seen.read_text().split() == [r1.release]
    plan = atomic_deploy.status(str(root))
    assert plan.current == r1.release and len(plan.bad) == 1


def test_health_check_and_strip_components_from_the_config_file(tmp_path: Path,
                                                                root: Path) -> None:
    import tarfile

    b = make_build(tmp_path / "pkg", {"index.html": "cfg"})
    archive = tmp_path / "pkg.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(b, arcname="pkg")
    root.mkdir()
    (root / "atomic-deploy.toml").write_text(
        'strip_components = 1\nhealth_check = "test -f index.html"\nhealth_retries = 0\n')
    r = run_cli("deploy", archive, root)
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "index.html").read_text() == "cfg"
    (root / "atomic-deploy.toml").write_text(
        'strip_components = 1\nhealth_check = "false"\nhealth_retries = 0\n')
    r = run_cli("deploy", archive, root)
    assert r.returncode == 4 and "health-check" in r.stderr

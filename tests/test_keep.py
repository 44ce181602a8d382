"""The default `keep`: a deploy prunes to 5 good releases unless told `--keep all`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import atomic_deploy
from atomic_deploy import operations
from conftest import Builds, current_target, error_line, history, release_names, run_cli, snapshot


def _deploy(build: Path, root: Path, *extra: str) -> str:
    r = run_cli("deploy", build, root, "--json", *extra)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["release"])


def test_deploy_prunes_to_five_by_default(builds: Builds, root: Path) -> None:
    ids = [_deploy(builds(f"v{i}"), root) for i in range(7)]
    assert release_names(root) == ids[2:]
    assert current_target(root) == f"releases/{ids[-1]}"
    prunes = [h for h in history(root) if h["op"] == "prune"]
    assert [p["deleted"] for p in prunes if p["deleted"]] == [[ids[0]], [ids[1]]]
    assert {p["keep"] for p in prunes} == {5}


def test_deploy_output_names_what_the_default_pruned(builds: Builds, root: Path) -> None:
    ids = [_deploy(builds(f"v{i}"), root) for i in range(5)]
    r = run_cli("deploy", builds("v5"), root)
    assert r.returncode == 0, r.stderr
    assert f"pruned 1: {ids[0]}" in r.stdout


def test_keep_all_flag_turns_pruning_off(builds: Builds, root: Path) -> None:
    ids = [_deploy(builds(f"v{i}"), root, "--keep", "all") for i in range(7)]
    assert release_names(root) == ids
    assert not [h for h in history(root) if h["op"] == "prune"]


def test_keep_all_in_the_config_file_turns_pruning_off(builds: Builds, root: Path) -> None:
    root.mkdir()
    (root / "atomic-deploy.toml").write_text('keep = "all"\n')
    ids = [_deploy(builds(f"v{i}"), root) for i in range(7)]
    assert release_names(root) == ids
    # A flag still wins over the file.
    r = run_cli("deploy", builds("v7"), root, "--keep", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert len(release_names(root)) == 2


def test_keep_number_in_the_config_file_beats_the_default(builds: Builds, root: Path) -> None:
    root.mkdir()
    (root / "atomic-deploy.toml").write_text("keep = 7\n")
    ids = [_deploy(builds(f"v{i}"), root) for i in range(8)]
    assert release_names(root) == ids[1:]


def test_bad_keep_values_are_refused_before_anything_changes(builds: Builds, root: Path) -> None:
    r = run_cli("deploy", builds("v1"), root, "--keep", "some")
    assert r.returncode == 2 and "'all'" in r.stderr, r.stderr
    r = run_cli("deploy", builds("v1"), root, "--keep", "0")
    assert r.returncode == 2 and "at least 1" in r.stderr and "all" in r.stderr, r.stderr
    assert not root.exists()
    root.mkdir()
    for bad in ('keep = "forever"', "keep = 0", "keep = true"):
        (root / "atomic-deploy.toml").write_text(bad + "\n")
        r = run_cli("deploy", builds("v1"), root)
        assert r.returncode == 2, (bad, r.stderr)
        assert "atomic-deploy.toml" in r.stderr and "keep" in r.stderr, r.stderr
        assert release_names(root) == []


def test_prepare_does_not_prune_by_default(builds: Builds, root: Path) -> None:
    """Capistrano cleans up after a deploy only; a prepare prunes only when told to."""
    ids = []
    for i in range(7):
        r = run_cli("prepare", builds(f"v{i}"), root)
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())
    assert release_names(root) == ids
    (root / "atomic-deploy.toml").write_text("keep = 3\n")
    r = run_cli("prepare", builds("v7"), root)
    assert r.returncode == 0, r.stderr
    assert release_names(root) == [*ids, r.stdout.strip()][-3:]


def test_prune_without_keep_uses_the_default(builds: Builds, root: Path) -> None:
    ids = [_deploy(builds(f"v{i}"), root, "--keep", "all") for i in range(8)]
    r = run_cli("prune", root, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"][:3] == [f"delete releases/{i}" for i in ids[:3]]
    r = run_cli("prune", root, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"] == ids[:3]
    assert release_names(root) == ids[3:]


def test_prune_with_keep_all_is_a_usage_error(builds: Builds, root: Path) -> None:
    for i in range(7):
        _deploy(builds(f"v{i}"), root, "--keep", "all")
    before = snapshot(root)
    r = run_cli("prune", root, "--keep", "all")
    assert r.returncode == 2 and "pruning off" in r.stderr, r.stderr
    (root / "atomic-deploy.toml").write_text('keep = "all"\n')
    r = run_cli("prune", root)
    assert r.returncode == 2 and "pruning off" in r.stderr, r.stderr
    (root / "atomic-deploy.toml").unlink()
    assert snapshot(root) == before


def test_dry_run_shows_the_default_prune(builds: Builds, root: Path) -> None:
    ids = [_deploy(builds(f"v{i}"), root) for i in range(5)]
    r = run_cli("deploy", builds("v5"), root, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    rows = [s for s in plan if s.startswith("prune to 5")]
    assert rows and rows[0].endswith(f": delete {ids[0]}"), plan
    assert "default" in rows[0]
    r = run_cli("deploy", builds("v5"), root, "--dry-run", "--keep", "all", "--json")
    plan = json.loads(r.stdout)["plan"]
    assert not [s for s in plan if s.startswith("prune to")]
    assert "prune nothing (keep = all)" in plan
    r = run_cli("deploy", builds("v5"), root, "--json")
    assert json.loads(r.stdout)["pruned"] == [ids[0]]


def test_default_keeps_recent_bad_releases_and_hand_made_folders(builds: Builds,
                                                                root: Path) -> None:
    _a, b, c = (_deploy(builds(v), root) for v in ("a", "b", "c"))
    (root / "releases" / "notes").mkdir()  # made by hand, not named like a release id
    r = run_cli("rollback", root)
    assert r.returncode == 0, r.stderr  # c bad, b current
    d, e, f, g = (_deploy(builds(v), root) for v in ("d", "e", "f", "g"))
    # Good: a b d e f g; the 5 newest good are b..g, so only a goes; the bad c is newer than
    # the oldest kept good release (evidence) and does not count toward the 5.
    assert release_names(root) == sorted([b, c, d, e, f, g, "notes"])


def test_prune_default_keeps_an_old_current_and_its_rollback_target(builds: Builds,
                                                                    root: Path) -> None:
    ids = [_deploy(builds(f"v{i}"), root, "--keep", "all") for i in range(8)]
    atomic_deploy.activate(str(root), ids[1])  # current ids[1]; its rollback target ids[0]
    r = run_cli("prune", root, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["deleted"] == [ids[2]]
    assert release_names(root) == ids[:2] + ids[3:]
    assert current_target(root) == f"releases/{ids[1]}"


def test_api_deploy_prunes_by_default_and_prepare_does_not(builds: Builds, root: Path) -> None:
    ids = [atomic_deploy.deploy(str(builds(f"v{i}")), str(root)).release for i in range(6)]
    assert release_names(root) == ids[1:]
    assert operations.DEFAULT_KEEP == 5
    more = [atomic_deploy.prepare(str(builds(f"p{i}")), str(root)).release for i in range(3)]
    assert release_names(root) == ids[1:] + more
    r = atomic_deploy.deploy(str(builds("z")), str(root), keep="all")
    assert release_names(root) == [*ids[1:], *more, r.release]
    assert os.path.isdir(root / "releases" / ids[1])


def test_prune_refuses_keep_0_without_offering_all(builds: Builds, root: Path) -> None:
    """`prune --keep 0` said "(or 'all' to keep every release)", and prune then refused
    --keep all: prune's own words never offer it, for the flag or the config file's keep."""
    for i in range(3):
        _deploy(builds(f"v{i}"), root, "--keep", "all")
    before = snapshot(root)
    cases: list[tuple[str, list[str]]] = [
        ("", ["--keep", "0"]), ("", ["--keep", "-2"]), ("", ["--keep", "abc"]),
        ("keep = 0\n", []), ("keep = 0\n", ["--dry-run"])]
    for config, flags in cases:
        if config:
            (root / "atomic-deploy.toml").write_text(config)
        r = run_cli("prune", root, *flags)
        line = error_line(r)
        assert r.returncode == 2 and "'all'" not in line and "all " not in line, (flags, line)
        assert ("at least 1" in line) != (flags == ["--keep", "abc"]), line
        assert ("atomic-deploy.toml: keep = 0" in line) == bool(config), line
        (root / "atomic-deploy.toml").unlink(missing_ok=True)
        assert snapshot(root) == before
    # deploy's own message still offers it: there 'all' is what turns pruning off.
    r = run_cli("deploy", builds("v9"), root, "--keep", "0")
    assert r.returncode == 2 and "'all'" in error_line(r)

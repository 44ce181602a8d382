"""Deleting stays inside ROOT and never follows links; what prune keeps; order and rollback
come from the history and ids, never from mtimes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import atomic_deploy
from atomic_deploy import _signals
from conftest import (
    Builds,
    DeleteGuard,
    current_target,
    hidden_entries,
    history,
    make_build,
    release_names,
    run_cli,
    snapshot,
)


def deploy(src: Path, root: Path, *extra: str) -> str:
    r = run_cli("deploy", src, root, "--json", *extra)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["release"])


def ok(*args: str | os.PathLike[str]) -> dict[str, Any]:
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def listing(root: Path) -> list[dict[str, Any]]:
    return list(ok("list", root)["releases"])


def states(root: Path) -> dict[str, str]:
    return {r["id"]: r["state"] for r in listing(root)}


def make_outside(base: Path) -> Path:
    outside = base / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sentinel.txt").write_text("must survive\n")
    (outside / "sub" / "deep.txt").write_text("must survive too\n")
    return outside


def linky_build(base: Path, outside: Path, version: str) -> Path:
    """A build with links out of itself: to a folder with a sentinel, to its file, and to /."""
    src = make_build(base / f"linky-{version}", version=version)
    os.symlink(str(outside), src / "to-outside")
    os.symlink(str(outside / "sentinel.txt"), src / "to-sentinel")
    os.symlink("/", src / "to-slash")
    (src / "nested").mkdir()
    os.symlink("../../../../outside", src / "nested" / "relative-out")
    os.symlink(str(outside), src / "nested" / "to-outside")
    return src


# --------------------------------------------------------------------------- never follow links


def test_prune_does_not_follow_links_out_of_a_release(
    tmp_path: Path, builds: Builds, root: Path, guard: DeleteGuard
) -> None:
    outside = make_outside(tmp_path)
    outside_before = snapshot(outside)
    guard.allowed = [str(root)]
    old = atomic_deploy.deploy(str(linky_build(tmp_path, outside, "v1")), str(root)).release
    # the release really holds links out of ROOT, including one to /
    assert os.readlink(root / "releases" / old / "to-slash") == "/"
    assert os.readlink(root / "releases" / old / "to-outside") == str(outside)
    ids = [atomic_deploy.deploy(str(builds(v)), str(root)).release for v in ("v2", "v3")]

    result = atomic_deploy.prune(str(root), keep=1)
    assert result.deleted == [old]
    assert guard.violations == []
    assert release_names(root) == ids
    assert snapshot(outside) == outside_before
    assert hidden_entries(root) == []
    # it really deleted the links themselves, inside ROOT
    assert any(d.endswith("/to-slash") for d in guard.deleted)
    assert os.path.isdir("/") and os.listdir("/")


def test_prune_cli_does_not_follow_links_out_of_a_release(
    tmp_path: Path, builds: Builds, root: Path
) -> None:
    outside = make_outside(tmp_path)
    src = make_build(tmp_path / "linky", version="v1")
    os.symlink(str(outside), src / "to-outside")
    os.symlink("../../../outside", src / "relative-out")
    os.symlink(str(outside / "sentinel.txt"), src / "to-sentinel")
    outside_before = snapshot(outside)
    old = atomic_deploy.deploy(str(src), str(root)).release
    ids = [atomic_deploy.deploy(str(builds(v)), str(root)).release for v in ("v2", "v3")]
    out = ok("prune", root, "--keep", "1")
    assert out["deleted"] == [old]
    assert release_names(root) == ids
    assert snapshot(outside) == outside_before


def test_failed_deploy_cleanup_does_not_follow_links(
    tmp_path: Path, builds: Builds, root: Path, guard: DeleteGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = make_outside(tmp_path)
    outside_before = snapshot(outside)
    guard.allowed = [str(root)]
    first = atomic_deploy.deploy(str(builds("v1")), str(root)).release
    # Fail after the copy is complete and renamed into releases/: the whole release, links and
    # all, has to be removed again.
    monkeypatch.setenv(_signals.FAULT_ENV, "release-renamed:EIO")
    with pytest.raises(atomic_deploy.OperationFailed):
        atomic_deploy.deploy(str(linky_build(tmp_path, outside, "v2")), str(root))
    assert guard.violations == []
    assert release_names(root) == [first]
    assert hidden_entries(root) == []
    assert current_target(root) == f"releases/{first}"
    assert snapshot(outside) == outside_before


def test_leftover_cleanup_does_not_follow_links(
    tmp_path: Path, builds: Builds, root: Path, guard: DeleteGuard
) -> None:
    # What a kill -9 mid-copy or mid-prune leaves: hidden staging and trash folders holding links.
    outside = make_outside(tmp_path)
    outside_before = snapshot(outside)
    guard.allowed = [str(root)]
    first = atomic_deploy.deploy(str(builds("v1")), str(root)).release
    rel = root / "releases"
    for hidden in (".atomic-deploy-staging.20990101000000.abc", ".atomic-deploy-trash.x.def"):
        (rel / hidden / "sub").mkdir(parents=True)
        os.symlink(str(outside), rel / hidden / "to-outside")
        os.symlink("/", rel / hidden / "to-slash")
        os.symlink(str(outside), rel / hidden / "sub" / "again")
    # a leftover temp link of the switch, pointing outside
    os.symlink(str(outside), root / ".atomic-deploy" / "tmp" / "current.deadbeef")

    result = atomic_deploy.prune(str(root), keep=5)
    assert result.recovered and "leftover" in result.recovered
    assert guard.violations == []
    assert hidden_entries(root) == []
    assert release_names(root) == [first]
    assert snapshot(outside) == outside_before


def test_interrupted_deploy_cleanup_cli(tmp_path: Path, builds: Builds, root: Path) -> None:
    outside = make_outside(tmp_path)
    src = make_build(tmp_path / "linky", version="v2")
    os.symlink(str(outside), src / "to-outside")
    os.symlink(str(outside / "sentinel.txt"), src / "to-sentinel")
    outside_before = snapshot(outside)
    first = deploy(builds("v1"), root)
    r = run_cli("deploy", src, root, fault="copied:KILL")
    assert r.returncode == -9
    assert hidden_entries(root)  # the staging folder was left behind
    second = deploy(builds("v3"), root)  # recovers first
    assert release_names(root) == [first, second]
    assert hidden_entries(root) == []
    assert snapshot(outside) == outside_before


@pytest.mark.parametrize("name", ["evil", "20000101000000", "29991231235959"])
def test_symlinked_release_dir_is_not_a_release(
    tmp_path: Path, builds: Builds, root: Path, name: str
) -> None:
    outside = make_outside(tmp_path)
    make_build(outside, version="outside")  # looks like a perfectly good release
    outside_before = snapshot(outside)
    first = atomic_deploy.deploy(str(builds("v1")), str(root)).release
    os.symlink(str(outside), root / "releases" / name)
    ids = [first] + [atomic_deploy.deploy(str(builds(v)), str(root)).release for v in ("v2", "v3")]
    assert ids == sorted(ids) and name not in ids

    assert [r.id for r in atomic_deploy.list_releases(str(root))] == ids
    with pytest.raises(atomic_deploy.InvalidInput, match="unknown release id"):
        atomic_deploy.activate(str(root), name)
    with pytest.raises(atomic_deploy.InvalidInput, match="unknown release id"):
        atomic_deploy.rollback(str(root), to=name)
    assert atomic_deploy.rollback(str(root)).release == ids[1]
    atomic_deploy.activate(str(root), ids[2])

    out = ok("prune", root, "--keep", "1")
    assert out["deleted"] == [ids[0]]
    assert os.readlink(root / "releases" / name) == str(outside)
    assert snapshot(outside) == outside_before
    assert release_names(root) == sorted([name, ids[1], ids[2]])


# --------------------------------------------------------------------------- what prune keeps
# In-process (the same functions the CLI calls) to keep the suite fast; the CLI is covered by
# the end-to-end tests above and below.


def dep(src: Path, root: Path, keep: int | None = None) -> str:
    return atomic_deploy.deploy(str(src), str(root), keep=keep).release


def pruned(root: Path, keep: int) -> list[str]:
    return atomic_deploy.prune(str(root), keep).deleted


def lstates(root: Path) -> dict[str, str]:
    return {r.id: r.state for r in atomic_deploy.list_releases(str(root))}


def test_prune_keeps_current_and_rollback_target_after_rollback(builds: Builds, root: Path) -> None:
    a, b, c, d = (dep(builds(v), root) for v in ("v1", "v2", "v3", "v4"))
    atomic_deploy.rollback(str(root))
    assert current_target(root) == f"releases/{c}"
    # c is current, b its rollback target, d bad but newer than the oldest kept good one.
    assert pruned(root, 1) == [a]
    assert release_names(root) == [b, c, d]
    assert current_target(root) == f"releases/{c}"
    atomic_deploy.rollback(str(root))
    assert current_target(root) == f"releases/{b}"


def test_prune_keeps_an_old_current_and_its_rollback_target(builds: Builds, root: Path) -> None:
    a, b, c, d = (dep(builds(v), root) for v in ("v1", "v2", "v3", "v4"))
    atomic_deploy.activate(str(root), b)
    assert pruned(root, 1) == [c]
    assert release_names(root) == [a, b, d]
    assert current_target(root) == f"releases/{b}"

    atomic_deploy.activate(str(root), a)  # now nothing is older than current
    assert pruned(root, 1) == [b]
    assert release_names(root) == [a, d]
    assert current_target(root) == f"releases/{a}"


def test_bad_releases_do_not_count_toward_keep(builds: Builds, root: Path) -> None:
    a, b, c = (dep(builds(v), root) for v in ("v1", "v2", "v3"))
    atomic_deploy.rollback(str(root))  # c is bad
    d = dep(builds("v4"), root)
    assert lstates(root) == {a: "good", b: "good", c: "bad", d: "current"}

    # Three good releases (a, b, d): keep 3 keeps all; a bad one would have pushed a out.
    assert pruned(root, 3) == []
    assert release_names(root) == [a, b, c, d]

    # Keep 2: b and d; c is bad but newer than b (recent evidence), a goes.
    assert pruned(root, 2) == [a]
    assert release_names(root) == [b, c, d]

    e, f = dep(builds("v5"), root), dep(builds("v6"), root)
    # Keep 2: e and f; the bad c is now older than every kept good release and goes with b, d.
    assert pruned(root, 2) == [b, c, d]
    assert release_names(root) == [e, f]


def test_deploy_keep_prunes_afterwards(builds: Builds, root: Path) -> None:
    a, b, c = (dep(builds(v), root) for v in ("v1", "v2", "v3"))
    r = run_cli("deploy", builds("v4"), root, "--keep", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    d = out["release"]
    assert out["pruned"] == [a, b]
    assert release_names(root) == [c, d]
    assert current_target(root) == f"releases/{d}"
    prunes = [h for h in history(root) if h["op"] == "prune"]
    assert prunes and prunes[-1]["deleted"] == [a, b]
    assert prunes[-1]["outcome"] == "ok"


def test_deploy_keep_one_keeps_the_rollback_target(builds: Builds, root: Path) -> None:
    a = dep(builds("v1"), root)
    b = dep(builds("v2"), root, keep=1)
    c = dep(builds("v3"), root, keep=1)
    assert a not in release_names(root)
    assert release_names(root) == [b, c]
    atomic_deploy.rollback(str(root))
    assert current_target(root) == f"releases/{b}"


def test_prune_unlogged_releases_by_name(tmp_path: Path, builds: Builds, root: Path) -> None:
    root.mkdir()
    rel = root / "releases"
    hand = {
        "legacy": "arbitrary name",
        "old-site": "arbitrary name",
        "release-3": "arbitrary name",
        "20000101000000": "named like an id",
        "19991231235959": "named like an id",
    }
    for name in hand:
        make_build(rel / name, version=name)
    hand_snap = {n: snapshot(rel / n) for n in hand}
    ids = [dep(builds(v), root) for v in ("v1", "v2", "v3")]

    assert pruned(root, 10) == []
    out = ok("prune", root, "--keep", "1")
    assert sorted(out["deleted"]) == sorted(["19991231235959", "20000101000000", ids[0]])
    for name in ("legacy", "old-site", "release-3"):
        assert snapshot(rel / name) == hand_snap[name], name
    assert release_names(root) == sorted(["legacy", "old-site", "release-3", ids[1], ids[2]])
    managed = {r.id: r.managed for r in atomic_deploy.list_releases(str(root))}
    assert managed == {"legacy": False, "old-site": False, "release-3": False,
                       ids[1]: True, ids[2]: True}


# --------------------------------------------------------------------------- never mtimes


def _age(root: Path, times: dict[str, int]) -> None:
    for rid, t in times.items():
        for p in (root / "releases" / rid, root / "releases" / rid / "version.txt"):
            os.utime(p, (t, t))


def test_order_and_rollback_ignore_mtimes(builds: Builds, root: Path) -> None:
    a, b, c = (dep(builds(v), root) for v in ("v1", "v2", "v3"))
    future = 4_000_000_000  # year 2096
    # mtime order is the reverse of deploy order: c oldest, a newest
    _age(root, {a: future + 2000, b: future + 1000, c: 1_000_000})
    assert [r.id for r in atomic_deploy.list_releases(str(root))] == [a, b, c]
    assert atomic_deploy.status(str(root)).previous == b
    ok("rollback", root)
    assert current_target(root) == f"releases/{b}"
    atomic_deploy.rollback(str(root))
    assert current_target(root) == f"releases/{a}"


def test_prune_ignores_mtimes(builds: Builds, root: Path) -> None:
    a, b, c, d = (dep(builds(v), root) for v in ("v1", "v2", "v3", "v4"))
    _age(root, {a: 4_000_000_000, b: 3_900_000_000, c: 1_000_000, d: 2_000_000})
    assert pruned(root, 2) == [a, b]
    assert release_names(root) == [c, d]


def test_new_ids_ignore_mtimes_and_stay_ordered(builds: Builds, root: Path) -> None:
    a, b = dep(builds("v1"), root), dep(builds("v2"), root)
    _age(root, {a: 4_000_000_000, b: 1_000_000})
    c = dep(builds("v3"), root)
    assert [r.id for r in atomic_deploy.list_releases(str(root))] == [a, b, c]
    atomic_deploy.rollback(str(root))
    assert current_target(root) == f"releases/{b}"


# --------------------------------------------------------------------------- rollback semantics


def test_rollback_semantics(builds: Builds, root: Path) -> None:
    a, b, c = (dep(builds(v), root) for v in ("v1", "v2", "v3"))

    out = ok("rollback", root)
    assert (out["release"], out["marked_bad"]) == (b, c)
    assert current_target(root) == f"releases/{b}"
    assert states(root) == {a: "good", b: "current", c: "bad"}  # list --json
    assert [r.id for r in atomic_deploy.list_releases(str(root)) if r.rollback_target] == [a]

    ok("rollback", root)  # further back, never forward onto c
    assert current_target(root) == f"releases/{a}"
    assert lstates(root) == {a: "current", b: "bad", c: "bad"}
    assert atomic_deploy.status(str(root)).bad == [b, c]

    r = run_cli("rollback", root)  # nothing older
    assert r.returncode == 2
    assert "nothing to roll back to" in r.stderr
    assert current_target(root) == f"releases/{a}"

    atomic_deploy.activate(str(root), c)  # clears c's mark; does not mark a
    assert current_target(root) == f"releases/{c}"
    assert lstates(root) == {a: "good", b: "bad", c: "current"}

    assert atomic_deploy.rollback(str(root)).release == a  # skips the bad b
    assert current_target(root) == f"releases/{a}"
    assert lstates(root) == {a: "current", b: "bad", c: "bad"}


def test_rollback_to(builds: Builds, root: Path) -> None:
    a, b, c = (dep(builds(v), root) for v in ("v1", "v2", "v3"))
    out = ok("rollback", root, "--to", a)
    assert (out["release"], out["marked_bad"]) == (a, c)
    assert current_target(root) == f"releases/{a}"
    assert lstates(root) == {a: "current", b: "good", c: "bad"}
    assert history(root)[-1]["op"] == "rollback" and history(root)[-1]["previous"] == c

    with pytest.raises(atomic_deploy.InvalidInput):  # nothing older than a
        atomic_deploy.rollback(str(root))
    # Going to the bad c explicitly is allowed, and clears its mark.
    atomic_deploy.activate(str(root), b)
    res = atomic_deploy.rollback(str(root), to=c)
    assert (res.release, res.marked_bad) == (c, b)
    assert lstates(root) == {a: "good", b: "bad", c: "current"}

    r = run_cli("rollback", root, "--to", c)
    assert r.returncode == 2
    assert "already current" in r.stderr
    assert lstates(root) == {a: "good", b: "bad", c: "current"}


# ------------------------------------------------------- current written in other forms (by hand)

def _link_forms(root: Path, alias: Path) -> dict[str, str]:
    return {
        "subfolder": "releases/{a}/public",
        "dot-dot through the root's own name": f"../{root.name}/releases/{{a}}",
        "dot-dot into a subfolder": f"../{root.name}/releases/{{a}}/public",
        "dot and doubled slashes": "./releases//{a}/",
        "dot-dot inside releases": "releases/{a}/public/../../{a}",
        "absolute into a subfolder": str(root / "releases" / "{a}" / "public"),
        "absolute through a link to ROOT": str(alias / "releases" / "{a}"),
        "through a link in releases": "releases/link-to-{a}",
    }


@pytest.mark.parametrize("form", list(_link_forms(Path("www"), Path("unused"))))
def test_prune_never_deletes_the_release_current_leads_into(
        tmp_path: Path, root: Path, form: str) -> None:
    def build(v: str) -> Path:
        return make_build(tmp_path / "b" / v, {"public/index.html": v, "version.txt": v})

    a, b, c = (dep(build(v), root) for v in ("v1", "v2", "v3"))
    os.symlink(str(root / "releases" / a), root / "releases" / f"link-to-{a}")
    os.symlink(str(root), tmp_path / "alias")  # ROOT reached through a link outside it
    text = _link_forms(root, tmp_path / "alias")[form].format(a=a)
    os.unlink(root / "current")
    os.symlink(text, root / "current")
    live = os.path.realpath(root / "releases" / a)
    assert os.path.realpath(root / "current").startswith(live)  # what the kernel serves

    status = ok("status", root)
    assert (status["current"], status["current_state"]) == (a, "ok")
    assert [r["id"] for r in listing(root) if r["current"]] == [a]

    out = ok("prune", root, "--keep", "1")
    assert a not in out["deleted"]
    assert (root / "releases" / a / "public" / "index.html").read_text() == "v1"
    assert os.readlink(root / "current") == text
    assert os.path.realpath(root / "current").startswith(live)
    assert out["deleted"] == [b]
    assert {a, c} <= set(release_names(root))  # c: the newest good one, kept by --keep 1


def test_link_into_releases_that_leads_out_is_not_a_release(tmp_path: Path, root: Path,
                                                            builds: Builds) -> None:
    a = dep(builds("v1"), root)
    outside = make_build(tmp_path / "outside", version="outside")
    os.symlink(str(outside), root / "releases" / "escape")
    for text in ("releases/escape", f"releases/{a}/../escape", str(outside)):
        os.unlink(root / "current")
        os.symlink(text, root / "current")
        r = run_cli("status", root, "--json")
        status = json.loads(r.stdout)
        assert (status["current"], status["current_state"]) == (None, "outside-releases"), text
        assert r.returncode == 1  # serves no release

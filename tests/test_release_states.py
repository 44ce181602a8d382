"""Release names and states: one parse of every name, one explicit state per release."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from atomic_deploy._history import History, release_states, rollback_target, transitions
from atomic_deploy._layout import Layout, new_release_id, release_kind
from atomic_deploy.errors import InvalidInput
from conftest import Builds, history, run_cli


@pytest.mark.parametrize(("name", "kind"), [
    ("20261201101500", "timestamp"),
    ("20240229235959", "timestamp"),  # a leap day
    ("20230229000000", "name"),       # no such day
    ("20251399999999", "name"),       # month 13: digits, but no timestamp
    ("99999999999999", "name"),
    ("202612011015001", "name"),      # 15 digits
    ("7", "counter"),
    ("0042", "counter"),
    ("legacy", "name"),
    ("v2.1", "name"),
    ("٣", "name"),                    # a non-ASCII digit
])
def test_one_parse_of_every_release_name(name: str, kind: str) -> None:
    assert release_kind(name) == kind


def test_new_ids_ignore_names_that_are_no_timestamp() -> None:
    t = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert new_release_id({"99999999999999", "20251399999999", "202612011015001"}, t) \
        == "20260102030405"
    assert new_release_id({"20260102030405", "20251399999999"}, t) == "20260102030406"
    with pytest.raises(InvalidInput):
        new_release_id({"99991231235959"}, t)


def test_names_sort_before_generated_ids_in_history_order() -> None:
    h = History([])
    names = ["20260101000000", "202612011015001", "20251399999999", "12", "legacy"]
    order = h.order(names)
    assert order[-2:] == ["12", "20260101000000"]  # counters, then timestamps, numerically
    assert set(order[:3]) == {"202612011015001", "20251399999999", "legacy"}


def _rec(op: str, outcome: str, release: str, **kw: object) -> dict[str, object]:
    return {"v": 1, "op": op, "outcome": outcome, "release": release, **kw}


def test_failed_and_interrupted_records_change_no_state(tmp_path: Path) -> None:
    """Bug: an interrupted rollback to 02 made 02 'mentioned but never live', so the rollback
    target jumped to 01 and 02 became prunable."""
    layout = Layout(str(tmp_path))
    for n in ("20250101000001", "20250101000002", "20250101000003"):
        (tmp_path / "releases" / n).mkdir(parents=True)
    names = ["20250101000001", "20250101000002", "20250101000003"]
    for records in (
        [_rec("rollback", "interrupted", "20250101000002", previous_target="releases/x")],
        [{"v": 2, "op": "rollback", "outcome": "failed", "release": "20250101000002"}],
        [{"v": 2, "op": "activate", "outcome": "interrupted", "release": "20250101000002",
          "states": {"20250101000002": "served"}}],  # schema 2: the writer says what changed
    ):
        h = History(records)
        states = release_states(h, layout, names)
        assert transitions(records[0]) == ({} if records[0]["v"] == 1 else
                                           records[0].get("states", {}))
        if records[0]["v"] == 1:
            assert states["20250101000002"] == "foreign"
            assert rollback_target(names, states, "20250101000003") == "20250101000002"


def test_schema_1_histories_read_by_the_old_rules(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    names = ["20250101000001", "20250101000002", "20250101000003", "20250101000004"]
    h = History([
        _rec("deploy", "ok", names[0]),
        _rec("prepare", "ok", names[1]),
        _rec("deploy", "ok", names[2]),
        _rec("deploy", "unhealthy", names[3]),
        _rec("rollback", "ok", names[0], previous=names[2]),
        {"v": 1, "op": "recover", "outcome": "ok", "interrupted": "adopt", "release": "legacy"},
    ])
    states = release_states(h, layout, [*names, "legacy"])
    assert states == {names[0]: "served", names[1]: "complete", names[2]: "bad",
                      names[3]: "bad", "legacy": "served"}
    assert h.created()["legacy"] == 5


def test_every_record_we_write_states_what_it_changed(builds: Builds, root: Path) -> None:
    v1, v2 = builds("v1"), builds("v2")
    assert run_cli("deploy", v1, root).returncode == 0
    r = run_cli("prepare", v2, root)
    prepared = r.stdout.strip()
    assert run_cli("activate", root, prepared).returncode == 0
    assert run_cli("rollback", root).returncode == 0
    recs = [h for h in history(root) if h["op"] in ("deploy", "prepare", "activate", "rollback")]
    first = recs[0]["release"]
    assert [(h["op"], h["v"], h["states"]) for h in recs] == [
        ("deploy", 2, {first: "served"}),
        ("prepare", 2, {prepared: "complete"}),
        ("activate", 2, {prepared: "served"}),
        ("rollback", 2, {prepared: "bad", first: "served"}),
    ]
    st = json.loads(run_cli("status", root, "--json").stdout)
    assert st["bad"] == [prepared] and st["current"] == first


def test_adopt_id_used_before_in_the_history_is_refused(builds: Builds, root: Path) -> None:
    """Bug: adopt --id could take an id the history had used, inheriting its bad mark."""
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    r = run_cli("deploy", builds("v2"), root, "--health-check", "false")
    assert r.returncode == 4
    bad = next(h["release"] for h in history(root) if h["outcome"] == "unhealthy")
    run_cli("prune", root, "--keep", "1")
    import shutil

    shutil.rmtree(root / "releases" / bad, ignore_errors=True)
    cur = root / "current"
    cur.unlink()
    cur.mkdir()
    (cur / "index.html").write_text("legacy")
    r = run_cli("adopt", root, "--id", bad)
    assert r.returncode == 2, r.stderr
    assert "used before" in r.stderr and "Traceback" not in r.stderr
    assert cur.is_dir() and not cur.is_symlink()


def test_a_15_digit_adopted_release_stays_older_than_later_deploys(builds: Builds,
                                                                    root: Path) -> None:
    """Bug: `adopt --id` with 15 digits sorted after every later deploy (numeric order), so
    rollback from a later deploy found nothing and prune could delete the wrong release."""
    cur = root / "current"
    root.mkdir(exist_ok=True)
    cur.mkdir()
    (cur / "version.txt").write_text("legacy\n")
    assert run_cli("adopt", root, "--id", "202612011015001").returncode == 0
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    listed = json.loads(run_cli("list", root, "--json").stdout)["releases"]
    assert listed[0]["id"] == "202612011015001" and listed[1]["current"]
    r = run_cli("rollback", root)
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "version.txt").read_text() == "legacy\n"

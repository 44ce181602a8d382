"""`atomic-deploy race`: the demonstration runs briefly, and fails loudly if atomic ever errs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from atomic_deploy import _race, _switch
from atomic_deploy.cli import main
from conftest import run_cli


def test_race_json_atomic_zero_errors_naive_counted() -> None:
    r = run_cli("race", "--seconds", "0.5", "--readers", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    by = {x["strategy"]: x for x in out["results"]}
    assert set(by) == {"naive", "ln", "atomic"}
    assert by["atomic"]["errors"] == 0 and by["atomic"]["enoent"] == 0 and by["atomic"]["torn"] == 0
    assert by["atomic"]["reads"] > 0 and by["atomic"]["switches"] > 10
    assert by["naive"]["switches"] > 10
    assert by["ln"]["note"]  # says what this system's ln is


def test_race_table_output() -> None:
    r = run_cli("race", "--seconds", "0.2", "--readers", "2")
    assert r.returncode == 0, r.stderr
    assert "strategy" in r.stdout and "enoent" in r.stdout
    assert "ln on this system:" in r.stdout


def test_race_atomic_strategy_is_the_deploy_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = _switch.point_current

    def spy(*a: object, **k: object) -> None:
        calls.append(a[1])
        real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(_race, "point_current", spy)
    (res,) = _race.run_race(0.2, 1, ("atomic",))
    assert res.switches == len(calls) > 0


def test_race_exits_1_when_atomic_strategy_sees_errors(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Swap the atomic switch for unlink+symlink: the command must notice and fail."""
    real = _race._switcher
    monkeypatch.setattr(_race, "_switcher",
                        lambda strategy, layout: real("naive", layout))
    monkeypatch.setattr(_race, "STRATEGIES", ("atomic",))
    code = main(["race", "--seconds", "1", "--readers", "4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["results"][-1]["enoent"] > 0
    assert code == 1


def test_ln_strategy_with_busybox_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox not installed (apt-get install busybox)")
    (tmp_path / "ln").symlink_to(busybox)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert _race.describe_ln() == "busybox ln"


def test_race_text_columns_are_the_json_keys_with_the_same_values(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Bug: the text table's "reads" counted every attempt, the JSON's "reads" only those that
    opened. Now each column is a JSON key and shows that key's value."""
    fixed = [_race.RaceResult("naive", 10, reads=70, enoent=20, torn=3, other_errors=7),
             _race.RaceResult("atomic", 12, reads=90, enoent=0, torn=0, other_errors=0)]
    monkeypatch.setattr(_race, "run_race", lambda seconds, readers: fixed)
    assert main(["race", "--seconds", "1", "--readers", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert main(["race", "--seconds", "1", "--readers", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    header = lines[0].split()
    assert set(header) <= set(results[0]) and "reads" in header and "attempts" in header
    for line, result in zip(lines[1:3], results):
        cells = dict(zip(header, line.split()))
        for key, text in cells.items():
            if key == "error_rate":
                assert text == f"{result[key]:.2%}"
            else:
                assert text == str(result[key]), key
    naive = dict(zip(header, lines[1].split()))
    assert (naive["attempts"], naive["reads"], naive["errors"]) == ("97", "70", "30")

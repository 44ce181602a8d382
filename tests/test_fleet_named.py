"""Named fleets: ROOT given as @NAME, a fleet defined in the deploying machine's config file
(--config FILE, or ./atomic-deploy.toml), against real sshd test hosts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from atomic_deploy._config import check_fleets
from atomic_deploy.errors import InvalidInput
from atomic_deploy.fleet import named_fleet
from conftest import error_line, make_build, run_cli
from fleetlab import APP, cli, current, dests
from sshlab import Host


def project(tmp_path: Path, hosts: list[Host], extra: str = "") -> Path:
    """A project folder whose atomic-deploy.toml names two fleets and keeps 2 releases."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "atomic-deploy.toml").write_text(
        f"keep = 2\n{extra}\n"
        f"[fleets.web]\nhosts = {json.dumps([h.alias for h in hosts])}\nroot = \"{APP}\"\n\n"
        f"[fleets.pair]\nroots = {json.dumps(dests(hosts)[:2])}\n\n"
        f"[fleets.one]\nroots = {json.dumps(dests(hosts)[:1])}\n")
    return folder


def releases(h: Host) -> list[str]:
    return sorted(n for n in os.listdir(h.path(APP) / "releases") if not n.startswith("."))


def test_a_fleet_named_in_the_config_file_here(hosts: list[Host], tmp_path: Path) -> None:
    here = project(tmp_path, hosts)
    ids = []
    for v in ("v1", "v2", "v3"):
        r = cli("deploy", make_build(tmp_path / v, version=v), "@web", "--json", cwd=here)
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert sorted(x["host"] for x in d["hosts"]) == sorted(dests(hosts))
        ids.append(d["release"])
    for h in hosts:
        assert current(h) == f"releases/{ids[-1]}"
        assert releases(h) == ids[1:]  # keep = 2 from the file that names the fleet

    r = cli("status", "@pair", "--json", cwd=here)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["mixed"] is False and len(d["hosts"]) == 2

    r = cli("rollback", "@web", cwd=here)
    assert r.returncode == 0, r.stderr
    assert all(current(h) == f"releases/{ids[1]}" for h in hosts)

    # A fleet of one root is that root alone.
    r = cli("status", "@one", "--json", cwd=here)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["current"] == ids[1]


def test_a_fleet_named_in_a_config_file_given(hosts: list[Host], tmp_path: Path) -> None:
    conf = project(tmp_path, hosts) / "atomic-deploy.toml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("deploy", make_build(tmp_path / "b"), "@pair", "--config", conf, "--json",
            cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    rel = json.loads(r.stdout)["release"]
    assert [current(h) for h in hosts] == [f"releases/{rel}"] * 2 + [None]
    # Commands that read no root's settings take --config too (it used to be read as an
    # abbreviation of the hidden --config-json).
    for command in ("status", "list"):
        r = cli(command, "@pair", "--config", conf, "--json", cwd=elsewhere)
        assert r.returncode == 0, (command, r.stderr)
        assert len(json.loads(r.stdout)["hosts"]) == 2


@pytest.mark.parametrize("args, says", [
    (["@nope"], "no fleet named 'nope' in "),
    (["@web", "web1:/srv/app"], "a named fleet (@web) is given alone"),
])
def test_a_name_that_names_no_fleet_changes_nothing(hosts: list[Host], tmp_path: Path,
                                                    args: list[str], says: str) -> None:
    here = project(tmp_path, hosts)
    r = cli("deploy", make_build(tmp_path / "b"), *args, cwd=here)
    assert r.returncode == 2
    assert says in error_line(r)
    assert all(not h.path(APP).exists() for h in hosts)


def test_a_name_with_no_config_file_to_define_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["deploy", str(make_build(tmp_path / "b"))], ["status"], ["list"]):
        r = run_cli(*command, "@web", cwd=empty)
        assert r.returncode == 2, (command, r.stderr)
        assert "@web names a fleet, but there is no --config FILE and no atomic-deploy.toml" \
            in error_line(r)
    assert os.listdir(empty) == []


def test_the_fleets_table_is_checked() -> None:
    good = {"a": {"roots": ["h:/srv/app", "/srv/app"]},
            "b": {"hosts": ["u@h1", "h2"], "root": "/srv/app"}}
    check_fleets("f.toml", good)
    assert named_fleet("f.toml", {"fleets": good}, "b") == ["u@h1:/srv/app", "h2:/srv/app"]
    assert named_fleet("f.toml", {"fleets": good}, "a") == ["h:/srv/app", "/srv/app"]
    for bad, says in [
        ([], "fleets must be a table of fleets"),
        ({"a": "h:/x"}, "fleets.a must be a table"),
        ({"a": {"roots": []}}, "fleets.a.roots must be a list of one or more"),
        ({"a": {"roots": ["h:/x"], "root": "/x"}}, "not both"),
        ({"a": {"hosts": ["h"]}}, "give roots"),
        ({"a": {"hosts": ["h"], "root": "h:/x"}}, "is the path on every host"),
        ({"a": {"hosts": ["h:/x"], "root": "/x"}}, "is not one [user@]host"),
        ({"a": {"roots": ["h:/x"], "parallel": 2}}, "unknown setting 'parallel'"),
    ]:
        with pytest.raises(InvalidInput) as exc:
            check_fleets("f.toml", bad)
        assert says in exc.value.message, (bad, exc.value.message)
    with pytest.raises(InvalidInput, match="defines no fleets"):
        named_fleet("f.toml", {}, "a")
    with pytest.raises(InvalidInput, match=r"fleets there: a, b"):
        named_fleet("f.toml", {"fleets": good}, "c")


def test_a_fleets_table_in_a_roots_own_config_is_no_setting_of_its_deploys(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "atomic-deploy.toml").write_text('keep = 1\n[fleets.web]\nroots = ["h:/srv/app"]\n')
    r = run_cli("deploy", make_build(tmp_path / "b"), root)
    assert r.returncode == 0, r.stderr
    assert os.path.islink(root / "current")

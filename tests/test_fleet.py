"""Fleets: one release to several remote roots, two-phase, against real sshd test hosts (each
with its own /srv, tests/sshlab.py). Every test checks every host's disk from outside."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from atomic_deploy._signals import FLEET_STEPS
from conftest import error_line, make_build, start_cli, wait_for
from fleetlab import APP, cli, current, dests, env
from sshlab import Host, SSHLab


def hidden(h: Host) -> list[str]:
    rel = h.path(APP) / "releases"
    return [n for n in os.listdir(rel) if n.startswith(".")] if rel.is_dir() else []


def idle(h: Host) -> bool:
    state = h.path(APP) / ".atomic-deploy"
    if (state / "journal.json").exists():
        return False
    for pid in h.processes():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"atomic-deploy" in cmd:
            return False
    return True


def states(h: Host) -> dict[str, str]:
    r = cli("list", h.dest(APP), "--json")
    assert r.returncode == 0, r.stderr
    return {x["id"]: x["state"] for x in json.loads(r.stdout)["releases"]}


def first_deploy(hosts: list[Host], tmp_path: Path) -> str:
    r = cli("deploy", make_build(tmp_path / "v1", version="v1"), *dests(hosts), "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["release"])


def test_deploy_to_three_hosts_one_release_and_status(hosts: list[Host], tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    told = "echo $ATOMIC_DEPLOY_RELEASE >> /srv/told"
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json",
            "--after-switch", told)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    v2 = d["release"]
    assert d["outcome"] == "deployed" and v2 > v1
    assert isinstance(d["skew_ms"], float) and d["skew_ms"] >= 0
    for h in hosts:
        assert current(h) == f"releases/{v2}"
        assert (h.path(APP) / "current" / "version.txt").read_text() == "v2\n"
        assert h.path("/srv/told").read_text().split() == [v2]
        assert not hidden(h)
    assert [x["host"] for x in d["hosts"]] == sorted(dests(hosts))
    assert all(x["phase"] == "committed" and x["previous"] == v1 for x in d["hosts"])
    for line in r.stderr.splitlines():  # each line whole and prefixed with its host
        assert line.split(": ", 1)[0] in dests(hosts), line

    r = cli("status", *dests(hosts))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"every host on {v2}")
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts))
    assert r.returncode == 0 and r.stdout.startswith("deployed ") and "3 hosts" in r.stdout


def test_hosts_file(hosts: list[Host], tmp_path: Path) -> None:
    listing = tmp_path / "hosts.txt"
    listing.write_text("# the fleet\nweb1\n\nweb2  # second\nweb3\n")
    r = cli("deploy", make_build(tmp_path / "b"), "--hosts", listing, APP, "--json")
    assert r.returncode == 0, r.stderr
    rel = json.loads(r.stdout)["release"]
    assert all(current(h) == f"releases/{rel}" for h in hosts)
    r = cli("status", "--hosts", listing, APP, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["mixed"] is False


def test_a_failed_check_on_one_host_switches_nobody(hosts: list[Host], tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    hosts[1].path("/srv/broken").write_text("")
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts),
            "--check", "test ! -e /srv/broken", "--json")
    assert r.returncode == 4, r.stderr
    d = json.loads(r.stdout)
    assert d["outcome"] == "nothing switched" and "web2" in d["error"]
    for h in hosts:
        assert current(h) == f"releases/{v1}"
        assert not hidden(h)
        assert sorted(states(h)) == [v1]  # the new release removed everywhere
    assert r.stderr.splitlines()[-1].startswith("atomic-deploy: error: ")


def test_a_failed_health_check_on_one_host_switches_everyone_back(hosts: list[Host],
                                                                 tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    hosts[2].path("/srv/unhealthy").write_text("")
    told = "echo $ATOMIC_DEPLOY_RELEASE >> /srv/told"
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json",
            "--health-check", "test ! -e /srv/unhealthy", "--health-retries", "0",
            "--after-switch", told)
    assert r.returncode == 4, r.stderr
    d = json.loads(r.stdout)
    v2 = d["release"]
    assert d["outcome"] == "switched back" and "web3" in d["error"]
    for h in hosts:
        assert current(h) == f"releases/{v1}"
        assert states(h)[v2] == "bad"  # kept as evidence, marked bad on every host
        assert h.path("/srv/told").read_text().split() == [v2, v1]  # told both ways
        assert idle(h)


def test_an_unreachable_host_stops_the_fleet_before_anything(lab: SSHLab, hosts: list[Host],
                                                            tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    lab.add_alias("down", lab.unused_port())
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), f"down:{APP}")
    assert r.returncode == 2, r.stderr
    assert "down" in r.stderr.splitlines()[-1] and "unreachable" in r.stderr.splitlines()[-1]
    for h in hosts:
        assert current(h) == f"releases/{v1}" and sorted(states(h)) == [v1]


def test_a_hung_host_is_given_up(hosts: list[Host], tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    hosts[0].pause()
    try:
        r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts),
                "--connect-timeout", "2")
    finally:
        hosts[0].resume()
    assert r.returncode == 2 and "did not answer within 2 s" in r.stderr
    assert all(current(h) == f"releases/{v1}" for h in hosts)


def test_a_host_lost_between_prepare_and_switch(hosts: list[Host], tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    go = tmp_path / "go"
    p = start_cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json",
                  fault=f"fleet-prepared:PAUSE:{go}", env=env())
    wait_for(lambda: Path(f"{go}.paused").exists(), timeout=180, what="every host prepared")
    hosts[1].kill_sessions()
    go.touch()
    out, err = p.communicate(timeout=180)
    assert p.returncode == 1, err
    assert "web2" in json.loads(out)["error"]
    for h in hosts:
        wait_for(lambda h=h: idle(h), what=f"{h.alias} to finish")  # type: ignore[misc]
        assert current(h) == f"releases/{v1}"
        assert not hidden(h)


@pytest.mark.parametrize("step", FLEET_STEPS)
def test_deploying_process_killed_in_each_phase(hosts: list[Host], tmp_path: Path,
                                                step: str) -> None:
    v1 = first_deploy(hosts, tmp_path)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts),
            fault=f"{step}:KILL")
    assert r.returncode == -signal.SIGKILL
    for h in hosts:
        wait_for(lambda h=h: idle(h), what=f"{h.alias} to finish on its own")  # type: ignore[misc]
    ends = {current(h) for h in hosts}
    assert len(ends) == 1  # one release on every host
    if step == "fleet-committing":
        assert ends != {f"releases/{v1}"}
    else:
        assert ends == {f"releases/{v1}"}
    for h in hosts:
        assert not hidden(h)
        st = json.loads(cli("status", h.dest(APP), "--json").stdout)
        assert st["recovery"] is None and st["lock_holder"] is None


def test_interrupted_fleet_deploy_tells_every_host(hosts: list[Host], tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts),
            fault="fleet-switched:TERM")
    assert r.returncode == 143, r.stderr
    for h in hosts:
        assert current(h) == f"releases/{v1}"
        assert idle(h)


def test_status_of_a_mixed_fleet(hosts: list[Host], tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), hosts[0].dest(APP), "--json")
    v2 = json.loads(r.stdout)["release"]
    r = cli("status", *dests(hosts))
    assert r.returncode == 1
    assert r.stdout.startswith("mixed: ")
    assert f"web1:{APP} on {v2}" in r.stdout and f"web2:{APP} on {v1}" in r.stdout
    d = json.loads(cli("status", *dests(hosts), "--json").stdout)
    assert d["mixed"] is True and {h["current"] for h in d["hosts"]} == {v1, v2}
    assert all(h["lock_holder"] is None and h["serving"] is True for h in d["hosts"])
    # Re-running the deploy converges the fleet.
    r = cli("deploy", make_build(tmp_path / "v3", version="v3"), *dests(hosts))
    assert r.returncode == 0, r.stderr
    assert len({current(h) for h in hosts}) == 1


def test_status_of_a_fleet_with_a_host_that_cannot_be_asked(lab: SSHLab, hosts: list[Host],
                                                           tmp_path: Path) -> None:
    """A host that cannot be asked serves a release not known here: named unknown, never "on
    nothing", and the hosts that answered alike are not called mixed; exit 2, ok false."""
    v1 = first_deploy(hosts, tmp_path)
    lab.add_alias("dead", lab.unused_port())
    roots = [*dests(hosts), "dead:/srv/app"]
    r = cli("status", *roots)
    assert r.returncode == 2, r.stderr
    assert r.stdout.splitlines()[0] == f"every other host on {v1}; unknown: dead:/srv/app"
    assert "nothing listens for ssh on dead" in r.stdout.splitlines()[4]
    assert r.stdout.splitlines()[4].split()[1:5] == ["unknown", "rollback", "target", "unknown"]
    d = json.loads(cli("status", *roots, "--json").stdout)
    assert d["ok"] is False and d["exit_code"] == 2 and d["mixed"] is False
    assert [h["current"] for h in d["hosts"]] == [v1, v1, v1, None]

    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), hosts[0].dest(APP), "--json")
    v2 = json.loads(r.stdout)["release"]
    r = cli("status", *roots)
    assert r.returncode == 2, r.stderr
    assert r.stdout.splitlines()[0] == (f"mixed: web1:{APP} on {v2}; web2:{APP} on {v1}; "
                                        f"web3:{APP} on {v1}; dead:/srv/app unknown")
    r = cli("status", hosts[0].dest("/srv/nope"), "dead:/srv/app")
    assert r.returncode == 2
    assert r.stdout.splitlines()[0] == "no host's release is known: web1:/srv/nope, dead:/srv/app"
    # A fleet rollback names why a host's releases could not be listed.
    r = cli("rollback", hosts[1].dest(APP), hosts[2].dest("/srv/nope"))
    assert r.returncode == 2
    assert error_line(r) == ("atomic-deploy: error: web3:/srv/nope: cannot list its releases: "
                             "ROOT /srv/nope does not exist; nothing was changed")
    assert current(hosts[1]) == f"releases/{v1}"


def test_a_locked_host_is_named_and_nothing_changes(hosts: list[Host], tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    go = tmp_path / "go"
    holder = start_cli("deploy", make_build(tmp_path / "x"), hosts[1].dest(APP),
                       fault=f"session-sealed:PAUSE:{go}", env=env())
    try:
        wait_for(lambda: Path(f"{go}.paused").exists(), timeout=120, what="the lock held")
        r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts))
        assert r.returncode == 3, r.stderr
        assert "web2" in r.stderr.splitlines()[-1]
        for h in (hosts[0], hosts[2]):
            assert current(h) == f"releases/{v1}" and not hidden(h)
    finally:
        go.touch()
        holder.communicate(timeout=120)


def test_two_overlapping_fleet_deploys_in_opposite_order_both_finish(
        hosts: list[Host], tmp_path: Path) -> None:
    first_deploy(hosts, tmp_path)
    a = start_cli("deploy", make_build(tmp_path / "a", version="a"), *dests(hosts),
                  "--wait", "120", env=env())
    b = start_cli("deploy", make_build(tmp_path / "b", version="b"), *reversed(dests(hosts)),
                  "--wait", "120", env=env())
    _, err_a = a.communicate(timeout=300)
    _, err_b = b.communicate(timeout=300)
    assert (a.returncode, b.returncode) == (0, 0), (err_a, err_b)
    assert len({current(h) for h in hosts}) == 1


def test_rollback_across_the_fleet(hosts: list[Host], tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json")
    v2 = json.loads(r.stdout)["release"]
    told = "echo $ATOMIC_DEPLOY_RELEASE >> /srv/told"
    r = cli("rollback", *dests(hosts), "--json", "--after-switch", told)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["release"] == v1 and d["outcome"] == "deployed"
    for h in hosts:
        assert current(h) == f"releases/{v1}"
        assert states(h)[v2] == "bad"  # recorded per host, as a rollback does
        assert h.path("/srv/told").read_text().split() == [v1]
    # Nothing older is good everywhere: refused, nothing changed.
    r = cli("rollback", *dests(hosts))
    assert r.returncode == 2 and "nothing to roll back to" in r.stderr


def test_rollback_of_a_mixed_fleet_needs_to(hosts: list[Host], tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    cli("deploy", make_build(tmp_path / "v2", version="v2"), hosts[0].dest(APP))
    r = cli("rollback", *dests(hosts))
    assert r.returncode == 2 and "the fleet is mixed" in r.stderr and "--to" in r.stderr
    r = cli("rollback", *dests(hosts), "--to", v1)
    assert r.returncode == 0, r.stderr
    assert {current(h) for h in hosts} == {f"releases/{v1}"}


def test_rollback_failing_health_on_one_host_switches_everyone_back(
        hosts: list[Host], tmp_path: Path) -> None:
    first_deploy(hosts, tmp_path)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json")
    v2 = json.loads(r.stdout)["release"]
    hosts[0].path("/srv/unhealthy").write_text("")
    r = cli("rollback", *dests(hosts), "--health-check", "test ! -e /srv/unhealthy",
            "--health-retries", "0")
    assert r.returncode == 4, r.stderr
    assert {current(h) for h in hosts} == {f"releases/{v2}"}
    assert all(idle(h) for h in hosts)

"""What a two-phase fleet command reports: each host's phase (failed, undone), hosts in the
order given, "1 host", and a host silent past --host-timeout after its switch treated as
switched. Against real sshd test hosts (tests/sshlab.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_build
from fleetlab import APP, cli, current, dests
from sshlab import Host, SSHLab
from test_fleet import first_deploy, idle, states


def test_phases_say_failed_and_undone_hosts_in_the_order_given(hosts: list[Host],
                                                               tmp_path: Path) -> None:
    v1 = first_deploy(hosts, tmp_path)
    given = [hosts[2], hosts[0], hosts[1]]  # web3 web1 web2: not sorted
    hosts[1].path("/srv/unhealthy").write_text("")
    v2 = make_build(tmp_path / "v2", version="v2")
    r = cli("deploy", v2, *dests(given), "--json", "--health-check",
            "test ! -e /srv/unhealthy", "--health-retries", "0")
    assert r.returncode == 4, r.stderr
    d = json.loads(r.stdout)
    assert d["outcome"] == "switched back"
    assert [h["host"] for h in d["hosts"]] == dests(given)
    assert [h["phase"] for h in d["hosts"]] == ["undone", "undone", "failed"]
    assert [h["release"] for h in d["hosts"]] == [v1] * 3
    assert all(current(h) == f"releases/{v1}" for h in hosts)

    r = cli("deploy", v2, *dests(given), "--health-check", "test ! -e /srv/unhealthy",
            "--health-retries", "0")
    assert r.returncode == 4, r.stderr
    rows = r.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == dests(given)
    assert [row.split()[1] for row in rows] == ["undone", "undone", "failed"]
    # An undone host names the host that failed, not its whole error again, and says that
    # the new release stays there marked bad.
    v3 = json.loads(cli("list", hosts[0].dest(APP), "--json").stdout)["releases"][-1]["id"]
    for h in (hosts[2], hosts[0]):
        line = next(x for x in r.stderr.splitlines() if x.startswith(f"{h.dest(APP)}: error"))
        assert f"({hosts[1].dest(APP)} failed after the switch); switched back" in line, line
        assert line.endswith(f"; {v3} kept and marked bad"), line
        assert "health-check command" not in line, line


def test_a_fleet_of_one_host_says_1_host(hosts: list[Host], tmp_path: Path) -> None:
    listing = tmp_path / "hosts.txt"
    listing.write_text("web1\n")
    r = cli("deploy", make_build(tmp_path / "b"), "--hosts", listing, APP)
    assert r.returncode == 0, r.stderr
    assert " to 1 host (" in r.stdout.splitlines()[0], r.stdout
    r = cli("deploy", make_build(tmp_path / "c"), "--hosts", listing, APP, "--check", "false")
    assert r.returncode == 4, r.stderr
    assert r.stdout.splitlines()[0] == "nothing switched: 1 host", r.stdout
    # Its check failed before the release was sealed: nothing counted, so no "0 files".
    assert r.stdout.splitlines()[1].split()[3] == "-", r.stdout


def test_a_host_silent_past_host_timeout_after_its_switch_is_switched_back_as_switched(
        hosts: list[Host], tmp_path: Path) -> None:
    """web2 switches, then its after-switch hook outlasts --host-timeout (its answer comes
    too late): it is switched back with the others, and the new release is kept marked bad
    there as everywhere, not dropped as a release that never served."""
    v1 = first_deploy(hosts, tmp_path)
    hosts[1].path("/srv/slow").write_text("")
    hook = "if [ -e /srv/slow ]; then rm /srv/slow; sleep 5; fi"
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json",
            "--after-switch", hook, "--host-timeout", "3")
    assert r.returncode == 1, r.stderr
    d = json.loads(r.stdout)
    v2 = d["release"]
    assert d["outcome"] == "switched back", d
    by_host = {h["host"]: h for h in d["hosts"]}
    slow = by_host[hosts[1].dest(APP)]
    assert slow["phase"] == "failed" and "--host-timeout" in slow["error"]
    assert all(h["release"] == v1 for h in d["hosts"])
    for h in hosts:
        assert current(h) == f"releases/{v1}"
        assert states(h)[v2] == "bad"  # kept as evidence on every host, web2 too
        assert idle(h)


def test_the_switched_line_names_only_what_ran_after_the_switch(hosts: list[Host],
                                                                tmp_path: Path) -> None:
    first_deploy(hosts, tmp_path)
    two = hosts[:2]
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(two))
    assert r.returncode == 0, r.stderr
    for h in two:
        assert f"{h.dest(APP)}: switched\n" in r.stderr, r.stderr
    assert "passed" not in r.stderr, r.stderr
    r = cli("deploy", make_build(tmp_path / "v3", version="v3"), *dests(two),
            "--health-check", "true")
    assert r.returncode == 0, r.stderr
    for h in two:
        assert f"{h.dest(APP)}: switched, health check passed\n" in r.stderr, r.stderr
    r = cli("deploy", make_build(tmp_path / "v4", version="v4"), *dests(two),
            "--after-switch", "true", "--health-check", "true")
    assert r.returncode == 0, r.stderr
    for h in two:
        assert f"{h.dest(APP)}: switched, after-switch hooks and health check passed\n" \
            in r.stderr, r.stderr


def test_hosts_never_started_because_one_was_unreachable_say_so(lab: SSHLab,
                                                                hosts: list[Host],
                                                                tmp_path: Path) -> None:
    """The reachable hosts were connected but never locked: their phase is "not started",
    with why and that nothing changed there, not the "connect" a failed host reached."""
    v1 = first_deploy(hosts, tmp_path)
    lab.add_alias("down", lab.unused_port())
    given = [hosts[0].dest(APP), f"down:{APP}", hosts[1].dest(APP)]
    v2 = make_build(tmp_path / "v2", version="v2")
    r = cli("deploy", v2, *given, "--json")
    assert r.returncode == 2, r.stderr
    d = json.loads(r.stdout)
    assert d["outcome"] == "nothing changed"
    assert [(h["host"], h["phase"]) for h in d["hosts"]] == [
        (given[0], "not started"), (given[1], "failed"), (given[2], "not started")]
    why = f"down:{APP} could not be reached; nothing changed here"
    assert [h["note"] for h in d["hosts"]] == [why, None, why]
    assert d["hosts"][1]["error"].startswith("nothing listens for ssh on down")

    r = cli("deploy", v2, *given)
    assert r.returncode == 2
    rows = r.stdout.splitlines()[1:]
    assert [row.split("  ")[2] for row in rows] == ["not started", "failed", "not started"]
    assert rows[0].endswith(f"({why})") and rows[2].endswith(f"({why})"), r.stdout
    assert f"{given[0]}: not started: {why}" in r.stderr.splitlines()
    for h in hosts:
        assert current(h) == f"releases/{v1}" and sorted(states(h)) == [v1]


def test_a_one_file_build_says_1_file(hosts: list[Host], tmp_path: Path) -> None:
    """The hosts' prepared lines, the summary rows and each host's dry-run plan: ``1 file``."""
    two = dests(hosts[:2])
    build = make_build(tmp_path / "one", files={"index.html": "x\n"})
    r = cli("deploy", build, *two, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert all(f"{h}:   send {build} (1 file) from " in r.stdout for h in two), r.stdout
    r = cli("deploy", build, *two)
    assert r.returncode == 0, r.stderr
    release = r.stdout.split()[1]
    for h in two:
        assert f"{h}: prepared {release} (1 file, 0 linked)\n" in r.stderr, r.stderr
    assert [row.split("  ")[-1] for row in r.stdout.splitlines()[1:]] == ["1 file, 0 linked"] * 2


def test_each_host_says_what_its_deploy_pruned(hosts: list[Host], tmp_path: Path) -> None:
    """--keep (or keep = in the config file) prunes on every host, and each host's deploy
    says so as one root's does: ``pruned`` in its --json object, a ``pruned N: ...`` line."""
    two = hosts[:2]
    ids = [first_deploy(two, tmp_path)]
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(two), "--json")
    assert r.returncode == 0, r.stderr
    ids.append(json.loads(r.stdout)["release"])
    assert all(h["pruned"] == [] for h in json.loads(r.stdout)["hosts"])

    r = cli("deploy", make_build(tmp_path / "v3", version="v3"), *dests(two), "--keep", "2",
            "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    ids.append(d["release"])
    assert [h["pruned"] for h in d["hosts"]] == [[ids[0]]] * 2
    assert all(sorted(states(h)) == ids[1:] for h in two)

    config = tmp_path / "keep.toml"
    config.write_text("keep = 2\n")
    r = cli("deploy", make_build(tmp_path / "v4", version="v4"), *dests(two),
            "--config", config)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[3:] == [f"{h}: pruned 1: {ids[1]}" for h in dests(two)], \
        r.stdout
    assert all(sorted(states(h))[:1] == [ids[2]] and len(states(h)) == 2 for h in two)


def test_a_fleet_rollback_says_what_it_marked_bad_and_status_says_none(
        hosts: list[Host], tmp_path: Path) -> None:
    """As one root's rollback says ``(X marked bad)`` and its status ``rollback target none``."""
    two = hosts[:2]
    v1 = first_deploy(two, tmp_path)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(two), "--json")
    v2 = json.loads(r.stdout)["release"]
    r = cli("rollback", *dests(two))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"rolled back 2 hosts to {v1} ({v2} marked bad)", r.stdout
    assert all(states(h)[v2] == "bad" for h in two)
    r = cli("status", *dests(two))
    assert r.returncode == 0, r.stderr
    assert [row.split()[1:] for row in r.stdout.splitlines()[1:]] == \
        [[v1, "rollback", "target", "none"]] * 2, r.stdout

    # Hosts that mark different releases bad: each row says its own.
    r = cli("deploy", make_build(tmp_path / "v3", version="v3"), *dests(two), "--json")
    v3 = json.loads(r.stdout)["release"]
    r = cli("deploy", make_build(tmp_path / "v4", version="v4"), two[0].dest(APP), "--json")
    v4 = json.loads(r.stdout)["release"]
    r = cli("rollback", *dests(two), "--to", v1, "--json")
    assert r.returncode == 0, r.stderr
    assert [h["marked_bad"] for h in json.loads(r.stdout)["hosts"]] == [v4, v3]
    assert states(two[0])[v4] == "bad" and states(two[1])[v3] == "bad"
    r = cli("deploy", make_build(tmp_path / "v5", version="v5"), *dests(two), "--json")
    v5 = json.loads(r.stdout)["release"]
    r = cli("deploy", make_build(tmp_path / "v6", version="v6"), two[1].dest(APP), "--json")
    v6 = json.loads(r.stdout)["release"]
    r = cli("rollback", *dests(two), "--to", v1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"rolled back 2 hosts to {v1}", r.stdout
    assert [row.split("  ")[1:] for row in r.stdout.splitlines()[1:]] == [
        [two[0].dest(APP), v1, f"(previous {v5}; {v5} marked bad)"],
        [two[1].dest(APP), v1, f"(previous {v6}; {v6} marked bad)"]], r.stdout


def test_a_failed_check_says_each_host_error_once_in_full_in_one_style(
        lab: SSHLab, hosts: list[Host], tmp_path: Path) -> None:
    """Each host's error line (``HOST: error: ...``, whoever found the error) gives its error
    and its state in full; its row and the one summary line give the error alone, hosts that
    failed alike together, and where the fleet is."""
    two = hosts[:2]
    v1 = first_deploy(two, tmp_path)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(two),
            "--check", "echo why >&2; false")
    assert r.returncode == 4, r.stderr
    state = f"nothing was switched, the new release was removed; current -> releases/{v1}"
    for h in dests(two):
        assert f"{h}: error: check hook failed: exit status 1; {state} (unchanged)" \
            in r.stderr.splitlines(), r.stderr
    assert (r.stdout + r.stderr).count(state) == 2, r.stdout + r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"atomic-deploy: error: failed to prepare: {', '.join(dests(two))} (check hook failed: "
        f"exit status 1); nothing switched: 2 hosts on {v1}")
    assert [row.rsplit("  ", 1)[1] for row in r.stdout.splitlines()[1:]] == \
        ["(check hook failed: exit status 1)"] * 2, r.stdout
    assert all(current(h) == f"releases/{v1}" for h in two)

    # An error found here (a host that cannot be reached) and one a host's tool gave (a
    # per-host command on a root that is not a deploy root): the same ``HOST: error: ``.
    lab.add_alias("down", lab.unused_port())
    r = cli("deploy", make_build(tmp_path / "v3"), two[0].dest(APP), f"down:{APP}")
    assert r.returncode == 2
    assert f"down:{APP}: error: nothing listens for ssh on down" in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].endswith("; nothing changed on any host"), r.stderr
    two[1].path("/srv/other").mkdir()
    r = cli("verify", two[0].dest(APP), two[1].dest("/srv/other"))
    assert r.returncode == 2
    assert f"{two[1].dest('/srv/other')}: error: " in r.stderr, r.stderr
    assert not [line for line in r.stderr.splitlines() if ": atomic-deploy: " in line], r.stderr

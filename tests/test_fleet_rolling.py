"""Rolling fleet deploys (--rolling, --rolling-wait, --max-fail) against real sshd test hosts
(tests/sshlab.py), every host's disk checked from outside."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from atomic_deploy.fleet import FleetOptions
from conftest import make_build, run_cli, wait_for
from fleetlab import APP, cli, current, dests, env
from sshlab import Host, SSHLab

TOLD = "echo $ATOMIC_DEPLOY_RELEASE >> /srv/told"
UNHEALTHY = ("--health-check", "test ! -e /srv/unhealthy", "--health-retries", "0")


def told(h: Host) -> list[str]:
    f = h.path("/srv/told")
    return f.read_text().split() if f.exists() else []


def hidden(h: Host) -> list[str]:
    rel = h.path(APP) / "releases"
    return [n for n in os.listdir(rel) if n.startswith(".")] if rel.is_dir() else []


def status(h: Host) -> dict[str, Any]:
    r = cli("status", h.dest(APP), "--json")
    return dict(json.loads(r.stdout))


def states(h: Host) -> dict[str, str]:
    r = cli("list", h.dest(APP), "--json")
    assert r.returncode == 0, r.stderr
    return {x["id"]: x["state"] for x in json.loads(r.stdout)["releases"]}


def first_deploy(hosts: list[Host], tmp_path: Path) -> str:
    r = cli("deploy", make_build(tmp_path / "v1", version="v1"), *dests(hosts), "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["release"])


def settled(h: Host) -> bool:
    st = status(h)
    return st.get("recovery") is None and st.get("lock_holder") is None


def test_rolling_deploy_switches_batch_after_healthy_batch(lab: SSHLab, tmp_path: Path) -> None:
    hosts = [lab.add_host(f"web{i}") for i in (1, 2, 3, 4)]
    v1 = first_deploy(hosts, tmp_path)
    # Batches follow the order given, not the sorted one: web3 and web1 first.
    order = [hosts[2], hosts[0], hosts[3], hosts[1]]
    # Each host records when its health check passed, on the one clock these hosts share.
    healthy = "date +%s.%N > /srv/healthy_at"
    # Pings every 0.2 s: a host gives up after 0.8 s without a word, far less than the 3 s
    # the second batch waits and the first waits for its commit. Nor is waiting answering
    # late: --host-timeout is shorter than the wait.
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(order), "--json",
            "--rolling", "50%", "--rolling-wait", "3", "--host-timeout", "2.9",
            "--after-switch", TOLD,
            "--health-check", healthy, "--health-retries", "0",
            env=env(ATOMIC_DEPLOY_PING_INTERVAL="0.2"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    v2 = d["release"]
    assert d["outcome"] == "deployed"
    first, second = [order[0], order[1]], [order[2], order[3]]
    assert [b["hosts"] for b in d["batches"]] == [dests(first), dests(second)]
    assert all(b["failed"] == [] and b["skew_ms"] is not None for b in d["batches"])
    by_host = {x["host"]: x for x in d["hosts"]}
    assert [by_host[h.dest(APP)]["batch"] for h in order] == [1, 1, 2, 2]
    for h in hosts:
        assert current(h) == f"releases/{v2}" and told(h) == [v2]
        assert by_host[h.dest(APP)]["phase"] == "committed"
        assert settled(h) and not hidden(h)
        assert states(h) == {v1: "good", v2: "current"}
    # Batch 2 switched only after every host of batch 1 was healthy, and the wait after.
    healthy_1 = max(float(h.path("/srv/healthy_at").read_text()) for h in first)
    switched_2 = min(by_host[h.dest(APP)]["switched_at"] for h in second)
    assert switched_2 - healthy_1 >= 3
    ctime = {h.alias: os.lstat(h.path(APP) / "current").st_ctime for h in hosts}
    assert max(ctime[h.alias] for h in first) < min(ctime[h.alias] for h in second)
    # The fleet-wide skew spans the batches (the mixed window); each batch has its own.
    assert d["skew_ms"] >= 3000 > max(b["skew_ms"] for b in d["batches"])
    lines = r.stderr.splitlines()
    assert any(line.startswith("batch 1/2: 2 of 2 hosts switched and healthy") for line in lines)
    assert any(line.startswith("batch 2/2: 2 of 2 hosts switched and healthy") for line in lines)

    r = cli("deploy", make_build(tmp_path / "v3", version="v3"), *dests(order), "--rolling", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("deployed ") and "4 hosts in 4 batches" in r.stdout


def test_a_failing_second_batch_switches_the_first_back(lab: SSHLab, tmp_path: Path) -> None:
    hosts = [lab.add_host(f"web{i}") for i in (1, 2, 3)]
    v1 = first_deploy(hosts, tmp_path)
    hosts[1].path("/srv/unhealthy").write_text("")
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json",
            "--rolling", "1", "--after-switch", TOLD, *UNHEALTHY)
    assert r.returncode == 4, r.stderr
    d = json.loads(r.stdout)
    v2 = d["release"]
    assert d["outcome"] == "switched back" and "web2" in d["error"]
    assert [b["switched"] for b in d["batches"]] == [[hosts[0].dest(APP)], []]  # no batch 3
    assert d["batches"][1]["failed"] == [hosts[1].dest(APP)]
    for h in hosts:
        assert current(h) == f"releases/{v1}"
        assert settled(h) and not hidden(h)
    # Batch 1 switched and was switched back; batch 2 failed and switched itself back: both
    # told the service both ways and keep the release marked bad.
    for h in hosts[:2]:
        assert told(h) == [v2, v1]
        assert states(h)[v2] == "bad"
    # Batch 3 never switched: its staged release removed, as after a failed prepare.
    assert told(hosts[2]) == [] and sorted(states(hosts[2])) == [v1]
    assert "batch 2/3: 0 of 1 host switched and healthy" in r.stderr


@pytest.mark.parametrize("rolling", [("--rolling", "1"), ()], ids=["rolling", "all-at-once"])
def test_max_fail_lets_one_host_fail(lab: SSHLab, tmp_path: Path,
                                     rolling: tuple[str, ...]) -> None:
    hosts = [lab.add_host(f"web{i}") for i in (1, 2, 3)]
    v1 = first_deploy(hosts, tmp_path)
    hosts[1].path("/srv/unhealthy").write_text("")
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json",
            *rolling, "--max-fail", "1", "--after-switch", TOLD, *UNHEALTHY)
    assert r.returncode == 5, r.stderr
    d = json.loads(r.stdout)
    v2 = d["release"]
    assert d["outcome"] == "mixed"
    web1, web2, web3 = dests(hosts)
    # The message names every host and the release it is on.
    assert f"{web1} on {v2}; {web2} on {v1}; {web3} on {v2}" in d["error"]
    assert "--max-fail 1" in d["error"] and "web2" in d["error"].split("the fleet is mixed")[0]
    last = r.stderr.splitlines()[-1]
    assert last.startswith("atomic-deploy: error: ") and f"{web2} on {v1}" in last
    assert current(hosts[1]) == f"releases/{v1}" and states(hosts[1])[v2] == "bad"
    assert told(hosts[1]) == [v2, v1]
    phases = {x["host"]: x["phase"] for x in d["hosts"]}
    for h in (hosts[0], hosts[2]):
        assert current(h) == f"releases/{v2}" and states(h)[v2] == "current"
        assert told(h) == [v2] and phases[h.dest(APP)] == "committed"
    for h in hosts:
        assert settled(h) and not hidden(h)
    assert phases[web2] == "failed"  # not the last phase it reached


def test_max_fail_exceeded_switches_everyone_back(lab: SSHLab, tmp_path: Path) -> None:
    hosts = [lab.add_host(f"web{i}") for i in (1, 2, 3)]
    v1 = first_deploy(hosts, tmp_path)
    for h in (hosts[0], hosts[2]):
        h.path("/srv/unhealthy").write_text("")
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json",
            "--rolling", "1", "--max-fail", "1", "--after-switch", TOLD, *UNHEALTHY)
    assert r.returncode == 4, r.stderr
    d = json.loads(r.stdout)
    v2 = d["release"]
    assert d["outcome"] == "switched back"
    assert "web1" in d["error"] and "web3" in d["error"]
    # web1 failed within the budget, web2 went on, web3 was one too many: all back on v1.
    assert [b["failed"] for b in d["batches"]] == [[hosts[0].dest(APP)], [],
                                                    [hosts[2].dest(APP)]]
    for h in hosts:
        assert current(h) == f"releases/{v1}" and told(h) == [v2, v1]
        assert states(h)[v2] == "bad"
        assert settled(h) and not hidden(h)


def test_every_host_failing_within_max_fail_is_a_failed_deploy(lab: SSHLab,
                                                               tmp_path: Path) -> None:
    hosts = [lab.add_host(f"web{i}") for i in (1, 2)]
    v1 = first_deploy(hosts, tmp_path)
    for h in hosts:
        h.path("/srv/unhealthy").write_text("")
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json",
            "--max-fail", "2", *UNHEALTHY)
    assert r.returncode == 4, r.stderr
    assert json.loads(r.stdout)["outcome"] == "switched back"
    assert all(current(h) == f"releases/{v1}" and settled(h) for h in hosts)


def test_batch_sizes() -> None:
    assert FleetOptions(rolling_percent=25).batch_size(10) == 3  # rounded up: 3, 3, 3, 1
    assert FleetOptions(rolling_percent=1).batch_size(4) == 1  # at least 1
    assert FleetOptions(rolling_percent=100).batch_size(4) == 4
    assert FleetOptions(rolling=3).batch_size(2) == 3  # one batch of everything
    assert FleetOptions().batch_size(7) == 7  # not rolling: one batch


def test_rolling_rollback(lab: SSHLab, tmp_path: Path) -> None:
    hosts = [lab.add_host(f"web{i}") for i in (1, 2, 3)]
    v1 = first_deploy(hosts, tmp_path)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--json")
    v2 = json.loads(r.stdout)["release"]
    r = cli("rollback", *dests(hosts), "--json", "--rolling", "2")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["release"] == v1 and len(d["batches"]) == 2
    for h in hosts:
        assert current(h) == f"releases/{v1}" and states(h)[v2] == "bad"


def test_killed_between_batches_every_host_goes_back(lab: SSHLab, tmp_path: Path) -> None:
    hosts = [lab.add_host(f"web{i}") for i in (1, 2)]
    v1 = first_deploy(hosts, tmp_path)
    r = cli("deploy", make_build(tmp_path / "v2", version="v2"), *dests(hosts), "--rolling", "1",
            "--after-switch", TOLD, fault="fleet-batch-switched:KILL")
    assert r.returncode == -signal.SIGKILL
    for h in hosts:
        wait_for(lambda h=h: settled(h), what=f"{h.alias} to undo")  # type: ignore[misc]
        assert current(h) == f"releases/{v1}" and not hidden(h)
    v2 = told(hosts[0])[0]
    assert told(hosts[0]) == [v2, v1] and told(hosts[1]) == []


@pytest.mark.parametrize(("args", "says"), [
    (("--rolling", "0"), "--rolling: 1 or more hosts"),
    (("--rolling", "150%"), "--rolling: a percentage over 0 and at most 100%"),
    (("--rolling", "0%"), "--rolling: a percentage over 0"),
    (("--rolling", "two"), "--rolling: not a number"),
    (("--max-fail", "-1"), "--max-fail: 0 or more hosts"),
    (("--rolling-wait", "1"), "--rolling-wait needs --rolling"),
])
def test_bad_rolling_values(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    # Refused before any host is asked: these hosts do not exist.
    r = run_cli("deploy", make_build(tmp_path / "b"), "nohost1:/srv/app", "nohost2:/srv/app",
                *args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


@pytest.mark.parametrize("cmd", ["deploy", "rollback"])
def test_help_shows_the_rolling_options(cmd: str) -> None:
    r = run_cli(cmd, "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "--rolling N" in text and "N%: that share of them" in text
    assert "--rolling-wait SECONDS" in text and "--max-fail N" in text


@pytest.mark.parametrize("cmd", ["deploy", "rollback"])
@pytest.mark.parametrize("flag", [("--rolling", "2"), ("--max-fail", "1")])
def test_rolling_needs_a_fleet(tmp_path: Path, cmd: str, flag: tuple[str, ...]) -> None:
    root = tmp_path / "root"
    args = [make_build(tmp_path / "b"), root] if cmd == "deploy" else [root]
    r = run_cli(cmd, *args, *flag)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"{flag[0]} is for a fleet" in r.stderr, r.stderr
    assert not root.exists()
    r = run_cli(cmd, *args[:-1], "web1:/srv/app", *flag)
    assert r.returncode == 2 and f"{flag[0]} is for a fleet" in r.stderr, r.stderr

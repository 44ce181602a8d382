"""What a new user trips on in everyday use: hook lists in the config file, a mistyped ROOT, a
tarball wrapped in one folder, symlinks pointing out of a folder build."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import (
    Builds,
    current_target,
    error_line,
    hidden_entries,
    history,
    make_build,
    release_names,
    run_cli,
    snapshot,
)

# ---------------------------------------------------------------- hook lists in the config file


def test_a_list_of_strings_in_the_config_file_is_a_list_of_commands(
        builds: Builds, root: Path, tmp_path: Path) -> None:
    """What a Deployer user writes: each string is one shell command, run in order."""
    seen = tmp_path / "seen"
    root.mkdir()
    (root / "atomic-deploy.toml").write_text(
        f'check = ["echo check-a >> {seen}", "echo check-b >> {seen}"]\n'
        f'after_switch = ["echo a >> {seen}", "echo b >> {seen}"]\n')
    r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 0, r.stderr
    assert seen.read_text().split() == ["check-a", "check-b", "a", "b"]
    record = history(root)[-1]
    assert [h["command"] for h in record["hooks"]] == [
        f"echo check-a >> {seen}", f"echo check-b >> {seen}",
        f"echo a >> {seen}", f"echo b >> {seen}"]


def test_an_argv_in_the_config_file_is_a_list_inside_the_list(builds: Builds, root: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "argv"
    root.mkdir()
    (root / "atomic-deploy.toml").write_text(
        f'after_switch = [["{sys.executable}", "-c", '
        f'"import sys; open(sys.argv[1], \'w\').write(sys.argv[2])", "{out}", "$HOME"], '
        f'"echo shell-$((1 + 1)) >> {out}.sh"]\n'
        f'health_check = [["test", "-f", "version.txt"]]\n')
    r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == "$HOME"  # no shell
    assert Path(f"{out}.sh").read_text() == "shell-2\n"
    health = [h for h in history(root)[-1]["hooks"] if h["phase"] == "health-check"]
    assert health and health[0]["ok"] is True


def test_dry_run_shows_each_hook_as_it_will_run(builds: Builds, root: Path) -> None:
    root.mkdir()
    (root / "atomic-deploy.toml").write_text(
        'check = "test -f index.html"\n'
        'after_switch = ["echo a", "echo b", ["systemctl", "reload", "my nginx"]]\n'
        'on_failure = [["notify", "it failed"]]\n'
        'health_check = "curl -fsS http://127.0.0.1/"\n')
    r = run_cli("deploy", builds("v1"), root, "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "  run check hook: sh -c 'test -f index.html'" in lines
    hooks = [line for line in lines if "after-switch hook" in line]
    assert hooks == ["  run after-switch hook: sh -c 'echo a'",
                     "  run after-switch hook: sh -c 'echo b'",
                     "  run after-switch hook: systemctl reload 'my nginx'"]
    assert any(line.startswith("  run health check: sh -c 'curl -fsS http://127.0.0.1/'")
               for line in lines), lines
    r = run_cli("deploy", builds("v1"), root, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert "run after-switch hook: sh -c 'echo b'" in json.loads(r.stdout)["plan"]


BAD_HOOKS = {
    "empty string": ('after_switch = ["echo a", ""]', "after_switch", "command 2 is empty"),
    "blank string": ('check = "   "', "check", "is empty"),
    "empty argv": ("on_failure = [[]]", "on_failure", "empty argument list"),
    "empty program": ('check = [["", "x"]]', "check", "empty program name"),
    "number": ("after_switch = [1]", "after_switch", "found int"),
    "number in argv": ('after_switch = [["echo", 1]]', "after_switch", "found list"),
    "table": ('after_switch = {cmd = "x"}', "after_switch", "wrong type"),
    "several health checks": ('health_check = ["true", "true"]', "health_check",
                              "one command"),
    "empty health check": ('health_check = [[]]', "health_check", "empty argument list"),
}


@pytest.mark.parametrize("case", list(BAD_HOOKS))
def test_a_bad_hook_in_the_config_file_is_refused_before_anything_is_copied(
        builds: Builds, root: Path, case: str) -> None:
    text, key, why = BAD_HOOKS[case]
    root.mkdir()
    (root / "atomic-deploy.toml").write_text(text + "\n")
    before = snapshot(root)
    for extra in ([], ["--dry-run"]):
        r = run_cli("deploy", builds("v1"), root, *extra)
        assert r.returncode == 2, (extra, r.stderr)
        line = error_line(r)
        assert f"atomic-deploy.toml: {key}" in line and why in line, line
        assert snapshot(root) == before


@pytest.mark.parametrize("flags", [["--check", ""], ["--after-switch", "true",
                                                       "--after-switch", " "],
                                   ["--health-check", ""], ["--on-failure", ""]])
def test_a_bad_hook_flag_is_refused_before_anything_is_copied(builds: Builds, root: Path,
                                                              flags: list[str]) -> None:
    r = run_cli("deploy", builds("v1"), root, *flags)
    assert r.returncode == 2, r.stderr
    assert flags[-2] in error_line(r) and "is empty" in error_line(r)
    assert not root.exists()


def test_rollback_goes_on_without_a_bad_hook_setting(builds: Builds, root: Path,
                                                     tmp_path: Path) -> None:
    for v in ("v1", "v2"):
        assert run_cli("deploy", builds(v), root).returncode == 0
    first = release_names(root)[0]
    seen = tmp_path / "seen"
    (root / "atomic-deploy.toml").write_text(
        f'after_switch = ["echo a >> {seen}", "echo b >> {seen}"]\non_failure = [[]]\n')
    r = run_cli("rollback", root)
    assert r.returncode == 0, r.stderr
    assert current_target(root) == f"releases/{first}"
    assert seen.read_text().split() == ["a", "b"]
    assert "on_failure" in r.stderr and "going on without it" in r.stderr


@pytest.mark.parametrize("text,status", [
    ('after_switch = [["systemctl", "reload", "nginx"]]\nhealth_check = [["true"]]', "ok"),
    ('after_switch = ["echo a", "echo b"]', "ok"),
    ('after_switch = ["echo a", ""]', "fail"),
])
def test_doctor_reads_hook_settings_as_the_commands_do(builds: Builds, root: Path, text: str,
                                                       status: str) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    (root / "atomic-deploy.toml").write_text(text + "\n")
    r = run_cli("doctor", root, "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["config"]["status"] == status, checks["config"]


# ---------------------------------------------------------------- a mistyped ROOT


@pytest.mark.parametrize("dry_run", [False, True])
def test_root_whose_parent_is_missing_is_refused_and_nothing_is_created(
        builds: Builds, tmp_path: Path, dry_run: bool) -> None:
    root = tmp_path / "nonexist" / "dir" / "app"
    r = run_cli("deploy", builds("v1"), root, *(["--dry-run"] if dry_run else []))
    assert r.returncode == 2, r.stderr
    line = error_line(r)
    assert f"parent folder {root.parent} does not exist" in line, line
    assert "nothing was changed" in line
    assert not (tmp_path / "nonexist").exists()


def test_root_under_a_file_is_refused(builds: Builds, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    r = run_cli("prepare", builds("v1"), tmp_path / "file" / "app")
    assert r.returncode == 2, r.stderr
    assert f"parent folder {tmp_path / 'file'} is not a folder" in error_line(r)
    assert (tmp_path / "file").read_text() == "x"


def test_root_itself_is_still_created_when_its_parent_exists(builds: Builds,
                                                             tmp_path: Path) -> None:
    root = tmp_path / "app"
    r = run_cli("deploy", builds("v1"), root)
    assert r.returncode == 0, r.stderr
    assert (root / "current" / "version.txt").read_text() == "v1\n"
    assert len(release_names(root)) == 1
    assert os.stat(root).st_mode & 0o777 == 0o755 & ~_umask()


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


# ---------------------------------------------------------------- a tarball wrapped in one folder


def _tarball(path: Path, names: list[str], compression: str = "gz") -> Path:
    """A tarball of files (names ending in / are folders) holding their own names."""
    with tarfile.open(path, f"w:{compression}") as tf:
        for name in names:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                data = name.encode()
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    return path


ONE_FOLDER = ["v3/", "v3/public/", "v3/public/index.html", "v3/version.txt"]


@pytest.mark.parametrize("cmd", ["deploy", "prepare"])
def test_tarball_with_one_top_level_folder_says_to_strip_it(tmp_path: Path, root: Path,
                                                            cmd: str) -> None:
    archive = _tarball(tmp_path / "app-1.5.tar.gz", ONE_FOLDER)
    r = run_cli(cmd, archive, root)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, r.stderr
    assert "one folder, v3/" in warnings[0] and "--strip-components 1" in warnings[0]
    (release,) = release_names(root)
    assert (root / "releases" / release / "v3" / "public" / "index.html").is_file()
    r = run_cli(cmd, archive, root, "--json")
    assert r.returncode == 0, r.stderr
    (warning,) = json.loads(r.stdout)["warnings"]
    assert "one folder, v3/" in warning and "--strip-components 1" in warning


def test_dry_run_says_so_too_without_extracting(tmp_path: Path, root: Path) -> None:
    archive = _tarball(tmp_path / "app.tar.xz", ["./", *("./" + n for n in ONE_FOLDER)], "xz")
    r = run_cli("deploy", archive, root, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    hints = [step for step in plan if "--strip-components 1" in step]
    assert len(hints) == 1 and "one folder, v3/" in hints[0], plan
    assert not root.exists()
    r = run_cli("deploy", archive, root, "--dry-run", "--strip-components", "1")
    assert r.returncode == 0, r.stderr
    assert "strip" not in r.stdout


@pytest.mark.parametrize("names", [
    ["index.html", "public/", "public/app.js"],  # a normal build
    ["v3/", "v3/index.html", "README"],  # a folder and a file at the top
    ["v3/index.html", "v4/index.html"],  # two folders
    ["index.html"],  # one file
])
def test_no_hint_unless_everything_is_inside_one_folder(tmp_path: Path, root: Path,
                                                        names: list[str]) -> None:
    archive = _tarball(tmp_path / "app.tgz", names)
    r = run_cli("deploy", archive, root, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "strip" not in r.stdout
    r = run_cli("deploy", archive, root)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_no_hint_when_stripping(tmp_path: Path, root: Path) -> None:
    archive = _tarball(tmp_path / "app.tgz", ["build/", *("build/" + n for n in ONE_FOLDER)])
    r = run_cli("deploy", archive, root, "--strip-components", "1")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # v3/ is all that is left, but it was asked for
    assert (root / "current" / "v3" / "version.txt").is_file()


# ---------------------------------------------------------------- symlinks out of a folder build


def _build_with_links(path: Path) -> Path:
    make_build(path, {"public/index.html": "<h1>hi</h1>\n", "public/sub/page.html": "p\n",
                      "storage/app.log": "log\n"})
    os.symlink("/etc/passwd", path / "public" / "passwd")  # absolute
    os.symlink("../../../etc/hosts", path / "public" / "sub" / "hosts")  # climbs out
    os.symlink("sub", path / "public" / "s")  # inside
    os.symlink("s/../../..", path / "public" / "up")  # climbs out through a link
    os.symlink("../index.html", path / "public" / "sub" / "home.html")  # inside
    os.symlink("../storage", path / "public" / "storage")  # inside (a shared folder later)
    return path


EXTERNAL = [{"path": "public/passwd", "target": "/etc/passwd"},
            {"path": "public/sub/hosts", "target": "../../../etc/hosts"},
            {"path": "public/up", "target": "s/../../.."}]


@pytest.mark.parametrize("cmd", ["deploy", "prepare"])
def test_links_out_of_a_folder_build_are_copied_with_a_warning(tmp_path: Path, root: Path,
                                                               cmd: str) -> None:
    build = _build_with_links(tmp_path / "build")
    r = run_cli(cmd, build, root, "--shared-dir", "storage")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, r.stderr
    for link in EXTERNAL:
        assert f"{link['path']} -> {link['target']}" in warnings[0]
    assert "3 symlinks pointing outside" in warnings[0] and "storage" not in warnings[0]
    (release,) = release_names(root)
    assert os.readlink(root / "releases" / release / "public" / "passwd") == "/etc/passwd"
    r = run_cli(cmd, build, root, "--shared-dir", "storage", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["external_links"] == EXTERNAL
    assert len(out["warnings"]) == 1


def test_no_warning_for_links_inside_the_build_and_the_shared_links(tmp_path: Path,
                                                                    root: Path) -> None:
    build = make_build(tmp_path / "build", {"public/index.html": "x\n", "storage/a": "a\n"})
    os.symlink("index.html", build / "public" / "home.html")
    os.symlink("../storage/a", build / "public" / "a")
    root.mkdir()
    (root / "shared").mkdir()
    (root / "shared" / ".env").write_text("X=1\n")
    r = run_cli("deploy", build, root, "--shared-dir", "storage", "--shared-file", ".env",
                "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    out = json.loads(r.stdout)
    assert out["external_links"] == [] and out["warnings"] == []
    assert os.path.islink(root / "current" / "storage")  # the tool's own link, not reported


@pytest.mark.parametrize("how", ["flag", "config"])
def test_refuse_external_links_fails_and_removes_the_staged_release(
        builds: Builds, tmp_path: Path, root: Path, how: str) -> None:
    assert run_cli("deploy", builds("v1"), root).returncode == 0
    (first,) = release_names(root)
    build = _build_with_links(tmp_path / "build")
    extra = ["--refuse-external-links"] if how == "flag" else []
    if how == "config":
        (root / "atomic-deploy.toml").write_text("refuse_external_links = true\n")
    r = run_cli("deploy", build, root, *extra)
    assert r.returncode == 2, r.stderr
    line = error_line(r)
    assert "public/passwd -> /etc/passwd" in line and "--refuse-external-links" in line
    assert "nothing was switched, the new release was removed" in line
    assert release_names(root) == [first]
    assert current_target(root) == f"releases/{first}"
    assert hidden_entries(root) == []
    assert history(root)[-1]["outcome"] == "failed"
    # A build without such links goes through.
    r = run_cli("deploy", builds("v2"), root, *extra)
    assert r.returncode == 0, r.stderr

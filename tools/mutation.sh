#!/usr/bin/env bash
# Mutation testing of one engine module with cosmic-ray: every small change to the module (a
# comparison flipped, a constant changed, a call removed...) must make the module's tests fail.
#
#   tools/mutation.sh MODULE [TEST...]      e.g. tools/mutation.sh _switch
#
# MODULE is a file in src/atomic_deploy without .py; TESTs (pytest files or node ids) default to
# the tests listed for that module below. It works on a copy of the
# repository in a temporary folder, so the checkout is never mutated (a killed run cannot leave
# a mutant behind). Needs: pip install -e '.[mutation]' (cosmic-ray, pytest). Prints each
# surviving mutant's diff and the score; the session is kept as mutation-MODULE.sqlite. A mutant
# whose tests run longer than MUTATION_TIMEOUT seconds (default 120: a mutant that makes a wait
# endless) counts as killed.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

module=${1:?usage: tools/mutation.sh MODULE [TEST...]}
shift
file="src/atomic_deploy/${module}.py"
[ -f "$file" ] || { echo "no such module: $file" >&2; exit 2; }

if [ "$#" -gt 0 ]; then
  tests=("$@")
else
  # Fast tests that exercise the module directly; each run stops at the first failure (-x).
  case "$module" in
    _switch)   tests=(tests/test_engine_units.py
                      tests/test_security.py::test_planted_temp_link_is_never_followed_or_reused) ;;
    _jsonfile) tests=(tests/test_engine_units.py tests/test_fastcli.py tests/test_durability.py
                      tests/test_security.py::test_planted_json_temp_file_is_never_written_through) ;;
    # _recovery and _platform: chosen node ids, not whole files (these run the real CLI: the
    # whole files take minutes per mutant). 10 to 20 s for a mutant no test kills.
    _recovery) tests=(tests/test_hook_lifetime.py::test_recovery_leaves_a_recycled_pid_alone
                      tests/test_engine_units.py::test_a_leftover_that_cannot_be_removed_is_noted_and_never_stops_the_rest
                      tests/test_engine_units.py::test_clearing_the_journal_flushes_its_removal_unless_told_not_to
                      tests/test_hook_lifetime.py::test_recovery_returns_only_once_the_killed_group_is_gone
                      tests/test_hook_lifetime.py::test_recovery_stops_waiting_for_a_group_that_does_not_go
                      "tests/test_signals_and_crashes.py::test_deploy_killed_at_every_step_then_status_list_and_deploy_recover[switched]"
                      "tests/test_signals_and_crashes.py::test_deploy_killed_at_every_step_then_status_list_and_deploy_recover[staging-created]"
                      "tests/test_signals_and_crashes.py::test_deploy_killed_at_every_step_then_status_list_and_deploy_recover[release-synced]"
                      tests/test_signals_and_crashes.py::test_journal_of_a_committed_deploy_coming_back_is_only_removed
                      "tests/test_signals_and_crashes.py::test_switch_killed_at_every_step_then_deploy_recovers[rollback-switched]"
                      "tests/test_signals_and_crashes.py::test_switch_killed_at_every_step_then_deploy_recovers[activate-journal-written]"
                      "tests/test_signals_and_crashes.py::test_prune_killed_at_every_step_then_deploy_recovers[victim-hidden]"
                      tests/test_signals_and_crashes.py::test_killed_while_a_signalled_deploy_switches_back
                      "tests/test_signals_and_crashes.py::test_killed_while_recovering_a_killed_deploy[undo-switched-back]"
                      "tests/test_signals_and_crashes.py::test_killed_while_recovering_a_killed_deploy[undo-release-discarded]"
                      "tests/test_signals_and_crashes.py::test_killed_while_recovering_a_killed_deploy[recover-recorded]"
                      tests/test_signals_and_crashes.py::test_a_signal_during_a_switch_back_does_not_interrupt_it
                      "tests/test_signals_and_crashes.py::test_state_temp_file_left_by_kill_is_listed_then_removed[journal-temp-written]"
                      tests/test_signals_and_crashes.py::test_planted_state_temp_files_are_listed_and_removed_under_the_lock
                      "tests/test_signals_and_crashes.py::test_deploy_signal_at_every_step[switched-TERM]"
                      tests/test_recovery_rules.py::test_killed_during_health_check_recover_finishes_or_switches_back
                      "tests/test_recovery_rules.py::test_killed_while_switching_back_status_reports_and_recover_finishes[rollback-switching-back]"
                      "tests/test_recovery_rules.py::test_killed_while_switching_back_status_reports_and_recover_finishes[deploy-switched-back]"
                      "tests/test_recovery_rules.py::test_killed_while_switching_back_status_reports_and_recover_finishes[activate-switching-back]"
                      "tests/test_signals_and_crashes.py::test_first_deploy_sigterm_leaves_no_current[switched]"
                      "tests/test_recovery_rules.py::test_signal_at_every_step_after_the_switch_tells_the_restored_release[rollback-switched]"
                      tests/test_recovery_rules.py::test_signal_then_killed_while_switching_back_an_activate_keeps_its_release_good
                      tests/test_recovery_rules.py::test_current_moved_by_hand_after_a_killed_activate_is_switched_back
                      tests/test_recovery_rules.py::test_recover_says_where_current_was_left
                      tests/test_recovery_rules.py::test_recover_dry_run_changes_nothing_and_prints_the_plan
                      tests/test_recovery_rules.py::test_recover_on_a_clean_root_has_nothing_to_do
                      "tests/test_recovery_rules.py::test_interrupted_adopt_then_deploy_keeps_the_adopted_release_as_rollback_target[KILL]"
                      tests/test_recovery_rules.py::test_interrupted_rollback_on_a_capistrano_root_keeps_its_target
                      "tests/test_recovery_rules.py::test_interrupted_activate_never_makes_hand_named_releases_prunable[legacy-a]"
                      tests/test_hook_lifetime.py::test_recovery_kills_a_hook_group_that_survived_the_tool
                      "tests/test_hook_lifetime.py::test_kill_9_of_the_tool_kills_the_running_hook_and_its_children[after-switch]") ;;
    _lock)     tests=(tests/test_engine_units.py tests/test_lock.py) ;;
    _platform) tests=(tests/test_durability.py
                      tests/test_engine_units.py::test_same_filesystem_either_way_round
                      tests/test_engine_units.py::test_linux_uses_syncfs_and_renameat2_where_its_c_library_has_them
                      tests/test_engine_units.py::test_a_folder_fsync_the_filesystem_refuses_is_no_error
                      tests/test_perf_paths.py::test_clone_fd_refused_on_a_filesystem_without_clones
                      tests/test_perf_paths.py::test_clone_kind_and_clonefile_elsewhere
                      tests/test_perf_paths.py::test_fsync_helpers
                      tests/test_perf_paths.py::test_copy_range_without_the_syscall
                      tests/test_copy_engine.py::test_real_copy_range_error_is_raised_not_hidden
                      tests/test_copy_engine.py::test_copy_range_partial_then_refusal_is_an_error
                      tests/test_copy_engine.py::test_copy_range_copies_past_a_stale_size
                      tests/test_copy_engine.py::test_ficlone_path
                      tests/test_copy_engine.py::test_read_write_fallback_probes_once
                      tests/test_copy_engine.py::test_a_worker_asks_the_kernel_to_kill_it_with_its_parent
                      tests/test_hook_lifetime.py::test_recovery_leaves_a_recycled_pid_alone
                      tests/test_hook_lifetime.py::test_recovery_kills_a_hook_group_that_survived_the_tool
                      tests/test_hook_lifetime.py::test_process_started_is_the_start_time_since_boot
                      tests/test_hook_lifetime.py::test_a_group_left_as_zombies_is_not_running
                      tests/test_hook_lifetime.py::test_a_process_exiting_during_the_scan_does_not_end_it
                      "tests/test_lifecycle.py::test_adopt_moves_a_real_current_folder_into_releases[True]"
                      tests/test_copy_engine.py::test_workers_stop_when_the_calling_process_is_killed) ;;
    *) echo "no default tests for $module: name them after the module" >&2; exit 2 ;;
  esac
fi

py=${PYTHON:-$here/.venv/bin/python}
"$py" -c 'import cosmic_ray' 2>/dev/null \
  || { echo "cosmic-ray is not installed for $py: pip install -e '.[mutation]'" >&2; exit 2; }
bindir=$(dirname "$py")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The tracked files as committed plus any local edits, without .git or the virtualenvs.
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work" 2>/dev/null || true
cd "$work"

quoted=$(printf '%q ' "${tests[@]}")
# Shell-quoted for shlex (node ids hold brackets), then escaped for a TOML basic string.
quoted=${quoted//\\/\\\\}
quoted=${quoted//\"/\\\"}
cat > mutation.toml <<TOML
[cosmic-ray]
module-path = "$file"
timeout = ${MUTATION_TIMEOUT:-120}.0
excluded-modules = []
test-command = "env PYTHONPATH=$work/src $py -m pytest -x -q -p no:cacheprovider -o addopts= $quoted"

[cosmic-ray.distributor]
name = "local"
TOML

"$bindir/cosmic-ray" init mutation.toml session.sqlite
# Mutants inside type annotations (never evaluated: every module has `from __future__ import
# annotations`) and inside `if TYPE_CHECKING:` blocks cannot change behaviour: skip them.
"$py" - session.sqlite "$file" <<'PY'
import ast
import sys

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

session, path = sys.argv[1:3]
with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
spans = []
for node in ast.walk(tree):
    found: list[ast.AST] = []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        found += [x.annotation for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
                  if x is not None and x.annotation is not None]
        found += [node.returns] if node.returns is not None else []
    elif isinstance(node, ast.AnnAssign):
        found.append(node.annotation)
    elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
            and node.test.id == "TYPE_CHECKING":
        found.append(node)
    spans += [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in found]
skipped = 0
with use_db(session) as db:
    for item in list(db.work_items):
        if any(a <= tuple(m.start_pos) < b for m in item.mutations for a, b in spans):
            db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
            skipped += 1
print(f"{skipped} mutants in type annotations skipped")
PY
"$bindir/cosmic-ray" baseline mutation.toml \
  || { echo "the tests fail on the unmutated code: fix that first" >&2; exit 1; }
started=$(date +%s)
"$bindir/cosmic-ray" exec mutation.toml session.sqlite
cp session.sqlite "$here/mutation-${module}.sqlite"
# Our own summary: cr-report counts skipped mutants as killed.
"$py" - session.sqlite "$module" "$(( $(date +%s) - started ))" <<'PY'
import sys

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome

session, module, seconds = sys.argv[1:4]
with use_db(session) as db:
    items = {i.job_id: i for i in db.work_items}
    results = dict(db.results)
skipped = [j for j, r in results.items() if r.worker_outcome == WorkerOutcome.SKIPPED]
survived = [j for j, r in results.items() if r.test_outcome == TestOutcome.SURVIVED]
incompetent = [j for j, r in results.items() if r.test_outcome == TestOutcome.INCOMPETENT]
tested = len(results) - len(skipped)
killed = tested - len(survived)
for j in survived:
    print(f"SURVIVED {j}")
    print(results[j].diff or "")
print(f"== {module}: {len(items)} mutants, {len(skipped)} in type annotations skipped, "
      f"{tested} tested, {killed} killed ({len(incompetent)} of them by a crash or timeout), "
      f"{len(survived)} survived; score {100 * killed / max(tested, 1):.1f}% in {seconds}s ==")
PY

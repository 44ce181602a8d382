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
    _recovery) tests=(tests/test_engine_units.py tests/test_signals_and_crashes.py) ;;
    _lock)     tests=(tests/test_engine_units.py tests/test_lock.py) ;;
    _platform) tests=(tests/test_engine_units.py tests/test_durability.py) ;;
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

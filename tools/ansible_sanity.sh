#!/usr/bin/env bash
# ansible-test sanity on the collection (ansible_collections/atomic_deploy/core), in venvs that
# ansible-test makes and fills from PyPI (the first run downloads its linters). Uses the
# ansible-test of .venv (pip install -e '.[dev]'). Not in .ci/run: it takes several minutes.
set -euo pipefail
cd "$(dirname "$0")/../ansible_collections/atomic_deploy/core"
here=$(cd ../../.. && pwd)
exec "$here/.venv/bin/ansible-test" sanity --venv --python 3.11 --requirements "$@"

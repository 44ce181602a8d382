#!/usr/bin/env bash
# ansible-test sanity on the collection (ansible_collections/atomic_deploy/core), with Python
# 3.11, in its own venv (.venv-sanity: ansible-core and the linters ansible-test asks for, from
# PyPI on the first run: about 2 minutes; 15 s after). .ci/run runs it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON311:-$(command -v python3.11 || ls -d /root/.pyenv/versions/3.11.*/bin/python 2>/dev/null | tail -n 1)}
[ -n "$py" ] || { echo "ansible_sanity: no python3.11 found (set PYTHON311)" >&2; exit 1; }
venv="$repo/.venv-sanity"
[ -x "$venv/bin/ansible-test" ] || { "$py" -m venv "$venv" && "$venv/bin/pip" install -q 'ansible-core>=2.17,<2.21'; }
# ansible-test fills each of its venvs with pip through a get-pip script fetched from a host
# outside PyPI; where that host cannot be reached, a stand-in in its cache does the same from
# the standard library's ensurepip and PyPI.
pipver=$("$venv/bin/python" - <<'PY'
import re, ansible_test._internal.python_requirements as m
print(re.search(r"pip='([0-9.]+)'", open(m.__file__).read()).group(1))
PY
)
shim=~/.ansible/test/cache/get_pip_${pipver//./_}.py
if [ ! -s "$shim" ]; then
  mkdir -p "$(dirname "$shim")"
  cat >"$shim" <<'PY'
# Stand-in for get-pip.py (written by atomic-deploy's tools/ansible_sanity.sh): pip from
# ensurepip, then the requested packages from the package index.
import ensurepip, os, subprocess, sys
ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
if os.path.isfile("/etc/ssl/certs/ca-certificates.crt"):  # the system's CAs, as pip.conf may say
    args = ["--cert", "/etc/ssl/certs/ca-certificates.crt"] + args
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "-q"] + args))
PY
fi
cd "$repo/ansible_collections/atomic_deploy/core"
PATH="$venv/bin:$PATH" "$venv/bin/ansible-test" sanity --local --requirements --python 3.11 "$@"

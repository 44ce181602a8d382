# Copyright: atomic-deploy contributors
# MIT License (see the LICENSE file of the atomic-deploy repository)
"""Sends the single-file atomic-deploy tool bundled in this collection to the host, then runs
the module, which installs it in ROOT/.atomic-deploy/bin/ (sha256 checked) and runs it."""

import glob
import hashlib
import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

_FILES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "files")


def bundled_tool():
    """(path, name, sha256) of the tool this collection was built with."""
    found = sorted(glob.glob(os.path.join(_FILES, "atomic-deploy-*.pyz")))
    if len(found) != 1:
        raise AnsibleActionFail(
            "this atomic_deploy.core collection holds %d copies of the atomic-deploy tool in %s "
            "(expected 1): install a collection built with tools/build_collection.py"
            % (len(found), _FILES))
    h = hashlib.sha256()
    with open(found[0], "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return found[0], os.path.basename(found[0]), h.hexdigest()


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # tmp no longer has any effect
        path, name, digest = bundled_tool()
        tmpdir = self._connection._shell.tmpdir
        if tmpdir is None:
            tmpdir = self._make_tmp_path()
        remote = self._connection._shell.join_path(tmpdir, name)
        self._transfer_file(path, remote)
        self._fixup_perms2((tmpdir, remote))
        args = dict(self._task.args)
        args.update(_tool=remote, _tool_name=name, _tool_sha256=digest)
        try:
            result.update(self._execute_module(module_name="atomic_deploy.core.atomic_deploy",
                                               module_args=args, task_vars=task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

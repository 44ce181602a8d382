#!/usr/bin/python
# Copyright: atomic-deploy contributors
# MIT License (see the LICENSE file of the atomic-deploy repository)

DOCUMENTATION = r"""
---
module: atomic_deploy
short_description: Deploy, activate, roll back and prune releases with atomic-deploy
version_added: "0.1.0"
description:
  - Runs atomic-deploy on the managed host against the deploy root I(root);
    a build becomes C(root/releases/<id>/) and C(root/current) is switched to it with one rename.
  - The tool itself travels with the task, as one file (the same single-file build the tool's
    own remote roots use); it is installed in C(root/.atomic-deploy/bin/) and its sha256 is
    checked before every use. The host needs only Python 3.9 or newer.
  - Every failure is the tool's one line and exit code; the root is left as the tool leaves it
    (a failed deploy or activation is undone or switched back on that host).
  - This module runs through its action plugin, which sends the tool; use it as a task, not
    with C(ansible -m) against a collection without the bundled tool.
options:
  root:
    description: The deploy root on the host.
    type: path
    required: true
  state:
    description:
      - C(prepared) stages I(src) as a complete release without switching (C(atomic-deploy prepare)).
      - C(active) makes a release current, either by deploying I(src) (C(atomic-deploy deploy))
        or by switching to an existing I(release) (C(atomic-deploy activate)).
      - C(rolled_back) switches back (C(atomic-deploy rollback)), to I(release) when given.
      - C(pruned) deletes old releases down to I(keep) (C(atomic-deploy prune)).
    type: str
    choices: [prepared, active, rolled_back, pruned]
    default: active
  src:
    description:
      - The build, as the tool takes it, read on the host (not on the controller), for example a
        folder or a tarball. Passed to the tool as it is, so any source form the installed tool
        accepts works.
      - With I(state=prepared) and I(state=active). A build whose contents equal the current
        release's is not deployed again (C(--if-changed)); the task then reports C(changed=false).
    type: str
  release:
    description:
      - A release id. With I(state=active), the release to activate (for example the one a
        I(state=prepared) task returned); with I(state=rolled_back), the release to roll back to.
      - A host already on that release is left alone (C(changed=false)).
    type: str
  keep:
    description: Good releases to keep when pruning (a number, or C(all) with I(state=active)).
    type: str
  comment:
    description: Recorded with the release in the root's history (the tool's C(--message)).
    type: str
  check:
    description: Commands run inside the new release before it can become current.
    type: list
    elements: str
  after_switch:
    description: Commands run after the switch (for example a service reload).
    type: list
    elements: str
  on_failure:
    description: Commands run when the operation fails or is switched back.
    type: list
    elements: str
  health_check:
    description: A command run after the switch; a non-zero exit switches back and marks the release bad.
    type: str
  health_url:
    description: A URL fetched after the switch; an answer that is not 2xx switches back and marks the release bad.
    type: str
  health_timeout:
    description: Seconds for each health check attempt.
    type: float
  health_retries:
    description: Extra health check attempts before giving up.
    type: int
  health_interval:
    description: Seconds between health check attempts.
    type: float
  hook_timeout:
    description: Seconds after which a hook is killed.
    type: float
  shared_dirs:
    description: Folders of C(root/shared/) linked into each release.
    type: list
    elements: str
  shared_files:
    description: Files of C(root/shared/) linked into each release.
    type: list
    elements: str
  sha256:
    description:
      - The build's sha256 (hex) when I(src) is an C(https://) or C(http://) URL, or C(auto) for the
        C(.sha256) file next to it; the host fetches the URL and checks it before anything can become a
        release.
    type: str
  link_unchanged:
    description: Reuse the current release's files that are identical to the build's.
    type: bool
    default: false
  wait:
    description: Seconds to wait for another process holding the root's lock.
    type: float
  _tool:
    description: Set by the action plugin (the uploaded tool's path on the host); never set it.
    type: str
  _tool_name:
    description: Set by the action plugin (the tool's file name); never set it.
    type: str
  _tool_sha256:
    description: Set by the action plugin (the tool's sha256); never set it.
    type: str
notes:
  - Check mode runs the tool with C(--dry-run); nothing on the host changes. A deploy in check
    mode reports C(changed=true) unless nothing would be done (the release is already current).
  - Diff mode shows the release C(current) names before and after.
  - C(root/atomic-deploy.toml) on the host applies as it does for the command line.
author:
  - atomic-deploy contributors (@atomic-deploy)
"""

EXAMPLES = r"""
- name: Stage the build on every host
  atomic_deploy.core.atomic_deploy:
    root: /srv/app
    src: /tmp/build-1.4
    state: prepared
  register: prep

- name: Switch every host, or none
  block:
    - name: Activate the staged release
      atomic_deploy.core.atomic_deploy:
        root: /srv/app
        release: "{{ prep.release }}"
        state: active
        health_url: http://127.0.0.1/health
  any_errors_fatal: true
  rescue:
    - name: Back to the release each host served before
      atomic_deploy.core.atomic_deploy:
        root: /srv/app
        release: "{{ prep.previous }}"
        state: rolled_back
      when: prep.previous is not none
"""

RETURN = r"""
release:
  description: The release current names afterwards (prepared - the staged release; rolled_back - the release switched to).
  returned: success, except with state=pruned
  type: str
  sample: "20261201132155"
previous:
  description: The release that was current before.
  returned: success, except with state=pruned
  type: str
  sample: "20261201132149"
unchanged:
  description: The build was already the current release (compared by manifest, contents included); nothing was done.
  returned: with src
  type: bool
manifest:
  description: Digest of the release's manifest (the same build has the same one on every host).
  returned: with src
  type: str
marked_bad:
  description: The release a rollback left and marked bad.
  returned: state=rolled_back
  type: str
hooks:
  description: Each hook and health check that ran, as the tool reports them.
  returned: when hooks ran
  type: list
  elements: dict
deleted:
  description: Releases deleted (state=pruned).
  returned: state=pruned
  type: list
  elements: str
plan:
  description: What the tool would do (check mode).
  returned: check mode
  type: list
  elements: str
exit_code:
  description: The tool's exit code (0, or on failure the code the tool documents - 1 failed, 2 bad input, 3 locked, 4 check or health check failed).
  returned: always
  type: int
tool:
  description: The object the tool printed with --json (schema 1), whole.
  returned: when the tool ran
  type: dict
"""

import hashlib
import json
import os
import stat
import sys

from ansible.module_utils.basic import AnsibleModule

TOOL_DIR = os.path.join(".atomic-deploy", "bin")


def sha256_of(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def install_tool(module, root, upload, name, digest):
    """Put the uploaded tool in ROOT/.atomic-deploy/bin/NAME the way the tool's remote roots do:
    folders checked, temp name, flushed, digest checked, renamed into place."""
    state_dir = os.path.join(root, ".atomic-deploy")
    tools = os.path.join(root, TOOL_DIR)
    for d, mode in ((state_dir, 0o755), (tools, 0o700)):
        try:
            os.mkdir(d, mode)
        except OSError:
            if not os.path.isdir(d):
                module.fail_json(msg="cannot create %s" % d, exit_code=2)
        st = os.lstat(d)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            module.fail_json(msg="%s is not a folder (a symlink?); refusing to use it" % d, exit_code=2)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            module.fail_json(msg="%s is writable by other users or owned by another user; "
                                 "refusing to use it" % d, exit_code=2)
    final = os.path.join(tools, name)
    tmp = os.path.join(tools, ".%s.%d.tmp" % (name, os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o700)
    try:
        with open(upload, "rb") as src:
            for chunk in iter(lambda: src.read(1 << 16), b""):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if sha256_of(tmp) != digest:
        os.unlink(tmp)
        module.fail_json(msg="the uploaded atomic-deploy tool is damaged (sha256 mismatch)", exit_code=1)
    os.rename(tmp, final)
    return final


def tool_path(module, root, creates):
    """The verified tool to run: the one installed in ROOT, else installed now, else (check
    mode, or a root that does not exist and is not to be made) the verified upload itself."""
    upload = module.params["_tool"]
    name = module.params["_tool_name"]
    digest = module.params["_tool_sha256"]
    if not upload or not name or not digest:
        module.fail_json(msg="the atomic-deploy tool was not sent with the task (run this module "
                             "as a task of the atomic_deploy.core collection, whose action plugin "
                             "sends it)", exit_code=2)
    installed = os.path.join(root, TOOL_DIR, name)
    if sha256_of(installed) == digest:
        return installed
    if sha256_of(upload) != digest:
        module.fail_json(msg="the uploaded atomic-deploy tool is damaged (sha256 mismatch)", exit_code=1)
    if module.check_mode:
        return upload
    if not os.path.isdir(root):
        if not creates or not os.path.isdir(os.path.dirname(os.path.abspath(root))):
            return upload  # the tool itself says what is wrong with ROOT
        try:
            os.mkdir(root, 0o755)
        except OSError:
            if not os.path.isdir(root):
                return upload
    return install_tool(module, root, upload, name, digest)


def run_tool(module, tool, argv):
    rc, out, err = module.run_command([sys.executable, tool, *argv, "--json"],
                                      environ_update={"NO_COLOR": "1"})
    try:
        data = json.loads(out)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = None
    if rc != 0:
        line = None
        for text in err.splitlines():
            if text.startswith("atomic-deploy: error: "):
                line = text[len("atomic-deploy: error: "):]
        if line is None and data is not None and data.get("error"):
            line = data["error"] + ("; " + data["state"] if data.get("state") else "")
        module.fail_json(msg=line or (err.strip() or "atomic-deploy exited with %d" % rc),
                         exit_code=rc, rc=rc, stderr=err, tool=data)
    if data is None:
        module.fail_json(msg="atomic-deploy printed no JSON object", exit_code=rc, stdout=out,
                         stderr=err)
    return data


def hook_args(p, switching=True):
    """Hook options; prepare (``switching=False``) takes only those that do not follow a switch."""
    argv = []
    for cmd in (p["after_switch"] or []) if switching else []:
        argv += ["--after-switch", cmd]
    for cmd in p["on_failure"] or []:
        argv += ["--on-failure", cmd]
    if switching:
        for key, flag in (("health_check", "--health-check"), ("health_url", "--health-url"),
                          ("health_timeout", "--health-timeout"),
                          ("health_retries", "--health-retries"),
                          ("health_interval", "--health-interval")):
            if p[key] is not None:
                argv += [flag, str(p[key])]
    if p["hook_timeout"] is not None:
        argv += ["--hook-timeout", str(p["hook_timeout"])]
    if p["wait"] is not None:
        argv += ["--wait", str(p["wait"])]
    return argv


def stage_args(p):
    argv = []
    for cmd in p["check"] or []:
        argv += ["--check", cmd]
    for path in p["shared_dirs"] or []:
        argv += ["--shared-dir", path]
    for path in p["shared_files"] or []:
        argv += ["--shared-file", path]
    if p["comment"] is not None:
        argv += ["--message", p["comment"]]
    if p["link_unchanged"]:
        argv.append("--link-unchanged")
    if p["sha256"] is not None:
        argv += ["--sha256", p["sha256"]]
    return argv


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            state=dict(type="str", default="active",
                       choices=["prepared", "active", "rolled_back", "pruned"]),
            src=dict(type="str"),
            release=dict(type="str"),
            keep=dict(type="str"),
            comment=dict(type="str"),
            check=dict(type="list", elements="str"),
            after_switch=dict(type="list", elements="str"),
            on_failure=dict(type="list", elements="str"),
            health_check=dict(type="str"),
            health_url=dict(type="str"),
            health_timeout=dict(type="float"),
            health_retries=dict(type="int"),
            health_interval=dict(type="float"),
            hook_timeout=dict(type="float"),
            shared_dirs=dict(type="list", elements="str"),
            shared_files=dict(type="list", elements="str"),
            link_unchanged=dict(type="bool", default=False),
            sha256=dict(type="str"),
            wait=dict(type="float"),
            _tool=dict(type="str"),
            _tool_name=dict(type="str"),
            _tool_sha256=dict(type="str"),
        ),
        mutually_exclusive=[["src", "release"]],
        required_if=[["state", "prepared", ["src"]], ["state", "active", ["src", "release"], True]],
        supports_check_mode=True,
    )
    p = module.params
    root = p["root"]
    state = p["state"]
    creates = p["src"] is not None
    tool = tool_path(module, root, creates)

    def current():
        if not os.path.isdir(root):
            return None
        _rc, out, _err = module.run_command([sys.executable, tool, "status", root, "--json"],
                                            environ_update={"NO_COLOR": "1"})
        try:
            return json.loads(out).get("current")
        except (ValueError, AttributeError):
            return None

    before = current()
    dry = ["--dry-run"] if module.check_mode else []
    if state in ("prepared", "active") and p["src"] is not None:
        argv = ["prepare" if state == "prepared" else "deploy", p["src"], root]
        argv += [*stage_args(p), "--if-changed"]
        if state == "active":
            if p["keep"] is not None:
                argv += ["--keep", p["keep"]]
            argv += hook_args(p)
        else:
            argv += hook_args(p, switching=False)
    elif state == "active":
        if before == p["release"]:
            module.exit_json(changed=False, release=before, previous=before, exit_code=0)
        argv = ["activate", root, p["release"], *hook_args(p)]
    elif state == "rolled_back":
        if p["release"] is not None and before == p["release"]:
            module.exit_json(changed=False, release=before, previous=before, exit_code=0)
        argv = ["rollback", root, *hook_args(p)]
        if p["release"] is not None:
            argv += ["--to", p["release"]]
    else:
        argv = ["prune", root]
        if p["keep"] is not None:
            argv += ["--keep", p["keep"]]
        if p["wait"] is not None:
            argv += ["--wait", str(p["wait"])]
    data = run_tool(module, tool, argv + dry)
    result = dict((k, v) for k, v in data.items()
                  if k not in ("ok", "schema", "command", "warnings"))
    for warning in data.get("warnings") or []:
        module.warn(warning)
    result["tool"] = data
    result["exit_code"] = 0
    if module.check_mode:
        plan = data.get("plan") or []
        changed = any(step.startswith("delete") for step in plan) if state == "pruned" else True
        after = before if state in ("prepared", "pruned") else "(switched by the plan)"
    elif state == "pruned":
        changed = bool(data.get("deleted"))
        after = current()
    else:
        changed = not data.get("unchanged", False)
        after = current()
    if module._diff:
        result["diff"] = dict(before="current: %s\n" % (before or "none"),
                              after="current: %s\n" % (after or "none"))
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()

"""`atomic-deploy demo`: deploy a bundled example site a few times into a temporary root."""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Sequence
from typing import Callable

SITE = {
    "index.html": (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>atomic-deploy demo</title>"
        "<link rel=\"stylesheet\" href=\"css/site.css\"></head>\n"
        "<body><h1>Hello from release {version}</h1>"
        "<p>Served from ROOT/current, switched with one rename(2).</p></body></html>\n"
    ),
    "css/site.css": "body {{ font-family: sans-serif; margin: 3em; }}\n",
    "version.txt": "{version}\n",
    "assets/.keep": "",
}


def write_site(dest: str, version: str) -> None:
    for rel, text in SITE.items():
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.format(version=version))


def run_demo(root: str | None, main: Callable[[Sequence[str] | None], int],
             as_json: bool = False) -> dict[str, str]:
    base = root or tempfile.mkdtemp(prefix="atomic-deploy-demo-")
    os.makedirs(base, exist_ok=True)
    www = os.path.join(base, "www")

    def step(*args: str) -> int:
        if as_json:
            args = (*args, "-q")
        else:
            print(f"\n$ atomic-deploy {' '.join(shlex.quote(a) for a in args)}", flush=True)
        code = main(list(args))
        if code != 0:
            raise SystemExit(code)
        return code

    for version in ("v1", "v2", "v3"):
        build = os.path.join(base, "builds", version)
        write_site(build, version)
        step("deploy", build, www, "--message", f"demo {version}")
    step("status", www)
    step("list", www)
    step("rollback", www)
    step("list", www)
    with open(os.path.join(www, "current", "version.txt"), encoding="utf-8") as f:
        served = f.read().strip()
    if not as_json:
        print(f"\n{www}/current/version.txt now says {served}.")
        print(f"Demo root: {base}  (point a web server at {www}/current; remove with rm -rf "
              f"{shlex.quote(base)})")
    return {"demo_root": os.path.abspath(base), "root": os.path.abspath(www), "serving": served}

"""The package's modules import each other without cycles, so src/atomic_deploy reads bottom-up
(docs/design.md, "Module layers").

Every import of a module of the package counts: at module level, inside functions (the lazy
imports that keep start-up quick) and under ``if TYPE_CHECKING:``, relative or absolute, in
subpackages too. A cycle is fixed by moving the shared piece to the lower module (or a new small
one), or by passing a callable in, never by hiding the import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = "atomic_deploy"
SOURCE = Path(__file__).resolve().parent.parent / "src" / PACKAGE

Edges = dict[str, dict[str, str]]  # module -> {imported module: "file:line" of the import}


def module_files(top: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py below ``top`` (a package's __init__.py is the
    package itself)."""
    found = {}
    for path in sorted(top.rglob("*.py")):
        parts = [package, *path.relative_to(top).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, here: str, is_package: bool,
              modules: dict[str, Path]) -> list[str]:
    """The package's modules that one import statement loads by name."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if node.level:
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    targets = []
    for alias in node.names:
        if f"{source}.{alias.name}" in modules:  # `from . import _layout`: the module itself
            targets.append(f"{source}.{alias.name}")
        elif source in modules:  # `from ._layout import show`, `from . import __version__`
            targets.append(source)
    return targets


def import_graph(top: Path, package: str = PACKAGE) -> Edges:
    modules = module_files(top, package)
    edges: Edges = {}
    for name, path in modules.items():
        out = edges.setdefault(name, {})
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):  # every statement: functions and TYPE_CHECKING blocks too
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, name, path.name == "__init__.py", modules):
                    if target != name:
                        out.setdefault(target, f"{path.relative_to(top)}:{node.lineno}")
    return edges


def cycle_groups(edges: Edges) -> list[list[str]]:
    """The groups of modules that can all reach each other by imports (strongly connected
    components of more than one module): empty when the graph has no cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(groups)


def cycles(edges: Edges) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per group."""
    return [_cycle_in(group, edges) for group in cycle_groups(edges)]


def _cycle_in(group: list[str], edges: Edges) -> list[str]:
    """A shortest cycle through the group's first module, found breadth-first."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(edges[v]):
            if w == start:
                return [*paths[v], start]
            if w in members and w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    raise AssertionError(f"no cycle through {start} in {group}")  # not strongly connected


def _short(module: str) -> str:
    return module if module == PACKAGE else module[len(PACKAGE) + 1:]


def describe(cycle: list[str], edges: Edges) -> str:
    """``a -> b -> a (a.py:3, b.py:9)``: the modules and where each imports the next."""
    names = " -> ".join(map(_short, cycle))
    where = ", ".join(edges[a][b] for a, b in zip(cycle, cycle[1:]))
    return f"{names} ({where})"


def test_the_package_has_no_import_cycle() -> None:
    edges = import_graph(SOURCE)
    assert len(edges) > 20  # the whole package was read
    found = [f"{describe(_cycle_in(group, edges), edges)}; all of {', '.join(map(_short, group))} "
             "reach each other" if len(group) > 2 else describe(_cycle_in(group, edges), edges)
             for group in cycle_groups(edges)]
    assert not found, "import cycles:\n  " + "\n  ".join(found)


def test_design_md_lists_every_module_above_what_it_imports() -> None:
    """docs/design.md, "Module layers": every module named, each after all it imports."""
    text = (SOURCE.parent.parent / "docs" / "design.md").read_text(encoding="utf-8")
    section = text[text.index("## Module layers"):]
    section = section[:section.index("\nNo cycles")]
    edges = import_graph(SOURCE)
    order = []
    for name in re.findall(r"`([_a-z][_a-z0-9.]*)`", section):
        module = PACKAGE if name == "__init__" else f"{PACKAGE}.{name}"
        if module in edges and module not in order:
            order.append(module)
    assert sorted(set(edges) - set(order)) == [], "modules not listed"
    above = [f"{_short(a)} imports {_short(b)}, listed after it"
             for a in order for b in edges[a] if order.index(b) > order.index(a)]
    assert above == []


# --- the checker itself, on a made-up package -------------------------------------------------

def _package(top: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = top / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return top / PACKAGE


BASE = {"__init__.py": "", "_low.py": "import os\n", "_mid.py": "from ._low import x\n"}


@pytest.mark.parametrize(("files", "expected"), [
    ({}, []),
    # lazy, inside a function
    ({"_low.py": "def f():\n    from ._mid import y\n"}, ["_low", "_mid", "_low"]),
    # type-only: still a module the reader must know first
    ({"_low.py": "if TYPE_CHECKING:\n    from . import _mid\n"}, ["_low", "_mid", "_low"]),
    # absolute, and `import a.b`
    ({"_low.py": "from atomic_deploy._mid import y\n"}, ["_low", "_mid", "_low"]),
    ({"_low.py": "import atomic_deploy._mid\n"}, ["_low", "_mid", "_low"]),
    # through the package itself (`from . import __version__`)
    ({"__init__.py": "from ._mid import z\n", "_low.py": "from . import __version__\n"},
     [PACKAGE, "_mid", "_low", PACKAGE]),
    # a subpackage: its modules, its __init__, and `..` back up
    ({"remote/__init__.py": "", "remote/ssh.py": "from .._mid import y\n",
      "_low.py": "from .remote import ssh\n"}, ["_low", "remote.ssh", "_mid", "_low"]),
    ({"remote/__init__.py": "from . import ssh\n", "remote/ssh.py": "from .. import _low\n",
      "_top.py": "from atomic_deploy.remote import ssh\n"}, []),
    ({"remote/__init__.py": "from .ssh import s\n", "remote/ssh.py": "from .._low import x\n",
      "_low.py": "def f():\n    from . import remote\n"}, ["_low", "remote", "remote.ssh", "_low"]),
    # three modules in a loop
    ({"_top.py": "from ._mid import y\n", "_low.py": "def f():\n    import atomic_deploy._top\n"},
     ["_low", "_top", "_mid", "_low"]),
])
def test_cycles_are_found_wherever_the_import_is(tmp_path: Path, files: dict[str, str],
                                                 expected: list[str]) -> None:
    edges = import_graph(_package(tmp_path, {**BASE, **files}))
    found = cycles(edges)
    short = [[_short(m) for m in c] for c in found]
    assert short == ([expected] if expected else []), [describe(c, edges) for c in found]

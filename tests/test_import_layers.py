"""No import cycles between tunewise's modules, nor between its sub-packages.

The graph is built statically with ``ast`` from every ``tunewise/**/*.py``, without importing
anything (so it needs no model and no heavy dependency).

What counts as an import: every ``import`` / ``from ... import`` statement in a module,
wherever it stands: at module level, inside a function, or under ``if TYPE_CHECKING:``.
A function-level import changes *when* a module is loaded, not *whether* one module depends
on the other, so moving an import into a function to dodge a cycle does not fix the layering
and is caught here. Lazy imports stay the rule for heavy third-party packages (torch, peft,
sentence-transformers) and for start-up time; they are just not a way around a cycle. A
cycle is broken by moving the shared piece to the lower layer (a leaf module).

Two graphs are checked: modules (``tunewise.rungs.lora``), and packages, where each
sub-package (``tunewise.rungs``, ``tunewise.training``, ...) is one node and each top-level
module its own node. The second catches layer cycles such as ``training`` -> ``rungs`` ->
``training`` that go through different modules of the two packages.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "tunewise"


def module_files(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` under root."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _imported_names(tree: ast.AST, module: str, is_pkg: bool) -> Iterator[tuple[str, int]]:
    """(absolute dotted name, line) of everything a module imports, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            for alias in node.names:
                # ``from pkg import mod`` imports the module pkg.mod when it exists
                yield f"{prefix}.{alias.name}|{prefix}", node.lineno


def import_graph(root: Path) -> dict[str, dict[str, str]]:
    """Module -> {imported first-party module: ``module:line`` of the first import of it}."""
    files = module_files(root)
    top = root.name

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, str]] = {}
    for module, (path, is_pkg) in files.items():
        edges = graph.setdefault(module, {})
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for name, line in _imported_names(tree, module, is_pkg):
            full, _, prefix = name.partition("|")
            if not (full == top or full.startswith(top + ".")):
                continue
            target = full if full in files else resolve(prefix or full)
            if target and target != module:
                edges.setdefault(target, f"{module}:{line}")
    return graph


def package_graph(graph: dict[str, dict[str, str]], top: str) -> dict[str, dict[str, str]]:
    """The module graph with each sub-package collapsed to one node (edges inside it dropped)."""
    def node(module: str) -> str:
        return ".".join(module.split(".")[:2]) if module != top else top

    out: dict[str, dict[str, str]] = {}
    for module, edges in graph.items():
        src = node(module)
        out.setdefault(src, {})
        for target, line in edges.items():
            if node(target) != src:
                out[src].setdefault(node(target), line)
    return out


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None when it has none."""
    try:
        graphlib.TopologicalSorter({k: set(v) for k, v in graph.items()}).prepare()
    except graphlib.CycleError as exc:
        return list(reversed(exc.args[1]))  # graphlib lists it against the edges
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    """One step a line: ``a -> b (import at a.mod:12)``, the import that makes each step."""
    steps = [f"{a} -> {b} (import at {graph[a][b]})" for a, b in pairwise(cycle)]
    return "import cycle:\n  " + "\n  ".join(steps)


def test_tunewise_modules_import_no_cycle() -> None:
    graph = import_graph(PACKAGE_ROOT)
    assert len(graph) > 50 and "tunewise.rungs.base" in graph["tunewise.ladder"]
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph)


def test_tunewise_packages_import_no_cycle() -> None:
    graph = package_graph(import_graph(PACKAGE_ROOT), "tunewise")
    assert {"tunewise.rungs", "tunewise.training", "tunewise.backends"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


@pytest.mark.parametrize("b_source", [
    "from pkg import a\n",                            # module level
    "def f():\n    from pkg.a import X\n",            # inside a function: still a cycle
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
])
def test_a_cycle_is_found_however_the_import_is_written(tmp_path: Path, b_source: str) -> None:
    root = _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import Y\nX = 1\n",
                             "pkg/b.py": b_source + "Y = 2\n"})
    graph = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b": "pkg.a:1"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b"} and cycle[0] == cycle[-1]
    assert "pkg.a -> pkg.b (import at pkg.a:1)" in describe(cycle, graph)


def test_a_cycle_between_packages_through_different_modules_is_found(tmp_path: Path) -> None:
    root = _write(tmp_path, {
        "pkg/__init__.py": "", "pkg/train/__init__.py": "", "pkg/rungs/__init__.py": "",
        "pkg/train/loop.py": "X = 1\n", "pkg/train/curve.py": "from pkg.rungs.lora import Y\n",
        "pkg/rungs/lora.py": "from pkg.train.loop import X\nY = 2\n"})
    graph = import_graph(root)
    assert find_cycle(graph) is None  # no module imports itself back
    packages = package_graph(graph, "pkg")
    assert set(find_cycle(packages) or []) == {"pkg.train", "pkg.rungs"}


def test_an_acyclic_tree_passes(tmp_path: Path) -> None:
    root = _write(tmp_path, {"pkg/__init__.py": "", "pkg/low.py": "X = 1\n",
                             "pkg/high.py": "def f():\n    from pkg import low\n"})
    graph = import_graph(root)
    assert graph["pkg.high"] == {"pkg.low": "pkg.high:2"} and find_cycle(graph) is None

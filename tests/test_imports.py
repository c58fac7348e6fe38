"""No import cycle among the project's modules, not even one a type hint or a function makes.

A reader follows every import, so `if TYPE_CHECKING:` and function-level imports count too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("phoenix", "worker", "training", "tools", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES if (ROOT / package).is_dir()
            for path in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, source: str, modules: set[str], is_package: bool = False) -> set[str]:
    """The project modules that the module `name` imports anywhere in `source`: at the top,
    under `if TYPE_CHECKING:`, or inside a function."""
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in modules:  # `import a.b.c` where only a.b is ours
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level-1 packages
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from worker import codec` imports worker.codec
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in modules else base)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path.read_text(), set(modules), path.name == "__init__.py")
            for name, path in modules.items()}


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The sets of modules that import each other round a cycle (strongly connected
    components of more than one module), in the order of their first module's name."""
    reach = {node: _reachable(graph, node) for node in graph}
    found: list[set[str]] = []
    for node in sorted(graph):
        tangle = {other for other in reach[node] if node in reach.get(other, set())}
        if tangle and not any(node in seen for seen in found):
            found.append(tangle | {node})
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def a_cycle(graph: dict[str, set[str]], tangle: set[str]) -> list[str]:
    """One cycle through the tangle's first module, to name in a failure: the modules
    around it, the first repeated last (a shortest one, by breadth-first search)."""
    start = min(tangle)
    paths = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for target in sorted(graph[node] & tangle):
            if target == start:
                return paths[node] + [start]
            if target not in paths:
                paths[target] = paths[node] + [target]
                todo.append(target)
    raise AssertionError(f"{sorted(tangle)} is not a tangle")


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert "worker.validation" in graph and graph["worker.validation"] >= {"worker.wire"}
    cycles = [" -> ".join(a_cycle(graph, tangle)) for tangle in tangles(graph)]
    assert cycles == [], "import cycles: " + "; ".join(cycles)


@pytest.mark.parametrize("source, expected", [
    pytest.param("import worker.codec\n", {"worker.codec"}, id="import"),
    pytest.param("from worker import codec, errors\n", {"worker.codec", "worker.errors"},
                 id="from-package"),
    pytest.param("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                 "    from worker.codec import x\n", {"worker.codec"}, id="type-checking"),
    pytest.param("def f():\n    from worker.codec import x\n", {"worker.codec"}, id="in-function"),
    pytest.param("from .codec import x\nfrom . import errors\n", {"worker.codec",
                                                                  "worker.errors"}, id="relative"),
    pytest.param("import numpy\nfrom worker import not_a_module\n", {"worker"}, id="external"),
])
def test_every_kind_of_import_is_an_edge(source, expected):
    modules = {"worker", "worker.codec", "worker.errors", "worker.wire"}
    assert imports_of("worker.wire", source, modules) == expected


def test_a_cycle_is_found_and_named():
    graph = {"a": {"b", "x"}, "b": {"c"}, "c": {"a", "b"}, "d": {"a", "e"}, "e": {"d"}, "x": set()}
    assert tangles(graph) == [{"a", "b", "c"}, {"d", "e"}]
    assert a_cycle(graph, {"a", "b", "c"}) == ["a", "b", "c", "a"]
    assert tangles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []

"""The package's layers point one way: no import cycle among safegap's modules, ``steer`` reaches
neither ``organism`` nor ``eval``, and no library module imports the command line.

``RULES`` lists which packages each layer must not reach. The graph is read from the source (AST): module-level and function-level imports alike (a lazy
import inside a function is still a dependency), without the ``if TYPE_CHECKING:`` blocks (never
run). ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``;
importing ``a.b`` is not counted as an edge to package ``a`` (every module would then depend on
its package's ``__init__``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

Edges = dict[str, dict[str, list[str]]]  # module -> imported module -> ["path:line", ...]


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted((SRC / "safegap").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
        else:
            yield from _imports(node)


@cache
def import_graph() -> Edges:
    modules = _modules()
    graph: Edges = {name: {} for name in modules}
    for name, (path, is_package) in modules.items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            where = f"{path.relative_to(SRC.parent)}:{node.lineno}"
            for target in targets:
                if target in modules and target != name:
                    graph[name].setdefault(target, []).append(where)
    return graph


def _cycles(graph: Edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: Edges, component: set[str]) -> list[str]:
    """One cycle through the first module of a strongly connected component (shortest, by BFS)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt in component and nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle in {component}")


def _describe(graph: Edges, path: list[str]) -> str:
    return (
        " -> ".join(
            f"{a} ({', '.join(sorted(set(graph[a][b])))})" for a, b in zip(path, path[1:], strict=False)
        )
        + f" -> {path[-1]}"
    )


def _reach(graph: Edges, start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or not, with the module that imports it first."""
    seen: dict[str, str] = {}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for nxt in sorted(graph[node]):
            if nxt not in seen and nxt != start:
                seen[nxt] = node
                frontier.append(nxt)
    return seen


def _chain(seen: dict[str, str], start: str, end: str) -> list[str]:
    path = [end]
    while path[-1] != start:
        path.append(seen[path[-1]])
    return list(reversed(path))


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "safegap.specs" in graph["safegap.eval.defenses"]
    assert set(graph["safegap.specs"]) == {"safegap.errors"}  # the bottom layer


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles = [_describe(graph, c) for c in _cycles(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _inside(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


#: package -> packages it must not reach, directly or through others (the issue's layering:
#: steer is free of eval code and of the test organism; the data layer and the judges are below
#: both; the bottom modules import nothing but errors).
RULES = {
    "safegap.steer": ("safegap.organism", "safegap.eval"),
    "safegap.data": ("safegap.organism", "safegap.eval", "safegap.steer"),
    "safegap.judge": ("safegap.eval", "safegap.organism", "safegap.steer"),
    "safegap.specs": ("safegap.models", "safegap.data", "safegap.eval", "safegap.steer", "safegap.organism"),
    "safegap.plugins": (
        "safegap.models",
        "safegap.data",
        "safegap.eval",
        "safegap.steer",
        "safegap.organism",
    ),
}


@pytest.mark.parametrize("package", sorted(RULES))
def test_layers_point_one_way(package: str) -> None:
    graph = import_graph()
    forbidden = RULES[package]
    bad = []
    for module in sorted(m for m in graph if _inside(m, (package,))):
        seen = _reach(graph, module)
        for target in sorted(seen):  # report where a path first enters a forbidden package
            if _inside(target, forbidden) and not _inside(seen[target], forbidden):
                bad.append(_describe(graph, _chain(seen, module, target)))
    assert not bad, f"{package} must not import {', '.join(forbidden)}:\n" + "\n".join(sorted(set(bad)))


def test_no_library_module_imports_the_cli() -> None:
    graph = import_graph()
    bad = [
        f"{module} -> {target} ({', '.join(where)})"
        for module, targets in graph.items()
        if not _inside(module, ("safegap.cli",))
        for target, where in targets.items()
        if _inside(target, ("safegap.cli",))
    ]
    assert not bad, "the library imports the command line:\n" + "\n".join(bad)

"""The shape issue 19 asks for, checked on the source: no import cycle between hyperfleet's
modules (deferred imports inside functions included, ``TYPE_CHECKING`` ones excluded), no
hyperopt class among the store's ancestors and no hyperopt import in the store, and one search
loop (nothing drives hyperopt's ``FMinIter``)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from coordinator.store.mongo import TrialStore
from tests.conftest import ROOT

PACKAGES = ("coordinator", "worker", "search_spaces")


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(tree: ast.AST) -> set[str]:
    """Every module named by an absolute import in ``tree``, except under ``if TYPE_CHECKING``."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {d for d in _imports(ast.parse(path.read_text())) if d in modules and d != name}
        for name, path in modules.items()
    }


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                walk(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_store_has_no_hyperopt_ancestor_and_imports_no_hyperopt() -> None:
    ancestors = [f"{c.__module__}.{c.__qualname__}" for c in inspect.getmro(TrialStore)]
    assert not [a for a in ancestors if a.startswith("hyperopt")], ancestors
    store_modules = {n: p for n, p in _modules().items() if n.startswith("coordinator.store")}
    for name, path in store_modules.items():
        hyperopt = {i for i in _imports(ast.parse(path.read_text())) if i.startswith("hyperopt")}
        assert not hyperopt, f"{name} imports {sorted(hyperopt)}"


def test_one_search_loop_and_no_fmin_iter() -> None:
    """hyperfleet search, local and plain fmin all run coordinator.loop.SearchLoop."""
    users = {
        name
        for name, path in _modules().items()
        if "FMinIter(" in path.read_text() or "exhaust()" in path.read_text()
    }
    assert users == set()
    loop_users = {n for n, deps in _graph().items() if "coordinator.loop" in deps}
    assert {"coordinator.search", "coordinator.trials"} <= loop_users

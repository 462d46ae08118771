"""The shape issue 19 asks for, checked on the source: no import cycle between hyperfleet's
modules (deferred imports inside functions included, ``TYPE_CHECKING`` ones excluded), no
hyperopt class among the store's ancestors and no hyperopt import in the store, and one search
loop (nothing drives hyperopt's ``FMinIter``)."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

from coordinator.store import mongo
from coordinator.store.base import TrialStoreBase
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


def test_the_store_is_composed_of_parts_not_mixins() -> None:
    """TrialStore inherits only the contract; its parts are objects that inherit nothing but
    the shared handles, and none reaches another through TYPE_CHECKING stubs."""
    from coordinator.store.handles import StorePart
    from coordinator.store.mongo import StoreParts

    assert inspect.getmro(TrialStore)[1:] == inspect.getmro(TrialStoreBase)
    for part in typing.get_type_hints(StoreParts).values():
        assert inspect.getmro(part)[1:] == (StorePart, object), part
    for name, path in _modules().items():
        if name.startswith("coordinator.store") and "TYPE_CHECKING:" in path.read_text():
            body = ast.parse(path.read_text())
            stubs = [
                n
                for n in ast.walk(body)
                if isinstance(n, ast.If)
                and "TYPE_CHECKING" in ast.unparse(n.test)
                and any(isinstance(c, ast.FunctionDef) for c in n.body)
            ]
            assert not stubs, f"{name} declares methods of other parts under TYPE_CHECKING"


def test_every_contract_method_is_served_by_one_part_with_its_signature() -> None:
    served = [(part, name) for part, names in mongo.CONTRACT_PARTS.items() for name in names]
    names = [name for _, name in served]
    assert len(names) == len(set(names)), "a method is served by two parts"
    abstract = set(TrialStoreBase.__abstractmethods__)
    own = {"close", "server_time"}  # the store's own, not a part's
    assert set(names) == abstract - own
    parts = typing.get_type_hints(mongo.StoreParts)
    for part, name in served:
        cls = parts[part]
        contract = inspect.signature(getattr(TrialStoreBase, name))
        implementation = inspect.signature(getattr(cls, name))
        assert list(implementation.parameters) == list(contract.parameters), (part, name)
        for p, q in zip(
            implementation.parameters.values(), contract.parameters.values(), strict=True
        ):
            assert (p.kind, p.default) == (q.kind, q.default), (part, name, p.name)


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

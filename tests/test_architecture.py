"""The package's shape: imports point down (no cycle, counting imports inside functions too), every
package folder installs, no module over 400 lines and no function over 80."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"tempo_bench.baselines": ROOT / "baselines", "tempo_bench.analysis": ROOT / "analysis",
          "tempo_bench.benchmarks": ROOT / "benchmarks"}


def package_modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name (the mapped folders included)."""
    roots = {"tempo_bench": ROOT / "tempo_bench", **MAPPED}
    modules = {}
    for name, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((name, *parts))] = path
    return modules


def imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Project modules a module imports anywhere in its body (functions included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("tempo_bench")}


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it loads. Importing ``a.b.c`` runs ``a.b``'s __init__ too, so a
    package's __init__ counts as imported by everything inside it imports."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in imported(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            while target and target not in modules:  # `from pkg import name` of a non-module
                target = target.rpartition(".")[0]
            parts = target.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & set(modules)
        graph[name] = targets - {name} - {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_point_down():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_package_folder_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {name for name, path in package_modules().items() if path.name == "__init__.py"}
    assert folders == listed, f"pyproject.toml packages: missing {folders - listed}, stale {listed - folders}"


@pytest.mark.parametrize("limit_lines", [400])
def test_modules_stay_small(limit_lines):
    big = {name: n for name, path in package_modules().items() if (n := len(path.read_text().splitlines())) > limit_lines}
    assert not big, f"modules over {limit_lines} lines: {big}"


def test_functions_stay_short():
    long = {}
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long[f"{name}.{node.name}"] = length
    assert not long, f"functions over 80 lines: {long}"


def test_methods_register_by_decorator_once_under_one_name():
    from tempo_bench.baselines.standard_ttt import StandardTTT

    from tempo_bench.methods.catalog import default_methods, method_class, method_names
    from tempo_bench.methods.registry import METHODS, register_method

    assert method_class("standard_ttt") is StandardTTT and StandardTTT.name == "standard_ttt"
    assert method_names()[:4] == default_methods() == ["standard_ttt", "fixed_critic", "online_critic", "tempo"]
    assert set(method_names()) == set(METHODS) and all(METHODS[n].name == n for n in METHODS)
    with pytest.raises(TypeError, match="subclass of tempo_bench.methods.base.Method"):
        register_method("not_a_method")(dict)
    with pytest.raises(ValueError, match="already registered by .*StandardTTT"):
        register_method("standard_ttt")(type("Other", (StandardTTT,), {}))
    with pytest.raises(KeyError, match="did you mean 'tempo'"):
        method_class("tempoo")


# the layers of docs/architecture.md, bottom first; a module may import its own layer and below
LAYERS = [
    ["tempo_bench.core"],
    ["tempo_bench.tasks", "tempo_bench.grading", "tempo_bench.rollout", "tempo_bench.policy"],
    ["tempo_bench.critic"],
    ["tempo_bench.methods", "tempo_bench.baselines"],
    ["tempo_bench.config"],
    ["tempo_bench.run"],
    ["tempo_bench.experiments", "tempo_bench.toy", "tempo_bench.analysis", "tempo_bench.benchmarks"],
    ["tempo_bench.commands"],
]


def layer_of(module: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} belongs to no layer of docs/architecture.md")


def test_imports_point_down_the_layers():
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() if a != "tempo_bench"
                    for b in targets if b != "tempo_bench" and layer_of(b) > layer_of(a))
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)

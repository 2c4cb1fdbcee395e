"""Imports: the module-level import graph of peft_atlas and reference_impls has no cycle, and the
harness starts without the docs toolchain."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("peft_atlas", "reference_impls")


def _modules() -> dict[str, Path]:
    """Dotted module name to file, for every module of the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: not those inside functions
    (they run when called) nor those under `if TYPE_CHECKING:` (they never run)."""
    found, pending = [], list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of the modules (None for other packages)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph() -> dict[str, set[str]]:
    """Module to the modules of the packages it imports at module level (relative imports resolved)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from package import module` imports the module; `from module import name` the module
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            targets |= {known for name in names if (known := _known(name, modules)) and known != module}
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as `[a, b, ..., a]`, or None if it has none."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_resolves_relative_and_package_imports() -> None:
    graph = import_graph()
    assert "peft_atlas.problems" in graph["peft_atlas.kb"]  # from .problems import ...
    assert "peft_atlas.measured" in graph["peft_atlas.bench.results"]  # from ..measured import ...
    assert "reference_impls.methods" in graph["reference_impls"]  # from . import methods
    assert "reference_impls.backbone" in graph["peft_atlas.bench.backbone"]  # absolute, another package
    assert "peft_atlas.bench.cli" not in graph["peft_atlas.cli"]  # imported inside functions only


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle or [])


def test_the_harness_starts_without_the_docs_toolchain() -> None:
    """What torchrun starts (`python -m peft_atlas.bench.cli`) never loads the site tooling."""
    pytest.importorskip("torch")
    code = """
import argparse, json, sys
import peft_atlas.bench.cli as cli
cli.add_bench_arguments(argparse.ArgumentParser())
before = "torch" in sys.modules
import peft_atlas.bench.results, peft_atlas.bench.runner
docs = [m for m in ("peft_atlas.cli", "peft_atlas.kb", "peft_atlas.render", "jinja2", "mkdocs") if m in sys.modules]
print(json.dumps([before, docs]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    torch_before_a_run, docs = json.loads(done.stdout.strip().splitlines()[-1])
    assert not torch_before_a_run and docs == []

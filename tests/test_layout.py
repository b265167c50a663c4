"""The package's layers (README, "Layout"): every import inside gflow, module-level or inside a
function, points to the same layer or one above it; the modules import each other without
cycles; the command line and the public modules keep to their side of the line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gflow"

# Layer of each private module; a module may import from its own layer and those of lower rank.
LAYERS = {
    0: ("_network", "_observables", "_data", "_dataset", "_validation"),  # model, data
    1: ("_flow", "_gauss", "_projection", "_sliding", "_trajectory", "_sgd", "_chunked"),
    2: (
        "_theory",
        "_race",
        "_cells",
        "_faces",
        "_capacity",
        "_imp",
        "_tickets",
        "_discretisation",
        "_regimes",
    ),
    3: ("_config", "_sweep", "_runs", "_demo", "_plots", "_progress", "_resources"),
}
RANK = {name: rank for rank, names in LAYERS.items() for name in names}
# The timing harness measures the whole library (its public names and the compiled functions'
# caches), so it sits above every layer, with the command line.
HARNESS = ("_benchmarking",)
PUBLIC = {
    "network": ("_network", "_observables"),
    "datasets": ("_data", "_dataset", "_validation"),
    "solvers": ("_flow", "_gauss", "_projection", "_sliding", "_trajectory"),
    "trainers": ("_sgd", "_chunked"),
    "theory": ("_theory", "_race"),
    "cells": ("_cells", "_faces"),
    "capacity": ("_capacity", "_imp", "_tickets"),
    "analysis": ("_discretisation",),
    "regimes": ("_regimes",),
    "benchmarking": ("_benchmarking",),
    "runs": ("_config", "_sweep", "_runs", "_demo", "_plots", "_progress", "_resources"),
    "cli": ("_cli",),
}


def _is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").exists() or (PACKAGE / name / "__init__.py").exists()


def gflow_imports(path: Path, package: str = "gflow") -> set[str]:
    """Top-level gflow modules ``path`` imports (``"gflow"`` for the package itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "gflow":
                module = node.module
            else:
                continue
            names = [module]
            if module == "gflow":  # `from gflow import _race`: that module; other names: gflow
                modules = [a.name for a in node.names if _is_module(a.name)]
                names = [f"gflow.{m}" for m in modules] + names[len(modules) == len(node.names) :]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "gflow"]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.add(parts[1] if len(parts) > 1 else "gflow")
    return found


def _private_graph() -> dict[str, set[str]]:
    return {
        path.stem: gflow_imports(path)
        for path in PACKAGE.glob("_*.py")
        if path.stem not in ("__init__", "__main__")
    }


def test_every_private_module_has_a_layer():
    assert set(_private_graph()) == set(RANK) | set(HARNESS)


def test_imports_point_to_the_same_layer_or_above():
    wrong = []
    for module, deps in _private_graph().items():
        if module in HARNESS:
            continue
        for dep in deps:
            if dep not in RANK or RANK[dep] > RANK[module]:
                wrong.append(f"{module} (layer {RANK[module]}) imports {dep}")
    assert not wrong, wrong


def test_no_import_cycles():
    graph = {m: {d for d in deps if d in RANK} for m, deps in _private_graph().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: tuple[str, ...]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join((*path, node, dep)))
            if dep not in state:
                visit(dep, (*path, node))
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, ())


def test_public_modules_wrap_only_their_layer():
    for public, private in PUBLIC.items():
        deps = gflow_imports(PACKAGE / f"{public}.py")
        assert deps <= set(private), (public, deps - set(private))


def test_the_command_line_uses_public_names_only():
    public = set(PUBLIC) | {"gflow", "_cli"}
    for path in sorted((PACKAGE / "_cli").glob("*.py")):
        deps = gflow_imports(path, package="gflow._cli")
        assert deps <= public, (path.name, deps - public)


def test_the_checker_sees_relative_absolute_and_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from . import _network\nfrom ._flow import x\nimport gflow._sgd\n"
        "def f():\n    from gflow.runs import y\n    from gflow import _race, z\n"
    )
    assert gflow_imports(source) == {"_network", "_flow", "_sgd", "runs", "_race", "gflow"}

"""The training package reads one way down: no import cycle, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "maas.training"
SOURCE = ROOT / "src" / "maas" / "training"


def imported_modules(path: Path) -> set[str]:
    """The ``maas.training`` modules one file imports, at module level or in a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # `from maas.training import fit` imports the module maas.training.fit.
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    modules = {path.stem for path in SOURCE.glob("*.py")}
    return {
        name.removeprefix(f"{PACKAGE}.").split(".")[0]
        for name in found
        if name.startswith(f"{PACKAGE}.") and name.removeprefix(f"{PACKAGE}.") in modules
    }


def import_graph() -> dict[str, set[str]]:
    return {
        path.stem: imported_modules(path) - {path.stem}
        for path in SOURCE.glob("*.py")
        if path.stem != "__init__"
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, str] = {}  # visiting | done

    def visit(module: str, trail: list[str]) -> list[str] | None:
        state[module] = "visiting"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "visiting":
                return [*trail[trail.index(target) :], target] if target in trail else [target]
            if target not in state and (cycle := visit(target, [*trail, target])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_the_training_package_has_no_import_cycle():
    graph = import_graph()
    assert {"stage", "job", "worker", "ensemble", "fit"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_worker_chooses_between_one_model_and_an_ensemble():
    graph = import_graph()
    assert "fit" in graph["ensemble"] and "ensemble" not in graph["fit"]
    assert {"fit", "ensemble"} <= graph["worker"]


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert find_cycle(graph) == expected


def test_a_lazy_import_inside_a_function_counts(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from maas.training.ensemble import fit_ensemble\n")
    assert imported_modules(module) == {"ensemble"}

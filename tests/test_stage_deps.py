"""dvc.yaml's code deps cannot drift: each stage lists exactly the maas modules it runs.

A stage runs its notebook (or ``python -m maas.X``: the report stage), every maas module the
notebook imports, every module those import
(at module level or inside a function: either may run), their packages' ``__init__`` files,
and the modules of the processes it starts (``python -m maas.X``; for ``maas.cli``, the
sub-command's module, after every command module's import-time code, since the parser loads
them all). The test derives that set with :mod:`ast` and fails when a stage's ``deps`` miss a
module (a change to it would not re-run the stage) or list one the stage never reaches (a
change to it would re-run the stage for nothing). Folders count as deps of every file in them.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_files() -> dict[str, Path]:
    """``{"maas.training.stage": path}`` for every module and package of maas."""
    files = {}
    for path in (SRC / "maas").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


MODULES = module_files()


def imported_names(tree: ast.AST, module: str, *, module_level_only: bool) -> set[str]:
    """maas modules named by the import statements of ``tree`` (a module or notebook code)."""
    is_package = module in MODULES and MODULES[module].name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    in_functions = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if module_level_only and id(node) in in_functions:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


def with_packages(names: set[str]) -> set[str]:
    """Importing ``maas.a.b`` runs ``maas/__init__.py`` and ``maas/a/__init__.py`` first."""
    out = set(names)
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def reach(start: set[str], *, module_level_only: bool = False) -> set[str]:
    """Every maas module that importing ``start`` may run."""
    seen: set[str] = set()
    import_time_only: set[str] = set()  # run only to their import-time code
    todo = with_packages(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
        todo |= with_packages(imported_names(tree, name, module_level_only=module_level_only))
        for module, first_arg in started_processes(tree):
            todo |= with_packages({module})
            if module == "maas.cli":  # its parser imports every command module
                from maas.cli import COMMANDS

                commands = {name for name, _ in COMMANDS.values()}
                import_time_only |= reach(commands, module_level_only=True)
                todo |= with_packages({COMMANDS[first_arg][0]} if first_arg in COMMANDS else set())
    return seen | import_time_only


def started_processes(tree: ast.AST) -> set[tuple[str, str | None]]:
    """``(module, first argument)`` of each ``[..., "-m", "maas.X", arg, ...]`` list."""
    started = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.List | ast.Tuple):
            continue
        values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
        for i, (flag, module) in enumerate(zip(values, values[1:], strict=False)):
            if flag == "-m" and module in MODULES:
                started.add((module, values[i + 2] if i + 2 < len(values) else None))
    return started


def notebook_imports(notebook: Path) -> set[str]:
    """maas modules imported by a notebook's code cells."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = [
        "".join(line for line in cell["source"] if not line.lstrip().startswith(("%", "!")))
        for cell in cells
        if cell["cell_type"] == "code"
    ]
    tree = ast.parse("\n".join(code))
    return imported_names(tree, "__notebook__", module_level_only=False)


def code_stages() -> dict[str, tuple[Path | None, set[str], list[str]]]:
    """``{stage: (notebook or None, the maas modules it starts from, deps)}`` of every dvc.yaml
    stage that runs a notebook or ``python -m maas.X``."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    found = {}
    for name, stage in stages.items():
        words = str(stage["cmd"]).split()
        deps = [str(d) for d in stage.get("deps", [])]
        notebooks = [w for w in words if w.startswith("notebooks/")]
        pairs = zip(words, words[1:], strict=False)
        modules = [b for a, b in pairs if a == "-m" and b.startswith("maas")]
        if notebooks:
            notebook = ROOT / notebooks[0]
            found[name] = (notebook, notebook_imports(notebook), deps)
        elif modules:
            found[name] = (None, {modules[0]}, deps)
    return found


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(relative == d.rstrip("/") or relative.startswith(d.rstrip("/") + "/") for d in deps)


STAGES = code_stages()


def test_every_stage_that_runs_maas_code_is_found():
    assert set(STAGES) >= {"data", "train", "evaluate", "compress", "serve", "report"}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_every_module_it_runs_and_no_other(stage: str):
    notebook, start, deps = STAGES[stage]
    if notebook is not None:
        assert notebook.relative_to(ROOT).as_posix() in deps, f"{stage}: its notebook is no dep"
    reached = reach(start)
    missing = sorted(
        MODULES[m].relative_to(ROOT).as_posix() for m in reached if not covered(MODULES[m], deps)
    )
    assert missing == [], f"dvc.yaml stage {stage!r} runs these modules but misses them: {missing}"
    reached_files = [MODULES[m] for m in reached]
    unused = [
        dep
        for dep in deps
        if dep.startswith("src/") and not any(covered(path, [dep]) for path in reached_files)
    ]
    assert unused == [], f"dvc.yaml stage {stage!r} lists code it never runs: {unused}"


def test_the_derivation_sees_function_level_imports_and_started_processes():
    # The evaluate stage reaches maas.runtime inside a function; the serve stage starts
    # `python -m maas.cli serve`; the train stage's local jobs start `python -m
    # maas.training.cli` per task. Without these the test above would pass vacuously.
    assert "maas.runtime" in reach({"maas.evaluate"})
    assert "maas.serving.cli" in reach({"maas.serving.stage"})
    assert "maas.training.cli" in reach({"maas.training.job"})
    assert "maas.registry.operations" not in reach({"maas.serving.stage"})

"""The experiments notebook on a small DVC project with two real experiments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import ROOT

from maas import experiments

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
# A one-stage pipeline whose metric follows its parameter: cheap, and every value checkable.
STAGE_CODE = (
    "import json, os, yaml; p = yaml.safe_load(open('params.yaml'));"
    "os.makedirs('reports/metrics', exist_ok=True);"
    "json.dump({'model': {'accuracy': p['train']['epochs'] / 10}},"
    " open('reports/metrics/evaluate.json', 'w'))"
)


def run(args, cwd):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("experiments")
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 1, "seed": 0}}))
    stage = {
        "cmd": f'{sys.executable} -c "{STAGE_CODE}"',
        "params": ["train"],
        "metrics": [{"reports/metrics/evaluate.json": {"cache": False}}],
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(["git", "init", "-q"], root)
    run([BIN / "dvc", "init", "-q"], root)
    run([BIN / "dvc", "repro", "-q"], root)
    run([*git, "add", "-A"], root)
    run([*git, "commit", "-qm", "baseline"], root)
    for epochs, name in ((2, "two-epochs"), (3, "three-epochs")):
        run([BIN / "dvc", "exp", "run", "-q", "-n", name, "-S", f"train.epochs={epochs}"], root)
    return root


def test_rows_hold_every_experiment_with_its_params_and_metrics(project):
    table = experiments.load(project)
    by_name = {row["experiment"]: row for row in table}
    assert {"workspace", "two-epochs", "three-epochs"} <= set(by_name)
    assert by_name["two-epochs"]["params.train.epochs"] == 2
    assert by_name["three-epochs"]["metrics.evaluate.model.accuracy"] == pytest.approx(0.3)
    assert experiments.varying(table) == ["params.train.epochs"]


def test_the_notebook_shows_the_table_and_the_plot(project, tmp_path):
    output = tmp_path / "06-experiments.ipynb"
    run(
        [BIN / "papermill", ROOT / "notebooks" / "06-experiments.ipynb", output,
         "--cwd", ROOT / "notebooks", "-p", "project", str(project),
         "--no-progress-bar", "--log-level", "WARNING"],
        ROOT,
    )  # fmt: skip
    cells = [c for c in nbformat.read(output, as_version=4).cells if c.cell_type == "code"]
    markdown = [o.data.get("text/markdown", "") for c in cells for o in c.outputs if "data" in o]
    assert any("three-epochs" in text and "params.train.epochs" in text for text in markdown)
    assert any("image/png" in o.get("data", {}) for o in cells[-1].outputs)


def test_not_a_dvc_project_gets_a_clear_error(tmp_path):
    with pytest.raises(experiments.ExperimentsError, match="dvc exp show"):
        experiments.load(tmp_path)

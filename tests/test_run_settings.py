"""Run settings (time-outs, how much to measure) re-run nothing; results-changing keys do.

The pipeline's own ``dvc.yaml`` and ``params.yaml`` in a scratch DVC project whose deps and
outputs are placeholders: ``dvc commit`` records them, ``dvc status`` is clean, and then
editing a run setting must leave it clean while editing a stage parameter must not. No stage
runs, so this takes seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from maas import config

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def dvc(project: Path, *args: str) -> str:
    result = subprocess.run(
        [DVC, *args], cwd=project, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}: {result.stderr}"
    return result.stdout


def placeholder(path: Path) -> None:
    """A file, or a folder holding one file, where the stage would write an output."""
    if path.exists():
        return
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("placeholder\n")
    else:
        path.mkdir(parents=True)
        (path / "placeholder").write_text("placeholder\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("run-settings")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    shutil.copytree(ROOT / "src" / "maas", project / "src" / "maas")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for key in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                placeholder(project / (entry if isinstance(entry, str) else next(iter(entry))))
    dvc(project, "init", "--no-scm", "--quiet")
    dvc(project, "config", "core.analytics", "false")
    dvc(project, "commit", "--force", "--quiet")
    return project


def edit(project: Path, dotted: str, value) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    assert leaf in node, f"{dotted} is not in params.yaml"
    node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config.load_params(project / "params.yaml")  # still a valid parameter file


def changed_stages(project: Path) -> set[str]:
    return {
        line.rstrip(":").strip()
        for line in dvc(project, "status").splitlines()
        if line and not line.startswith(("\t", " ")) and line.rstrip().endswith(":")
    }


def test_run_settings_re_run_nothing_and_stage_parameters_do(project: Path):
    assert changed_stages(project) == set()
    run_settings = config.to_dict(config.load_params(project / "params.yaml").settings)
    for stage, values in run_settings.items():  # every run setting, doubled
        for key, value in values.items():
            edit(project, f"settings.{stage}.{key}", value * 2)
    assert changed_stages(project) == set()
    edit(project, "train.seed", 3)
    assert changed_stages(project) == {"train"}

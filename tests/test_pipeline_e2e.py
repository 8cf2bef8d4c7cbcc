"""End to end: the real DVC pipeline on small parameters in a temporary copy of the repo.

`dvc repro` executes every notebook with papermill, shows each stage's progress and none of
TensorFlow's native start-up lines, and every figure shows in its notebook as the PNG the stage
wrote; the report page gathers every stage; a second `dvc repro` re-runs nothing; nbval
re-executes the notebooks as a researcher would; an interrupted stage leaves nothing
half-written and the next `dvc repro` completes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import ROOT, SMALL_OVERRIDES, small_params_dict
from notebook_checks import assert_figures_rendered

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
# As after `source .venv/bin/activate`: DVC's stage commands find papermill on the PATH.
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(args, cwd, timeout=900, check=True):
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV
    )
    if check and result.returncode:
        raise AssertionError(f"{args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def copy_repo(target: Path) -> Path:
    """The tracked files of this checkout (as a fresh clone would have them), in a new repo."""
    files = run(["git", "ls-files", "-z"], ROOT).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / "params.yaml").write_text(yaml.safe_dump(small_params_dict(), sort_keys=False))
    run(["git", "init", "-q"], target)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], target)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], target)
    return target


@pytest.fixture(scope="module")
def repo(tmp_path_factory, corpus_available):
    root = copy_repo(tmp_path_factory.mktemp("repo"))
    result = run([BIN / "dvc", "repro"], root)
    (root.parent / "repro.log").write_text(result.stdout + result.stderr)
    return root


STAGE_NOTEBOOKS = ["01-data", "02-train", "03-evaluate", "04-compress", "05-serve"]
FIGURES = [
    "data_card", "training_curves", "confusion_matrix", "per_class_f1",
    "compress_accuracy_vs_size", "compress_accuracy_vs_latency", "serve_latency",
]  # fmt: skip


def test_repro_builds_every_output(repo):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert set(lock["stages"]) == set(stages)
    assert (repo / "models" / "classifier" / "saved_model" / "saved_model.pb").is_file()
    for name in ("data", "evaluate"):
        assert json.loads((repo / "reports" / "metrics" / f"{name}.json").read_text())
    evaluation = json.loads((repo / "reports" / "metrics" / "evaluate.json").read_text())
    assert 0.0 <= evaluation["model"]["accuracy"] <= 1.0
    assert evaluation["baseline"]["accuracy"] > 1 / 3  # three classes: better than chance
    for figure in FIGURES:
        assert (repo / "reports" / "figures" / f"{figure}.png").stat().st_size > 1000


def test_executed_notebooks_ran_every_cell_with_injected_parameters(repo):
    executed = sorted((repo / "reports" / "notebooks").glob("*.ipynb"))
    assert [p.stem for p in executed] == STAGE_NOTEBOOKS
    for path in executed:
        notebook = nbformat.read(path, as_version=4)
        tags = [cell.metadata.get("tags", []) for cell in notebook.cells]
        assert ["injected-parameters"] in tags, path.name
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(cell.get("execution_count") for cell in code), path.name
        assert not [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]


def test_every_figure_shows_in_its_notebook_as_the_png_the_stage_wrote(repo):
    drawn = []
    for name in STAGE_NOTEBOOKS:
        notebook = repo / "reports" / "notebooks" / f"{name}.ipynb"
        drawn += assert_figures_rendered(notebook, repo / "reports" / "figures")
    assert sorted(drawn) == sorted(f"{name}.png" for name in FIGURES)


def test_repro_shows_progress_and_no_native_noise(repo):
    log = (repo.parent / "repro.log").read_text()
    for stage in ("data", "train", "evaluate", "compress", "serve"):
        assert f"stage {stage}: started" in log, stage
        assert re.search(rf"stage {stage}: done in \d+\.\d s", log), stage
    train = SMALL_OVERRIDES["train"]
    epochs = train[train["architecture"]]["epochs"]
    assert f"train: epoch {epochs}/{epochs}" in log
    assert "distilled: epoch 1/" in log
    for variant in SMALL_OVERRIDES["compress"]["variants"]:
        assert f"compress: {variant}: built, written, reloaded and checked" in log, variant
        assert f"compress: {variant}: timed" in log, variant
    assert "serve: server ready" in log and "serve: classifier: every protocol probed" in log
    native = ("port.cc", "cuInit", "oneDNN", "absl::InitializeLog", "XNNPACK", "Traceback")
    # The kernels' own start-up and shut-down lines (the maas papermill engine encrypts the
    # kernel link, so ipykernel has nothing to warn about).
    kernel = ("[IPKernelApp]", "without encryption")
    for noise in native + kernel:
        assert noise not in log, noise


def test_report_page_gathers_every_stage(repo):
    page = (repo / "reports" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    for title in ("Data", "Training", "Model against the baseline", "Compression", "Serving"):
        assert f">{title}</h2>" in page
    assert "run `dvc repro" not in page  # no stage is missing
    twin = (repo / "reports" / "README.md").read_text()
    assert all(f"(figures/{name}.png)" in twin for name in FIGURES)


def test_second_repro_reruns_nothing(repo):
    result = run([BIN / "dvc", "repro"], repo)
    assert "Running stage" not in result.stdout, result.stdout
    assert run([BIN / "dvc", "status"], repo).stdout.strip().endswith("up to date.")


def test_dvc_metrics_and_plots_work(repo):
    metrics = json.loads(run([BIN / "dvc", "metrics", "show", "--json"], repo).stdout)
    assert metrics  # dvc found and parsed the metrics files
    shown = run([BIN / "dvc", "plots", "show", "-o", str(repo / "plots-html")], repo)
    assert (repo / "plots-html" / "index.html").is_file(), shown.stdout


def test_nbval_reexecutes_the_notebooks(repo):
    result = run(
        [
            BIN / "python",
            "-m",
            "pytest",
            "--nbval-lax",
            "-q",
            "-p",
            "no:cacheprovider",
            # 08 reads a running server's traffic log, which a pipeline run does not make:
            # test_serving_traffic runs it on a log its server wrote.
            "--ignore=notebooks/08-traffic.ipynb",
            "notebooks",
        ],
        repo,
    )
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_interrupted_training_leaves_nothing_half_written(repo):
    models = repo / "models"
    log = repo.parent / "interrupted-train.log"
    process = subprocess.Popen(
        [BIN / "dvc", "repro", "--force", "--single-item", "train"],
        cwd=repo,
        env=ENV,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    # Kill the whole stage (dvc, papermill and the kernel) while the model is being exported:
    # the worst moment, with a half-written folder beside models/classifier.
    while not list(models.glob(".classifier.tmp-*")):
        assert process.poll() is None, f"the stage ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "training did not reach the export in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (models / "classifier" / "provenance.json").exists()
    run([BIN / "dvc", "repro"], repo)
    assert not list(models.glob(".*")), "leftovers of the killed run"
    assert (models / "classifier" / "provenance.json").is_file()
    assert run([BIN / "dvc", "status"], repo).stdout.strip().endswith("up to date.")

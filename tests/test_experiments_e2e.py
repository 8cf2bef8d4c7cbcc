"""End to end: a DVC sweep over architectures, queued and run in a temporary copy of the repo.

As docs/how-to/experiments.md shows: two experiments queued with ``dvc exp run --queue -S
train.architecture=...`` (up to the evaluate stage, small parameters), run with
``dvc exp run --run-all``, and read back with ``dvc exp show --json``: each with its own
architecture and its own evaluation.
"""

from __future__ import annotations

import json

import pytest
from test_pipeline_e2e import BIN, copy_repo, run

pytestmark = pytest.mark.slow
SWEEP = {"sweep-wide": "wide", "sweep-cnn": "cnn"}


def experiments(shown: list) -> dict[str, dict]:
    """``{experiment name: its data}`` from ``dvc exp show --json`` (DVC 3 layout)."""
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for revision in experiment.get("revs", []):
                if revision.get("name") and revision.get("data"):
                    found[revision["name"]] = revision["data"]
    return found


def test_a_queued_sweep_runs_both_architectures_and_reads_back(tmp_path, corpus_available):
    repo = copy_repo(tmp_path / "repo")
    for name, architecture in SWEEP.items():
        run([BIN / "dvc", "exp", "run", "--queue", "evaluate", "--name", name,
             "-S", "train.ensemble=[]", "-S", f"train.architecture={architecture}"],
            repo)  # fmt: skip
    run([BIN / "dvc", "exp", "run", "--run-all"], repo, timeout=1500)
    shown = experiments(json.loads(run([BIN / "dvc", "exp", "show", "--json"], repo).stdout))
    assert set(SWEEP) <= set(shown), sorted(shown)
    for name, architecture in SWEEP.items():
        data = shown[name]
        params = data["params"]["params.yaml"]["data"]
        assert params["train"]["architecture"] == architecture
        assert params["train"]["ensemble"] == []  # the documented sweep: one model each
        metrics = data["metrics"]["reports/metrics/evaluate.json"]["data"]
        assert 0.0 <= metrics["model"]["accuracy"] <= 1.0
        trained = data["metrics"]["reports/train/metrics.json"]["data"]  # DVCLive's summary
        assert 0.0 <= trained["val_accuracy"] <= 1.0

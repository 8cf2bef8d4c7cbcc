"""``maas train --engine ray`` on a 2-node Ray cluster in a private network namespace.

One run of ``tests/ray_train_scenario.py`` (a cluster takes a minute to start on two
cores): a two-member ensemble of tiny wide models trained locally, then on Ray with a node
killed mid-training, then the errors. Each test asserts on what the scenario recorded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, small_params_dict, write_project
from test_serving_ray import private_network_or_skip

from maas import config

pytestmark = pytest.mark.slow

MEMBERS = [{"architecture": "wide", "seed": 1}, {"architecture": "wide", "seed": 2}]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, corpus_available):
    from maas import data

    tool = private_network_or_skip()
    raw = small_params_dict()
    raw["train"].update(architecture="wide", ensemble=MEMBERS, early_stopping_patience=10)
    # Enough epochs that the second node can be killed between two of them.
    raw["train"]["wide"].update(epochs=10)
    work = tmp_path_factory.mktemp("ray-train")
    project = write_project(work / "project", raw)
    params_file = project / "params.yaml"
    data.run(config.load_params(params_file).data, config.project_paths(params_file))
    out = work / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [str(tool), sys.executable, str(ROOT / "tests" / "ray_train_scenario.py")]
    command += ["--project", str(project), "--work", str(work), "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if not out.exists():
        pytest.fail(f"the scenario recorded nothing:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    results = json.loads(out.read_text())
    results["output"] = run.stderr[-5000:]
    return results


def phase(results: dict, name: str) -> dict:
    assert name in results, f"phase {name} did not run:\n{results['output']}"
    return results[name]


def test_a_lost_node_s_member_resumes_on_the_other_and_the_run_finishes(scenario):
    record = phase(scenario, "lost_node")
    assert "summary" in record, record.get("error")
    killed = record["killed"]
    assert "error" not in killed and killed["epochs_done"] >= 1
    lines = {line["member"]: line for line in record["summary"]["ray"]}
    index = int(killed["member"].removeprefix("member-"))
    lost = lines[f"train.ensemble[{index}] (wide, seed {index + 1})"]
    # It ran twice: first on the killed node, then elsewhere, from the epoch it had backed up.
    assert lost["nodes"][0] == killed["node"] != lost["nodes"][-1]
    assert lost["resumed_from_epoch"] >= 1
    text = "\n".join(record["log"])
    # (Ray may declare the node dead only after the member finished elsewhere: the line
    # "Ray node ... was lost while training ..." is not always there.)
    lost_on = f"(wide, seed {index + 1}) was lost on node {killed['node'][:8]} (127.0.0.1)"
    assert f"train.ensemble[{index}] {lost_on}" in text
    assert f"resumed from epoch {lost['resumed_from_epoch']} on node" in text
    assert not record["storage_left"]  # the checkpoints go once the model is exported
    # The member that was not lost equals the one the local engine trained, weight for weight.
    assert record["differences"][1 - index] == 0.0
    assert record["summary"]["members"][index]["epochs_run"] >= 1


def test_an_unreachable_address_is_a_clear_error_at_once(scenario):
    record = phase(scenario, "unreachable")
    assert record["type"] == "RayClusterError"
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in record["error"]
    assert record["seconds"] < 30


def test_a_cluster_too_small_for_the_workers_is_refused_before_training(scenario):
    record = phase(scenario, "capacity")
    assert record["type"] == "RayClusterError", record
    assert "cannot hold multi_worker: 2 worker(s) of 1 CPU(s) each, all at once" in record["error"]
    assert re.search(r"room for 1\b", record["error"]), record["error"]
    assert record["seconds"] < 60  # refused, not waiting on a placement


def test_a_worker_that_cannot_import_stops_the_run_naming_member_and_node(scenario):
    record = phase(scenario, "broken_node")
    assert record.get("type") == "RayTrainingError", record
    assert (
        "train.ensemble[" in record["error"]
        and "failed on the node at 127.0.0.1" in record["error"]
    )
    # The node named is the broken one: its worker's pid (all nodes share 127.0.0.1 here).
    pid = int(re.search(r"failed on the node at 127\.0\.0\.1 \(pid (\d+)\)", record["error"])[1])
    assert pid in record["broken_node_pids"], record
    assert "no maas.training.ray_tasks" in record["error"]
    assert "nothing was exported" in record["error"]
    assert record["model_unchanged"] and record["leftovers"] == []

"""Distributed training for real: local multi-process jobs on a tiny model and corpus.

Each test runs a real job (MultiWorkerMirroredStrategy over 2 worker processes,
ParameterServerStrategy over a chief, 2 workers and 2 ps processes, MirroredStrategy over 2
logical CPU devices) through the same entry points as the pipeline. Dropout is off so that
runs differ only by floating-point order, and the model is tiny so that a job takes about a
minute on 2 cores. Every job has bounded time-outs: a broken job fails, it never hangs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
import yaml
from conftest import small_params_dict, write_project

from maas import config, runtime
from maas.provenance import read_json, verify_files
from maas.tokenizer import Tokenizer
from maas.training import distributed, fit, job, launcher, stage, worker

pytestmark = pytest.mark.slow

# Tolerances of "the same result": two workers with global batch B take the same steps as one
# worker with batch B, so the curves agree up to float rounding: ~1e-4 in the first epochs, a
# difference that Adam's updates compound epoch by epoch (measured with batches of similar
# length: 2e-5, 2e-4, 7e-4, 2.6e-3 over 4 epochs). Other batches would differ from epoch 1.
# A resumed run re-shuffles the epochs after the interruption differently, so it is held to a
# looser bound, and to at most one more misclassified validation post per 18.
SAME_LOSS_ATOL = 2e-3  # the first two epochs
DRIFTED_LOSS_ATOL = 1e-2  # every epoch
RESUMED_LOSS_RTOL = 0.05


@pytest.fixture(scope="module")
def project(tmp_path_factory, corpus_available):
    from maas import data

    raw = small_params_dict()
    raw["data"].update(vocabulary_size=1000, sequence_length=48)
    raw["train"].update(early_stopping_patience=4)
    raw["train"]["bilstm"].update(
        embedding_dim=16,
        lstm_units=8,
        bidirectional=False,
        dropout=0.0,
        embedding_dropout=0.0,
        learning_rate=0.01,
        epochs=4,
        batch_size=32,
    )
    raw["settings"]["train"].update(startup_timeout_s=240, timeout_s=480)
    root = write_project(tmp_path_factory.mktemp("distributed"), raw)
    params = config.load_params(root / "params.yaml")
    data.run(params.data, config.project_paths(root / "params.yaml"))
    return root


def load(root, **distribute) -> tuple[config.TrainParams, config.Paths]:
    overrides = {f"train.distribute.{key}": value for key, value in distribute.items()}
    params = config.load_params(root / "params.yaml", overrides)
    return params.train, config.project_paths(root / "params.yaml")


def settings(root) -> config.TrainSettings:
    return config.load_params(root / "params.yaml").settings.train


def run_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("maas-train-")}


@pytest.fixture(scope="module")
def two_workers(project):
    """The uninterrupted 2-worker run: its summary and exported history."""
    params, paths = load(project, strategy="multi_worker", workers=2)
    # A temporary folder of this run's own, so that other jobs on the machine don't count.
    private = project.parent / "tmp-two-workers"
    private.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(private))
        patch.setenv("TMPDIR", str(private))
        summary = stage.run(params, paths, settings=settings(project))
        assert run_folders() == set()  # the run folder (workers' results, logs) is gone
    return summary, read_json(paths.classifier_dir / "history.json")


def test_two_workers_end_identical_and_match_one_worker(project, two_workers):
    summary, history = two_workers
    params, paths = load(project, strategy="multi_worker", workers=2)
    # Every worker ended with the same weights, and those are the exported ones.
    digests = summary["weights_sha256_by_task"]
    assert sorted(digests) == ["worker-0", "worker-1"] and len(set(digests.values())) == 1
    exported = runtime.load_runtime(paths.classifier_dir)
    from maas.export import load_keras_model

    model = load_keras_model(paths.classifier_dir)
    assert distributed.weights_digest(model.get_weights()) == digests["worker-0"]
    assert exported.kind == "saved_model"
    # Only the chief wrote: one artifact folder, whole, nothing else in models/.
    assert sorted(os.listdir(paths.models_dir)) == ["classifier"]
    assert verify_files(paths.classifier_dir) == []
    record = read_json(paths.classifier_dir / "provenance.json")
    assert record["metrics"]["replicas"] == 2 and record["metrics"]["strategy"] == "multi_worker"
    assert not paths.train_backup_dir.exists()  # the backup of a finished run is removed
    # One worker with the same global batch takes the same steps.
    tokenizer = Tokenizer.load(paths.tokenizer)
    one = fit.fit(
        params,
        tokenizer=tokenizer,
        train=worker.encode_split(paths, "train", tokenizer),
        validation=worker.encode_split(paths, "validation", tokenizer),
    )
    assert len(history["val_loss"]) == len(one.history["val_loss"]) == params.epochs
    for key in ("val_loss", "loss"):
        ours, theirs = history[key], one.history[key]
        np.testing.assert_allclose(ours[:2], theirs[:2], atol=SAME_LOSS_ATOL, err_msg=key)
        np.testing.assert_allclose(ours, theirs, atol=DRIFTED_LOSS_ATOL, err_msg=key)
    assert abs(history["val_accuracy"][-1] - one.history["val_accuracy"][-1]) < 0.06
    assert history["loss"][-1] < history["loss"][0]  # and it learned something


def test_killed_worker_job_resumes_from_its_backup(project, two_workers, tmp_path):
    reference, _ = two_workers
    params, paths = load(project, strategy="multi_worker", workers=2)
    backup = tmp_path / "backup"
    run_dir = tmp_path / "run"
    failure: list[BaseException] = []

    def first_run() -> None:
        try:
            job.run_local_job(
                params, paths, settings=settings(project), backup_dir=backup, run_dir=run_dir
            )
        except BaseException as error:  # noqa: BLE001  (handed to the test thread)
            failure.append(error)

    thread = threading.Thread(target=first_run)
    thread.start()
    deadline = time.monotonic() + settings(project).startup_timeout_s
    while not list(backup.rglob("checkpoint")):  # the first epoch has been backed up
        assert thread.is_alive() and time.monotonic() < deadline, "no backup was written"
        time.sleep(0.05)
    pids = read_json(run_dir / "logs" / "tasks.json")
    os.kill(pids["worker-1"], signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert isinstance(failure[0], launcher.TaskFailed)
    assert "worker-1 was killed by SIGKILL" in str(failure[0])
    assert not any(distributed_alive(pid) for pid in pids.values())  # no process left behind

    resumed = stage.run(params, paths, settings=settings(project), backup_dir=backup)
    assert resumed["resumed_from_epoch"] >= 1  # not from epoch 0
    history = read_json(paths.classifier_dir / "history.json")
    assert len(history["loss"]) == params.epochs  # the curves cover every epoch
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], rel=RESUMED_LOSS_RTOL)
    assert resumed["val_accuracy"] >= reference["val_accuracy"] - 0.06
    assert len(set(resumed["weights_sha256_by_task"].values())) == 1
    assert not backup.exists()


def distributed_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_parameter_servers_hold_the_embedding_in_shards(project):
    params, paths = load(project, strategy="parameter_server", workers=2, parameter_servers=2)
    summary = stage.run(params, paths, settings=settings(project))
    shards = summary["embedding_shards"]
    assert len(shards) == params.distribute.parameter_servers
    assert {shard["device"].split("/device")[0] for shard in shards} == {
        "/job:ps/replica:0/task:0",
        "/job:ps/replica:0/task:1",
    }
    rows = Tokenizer.load(paths.tokenizer).vocabulary_size
    assert sum(shard["shape"][0] for shard in shards) == rows
    assert summary["sharded_variables"] == ["embedding/embeddings"]  # the rest stays whole
    history = read_json(paths.classifier_dir / "history.json")
    assert history["loss"][-1] < history["loss"][0]
    # The export holds plain, whole variables: it loads and predicts anywhere.
    served = runtime.load_runtime(paths.classifier_dir)
    probabilities = served.predict(["the rocket reached orbit", "my car needs new brakes"])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_mirrored_over_logical_cpus_from_the_command_line(project):
    # A fresh process: logical CPU devices must be set before TensorFlow starts.
    completed = subprocess.run(
        [sys.executable, "-m", "maas.cli", "train", "--strategy", "mirrored", "--replicas", "2"]
        + ["--params-file", str(project / "params.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = read_json(project / "models" / "classifier" / "provenance.json")
    assert record["metrics"]["strategy"] == "mirrored" and record["metrics"]["replicas"] == 2
    history = read_json(project / "models" / "classifier" / "history.json")
    assert history["loss"][-1] < history["loss"][0]
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["train"]["distribute"]["strategy"] == "one_device"  # the file is untouched

"""Distributed training jobs: one process per task, on this machine or on a cluster.

The job layer of training (stage -> job -> worker -> fit). A job of ``multi_worker`` or
``parameter_server`` training is a set of tasks, each a process that knows the cluster and
its own place in it from ``TF_CONFIG``:

- :func:`run_task` is what each process runs (``maas train --task``). Training tasks (every
  worker of ``multi_worker``; the chief, which coordinates, of ``parameter_server``) call
  :func:`maas.training.worker.train_and_export`: the chief exports the model, the others
  keep what they write in a temporary folder. The workers and ps tasks of ``parameter_server`` only
  serve (:func:`serve`) until the job stops them.
- :func:`run_local_job` runs a whole job here: free loopback ports, a generated
  ``TF_CONFIG`` per task, :mod:`maas.training.launcher` to start, watch and stop the
  processes, then a check that every worker ended with identical weights.

On a cluster, the orchestrator (Kubeflow's TFJob, or a script per host) starts
``maas train --task`` on every host with that host's ``TF_CONFIG``; see
docs/how-to/distributed-training.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from maas.config import Paths, TrainParams, TrainSettings, parse_section, to_dict
from maas.ports import free_ports
from maas.provenance import read_json, write_json
from maas.training import distributed, launcher

log = logging.getLogger(__name__)

JOB_FILE = "job.json"  # the resolved parameters and paths every local task reads
RESULT_FILE = "result.json"  # each training task's summary, in its task folder
FIRST_STEP_FILE = "first-step.json"  # written by the chief when training has begun


def write_job_file(
    path: Path, params: TrainParams, paths: Paths, *, backup_dir: Path | None
) -> Path:
    """The job description the local tasks share: the exact (already overridden) params."""
    return write_json(
        path,
        {
            "train": to_dict(params),
            "root": str(paths.root),
            "backup_dir": str(backup_dir or paths.train_backup_dir),
        },
    )


def read_job_file(path: str | Path) -> tuple[TrainParams, Paths, Path]:
    raw = read_json(path)
    params = parse_section(TrainParams, raw["train"], name="train")
    return params, Paths(Path(raw["root"])), Path(raw["backup_dir"])


def serve(task: distributed.ClusterTask) -> None:
    """Serve as a worker or ps task of parameter-server training, until stopped."""
    import tensorflow as tf

    server = tf.distribute.Server(
        tf.train.ClusterSpec({job: list(hosts) for job, hosts in task.cluster.items()}),
        job_name=task.task_type,
        task_index=task.task_index,
        protocol="grpc",
        start=True,
    )
    log.info("%s serving at %s", task.name, task.cluster[task.task_type][task.task_index])
    server.join()


def run_task(
    params: TrainParams,
    paths: Paths,
    task: distributed.ClusterTask,
    *,
    backup_dir: Path | None = None,
    task_dir: Path | None = None,
) -> dict[str, Any] | None:
    """This process's part of a distributed job; returns the summary on training tasks.

    Args:
        params: the ``train`` section; ``distribute.strategy`` says which strategy.
        paths: the project (the data are read from it; the chief writes the model there).
        task: the cluster and this task, from ``TF_CONFIG``.
        backup_dir: the training backup; on a cluster, storage every task can read.
        task_dir: where this task writes its result (a temporary folder when ``None``).

    Raises:
        DistributeError: the cluster does not fit the strategy; nothing was started.
    """
    strategy_name = params.distribute.strategy
    distributed.check_cluster(task, strategy_name)
    if strategy_name == "parameter_server" and task.task_type in ("worker", "ps"):
        serve(task)
        return None
    from maas.model import embedding_shape
    from maas.tokenizer import Tokenizer  # training code: training tasks only, ps tasks serve
    from maas.training.worker import train_and_export

    rows = Tokenizer.load(paths.tokenizer).vocabulary_size
    strategy = distributed.make_strategy(
        strategy_name, task=task, embedding_shape=embedding_shape(params, vocabulary_size=rows)
    )
    own_dir = task_dir or Path(tempfile.mkdtemp(prefix=f"maas-{task.name}-"))
    own_dir.mkdir(parents=True, exist_ok=True)
    try:
        summary, result = train_and_export(
            params,
            paths,
            strategy=strategy,
            chief=task.is_chief,
            progress=False,
            backup_dir=backup_dir,
            first_step_marker=own_dir / FIRST_STEP_FILE if task.is_chief else None,
        )
        layout = distributed.variable_layout(result.model)
        result_record = {"task": task.name, "summary": summary, "layout": layout}
        write_json(own_dir / RESULT_FILE, result_record)
        if strategy_name == "multi_worker":
            distributed.barrier(strategy)  # leave together, after the chief's export
    finally:
        if task_dir is None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return summary


def local_tasks(
    params: TrainParams, job_file: Path, run_dir: Path
) -> tuple[list[launcher.Task], str]:
    """The processes of a local job, and the name of its chief."""
    spec = params.distribute
    count = distributed.local_tasks(
        spec.strategy, workers=spec.workers, parameter_servers=spec.parameter_servers
    )
    cluster = distributed.local_cluster(
        spec.strategy,
        workers=spec.workers,
        parameter_servers=spec.parameter_servers,
        ports=free_ports(count),
    )
    trainers = spec.workers if spec.strategy == "multi_worker" else 1
    threads = max(1, (os.cpu_count() or 1) // trainers)  # share the cores, not oversubscribe
    tasks, chief = [], ""
    for job, addresses in cluster.items():
        for index, address in enumerate(addresses):
            task = distributed.ClusterTask(cluster, job, index)
            service = spec.strategy == "parameter_server" and job != "chief"
            chief = task.name if task.is_chief else chief
            argv = [sys.executable, "-m", "maas.training.cli", "--task"]
            argv += ["--job-file", str(job_file), "--task-dir", str(run_dir / task.name)]
            tasks.append(
                launcher.Task(
                    name=task.name,
                    argv=argv,
                    env={"TF_CONFIG": task.to_json(), "TF_NUM_INTRAOP_THREADS": str(threads)},
                    service=service,
                    port=int(address.rsplit(":", 1)[1]) if service else None,
                )
            )
    return tasks, chief


def run_local_job(
    params: TrainParams,
    paths: Paths,
    *,
    settings: TrainSettings,
    backup_dir: Path | None = None,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Run a ``multi_worker`` or ``parameter_server`` job as processes on this machine.

    Checks everything that can be checked before a process starts (strategy, capacity,
    data); then launches the tasks, streams their logs, fails fast when one dies, and
    checks that every worker ends with the same weights. The run folder (job file, task
    results, logs) is removed on success and kept, for its logs, on failure.

    Raises:
        DistributeError: a job this machine cannot host; nothing was started.
        FileNotFoundError: the data stage has not run.
        launcher.JobError: a task failed or the job ran out of time; all were stopped.
    """
    spec = params.distribute
    if spec.strategy not in distributed.LAUNCHED_STRATEGIES:
        raise distributed.DistributeError(f"{spec.strategy!r} is not a multi-process strategy")
    distributed.check_local_capacity(
        spec.strategy, workers=spec.workers, parameter_servers=spec.parameter_servers
    )
    for needed in (paths.tokenizer, paths.split("train"), paths.split("validation")):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: run the data stage first")
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="maas-train-"))
    job_file = write_job_file(run_dir / JOB_FILE, params, paths, backup_dir=backup_dir)
    tasks, chief = local_tasks(params, job_file, run_dir)
    log.info("%s job: %s; run folder %s", spec.strategy, [t.name for t in tasks], run_dir)
    started = time.time()
    try:
        launcher.run_job(
            tasks,
            log_dir=run_dir / "logs",
            timeout_s=settings.timeout_s,
            startup_timeout_s=settings.startup_timeout_s,
            ready=(run_dir / chief / FIRST_STEP_FILE).is_file,
        )
        results = {
            task.name: read_json(run_dir / task.name / RESULT_FILE)
            for task in tasks
            if not task.service
        }
        check_same_weights(results)
    except launcher.JobError:
        log.error("the job failed; its logs are kept in %s", run_dir / "logs")
        raise
    summary = dict(results[chief]["summary"])
    summary["tasks"] = len(tasks)
    summary.update(time_to_start(summary, since=started))
    if spec.strategy == "parameter_server":
        summary.update(shard_summary(results[chief]["layout"]))
    else:
        summary["weights_sha256_by_task"] = {
            name: result["summary"]["weights_sha256"] for name, result in results.items()
        }
    shutil.rmtree(run_dir, ignore_errors=True)
    return summary


def time_to_start(summary: dict[str, Any], *, since: float) -> dict[str, float]:
    """Seconds from ``since`` (wall clock) until training began and its first step ended.

    Pops the wall-clock timeline from ``summary`` (the model's provenance keeps it)."""
    timeline = summary.pop("timeline", None) or {}
    times = {}
    for event, name in (
        ("train_started", "time_to_train_start_s"),
        ("first_step", "time_to_first_step_s"),  # none under ParameterServerStrategy
    ):
        if event in timeline:
            times[name] = round(timeline[event] - since, 1)
    return times


def check_same_weights(results: dict[str, dict[str, Any]]) -> None:
    """Synchronous training must leave identical weights on every worker.

    Raises:
        launcher.JobError: they differ (a broken all-reduce, or workers fed different data).
    """
    digests = {name: result["summary"]["weights_sha256"] for name, result in results.items()}
    if len(set(digests.values())) > 1:
        raise launcher.JobError(f"the workers ended with different weights: {digests}")
    if len(digests) > 1:
        log.info("all %d workers hold identical weights (sha256 %s)", len(digests), digests)


def shard_summary(layout: list[dict[str, Any]]) -> dict[str, Any]:
    """Which variables were split over the ps tasks, and where the embedding's shards live."""
    parts = [v for v in layout if "/part_" in v["name"]]
    return {
        "sharded_variables": sorted({v["name"].split("/part_")[0] for v in parts}),
        "embedding_shards": [
            {"shape": v["shape"], "device": v["device"]}
            for v in parts
            if v["name"].startswith("embedding/")
        ],
    }

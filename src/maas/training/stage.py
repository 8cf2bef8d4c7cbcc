"""The train stage: fit the classifier on the data stage's splits and export it.

Top of the training layers, read one way down: stage (this module; optimizer trials first,
:mod:`maas.training.trials`) -> job
(:mod:`maas.training.job`, one process per task) -> worker (:mod:`maas.training.worker`, one
training process's I/O) -> fit (:mod:`maas.training.fit`, the model and ``model.fit``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import tensorflow as tf

from maas.config import Paths, TrainParams, TrainSettings
from maas.training import distributed
from maas.training.fit import TrainResult
from maas.training.job import run_local_job, time_to_start
from maas.training.trials import choose_optimizer
from maas.training.worker import Inputs, train_and_export


def run(
    params: TrainParams,
    paths: Paths,
    *,
    settings: TrainSettings,
    strategy: tf.distribute.Strategy | None = None,
    progress: bool = True,
    backup_dir: Path | None = None,
) -> dict[str, Any]:
    """The train stage: fit on the data stage's outputs, export to ``models/classifier``.

    ``train.distribute.engine: ray`` trains on a Ray cluster (:mod:`maas.training.ray_job`:
    an ensemble's members in parallel, or ``multi_worker`` through Ray Train) and exports
    here the same artifacts. On the local engine ``train.distribute.strategy`` decides how:
    ``one_device`` and ``mirrored`` train in this process; ``multi_worker`` and
    ``parameter_server`` launch one process per task on this machine
    (:func:`maas.training.job.run_local_job`) and wait for them. A run interrupted before the
    end resumes from its last finished epoch when started again. ``settings`` bound the time
    a job may take and say where the Ray cluster is (they change no result).
    Where ``train.optimizer_trials`` is set, the optimizer is chosen on validation first
    (:mod:`maas.training.trials`); the model's provenance then holds the chosen one.
    Returns the training summary that is also stored in the model's provenance, with the
    trials' rows under ``optimizer_trials``.
    """
    # Only a training in this process on one device is exactly the trial's, so only there
    # does the winning trial's model stand in for the ensemble member it trained.
    in_process = (
        params.distribute.engine == "local"
        and params.distribute.strategy == "one_device"
        and (strategy is None or strategy.num_replicas_in_sync == 1)
    )
    choice = choose_optimizer(params, paths, keep_winner=in_process)
    summary = _train(
        choice.params, paths, settings=settings, strategy=strategy, progress=progress,
        backup_dir=backup_dir, inputs=choice.inputs, trained=choice.trained,
    )  # fmt: skip
    return {**summary, "optimizer_trials": choice.rows} if choice.rows else summary


def _train(
    params: TrainParams,
    paths: Paths,
    *,
    settings: TrainSettings,
    strategy: tf.distribute.Strategy | None,
    progress: bool,
    backup_dir: Path | None,
    inputs: Inputs | None = None,
    trained: dict[int, TrainResult] | None = None,
) -> dict[str, Any]:
    """Train on the engine and strategy of ``params``. ``inputs`` (the encoded splits) and
    ``trained`` (ensemble members already trained) serve a training in this process only."""
    name = params.distribute.strategy
    if params.distribute.engine == "ray":
        from maas.training import ray_job  # Ray is imported only when it is used

        started = time.time()
        summary = ray_job.run(params, paths, settings=settings)
        summary.update(time_to_start(summary, since=started))
        return summary
    if strategy is None and name in distributed.LAUNCHED_STRATEGIES:
        return run_local_job(params, paths, settings=settings, backup_dir=backup_dir)
    started = time.time()
    if strategy is None:
        strategy = distributed.make_strategy(name, replicas=params.distribute.replicas)
    summary, _ = train_and_export(
        params, paths, strategy=strategy, progress=progress, backup_dir=backup_dir,
        inputs=inputs, trained=trained,
    )  # fmt: skip
    summary.update(time_to_start(summary, since=started))
    return summary

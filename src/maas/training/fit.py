"""Fit: the bottom of training (stage -> job -> worker -> fit).

:func:`fit` builds the classifier inside a ``tf.distribute`` strategy scope and trains it on
token ids with early stopping (the best epoch's weights are restored), optionally backed up
every epoch so an interrupted run resumes. It reads and writes no files of the project: the
worker (:mod:`maas.training.worker`) does the I/O around it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from maas.batches import pad_to, shuffled_batches
from maas.config import TrainParams
from maas.model import build_architecture, compile_classifier
from maas.tokenizer import Tokenizer
from maas.training import distributed
from maas.training.callbacks import ThroughputMeter, TrainingBackup, merge_history

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]  # every epoch, those before a resume included
    best_epoch: int  # 1-based epoch whose weights the model holds
    seconds: float
    examples_per_second: float  # this process's epochs over its wall time (tracing included)
    initial_epoch: int = 0  # > 0: resumed from a backup after that many epochs
    steady_examples_per_second: float | None = None  # median epoch, the first left out
    timeline: dict[str, float] = field(default_factory=dict)  # see ThroughputMeter
    members: list[dict[str, Any]] = field(default_factory=list)  # an ensemble's, each outcome()

    def outcome(self) -> dict[str, Any]:
        """How far this training went and what its kept epoch scored on validation."""
        best = self.best_epoch - 1
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history["loss"]),
            "train_seconds": round(self.seconds, 1),
            "val_accuracy": self.history["val_accuracy"][best],
            "val_loss": self.history["val_loss"][best],
        }


@dataclass
class Inputs:
    train: Any  # a tf.data.Dataset, or a DatasetCreator for ParameterServerStrategy
    validation: Any
    steps_per_epoch: int | None = None  # needed when the data repeat forever (ps training)
    validation_steps: int | None = None


def make_dataset(
    ids: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    width: int | None = None,
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline of ``(token_ids, label)`` pairs.

    Under MultiWorkerMirroredStrategy every worker builds the same pipeline (same seed, same
    order) and keeps its part of each global batch (``DATA`` sharding), so a step of N
    workers sees exactly the batch one worker would. ``width``: the model's input width, when
    ``ids`` were trimmed narrower (:meth:`maas.tokenizer.Tokenizer.encode`).
    """
    if shuffle:
        dataset = shuffled_batches(ids, labels, batch_size=batch_size, seed=seed)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(batch_size)
    dataset = padded(dataset, width)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def per_worker_dataset(
    ids: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    width: int | None = None,
) -> keras.utils.experimental.DatasetCreator:
    """Input for ParameterServerStrategy: each worker reads its own shard, repeated forever."""

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = slice(context.input_pipeline_id, None, context.num_input_pipelines)
        batch = context.get_per_replica_batch_size(batch_size)
        if shuffle:
            dataset = shuffled_batches(
                ids[shard], labels[shard], batch_size=batch,
                seed=seed + context.input_pipeline_id, repeat=True,
            )  # fmt: skip
        else:  # batches of one pass, repeated: none holds an example twice
            dataset = tf.data.Dataset.from_tensor_slices((ids[shard], labels[shard]))
            dataset = dataset.batch(batch).repeat()
        return padded(dataset, width).prefetch(tf.data.AUTOTUNE)

    return keras.utils.experimental.DatasetCreator(dataset_fn)


def padded(dataset: tf.data.Dataset, width: int | None) -> tf.data.Dataset:
    """Batches of ``(ids, targets)`` with ids zero-padded to ``width`` columns (if given)."""
    if width is None:
        return dataset
    return dataset.map(lambda ids, targets: (pad_to(ids, width), targets))


def make_inputs(
    strategy: tf.distribute.Strategy,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    *,
    batch_size: int,
    seed: int,
    width: int | None = None,
) -> Inputs:
    """Training and validation input in the form ``strategy`` needs, ``width`` ids wide."""
    if not distributed.is_parameter_server(strategy):
        return Inputs(
            make_dataset(*train, batch_size=batch_size, shuffle=True, seed=seed, width=width),
            make_dataset(*validation, batch_size=batch_size, shuffle=False, seed=0, width=width),
        )
    # Asynchronous training has no end of data: an epoch is as many steps as one pass takes.
    # Validation is an estimate: as many batches as the workers' shards hold, each run by
    # whichever worker is free (exact evaluation would need file-based datasets).
    workers = getattr(strategy, "_num_workers", 1)
    return Inputs(
        per_worker_dataset(*train, batch_size=batch_size, shuffle=True, seed=seed, width=width),
        per_worker_dataset(*validation, batch_size=batch_size, shuffle=False, seed=0, width=width),
        steps_per_epoch=math.ceil(len(train[0]) / batch_size),
        validation_steps=workers * math.ceil(len(validation[0]) / (workers * batch_size)),
    )


def build_model(
    params: TrainParams, tokenizer: Tokenizer, train_ids: np.ndarray | None = None
) -> keras.Model:
    """The compiled classifier of ``train.architecture`` (under the caller's strategy scope).

    ``train_ids``: the training split's token ids (the wide model's IDF is computed from them).
    """
    return compile_classifier(
        build_architecture(
            params.architecture,
            params.model,
            vocabulary_size=tokenizer.vocabulary_size,
            sequence_length=tokenizer.sequence_length,
            n_classes=len(tokenizer.labels),
            train_ids=train_ids,
        ),
        params,
    )


def fit(
    params: TrainParams,
    *,
    tokenizer: Tokenizer,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    backup: TrainingBackup | None = None,
    first_step_marker: Path | None = None,
) -> TrainResult:
    """Train one classifier on token ids; return it with its history.

    An ensemble is not trained here: :mod:`maas.training.ensemble` trains its members with
    this function, and the layer above both (:mod:`maas.training.worker`) chooses.

    Args:
        params: the ``train`` section.
        tokenizer: gives the vocabulary size, sequence length and number of classes.
        train: ``(token_ids, labels)`` of the training split.
        validation: the same for the validation split (early stopping watches its loss).
        strategy: a ``tf.distribute`` strategy; the default strategy when ``None``.
        callbacks: extra callbacks (progress, logging).
        verbose: Keras' own per-epoch printing (0: silent).
        backup: back up every epoch there, and resume from it if it holds a backup.
        first_step_marker: a file to write when the first training step has ended.
    """
    if params.ensemble:
        raise ValueError(
            "fit trains one model; an ensemble's members are trained by "
            "maas.training.ensemble.fit_ensemble (maas.training.worker chooses)"
        )
    keras.utils.set_random_seed(params.seed)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(params, tokenizer, train[0])
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=params.early_stopping_patience, restore_best_weights=True
    )
    # Batch-level callbacks would need a round trip per step under ParameterServerStrategy.
    meter = ThroughputMeter(
        first_step_marker, batch_hooks=not distributed.is_parameter_server(strategy)
    )
    inputs = make_inputs(
        strategy,
        train,
        validation,
        batch_size=params.batch_size,
        seed=params.seed,
        width=tokenizer.sequence_length,
    )
    backups = backup.callbacks() if backup is not None else []
    start = time.perf_counter()
    history = model.fit(
        inputs.train,
        validation_data=inputs.validation,
        epochs=params.epochs,
        steps_per_epoch=inputs.steps_per_epoch,
        validation_steps=inputs.validation_steps,
        callbacks=[*backups, stopper, meter, *callbacks],
        verbose=verbose,
    ).history
    seconds = time.perf_counter() - start
    epochs_here = len(history.get("loss", []))
    initial_epoch = (backups[0].initial_epoch or 0) if backups else 0
    if backup is not None:
        history = merge_history(backup.rows)
    history = {k: [float(v) for v in values] for k, values in history.items()}
    steady = meter.steady_seconds_per_epoch()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=int(np.argmin(history["val_loss"])) + 1,
        seconds=seconds,
        examples_per_second=epochs_here * len(train[0]) / seconds,
        initial_epoch=initial_epoch,
        steady_examples_per_second=len(train[0]) / steady if steady else None,
        timeline=meter.timeline,
    )

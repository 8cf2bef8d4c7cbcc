"""One training process: read the splits, fit, and (on the chief) export the classifier.

Worker of the training layers (stage -> job -> worker -> fit). Every process of a job calls
:func:`train_and_export`, which reads the data stage's outputs, fits under the process's
``tf.distribute`` strategy (:func:`maas.training.fit.fit`) with per-epoch backups, and on the
chief alone writes ``models/classifier``, the DVCLive curves and the backup; the other workers
keep theirs in temporary folders that Keras removes.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from maas.config import Paths, TrainParams, to_dict
from maas.data import read_split
from maas.export import export_classifier
from maas.model import compile_classifier
from maas.tokenizer import Tokenizer
from maas.training import distributed
from maas.training.callbacks import (
    EpochLog,
    LiveLogger,
    ProgressBar,
    TrainingBackup,
    fingerprint_of,
)
from maas.training.ensemble import fit_ensemble
from maas.training.fit import TrainResult, fit

log = logging.getLogger(__name__)


def encode_split(paths: Paths, name: str, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """``(token_ids, labels)`` of one of the data stage's splits."""
    split = read_split(paths.split(name))
    return tokenizer.encode(split.texts), split.labels


def run_fingerprint(
    params: TrainParams,
    strategy: tf.distribute.Strategy,
    tokenizer: Tokenizer,
    train: tuple[np.ndarray, np.ndarray],
) -> str:
    """What a backup must match to be resumed: parameters, replicas, tokenizer and data."""
    return fingerprint_of(
        {
            "train": {**to_dict(params), "distribute": params.distribute.strategy},
            "replicas": int(strategy.num_replicas_in_sync),
            "tokenizer": tokenizer.fingerprint(),
            "data": hashlib.sha256(train[0].tobytes() + train[1].tobytes()).hexdigest(),
        }
    )


def chief_callbacks(
    params: TrainParams, paths: Paths, backup: TrainingBackup, *, progress: bool
) -> list[keras.callbacks.Callback]:
    """The chief's log lines, DVCLive curves and (optionally) progress bar."""
    callbacks: list[keras.callbacks.Callback] = [
        EpochLog(params.epochs),
        LiveLogger(paths.dvclive_dir, backup.before),
    ]
    if progress:
        callbacks.append(ProgressBar(params.epochs))
    return callbacks


def exportable_model(
    result: TrainResult, params: TrainParams, strategy: tf.distribute.Strategy
) -> keras.Model:
    """The trained model with ordinary variables (never ps shards), so it loads anywhere."""
    if strategy is tf.distribute.get_strategy():
        return result.model
    return compile_classifier(
        distributed.plain_copy(result.model), learning_rate=params.learning_rate
    )


def summarize(
    result: TrainResult,
    model: keras.Model,
    params: TrainParams,
    strategy: tf.distribute.Strategy,
) -> dict[str, Any]:
    """The training summary the model's provenance and the notebook show."""
    members = {"members": result.members} if result.members else {}
    return {
        "strategy": params.distribute.strategy,
        "replicas": int(strategy.num_replicas_in_sync),
        **result.outcome(),
        "resumed_from_epoch": result.initial_epoch,
        "examples_per_second": round(result.examples_per_second, 1),
        "steady_examples_per_second": round(result.steady_examples_per_second or 0.0, 1),
        "timeline": result.timeline,  # wall-clock stamps (benchmarks read them)
        "parameters": int(model.count_params()),
        "weights_sha256": distributed.weights_digest(model.get_weights()),
        **members,
    }


def train_and_export(
    params: TrainParams,
    paths: Paths,
    *,
    strategy: tf.distribute.Strategy,
    chief: bool = True,
    progress: bool = True,
    backup_dir: Path | None = None,
    first_step_marker: Path | None = None,
) -> tuple[dict[str, Any], TrainResult]:
    """Fit under ``strategy`` with backups; the chief exports to ``models/classifier``.

    Returns the training summary (also stored in the model's provenance) and the result.
    """
    tokenizer = Tokenizer.load(paths.tokenizer)
    train = encode_split(paths, "train", tokenizer)
    validation = encode_split(paths, "validation", tokenizer)
    backup = TrainingBackup(
        backup_dir or paths.train_backup_dir,
        fingerprint=run_fingerprint(params, strategy, tokenizer, train),
        writer=chief,
    )
    common = {
        "tokenizer": tokenizer,
        "train": train,
        "validation": validation,
        "strategy": strategy,
        "callbacks": chief_callbacks(params, paths, backup, progress=progress) if chief else [],
        "first_step_marker": first_step_marker,
    }
    if params.ensemble:  # members in turn, without backups (the Ray engine backs each up)
        result = fit_ensemble(params, **common)
    else:
        result = fit(params, backup=backup, **common)
    model = exportable_model(result, params, strategy)
    summary = summarize(result, model, params, strategy)
    if chief:
        export_classifier(
            model,
            tokenizer,
            paths.classifier_dir,
            params=to_dict(params),
            metrics=summary,
            history=result.history,
            inputs={"data": paths.processed_dir},
            root=paths.root,
        )
    backup.finish()
    log.info("train: %s", summary)
    return summary, result

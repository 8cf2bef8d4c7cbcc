"""One training process: read the splits, fit, and (on the chief) export the classifier.

Worker of the training layers (stage -> job -> worker -> fit). Every process of a job calls
:func:`train_and_export`, which reads the data stage's outputs, fits under the process's
``tf.distribute`` strategy (:func:`maas.training.fit.fit`) with per-epoch backups, and on the
chief alone writes ``models/classifier``, the DVCLive curves and the backup; the other workers
keep theirs in temporary folders that Keras removes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from maas.config import Paths, TrainParams, to_dict
from maas.export import export_classifier
from maas.model import compile_classifier
from maas.model.ensemble import build_ensemble
from maas.provenance import atomic_dir, read_json, write_json
from maas.splits import read_split
from maas.text_stats import reference_statistics
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
from maas.training.fit import TrainResult, build_model, fit

log = logging.getLogger(__name__)

REFERENCE_PREDICTED = 2000  # training texts the model predicts for the reference's class mix

WEIGHTS_FILE = "weights.npz"  # a stored training's weights (train_to_storage)
RESULT_FILE = "result.json"  # ... and its history and figures


class Inputs(NamedTuple):
    tokenizer: Tokenizer
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]


def encode_split(
    paths: Paths, name: str, tokenizer: Tokenizer, *, trim: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(token_ids, labels)`` of one of the data stage's splits."""
    split = read_split(paths.split(name))
    return tokenizer.encode(split.texts, trim=trim), split.labels


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
    return compile_classifier(distributed.plain_copy(result.model), params)


def summarize(
    result: TrainResult, model: keras.Model, params: TrainParams, *, replicas: int
) -> dict[str, Any]:
    """The training summary the model's provenance and the notebook show."""
    members = {"members": result.members} if result.members else {}
    return {
        "strategy": params.distribute.strategy,
        "replicas": replicas,
        **result.outcome(),
        "resumed_from_epoch": result.initial_epoch,
        "examples_per_second": round(result.examples_per_second, 1),
        "steady_examples_per_second": round(result.steady_examples_per_second or 0.0, 1),
        "timeline": result.timeline,  # wall-clock stamps (benchmarks read them)
        "parameters": int(model.count_params()),
        "weights_sha256": distributed.weights_digest(model.get_weights()),
        **members,
    }


def read_inputs(paths: Paths) -> Inputs:
    """The tokenizer and the encoded training and validation splits."""
    tokenizer = Tokenizer.load(paths.tokenizer)
    # Training ids only as wide as the longest text (batches are padded back): a corpus of
    # short texts takes a fraction of the memory. Validation feeds the ensemble directly.
    return Inputs(
        tokenizer,
        encode_split(paths, "train", tokenizer, trim=True),
        encode_split(paths, "validation", tokenizer),
    )


def open_backup(
    directory: Path,
    params: TrainParams,
    strategy: tf.distribute.Strategy,
    inputs: Inputs,
    *,
    writer: bool,
) -> TrainingBackup:
    """This run's backup in ``directory``: resumed if an earlier run of it left one."""
    fingerprint = run_fingerprint(params, strategy, inputs.tokenizer, inputs.train)
    return TrainingBackup(directory, fingerprint=fingerprint, writer=writer)


def train_model(
    params: TrainParams,
    inputs: Inputs,
    *,
    strategy: tf.distribute.Strategy,
    callbacks: list[keras.callbacks.Callback],
    backup: TrainingBackup,
    first_step_marker: Path | None = None,
    trained: dict[int, TrainResult] | None = None,
) -> TrainResult:
    """One model backed up every epoch, or an ensemble's members in turn (without backups;
    ``trained``: members already trained, by index)."""
    common = {
        "tokenizer": inputs.tokenizer,
        "train": inputs.train,
        "validation": inputs.validation,
        "strategy": strategy,
        "callbacks": callbacks,
        "first_step_marker": first_step_marker,
    }
    if params.ensemble:
        return fit_ensemble(params, trained=trained, **common)
    return fit(params, backup=backup, **common)


def export(
    result: TrainResult,
    model: keras.Model,
    params: TrainParams,
    paths: Paths,
    tokenizer: Tokenizer,
    *,
    summary: dict[str, Any],
) -> None:
    """Write ``models/classifier``: the model, its tokenizer, history, provenance and the
    statistics the server's drift monitor compares live texts with (:func:`reference_of`)."""
    reference = reference_of(model, tokenizer, paths)
    export_classifier(
        model,
        tokenizer,
        paths.classifier_dir,
        params=to_dict(params),
        metrics=summary,
        history=result.history,
        inputs={"data": paths.processed_dir},
        root=paths.root,
        reference=reference,
    )


def reference_of(model: keras.Model, tokenizer: Tokenizer, paths: Paths) -> dict[str, Any]:
    """The training split's statistics, the validation split's unknown-token rate, and the
    model's predicted classes on the validation split and a sample of training texts."""
    train = read_split(paths.split("train"))
    validation = read_split(paths.split("validation"))
    sample = train.take(np.random.default_rng(0).permutation(len(train))[:REFERENCE_PREDICTED])
    texts = validation.texts + sample.texts
    predicted = model.predict(tokenizer.encode(texts), verbose=0).argmax(axis=1)
    return reference_statistics(
        train.texts, train.labels, tokenizer, held_out=validation.texts, predicted=predicted
    )


def train_and_export(
    params: TrainParams,
    paths: Paths,
    *,
    strategy: tf.distribute.Strategy,
    chief: bool = True,
    progress: bool = True,
    backup_dir: Path | None = None,
    first_step_marker: Path | None = None,
    inputs: Inputs | None = None,
    trained: dict[int, TrainResult] | None = None,
) -> tuple[dict[str, Any], TrainResult]:
    """Fit under ``strategy`` with backups; the chief exports to ``models/classifier``.

    ``inputs``: the splits already read (:func:`read_inputs`); ``trained``: ensemble members
    already trained, by index (the optimizer trials' winner). Returns the training summary
    (also stored in the model's provenance) and the result.
    """
    inputs = inputs or read_inputs(paths)
    backup = open_backup(
        backup_dir or paths.train_backup_dir, params, strategy, inputs, writer=chief
    )
    result = train_model(
        params,
        inputs,
        strategy=strategy,
        callbacks=chief_callbacks(params, paths, backup, progress=progress) if chief else [],
        backup=backup,
        first_step_marker=first_step_marker,
        trained=trained,
    )
    model = exportable_model(result, params, strategy)
    summary = summarize(result, model, params, replicas=int(strategy.num_replicas_in_sync))
    if chief:
        export(result, model, params, paths, inputs.tokenizer, summary=summary)
    backup.finish()
    log.info("train: %s", summary)
    return summary, result


def train_to_storage(
    params: TrainParams,
    paths: Paths,
    *,
    strategy: tf.distribute.Strategy,
    storage: Path,
    writer: bool,
) -> TrainResult:
    """Fit with epoch backups in ``storage/backup``; the writer stores the outcome in
    ``storage/result`` (:func:`store_result`) for a driver on another machine to export.

    A process that was lost and runs again on another node finds the backup and resumes.
    """
    inputs = read_inputs(paths)
    backup = open_backup(storage / "backup", params, strategy, inputs, writer=writer)
    result = train_model(
        params,
        inputs,
        strategy=strategy,
        callbacks=[EpochLog(params.epochs)] if writer else [],
        backup=backup,
    )
    if writer:
        store_result(exportable_model(result, params, strategy), result, storage / "result")
    backup.finish()
    return result


def store_result(model: keras.Model, result: TrainResult, directory: Path) -> None:
    """A training's weights and figures, written whole or not at all."""
    with atomic_dir(directory) as out:
        np.savez(out / WEIGHTS_FILE, *model.get_weights())
        figures = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        write_json(out / RESULT_FILE, {k: v for k, v in figures.items() if k != "model"})


def load_result(params: TrainParams, inputs: Inputs, directory: Path) -> TrainResult:
    """What :func:`store_result` stored, its model rebuilt here (ordinary variables)."""
    if params.ensemble:
        members = [
            build_model(params.member(member), inputs.tokenizer, inputs.train[0])
            for member in params.ensemble
        ]
        model = compile_classifier(build_ensemble(members), params)
    else:
        model = build_model(params, inputs.tokenizer, inputs.train[0])
    with np.load(directory / WEIGHTS_FILE) as stored:
        model.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])
    return TrainResult(model=model, **read_json(directory / RESULT_FILE))

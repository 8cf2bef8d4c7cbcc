"""Training an ensemble (``train.ensemble``): each member in turn, then one averaged model.

Above :mod:`maas.training.fit` (which trains one model) and below the worker, which chooses
between the two. :func:`assemble` is the one home of "members -> ensemble": the Ray engine
(:mod:`maas.training.ray_job`), which trains the members in parallel, assembles with it too.

Every member is first built (cheap), so a member that cannot exist fails before any
training; then each trains with its own architecture section and seed, under the run's
strategy, with early stopping. A member that fails stops the run with
:class:`EnsembleMemberError` naming it, before anything is exported. The ensemble's history
is the members' epochs one after the other, then one row for the ensemble itself (its
validation loss and accuracy, the members' mean training figures at their best epochs); its
summary lists each member's best epoch, epochs, seconds and validation figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from maas.config import EnsembleMember, TrainParams
from maas.model import build_architecture, compile_classifier
from maas.model.ensemble import build_ensemble
from maas.tokenizer import Tokenizer
from maas.training import distributed
from maas.training.callbacks import LiveLogger
from maas.training.fit import TrainResult, fit

log = logging.getLogger(__name__)


class EnsembleMemberError(RuntimeError):
    """One member of ``train.ensemble`` could not be built or trained."""


def describe(index: int, member: EnsembleMember) -> str:
    return f"train.ensemble[{index}] ({member.architecture}, seed {member.seed})"


def check_members(params: TrainParams, tokenizer: Tokenizer) -> None:
    """Build every member once, untrained: sizes that cannot make a model fail here."""
    for index, member in enumerate(params.ensemble):
        own = params.member(member)
        try:
            build_architecture(
                own.architecture,
                own.model,
                vocabulary_size=tokenizer.vocabulary_size,
                sequence_length=tokenizer.sequence_length,
                n_classes=len(tokenizer.labels),
            )
        except Exception as error:
            raise EnsembleMemberError(f"{describe(index, member)}: {error}") from error
        keras.backend.clear_session()


def fit_ensemble(
    params: TrainParams,
    *,
    tokenizer: Tokenizer,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    first_step_marker: Path | None = None,
    trained: dict[int, TrainResult] | None = None,
) -> TrainResult:
    """Train every member in turn with :func:`maas.training.fit.fit`; return the ensemble's
    ``TrainResult``. ``trained``: members already trained with their exact parameters (by
    index; the optimizer trials' winner), used as they are.

    Raises:
        EnsembleMemberError: a member failed; nothing was exported.
    """
    check_members(params, tokenizer)
    # The curves are logged once, whole, at the end (a logger ends with each member's fit).
    others = [c for c in callbacks if not isinstance(c, LiveLogger)]
    started = time.perf_counter()
    results = []
    trained = trained or {}
    marker = first_step_marker  # written by the first member this process trains
    for index, member in enumerate(params.ensemble):
        if index in trained:
            log.info("ensemble: %s is the optimizer trial's model, not trained again",
                     describe(index, member))  # fmt: skip
            results.append(trained[index])
            continue
        log.info("ensemble: training %s", describe(index, member))
        try:
            result = fit(
                params.member(member),
                tokenizer=tokenizer,
                train=train,
                validation=validation,
                strategy=strategy,
                callbacks=others,
                verbose=verbose,
                first_step_marker=marker,
            )
            marker = None
        except Exception as error:
            raise EnsembleMemberError(f"{describe(index, member)} failed: {error}") from error
        if strategy is not None and strategy is not tf.distribute.get_strategy():
            result.model = distributed.plain_copy(result.model)  # ordinary variables
        results.append(result)
    return assemble(
        params,
        results,
        validation=validation,
        callbacks=callbacks,
        seconds=time.perf_counter() - started,
        examples=len(train[0]),
    )


def assemble(
    params: TrainParams,
    results: Sequence[TrainResult],
    *,
    validation: tuple[np.ndarray, np.ndarray],
    callbacks: Sequence[keras.callbacks.Callback] = (),
    seconds: float,
    examples: int,
) -> TrainResult:
    """The ensemble of trained members (in ``train.ensemble``'s order): one averaged model,
    evaluated on validation, its combined history logged to the ``LiveLogger`` callbacks.

    Args:
        results: each member's training, its model holding ordinary variables.
        seconds: the wall time of training every member.
        examples: training examples in one epoch.
    """
    models = [result.model for result in results]
    ensemble = compile_classifier(build_ensemble(models), params)
    val_loss, val_accuracy = ensemble.evaluate(*validation, batch_size=256, verbose=0)
    history = combined_history(results, val_loss=val_loss, val_accuracy=val_accuracy)
    for logger in (c for c in callbacks if isinstance(c, LiveLogger)):
        for epoch, row in enumerate(rows_of(history)):
            logger.on_epoch_end(epoch, row)
        logger.on_train_end()
    epochs = sum(len(r.history["loss"]) for r in results)
    log.info("ensemble: validation accuracy %.4f (members %s)", val_accuracy, [
        round(max(r.history["val_accuracy"]), 4) for r in results
    ])  # fmt: skip
    steady = [r.steady_examples_per_second for r in results if r.steady_examples_per_second]
    return TrainResult(
        model=ensemble,
        history=history,
        best_epoch=len(history["loss"]),
        seconds=seconds,
        examples_per_second=epochs * examples / seconds,
        steady_examples_per_second=float(np.median(steady)) if steady else None,
        timeline=ensemble_timeline(results),
        members=[
            member_summary(member, result)
            for member, result in zip(params.ensemble, results, strict=True)
        ],
    )


def member_summary(member: EnsembleMember, result: TrainResult) -> dict[str, Any]:
    """One member's line in the ensemble's provenance: what it is, how far it trained."""
    return {"architecture": member.architecture, "seed": member.seed, **result.outcome()}


def ensemble_timeline(results: Sequence[TrainResult]) -> dict[str, float]:
    """The first member's start and first steps, the last member's end."""
    timeline = dict(results[0].timeline)
    if "train_ended" in results[-1].timeline:
        timeline["train_ended"] = results[-1].timeline["train_ended"]
    return timeline


def combined_history(
    results: Sequence[TrainResult], *, val_loss: float, val_accuracy: float
) -> dict[str, list[float]]:
    """The members' epochs in turn, then the ensemble's row."""
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    history: dict[str, list[float]] = {key: [] for key in keys}
    for result in results:
        for key in keys:
            history[key] += result.history[key]
    best = [r.best_epoch - 1 for r in results]
    for key in ("loss", "accuracy"):
        at_best = [r.history[key][b] for r, b in zip(results, best, strict=True)]
        history[key].append(float(np.mean(at_best)))
    history["val_loss"].append(float(val_loss))
    history["val_accuracy"].append(float(val_accuracy))
    return history


def rows_of(history: dict[str, list[float]]) -> list[dict[str, float]]:
    columns = zip(*history.values(), strict=True)
    return [dict(zip(history, values, strict=True)) for values in columns]

"""Optimizer trials: the train stage chooses the optimizer on validation before it trains.

No one optimizer suits every corpus. On the wide model, Adam (0.005) leads on 20 Newsgroups
(validation 0.792 against Adagrad's 0.757), while Adagrad (1.0) leads on the small Debian
corpora (Japanese 0.778 against 0.732, Russian 0.697 against 0.658) and there matches the
evaluate stage's LinearSVC, which Adam trails. So where ``train.optimizer_trials`` is not
empty, one model of ``train.architecture`` (with the seed of the ensemble's first member of
that architecture) trains once with the section's own optimizer and once with each trial, in
this process, and the best validation accuracy (ties: the earlier) decides what the stage
then trains on its engine and strategy. Only the validation split is read: the test split
chooses nothing.

The winning trial is exactly the training of the ensemble's first member of that
architecture (the same parameters, seed and data). Where the stage trains in this process on
one device, it keeps that model as the member (:attr:`Choice.trained`) instead of training it
again.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import tf_keras as keras

from maas.config import Paths, TrainParams
from maas.training.fit import TrainResult, fit
from maas.training.worker import Inputs, read_inputs

log = logging.getLogger(__name__)


def candidates(params: TrainParams) -> list[tuple[str, float]]:
    """``(optimizer, learning_rate)`` pairs to try: the section's own first, no repeats."""
    pairs = [(params.optimizer, params.learning_rate)]
    pairs += [(t.optimizer, t.learning_rate) for t in params.optimizer_trials]
    return list(dict.fromkeys(pairs))


class Choice(NamedTuple):
    params: TrainParams  # with the winning optimizer
    rows: list[dict[str, Any]]  # one per trial, the winner ``chosen``; [] without trials
    inputs: Inputs | None = None  # the encoded splits the trials read, for the training
    trained: dict[int, TrainResult] | None = None  # ensemble index -> a member's training


def first_member(params: TrainParams) -> int | None:
    """The index of the ensemble's first member of ``train.architecture`` (``None``: none)."""
    found = (i for i, m in enumerate(params.ensemble) if m.architecture == params.architecture)
    return next(found, None)


def trial_params(params: TrainParams) -> TrainParams:
    """The one model a trial trains: the ensemble's first member of the architecture, or the
    single model."""
    index = first_member(params)
    return params.member(params.ensemble[index]) if index is not None else params


def choose_optimizer(params: TrainParams, paths: Paths, *, keep_winner: bool = False) -> Choice:
    """The parameters with the winning optimizer, and one row per trial.

    With fewer than two candidates nothing is trained and ``params`` come back unchanged.
    ``keep_winner``: where the winning trial is an ensemble member's training, keep its
    model in ``trained`` (else every trial's model is dropped).
    """
    pairs = candidates(params)
    if len(pairs) < 2:
        return Choice(params, [])
    inputs = read_inputs(paths)
    single = trial_params(params)
    member = first_member(params)
    keep = keep_winner and member is not None
    rows: list[dict[str, Any]] = []
    leader: dict[int, TrainResult] = {}  # the best trial so far, by index, where kept
    for index, (optimizer, learning_rate) in enumerate(pairs):
        log.info("optimizer trial %d/%d: %s, learning rate %g", index + 1, len(pairs),
                 optimizer, learning_rate)  # fmt: skip
        result = fit(
            single.with_optimizer(optimizer, learning_rate),
            tokenizer=inputs.tokenizer,
            train=inputs.train,
            validation=inputs.validation,
        )
        rows.append({"optimizer": optimizer, "learning_rate": learning_rate, **result.outcome()})
        log.info("optimizer trial %d/%d: validation accuracy %.4f", index + 1, len(pairs),
                 rows[-1]["val_accuracy"])  # fmt: skip
        if keep and best_row(rows) == index:
            leader = {index: result}
        del result
    best = best_row(rows)
    for index, row in enumerate(rows):
        row["chosen"] = index == best
    optimizer, learning_rate = pairs[best]
    log.info("optimizer trials: %s, learning rate %g trains the model", optimizer, learning_rate)
    chosen = params.with_optimizer(optimizer, learning_rate)
    if best not in leader:
        keras.backend.clear_session()  # no trial's graph or weights are kept
        return Choice(chosen, rows, inputs)
    return Choice(chosen, rows, inputs, {member: leader[best]})


def best_row(rows: list[dict[str, Any]]) -> int:
    """The index of the best validation accuracy (ties: the earlier, the section's own first)."""
    return max(range(len(rows)), key=lambda i: (rows[i]["val_accuracy"], -i))

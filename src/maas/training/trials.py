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
"""

from __future__ import annotations

import logging
from typing import Any

import tf_keras as keras

from maas.config import Paths, TrainParams
from maas.training.fit import fit
from maas.training.worker import read_inputs

log = logging.getLogger(__name__)


def candidates(params: TrainParams) -> list[tuple[str, float]]:
    """``(optimizer, learning_rate)`` pairs to try: the section's own first, no repeats."""
    pairs = [(params.optimizer, params.learning_rate)]
    pairs += [(t.optimizer, t.learning_rate) for t in params.optimizer_trials]
    return list(dict.fromkeys(pairs))


def trial_params(params: TrainParams) -> TrainParams:
    """The one model a trial trains: the ensemble's first member of the architecture, or the
    single model."""
    first = next((m for m in params.ensemble if m.architecture == params.architecture), None)
    return params.member(first) if first is not None else params


def choose_optimizer(params: TrainParams, paths: Paths) -> tuple[TrainParams, list[dict]]:
    """``params`` with the winning optimizer, and one row per trial (the winner ``chosen``).

    With fewer than two candidates nothing is trained and ``params`` come back unchanged.
    """
    pairs = candidates(params)
    if len(pairs) < 2:
        return params, []
    inputs = read_inputs(paths)
    single = trial_params(params)
    rows: list[dict[str, Any]] = []
    for index, (optimizer, learning_rate) in enumerate(pairs, start=1):
        log.info("optimizer trial %d/%d: %s, learning rate %g", index, len(pairs),
                 optimizer, learning_rate)  # fmt: skip
        result = fit(
            single.with_optimizer(optimizer, learning_rate),
            tokenizer=inputs.tokenizer,
            train=inputs.train,
            validation=inputs.validation,
        )
        rows.append({"optimizer": optimizer, "learning_rate": learning_rate, **result.outcome()})
        log.info("optimizer trial %d/%d: validation accuracy %.4f", index, len(pairs),
                 rows[-1]["val_accuracy"])  # fmt: skip
        del result
        keras.backend.clear_session()  # the trial's graph and weights are not kept
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_accuracy"], -i))
    for index, row in enumerate(rows):
        row["chosen"] = index == best
    optimizer, learning_rate = pairs[best]
    log.info("optimizer trials: %s, learning rate %g trains the model", optimizer, learning_rate)
    return params.with_optimizer(optimizer, learning_rate), rows

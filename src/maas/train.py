"""The train stage: fit the classifier on the data stage's splits and export it.

:func:`fit` is the worker: it builds the model inside a ``tf.distribute`` strategy scope and
trains it with early stopping (the best epoch's weights are restored), logging curves with
DVCLive and showing progress with a bar per epoch. :func:`run` is the stage entry point: read
the splits, fit, export the model with its provenance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from maas.config import Paths, TrainParams, to_dict
from maas.data import read_split
from maas.model import build_classifier, compile_classifier
from maas.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int  # 1-based epoch whose weights the model holds
    seconds: float
    examples_per_second: float


def make_dataset(
    ids: np.ndarray, labels: np.ndarray, *, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline of ``(token_ids, label)`` pairs."""
    dataset = tf.data.Dataset.from_tensor_slices((ids, labels))
    if shuffle:
        dataset = dataset.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class ProgressBar(keras.callbacks.Callback):
    """One tqdm bar over the epochs, with the latest losses and accuracies beside it."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.bar = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.epochs, desc="training", unit="epoch")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in (logs or {}).items()})

    def on_train_end(self, logs: dict | None = None) -> None:
        self.bar.close()


class LiveLogger(keras.callbacks.Callback):
    """Training curves through DVCLive: ``dvc plots show`` renders them."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        from dvclive import Live

        # dvcyaml=False: the curves are declared in the project's dvc.yaml, not appended.
        self.live = Live(str(directory), dvcyaml=None, save_dvc_exp=False, report=None)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name, value in (logs or {}).items():
            self.live.log_metric(name, float(value))
        self.live.next_step()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.live.end()


def fit(
    params: TrainParams,
    *,
    tokenizer: Tokenizer,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
) -> TrainResult:
    """Train a classifier on token ids; return it with its history.

    Args:
        params: the ``train`` section.
        tokenizer: gives the vocabulary size, sequence length and number of classes.
        train: ``(token_ids, labels)`` of the training split.
        validation: the same for the validation split (early stopping watches its loss).
        strategy: a ``tf.distribute`` strategy; the default strategy when ``None``.
        callbacks: extra callbacks (progress, logging, backups).
        verbose: Keras' own per-epoch printing (0: silent).
    """
    keras.utils.set_random_seed(params.seed)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = compile_classifier(
            build_classifier(
                vocabulary_size=tokenizer.vocabulary_size,
                sequence_length=tokenizer.sequence_length,
                n_classes=len(tokenizer.labels),
                embedding_dim=params.embedding_dim,
                lstm_units=params.lstm_units,
                bidirectional=params.bidirectional,
                dropout=params.dropout,
                embedding_dropout=params.embedding_dropout,
            ),
            learning_rate=params.learning_rate,
        )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=params.early_stopping_patience, restore_best_weights=True
    )
    train_ds = make_dataset(*train, batch_size=params.batch_size, shuffle=True, seed=params.seed)
    val_ds = make_dataset(*validation, batch_size=params.batch_size, shuffle=False, seed=0)
    start = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=params.epochs,
        callbacks=[stopper, *callbacks],
        verbose=verbose,
    ).history
    seconds = time.perf_counter() - start
    epochs_run = len(history["loss"])
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    return TrainResult(
        model=model,
        history={k: [float(v) for v in values] for k, values in history.items()},
        best_epoch=best_epoch,
        seconds=seconds,
        examples_per_second=epochs_run * len(train[0]) / seconds,
    )


def encode_split(paths: Paths, name: str, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    split = read_split(paths.split(name))
    return tokenizer.encode(split.texts), split.labels


def run(
    params: TrainParams,
    paths: Paths,
    *,
    strategy: tf.distribute.Strategy | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The train stage: fit on the data stage's outputs, export to ``models/classifier``.

    Returns the training summary that is also stored in the model's provenance.
    """
    from maas.export import export_classifier

    tokenizer = Tokenizer.load(paths.tokenizer)
    callbacks: list[keras.callbacks.Callback] = [LiveLogger(paths.dvclive_dir)]
    if progress:
        callbacks.append(ProgressBar(params.epochs))
    result = fit(
        params,
        tokenizer=tokenizer,
        train=encode_split(paths, "train", tokenizer),
        validation=encode_split(paths, "validation", tokenizer),
        strategy=strategy,
        callbacks=callbacks,
    )
    summary = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history["loss"]),
        "train_seconds": round(result.seconds, 1),
        "examples_per_second": round(result.examples_per_second, 1),
        "val_accuracy": result.history["val_accuracy"][result.best_epoch - 1],
        "val_loss": result.history["val_loss"][result.best_epoch - 1],
        "parameters": int(result.model.count_params()),
    }
    export_classifier(
        result.model,
        tokenizer,
        paths.classifier_dir,
        params=to_dict(params),
        metrics=summary,
        history=result.history,
        inputs={"data": paths.processed_dir},
        root=paths.root,
    )
    log.info("train: %s", summary)
    return summary

"""The classifier family: every architecture maps token ids to class probabilities.

``train.architecture`` picks one (:data:`ARCHITECTURES`):

- ``bilstm`` (:mod:`maas.model.bilstm`): embeddings -> (Bi)LSTM -> max over time, the reference.
- ``cnn`` (:mod:`maas.model.cnn`): embeddings -> parallel convolutions -> max over time.
- ``wide`` (:mod:`maas.model.wide`): word uni- and hashed bigram ids -> TF-IDF-weighted
  embedding bag -> hidden layer -> softmax, a wide model over TF-IDF features.

``train.ensemble`` averages several trained members into one model
(:mod:`maas.model.ensemble`). Every model is built from built-in Keras layers and TensorFlow
ops only, so ``model.keras`` loads without custom objects and converts to TFLite builtins.
"""

from __future__ import annotations

from typing import Protocol

import tf_keras as keras

from maas.config import ARCHITECTURE_PARAMS
from maas.model.bilstm import INPUT_NAME, build_classifier

ARCHITECTURES = tuple(ARCHITECTURE_PARAMS)  # the names maas.config accepts

__all__ = [
    "ARCHITECTURES",
    "INPUT_NAME",
    "build_architecture",
    "build_classifier",
    "compile_classifier",
]


OPTIMIZERS = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad}


class OptimizerSettings(Protocol):
    """What compiling reads: ``train.<architecture>`` or the ``train`` section (its model's)."""

    @property
    def optimizer(self) -> str: ...

    @property
    def learning_rate(self) -> float: ...


def compile_classifier(model: keras.Model, settings: OptimizerSettings) -> keras.Model:
    """``model`` compiled for training with one section's optimizer (:data:`OPTIMIZERS`) and
    learning rate, taken together so that neither can come from another section."""
    model.compile(
        optimizer=OPTIMIZERS[settings.optimizer](learning_rate=settings.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_architecture(
    architecture: str,
    section,
    *,
    vocabulary_size: int,
    sequence_length: int,
    n_classes: int,
    train_ids=None,
) -> keras.Model:
    """The uncompiled model of one architecture from its ``train.<architecture>`` section.

    Args:
        train_ids: the training split's token ids; the wide model's IDF comes from them
            (``None``: unit weights, for a model whose trained weights are loaded next).

    Raises:
        ValueError: an unknown architecture, or sizes that cannot make a model.
    """
    sizes = {
        "vocabulary_size": vocabulary_size,
        "sequence_length": sequence_length,
        "n_classes": n_classes,
    }
    if architecture == "bilstm":
        return build_classifier(
            **sizes,
            embedding_dim=section.embedding_dim,
            lstm_units=section.lstm_units,
            bidirectional=section.bidirectional,
            dropout=section.dropout,
            embedding_dropout=section.embedding_dropout,
            max_tokens=section.max_tokens,
        )
    if architecture == "cnn":
        from maas.model.cnn import build_cnn

        return build_cnn(
            **sizes,
            embedding_dim=section.embedding_dim,
            filters=section.filters,
            kernel_sizes=section.kernel_sizes,
            dropout=section.dropout,
            embedding_dropout=section.embedding_dropout,
            max_tokens=section.max_tokens,
        )
    if architecture == "wide":
        from maas.model.wide import build_wide, inverse_document_frequencies

        idf = None
        if train_ids is not None:
            idf = inverse_document_frequencies(
                train_ids, vocabulary_size=vocabulary_size, bigram_buckets=section.bigram_buckets
            )
        return build_wide(
            **sizes,
            bigram_buckets=section.bigram_buckets,
            embedding_dim=section.embedding_dim,
            hidden_units=section.hidden_units,
            dropout=section.dropout,
            sublinear_tf=section.sublinear_tf,
            idf=idf,
        )
    raise ValueError(f"unknown architecture {architecture!r} (expected one of {ARCHITECTURES})")


def embedding_shape(params, *, vocabulary_size: int) -> tuple[int, int]:
    """``(rows, columns)`` of the largest embedding table the ``train`` section trains (the one
    parameter-server training shards): words, plus the hashed bigram rows of the wide model."""
    names = [params.architecture, *(member.architecture for member in params.ensemble)]
    shapes = []
    for name in names:
        section = getattr(params, name)
        rows = vocabulary_size + (section.bigram_buckets if name == "wide" else 0)
        shapes.append((rows, section.embedding_dim))
    return max(shapes, key=lambda shape: shape[0] * shape[1])

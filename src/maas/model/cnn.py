"""The convolutional classifier: embeddings -> parallel 1-D convolutions -> max over time.

One convolution per width in ``kernel_sizes`` (n-gram detectors of those lengths), each
max-pooled over the post, concatenated, then dropout and the softmax (Kim, 2014).
``max_tokens`` reads only the first tokens of each post. Padding (id 0) has its own
embedding row, which the model learns to make harmless; no masking, so the graph is the same
in Keras, TFLite and ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence

import tf_keras as keras

from maas.model.bilstm import INPUT_NAME, first_tokens


def build_cnn(
    *,
    vocabulary_size: int,
    sequence_length: int,
    n_classes: int,
    embedding_dim: int = 128,
    filters: int = 128,
    kernel_sizes: Sequence[int] = (3, 4, 5),
    dropout: float = 0.5,
    embedding_dropout: float = 0.0,
    max_tokens: int | None = None,
    name: str = "cnn",
) -> keras.Model:
    """Token ids ``(batch, sequence_length)`` -> class probabilities.

    Raises:
        ValueError: a size that cannot make a model (e.g. a kernel longer than the input).
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if vocabulary_size < 3 or sequence_length < 1:
        raise ValueError("vocabulary_size must be >= 3 and sequence_length >= 1")
    length = min(sequence_length, max_tokens or sequence_length)
    if not kernel_sizes or max(kernel_sizes) > length or min(kernel_sizes) < 1:
        raise ValueError(f"kernel_sizes {list(kernel_sizes)}: each in [1, {length}]")
    token_ids = keras.Input(shape=(sequence_length,), dtype="int32", name=INPUT_NAME)
    x = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")(
        first_tokens(token_ids, max_tokens)
    )
    if embedding_dropout:
        x = keras.layers.SpatialDropout1D(embedding_dropout, name="embedding_dropout")(x)
    pooled = [
        keras.layers.GlobalMaxPooling1D(name=f"max_over_time_{width}")(
            keras.layers.Conv1D(filters, width, activation="relu", name=f"conv_{width}")(x)
        )
        for width in kernel_sizes
    ]
    x = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="features")(pooled)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    probabilities = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(token_ids, probabilities, name=name)

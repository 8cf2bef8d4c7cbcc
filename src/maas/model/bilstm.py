"""The text classifier: token ids -> Embedding -> (Bi)LSTM -> max over time -> softmax.

The seed's model read the LSTM's last state and ended in a single sigmoid unit, which can
only tell two classes apart. Here the output layer has one softmax unit per newsgroup, and
the LSTM's outputs are max-pooled over time: every step of a long post can contribute, not
only the last one. Padding (id 0) is masked, so the LSTM skips it; the pool does not read the
mask, and the masked steps' outputs are zeros, so they take part in the max as zeros.
"""

from __future__ import annotations

import tf_keras as keras

INPUT_NAME = "token_ids"


def build_classifier(
    *,
    vocabulary_size: int,
    sequence_length: int,
    n_classes: int,
    embedding_dim: int = 128,
    lstm_units: int = 64,
    bidirectional: bool = True,
    dropout: float = 0.3,
    embedding_dropout: float = 0.0,
    max_tokens: int | None = None,
    name: str = "classifier",
) -> keras.Model:
    """A Functional Keras model from token ids ``(batch, sequence_length)`` to class probabilities.

    ``max_tokens``: read only the first tokens of each post (a recurrent model's cost grows
    with the length; the tokenizer may keep more for the bag models); ``None``: all of them.

    Raises:
        ValueError: a size that cannot make a model.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if vocabulary_size < 3 or sequence_length < 1:
        raise ValueError("vocabulary_size must be >= 3 and sequence_length >= 1")
    token_ids = keras.Input(shape=(sequence_length,), dtype="int32", name=INPUT_NAME)
    x = keras.layers.Embedding(vocabulary_size, embedding_dim, mask_zero=True, name="embedding")(
        first_tokens(token_ids, max_tokens)
    )
    if embedding_dropout:
        # Drops whole embedding channels across the post: stronger regularisation than
        # per-value dropout, and what kept the LSTM from overfitting 20 Newsgroups here.
        x = keras.layers.SpatialDropout1D(embedding_dropout, name="embedding_dropout")(x)
    lstm = keras.layers.LSTM(lstm_units, return_sequences=True, name="lstm")
    x = keras.layers.Bidirectional(lstm, name="bilstm")(x) if bidirectional else lstm(x)
    x = keras.layers.GlobalMaxPooling1D(name="max_over_time")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    probabilities = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(token_ids, probabilities, name=name)


def first_tokens(token_ids, max_tokens: int | None):
    """The first ``max_tokens`` ids of each row (a slice in the graph), or all of them."""
    if max_tokens is None or max_tokens >= int(token_ids.shape[1]):
        return token_ids
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return token_ids[:, :max_tokens]

"""The wide model: a TF-IDF-weighted bag of word uni- and bigrams, a hidden layer, softmax.

It reads the shared tokenizer's ids and builds its features inside the graph with plain
integer ops, so it converts to TFLite builtins and needs no string lookup table:

- unigram ids are the token ids (``0`` is padding);
- the bigram of neighbours ``a, b`` (both real tokens) hashes to
  ``vocabulary_size + (a * vocabulary_size + b) mod bigram_buckets``, a row after the words;
- each id's IDF (``log((1 + n) / (1 + df)) + 1``, scikit-learn's smooth IDF, from the
  training split) comes from a frozen one-column table, so the bag ``sum_t tf(t) idf(t) E[t]``
  (``tf`` sublinear, ``1 + log tf``, by default)
  is the first layer of a network over TF-IDF features, computed as a gather instead of a
  huge sparse matrix product; it is then scaled to unit length.

The unit length comes from ``l2_normalize`` of the bag (TFLite's L2_NORMALIZATION, which
has an int8 kernel), not from dividing by the TF-IDF vector's norm: a full-integer DIV fails
on a denominator that rounds to zero (an empty post), and on validation the two did as well
(0.797 and 0.791). The bag is followed by dropout, an optional ReLU hidden layer, dropout and
the softmax. Padding and bigrams that touch padding map to row 0, whose IDF is 0, so they
add nothing.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from maas.batches import real_lengths
from maas.model.bilstm import INPUT_NAME

IDF_LAYER = "idf"
TF_LAYER = "sublinear_tf"
TABLE_LAYER = "embedding"


def sublinear_weights(positions: int) -> np.ndarray:
    """``w[c] = (1 + log c) / c``: summed over the ``c`` places of a term, ``1 + log c``."""
    counts = np.arange(positions + 1, dtype=np.float64)
    weights = np.zeros(positions + 1)
    weights[1:] = (1.0 + np.log(counts[1:])) / counts[1:]
    return weights.astype(np.float32)


def term_counts(ids: tf.Tensor) -> tf.Tensor:
    """For each place, how often its id occurs in the post: ``(batch, n)`` int32."""
    same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), tf.int32)
    return tf.reduce_sum(same, axis=2)


def trim_padding(token_ids: tf.Tensor) -> tf.Tensor:
    """The batch's ids up to its last real token (at least one place): padding adds nothing.

    The tokenizer pads at the end, so most of a batch of short posts is padding; cutting it
    before the ``n x n`` term counts and the gathers makes a batch of similar lengths cheap
    without changing any output. Found from the last non-zero id, so ids with zeros inside
    keep every real token.
    """
    ids = tf.cast(token_ids, tf.int32)
    return ids[:, : tf.maximum(tf.reduce_max(real_lengths(ids)), 1)]


def max_vocabulary_size() -> int:
    """The largest vocabulary whose bigram hash ``a * V + b`` fits in int32 (with bigrams)."""
    return int(np.sqrt(2**31 - 1))


def ngram_ids(token_ids: tf.Tensor, *, vocabulary_size: int, bigram_buckets: int) -> tf.Tensor:
    """Unigram ids then hashed bigram ids, ``(batch, 2 * length - 1)`` int32; 0 is nothing."""
    ids = tf.cast(token_ids, tf.int32)
    if bigram_buckets == 0:
        return ids
    first, second = ids[:, :-1], ids[:, 1:]
    hashed = tf.math.floormod(first * vocabulary_size + second, bigram_buckets) + vocabulary_size
    both_real = tf.logical_and(first > 0, second > 0)
    return tf.concat([ids, tf.where(both_real, hashed, tf.zeros_like(hashed))], axis=1)


def inverse_document_frequencies(
    token_ids: np.ndarray, *, vocabulary_size: int, bigram_buckets: int, batch: int = 2048
) -> np.ndarray:
    """Smooth IDF of every row of the table (words, then bigram buckets), row 0 set to 0."""
    rows = vocabulary_size + bigram_buckets
    frequencies = np.zeros(rows, np.int64)
    for start in range(0, len(token_ids), batch):
        chunk = ngram_ids(
            token_ids[start : start + batch],
            vocabulary_size=vocabulary_size,
            bigram_buckets=bigram_buckets,
        ).numpy()
        # One count per document and id: sort each row, keep first occurrences.
        ordered = np.sort(chunk, axis=1)
        first = np.ones_like(ordered, dtype=bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        np.add.at(frequencies, ordered[first], 1)
    documents = len(token_ids)
    idf = np.log((1.0 + documents) / (1.0 + frequencies)) + 1.0
    idf[0] = 0.0
    return idf.astype(np.float32)


def build_wide(
    *,
    vocabulary_size: int,
    sequence_length: int,
    n_classes: int,
    bigram_buckets: int = 2**18,
    embedding_dim: int = 64,
    hidden_units: int = 0,
    dropout: float = 0.5,
    sublinear_tf: bool = True,
    idf: np.ndarray | None = None,
    name: str = "wide",
) -> keras.Model:
    """Token ids ``(batch, sequence_length)`` -> probabilities, over uni- and bigrams.

    Args:
        idf: one weight per table row (:func:`inverse_document_frequencies` of the training
            split); ``None``: all ones but row 0 (for a model whose weights are loaded next).
        hidden_units: 0 goes straight from the bag to the softmax.
        sublinear_tf: weigh a term ``1 + log tf`` instead of ``tf`` (as scikit-learn's
            ``sublinear_tf``): each place counts its id's occurrences (an ``n x n`` equality,
            integer ops) and reads ``(1 + log c) / c`` from a frozen table, no division.

    Raises:
        ValueError: a size that cannot make a model.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if vocabulary_size < 3 or sequence_length < 1 or bigram_buckets < 0:
        raise ValueError("vocabulary_size must be >= 3, sequence_length >= 1, buckets >= 0")
    if bigram_buckets and vocabulary_size > max_vocabulary_size():
        raise ValueError(
            f"vocabulary_size {vocabulary_size}: with bigram_buckets the vocabulary must be"
            f" <= {max_vocabulary_size()} (a * V + b must fit in int32)"
        )
    token_ids = keras.Input(shape=(sequence_length,), dtype="int32", name=INPUT_NAME)
    x = tfidf_bag(
        token_ids,
        vocabulary_size=vocabulary_size,
        bigram_buckets=bigram_buckets,
        embedding_dim=embedding_dim,
        sublinear_tf=sublinear_tf,
        idf=idf,
    )
    if hidden_units:
        x = keras.layers.Dropout(dropout, name="bag_dropout")(x)
        x = keras.layers.Dense(hidden_units, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    probabilities = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(token_ids, probabilities, name=name)


def tfidf_bag(
    token_ids,
    *,
    vocabulary_size: int,
    bigram_buckets: int,
    embedding_dim: int,
    sublinear_tf: bool,
    idf: np.ndarray | None,
):
    """The unit-length TF-IDF-weighted embedding bag of a Keras input of token ids."""
    rows = vocabulary_size + bigram_buckets
    if idf is None:
        idf = np.ones(rows, np.float32)
        idf[0] = 0.0
    if idf.shape != (rows,):
        raise ValueError(f"idf: expected {rows} weights, got {idf.shape}")
    places = int(token_ids.shape[1])  # of the input; with bigrams a post has more terms
    ids = ngram_ids(
        trim_padding(token_ids), vocabulary_size=vocabulary_size, bigram_buckets=bigram_buckets
    )
    # The IDF as a frozen one-column embedding: a built-in layer, saved with the weights.
    idf_layer = keras.layers.Embedding(rows, 1, trainable=False, name=IDF_LAYER)
    weights = idf_layer(ids)
    # Set after building: a Constant initializer would copy the table into the model config.
    idf_layer.set_weights([idf[:, None]])
    vectors = keras.layers.Embedding(
        rows,
        embedding_dim,
        embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05),
        name=TABLE_LAYER,
    )(ids)
    if sublinear_tf:
        terms = 2 * places - 1 if bigram_buckets else places  # the most a term can occur
        tf_layer = keras.layers.Embedding(terms + 1, 1, trainable=False, name=TF_LAYER)
        weights = weights * tf_layer(term_counts(ids))
        tf_layer.set_weights([sublinear_weights(terms)[:, None]])
    total = tf.reduce_sum(vectors * weights, axis=1)
    return tf.math.l2_normalize(total, axis=1)  # an empty post stays a zero vector

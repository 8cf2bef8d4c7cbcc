"""Shuffled training batches of posts of similar length.

Posts are padded to one length, and most are short (median ~90 of 1,000 places in 20
Newsgroups), so a batch of randomly drawn posts nearly always holds one long post and costs
as much as a batch of long ones. Models that cut a batch's padding (the wide model,
:func:`maas.model.wide.trim_padding`) train about twice as fast on batches of similar
lengths: each epoch shuffles the posts, sorts each pool of :data:`POOL_BATCHES` batches by
length, cuts the pool into batches and shuffles those. Every post is still seen once an epoch
in a new order; only which posts share a batch is less random.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

POOL_BATCHES = 32  # batches sorted together: long enough runs of similar lengths


def real_lengths(token_ids: tf.Tensor) -> tf.Tensor:
    """Places up to the last non-zero id of each row (padding is ``0``, at the end), int32."""
    ids = tf.cast(token_ids, tf.int32)
    # 1, 2, ... along each row; a cumulative sum, as Keras' functional API mistakes a range
    # over a symbolic shape for a shape.
    places = tf.cumsum(tf.ones_like(ids), axis=1)
    return tf.reduce_max(tf.where(ids > 0, places, tf.zeros_like(ids)), axis=1)


def pad_to(token_ids: tf.Tensor, width: int) -> tf.Tensor:
    """A batch of ids zero-padded at the end to ``width`` columns (no-op when as wide)."""
    missing = width - tf.shape(token_ids)[1]
    padded = tf.pad(token_ids, [[0, 0], [0, tf.maximum(missing, 0)]])
    return tf.ensure_shape(padded, [None, width])


def shuffled_batches(
    ids: np.ndarray, targets, *, batch_size: int, seed: int, repeat: bool = False
) -> tf.data.Dataset:
    """``(ids, targets)`` in shuffled batches of similar lengths, reshuffled every epoch.

    ``targets`` is an array or a tuple of arrays with one row per post. The same seed gives
    the same batches in the same order on every process (multi-worker training relies on it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = tf.data.Dataset.from_tensor_slices((ids, targets))
    dataset = dataset.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def by_length(pool_ids, pool_targets):
        order = tf.argsort(real_lengths(pool_ids), stable=True)
        return tf.gather(pool_ids, order), tf.nest.map_structure(
            lambda t: tf.gather(t, order), pool_targets
        )

    return (
        dataset.batch(batch_size * POOL_BATCHES)
        .map(by_length)
        .unbatch()
        .batch(batch_size)
        .shuffle(POOL_BATCHES, seed=seed, reshuffle_each_iteration=True)
    )

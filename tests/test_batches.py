"""Training batches of similar length, and the wide model's padding cut that they pay off."""

from __future__ import annotations

import numpy as np

from maas.batches import POOL_BATCHES, real_lengths, shuffled_batches
from maas.model.wide import build_wide


def padded(lengths, width, rng):
    ids = np.zeros((len(lengths), width), np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, 50, length)
    return ids


def test_real_lengths_count_to_the_last_real_token():
    ids = np.array([[5, 0, 7, 0, 0], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]], np.int32)
    assert real_lengths(ids).numpy().tolist() == [3, 0, 5]


def test_every_post_once_an_epoch_in_batches_of_similar_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, 8 * POOL_BATCHES * 3 + 5)
    ids = padded(lengths, 200, rng)
    labels = np.arange(len(ids))
    dataset = shuffled_batches(ids, labels, batch_size=8, seed=1)
    epochs = []
    for _ in range(2):
        batches = [(x.numpy(), y.numpy()) for x, y in dataset]
        seen = np.concatenate([y for _, y in batches])
        assert sorted(seen.tolist()) == labels.tolist()  # each post once
        for x, y in batches:
            assert (x == ids[y]).all()  # ids and labels stay together
        epochs.append(seen)
        spans = [np.ptp(lengths[y]) for _, y in batches if len(y) == 8]
        # Random batches of 8 span ~150 of the 200 places; pooled ones a few.
        assert np.median(spans) < 20
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    again = np.concatenate(
        [y.numpy() for _, y in shuffled_batches(ids, labels, batch_size=8, seed=1)]
    )
    assert np.array_equal(again, epochs[0])  # the same seed, the same order


def test_the_wide_model_gives_a_post_the_same_output_alone_or_beside_a_long_one():
    rng = np.random.default_rng(0)
    model = build_wide(
        vocabulary_size=50, sequence_length=40, n_classes=3, bigram_buckets=16, embedding_dim=4
    )
    ids = padded([3, 40, 0, 12], 40, rng)
    ids[0, 1] = 0  # a zero inside the real tokens is not the end of the post
    together = model.predict(ids, verbose=0)
    alone = np.concatenate([model.predict(ids[i : i + 1], verbose=0) for i in range(len(ids))])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    # Only the first 3 places are real: the same post without them differs.
    shorter = ids[:1].copy()
    shorter[0, 2] = 0
    assert not np.allclose(model.predict(shorter, verbose=0), together[:1])


def test_trimmed_ids_give_the_same_batches_once_padded_back():
    from maas.tokenizer import Tokenizer
    from maas.training.fit import make_dataset

    rng = np.random.default_rng(2)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 12))) for _ in range(50)]
    tokenizer = Tokenizer.fit(texts, vocabulary_size=40, sequence_length=32, labels=("a", "b"))
    full, trimmed = tokenizer.encode(texts), tokenizer.encode(texts, trim=True)
    assert trimmed.shape == (50, 11) and np.array_equal(full[:, :11], trimmed)
    labels = rng.integers(0, 2, 50)
    for shuffle in (True, False):
        one, two = (
            make_dataset(ids, labels, batch_size=8, shuffle=shuffle, seed=3, width=32)
            for ids in (full, trimmed)
        )
        for (x1, y1), (x2, y2) in zip(one, two, strict=True):
            assert x2.shape[1] == 32
            np.testing.assert_array_equal(x1.numpy(), x2.numpy())
            np.testing.assert_array_equal(y1.numpy(), y2.numpy())

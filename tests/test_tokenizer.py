"""The shared tokenizer, and its TensorFlow twin inside the SavedModel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maas.tokenizer import PAD_ID, UNK_ID, Tokenizer, split_tokens


def make(texts=("the cat sat", "the dog ran", "the cat ran"), size=6, length=4) -> Tokenizer:
    return Tokenizer.fit(texts, vocabulary_size=size, sequence_length=length, labels=("a", "b"))


def test_split_lowercases_ascii_and_separates_on_anything_else():
    assert split_tokens("Hello, World!! it's 42-ish\n\tÉcole") == [
        "hello", "world", "it", "s", "42", "ish", "cole"
    ]  # fmt: skip


def test_vocabulary_is_most_frequent_first_ties_by_name():
    tok = make()
    assert tok.vocabulary == ("", "[UNK]", "the", "cat", "ran", "dog")


def test_encode_maps_unknown_truncates_and_pads():
    tok = make(size=4, length=4)  # keeps "the" and "cat"
    ids = tok.encode(["the cat sat on the mat", "cat", ""])
    assert ids.dtype == np.int32 and ids.shape == (3, 4)
    assert ids[0].tolist() == [2, 3, UNK_ID, UNK_ID]
    assert ids[1].tolist() == [3, PAD_ID, PAD_ID, PAD_ID]
    assert ids[2].tolist() == [PAD_ID] * 4


def test_save_load_round_trip_and_fingerprint(tmp_path):
    tok = make()
    loaded = Tokenizer.load(tok.save(tmp_path / "tok.json"))
    assert loaded == tok and loaded.fingerprint() == tok.fingerprint()
    assert make(length=5).fingerprint() != tok.fingerprint()


def test_corrupt_or_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        Tokenizer.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a maas-tokenizer"):
        Tokenizer.load(tmp_path / "other.json")


def test_vocabulary_must_reserve_padding_and_unknown():
    with pytest.raises(ValueError, match="padding"):
        Tokenizer(("a", "b"), 3, ("x", "y"))


@pytest.fixture(scope="module")
def graph_tokenizer():
    from maas.export import tokenize_graph

    tok = make(
        texts=["Space shuttle launch", "the engine of a car", "gun laws and the 2nd amendment"],
        size=12,
        length=6,
    )
    return tok, tokenize_graph(tok)


TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60
) | st.sampled_from(["The SPACE shuttle!", "car's engine", "  ", "ÉCOLE über naïve", "a\u00a0b"])


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=4))
def test_tensorflow_twin_gives_identical_ids(graph_tokenizer, texts):
    import tensorflow as tf

    tok, graph = graph_tokenizer
    expected = tok.encode(texts)
    actual = graph(tf.constant(texts, dtype=tf.string)).numpy()
    np.testing.assert_array_equal(actual, expected)

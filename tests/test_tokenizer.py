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


def test_split_casefolds_and_separates_on_anything_but_letters_marks_and_digits():
    assert split_tokens("Hello, World!! it's 42-ish\n\tÉcole") == [
        "hello", "world", "it", "s", "42", "ish", "école"
    ]  # fmt: skip


def test_letters_of_every_script_are_kept_and_normalised():
    assert split_tokens("café naïve") == ["café", "naïve"]
    assert split_tokens("cafe\u0301") == ["café"]  # decomposed input, the same token
    assert split_tokens("Straße ΣΊΣΥΦΟΣ Москва ﬁne x²") == [
        "strasse", "σίσυφοσ", "москва", "fine", "x2"
    ]  # fmt: skip
    assert split_tokens("مرحبا بالعالم नमस्ते") == ["مرحبا", "بالعالم", "नमस्ते"]
    assert split_tokens("한국어 텍스트") == ["한국어", "텍스트"]


def test_scripts_without_spaces_become_characters_and_bigrams():
    assert split_tokens("古代战争 0 A.D.") == [
        "古",
        "古代",
        "代",
        "代战",
        "战",
        "战争",
        "争",
        "0",
        "a",
        "d",
    ]
    assert split_tokens("ｶﾀｶﾅ") == ["カ", "カタ", "タ", "タカ", "カ", "カナ", "ナ"]  # half-width
    assert split_tokens("abc日本def") == ["abc", "日", "日本", "本", "def"]


def test_ascii_rule_of_earlier_tokenizer_files_still_loads(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({
        "format": "maas-tokenizer/1", "sequence_length": 3, "labels": ["a", "b"],
        "vocabulary": ["", "[UNK]", "cole", "caf"],
    }))  # fmt: skip
    old = Tokenizer.load(path)
    assert old.rule == "ascii"
    assert old.encode(["École café"]).tolist() == [[2, 3, 0]]
    assert Tokenizer.load(old.save(tmp_path / "again.json")) == old


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

    texts = [
        "Space shuttle launch", "the engine of a car", "gun laws and the 2nd amendment",
        "École naïve Straße", "古代战争实时策略游戏", "ひらがなとカタカナ", "Москва ΣΊΣΥΦΟΣ",
    ]  # fmt: skip
    tok = make(texts=texts, size=60, length=12)
    return tok, tokenize_graph(tok)


# Random Unicode of every category but surrogates (which UTF-8 cannot carry), and samples
# that hit the rule's corners: decomposed marks, no-space runs, compatibility forms.
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60
) | st.sampled_from([
    "The SPACE shuttle!", "car's engine", "  ", "ÉCOLE über naïve", "a\u00a0b", "cafe\u0301",
    "古代战争 0 A.D.", "ｶﾀｶﾅ and ﬁne", "abc日本def", "ภาษาไทย", "x²½", "İstanbul ǅ",
])  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=4))
def test_tensorflow_twin_gives_identical_tokens_and_ids(graph_tokenizer, texts):
    import tensorflow as tf

    tok, graph = graph_tokenizer
    batch = tf.constant(texts, dtype=tf.string)
    tokens = [[token.decode() for token in row] for row in graph.token_strings(batch).to_list()]
    assert tokens == [tok.tokens(text) for text in texts]
    np.testing.assert_array_equal(graph(batch).numpy(), tok.encode(texts))
    # A vocabulary fitted on these very texts: every token is looked up, not only [UNK].
    own = Tokenizer.fit(texts, vocabulary_size=400, sequence_length=16, labels=("a", "b"))
    from maas.export import tokenize_graph

    np.testing.assert_array_equal(tokenize_graph(own)(batch).numpy(), own.encode(texts))


def test_only_the_first_characters_are_read_alike_in_both_twins(graph_tokenizer):
    import tensorflow as tf

    from maas.export import tokenize_graph

    tok = make(texts=["ab cd", "战争"], size=10, length=4)  # reads 16 x 4 = 64 characters
    assert tok.max_chars == 64
    long_texts = ["x" * 63 + " ab cd", "战" * 70 + " cd", " " * 64 + "ab"]
    assert [tok.tokens(text) for text in long_texts] == [
        ["x" * 63],
        ["战", "战战"] * 63 + ["战"],
        [],
    ]
    graph = tokenize_graph(tok)
    batch = tf.constant(long_texts)
    tokens = [[t.decode() for t in row] for row in graph.token_strings(batch).to_list()]
    assert tokens == [tok.tokens(text) for text in long_texts]
    np.testing.assert_array_equal(graph(batch).numpy(), tok.encode(long_texts))

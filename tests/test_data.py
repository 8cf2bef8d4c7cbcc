"""The data stage on the real corpus (a few newsgroups), and its failure modes."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
from conftest import small_params_dict, write_project

from maas import config, data, sources, splits
from maas.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus_available):
    root = write_project(tmp_path_factory.mktemp("data"))
    params = config.load_params(root / "params.yaml")
    paths = config.project_paths(root / "params.yaml")
    return params.data, paths, data.run(params.data, paths)


def test_splits_tokenizer_and_card_are_written(prepared):
    params, paths, card = prepared
    parts = splits.read_splits(paths)
    tokenizer = Tokenizer.load(paths.tokenizer)
    assert tokenizer.labels == tuple(sorted(params.categories))
    assert tokenizer.vocabulary_size == params.vocabulary_size
    assert tokenizer.sequence_length == params.sequence_length
    for name, split in parts.items():
        assert card["splits"][name]["posts"] == len(split) > 0
        assert set(np.unique(split.labels)) == {0, 1, 2}
    assert (paths.metrics_dir / "data.json").is_file()
    assert (paths.processed_dir / "provenance.json").is_file()


def test_subsampling_caps_every_class(prepared):
    params, paths, _ = prepared
    test = splits.read_split(paths.split("test"))
    assert np.bincount(test.labels).max() <= params.max_documents_per_class


def test_validation_is_stratified_and_disjoint_from_training(prepared):
    params, paths, _ = prepared
    train, val = (
        splits.read_split(paths.split("train")),
        splits.read_split(paths.split("validation")),
    )
    assert not set(train.texts) & set(val.texts)
    share = np.bincount(val.labels) / (np.bincount(val.labels) + np.bincount(train.labels))
    assert np.allclose(share, params.validation_fraction, atol=0.05)
    assert all(text.strip() for text in train.texts + val.texts)  # empty posts dropped


def test_tokenizer_is_fitted_on_the_training_split_only(prepared):
    _, paths, _ = prepared
    train = splits.read_split(paths.split("train"))
    tokenizer = Tokenizer.load(paths.tokenizer)
    refit = Tokenizer.fit(
        train.texts,
        vocabulary_size=tokenizer.vocabulary_size,
        sequence_length=tokenizer.sequence_length,
        labels=tokenizer.labels,
    )
    assert refit.vocabulary == tokenizer.vocabulary


def test_the_stage_is_deterministic(prepared, tmp_path):
    params, paths, _ = prepared
    again = config.project_paths(write_project(tmp_path) / "params.yaml")
    data.run(params, again)
    for name in splits.SPLITS:
        assert again.split(name).read_bytes() == paths.split(name).read_bytes()


def test_missing_corpus_says_how_to_provide_it(tmp_path, monkeypatch):
    from sklearn.datasets import _twenty_newsgroups

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(_twenty_newsgroups, "_download_20newsgroups", offline)
    paths = config.project_paths(write_project(tmp_path / "p") / "params.yaml")
    params = config.load_params(paths.root / "params.yaml").data
    with pytest.raises(sources.CorpusUnavailableError, match="SCIKIT_LEARN_DATA"):
        data.run(params, paths, data_home=str(tmp_path / "empty-home"))
    assert not paths.processed_dir.exists()  # nothing half-written


def test_unknown_category_is_named(tmp_path, corpus_available):
    raw = small_params_dict()
    raw["data"]["categories"] = ["sci.space", "sci.spaceships"]
    root = write_project(tmp_path, raw)
    params = config.load_params(root / "params.yaml").data
    with pytest.raises(ValueError, match="sci.spaceships"):
        data.run(params, config.project_paths(root / "params.yaml"))


def test_reading_a_split_before_the_stage_ran(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the data stage first"):
        splits.read_split(tmp_path / "train.jsonl")

"""Every architecture (cnn, wide, an ensemble) through the pipeline on tiny models.

For each: trained by the train stage's own code, exported, reloaded from raw text; then every
compression variant built by the compress stage, which reloads each from disk through
:mod:`maas.runtime` (SavedModel, TFLite, ONNX: the serving runtimes) and checks it against the
in-memory model before it counts. The BiLSTM takes the same path in test_compress_stage.py.
The tf.distribute strategies are checked for each architecture in test_distributed_training.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml
from conftest import merge, small_params_dict, write_project

from maas import config, export, runtime
from maas.compress import stage
from maas.config import COMPRESSION_VARIANTS
from maas.model import build_architecture
from maas.model.ensemble import ensemble_members
from maas.model.wide import (
    inverse_document_frequencies,
    ngram_ids,
    sublinear_weights,
    term_counts,
)
from maas.provenance import read_json
from maas.splits import read_split
from maas.tokenizer import Tokenizer
from maas.training import stage as train
from maas.training.ensemble import EnsembleMemberError

pytestmark = pytest.mark.slow

ENSEMBLE = [{"architecture": "wide", "seed": 1}, {"architecture": "cnn", "seed": 2}]
CASES = {
    "cnn": {"architecture": "cnn"},
    "wide": {"architecture": "wide"},
    "ensemble": {"architecture": "wide", "ensemble": ENSEMBLE},
}
# Small budgets that still exercise every technique (the full list of variants).
COMPRESS = {
    "variants": list(COMPRESSION_VARIANTS),
    "prune": {"epochs": 1, "ramp_epochs": 1, "frequency": 1, "layers": ["embedding", "dense"]},
    "qat": {"epochs": 1},
    "distill": {"epochs": 2, "embedding_dim": 4},
    "representative_examples": 16,
}


QUICK_TIMING = {"latency_examples": 3, "throughput_batches": 1, "warmup": 1, "check_examples": 8}


@pytest.fixture(scope="module")
def data_project(tmp_path_factory, corpus_available) -> Path:
    from maas import data

    root = write_project(tmp_path_factory.mktemp("architectures"))
    params = config.load_params(root / "params.yaml")
    data.run(params.data, config.project_paths(root / "params.yaml"))
    return root


def project_for(data_project: Path, case: str, target: Path) -> tuple[Path, config.Params]:
    raw = merge(
        small_params_dict(),
        {"train": CASES[case], "compress": COMPRESS, "settings": {"compress": QUICK_TIMING}},
    )
    root = write_project(target, raw)
    shutil.copytree(data_project / "data" / "processed", root / "data" / "processed")
    return root, config.load_params(root / "params.yaml")


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, data_project, tmp_path_factory) -> tuple[str, Path, dict]:
    root, params = project_for(data_project, request.param, tmp_path_factory.mktemp("case"))
    paths = config.project_paths(root / "params.yaml")
    summary = train.run(params.train, paths, settings=params.settings.train, progress=False)
    return request.param, root, summary


def test_the_stage_trains_and_exports_the_chosen_architecture(trained):
    case, root, summary = trained
    directory = root / "models" / "classifier"
    model = export.load_keras_model(directory)  # no custom objects needed
    members = ensemble_members(model)
    if case == "ensemble":
        assert [m.name for m in members] == ["member_0_wide", "member_1_cnn"]
        record = read_json(directory / "provenance.json")
        assert [m["architecture"] for m in record["params"]["ensemble"]] == ["wide", "cnn"]
        # Each member's own line: its best epoch among its epochs, the validation there.
        lines = record["metrics"]["members"]
        assert [(m["architecture"], m["seed"]) for m in lines] == [("wide", 1), ("cnn", 2)]
        history = export.read_history(directory)
        assert sum(m["epochs_run"] for m in lines) == len(history["val_accuracy"]) - 1
        for line in lines:
            assert 1 <= line["best_epoch"] <= line["epochs_run"] and line["train_seconds"] > 0
        assert summary["steady_examples_per_second"] > 0  # the members' median
    else:
        assert members == [] and model.name == case
    assert summary["parameters"] == model.count_params() > 0
    history = export.read_history(directory)
    assert summary["val_accuracy"] == history["val_accuracy"][summary["best_epoch"] - 1]
    # One SavedModel, one signature on raw text, the same numbers as Keras on token ids.
    texts = read_split(root / "data" / "processed" / "test.jsonl").texts[:20] + ["", "✓"]
    tokenizer = Tokenizer.load(directory / "tokenizer.json")
    expected = model.predict(tokenizer.encode(texts), verbose=0)
    served = runtime.load_runtime(directory).predict(texts)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, rtol=1e-5)


def test_every_compression_variant_reloads_and_matches(trained):
    case, root, _ = trained
    paths = config.project_paths(root / "params.yaml")
    params = config.load_params(root / "params.yaml")
    result = stage.run(params.compress, paths, settings=params.settings.compress)
    rows = {row["variant"]: row for row in result["rows"]}
    assert set(COMPRESSION_VARIANTS) <= set(rows)
    # The stage reloaded each from disk and compared it with the in-memory model.
    assert set(result["round_trip_max_abs_diff"]) == set(COMPRESSION_VARIANTS)
    assert max(result["round_trip_max_abs_diff"].values()) <= stage.ROUNDTRIP_TOLERANCE
    assert rows["float32"]["agreement_with_teacher"] == 1.0
    assert rows["onnx"]["agreement_with_teacher"] == 1.0
    assert rows["float16"]["agreement_with_teacher"] >= 0.95
    for name in ("dynamic_int8", "int8"):
        assert rows[name]["agreement_with_teacher"] >= 0.8, (case, name)
    assert rows["pruned"]["sparsity"] > 0.5 * COMPRESS["prune"].get("target_sparsity", 0.8)
    assert rows["int8"]["file_bytes"] < rows["float32"]["file_bytes"]
    if case == "ensemble":
        kinds = {runtime.load_runtime(paths.compressed_dir / n).kind for n in ("int8", "onnx")}
        assert kinds == {"tflite", "onnx"}


def test_wide_features_are_integer_ops_and_idf_from_training_ids():
    ids = np.array([[5, 6, 5, 0, 0], [6, 7, 0, 0, 0], [0, 0, 0, 0, 0]], np.int32)
    grams = ngram_ids(ids, vocabulary_size=10, bigram_buckets=7).numpy()
    assert grams.shape == (3, 9)
    np.testing.assert_array_equal(grams[:, :5], ids)
    assert grams[0, 5] == 10 + (5 * 10 + 6) % 7  # the bigram (5, 6), after the 10 words
    assert (grams[2] == 0).all() and grams[0, 7] == 0  # bigrams touching padding: nothing
    idf = inverse_document_frequencies(ids, vocabulary_size=10, bigram_buckets=7)
    assert idf.shape == (17,) and idf[0] == 0.0
    # 6 is in two of three documents, 5 in one (twice): rarer means heavier.
    assert idf[5] > idf[6] > 0 and idf[5] == pytest.approx(np.log(4 / 2) + 1)
    # Sublinear TF: 5 occurs twice in row 0, so each of its places weighs (1 + log 2) / 2.
    counts = term_counts(tf.constant(ids)).numpy()
    np.testing.assert_array_equal(counts[0, :3], [2, 1, 2])
    weights = sublinear_weights(5)
    assert weights[1] == 1.0 and 2 * weights[2] == pytest.approx(1 + np.log(2))


def test_wide_model_saves_loads_and_ignores_padding(tmp_path):
    section = config.WideParams(
        bigram_buckets=32, embedding_dim=4, hidden_units=8, sublinear_tf=True, dropout=0.1,
        batch_size=4, epochs=1, learning_rate=0.01, optimizer="adam",
    )  # fmt: skip
    ids = np.array([[3, 4, 5, 0], [3, 4, 5, 9], [0, 0, 0, 0]], np.int32)
    model = build_architecture(
        "wide", section, vocabulary_size=12, sequence_length=4, n_classes=3, train_ids=ids
    )
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(ids, verbose=0), model.predict(ids, verbose=0))
    np.testing.assert_allclose(  # the IDF is saved with the weights, not recomputed
        loaded.get_layer("idf").get_weights()[0], model.get_layer("idf").get_weights()[0]
    )
    assert np.isfinite(model.predict(ids[2:], verbose=0)).all()  # an empty post


def test_adagrad_learns_and_leaves_the_rows_of_unseen_terms_alone():
    """``optimizer: adagrad`` trains the wide model, stepping only the table rows it reads."""
    from maas.model import compile_classifier

    section = config.WideParams(
        bigram_buckets=0, embedding_dim=4, hidden_units=0, sublinear_tf=True, dropout=0.0,
        batch_size=8, epochs=1, learning_rate=0.5, optimizer="adagrad",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    ids = np.where(labels[:, None] == 1, rng.integers(2, 6, (64, 6)), rng.integers(6, 10, (64, 6)))
    ids = ids.astype(np.int32)
    keras.utils.set_random_seed(0)
    model = build_architecture(
        "wide", section, vocabulary_size=16, sequence_length=6, n_classes=2, train_ids=ids
    )
    compile_classifier(model, section)
    assert isinstance(model.optimizer, keras.optimizers.Adagrad)
    table = model.get_layer("embedding")
    before = table.get_weights()[0].copy()
    history = model.fit(ids, labels, batch_size=8, epochs=5, verbose=0)
    assert history.history["accuracy"][-1] > 0.95
    after = table.get_weights()[0]
    np.testing.assert_array_equal(after[10:], before[10:])  # ids 10-15 never occur
    assert np.abs(after[2:10] - before[2:10]).min(axis=1).max() > 0


def test_a_member_that_cannot_be_built_fails_before_any_training(data_project, tmp_path):
    raw = small_params_dict()
    raw["train"]["architecture"] = "wide"
    raw["train"]["ensemble"] = ENSEMBLE
    raw["train"]["cnn"]["kernel_sizes"] = [500]  # longer than the 64 tokens
    root = write_project(tmp_path, raw)
    shutil.copytree(data_project / "data" / "processed", root / "data" / "processed")
    params = config.load_params(root / "params.yaml")
    with pytest.raises(EnsembleMemberError, match=r"train.ensemble\[1\] \(cnn, seed 2\)"):
        train.run(
            params.train,
            config.project_paths(root / "params.yaml"),
            settings=params.settings.train,
            progress=False,
        )
    assert not (root / "models" / "classifier").exists()  # no half-written model
    assert yaml.safe_load((root / "params.yaml").read_text())["train"]["ensemble"]


@pytest.mark.parametrize("strategy", ["mirrored", "multi_worker", "parameter_server"])
def test_every_strategy_trains_the_ensemble_of_wide_and_cnn(data_project, tmp_path, strategy):
    """One run per strategy covers both new architectures (an ensemble trains each in turn)."""
    root, _ = project_for(data_project, "ensemble", tmp_path)
    settings = {"strategy": strategy, "replicas": 2, "workers": 2, "parameter_servers": 2}
    overrides = {f"train.distribute.{key}": value for key, value in settings.items()}
    if strategy != "mirrored":  # Adagrad's sparse updates on a sharded or replicated table
        overrides.update({"train.wide.optimizer": "adagrad", "train.wide.learning_rate": 0.5})
    params = config.load_params(root / "params.yaml", overrides)
    paths = config.project_paths(root / "params.yaml")
    if strategy == "mirrored":  # a fresh process: logical CPUs are set before TensorFlow starts
        command = [sys.executable, "-m", "maas.cli", "train", "--strategy", "mirrored"]
        command += ["--replicas", "2", "--params-file", str(root / "params.yaml")]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, completed.stderr[-3000:]
    else:
        train.run(params.train, paths, settings=params.settings.train)
    record = read_json(paths.classifier_dir / "provenance.json")
    assert record["metrics"]["strategy"] == strategy
    assert record["params"]["wide"]["optimizer"] == overrides.get("train.wide.optimizer", "adam")
    model = export.load_keras_model(paths.classifier_dir)
    assert [m.name for m in ensemble_members(model)] == ["member_0_wide", "member_1_cnn"]
    served = runtime.load_runtime(paths.classifier_dir)
    probabilities = served.predict(["the rocket reached orbit", "my car needs new brakes"])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_bilstm_reading_the_first_tokens_converts_to_the_same_function():
    from maas.compress import graph, quantize
    from maas.model import build_classifier

    keras.utils.set_random_seed(0)
    model = build_classifier(
        vocabulary_size=30, sequence_length=12, n_classes=3, embedding_dim=4, lstm_units=3,
        max_tokens=7,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    ids = np.zeros((5, 12), np.int32)
    for row, length in enumerate([0, 3, 7, 9, 12]):
        ids[row, :length] = rng.integers(1, 30, size=length)
    expected = model(ids, training=False).numpy()
    np.testing.assert_allclose(graph.FusedClassifier(model)(ids).numpy(), expected, atol=1e-6)
    converted = quantize.to_tflite(model, mode="float32")
    assert converted.info["ops"].get("UNIDIRECTIONAL_SEQUENCE_LSTM") == 2
    np.testing.assert_allclose(converted.predict_ids(ids), expected, atol=1e-5)
    # Tokens after the first 7 change nothing.
    changed = ids.copy()
    changed[:, 7:] = np.where(changed[:, 7:] > 0, 5, 0)
    np.testing.assert_allclose(model(changed, training=False).numpy(), expected, atol=1e-6)

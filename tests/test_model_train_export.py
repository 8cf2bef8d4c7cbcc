"""Model, training, export and provenance: a tiny model really trained, exported and reloaded."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from maas import config, export, runtime
from maas.model import build_classifier
from maas.provenance import atomic_dir, read_json, verify_files
from maas.splits import read_split
from maas.tokenizer import Tokenizer


def test_classifier_outputs_one_distribution_per_post():
    model = build_classifier(
        vocabulary_size=50, sequence_length=7, n_classes=20, embedding_dim=4, lstm_units=3
    )
    ids = np.random.default_rng(0).integers(0, 50, size=(5, 7)).astype(np.int32)
    ids[0] = 0  # an all-padding row must still give a distribution
    probabilities = model.predict(ids, verbose=0)
    assert probabilities.shape == (5, 20)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_classifier_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="n_classes"):
        build_classifier(vocabulary_size=50, sequence_length=7, n_classes=1)


def test_training_lowers_the_loss_and_keeps_the_best_epoch(small_project):
    history = export.read_history(small_project / "models" / "classifier")
    assert history["loss"][-1] < history["loss"][0]
    record = read_json(small_project / "models" / "classifier" / "provenance.json")
    best = record["metrics"]["best_epoch"]
    assert history["val_loss"][best - 1] == min(history["val_loss"])


def test_provenance_records_params_inputs_and_file_hashes(small_project):
    directory = small_project / "models" / "classifier"
    record = read_json(directory / "provenance.json")
    params = config.load_params(small_project / "params.yaml")
    assert record["params"] == config.to_dict(params.train)
    assert record["stage"] == "train" and "data" in record["inputs"]
    assert set(record["files"]) == {
        "saved_model", "model.keras", "tokenizer.json", "history.json", "reference.json"
    }  # fmt: skip
    tokenizer = Tokenizer.load(directory / "tokenizer.json")
    assert record["tokenizer_fingerprint"] == tokenizer.fingerprint()
    assert verify_files(directory) == []


def test_the_artifact_carries_the_statistics_drift_compares_with(small_project):
    directory = small_project / "models" / "classifier"
    reference = read_json(directory / "reference.json")
    tokenizer = Tokenizer.load(directory / "tokenizer.json")
    train = read_split(small_project / "data" / "processed" / "train.jsonl")
    validation = read_split(small_project / "data" / "processed" / "validation.jsonl")
    assert reference["texts"] == len(train) and reference["held_out_texts"] == len(validation)
    assert list(reference["classes"]) == list(reference["predicted"]) == list(tokenizer.labels)
    counts = np.bincount(train.labels, minlength=len(tokenizer.labels)) / len(train)
    np.testing.assert_allclose(list(reference["classes"].values()), counts, atol=1e-4)
    for name in ("length", "unknown", "scripts", "languages", "classes", "predicted"):
        shares = reference[name].values() if isinstance(reference[name], dict) else reference[name]
        assert sum(shares) == pytest.approx(1.0, abs=1e-3), name
    assert (
        reference["scripts"]["Latin"] > 0.99
        and max(reference["languages"], key=reference["languages"].get) == "en"
    )
    # Held-out texts have unknown tokens; training texts would all say 0.
    assert reference["unknown"][0] < 1.0


def test_saved_model_on_raw_text_matches_keras_on_token_ids(small_project):
    directory = small_project / "models" / "classifier"
    texts = read_split(small_project / "data" / "processed" / "test.jsonl").texts[:40]
    texts += ["", "   ", "ÜNÏCODE only ✓"]
    tokenizer = Tokenizer.load(directory / "tokenizer.json")
    keras_probabilities = export.load_keras_model(directory).predict(
        tokenizer.encode(texts), verbose=0
    )
    served = runtime.load_runtime(directory)
    assert served.kind == "saved_model" and served.labels == tokenizer.labels
    np.testing.assert_allclose(served.predict(texts), keras_probabilities, atol=1e-5)


def test_corrupt_artifact_is_refused(small_project, tmp_path):
    copy = tmp_path / "classifier"
    shutil.copytree(small_project / "models" / "classifier", copy)
    variables = next((copy / "saved_model" / "variables").glob("variables.data-*"))
    variables.write_bytes(variables.read_bytes()[:100])  # truncated
    assert any("saved_model" in problem for problem in verify_files(copy))
    with pytest.raises(runtime.ArtifactError, match="differs from its recorded hash"):
        runtime.load_runtime(copy)
    with pytest.raises(runtime.ArtifactError, match="no such artifact folder"):
        runtime.load_runtime(tmp_path / "missing")


def test_atomic_dir_leaves_the_old_artifact_on_failure(tmp_path):
    target = tmp_path / "artifact"
    with atomic_dir(target) as out:
        (out / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as out:
        (out / "weights").write_text("half")
        raise RuntimeError("interrupted")
    assert (target / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_atomic_dir_clears_leftovers_of_a_killed_run(tmp_path):
    (tmp_path / ".artifact.tmp-dead").mkdir()
    with atomic_dir(tmp_path / "artifact") as out:
        (out / "weights").write_text("v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def trial_project(small_project, tmp_path):
    """A copy of the small project's splits and parameters, without its test split."""
    shutil.copytree(small_project / "data" / "processed", tmp_path / "data" / "processed")
    (tmp_path / "data" / "processed" / "test.jsonl").unlink()  # trials must not need it
    shutil.copy(small_project / "params.yaml", tmp_path / "params.yaml")
    return config.load_params(tmp_path / "params.yaml"), config.project_paths(
        tmp_path / "params.yaml"
    )


def test_optimizer_trials_choose_on_validation_and_never_read_the_test_split(
    small_project, tmp_path
):
    from maas.config import OptimizerTrial
    from maas.training.trials import Choice, choose_optimizer

    all_params, paths = trial_project(small_project, tmp_path)
    trial = OptimizerTrial(optimizer="adagrad", learning_rate=0.5)
    # The small wide model trains fastest; a repeated trial runs once.
    params = dataclasses.replace(
        all_params.train, architecture="wide", optimizer_trials=(trial, trial)
    )
    choice = choose_optimizer(params, paths)
    chosen, rows = choice.params, choice.rows
    assert [(r["optimizer"], r["learning_rate"]) for r in rows] == [
        (params.optimizer, params.learning_rate),
        ("adagrad", 0.5),
    ]
    assert all(r["epochs_run"] >= 1 and 0 <= r["val_accuracy"] <= 1 for r in rows)
    winner = max(rows, key=lambda r: r["val_accuracy"])  # ties: the first, the section's own
    assert [r["chosen"] for r in rows] == [r is winner for r in rows]
    assert chosen.optimizer == winner["optimizer"]
    assert chosen.learning_rate == winner["learning_rate"]
    assert chosen.optimizer_trials == params.optimizer_trials
    assert choice.trained is None  # a single model: no member to stand in for
    # Without trials nothing trains and the parameters come back as they were.
    alone = dataclasses.replace(params, optimizer_trials=())
    assert choose_optimizer(alone, paths) == Choice(alone, [])


def test_the_winning_trial_is_the_first_member_and_is_not_trained_again(
    small_project, tmp_path, caplog
):
    import tensorflow as tf
    import tf_keras as keras

    from maas.config import EnsembleMember, OptimizerTrial
    from maas.training import stage
    from maas.training.fit import fit
    from maas.training.trials import trial_params
    from maas.training.worker import read_inputs

    all_params, paths = trial_project(small_project, tmp_path)
    members = (EnsembleMember("wide", 1), EnsembleMember("wide", 2))
    trial = OptimizerTrial(optimizer="adagrad", learning_rate=0.5)
    params = dataclasses.replace(
        all_params.train, architecture="wide", ensemble=members, optimizer_trials=(trial,)
    )
    with caplog.at_level("INFO", logger="maas.training"):
        summary = stage.run(params, paths, settings=all_params.settings.train, progress=False)
    chosen = next(row for row in summary["optimizer_trials"] if row["chosen"])
    first = summary["members"][0]
    # The member's outcome is the trial's, to the tenth of a second of its training time.
    assert {k: first[k] for k in chosen if k in first} == {
        k: chosen[k] for k in chosen if k in first
    }
    assert "train.ensemble[0] (wide, seed 1) is the optimizer trial's model" in caplog.text
    assert "ensemble: training train.ensemble[1]" in caplog.text
    assert "ensemble: training train.ensemble[0]" not in caplog.text
    # And it is the very model the first member's own training makes on one device.
    exported = keras.models.load_model(paths.classifier_dir / "model.keras", compile=False)
    member = next(layer for layer in exported.layers if layer.name.startswith("member_0_"))
    best = params.with_optimizer(chosen["optimizer"], chosen["learning_rate"])
    inputs = read_inputs(paths)
    again = fit(
        trial_params(best),
        tokenizer=inputs.tokenizer,
        train=inputs.train,
        validation=inputs.validation,
        strategy=tf.distribute.OneDeviceStrategy("/cpu:0"),
    ).model
    for ours, theirs in zip(member.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)

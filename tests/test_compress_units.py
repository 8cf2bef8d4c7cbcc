"""Units of maas.compress on tiny random models: no corpus, no training stage.

The fused-LSTM graph must compute what the masked Keras classifier computes (else every
TFLite variant would be a different model); TFLite conversion of it must fuse the LSTMs
and give the same numbers for every row of a batch (the LSTM state is reset per post);
bad arguments fail before any work.
"""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras

from maas.compress import distill, graph, prune, quantize
from maas.config import ConfigError, load_params
from maas.model import build_classifier

LENGTH, VOCABULARY, CLASSES = 12, 40, 3


def random_classifier(*, bidirectional: bool, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_classifier(
        vocabulary_size=VOCABULARY,
        sequence_length=LENGTH,
        n_classes=CLASSES,
        embedding_dim=6,
        lstm_units=4,
        bidirectional=bidirectional,
        embedding_dropout=0.2,
    )
    # Larger weights than the initializers give, so that any mismatch shows in the outputs.
    rng = np.random.default_rng(seed)
    model.set_weights(
        [rng.normal(0, 0.8, w.shape).astype(np.float32) for w in model.get_weights()]
    )
    return model


def token_ids(rows: int = 8, seed: int = 1) -> np.ndarray:
    """Rows as the tokenizer makes them: real ids first, then padding; one empty, one full."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, LENGTH), dtype=np.int32)
    lengths = [0, LENGTH, *rng.integers(1, LENGTH, size=rows - 2)]
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1, VOCABULARY, size=length)
    return ids


@pytest.mark.parametrize("bidirectional", [True, False])
def test_fused_graph_computes_what_the_masked_model_computes(bidirectional):
    model = random_classifier(bidirectional=bidirectional)
    ids = token_ids()
    expected = model(ids, training=False).numpy()
    fused = graph.FusedClassifier(model)(ids).numpy()
    np.testing.assert_allclose(fused, expected, atol=1e-6)
    # Sensitive to the padding rule: had the graph let the LSTM read the padding (as an
    # unmasked model does), the outputs would differ.
    unmasked = keras.models.clone_model(model)
    unmasked.set_weights(model.get_weights())
    unmasked.get_layer("embedding").mask_zero = False
    assert not np.allclose(unmasked(ids, training=False).numpy(), expected, atol=1e-3)


def test_fused_graph_rejects_models_that_are_not_the_classifier():
    inputs = keras.Input((LENGTH,), dtype="int32")
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.Flatten()(inputs))
    with pytest.raises(graph.ArchitectureError, match="Embedding"):
        graph.FusedClassifier(keras.Model(inputs, outputs))


def test_tflite_float32_fuses_the_lstms_and_matches_keras_row_after_row():
    model = random_classifier(bidirectional=True)
    converted = quantize.to_tflite(model, mode="float32")
    assert converted.info["ops"].get("UNIDIRECTIONAL_SEQUENCE_LSTM") == 2
    assert "WHILE" not in converted.info["ops"]
    ids = token_ids(rows=6)
    # Row by row through one interpreter: without resetting the LSTM's variable tensors,
    # every row after the first would start from the previous row's state.
    np.testing.assert_allclose(
        converted.predict_ids(ids), model(ids, training=False).numpy(), atol=1e-5
    )


def test_conversion_arguments_are_checked():
    model = random_classifier(bidirectional=True)
    with pytest.raises(ValueError, match="unknown quantization mode"):
        quantize.to_tflite(model, mode="int4")
    with pytest.raises(ValueError, match="representative dataset"):
        quantize.to_tflite(model, mode="int8", representative=None)
    with pytest.raises(ValueError, match="representative dataset"):
        quantize.to_tflite(model, mode="int8", representative=np.zeros((0, LENGTH), np.int32))


def test_representative_sample_is_reproducible_training_rows():
    ids = token_ids(rows=30)
    sample = quantize.representative_ids(ids, examples=10, seed=7)
    assert len(sample) == 10
    np.testing.assert_array_equal(sample, quantize.representative_ids(ids, examples=10, seed=7))
    assert all(any(np.array_equal(row, other) for other in ids) for row in sample)
    assert len(quantize.representative_ids(ids, examples=100, seed=7)) == 30
    with pytest.raises(ValueError, match="training split is empty"):
        quantize.representative_ids(ids[:0], examples=10, seed=7)


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    return random_classifier(bidirectional=True)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_prune_rejects_a_sparsity_outside_0_1(classifier, sparsity):
    model = classifier
    data = (token_ids(), np.zeros(8, np.int64))
    with pytest.raises(ValueError, match=r"target sparsity must be in \[0, 1\)"):
        prune.prune(
            model, train=data, validation=data, target_sparsity=sparsity,
            layers=["embedding"], epochs=1, ramp_epochs=1, learning_rate=0.01,
            frequency=1, batch_size=4, seed=0,
        )  # fmt: skip


def test_prunable_clone_keeps_the_padding_mask():
    """tfmot's wrapper drops Keras masks; ours passes the embedding's mask on to the LSTM."""
    import tensorflow_model_optimization as tfmot

    model = random_classifier(bidirectional=True)
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0)
    clone = prune.prunable_clone(model, schedule=schedule, layers=["embedding", "lstm", "dense"])
    wrapped = [
        layer
        for layer in clone.layers
        if isinstance(layer, prune.pruning_wrapper.PruneLowMagnitude)
    ]
    assert len(wrapped) == 3
    ids = token_ids()
    # Before any training step no weight is masked out: the outputs are the teacher's.
    np.testing.assert_allclose(
        clone(ids, training=False).numpy(), model(ids, training=False).numpy(), atol=1e-6
    )
    names = prune.prunable_weight_names(model, ["lstm"])
    assert len(names) == 4 and all("kernel" in name for name in names)


def test_student_handles_empty_posts_and_soften_flattens():
    student = distill.build_student(
        architecture="bag_of_embeddings", vocabulary_size=VOCABULARY, sequence_length=LENGTH,
        n_classes=CLASSES, embedding_dim=4, filters=8,
    )  # fmt: skip
    probabilities = student(token_ids(), training=False).numpy()
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    sharp = np.array([[0.9, 0.08, 0.02]], np.float32)
    np.testing.assert_allclose(distill.soften(sharp, 1.0).numpy(), sharp, atol=1e-6)
    assert distill.soften(sharp, 4.0).numpy().max() < 0.9
    with pytest.raises(ValueError, match="unknown student"):
        distill.build_student(
            architecture="transformer", vocabulary_size=VOCABULARY, sequence_length=LENGTH,
            n_classes=CLASSES, embedding_dim=4, filters=8,
        )  # fmt: skip
    with pytest.raises(ValueError, match="temperature"):
        distill.Distiller(student, temperature=0.0, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        distill.Distiller(student, temperature=2.0, alpha=1.5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"compress.prune.target_sparsity": 1.0}, r"target_sparsity: must be in \[0, 1\)"),
        ({"compress.prune.target_sparsity": -0.2}, r"target_sparsity: must be in \[0, 1\)"),
        ({"compress.variants": ["float32", "int3"]}, "unknown variant 'int3'"),
        ({"compress.variants": []}, "non-empty"),
        ({"compress.prune.layers": ["attention"]}, "prune.layers"),
        ({"compress.distill.temperature": 0}, "temperature: must be > 0"),
        ({"compress.distill.alpha": 1.2}, r"alpha: must be in \[0, 1\]"),
        ({"compress.distill.student": "transformer"}, "student: expected one of"),
        ({"compress.prune.ramp_epochs": 9}, "epochs: must be >= ramp_epochs"),
    ],
)
def test_config_rejects_bad_compress_parameters(override, message):
    from conftest import ROOT

    with pytest.raises(ConfigError, match=message):
        load_params(ROOT / "params.yaml", override)


def test_the_builder_drops_each_model_once_no_variant_left_is_made_from_it():
    from conftest import ROOT

    from maas.compress.variants import VariantBuilder, source_of

    assert [source_of(n) for n in ("int8", "qat_int8", "pruned", "distilled_int8", "onnx")] == [
        "teacher", "qat", "pruned", "distilled", "teacher"
    ]  # fmt: skip
    builder = VariantBuilder(load_params(ROOT / "params.yaml").compress, inputs=None)
    built = ("qat", "pruned", "distilled", "scratch")
    builder.__dict__.update({name: object() for name in built})
    builder.__dict__["teacher_train_probabilities"] = np.zeros((2, 3))
    builder.keep_only_for(["pruned_int8", "distilled_float32", "onnx"])
    assert [n for n in built if n in builder.__dict__] == ["pruned", "distilled"]
    # The student is built: the teacher's training outputs it learned from are not needed.
    assert "teacher_train_probabilities" not in builder.__dict__
    builder.keep_only_for([])
    assert not [n for n in built if n in builder.__dict__]


def test_the_teacher_outputs_stay_until_the_distilled_student_is_built():
    from conftest import ROOT

    from maas.compress.variants import VariantBuilder

    builder = VariantBuilder(load_params(ROOT / "params.yaml").compress, inputs=None)
    builder.__dict__["teacher_train_probabilities"] = np.zeros((2, 3))
    builder.keep_only_for(["distilled", "distilled_int8"])
    assert "teacher_train_probabilities" in builder.__dict__

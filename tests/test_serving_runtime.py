"""The runtime's TFLite paths that serving relies on: fixed batch (padded) and dynamic batch."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from serving_support import tflite_artifact

from maas.provenance import PROVENANCE_FILE, atomic_dir, build_provenance, file_hashes, write_json
from maas.runtime import load_runtime
from maas.tokenizer import Tokenizer

TEXTS = ["rockets and orbits", "engine oil", "gun laws", "", "space " * 50, "cars", "x y z"]


def test_fixed_batch_tflite_matches_the_saved_model_for_any_number_of_texts(
    small_project, tmp_path_factory
):
    classifier = small_project / "models" / "classifier"
    lite = load_runtime(tflite_artifact(classifier, tmp_path_factory))
    reference = load_runtime(classifier)
    assert lite.kind == "tflite" and not lite.dynamic_batch
    for n in (1, 4, 7):  # under, at and over the converted batch of 4
        np.testing.assert_allclose(
            lite.predict(TEXTS[:n]), reference.predict(TEXTS[:n]), atol=1e-5
        )


def test_dynamic_batch_tflite_is_resized_to_each_batch(tmp_path):
    import tensorflow as tf
    import tf_keras as keras

    tokenizer = Tokenizer.fit(
        ["rockets orbit space", "engine oil cars", "gun laws senate"],
        vocabulary_size=20,
        sequence_length=8,
        labels=["a", "b", "c"],
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Embedding(tokenizer.vocabulary_size, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    spec = tf.TensorSpec([None, tokenizer.sequence_length], tf.int32)
    function = tf.function(lambda ids: model(ids)).get_concrete_function(spec)
    flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions([function], model).convert()
    target = tmp_path / "dynamic"
    with atomic_dir(target) as out:
        (out / "model.tflite").write_bytes(flatbuffer)
        tokenizer.save(out / "tokenizer.json")
        extra = {"files": file_hashes(out), "tokenizer_fingerprint": tokenizer.fingerprint()}
        write_json(out / PROVENANCE_FILE, build_provenance(stage="test", params={}, extra=extra))

    runtime = load_runtime(target)
    assert runtime.dynamic_batch
    for n in (1, 5, 2, 7):
        expected = model(tokenizer.encode(TEXTS[:n])).numpy()
        np.testing.assert_allclose(runtime.predict(TEXTS[:n]), expected, atol=1e-5)

    broken = tmp_path / "broken"
    shutil.copytree(target, broken)
    (broken / "model.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match="differs"):
        load_runtime(broken)

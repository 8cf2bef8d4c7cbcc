"""Post-training quantization to TensorFlow Lite, and quantization-aware training.

Every ``.tflite`` file takes the shared tokenizer's int32 ids ``(1, sequence_length)`` and
returns float probabilities ``(1, classes)``: tokenization stays outside (TextVectorization
and string ops do not convert), so every variant reads ``tokenizer.json`` like every other.

Modes (:data:`MODES`):

- ``float32``: the reference conversion, weights as trained.
- ``dynamic_int8``: int8 weights, float activations (no calibration data needed).
- ``float16``: float16 weights, dequantized to float32 when the model runs.
- ``int8``: full integer: int8 weights and activations (int16 inside the LSTM cells, as
  TFLite's integer LSTM kernel needs), calibrated on a representative sample of the training
  split. Conversion first insists on integer-only kernels; if the converter cannot do that,
  it falls back to float kernels for the ops it cannot quantize and says why.

The batch size is fixed at 1: TFLite's LSTM needs a static batch (its ``TensorList`` and
state tensors have fixed shapes, so ``resize_tensor_input`` fails), and one row per call is
what single-example serving wants; :mod:`maas.runtime` feeds bigger requests row by row.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from maas.batches import shuffled_batches
from maas.compress.graph import FusedClassifier, has_recurrent_layer
from maas.model.ensemble import build_ensemble, ensemble_members
from maas.progress import epoch_logger

log = logging.getLogger(__name__)

MODES = ("float32", "dynamic_int8", "float16", "int8")
BATCH = 1
INPUT_NAME = "token_ids"


class QuantizationError(RuntimeError):
    """The converter could not produce the requested model."""


@dataclass
class TFLiteModel:
    """A converted model, in memory: the flatbuffer and what the conversion did."""

    content: bytes
    mode: str
    info: dict[str, Any] = field(default_factory=dict)

    def interpreter(self, *, delegates: bool = True):
        """An allocated interpreter; ``delegates=False`` shows the model's own ops (no XNNPACK)."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = (
            OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        interpreter = Interpreter(
            model_content=self.content, experimental_op_resolver_type=resolver
        )
        interpreter.allocate_tensors()
        return interpreter

    def predict_ids(self, ids: np.ndarray) -> np.ndarray:
        """Probabilities for token ids ``(n, length)``, from the in-memory flatbuffer."""
        interpreter = self.interpreter()
        source = interpreter.get_input_details()[0]["index"]
        target = interpreter.get_output_details()[0]["index"]
        rows = []
        for row in ids:
            # The fused LSTM keeps its state in variable tensors: zero them for each post.
            interpreter.reset_all_variables()
            interpreter.set_tensor(source, row[None, :].astype(np.int32))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(target)[0].astype(np.float32))
        return np.stack(rows)


def representative_ids(ids: np.ndarray, *, examples: int, seed: int) -> np.ndarray:
    """A reproducible random sample of training posts (token ids) for int8 calibration.

    Raises:
        ValueError: no posts to draw from.
    """
    if len(ids) == 0:
        raise ValueError("representative dataset: the training split is empty")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ids), size=min(examples, len(ids)), replace=False)
    return ids[np.sort(chosen)]


class EnsembleGraph(tf.Module):
    """An ensemble as the converter should see it: the mean of its members' convertible forms."""

    def __init__(self, members: list[keras.Model]) -> None:
        super().__init__(name="ensemble_graph")
        self.members = [convertible(member) for member in members]

    @tf.function
    def __call__(self, token_ids: tf.Tensor) -> tf.Tensor:
        outputs = [member(token_ids) for member in self.members]
        return tf.add_n(outputs) / float(len(outputs))


def convertible(model: keras.Model) -> tf.Module:
    """What the converter should see: the fused-LSTM twin of a recurrent classifier, an
    ensemble's members each so, else the model as it is."""
    members = ensemble_members(model)
    if members:
        return EnsembleGraph(members)
    return FusedClassifier(model) if has_recurrent_layer(model) else model


def _converter(model: keras.Model) -> tf.lite.TFLiteConverter:
    module = convertible(model)
    length = int(model.input_shape[1])
    # A fresh tf.function per conversion: a shared one may relax the traced batch to None.
    function = tf.function(lambda token_ids: module(token_ids))
    concrete = function.get_concrete_function(tf.TensorSpec([BATCH, length], tf.int32, INPUT_NAME))
    # Passing the trackable object selects the converter path that fuses Keras LSTMs.
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)


def to_tflite(
    model: keras.Model, *, mode: str, representative: np.ndarray | None = None
) -> TFLiteModel:
    """Convert a Keras classifier (or student) to TFLite in one of :data:`MODES`.

    Args:
        model: token ids -> probabilities.
        mode: one of :data:`MODES`.
        representative: calibration token ids (``int8`` only), e.g. from
            :func:`representative_ids`.

    Raises:
        ValueError: an unknown mode, or ``int8`` without a representative dataset.
        QuantizationError: the converter failed.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r} (expected one of {MODES})")
    if mode == "int8" and (representative is None or len(representative) == 0):
        raise ValueError("full-integer int8 needs a representative dataset (training posts)")
    info: dict[str, Any] = {"mode": mode, "batch_size": BATCH}
    if mode == "int8":
        try:
            content = _convert(model, mode, representative, integer_only=True)
            info["integer_only"] = True
        except Exception as error:  # the converter raises ConverterError or plain exceptions
            reason = str(error).strip().splitlines()[0][:500]
            log.warning("int8: integer-only conversion failed (%s); float fallback", reason)
            content = _convert(model, mode, representative, integer_only=False)
            info.update(integer_only=False, fallback_reason=reason)
    else:
        content = _convert(model, mode, representative, integer_only=False)
    result = TFLiteModel(content, mode, info)
    info["ops"] = dict(sorted(op_counts(result).items()))
    info["tensor_types"] = dict(sorted(tensor_types(result).items()))
    log.info("tflite %s: %d bytes, ops %s", mode, len(content), info["ops"])
    return result


def _convert(
    model: keras.Model, mode: str, representative: np.ndarray | None, *, integer_only: bool
) -> bytes:
    converter = _converter(model)
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        sample = np.asarray(representative, dtype=np.int32)
        converter.representative_dataset = lambda: ([row[None, :]] for row in sample)
        if integer_only:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert()
    except Exception as error:
        raise QuantizationError(f"TFLite conversion ({mode}) failed: {error}") from error


def op_counts(model: TFLiteModel) -> collections.Counter:
    """``{op name: count}`` of a converted model (shows what got fused or quantized)."""
    details = model.interpreter(
        delegates=False
    )._get_ops_details()  # the only public-ish op listing
    return collections.Counter(op["op_name"] for op in details)


def tensor_types(model: TFLiteModel) -> collections.Counter:
    """``{dtype name: count}`` over the model's tensors (int8 everywhere for full integer)."""
    details = model.interpreter(delegates=False).get_tensor_details()
    return collections.Counter(np.dtype(t["dtype"]).name for t in details)


def quantization_aware(
    model: keras.Model, **settings
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Quantization-aware fine-tuning (:func:`quantization_aware_one`), member by member for
    an ensemble (history keys prefixed ``member_<i>_``)."""
    members = ensemble_members(model)
    if not members:
        return quantization_aware_one(model, **settings)
    aware, history = [], {}
    for index, member in enumerate(members):
        one, own = quantization_aware_one(member, **settings)
        aware.append(one)
        history.update({f"member_{index}_{key}": values for key, values in own.items()})
    return build_ensemble(aware, name=model.name), history


def quantization_aware_one(
    model: keras.Model,
    *,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Quantization-aware fine-tuning of the Dense layers (the quantizable ones).

    tfmot's default 8-bit scheme wraps each Dense layer (and the dropout feeding it) with
    fake-quantization, so training sees int8 rounding; the Embedding and the LSTM are left
    float here (tfmot has no QAT for them) and are quantized post-training by the converter.
    Returns the fine-tuned model (still with its wrappers: convert it with ``int8``).
    """
    import tensorflow_model_optimization as tfmot

    quantization = tfmot.quantization.keras
    keras.utils.set_random_seed(seed)

    def annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.layers.Dense):
            return quantization.quantize_annotate_layer(layer)
        return layer

    annotated = keras.models.clone_model(model, clone_function=annotate)
    annotated.set_weights(model.get_weights())
    with quantization.quantize_scope():
        aware = quantization.quantize_apply(annotated)
    aware.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = aware.fit(
        shuffled_batches(*train, batch_size=batch_size, seed=seed),
        validation_data=validation,
        epochs=epochs,
        callbacks=[epoch_logger("qat", epochs)],
        verbose=0,
    ).history
    return aware, {k: [float(v) for v in values] for k, values in history.items()}

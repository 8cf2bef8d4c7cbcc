"""The teacher in ONNX (tf2onnx), for serving from any language through onnxruntime.

tf2onnx converts the Keras model as trained, masked BiLSTM included: the masked LSTM becomes
an ONNX ``Loop`` (tf2onnx's LSTM rewriter fuses only unmasked LSTMs), the batch dimension
stays dynamic. Input ``token_ids`` int32 ``(batch, sequence_length)``, output float
probabilities ``(batch, classes)``, as :mod:`maas.runtime` expects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import tf_keras as keras

from maas.model import INPUT_NAME

log = logging.getLogger(__name__)

OPSET = 17


class OnnxExportError(RuntimeError):
    """tf2onnx could not convert the model."""


def to_onnx(model: keras.Model, *, opset: int = OPSET) -> bytes:
    """The serialized ONNX model of a Keras classifier (token ids -> probabilities).

    Raises:
        OnnxExportError: with tf2onnx's reason.
    """
    import onnx
    import tensorflow as tf

    length = int(model.input_shape[1])
    signature = (tf.TensorSpec([None, length], tf.int32, name=INPUT_NAME),)
    try:
        proto = _convert(model, signature, opset, optimizers={})
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as invalid:
            log.info("onnx: %s: tf2onnx's optimizers needed (%s)", model.name, invalid)
            proto = _convert(model, signature, opset, optimizers=None)
    except Exception as error:
        raise OnnxExportError(f"tf2onnx could not convert {model.name}: {error}") from error
    ops = sorted({node.op_type for node in proto.graph.node})
    log.info("onnx: opset %d, ops %s", opset, ops)
    return proto.SerializeToString()


def _convert(model: keras.Model, signature, opset: int, *, optimizers: dict | None):
    """tf2onnx's conversion. Without its graph optimizers (``{}``) first: on the three-member
    wide ensemble they took the converting process from 0.9 GB to a 5.0 GB peak (2.2 GB
    without them, 3.5 times faster), and onnxruntime optimizes the graph when a session
    loads it. Some graphs need them to be valid ONNX at all (a Keras LSTM's TensorList ops
    become an Identity of two inputs): :func:`to_onnx` checks and converts again with them.
    """
    import tf2onnx

    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=signature, opset=opset, optimizers=optimizers
    )
    return proto


def onnx_ops(content: bytes) -> dict[str, int]:
    """``{op type: count}`` of a serialized ONNX model."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load_from_string(content).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def onnx_predictor(content: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities from token ids, through one session of an in-memory ONNX model (the
    reference for the round trip)."""
    import onnxruntime

    from maas.runtime import onnx_run_options

    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    name, options = session.get_inputs()[0].name, onnx_run_options()
    return lambda ids: session.run(None, {name: ids.astype(np.int32)}, options)[0].astype(
        np.float32
    )

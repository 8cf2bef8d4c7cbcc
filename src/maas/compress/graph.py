"""The classifier as TensorFlow Lite can fuse it: the same function, without Keras masking.

The trained classifier masks padding (``Embedding(mask_zero=True)``): the LSTM skips padded
steps. Keras implements a masked LSTM as a ``while`` loop over ``TensorList`` ops; TFLite
runs that loop op by op, cannot give it a dynamic batch, and its int8 calibration crashes
on it. An LSTM *without* a mask converts to TFLite's fused ``UNIDIRECTIONAL_SEQUENCE_LSTM``
kernel, which is fast and quantizes to full integer (int8 weights, int16 cell state).

:class:`FusedClassifier` computes exactly what the masked model computes, relying on one
property of :mod:`maas.tokenizer`: padding (id 0) only ever comes *after* the real tokens.

- Forward LSTM: the real steps come first, so their outputs do not depend on the padding.
- Backward LSTM: Keras reverses the sequence and skips the (now leading) padding, so the
  backward pass starts at the last real token. ``reverse_sequence`` reverses only the first
  ``length`` ids of each row, which puts the real tokens first again, reversed.
- Padded steps: Keras emits zeros there when ``zero_output_for_mask`` (a ``Bidirectional``
  forces it), else it repeats the last real output; the max over time sees the same values.

The layers after the pooling (dropout, the Dense head, or their quantization-aware wrappers)
are reused as they are. The tests check the equivalence against the Keras model.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

# Layers that are the identity at inference: skipped in the fused graph.
_INFERENCE_IDENTITY = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.InputLayer,
)


class ArchitectureError(ValueError):
    """A model that is not the maas classifier (Embedding -> (Bi)LSTM -> max pool -> head)."""


def _copy_lstm(source: keras.layers.LSTM, input_dim: int, length: int) -> keras.layers.LSTM:
    """A plain forward LSTM (no mask, no ``go_backwards``) holding ``source``'s weights."""
    if source.go_backwards and not source.return_sequences:
        raise ArchitectureError("an LSTM that only returns its last state is not supported")
    lstm = keras.layers.LSTM(source.units, return_sequences=True, name=f"fused_{source.name}")
    lstm.build((None, length, input_dim))
    lstm.set_weights(source.get_weights())
    return lstm


class FusedClassifier(tf.Module):
    """Token ids ``(batch, length)`` -> class probabilities, as the masked classifier."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__(name="fused_classifier")
        layers = list(model.layers)
        kinds = [type(layer) for layer in layers]
        try:
            embedding_at = kinds.index(keras.layers.Embedding)
            pool_at = kinds.index(keras.layers.GlobalMaxPooling1D)
        except ValueError as error:
            raise ArchitectureError(
                f"{model.name}: expected Embedding ... GlobalMaxPooling1D, got {_names(layers)}"
            ) from error
        middle = [
            layer
            for layer in layers[embedding_at + 1 : pool_at]
            if not isinstance(layer, _INFERENCE_IDENTITY)
        ]
        if len(middle) != 1 or not isinstance(
            middle[0], keras.layers.LSTM | keras.layers.Bidirectional
        ):
            raise ArchitectureError(
                f"{model.name}: expected one LSTM or Bidirectional(LSTM) between the embedding "
                f"and the pooling, got {_names(middle)}"
            )
        embedding, recurrent = layers[embedding_at], middle[0]
        # The steps the LSTM reads: a model may read only the first ids (``max_tokens``).
        self.length = int(embedding.input_shape[1])
        self.embeddings = tf.Variable(embedding.embeddings, trainable=False, name="embeddings")
        dim = int(embedding.output_dim)
        if isinstance(recurrent, keras.layers.Bidirectional):
            if recurrent.merge_mode != "concat":
                raise ArchitectureError(f"merge_mode {recurrent.merge_mode!r} is not supported")
            self.forward = _copy_lstm(recurrent.forward_layer, dim, self.length)
            self.backward = _copy_lstm(recurrent.backward_layer, dim, self.length)
            self.zero_padded_outputs = bool(recurrent.forward_layer.zero_output_for_mask)
        else:
            self.forward = _copy_lstm(recurrent, dim, self.length)
            self.backward = None
            self.zero_padded_outputs = bool(recurrent.zero_output_for_mask)
        self.head = [
            layer for layer in layers[pool_at + 1 :] if not isinstance(layer, _INFERENCE_IDENTITY)
        ]

    def _masked_steps(self, outputs: tf.Tensor, lengths: tf.Tensor) -> tf.Tensor:
        """What the masked Keras LSTM emits at padded steps: zeros, or the last real output."""
        valid = tf.sequence_mask(lengths, self.length, dtype=outputs.dtype)[:, :, None]
        if self.zero_padded_outputs:
            return outputs * valid
        last = tf.maximum(lengths - 1, 0)
        steps = tf.minimum(tf.range(self.length)[None, :], last[:, None])
        repeated = tf.gather(outputs, steps, batch_dims=1)
        has_tokens = tf.cast(lengths > 0, outputs.dtype)[:, None, None]
        return repeated * has_tokens  # an empty post: Keras emits the zero initial output

    @tf.function
    def __call__(self, token_ids: tf.Tensor) -> tf.Tensor:
        token_ids = token_ids[:, : self.length]
        lengths = tf.reduce_sum(tf.cast(tf.not_equal(token_ids, 0), tf.int32), axis=1)
        outputs = self.forward(tf.gather(self.embeddings, token_ids))
        if self.backward is not None:
            reversed_ids = tf.reverse_sequence(token_ids, lengths, seq_axis=1, batch_axis=0)
            backward = self.backward(tf.gather(self.embeddings, reversed_ids))
            # The max over time is order-free: backward outputs need not be put back in order.
            outputs = tf.concat([outputs, backward], axis=-1)
        x = tf.reduce_max(self._masked_steps(outputs, lengths), axis=1)
        for layer in self.head:
            x = layer(x, training=False)
        return x


def has_recurrent_layer(model: keras.Model) -> bool:
    """Whether a model holds an RNN (and so needs :class:`FusedClassifier` to convert)."""
    return any(
        isinstance(layer, keras.layers.RNN | keras.layers.Bidirectional) for layer in model.layers
    )


def _names(layers: list) -> list[str]:
    return [type(layer).__name__ for layer in layers]

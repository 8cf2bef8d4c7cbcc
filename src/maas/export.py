"""Export a trained classifier as a self-contained artifact folder.

Layout of an exported classifier::

    <dir>/saved_model/     TensorFlow SavedModel; ``serving_default`` takes raw strings
    <dir>/model.keras      the Keras model (token ids -> probabilities), for fine-tuning;
                           weights only, no optimizer state (:func:`save_keras_model`)
    <dir>/tokenizer.json   the shared tokenizer (vocabulary, sequence length, labels)
    <dir>/history.json     training curves, when given
    <dir>/provenance.json  parameters, git revision, input hashes, metrics, file hashes

The SavedModel's ``serving_default`` signature takes ``texts`` (a batch of UTF-8 strings)
and returns ``probabilities`` (batch, classes), ``class_ids`` and ``labels``; the
``predict_token_ids`` signature takes the tokenizer's ids. Tokenization inside the graph is
:func:`tokenize_graph`, the TensorFlow twin of :mod:`maas.tokenizer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf
import tf_keras as keras

from maas.provenance import PROVENANCE_FILE, atomic_dir, build_provenance, file_hashes, write_json
from maas.tokenizer import PAD_ID, TOKENIZER_FILE, UNK_ID, Tokenizer

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras"
HISTORY_FILE = "history.json"


class TextTokenizer(tf.Module):
    """:class:`maas.tokenizer.Tokenizer` in TensorFlow ops, so a SavedModel takes raw text."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        words = list(tokenizer.vocabulary[2:])
        self.sequence_length = tokenizer.sequence_length
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(words, tf.string),
                tf.range(2, len(words) + 2, dtype=tf.int64),
            ),
            default_value=UNK_ID,
        )

    def __call__(self, texts: tf.Tensor) -> tf.Tensor:
        lowered = tf.strings.lower(texts)  # ASCII only, as in maas.tokenizer
        spaced = tf.strings.regex_replace(lowered, "[^a-z0-9]+", " ")
        tokens = tf.strings.split(spaced)  # on white space, no empty tokens
        tokens = tokens[:, : self.sequence_length]
        ids = tf.ragged.map_flat_values(self.table.lookup, tokens)
        dense = ids.to_tensor(default_value=PAD_ID, shape=[None, self.sequence_length])
        return tf.cast(dense, tf.int32)


def tokenize_graph(tokenizer: Tokenizer) -> TextTokenizer:
    return TextTokenizer(tokenizer)


class ServingModule(tf.Module):
    def __init__(self, model: keras.Model, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.model = model
        self.tokenize = TextTokenizer(tokenizer)
        self.labels = tf.constant(list(tokenizer.labels))
        length = tokenizer.sequence_length
        self.serve_texts = tf.function(
            self._serve_texts, input_signature=[tf.TensorSpec([None], tf.string, name="texts")]
        )
        self.serve_ids = tf.function(
            self._serve_ids,
            input_signature=[tf.TensorSpec([None, length], tf.int32, name="token_ids")],
        )

    def _outputs(self, probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "class_ids": class_ids,
            "labels": tf.gather(self.labels, class_ids),
        }

    def _serve_texts(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self.model(self.tokenize(texts), training=False))

    def _serve_ids(self, token_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self.model(token_ids, training=False))


def save_serving_model(model: keras.Model, tokenizer: Tokenizer, directory: Path) -> None:
    """Write a SavedModel whose default signature takes raw strings."""
    module = ServingModule(model, tokenizer)
    tf.saved_model.save(
        module,
        str(directory),
        signatures={
            "serving_default": module.serve_texts,
            "predict_token_ids": module.serve_ids,
        },
    )


def export_classifier(
    model: keras.Model,
    tokenizer: Tokenizer,
    directory: str | Path,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Mapping[str, list[float]] | None = None,
    inputs: Mapping[str, str | Path] | None = None,
    stage: str = "train",
    root: str | Path | None = None,
) -> Path:
    """Write the artifact folder atomically: it appears whole, or not at all."""
    directory = Path(directory)
    with atomic_dir(directory) as out:
        save_serving_model(model, tokenizer, out / SAVED_MODEL_DIR)
        save_keras_model(model, out / KERAS_FILE)
        tokenizer.save(out / TOKENIZER_FILE)
        if history is not None:
            write_json(out / HISTORY_FILE, dict(history))
        record = build_provenance(
            stage=stage,
            params=params,
            inputs=inputs,
            metrics=metrics,
            extra={
                "tokenizer_fingerprint": tokenizer.fingerprint(),
                "files": file_hashes(out),
            },
            root=root,
        )
        write_json(out / PROVENANCE_FILE, record)
    return directory


def save_keras_model(model: keras.Model, path: Path) -> None:
    """Save ``model`` without its optimizer: a copy with the same architecture and weights.

    Fine-tuning (pruning, QAT) compiles a fresh optimizer, so Adam's two slots per weight
    would only triple the file: the three-member ensemble's is 73 MB instead of 217 MB, and
    it loads in 2 s instead of 20 s. The format cannot leave the optimizer out by itself.
    """
    bare = keras.models.clone_model(model)
    bare.set_weights(model.get_weights())
    bare.save(path)


def load_keras_model(directory: str | Path) -> keras.Model:
    """The Keras model of an exported classifier (token ids -> probabilities)."""
    path = Path(directory) / KERAS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train stage first (dvc repro train)")
    return keras.models.load_model(path)


def read_history(directory: str | Path) -> dict[str, list[float]]:
    """The training curves stored with an exported classifier."""
    from maas.provenance import read_json

    return read_json(Path(directory) / HISTORY_FILE)

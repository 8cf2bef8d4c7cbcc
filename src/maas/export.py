"""Export a trained classifier as a self-contained artifact folder.

Layout of an exported classifier::

    <dir>/saved_model/     TensorFlow SavedModel; ``serving_default`` takes raw strings
    <dir>/model.keras      the Keras model (token ids -> probabilities), for fine-tuning;
                           weights only, no optimizer state (:func:`save_keras_model`)
    <dir>/tokenizer.json   the shared tokenizer (vocabulary, sequence length, labels)
    <dir>/history.json     training curves, when given
    <dir>/reference.json   statistics of held-out training-distribution texts, when given:
                           what the server's drift monitor compares live inputs with
                           (:func:`maas.text_stats.reference_statistics`)
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

from maas import unicode_text
from maas.provenance import PROVENANCE_FILE, atomic_dir, build_provenance, file_hashes, write_json
from maas.text_stats import REFERENCE_FILE
from maas.tokenizer import PAD, PAD_ID, TOKENIZER_FILE, UNK_ID, Tokenizer

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras"
HISTORY_FILE = "history.json"


class TextTokenizer(tf.Module):
    """:class:`maas.tokenizer.Tokenizer` in TensorFlow ops, so a SavedModel takes raw text.

    The Unicode rule runs on code points: decode UTF-8 (invalid bytes become U+FFFD, a
    separator), fold each code point through the table of :func:`maas.unicode_text.fold_table`
    (a code point may grow into several), classify the folded ones by binary search in
    :func:`maas.unicode_text.class_runs`, then cut words, single no-space characters and their
    bigrams, in text order, exactly as :func:`maas.unicode_text.folded_tokens` does.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        keys = tokenizer.lookup_keys()[2:]
        self.rule = tokenizer.rule
        self.sequence_length = tokenizer.sequence_length
        self.max_chars = tokenizer.max_chars
        values = list(range(2, len(keys) + 2))
        if not keys:  # a table cannot be empty; no token is ever the empty string
            keys, values = [PAD], [UNK_ID]
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(keys, tf.string), tf.constant(values, tf.int64)
            ),
            default_value=UNK_ID,
        )
        if self.rule == "unicode":
            self._build_unicode_tables()

    def _build_unicode_tables(self) -> None:
        folds = unicode_text.fold_table()
        # Expansion 0 is "the code point itself" (a -1 placeholder); i >= 1 are the table's.
        values, starts, lengths = [-1], [0], [1]
        for folded in folds.values():
            starts.append(len(values))
            lengths.append(len(folded))
            values.extend(ord(char) for char in folded)
        self.fold_index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(folds), tf.int64),
                tf.range(1, len(folds) + 1, dtype=tf.int64),
            ),
            default_value=0,
        )
        self.fold_values = tf.constant(values, tf.int32)
        self.fold_starts = tf.constant(starts, tf.int64)
        self.fold_lengths = tf.constant(lengths, tf.int64)
        run_starts, run_kinds = unicode_text.class_runs()
        self.run_starts = tf.constant(run_starts, tf.int32)
        self.run_kinds = tf.constant(run_kinds, tf.int32)

    def __call__(self, texts: tf.Tensor) -> tf.Tensor:
        tokens = self.token_strings(texts)[:, : self.sequence_length]
        ids = tf.ragged.map_flat_values(self.table.lookup, tokens)
        dense = ids.to_tensor(default_value=PAD_ID, shape=[None, self.sequence_length])
        return tf.cast(dense, tf.int32)

    def token_strings(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """The tokens of each text, as looked up (folded form): ragged ``(batch, None)``."""
        if self.rule == "ascii":
            lowered = tf.strings.lower(texts)  # ASCII only, as the ascii rule
            return tf.strings.split(tf.strings.regex_replace(lowered, "[^a-z0-9]+", " "))
        decoded = tf.strings.unicode_decode(texts, "UTF-8", errors="replace")
        decoded = decoded[:, : self.max_chars]  # as Tokenizer.tokens reads them
        code_points, rows = self._fold(decoded)
        kinds = tf.gather(
            self.run_kinds, tf.searchsorted(self.run_starts, code_points, side="right") - 1
        )
        starts, ends, order_keys = self._token_spans(kinds, rows)
        order = tf.argsort(order_keys, stable=True)
        starts, ends = tf.gather(starts, order), tf.gather(ends, order)
        spans = tf.ragged.range(starts, ends)
        strings = tf.strings.unicode_encode(
            tf.RaggedTensor.from_row_splits(
                tf.gather(code_points, spans.flat_values), spans.row_splits
            ),
            "UTF-8",
        )
        return tf.RaggedTensor.from_value_rowids(
            strings, tf.gather(rows, starts), nrows=tf.shape(texts, out_type=tf.int64)[0]
        )

    def _fold(self, decoded: tf.RaggedTensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Every text's code points folded, flat, with the row (text) of each."""
        flat = decoded.flat_values
        expansion = self.fold_index.lookup(tf.cast(flat, tf.int64))
        lengths = tf.gather(self.fold_lengths, expansion)
        positions = tf.ragged.range(
            tf.gather(self.fold_starts, expansion),
            tf.gather(self.fold_starts, expansion) + lengths,
        ).flat_values
        values = tf.gather(self.fold_values, positions)
        code_points = tf.where(values < 0, tf.repeat(flat, lengths), values)
        rows = tf.repeat(decoded.value_rowids(), lengths)
        return code_points, rows

    @staticmethod
    def _token_spans(kinds: tf.Tensor, rows: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """Start, end (flat code-point positions) and an ordering key of every token."""
        word, chars = tf.equal(kinds, unicode_text.WORD), tf.equal(kinds, unicode_text.NO_SPACE)
        # Whether position i continues the run of i - 1 (same kind, same text).
        same_row_before = tf.concat([[False], tf.equal(rows[1:], rows[:-1])], axis=0)
        word_before = tf.concat([[False], word[:-1]], axis=0) & same_row_before
        word_after = tf.concat([word[1:], [False]], axis=0) & tf.concat(
            [same_row_before[1:], [False]], axis=0
        )
        chars_after = tf.concat([chars[1:], [False]], axis=0) & tf.concat(
            [same_row_before[1:], [False]], axis=0
        )
        word_starts = tf.where(word & ~word_before)[:, 0]
        word_ends = tf.where(word & ~word_after)[:, 0] + 1
        char_starts = tf.where(chars)[:, 0]
        bigram_starts = tf.where(chars & chars_after)[:, 0]
        starts = tf.concat([word_starts, char_starts, bigram_starts], axis=0)
        ends = tf.concat([word_ends, char_starts + 1, bigram_starts + 2], axis=0)
        # A bigram comes right after the character it starts with.
        order_keys = 2 * starts + tf.concat(
            [tf.zeros_like(word_starts), tf.zeros_like(char_starts), tf.ones_like(bigram_starts)],
            axis=0,
        )
        return starts, ends, order_keys


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
    reference: Mapping[str, Any] | None = None,
) -> Path:
    """Write the artifact folder atomically: it appears whole, or not at all."""
    directory = Path(directory)
    with atomic_dir(directory) as out:
        save_serving_model(model, tokenizer, out / SAVED_MODEL_DIR)
        save_keras_model(model, out / KERAS_FILE)
        tokenizer.save(out / TOKENIZER_FILE)
        if history is not None:
            write_json(out / HISTORY_FILE, dict(history))
        if reference is not None:
            write_json(out / REFERENCE_FILE, dict(reference))
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

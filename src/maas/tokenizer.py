"""The one tokenizer shared by every model, compressed variant and server.

It needs no TensorFlow, so a TFLite or ONNX server can tokenize without it. The SavedModel
export rebuilds the same rule from TensorFlow ops (:func:`maas.export.tokenize_graph`), and a
property-based test checks that both give identical ids on random Unicode text.

The rule (``unicode``, :mod:`maas.unicode_text`): fold the text (NFKC-equivalent
normalisation and full case folding), keep runs of letters, combining marks and digits of
every script as words (``café`` stays ``café``, ``Москва`` becomes ``москва``), and turn
scripts written without spaces (Han, kana, Thai, ...) into single characters plus character
bigrams (``战争`` -> ``战``, ``战争``, ``争``); everything else separates. Read the first
:data:`CHARS_PER_TOKEN` x ``sequence_length`` characters, keep the first ``sequence_length``
tokens, map each to its vocabulary index (unknown tokens to ``1``) and
pad with ``0`` at the end.

Tokenizer files written before the Unicode rule (format ``maas-tokenizer/1``: lower-case
ASCII, ``[a-z0-9]`` runs only) load with their own rule, so older model versions keep
serving exactly as they were trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maas import unicode_text

log = logging.getLogger(__name__)

PAD, UNK = "", "[UNK]"
PAD_ID, UNK_ID = 0, 1
FORMAT = "maas-tokenizer/2"
ASCII_FORMAT = "maas-tokenizer/1"  # the ASCII-only rule of earlier artifacts
RULES = ("unicode", "ascii")
TOKENIZER_FILE = "tokenizer.json"  # its name in data/processed and in every artifact folder
ENCODE_CHUNK = 10_000  # texts tokenized at a time: lists of ids are short-lived
# Only a text's first CHARS_PER_TOKEN x sequence_length characters are read: far more than
# the kept tokens need in any language (no 20 Newsgroups post changes), and it bounds what a
# very long text costs, in the graph (~90 bytes a character) and in Python.
CHARS_PER_TOKEN = 16

_ASCII_SEPARATOR = re.compile(r"[^a-z0-9]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def split_tokens(text: str) -> list[str]:
    """The tokens of one text in readable (composed) form, before vocabulary lookup."""
    return [unicode_text.compose(token) for token in unicode_text.folded_tokens(text)]


def _ascii_tokens(text: str) -> list[str]:
    return _ASCII_SEPARATOR.sub(" ", text.translate(_ASCII_LOWER)).split()


@dataclass(frozen=True)
class Tokenizer:
    """A fixed vocabulary, a sequence length and the class labels of the task."""

    vocabulary: tuple[str, ...]  # index 0 is padding, 1 is the out-of-vocabulary token
    sequence_length: int
    labels: tuple[str, ...]
    rule: str = "unicode"  # "ascii" only for tokenizer files of format maas-tokenizer/1

    def __post_init__(self) -> None:
        if self.vocabulary[:2] != (PAD, UNK):
            raise ValueError("vocabulary must start with the padding and [UNK] entries")
        if self.sequence_length < 1:
            raise ValueError("sequence_length must be >= 1")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        object.__setattr__(self, "_index", {key: i for i, key in enumerate(self.lookup_keys())})

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def lookup_keys(self) -> list[str]:
        """The vocabulary as the ids are looked up: in folded form (decomposed), the form the
        text takes before its tokens are cut; the SavedModel's table holds the same keys."""
        if self.rule == "ascii":
            return list(self.vocabulary)
        return [unicode_text.fold(word) for word in self.vocabulary]

    def known(self, token: str) -> bool:
        """Whether a token from :meth:`tokens` has an id of its own (is not ``[UNK]``)."""
        return token in self._index  # type: ignore[attr-defined]

    @property
    def max_chars(self) -> int:
        """How many characters of a text are read (the Unicode rule)."""
        return CHARS_PER_TOKEN * self.sequence_length

    def tokens(self, text: str) -> list[str]:
        """The tokens of one text as they are looked up (folded form)."""
        if self.rule == "ascii":
            return _ascii_tokens(text)
        return unicode_text.folded_tokens(text[: self.max_chars])

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        *,
        vocabulary_size: int,
        sequence_length: int,
        labels: Sequence[str],
    ) -> Tokenizer:
        """Build the vocabulary from training texts: the most frequent tokens, ties by name."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(split_tokens(text[: CHARS_PER_TOKEN * sequence_length]))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        words = [token for token, _ in ranked[: max(vocabulary_size - 2, 0)]]
        return cls((PAD, UNK, *words), sequence_length, tuple(labels))

    def encode(self, texts: Sequence[str], *, trim: bool = False) -> np.ndarray:
        """Token ids, shape ``(len(texts), sequence_length)``, dtype int32, zero-padded.

        ``trim=True`` drops the columns that are padding in every row: ``(len(texts), W)``
        with ``W`` the longest text's length (at most ``sequence_length``). A corpus of short
        texts then takes a fraction of the memory (500,000 texts at 1,000 places would be
        2 GB); :func:`maas.batches.pad_to` restores the full width batch by batch.
        """
        index = self._index  # type: ignore[attr-defined]
        chunks, width = [], 1
        for start in range(0, len(texts), ENCODE_CHUNK):
            rows = [
                [index.get(token, UNK_ID) for token in self.tokens(text)[: self.sequence_length]]
                for text in texts[start : start + ENCODE_CHUNK]
            ]
            longest = max((len(row) for row in rows), default=0)
            chunk = np.zeros((len(rows), max(longest, 1)), dtype=np.int32)
            for row, row_ids in enumerate(rows):
                chunk[row, : len(row_ids)] = row_ids
            chunks.append(chunk)
            width = max(width, longest)
        if not trim:
            width = self.sequence_length
        ids = np.zeros((len(texts), width), dtype=np.int32)
        start = 0
        for chunk in chunks:
            ids[start : start + len(chunk), : chunk.shape[1]] = chunk
            start += len(chunk)
        return ids

    def to_json(self) -> dict:
        record = {
            "format": FORMAT if self.rule == "unicode" else ASCII_FORMAT,
            "sequence_length": self.sequence_length,
            "labels": list(self.labels),
            "vocabulary": list(self.vocabulary),
        }
        if self.rule == "unicode":
            # Folding comes from this Python's Unicode tables: a character that a later
            # version assigns could fold differently there.
            record["unicode_version"] = unicode_text.UNICODE_VERSION
            record["max_chars"] = self.max_chars
        return record

    def fingerprint(self) -> str:
        """A short hash that changes whenever the ids for some text would change."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer file; a missing or corrupt file raises ``ValueError``."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise ValueError(f"tokenizer file not found: {path}") from error
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"tokenizer file is corrupt: {path}: {error}") from error
        if not isinstance(raw, dict) or raw.get("format") not in (FORMAT, ASCII_FORMAT):
            raise ValueError(f"{path}: not a {FORMAT} file")
        version = raw.get("unicode_version", unicode_text.UNICODE_VERSION)
        if version != unicode_text.UNICODE_VERSION:
            log.warning(
                "%s was written with Unicode %s, this Python has %s: characters assigned in "
                "between may tokenize differently",
                path,
                version,
                unicode_text.UNICODE_VERSION,
            )
        return cls(
            tuple(raw["vocabulary"]),
            int(raw["sequence_length"]),
            tuple(raw["labels"]),
            "unicode" if raw["format"] == FORMAT else "ascii",
        )

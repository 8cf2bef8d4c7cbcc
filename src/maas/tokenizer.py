"""The one tokenizer shared by every model, compressed variant and server.

It needs no TensorFlow, so a TFLite or ONNX server can tokenize without it. The SavedModel
export rebuilds the same rule from TensorFlow ops (:func:`maas.export.tokenize_graph`), and
the tests check that both give identical ids.

The rule: lower-case ASCII letters, treat every run of characters outside ``[a-z0-9]`` as a
separator, keep the first ``sequence_length`` tokens, map each to its vocabulary index
(unknown tokens to ``1``) and pad with ``0`` at the end.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAD, UNK = "", "[UNK]"
PAD_ID, UNK_ID = 0, 1
SEPARATOR = re.compile(r"[^a-z0-9]+")
# Only ASCII is lower-cased: TensorFlow's tf.strings.lower does the same by default, so the
# two implementations agree on every input.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
FORMAT = "maas-tokenizer/1"
TOKENIZER_FILE = "tokenizer.json"  # its name in data/processed and in every artifact folder


def split_tokens(text: str) -> list[str]:
    """The tokens of one text, before vocabulary lookup."""
    return SEPARATOR.sub(" ", text.translate(_ASCII_LOWER)).split()


@dataclass(frozen=True)
class Tokenizer:
    """A fixed vocabulary, a sequence length and the class labels of the task."""

    vocabulary: tuple[str, ...]  # index 0 is padding, 1 is the out-of-vocabulary token
    sequence_length: int
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.vocabulary[:2] != (PAD, UNK):
            raise ValueError("vocabulary must start with the padding and [UNK] entries")
        if self.sequence_length < 1:
            raise ValueError("sequence_length must be >= 1")
        object.__setattr__(self, "_index", {tok: i for i, tok in enumerate(self.vocabulary)})

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

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
            counts.update(split_tokens(text))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        words = [token for token, _ in ranked[: max(vocabulary_size - 2, 0)]]
        return cls((PAD, UNK, *words), sequence_length, tuple(labels))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids, shape ``(len(texts), sequence_length)``, dtype int32."""
        ids = np.zeros((len(texts), self.sequence_length), dtype=np.int32)
        index = self._index  # type: ignore[attr-defined]
        for row, text in enumerate(texts):
            tokens = split_tokens(text)[: self.sequence_length]
            ids[row, : len(tokens)] = [index.get(token, UNK_ID) for token in tokens]
        return ids

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "sequence_length": self.sequence_length,
            "labels": list(self.labels),
            "vocabulary": list(self.vocabulary),
        }

    def fingerprint(self) -> str:
        """A short hash that changes whenever the ids for some text would change."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json()), encoding="utf-8")
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
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        return cls(tuple(raw["vocabulary"]), int(raw["sequence_length"]), tuple(raw["labels"]))

"""The processed splits: the data stage writes them, every later stage reads them.

One JSON object per line, ``{"text": ..., "label": <class index>}``, in
``data/processed/{train,validation,test}.jsonl`` (:class:`maas.config.Paths`); the class
names travel in the tokenizer file beside them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maas.config import Paths

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: np.ndarray  # int64 class indices

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: Sequence[int] | np.ndarray) -> Split:
        return Split([self.texts[i] for i in indices], self.labels[np.asarray(indices, int)])


def save_split(split: Split, path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for text, label in zip(split.texts, split.labels, strict=True):
            handle.write(json.dumps({"text": text, "label": int(label)}, ensure_ascii=False))
            handle.write("\n")


def read_split(path: str | Path) -> Split:
    """Read a split written by the data stage.

    Raises:
        FileNotFoundError: with a hint to run the data stage first.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the data stage first (dvc repro data)")
    texts, labels = [], []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(row["label"])
    return Split(texts, np.asarray(labels, dtype=np.int64))


def read_splits(paths: Paths) -> dict[str, Split]:
    return {name: read_split(paths.split(name)) for name in SPLITS}

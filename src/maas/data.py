"""The data stage: load 20 Newsgroups, clean it, split it, build the vocabulary.

The corpus comes through scikit-learn's own loader, :func:`sklearn.datasets.fetch_20newsgroups`,
which downloads it once (14 MB) and caches it in ``$SCIKIT_LEARN_DATA`` (default
``~/scikit_learn_data``). Offline, point ``SCIKIT_LEARN_DATA`` at a folder that holds the
cache file ``20news-bydate_py3.pkz``.

Splits are JSON lines (``{"text": ..., "label": ...}``); the test split is the standard
"bydate" test set, untouched but for the parts named in ``remove``, so that accuracies compare
with published figures. Posts left empty by the removal are dropped from training and
validation only (they teach nothing) and kept in the test set (a fair test has them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maas.config import DataParams, Paths, to_dict
from maas.provenance import atomic_dir, build_provenance, write_json
from maas.tokenizer import TOKENIZER_FILE, Tokenizer, split_tokens

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
CACHE_FILE = "20news-bydate_py3.pkz"


class CorpusUnavailableError(RuntimeError):
    """The corpus is neither cached nor downloadable."""


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: np.ndarray  # int64 class indices

    def __len__(self) -> int:
        return len(self.texts)


def corpus_help(data_home: str | os.PathLike | None) -> str:
    where = data_home or os.environ.get("SCIKIT_LEARN_DATA") or "~/scikit_learn_data"
    return (
        "The 20 Newsgroups corpus is not available: it is not cached in "
        f"{where} and could not be downloaded. Either connect to the internet once "
        "(scikit-learn downloads 14 MB and caches it), or copy scikit-learn's cache file "
        f"{CACHE_FILE} into a folder and point SCIKIT_LEARN_DATA at it: "
        "`export SCIKIT_LEARN_DATA=/path/to/that/folder`."
    )


def load_corpus(
    *,
    categories: Sequence[str] | None,
    remove: Sequence[str],
    data_home: str | os.PathLike | None = None,
) -> tuple[Split, Split, tuple[str, ...]]:
    """The standard train and test posts, and the class names.

    Raises:
        CorpusUnavailableError: no cache and no network; the message says how to fix it.
        ValueError: an unknown category name.
    """
    from sklearn.datasets import fetch_20newsgroups

    loaded = {}
    for subset in ("train", "test"):
        try:
            bunch = fetch_20newsgroups(
                data_home=data_home,
                subset=subset,
                categories=list(categories) if categories else None,
                remove=tuple(remove),
                shuffle=False,
            )
        except (OSError, EOFError) as error:  # URLError is an OSError; a cut download an EOF
            raise CorpusUnavailableError(f"{corpus_help(data_home)} ({error})") from error
        loaded[subset] = bunch
    names = tuple(loaded["train"].target_names)
    if categories and len(names) != len(set(categories)):
        unknown = sorted(set(categories) - set(names))
        raise ValueError(f"data.categories: unknown newsgroup(s) {unknown}")
    train, test = (
        Split([clean_text(t) for t in loaded[s].data], np.asarray(loaded[s].target, np.int64))
        for s in ("train", "test")
    )
    return train, test, names


def clean_text(text: str) -> str:
    """Normalise white space; keep the words (the tokenizer decides what a token is)."""
    return " ".join(text.split())


def subsample(split: Split, *, per_class: int | None, seed: int) -> Split:
    """At most ``per_class`` posts of each class, chosen reproducibly."""
    if per_class is None:
        return split
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        keep.extend(rng.permutation(members)[:per_class])
    keep = np.sort(np.asarray(keep))
    return Split([split.texts[i] for i in keep], split.labels[keep])


def drop_empty(split: Split) -> tuple[Split, int]:
    keep = [i for i, text in enumerate(split.texts) if split_tokens(text)]
    return Split([split.texts[i] for i in keep], split.labels[keep]), len(split) - len(keep)


def train_validation_split(split: Split, *, fraction: float, seed: int) -> tuple[Split, Split]:
    """A stratified split, so every class is in both parts in the same proportion."""
    from sklearn.model_selection import train_test_split

    idx_train, idx_val = train_test_split(
        np.arange(len(split)), test_size=fraction, random_state=seed, stratify=split.labels
    )
    idx_train, idx_val = np.sort(idx_train), np.sort(idx_val)
    take = lambda idx: Split([split.texts[i] for i in idx], split.labels[idx])  # noqa: E731
    return take(idx_train), take(idx_val)


def save_split(split: Split, path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for text, label in zip(split.texts, split.labels, strict=True):
            handle.write(json.dumps({"text": text, "label": int(label)}) + "\n")


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


def data_card(splits: dict[str, Split], tokenizer: Tokenizer, dropped: int) -> dict:
    """Class counts per split, length statistics, truncation and out-of-vocabulary rates."""
    card: dict = {"classes": list(tokenizer.labels), "dropped_empty_posts": dropped, "splits": {}}
    for name, split in splits.items():
        lengths = np.array([len(split_tokens(text)) for text in split.texts])
        ids = tokenizer.encode(split.texts)
        real = ids > 0
        card["splits"][name] = {
            "posts": len(split),
            "class_counts": np.bincount(split.labels, minlength=len(tokenizer.labels)).tolist(),
            "tokens_mean": round(float(lengths.mean()), 1),
            "tokens_median": float(np.median(lengths)),
            "tokens_p95": float(np.percentile(lengths, 95)),
            "empty_posts": int((lengths == 0).sum()),
            "truncated_share": round(float((lengths > tokenizer.sequence_length).mean()), 4),
            "oov_rate": round(float((ids[real] == 1).mean()) if real.any() else 0.0, 4),
        }
    return card


def run(params: DataParams, paths: Paths, *, data_home: str | None = None) -> dict:
    """Run the data stage: load, clean, split, fit the tokenizer, write outputs.

    Writes ``data/processed/{train,validation,test}.jsonl``, ``tokenizer.json`` and
    ``provenance.json`` in one atomic step, the data card to ``reports/data/card.json`` and
    its headline figures to ``reports/metrics/data.json``; returns the data card.
    """
    train_all, test, names = load_corpus(
        categories=params.categories, remove=params.remove, data_home=data_home
    )
    train_all = subsample(train_all, per_class=params.max_documents_per_class, seed=params.seed)
    test = subsample(test, per_class=params.max_documents_per_class, seed=params.seed)
    train_all, dropped = drop_empty(train_all)
    train, validation = train_validation_split(
        train_all, fraction=params.validation_fraction, seed=params.seed
    )
    tokenizer = Tokenizer.fit(
        train.texts,
        vocabulary_size=params.vocabulary_size,
        sequence_length=params.sequence_length,
        labels=names,
    )
    splits = {"train": train, "validation": validation, "test": test}
    card = data_card(splits, tokenizer, dropped)
    with atomic_dir(paths.processed_dir) as out:
        for name, split in splits.items():
            save_split(split, out / f"{name}.jsonl")
        tokenizer.save(out / TOKENIZER_FILE)
        record = build_provenance(
            stage="data",
            params=to_dict(params),
            inputs={name: out / f"{name}.jsonl" for name in SPLITS},
            metrics={f"{name}_posts": len(split) for name, split in splits.items()},
            extra={"tokenizer_fingerprint": tokenizer.fingerprint()},
            root=paths.root,
        )
        write_json(out / "provenance.json", record)
    write_json(paths.reports_dir / "data" / "card.json", card)
    write_json(
        paths.metrics_dir / "data.json",
        {
            **{f"{name}_posts": len(split) for name, split in splits.items()},
            "vocabulary_size": tokenizer.vocabulary_size,
            "test_oov_rate": card["splits"]["test"]["oov_rate"],
        },
    )
    log.info("data: %s", {name: len(split) for name, split in splits.items()})
    return card

"""The data stage: load a corpus, check it, split it, build the vocabulary, describe it.

The corpus is ``data.source`` (:mod:`maas.sources`): 20 Newsgroups through scikit-learn's
own loader, or a table file or class folder under ``data/raw/``, versioned by ``dvc add``.
Every check runs before anything is written, so bad data stops the stage with a message that
names the file, row and column, and leaves the previous outputs as they were.

Splits: where the source decides them (20 Newsgroups' "bydate" sets, a ``split`` column,
``train/`` and ``test/`` folders) they are kept, so that accuracies compare with published
figures; otherwise a stratified, seeded ``test_fraction`` is held out. Validation comes out
of the training texts (stratified) unless the source names validation rows. Texts without a
single token are dropped from training and validation only (they teach nothing) and kept in
the test set (a fair test has them).

Splits are JSON lines (``{"text": ..., "label": <class index>}``); the class names travel in
the tokenizer file (``labels``) to every model and server.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas import unicode_text
from maas.config import NEWSGROUPS, DataParams, Paths, to_dict
from maas.provenance import atomic_dir, build_provenance, sha256_tree, write_json
from maas.sources import NEWSGROUPS_CACHE_FILE, DataError, RawCorpus, load_source
from maas.splits import SPLITS, Split, save_split
from maas.tokenizer import CHARS_PER_TOKEN, TOKENIZER_FILE, Tokenizer

log = logging.getLogger(__name__)


def clean_text(text: str) -> str:
    """Normalise white space; keep the words (the tokenizer decides what a token is)."""
    return " ".join(text.split())


def class_names(labels: Sequence[Any]) -> tuple[str, ...]:
    """The distinct labels as class names: integers in numeric order, else sorted names."""
    names = {str(label) for label in labels}
    if all(re.fullmatch(r"-?\d+", name) for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def subsample(split: Split, *, per_class: int | None, seed: int) -> Split:
    """At most ``per_class`` posts of each class, chosen reproducibly."""
    if per_class is None:
        return split
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        keep.extend(rng.permutation(members)[:per_class])
    return split.take(np.sort(np.asarray(keep, dtype=int)))


def drop_empty(split: Split, *, max_chars: int) -> tuple[Split, int]:
    """The texts with a token in the part the tokenizer reads (its first ``max_chars``)."""
    keep = [
        i for i, text in enumerate(split.texts) if unicode_text.folded_tokens(text[:max_chars])
    ]
    return split.take(keep), len(split) - len(keep)


def stratified_split(split: Split, *, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, held out): a stratified split, every class in both parts in proportion.

    Raises:
        DataError: too few texts to give every class a place on both sides.
    """
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(split.labels))
    held = math.ceil(fraction * len(split))
    if min(held, len(split) - held) < classes:
        raise DataError(
            f"{len(split)} texts are too few to hold out {fraction:.0%} of them for each of "
            f"{classes} classes: add texts, or raise the fraction"
        )

    idx_rest, idx_held = train_test_split(
        np.arange(len(split)), test_size=fraction, random_state=seed, stratify=split.labels
    )
    return split.take(np.sort(idx_rest)), split.take(np.sort(idx_held))


def check_class_sizes(split: Split, names: Sequence[str], *, needed: int, what: str) -> None:
    """Every class needs ``needed`` texts in ``split`` to be held out from: else a DataError
    that names the class and its count."""
    counts = np.bincount(split.labels, minlength=len(names)).tolist()
    for name, count in zip(names, counts, strict=True):
        if 0 < count < needed:
            raise DataError(
                f"class {name!r} has {count} text{'s' * (count != 1)} {what}: at least "
                f"{needed} are needed to split it (add texts, or drop the class)"
            )


def split_corpus(corpus: RawCorpus, params: DataParams) -> tuple[dict[str, Split], dict]:
    """Train, validation and test splits of a loaded corpus, and what the split dropped.

    Raises:
        DataError: one class only, a class too small to split, no training or test texts,
            or test labels that training never saw.
    """
    names = corpus.names or class_names(corpus.labels)
    if len(names) < 2:
        raise DataError(
            f"{corpus.location}: only one class ({names[0]!r}): a classifier needs two or more"
        )
    index = {name: i for i, name in enumerate(names)}
    whole = Split(
        [clean_text(text) for text in corpus.texts],
        np.fromiter((index[str(label)] for label in corpus.labels), np.int64, len(corpus.labels)),
    )
    per_class, seed = params.max_documents_per_class, params.seed
    validation = None
    if corpus.splits is not None:
        where = np.asarray(corpus.splits)
        parts = {name: whole.take(np.flatnonzero(where == name)) for name in SPLITS}
        for name in ("train", "test"):
            if not len(parts[name]):
                raise DataError(f"{corpus.location}: no texts in the {name} split")
        train_all = subsample(parts["train"], per_class=per_class, seed=seed)
        test = subsample(parts["test"], per_class=per_class, seed=seed)
        if len(parts["validation"]):
            validation = subsample(parts["validation"], per_class=per_class, seed=seed)
    else:
        whole = subsample(whole, per_class=per_class, seed=seed)
        # One for testing, one for validation, one to train on: the least a class can have.
        check_class_sizes(whole, names, needed=3, what=f"in {corpus.location}")
        train_all, test = stratified_split(whole, fraction=params.test_fraction, seed=seed)
    max_chars = CHARS_PER_TOKEN * params.sequence_length
    train_all, dropped = drop_empty(train_all, max_chars=max_chars)
    unseen = sorted(set(np.unique(test.labels)) - set(np.unique(train_all.labels)))
    if unseen:
        raise DataError(
            f"{corpus.location}: test labels never seen in training: "
            f"{[names[i] for i in unseen]} (a model cannot predict them)"
        )
    if validation is None:
        check_class_sizes(train_all, names, needed=2, what="in the training split")
        train, validation = stratified_split(
            train_all, fraction=params.validation_fraction, seed=seed
        )
    else:
        train = train_all
        validation, dropped_validation = drop_empty(validation, max_chars=max_chars)
        dropped += dropped_validation
    splits = {"train": train, "validation": validation, "test": test}
    return splits, {"names": names, "dropped_empty": dropped}


def scripts_found(texts: Sequence[str], *, least: float = 0.001) -> dict[str, float]:
    """The share of letters in each script, largest first; scripts under ``least`` of the
    letters are counted together as ``Other``."""
    chars: Counter[str] = Counter()
    for text in texts:
        chars.update(text)
    scripts: Counter[str] = Counter()
    for char, count in chars.items():
        script = unicode_text.script_of(char)
        if script:
            scripts[script] += count
    total = sum(scripts.values()) or 1
    shares = {name: count / total for name, count in scripts.most_common()}
    found = {name: round(share, 4) for name, share in shares.items() if share >= least}
    rest = sum(share for name, share in shares.items() if name not in found)
    if rest:
        found["Other"] = round(found.get("Other", 0.0) + rest, 4)
    return found


def duplicates(splits: dict[str, Split]) -> dict[str, int]:
    """Texts of the test and validation splits that also appear in training (leakage)."""
    train = set(splits["train"].texts)
    return {
        "test_in_train": sum(text in train for text in splits["test"].texts),
        "validation_in_train": sum(text in train for text in splits["validation"].texts),
        "within_train": len(splits["train"]) - len(train),
    }


def split_card(split: Split, tokenizer: Tokenizer) -> dict:
    """Counts, lengths in tokens, truncation and out-of-vocabulary rate of one split.

    One text at a time, never the whole split's id matrix (500,000 texts x 1,000 ids would be
    2 GB for a few numbers).
    """
    lengths = np.empty(len(split), dtype=np.int64)
    kept = unknown = 0
    for row, text in enumerate(split.texts):
        tokens = tokenizer.tokens(text)
        lengths[row] = len(tokens)
        head = tokens[: tokenizer.sequence_length]
        kept += len(head)
        unknown += sum(not tokenizer.known(token) for token in head)
    if not len(split):
        lengths = np.zeros(1, dtype=np.int64)
    return {
        "posts": len(split),
        "class_counts": np.bincount(split.labels, minlength=len(tokenizer.labels)).tolist(),
        "tokens_mean": round(float(lengths.mean()), 1),
        "tokens_median": float(np.median(lengths)),
        "tokens_p95": float(np.percentile(lengths, 95)),
        "empty_posts": int((lengths == 0).sum()),
        "truncated_share": round(float((lengths > tokenizer.sequence_length).mean()), 4),
        "oov_rate": round(unknown / kept, 4) if kept else 0.0,
    }


def data_card(
    splits: dict[str, Split], tokenizer: Tokenizer, dropped: int, corpus: RawCorpus | None = None
) -> dict:
    """What the corpus is and holds: title, source, classes, per-split statistics, scripts,
    duplicates shared between splits."""
    card: dict = {
        "title": corpus.title if corpus else "",
        "source": corpus.location if corpus else "",
        "classes": list(tokenizer.labels),
        "dropped_empty_posts": dropped,
        "replaced_undecodable_rows": corpus.replaced_rows if corpus else 0,
        "splits": {name: split_card(split, tokenizer) for name, split in splits.items()},
        "scripts": scripts_found(splits["train"].texts),
        "duplicates": duplicates(splits),
    }
    return card


def raw_path(params: DataParams, paths: Paths, data_home: str | os.PathLike | None) -> Path | None:
    """The raw corpus on disk: the source file or folder, or 20 Newsgroups' cache file."""
    if params.source == NEWSGROUPS:
        from sklearn.datasets import get_data_home

        cached = Path(get_data_home(data_home)) / NEWSGROUPS_CACHE_FILE
        return cached if cached.is_file() else None
    return paths.root / params.source


@dataclass(frozen=True)
class Prepared:
    """A corpus loaded, checked and split, with its tokenizer and data card; nothing written."""

    splits: dict[str, Split]
    tokenizer: Tokenizer
    card: dict


def prepare(
    params: DataParams,
    paths: Paths,
    *,
    source: str | os.PathLike | None = None,
    data_home: str | os.PathLike | None = None,
) -> Prepared:
    """Load, check and split a corpus and fit its tokenizer, in memory.

    Args:
        source: another corpus than ``params.source`` (a path relative to the project or an
            absolute one), to look at a file before it joins the pipeline.

    Raises:
        DataError: the source is missing or its data is unusable (file, row and column named).
        CorpusUnavailableError: 20 Newsgroups is neither cached nor downloadable.
    """
    corpus = load_source(
        str(source or params.source),
        root=paths.root,
        text_column=params.text_column,
        label_column=params.label_column,
        split_column=params.split_column,
        encoding_errors=params.encoding_errors,
        categories=params.categories,
        remove=params.remove,
        data_home=data_home,
    )
    splits, split_info = split_corpus(corpus, params)
    del corpus.texts[:]  # the splits hold the cleaned texts now
    tokenizer = Tokenizer.fit(
        splits["train"].texts,
        vocabulary_size=params.vocabulary_size,
        sequence_length=params.sequence_length,
        labels=split_info["names"],
    )
    card = data_card(splits, tokenizer, split_info["dropped_empty"], corpus)
    leaked = card["duplicates"]["test_in_train"]
    if leaked:
        log.warning(
            "data: %d test texts also appear in training (%.1f %% of the test split): "
            "accuracy on them measures memory, not generalisation",
            leaked,
            100 * leaked / len(splits["test"]),
        )
    return Prepared(splits, tokenizer, card)


def run(params: DataParams, paths: Paths, *, data_home: str | os.PathLike | None = None) -> dict:
    """Run the data stage: load, check, split, fit the tokenizer, write outputs.

    Writes ``data/processed/{train,validation,test}.jsonl``, ``tokenizer.json`` and
    ``provenance.json`` in one atomic step, the data card to ``reports/data/card.json`` and
    its headline figures to ``reports/metrics/data.json``; returns the data card. Nothing is
    written when the data fails a check.

    Raises:
        DataError: the source is missing or its data is unusable (file, row and column named).
        CorpusUnavailableError: 20 Newsgroups is neither cached nor downloadable.
    """
    raw_file = paths.root / params.source
    if params.source != NEWSGROUPS and not Path(f"{raw_file}.dvc").is_file():
        log.warning(
            "%s is not tracked by DVC: `dvc add %s` so that `dvc checkout` restores it",
            params.source,
            params.source,
        )
    prepared = prepare(params, paths, data_home=data_home)
    splits, tokenizer, card = prepared.splits, prepared.tokenizer, prepared.card
    leaked = card["duplicates"]["test_in_train"]
    raw = raw_path(params, paths, data_home)
    with atomic_dir(paths.processed_dir) as out:
        for name, split in splits.items():
            save_split(split, out / f"{name}.jsonl")
        tokenizer.save(out / TOKENIZER_FILE)
        record = build_provenance(
            stage="data",
            params=to_dict(params),
            inputs={name: out / f"{name}.jsonl" for name in SPLITS},
            metrics={f"{name}_posts": len(split) for name, split in splits.items()},
            extra={
                "tokenizer_fingerprint": tokenizer.fingerprint(),
                "corpus": card["title"],
                "raw_sha256": sha256_tree(raw)
                if (raw := raw_path(params, paths, data_home))
                else None,
            },
            root=paths.root,
        )
        write_json(out / "provenance.json", record)
    write_json(paths.reports_dir / "data" / "card.json", card)
    write_json(
        paths.metrics_dir / "data.json",
        {
            **{f"{name}_posts": len(split) for name, split in splits.items()},
            "classes": len(tokenizer.labels),
            "vocabulary_size": tokenizer.vocabulary_size,
            "test_oov_rate": card["splits"]["test"]["oov_rate"],
            "test_in_train": leaked,
        },
    )
    log.info("data: %s", {name: len(split) for name, split in splits.items()})
    return card

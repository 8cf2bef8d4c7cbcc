"""What a model's training texts looked like, in the few statistics that drift compares.

:func:`reference_statistics` summarises the training split when a classifier is exported
(``reference.json`` in the artifact folder, :data:`REFERENCE_FILE`); the server computes
:func:`text_features` of live texts and compares the two (:mod:`maas.serving.drift`). Both
sides use these same functions and bins, so a live text and a training text are measured
alike. Every statistic is a distribution (shares that sum to 1):

* ``length``: tokens per text (the tokenizer's tokens, before truncation), in :data:`LENGTH_BINS`;
* ``unknown``: the share of a text's kept tokens outside the vocabulary, in
  :data:`UNKNOWN_BINS` (reference: held-out texts, which the vocabulary was not fitted on);
* ``scripts``: letters per script (:func:`maas.unicode_text.script_of`);
* ``languages``: texts per language (py3langid's 97 languages, from a text's first
  :data:`LANGUAGE_CHARS` characters; ``und`` for a text without letters);
* ``classes``: texts per class (the labels), and ``predicted``: per class the model
  predicted (live: the classes the server answered).

This module is shared by export and serving: it imports neither training nor serving code.
"""

from __future__ import annotations

import bisect
import functools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from maas import unicode_text
from maas.tokenizer import Tokenizer

REFERENCE_FILE = "reference.json"
FORMAT = "maas-reference/1"
# Lower edges: a text of 0 tokens, 1-3, 4-15, ... 1024 and more.
LENGTH_BINS = (0, 1, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_BINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75)  # lower edges of the unknown-token rate
LANGUAGE_CHARS = 300  # enough to tell a language; bounds the cost of a long text
UNDETERMINED = "und"  # ISO 639 for "no language": no letters at all
REFERENCE_TEXTS = 5000  # training texts summarised at most (a seeded sample beyond)


@dataclass(frozen=True)
class TextFeatures:
    """One text, measured: bins of :data:`LENGTH_BINS` and :data:`UNKNOWN_BINS`, letters
    per script, and a language code."""

    length_bin: int
    unknown_bin: int
    scripts: dict[str, int]
    language: str


@functools.cache
def _identifier():
    """py3langid's model (loaded once; about 1.5 s)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE)


def language_of(text: str) -> str:
    """The language of a text (an ISO 639-1 code), or :data:`UNDETERMINED`."""
    head = text[:LANGUAGE_CHARS]
    if not any(char.isalpha() for char in head):
        return UNDETERMINED
    return str(_identifier().classify(head)[0])


def scripts_of(text: str) -> dict[str, int]:
    """Letters per script in ``text``."""
    scripts: Counter[str] = Counter()
    for char, count in Counter(text).items():
        script = unicode_text.script_of(char)
        if script:
            scripts[script] += count
    return dict(scripts)


def text_features(text: str, tokenizer: Tokenizer) -> TextFeatures:
    """Measure one text as :func:`reference_statistics` measures the training texts."""
    tokens = tokenizer.tokens(text)
    return TextFeatures(
        length_bin=bisect.bisect_right(LENGTH_BINS, len(tokens)) - 1,
        unknown_bin=_unknown_bin(tokens, tokenizer),
        scripts=scripts_of(text),
        language=language_of(text),
    )


def unknown_bin(text: str, tokenizer: Tokenizer) -> int:
    """The :data:`UNKNOWN_BINS` bin of a text's unknown-token rate."""
    return _unknown_bin(tokenizer.tokens(text), tokenizer)


def _unknown_bin(tokens: list[str], tokenizer: Tokenizer) -> int:
    kept = tokens[: tokenizer.sequence_length]
    index = tokenizer._index  # type: ignore[attr-defined]  # the lookup keys (folded form)
    unknown = sum(token not in index for token in kept) / len(kept) if kept else 0.0
    return bisect.bisect_right(UNKNOWN_BINS, unknown) - 1


def shares(counts: dict[str, float] | Sequence[float]) -> dict[str, float] | list[float]:
    """Counts as shares of their total (all zeros stay zeros)."""
    if isinstance(counts, dict):
        total = sum(counts.values()) or 1
        return {key: round(value / total, 5) for key, value in counts.items()}
    total = sum(counts) or 1
    return [round(value / total, 5) for value in counts]


def reference_statistics(
    texts: Sequence[str],
    labels: Sequence[int],
    tokenizer: Tokenizer,
    *,
    held_out: Sequence[str] | None = None,
    predicted: Sequence[int] | None = None,
    limit: int = REFERENCE_TEXTS,
    seed: int = 0,
) -> dict:
    """The statistics drift compares live traffic with.

    Args:
        texts: the training split's texts (lengths, scripts, languages).
        labels: their class ids (indices into ``tokenizer.labels``): the class mix.
        held_out: texts the tokenizer was not fitted on (the validation split), for the
            unknown-token rate: every training token is in the vocabulary, so the training
            texts alone would say 0 and any live text would look unusual.
        predicted: the model's classes for some in-distribution texts: live traffic's
            predicted classes are compared with these (a model's predictions need not
            follow the labels' mix), else with the labels.
        limit: measure a seeded sample of this many texts at most (of each of ``texts``
            and ``held_out``; the class mix counts every label).
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    length = [0] * len(LENGTH_BINS)
    scripts: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    for text in _sample(texts, limit, seed):
        features = text_features(text, tokenizer)
        length[features.length_bin] += 1
        scripts.update(features.scripts)
        languages[features.language] += 1
    unknown = [0] * len(UNKNOWN_BINS)
    for text in _sample(texts if held_out is None else held_out, limit, seed):
        unknown[unknown_bin(text, tokenizer)] += 1

    def class_mix(ids: Sequence[int]) -> dict[str, float]:
        counts = Counter(int(i) for i in ids)
        return shares({name: counts.get(i, 0) for i, name in enumerate(tokenizer.labels)})

    statistics = {
        "format": FORMAT,
        "texts": len(texts),
        "held_out_texts": len(held_out) if held_out is not None else 0,
        "length_bins": list(LENGTH_BINS),
        "length": shares(length),
        "unknown_bins": list(UNKNOWN_BINS),
        "unknown": shares(unknown),
        "scripts": shares(dict(scripts.most_common())),
        "languages": shares(dict(languages.most_common())),
        "classes": class_mix(labels),
    }
    if predicted is not None:
        statistics["predicted"] = class_mix(predicted)
    return statistics


def _sample(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    rows = sorted(random.Random(seed).sample(range(len(texts)), limit))
    return [texts[row] for row in rows]

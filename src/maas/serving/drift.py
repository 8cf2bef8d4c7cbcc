"""Drift: live inputs over a sliding window, compared with the model's training statistics.

Each served version with a ``reference.json`` (:mod:`maas.text_stats`, written at export)
gets a :class:`DriftMonitor`: the last ``window`` texts the server analysed, measured as the
reference was (tokens per text, unknown-token rate, scripts, languages), with the classes
the server answered for them. Per feature the figure is the **total variation distance**
between the window's distribution and the reference's: the share of the window's texts
(letters, for scripts) that would have to move to another bin for the two to match. 0 is
the same mix, 1 disjoint ones: 0.3 means that at least 30 % of live inputs look unlike the
training data in that respect. The drift score is the largest of the five figures; the
version drifts when it passes the threshold (``--drift-threshold``). With fewer than
:data:`MIN_TEXTS` texts in the window nothing is judged (a handful of texts differ by
chance: in-distribution windows of 100 texts scored up to 0.23 here, of 500 up to 0.13).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

from maas.text_stats import TextFeatures, text_features
from maas.tokenizer import Tokenizer

FEATURES = ("length", "unknown", "scripts", "languages", "classes")
MIN_TEXTS = 200  # a window judged on fewer would flag chance


def total_variation(reference: Mapping[str, float], counts: Mapping[str, float]) -> float:
    """Half the L1 distance between a reference's shares and ``counts`` made shares."""
    total = sum(counts.values())
    if total <= 0:
        return 0.0
    keys = set(reference) | set(counts)
    distance = sum(abs(reference.get(k, 0.0) - counts.get(k, 0) / total) for k in keys) / 2
    return round(min(distance, 1.0), 4)


class DriftMonitor:
    """One version's window of analysed texts and its distances from the reference."""

    def __init__(
        self,
        reference: Mapping[str, Any],
        tokenizer: Tokenizer,
        *,
        window: int,
        threshold: float,
    ) -> None:
        if window < 1:
            raise ValueError(f"the drift window must hold >= 1 text, got {window}")
        self.tokenizer, self.window, self.threshold = tokenizer, window, threshold
        self.labels = tuple(tokenizer.labels)
        self.reference = {
            "length": _indexed(reference["length"]),
            "unknown": _indexed(reference["unknown"]),
            "scripts": dict(reference["scripts"]),
            "languages": dict(reference["languages"]),
            "classes": dict(reference.get("predicted") or reference["classes"]),
        }
        self.items: deque[tuple[TextFeatures, int]] = deque()
        self.counts = {feature: Counter() for feature in FEATURES}

    def add(self, text: str, class_id: int) -> None:
        """Measure one text the server answered with ``class_id``; the oldest one leaves
        when the window is full."""
        features = text_features(text, self.tokenizer)
        self.items.append((features, class_id))
        self._count(features, class_id, 1)
        if len(self.items) > self.window:
            self._count(*self.items.popleft(), -1)

    def _count(self, features: TextFeatures, class_id: int, sign: int) -> None:
        counts = self.counts
        counts["length"][str(features.length_bin)] += sign
        counts["unknown"][str(features.unknown_bin)] += sign
        counts["languages"][features.language] += sign
        counts["classes"][self.labels[class_id]] += sign
        for script, letters in features.scripts.items():
            counts["scripts"][script] += sign * letters

    def report(self) -> dict[str, Any]:
        """The window's figures: per feature, the score (their largest), and the verdict."""
        texts = len(self.items)
        report: dict[str, Any] = {
            "texts": texts,
            "window": self.window,
            "threshold": self.threshold,
        }
        if texts < min(MIN_TEXTS, self.window):
            return {**report, "score": None, "drifted": None, "features": {}}
        figures = {
            feature: total_variation(self.reference[feature], self.counts[feature])
            for feature in FEATURES
        }
        score = max(figures.values())
        return {
            **report,
            "score": score,
            "drifted": score > self.threshold,
            "worst": max(figures, key=figures.__getitem__),
            "features": figures,
        }


def _indexed(shares: list[float]) -> dict[str, float]:
    """Shares per bin, keyed by the bin's index as text (as the window counts them)."""
    return {str(i): share for i, share in enumerate(shares)}

"""The evaluate stage: score the exported model on the test split, beside a classic baseline.

The model is evaluated through its exported SavedModel on raw test texts, the same path a
server takes, so the figures also prove the export. The baseline is TF-IDF + LinearSVC
trained on the same training split over the very tokens the model reads (the shared
tokenizer's words, and characters plus bigrams where a script has no spaces): scikit-learn's
default token pattern would drop most of a Chinese text and one-letter words, and the
comparison would no longer be fair on every corpus.

Both are scored on the same test texts, so the stage also says whether their difference is
larger than the test split can tell apart (:func:`paired_comparison`): on a test split of a
few hundred texts a point of accuracy is a handful of texts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from maas.config import EvaluateParams, Paths, to_dict
from maas.provenance import build_provenance, read_json, write_json
from maas.reporting import describe_comparison
from maas.splits import Split, read_split

log = logging.getLogger(__name__)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, a per-class report and the confusion matrix."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    classes = np.arange(len(labels))
    report = classification_report(
        y_true,
        y_pred,
        labels=classes,
        target_names=list(labels),
        output_dict=True,
        zero_division=0,
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
        ),
        "per_class": {name: report[name] for name in labels},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def tfidf_baseline(
    train: Split,
    test: Split,
    *,
    c: float,
    max_features: int | None,
    analyzer: Callable[[str], list[str]],
) -> tuple[np.ndarray, float]:
    """Predictions of TF-IDF + LinearSVC on ``test``, and the fit time in seconds.

    ``analyzer`` cuts a text into its tokens (the model's tokenizer's, for a fair match).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    start = time.perf_counter()
    pipeline = make_pipeline(
        TfidfVectorizer(sublinear_tf=True, max_features=max_features, analyzer=analyzer),
        LinearSVC(C=c),
    )
    pipeline.fit(train.texts, train.labels)
    return pipeline.predict(test.texts), time.perf_counter() - start


BOOTSTRAP_RESAMPLES = 10_000  # the interval's bounds move by < 0.1 point between seeds
CONFIDENCE = 0.95


def paired_comparison(
    y_true: np.ndarray, model_pred: np.ndarray, baseline_pred: np.ndarray, *, seed: int = 0
) -> dict[str, Any]:
    """How far the model's test accuracy is from the baseline's, and whether it is noise.

    Paired, on the same texts: McNemar's exact test on the texts exactly one of the two gets
    right (a binomial test of ``model_only`` against ``baseline_only``), and a bootstrap
    interval of the accuracy difference. Each text's difference is -1, 0 or +1, so a
    resample is one multinomial draw of those three counts (exact, and no index matrix of
    ``resamples x texts`` even on 100,000 test texts).
    """
    from scipy.stats import binomtest

    y_true, model_pred, baseline_pred = map(np.asarray, (y_true, model_pred, baseline_pred))
    if not len(y_true) == len(model_pred) == len(baseline_pred) > 0:
        raise ValueError("paired_comparison needs the same non-zero number of texts thrice")
    model_right, baseline_right = model_pred == y_true, baseline_pred == y_true
    model_only = int(np.sum(model_right & ~baseline_right))
    baseline_only = int(np.sum(baseline_right & ~model_right))
    texts = len(y_true)
    discordant = model_only + baseline_only
    p_value = binomtest(model_only, discordant, 0.5).pvalue if discordant else 1.0
    shares = np.array([model_only, baseline_only, texts - discordant]) / texts
    draws = np.random.default_rng(seed).multinomial(texts, shares, size=BOOTSTRAP_RESAMPLES)
    differences = (draws[:, 0] - draws[:, 1]) / texts
    tail = (1.0 - CONFIDENCE) / 2
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    return {
        "accuracy_difference": (model_only - baseline_only) / texts,
        "ci95_low": float(low),
        "ci95_high": float(high),
        "model_only_correct": model_only,
        "baseline_only_correct": baseline_only,
        "mcnemar_p": float(p_value),
    }


def predict_texts(
    predict: Callable[[Sequence[str]], np.ndarray],
    texts: Sequence[str],
    batch_size: int = 256,
    max_chars: int = 500_000,
) -> np.ndarray:
    """Class probabilities for ``texts``, in batches, from a texts-to-probabilities callable.

    The batches hold texts of similar length (:func:`predict_in_length_order`), and at most
    ``max_chars`` characters: the SavedModel tokenizes about 90 bytes a character, so 256 of
    the longest posts at once would take over a gigabyte for a moment.
    """
    lengths = [len(text) for text in texts]
    return predict_in_length_order(predict, texts, lengths, batch_size, max_total=max_chars)


def predict_in_length_order(
    predict: Callable,
    items: Sequence,
    lengths: Sequence[int],
    batch_size: int = 256,
    *,
    max_total: int | None = None,
) -> np.ndarray:
    """``predict`` over ``items`` (texts, or rows of token ids) in batches of similar length.

    Rows come back in the given order. A model that cuts a batch's padding (the wide model)
    then pays for each batch's own length instead of the longest post's in it. A batch holds
    at most ``batch_size`` items and, if given, lengths summing to ``max_total`` (or one item).
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    ordered = items[order] if isinstance(items, np.ndarray) else [items[i] for i in order]
    bounds = batch_bounds(np.asarray(lengths)[order], batch_size, max_total)
    chunks = [predict(ordered[start:end]) for start, end in bounds]
    stacked = np.concatenate(chunks, axis=0)
    probabilities = np.empty_like(stacked)
    probabilities[order] = stacked
    return probabilities


def batch_bounds(
    lengths: np.ndarray, batch_size: int, max_total: int | None
) -> list[tuple[int, int]]:
    """(start, end) of consecutive batches: at most ``batch_size`` items, and lengths summing
    to at most ``max_total`` where given (a longer item makes a batch of its own)."""
    bounds, start, total = [], 0, 0
    for index, length in enumerate(lengths):
        full = index - start >= batch_size
        if index > start and (full or (max_total is not None and total + length > max_total)):
            bounds.append((start, index))
            start, total = index, 0
        total += int(length)
    if start < len(lengths):
        bounds.append((start, len(lengths)))
    return bounds


def run(params: EvaluateParams, paths: Paths) -> dict[str, Any]:
    """The evaluate stage: returns the full report and writes ``reports/metrics/evaluate.json``."""
    from maas.runtime import load_runtime

    runtime = load_runtime(paths.classifier_dir)  # verifies the files against provenance
    labels = runtime.labels
    train, test = read_split(paths.split("train")), read_split(paths.split("test"))
    start = time.perf_counter()
    probabilities = predict_texts(runtime.predict, test.texts)
    model_seconds = time.perf_counter() - start
    predicted = probabilities.argmax(axis=1)
    model = classification_metrics(test.labels, predicted, labels)
    baseline_pred, baseline_seconds = tfidf_baseline(
        train,
        test,
        c=params.baseline_c,
        max_features=params.baseline_max_features,
        analyzer=runtime.tokenizer.tokens,
    )
    baseline = classification_metrics(test.labels, baseline_pred, labels)
    summary = {
        "test_posts": len(test),
        "model": {
            "accuracy": model["accuracy"],
            "macro_f1": model["macro_f1"],
            "predict_seconds": round(model_seconds, 2),
        },
        "baseline": {
            "accuracy": baseline["accuracy"],
            "macro_f1": baseline["macro_f1"],
            "fit_seconds": round(baseline_seconds, 2),
        },
        "accuracy_gap_vs_baseline": model["accuracy"] - baseline["accuracy"],
        "model_vs_baseline": paired_comparison(test.labels, predicted, baseline_pred),
    }
    write_json(paths.metrics_dir / "evaluate.json", summary)
    report = {"summary": summary, "model": model, "baseline": baseline, "labels": list(labels)}
    write_json(
        paths.reports_dir / "evaluation" / "report.json",
        {
            **report,
            "provenance": build_provenance(
                stage="evaluate",
                params=to_dict(params),
                metrics=summary,
                root=paths.root,
                inputs={
                    "model": paths.classifier_dir / "provenance.json",
                    "test": paths.split("test"),
                },
                extra={"model_provenance": read_json(paths.classifier_dir / "provenance.json")},
            ),
        },
    )
    log.info("evaluate: %s", summary)
    log.info("evaluate: %s", describe_comparison(summary["model_vs_baseline"]))
    return report

"""Every figure of the project: the stages' notebooks, the report page and the benchmarks.

Each function returns a :class:`Figure` built without pyplot's global state, so it works the
same in a notebook, a test and a headless pipeline run. Without pyplot, IPython knows no image
formatter for a figure (it would show ``<Figure size ...>`` as text), so :class:`Figure` renders
itself as PNG, and :func:`show` writes a figure under ``reports/figures`` and displays *the same
PNG bytes* in the notebook: what a reader sees is what the pipeline wrote.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.figure
import numpy as np

DPI = 110
log = logging.getLogger(__name__)


class Figure(matplotlib.figure.Figure):
    """A matplotlib figure that notebooks (Jupyter, papermill, nbval) display as PNG."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self)


def save(figure: matplotlib.figure.Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG file (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(figure))
    return path


def show(figure: matplotlib.figure.Figure, path: str | Path) -> None:
    """Write ``figure`` to ``path`` and display the same PNG in the notebook.

    The image output carries the file's name in its metadata (``{"maas": {"file": ...}}``),
    so a test can match every image of an executed notebook with the file the stage wrote.
    """
    from IPython.display import Image, display

    path = save(figure, path)
    display(Image(data=path.read_bytes(), format="png"), metadata={"maas": {"file": path.name}})


def png_bytes(figure: matplotlib.figure.Figure) -> bytes:
    """The figure as PNG (the bytes :func:`save` writes).

    Class names may be in any script: fonts installed for Han, kana, Hangul or Thai are
    fallbacks after DejaVu Sans, and a glyph no installed font has is logged once (with the
    fix) instead of warned once per character.
    """
    _use_fallback_fonts()
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    missing = [w for w in caught if "missing from font" in str(w.message)]
    if missing and not _warned_missing_glyphs:
        _warned_missing_glyphs.append(True)
        log.warning(
            "figures: %d characters have no glyph in the installed fonts (shown as boxes); "
            "install a font for their script, e.g. Debian's fonts-noto-cjk",
            len(missing),
        )
    for warning in caught:
        if warning not in missing:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return buffer.getvalue()


# Families tried, in order, for glyphs DejaVu Sans lacks (whichever are installed).
FALLBACK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Source Han Sans",
    "WenQuanYi Zen Hei", "Droid Sans Fallback", "IPAGothic", "Noto Sans Thai",
)  # fmt: skip
_warned_missing_glyphs: list[bool] = []


@functools.cache
def _use_fallback_fonts() -> None:
    import matplotlib
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    found = [name for name in FALLBACK_FONTS if name in installed]
    if found:
        matplotlib.rcParams["font.family"] = ["DejaVu Sans", *found]


def data_card(card: Mapping) -> Figure:
    """Texts per class and split, and the distribution of text lengths."""
    labels = card["classes"]
    splits = card["splits"]
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    counts_ax, lengths_ax = figure.subplots(1, 2, width_ratios=[2, 1])
    width = 0.8 / len(splits)
    y = np.arange(len(labels))
    for i, (name, split) in enumerate(splits.items()):
        counts_ax.barh(y + i * width, split["class_counts"], height=width, label=name)
    counts_ax.set_yticks(y + width * (len(splits) - 1) / 2, labels, fontsize=8)
    counts_ax.invert_yaxis()
    counts_ax.set_xlabel("texts")
    counts_ax.set_title("Texts per class")
    counts_ax.legend()
    stats = ["tokens_median", "tokens_mean", "tokens_p95"]
    for i, (name, split) in enumerate(splits.items()):
        lengths_ax.bar(
            np.arange(len(stats)) + i * width, [split[s] for s in stats], width, label=name
        )
    lengths_ax.set_xticks(np.arange(len(stats)) + width, ["median", "mean", "95th pct"])
    lengths_ax.set_ylabel("tokens per text")
    lengths_ax.set_title("Text length")
    lengths_ax.legend()
    return figure


def training_curves(
    history: Mapping[str, Sequence[float]], best_epoch: int | None = None
) -> Figure:
    """Loss and accuracy per epoch, training against validation."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    for ax, metric in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        epochs = np.arange(1, len(history[metric]) + 1)
        ax.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    return figure


def confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix: each row shows where one class's posts went."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(9, 8), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    return figure


def per_class_f1(reports: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Figure:
    """F1 per class for several models side by side (``{model: per_class_report}``)."""
    names = list(reports)
    labels = list(next(iter(reports.values())))
    figure = Figure(figsize=(10, 6), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(names)
    y = np.arange(len(labels))
    for i, name in enumerate(names):
        ax.barh(
            y + i * width,
            [reports[name][label]["f1-score"] for label in labels],
            height=width,
            label=name,
        )
    ax.set_yticks(y + width * (len(names) - 1) / 2, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 on the test split")
    ax.legend()
    return figure


def tradeoff(rows: Sequence[Mapping[str, Any]], *, x: str, xlabel: str) -> Figure:
    """Test accuracy against one cost (size or latency), log scale, one labelled dot a row."""
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    ax = figure.subplots()
    # Variants of one model share an accuracy: stagger their labels so that they stay legible.
    offsets = [(5, 4), (5, -10), (-5, 12), (-5, -16), (5, 18)]
    for index, row in enumerate(rows):
        teacher = row["variant"].startswith("teacher")
        ax.scatter(row[x], row["accuracy"], marker="s" if teacher else "o", s=40)
        dx, dy = offsets[index % len(offsets)]
        ax.annotate(
            row["variant"],
            (row[x], row["accuracy"]),
            fontsize=8,
            xytext=(dx, dy),
            textcoords="offset points",
            ha="left" if dx > 0 else "right",
        )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    return figure


def accuracy_vs_size(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """The compress stage's rows: accuracy against the gzipped model file."""
    figure = tradeoff(rows, x="gzip_bytes", xlabel="model file, gzipped (bytes, log)")
    figure.axes[0].set_title("Accuracy against size")
    return figure


def accuracy_vs_latency(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """The compress stage's rows: accuracy against single-text latency."""
    figure = tradeoff(
        rows, x="latency_p50_ms", xlabel="single-text latency p50 (ms, log; tokenization included)"
    )
    figure.axes[0].set_title("Accuracy against latency")
    return figure


def serving_latency(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Median and 99th percentile latency per model and protocol (single-text requests).

    Each row names a ``model`` and, per protocol, ``<protocol>_p50_ms`` and ``<protocol>_p99_ms``.
    """
    protocols = [key.removesuffix("_p50_ms") for key in rows[0] if key.endswith("_p50_ms")]
    figure = Figure(figsize=(10, 1.2 + 0.9 * len(rows)), layout="constrained")
    ax = figure.subplots()
    height = 0.8 / len(protocols)
    y = np.arange(len(rows))
    for i, protocol in enumerate(protocols):
        p50 = [row[f"{protocol}_p50_ms"] for row in rows]
        p99 = [row[f"{protocol}_p99_ms"] for row in rows]
        bars = ax.barh(y + i * height, p50, height=height, label=f"{protocol} p50")
        ax.errorbar(
            p99, y + i * height, fmt="|", color=bars.patches[0].get_facecolor(), markersize=12
        )
    ax.set_yticks(y + height * (len(protocols) - 1) / 2, [row["model"] for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel("latency per request, ms (bar: median, tick: 99th percentile)")
    ax.set_title("Sequential single-text requests on loopback")
    figure.legend(loc="outside right upper", fontsize=8)
    return figure


def experiments(table: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> Figure:
    """One group of bars per experiment (``maas.experiments`` rows), one bar per metric."""
    names = [row["experiment"] for row in table]
    figure = Figure(
        figsize=(10, 1.5 + 0.5 * len(names) * max(len(metrics), 1)), layout="constrained"
    )
    ax = figure.subplots()
    height = 0.8 / max(len(metrics), 1)
    y = np.arange(len(names))
    for i, metric in enumerate(metrics):
        values = [row.get(metric) for row in table]
        numbers = [v if isinstance(v, int | float) else np.nan for v in values]
        ax.barh(y + i * height, numbers, height=height, label=metric)
    ax.set_yticks(y + height * (len(metrics) - 1) / 2, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("value")
    ax.set_title("Experiments (dvc exp show)")
    ax.legend(fontsize=8)
    return figure

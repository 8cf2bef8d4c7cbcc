"""Figures for the notebooks and reports.

Each function returns a :class:`matplotlib.figure.Figure` built without pyplot's global
state, so it works the same in a notebook, a test and a headless pipeline run. Notebooks
display the figure and :func:`save` writes it under ``reports/figures``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def data_card(card: Mapping) -> Figure:
    """Posts per class and split, and the distribution of post lengths."""
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
    counts_ax.set_xlabel("posts")
    counts_ax.set_title("Posts per class")
    counts_ax.legend()
    stats = ["tokens_median", "tokens_mean", "tokens_p95"]
    for i, (name, split) in enumerate(splits.items()):
        lengths_ax.bar(
            np.arange(len(stats)) + i * width, [split[s] for s in stats], width, label=name
        )
    lengths_ax.set_xticks(np.arange(len(stats)) + width, ["median", "mean", "95th pct"])
    lengths_ax.set_ylabel("tokens per post")
    lengths_ax.set_title("Post length")
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

"""Small helpers that turn results into tables for notebooks and Markdown reports."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts), columns in the order given or first seen."""
    if not rows:
        return "_(no rows)_"
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def key_value_table(mapping: Mapping[str, Any], key: str = "name", value: str = "value") -> str:
    """A two-column Markdown table of a flat mapping."""
    return markdown_table([{key: k, value: v} for k, v in mapping.items()], [key, value])


def metrics_name(path: str) -> str:
    """A metrics file's short name: ``reports/metrics/evaluate.json`` -> ``evaluate``;
    DVCLive's ``reports/train/metrics.json`` -> ``train`` (its folder)."""
    file = PurePosixPath(path)
    return file.parent.name if file.stem == "metrics" else file.stem


def flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested mappings as ``(dotted key, value)`` pairs, keys after ``prefix``."""
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def corpus_summary(card: Mapping[str, Any]) -> str:
    """One sentence on a data card: the corpus, its classes, scripts and shared texts."""
    classes = card["classes"]
    shown = ", ".join(classes[:12]) + (
        f", ... ({len(classes) - 12} more)" if len(classes) > 12 else ""
    )
    text = f"{card.get('title') or 'The corpus'}: {len(classes)} classes ({shown})."
    scripts = card.get("scripts") or {}
    if scripts:
        text += " Letters: " + ", ".join(f"{k} {v:.0%}" for k, v in scripts.items()) + "."
    shared = (card.get("duplicates") or {}).get("test_in_train")
    if shared:
        text += f" {shared} test texts also appear in training (leakage)."
    return text


def describe_comparison(comparison: dict[str, Any]) -> str:
    """One sentence for a reader on :func:`maas.evaluate.paired_comparison`'s result: the
    difference in points, its interval, and what it means."""
    points = {k: 100 * comparison[k] for k in ("accuracy_difference", "ci95_low", "ci95_high")}
    if points["ci95_low"] > 0:
        verdict = "the model is more accurate than the baseline"
    elif points["ci95_high"] < 0:
        verdict = "the baseline is more accurate than the model"
    else:
        verdict = "this test split cannot tell the two apart"
    return (
        f"Model minus baseline: {points['accuracy_difference']:+.2f} points of accuracy "
        f"(95 % bootstrap interval {points['ci95_low']:+.2f} to {points['ci95_high']:+.2f}); "
        f"the model alone is right on {comparison['model_only_correct']} test texts, the "
        f"baseline alone on {comparison['baseline_only_correct']} (McNemar p = "
        f"{comparison['mcnemar_p']:.3g}): {verdict}."
    )

"""Measure compressed variants: file and gzip size, latency, throughput; the table; the plots.

Timings are taken through the same callable a server uses, ``predict(texts)``, so they
*include tokenization* (raw text in, probabilities out) for every row alike; the teacher's
Keras row is ``model.predict(tokenizer.encode(texts))``, also from raw text. They are wall
times on this machine's CPU, while other work may share it: all rows are timed in turns
(:func:`benchmark`), and rows of one run compare; runs compare less well.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maas.config import CompressSettings, TargetParams
from maas.reporting import markdown_table

Predict = Callable[[Sequence[str]], np.ndarray]
GZIP_LEVEL = 6  # gzip's default (see gzip_size)

# Columns of the Markdown table, in order, with their headers.
TABLE_COLUMNS = {
    "variant": "variant",
    "format": "format",
    "parameters": "parameters",
    "file_mb": "file MB",
    "gzip_mb": "gzip MB",
    "sparsity": "sparsity",
    "accuracy": "test accuracy",
    "macro_f1": "macro-F1",
    "latency_p50_ms": "p50 ms",
    "latency_p99_ms": "p99 ms",
    "throughput_per_s": "batched posts/s",
}


def tree_size(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def gzip_size(path: str | Path) -> int:
    """Bytes after gzip of a file, or the sum over every file under a folder.

    This is what a download or a model store would move: runs of zeros (pruning) and small
    integers (quantization) compress, random float32 mantissas hardly do. At gzip's default
    level: ``-9`` gains 6 % at most on these files and takes 10x as long on the pruned ones
    (35 s against 3 s for the pruned ensemble), a tenth of the compress stage.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return sum(
        len(gzip.compress(item.read_bytes(), compresslevel=GZIP_LEVEL, mtime=0)) for item in files
    )


def batches(texts: Sequence[str], *, batch_size: int, count: int) -> list[list[str]]:
    """``count`` batches of ``batch_size`` texts, cycling through ``texts``."""
    texts = list(texts)
    return [
        [texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)] for i in range(count)
    ]


def _timed(predict: Predict, texts: Sequence[str]) -> float:
    start = time.perf_counter()
    predict(texts)
    return time.perf_counter() - start


def benchmark(
    predictors: Mapping[str, Predict], texts: Sequence[str], settings: CompressSettings
) -> dict[str, dict[str, float]]:
    """Single-text latency (p50, p99 in ms) and batch throughput of several predictors.

    Measured in turns: each text goes through every predictor before the next text, each
    batch likewise, so that a busy spell of a shared machine falls on every row alike rather
    than on whichever variant happened to be timed then.
    """
    timed = list(texts)[: settings.latency_examples]
    for predict in predictors.values():
        for text in timed[: settings.warmup]:
            predict([text])
    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    for text in timed:
        for name, predict in predictors.items():
            seconds[name].append(_timed(predict, [text]))
    chunks = batches(
        texts, batch_size=settings.throughput_batch_size, count=settings.throughput_batches
    )
    for predict in predictors.values():
        predict(chunks[0])  # a first call at this batch size may allocate or trace
    spent = dict.fromkeys(predictors, 0.0)
    for chunk in chunks:
        for name, predict in predictors.items():
            spent[name] += _timed(predict, chunk)
    posts = settings.throughput_batch_size * settings.throughput_batches
    results = {}
    for name, samples in seconds.items():
        millis = np.asarray(samples) * 1000.0
        results[name] = {
            "latency_p50_ms": float(np.percentile(millis, 50)),
            "latency_p99_ms": float(np.percentile(millis, 99)),
            "throughput_per_s": posts / spent[name],
        }
    return results


def display_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the table: sizes in MB, figures rounded."""
    shown = []
    for row in rows:
        item = {key: row.get(key, "") for key in TABLE_COLUMNS}
        item["file_mb"] = round(row["file_bytes"] / 1e6, 3)
        item["gzip_mb"] = round(row["gzip_bytes"] / 1e6, 3)
        item["sparsity"] = round(row["sparsity"], 3)
        item["accuracy"] = round(row["accuracy"], 4)
        item["macro_f1"] = round(row["macro_f1"], 4)
        item["latency_p50_ms"] = round(row["latency_p50_ms"], 3)
        item["latency_p99_ms"] = round(row["latency_p99_ms"], 3)
        item["throughput_per_s"] = int(round(row["throughput_per_s"]))
        shown.append({TABLE_COLUMNS[key]: value for key, value in item.items()})
    return shown


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table of the report."""
    return markdown_table(display_rows(rows), list(TABLE_COLUMNS.values()))


def targets(rows: Mapping[str, Mapping[str, Any]], goals: TargetParams) -> dict[str, Any]:
    """The benchmark targets (``compress.targets``), measured: ratios, losses in points, the
    goal beside each, and whether it is met.

    ``rows`` maps variant names (and ``teacher_keras``) to their measured rows; targets whose
    variants were not built are left out.
    """
    out: dict[str, Any] = {}
    reference = rows.get("float32")
    if reference:
        for name in ("int8", "dynamic_int8", "qat_int8"):
            if name in rows:
                out[name] = _quantized(rows[name], reference, goals)
        for name in ("pruned_float32", "pruned_int8"):
            if name in rows:
                out[name] = _pruned(rows[name], reference, goals)
    if "distilled" in rows:
        out["distilled"] = _distilled(rows, goals)
    variants = {k: v for k, v in rows.items() if not k.startswith("teacher")}
    if variants:
        out["fastest"] = _fastest(variants, rows["teacher_keras"], goals)
    return out


def _points_lost(row: Mapping[str, Any], base: Mapping[str, Any]) -> float:
    return round(100.0 * (base["accuracy"] - row["accuracy"]), 3)


def _quantized(row, reference, goals: TargetParams) -> dict[str, Any]:
    ratio = reference["file_bytes"] / row["file_bytes"]
    loss = _points_lost(row, reference)
    return {
        "size_ratio_vs_float32": round(ratio, 3),
        "accuracy_loss_points": loss,
        "goal": f">= {goals.quantized_size_ratio}x smaller, "
        f"<= {goals.quantized_accuracy_loss_points} points lost",
        "met": bool(
            ratio >= goals.quantized_size_ratio and loss <= goals.quantized_accuracy_loss_points
        ),
    }


def _pruned(row, reference, goals: TargetParams) -> dict[str, Any]:
    ratio = reference["gzip_bytes"] / row["gzip_bytes"]
    loss = _points_lost(row, reference)
    return {
        "gzip_ratio_vs_float32": round(ratio, 3),
        "accuracy_loss_points": loss,
        "goal": f">= {goals.pruned_gzip_ratio}x smaller gzipped, "
        f"<= {goals.pruned_accuracy_loss_points} points lost",
        "met": bool(
            ratio >= goals.pruned_gzip_ratio and loss <= goals.pruned_accuracy_loss_points
        ),
    }


def _distilled(rows: Mapping[str, Mapping[str, Any]], goals: TargetParams) -> dict[str, Any]:
    teacher, student = rows["teacher_keras"], rows["distilled"]
    ratio = teacher["parameters"] / student["parameters"]
    share = student["accuracy"] / teacher["accuracy"] if teacher["accuracy"] else 0.0
    gain = None
    if "scratch" in rows:
        gain = round(100.0 * (student["accuracy"] - rows["scratch"]["accuracy"]), 3)
    return {
        "parameter_ratio_vs_teacher": round(ratio, 3),
        "accuracy_share_of_teacher": round(share, 4),
        "gain_over_scratch_points": gain,
        "goal": f">= {goals.distilled_parameter_ratio}x fewer parameters, "
        f">= {goals.distilled_accuracy_share:.0%} of the teacher's accuracy, better than scratch",
        "met": bool(
            ratio >= goals.distilled_parameter_ratio
            and share >= goals.distilled_accuracy_share
            and gain is not None
            and gain > 0
        ),
    }


def _fastest(variants, teacher, goals: TargetParams) -> dict[str, Any]:
    fastest = min(variants, key=lambda k: variants[k]["latency_p50_ms"])
    speedup = teacher["latency_p50_ms"] / variants[fastest]["latency_p50_ms"]
    return {
        "variant": fastest,
        "speedup_vs_keras_predict": round(speedup, 2),
        "goal": f">= {goals.fastest_speedup}x faster than Keras model.predict (p50)",
        "met": bool(speedup >= goals.fastest_speedup),
    }


def target_rows(targets: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The targets as table rows: one per checked variant, its measured figures beside."""
    return [
        {
            "target": name,
            "met": values.get("met"),
            **{k: v for k, v in values.items() if k != "met"},
        }
        for name, values in targets.items()
    ]


def conversion_rows(conversions: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What each conversion produced: mode, integer-only or not (and why), its ops."""
    return [
        {
            "variant": name,
            "source": info.get("source", ""),
            "mode": info.get("mode", info.get("opset", "")),
            "integer only": info.get("integer_only", ""),
            "ops": ", ".join(f"{op}×{n}" for op, n in info.get("ops", {}).items()),
            "fallback reason": info.get("fallback_reason", ""),
        }
        for name, info in conversions.items()
        if "ops" in info
    ]

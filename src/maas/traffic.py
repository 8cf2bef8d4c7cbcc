"""Reading the server's traffic log (``maas serve --payload-log DIR``) in a notebook.

:func:`read_records` reads every record under the folder; :func:`texts_frame` makes one row
per text; :func:`volume`, :func:`latency`, :func:`class_mix` and :func:`least_confident`
answer the usual questions (how much traffic, how fast, which classes, which texts the
model was least sure of: candidates for labelling, :func:`labelling_candidates` as table
rows); :func:`overview` plots the first three.
The record format is :mod:`maas.serving.payload_log`'s; serving never imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maas.plots import Figure
from maas.serving.payload_log import FILE_PREFIX, FILE_SUFFIX


def read_records(directory: str | Path) -> list[dict[str, Any]]:
    """Every record under ``directory``, oldest file first; a line still being written
    (the last of a live file) is skipped.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"traffic log folder not found: {directory}: start a server with"
            f" `maas serve --payload-log {directory} ...`, or point log_dir at its folder"
        )
    paths = sorted(directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
    records = []
    for path in sorted(paths, key=lambda p: (p.stat().st_mtime, p.name)):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return records


COLUMNS = ("time", "request_id", "model", "version", "protocol", "status", "latency_ms",
           "key_id", "text", "label", "confidence")  # fmt: skip


def texts_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per text: the request's fields, the (redacted) text, its class, confidence."""
    rows = [
        {
            **{key: record.get(key) for key in COLUMNS[:8]},
            "text": text,
            "label": output.get("label"),
            "confidence": output.get("confidence"),
        }
        for record in records
        for text, output in zip(record.get("inputs", []), record.get("outputs", []), strict=False)
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame


def requests_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per request (a request may hold several texts)."""
    return frame.drop_duplicates("request_id")[list(COLUMNS[:8])].reset_index(drop=True)


def volume(frame: pd.DataFrame, every: str = "1min") -> pd.DataFrame:
    """Requests and texts per ``every`` (a pandas frequency), per model."""
    requests = requests_frame(frame)
    counts = requests.groupby([pd.Grouper(key="time", freq=every), "model"]).size()
    texts = frame.groupby([pd.Grouper(key="time", freq=every), "model"]).size()
    return pd.DataFrame({"requests": counts, "texts": texts}).fillna(0).astype(int).reset_index()


def latency(frame: pd.DataFrame) -> pd.DataFrame:
    """Requests and their latency percentiles (ms) per model, version and protocol."""
    requests = requests_frame(frame)
    grouped = requests.groupby(["model", "version", "protocol"])["latency_ms"]
    table = grouped.agg(
        requests="size",
        p50=lambda s: np.percentile(s, 50),
        p90=lambda s: np.percentile(s, 90),
        p99=lambda s: np.percentile(s, 99),
    )
    return table.round(2).reset_index()


def class_mix(frame: pd.DataFrame) -> pd.DataFrame:
    """Texts and their share per predicted class, per model."""
    counts = frame.groupby(["model", "label"]).size().rename("texts").reset_index()
    counts["share"] = (counts["texts"] / counts.groupby("model")["texts"].transform("sum")).round(
        4
    )
    return counts.sort_values(["model", "texts"], ascending=[True, False]).reset_index(drop=True)


def least_confident(frame: pd.DataFrame, count: int = 20) -> pd.DataFrame:
    """The ``count`` distinct texts the model was least sure of: labelling candidates."""
    unique = frame.sort_values("confidence").drop_duplicates(["model", "text"])
    columns = ["confidence", "label", "model", "version", "text", "time"]
    return unique.head(count)[columns].reset_index(drop=True)


def labelling_candidates(frame: pd.DataFrame, count: int = 20, width: int = 160) -> list[dict]:
    """:func:`least_confident` as table rows: each text on one line, cut to ``width``."""
    rows = least_confident(frame, count).to_dict("records")
    for row in rows:
        text = " ".join(str(row["text"]).split()).replace("|", "/")  # a Markdown cell
        row["text"] = (text[:width] + " ...") if len(text) > width else text
        row["confidence"] = round(float(row["confidence"]), 4)
        row["time"] = str(row["time"])
    return rows


def overview(frame: pd.DataFrame, every: str = "1min") -> Figure:
    """Three panels: requests over time, the latency distribution, the class mix."""
    figure = Figure(figsize=(13, 3.8))
    left, middle, right = figure.subplots(1, 3)
    for model, rows in volume(frame, every).groupby("model"):
        left.plot(rows["time"], rows["requests"], marker="o", label=model)
    left.set_title(f"Requests per {every}")
    left.legend(fontsize=8)
    left.tick_params(axis="x", labelrotation=30, labelsize=7)
    latencies = requests_frame(frame)["latency_ms"].dropna()
    bins = np.geomspace(max(latencies.min(), 0.1), max(latencies.max(), 1.0), 30)
    middle.hist(latencies, bins=bins)
    middle.set_xscale("log")
    middle.set_title("Latency (ms)")
    mix = class_mix(frame).groupby("label")["texts"].sum().sort_values()
    right.barh(mix.index, mix.values)
    right.set_title("Predicted classes (texts)")
    right.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    return figure

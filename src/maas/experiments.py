"""DVC experiments as table rows: what ``notebooks/06-experiments.ipynb`` shows.

:func:`load` runs ``dvc exp show --json`` in a project and :func:`rows` flattens its answer
into one row per experiment (and per baseline: the workspace and each commit shown), with the
parameters as ``params.<section>.<key>`` and the metrics as ``metrics.<file>.<key>``
(``metrics.evaluate.model.accuracy``), the names ``dvc metrics show`` would print.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from maas.reporting import flatten, metrics_name


class ExperimentsError(RuntimeError):
    """``dvc exp show`` failed (not a DVC project, a broken dvc.yaml, ...)."""


def load(project: str | Path) -> list[dict[str, Any]]:
    """One row per baseline and experiment of the DVC project at ``project``."""
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise ExperimentsError(
            f"`dvc exp show` failed in {Path(project).resolve()}: {result.stderr.strip()}"
        )
    return rows(json.loads(result.stdout or "[]"))


def rows(shown: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flatten ``dvc exp show --json`` into rows (baselines first, then their experiments)."""
    out = []
    for baseline in shown:
        out.append(_row(baseline, baseline=baseline["rev"], kind="baseline"))
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                out.append(_row(rev, baseline=baseline["rev"], kind="experiment"))
    return out


def _row(entry: Mapping[str, Any], *, baseline: str, kind: str) -> dict[str, Any]:
    data = entry.get("data") or {}
    name = entry.get("name") or (entry["rev"] if entry["rev"] == "workspace" else entry["rev"][:7])
    row: dict[str, Any] = {
        "experiment": name,
        "kind": kind,
        "baseline": baseline if baseline == "workspace" else baseline[:7],
        "created": data.get("timestamp") or "",
    }
    for params in (data.get("params") or {}).values():
        row.update(flatten(params.get("data") or {}, "params."))
    for path, metrics in (data.get("metrics") or {}).items():
        row.update(flatten(metrics.get("data") or {}, f"metrics.{metrics_name(path)}."))
    return row


def varying(table: Sequence[Mapping[str, Any]], prefix: str = "params.") -> list[str]:
    """Columns starting with ``prefix`` whose values differ between rows (what was tried)."""
    keys = dict.fromkeys(key for row in table for key in row if key.startswith(prefix))
    return [k for k in keys if len({json.dumps(row.get(k), default=str) for row in table}) > 1]


def summary(table: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Rows for display: the experiment, the parameters that vary, and the chosen metrics."""
    columns = ["experiment", "kind", "baseline", *varying(table), *metrics]
    return [{column: row.get(column, "") for column in columns} for row in table]

"""Benchmark the full-size pipeline: wall time per stage, and the model beside its baseline.

Runs `dvc repro --force --single-item STAGE` for data, train and evaluate in order, in this
checkout, with the default parameters of params.yaml (the full corpus), timing each stage.
Writes reports/benchmarks/pipeline.json and pipeline.md and prints the table.

    .venv/bin/python benchmarks/pipeline.py            # all three stages (about 10 minutes)
    .venv/bin/python benchmarks/pipeline.py --stages evaluate
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from maas.provenance import git_revision, write_json
from maas.reporting import markdown_table

ROOT = Path(__file__).resolve().parents[1]

STAGES = ("data", "train", "evaluate")
TARGET_SECONDS = 15 * 60


def time_stage(stage: str) -> float:
    dvc = Path(sys.executable).parent / "dvc"
    start = time.perf_counter()
    subprocess.run([str(dvc), "repro", "--force", "--single-item", stage], cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    args = parser.parse_args()
    seconds = {stage: round(time_stage(stage), 1) for stage in args.stages}
    evaluation = json.loads((ROOT / "reports" / "metrics" / "evaluate.json").read_text())
    train = json.loads((ROOT / "models" / "classifier" / "provenance.json").read_text())
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "git_revision": git_revision(ROOT),
        "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
        "target_seconds": TARGET_SECONDS,
        "train": train["metrics"],
        "model": evaluation["model"],
        "baseline": evaluation["baseline"],
        "accuracy_gap_vs_baseline": evaluation["accuracy_gap_vs_baseline"],
    }
    out = ROOT / "reports" / "benchmarks"
    write_json(out / "pipeline.json", result)
    rows = [{"stage": s, "seconds": t} for s, t in seconds.items()]
    rows.append({"stage": "total", "seconds": result["total_seconds"]})
    scores = [
        {
            "model": name,
            "accuracy": evaluation[name]["accuracy"],
            "macro_f1": evaluation[name]["macro_f1"],
        }
        for name in ("model", "baseline")
    ]
    text = (
        f"# Pipeline benchmark ({result['machine']}, {result['git_revision']})\n\n"
        f"{markdown_table(rows)}\n\nTarget: data + train + evaluate under "
        f"{TARGET_SECONDS // 60} minutes.\n\n{markdown_table(scores)}\n"
    )
    (out / "pipeline.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

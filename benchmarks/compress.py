"""Profile the compress stage: where its wall time goes, phase by phase and variant by variant.

Builds (or reuses) a project whose teacher has the full-size architecture of ``params.yaml``
trained briefly on a share of the corpus, runs ``maas.compress.stage.run`` on it with the
compress parameters of ``params.yaml`` (or ``--set key=value`` overrides), and times each phase
by wrapping the functions the stage calls: fine-tuning (QAT, pruning, the two students),
conversions (TFLite, ONNX), evaluation on the test split, the latency/throughput benchmark.
Writes ``reports/benchmarks/compress.json`` and ``compress.md`` (``--profile``: the top of a
cProfile listing as well) and prints the table.

    .venv/bin/python benchmarks/compress.py --docs-per-class 120
    .venv/bin/python benchmarks/compress.py --set settings.compress.latency_examples=100
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import os
import platform
import pstats
import shutil
import time
from collections import defaultdict
from pathlib import Path

import yaml

import maas  # noqa: F401  (Keras 2 before TensorFlow)
from maas import config, data, progress, splits
from maas.compress import onnx_export, quantize, report, stage, variants
from maas.provenance import write_json
from maas.reporting import markdown_table
from maas.training import stage as training

ROOT = Path(__file__).resolve().parents[1]
PHASES = {
    "fine-tuning": [
        (variants.VariantBuilder, "_student"),
        (quantize, "quantization_aware"),
    ],
    "conversion": [(quantize, "to_tflite"), (onnx_export, "to_onnx")],
    "evaluation": [(stage, "evaluate")],
    "round trip check": [(stage, "check_round_trip")],
    "writing": [(stage, "write_variant")],
    "benchmark": [(report, "benchmark")],
}
seconds: dict[str, float] = defaultdict(float)


def timed(phase: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[phase] += time.perf_counter() - start

    return wrapper


def instrument() -> None:
    """Wrap each phase's functions; pruning is timed through the builder's cached property."""
    for phase, targets in PHASES.items():
        for owner, name in targets:
            setattr(owner, name, timed(phase, getattr(owner, name)))
    from maas.compress import prune

    prune.prune = timed("fine-tuning", prune.prune)


def apply(params: dict, assignments: list[str]) -> dict:
    for assignment in assignments:
        key, value = assignment.split("=", 1)
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(value)
    return params


def make_project(target: Path, docs_per_class: int, train_epochs: int, settings: list[str]):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["max_documents_per_class"] = docs_per_class
    params["train"]["epochs"] = train_epochs
    apply(params, settings)
    target.mkdir(parents=True, exist_ok=True)
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    loaded = config.load_params(target / "params.yaml")
    paths = config.project_paths(target / "params.yaml")
    if not (paths.classifier_dir / "provenance.json").is_file():
        data.run(loaded.data, paths)
        training.run(loaded.train, paths, settings=loaded.settings.train, progress=False)
    return loaded, paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("/tmp/maas-compress-bench"))
    parser.add_argument("--docs-per-class", type=int, default=120)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="dotted.key=value")
    parser.add_argument("--profile", action="store_true", help="cProfile the stage too")
    parser.add_argument("--fresh", action="store_true", help="rebuild the project")
    parser.add_argument(
        "--sequential", action="store_true", help="evaluate every variant in turn (as before)"
    )
    parser.add_argument(
        "--name", default="compress", help="output files: reports/benchmarks/NAME.*"
    )
    args = parser.parse_args()
    progress.configure()
    if args.fresh:
        shutil.rmtree(args.project, ignore_errors=True)
    params, paths = make_project(args.project, args.docs_per_class, args.train_epochs, args.set)
    instrument()
    if args.sequential:
        stage.OFF_THREAD = ()
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    result = stage.run(params.compress, paths, settings=params.settings.compress)
    if profiler:
        profiler.disable()
    total = time.perf_counter() - start
    accounted = sum(seconds.values())
    # TFLite and ONNX variants are evaluated on a second thread: phases may overlap, and then
    # their sum exceeds the wall time.
    phases = {k: round(v, 1) for k, v in seconds.items()} | {
        "other (loading, sizes, provenance; negative: phases overlapped)": round(
            total - accounted, 1
        )
    }
    rows = [
        {
            key: row.get(key)
            for key in (
                "variant",
                "build_seconds",
                "evaluate_seconds",
                "accuracy",
                "latency_p50_ms",
            )
        }
        for row in result["rows"]
    ]
    out = ROOT / "reports" / "benchmarks"
    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "project": {"docs_per_class": args.docs_per_class, "settings": args.set},
        "evaluation": "sequential" if args.sequential else "TFLite and ONNX on a second thread",
        "test_posts": len(splits.read_split(paths.split("test"))),
        "total_seconds": round(total, 1),
        "phase_seconds": phases,
        "variants": rows,
    }
    write_json(out / f"{args.name}.json", record)
    text = [
        "# Compress stage profile",
        "",
        f"{record['machine']}; teacher of the full-size architecture, {args.docs_per_class} "
        f"posts per class, {record['test_posts']} test posts; settings {args.set or 'default'}; "
        f"evaluation: {record['evaluation']}.",
        f"Total: **{record['total_seconds']} s**.",
        "",
        markdown_table([{"phase": k, "seconds": v} for k, v in phases.items()]),
        "",
        "Per variant: build (fine-tuning, conversion), write, reload and check; then the"
        " evaluation on the test split; the latency benchmark is apart:",
        "",
        markdown_table(rows),
    ]
    if profiler:
        listing = io.StringIO()
        pstats.Stats(profiler, stream=listing).sort_stats("cumulative").print_stats(30)
        text += ["", "```", listing.getvalue()[-6000:], "```"]
    (out / f"{args.name}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text[:12]))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

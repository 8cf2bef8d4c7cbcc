"""Benchmark `make pipeline`: the install, every stage and every compression variant, timed.

By default clones this checkout's HEAD into a temporary folder beside it (so that
`../shared` resolves as it does here), runs `make venv` and then `make pipeline` there, as a
new user would, and reads the times from the console lines each stage logs
(`stage X: done in N s`, `compress: V: built, ... in N s`). `--log` reads a console that was
captured from an earlier `make pipeline` (or `dvc repro`) instead of running anything.
Each stage's peak memory (the resident set of its whole process tree) is measured too.
Writes reports/benchmarks/pipeline.json and pipeline.md and prints the tables.

    .venv/bin/python benchmarks/pipeline.py                    # fresh clone (about 20 minutes)
    .venv/bin/python benchmarks/pipeline.py --here             # make pipeline here, monitored
    make pipeline 2>&1 | tee pipeline.log
    .venv/bin/python benchmarks/pipeline.py --log pipeline.log  # read that run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stage_monitor import run_monitored

from maas.provenance import git_revision, write_json
from maas.reporting import markdown_table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "benchmarks"
TARGET_SECONDS = 12 * 60  # fresh clone, install included
TARGET_PEAK_GB = 4.0  # a laptop of 8 GB runs it

STAGE_DONE = re.compile(r"(\d\d:\d\d:\d\d) stage (\w+): done in ([\d.]+) s")
STAGE_STARTED = re.compile(r"(\d\d:\d\d:\d\d) stage (\w+): started")
VARIANT_BUILT = re.compile(r"compress: (\w+): built, written, reloaded and checked in ([\d.]+) s")
TIMING_STARTED = re.compile(r"(\d\d:\d\d:\d\d) compress: timing (\d+) models")
VARIANT_TIMED = re.compile(r"(\d\d:\d\d:\d\d) compress: (\w+): timed")


def clock(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%H:%M:%S")


def seconds_between(start: str, end: str) -> float:
    """Seconds from one console clock to a later one (across midnight too)."""
    return (clock(end) - clock(start)).total_seconds() % 86400


def read_console(text: str) -> dict:
    """Stage, variant and benchmark times from a `make pipeline` console."""
    stages = {m[2]: float(m[3]) for m in STAGE_DONE.finditer(text)}
    started = {m[2]: m[1] for m in STAGE_STARTED.finditer(text)}
    done = {m[2]: m[1] for m in STAGE_DONE.finditer(text)}
    variants = {m[1]: float(m[2]) for m in VARIANT_BUILT.finditer(text)}
    timing = TIMING_STARTED.search(text)
    timed = VARIANT_TIMED.search(text)
    result: dict = {"stage_seconds": stages, "variant_build_seconds": variants}
    if timing and timed:
        result["compress_timing_seconds"] = seconds_between(timing[1], timed[1])
        result["compress_timed_models"] = int(timing[2])
    if started and done:
        first = min(started.values(), key=clock)
        last = max(done.values(), key=clock)
        result["first_start_to_last_end_seconds"] = seconds_between(first, last)
    return result


def run_fresh_clone(keep: bool) -> tuple[dict, str]:
    """`make venv` then `make pipeline` in a clone of HEAD beside this checkout."""
    where = Path(tempfile.mkdtemp(prefix=".bench-clone-", dir=ROOT.parent))
    clone = where / "maas"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        start = time.perf_counter()
        done = subprocess.run(["make", "venv"], cwd=clone, env=env, capture_output=True, text=True)
        install = round(time.perf_counter() - start, 1)
        print(f"make venv: {install} s (exit {done.returncode})", flush=True)
        if done.returncode:
            raise SystemExit(f"make venv failed:\n{(done.stdout + done.stderr)[-3000:]}")
        return {"install_seconds": install, **monitored_pipeline(clone, env)}, (
            OUT / "pipeline-console.log"
        ).read_text()
    finally:
        if not keep:
            shutil.rmtree(where, ignore_errors=True)


def monitored_pipeline(project: Path, env: dict[str, str]) -> dict:
    """`make pipeline` in ``project``, its console in pipeline-console.log, each stage's
    peak memory measured."""
    log = OUT / "pipeline-console.log"
    measured = run_monitored(["make", "pipeline"], cwd=project, env=env, log=log)
    print(f"make pipeline: {measured['seconds']} s (exit {measured['exit_code']})")
    if measured["exit_code"]:
        raise SystemExit(f"make pipeline failed:\n{log.read_text()[-3000:]}")
    return {
        "pipeline_seconds": measured["seconds"],
        "peak_memory_gb": measured["peak_gb"],
        "stage_peak_memory_gb": {name: s["peak_gb"] for name, s in measured["stages"].items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, help="read this captured console; run nothing")
    parser.add_argument("--keep", action="store_true", help="keep the fresh clone afterwards")
    parser.add_argument(
        "--here", action="store_true", help="run `make pipeline` in this checkout (no install)"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.log:
        wall: dict = {}
        text = args.log.read_text(errors="replace")
        source = "a captured console (pipeline-console.log)"
        if args.log.resolve() != (OUT / "pipeline-console.log").resolve():
            (OUT / "pipeline-console.log").write_text(text)
    elif args.here:
        wall = monitored_pipeline(ROOT, dict(os.environ))
        text = (OUT / "pipeline-console.log").read_text()
        source = "make pipeline in the checkout, its environment installed"
    else:
        wall, text = run_fresh_clone(args.keep)
        source = "fresh clone: make venv, then make pipeline"
    found = read_console(text)
    if not found["stage_seconds"]:
        raise SystemExit("no `stage X: done in N s` line in the console: did the run start?")
    total = (
        wall.get("install_seconds", 0) + wall["pipeline_seconds"]
        if wall
        else found.get("first_start_to_last_end_seconds")
    )
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "git_revision": git_revision(ROOT),
        "source": source,
        **wall,
        **found,
        "total_seconds": total,
        "target_seconds": TARGET_SECONDS,
    }
    write_json(OUT / "pipeline.json", result)
    install = wall.get("install_seconds")
    rows = [{"part": "install (make venv)", "seconds": install}] if install else []
    peaks = wall.get("stage_peak_memory_gb", {})
    rows += [
        {"part": f"stage {s}", "seconds": t, "peak_memory_gb": peaks.get(s)}
        for s, t in found["stage_seconds"].items()
    ]
    rows.append({"part": "total" if wall else "first stage start to last stage end",
                 "seconds": total})  # fmt: skip
    variants = [{"variant": v, "build_and_check_seconds": t}
                for v, t in found["variant_build_seconds"].items()]  # fmt: skip
    text = (
        f"# `make pipeline`, timed ({result['machine']}, {result['git_revision']})\n\n"
        f"Source: {source}. Target: a fresh clone, install included, within "
        f"{TARGET_SECONDS // 60} minutes, peak memory under {TARGET_PEAK_GB} GB (the resident "
        "set of each stage's whole process tree, sampled every 0.25 s).\n\n"
        f"{markdown_table(rows)}\n"
    )
    if variants:
        text += "\nCompression variants (build, write, reload, check):\n\n"
        text += markdown_table(variants) + "\n"
    if "compress_timing_seconds" in found:
        text += (
            f"\nLatency and throughput of {found['compress_timed_models']} models, timed in "
            f"turns: {found['compress_timing_seconds']:.0f} s.\n"
        )
    (OUT / "pipeline.md").write_text(text)
    print(text)
    print(json.dumps({
        "total_seconds": total, "target_seconds": TARGET_SECONDS,
        "peak_memory_gb": wall.get("peak_memory_gb"), "target_peak_gb": TARGET_PEAK_GB,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run `dvc repro` (or `make pipeline`) and measure each stage: seconds and peak memory.

Memory is the resident set of the whole process tree (dvc, papermill, the notebook kernel and
any worker it starts), sampled every :data:`INTERVAL` seconds and summed, so a stage that
starts processes is counted whole; each sample goes to the stage whose ``stage X: started``
line came last on the console. GNU time's maximum RSS sees one process at a time and would
miss what a stage's workers hold together.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

INTERVAL = 0.25
STAGE_STARTED = re.compile(r"stage (\w+): started")
STAGE_DONE = re.compile(r"stage (\w+): done in ([\d.]+) s")


def tree_rss(process: psutil.Process) -> int:
    """Bytes resident in ``process`` and all its descendants now."""
    total = 0
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in family:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_monitored(
    command: Sequence[str | Path], *, cwd: Path, env: dict[str, str], log: Path
) -> dict:
    """Run ``command``, teeing its console to ``log``; returns per-stage seconds and peaks.

    Returns ``{"exit_code", "seconds", "peak_gb", "stages": {name: {"seconds", "peak_gb"}}}``.
    """
    start = time.perf_counter()
    stages: dict[str, dict] = {}
    current: list[str] = ["(start)"]
    peak = [0]
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(part) for part in command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        watched = psutil.Process(process.pid)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                rss = tree_rss(watched)
                peak[0] = max(peak[0], rss)
                stage = stages.setdefault(current[0], {"peak_bytes": 0})
                stage["peak_bytes"] = max(stage["peak_bytes"], rss)
                time.sleep(INTERVAL)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for line in process.stdout:
            sink.write(line)
            sink.flush()
            print(line, end="", flush=True)
            if match := STAGE_STARTED.search(line):
                current[0] = match[1]
            elif match := STAGE_DONE.search(line):
                stages.setdefault(match[1], {"peak_bytes": 0})["seconds"] = float(match[2])
        code = process.wait()
        done.set()
        sampler.join()
    gb = 1024**3
    return {
        "exit_code": code,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_gb": round(peak[0] / gb, 2),
        "stages": {
            name: {"seconds": s.get("seconds"), "peak_gb": round(s["peak_bytes"] / gb, 2)}
            for name, s in stages.items()
            if name != "(start)"
        },
    }

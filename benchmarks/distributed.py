"""Benchmark the distribution strategies on this machine: throughput, scaling, start-up.

For each strategy and size it runs the real entry point (`python -m maas.training.cli`, the
code path of `maas train` and of the train stage) in a fresh process on one benchmark
project, with the model of params.yaml (embedding 128, BiLSTM 64, 256 tokens) on a subset
of the corpus, and reads the figures back from the exported model's provenance:

- steady training examples per second: training examples over the median epoch time (the
  training part only; validation excluded; the first epoch, which traces the graphs, left out);
- scaling efficiency: that throughput over (units x one_device's), units being replicas or
  workers: 1.0 is perfect linear scaling;
- time to first step: from launching the command to the end of the first training step
  (to the start of the training loop for parameter_server, which allows no batch hooks).

Writes reports/benchmarks/distributed.json, .md and .png. On a 2-core machine a speed-up is
not expected: every replica and process shares the same two cores. Other work on the machine
makes the figures noisy; the load average is recorded with each run.

    .venv/bin/python benchmarks/distributed.py                 # all, twice each (~30 min)
    .venv/bin/python benchmarks/distributed.py --docs-per-class 60 --only one_device mirrored-2

``--engine ray`` benchmarks the Ray engine instead (benchmarks/distributed_ray.py): the
three-member ensemble on one node against two, multi-worker scaling through Ray Train, and
a projection to N nodes; run it inside the private network namespace:

    ../shared/tools/in-private-network .venv/bin/python benchmarks/distributed.py --engine ray
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from maas.provenance import git_revision, read_json, write_json
from maas.reporting import markdown_table

ROOT = Path(__file__).resolve().parents[1]

CATEGORIES = ["rec.autos", "sci.space", "talk.politics.guns", "comp.graphics"]
# name -> (strategy, units, extra flags); units: replicas or workers, for the efficiency.
CONFIGS = {
    "one_device": ("one_device", 1, []),
    "mirrored-2": ("mirrored", 2, ["--replicas", "2"]),
    "multi_worker-1": ("multi_worker", 1, ["--workers", "1"]),
    "multi_worker-2": ("multi_worker", 2, ["--workers", "2"]),
    "multi_worker-3": ("multi_worker", 3, ["--workers", "3"]),
    "parameter_server-1w-1ps": (
        "parameter_server",
        1,
        ["--workers", "1", "--parameter-servers", "1"],
    ),
    "parameter_server-2w-2ps": (
        "parameter_server",
        2,
        ["--workers", "2", "--parameter-servers", "2"],
    ),
}


def posts(project: Path) -> int:
    return sum(1 for _ in (project / "data" / "processed" / "train.jsonl").open())


def make_project(
    directory: Path, *, docs_per_class: int, epochs: int, patience: int | None
) -> Path:
    """A project with the default model, a corpus subset, and its data stage done.

    ``patience`` None: no early stopping (every run trains ``epochs`` epochs)."""
    from maas import config, data

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(categories=CATEGORIES, max_documents_per_class=docs_per_class)
    params["train"].update(epochs=epochs, early_stopping_patience=patience or epochs)
    params["train"]["optimizer_trials"] = []  # the strategies' training is measured, alone
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    loaded = config.load_params(directory / "params.yaml")
    data.run(loaded.data, config.project_paths(directory / "params.yaml"))
    return directory


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its living descendants."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


class CpuSampler(threading.Thread):
    """Samples a process tree's CPU seconds four times a second, with wall-clock times."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.done = pid, [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            self.samples.append((time.time(), tree_cpu_seconds(self.pid)))

    def between(self, start: float, end: float) -> float:
        times, seconds = zip(*self.samples, strict=True)
        return float(np.interp(end, times, seconds) - np.interp(start, times, seconds))


def run_config(project: Path, name: str, logs: Path) -> dict:
    strategy, units, flags = CONFIGS[name]
    argv = [
        sys.executable,
        "-m",
        "maas.training.cli",
        "--params-file",
        str(project / "params.yaml"),
    ]
    argv += ["--strategy", strategy, *flags]
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.time()
    with (logs / f"{name}.log").open("a") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        sampler = CpuSampler(process.pid)
        sampler.start()
        returncode = process.wait(timeout=3600)
        sampler.done.set()
        sampler.join()
    wall = time.time() - launched
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every process of the run
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    row = {"config": name, "strategy": strategy, "units": units, "ok": returncode == 0}
    if not row["ok"]:
        return {**row, "error": f"exit status {returncode}, see {logs / name}.log"}
    metrics = read_json(project / "models" / "classifier" / "provenance.json")["metrics"]
    timeline = metrics["timeline"]
    first = timeline.get("first_step")
    # The steady epochs (all but the first): CPU of every process of the job over that time.
    steady = timeline["train_ended"] - timeline["steady_started"]
    steady_cpu = sampler.between(timeline["steady_started"], timeline["train_ended"])
    steady_epochs = metrics["epochs_run"] - 1
    return {
        **row,
        "examples_per_second": metrics["steady_examples_per_second"],
        "time_to_first_step_s": round(first - launched, 1) if first else None,
        "time_to_train_start_s": round(timeline["train_started"] - launched, 1),
        "examples_per_cpu_second": round(steady_epochs * posts(project) / steady_cpu, 1),
        "cores_used": round(steady_cpu / steady, 2),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "val_accuracy": round(metrics["val_accuracy"], 4),
        "epochs_run": metrics["epochs_run"],
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def summarize(runs: list[dict]) -> dict:
    """One row per configuration: medians over its repeats, with the throughput's range."""
    done = [r for r in runs if r["ok"]]
    if not done:
        return runs[0]
    row = dict(done[0])
    for key in ("examples_per_second", "examples_per_cpu_second", "cores_used",
                "time_to_first_step_s", "time_to_train_start_s", "wall_seconds", "cpu_seconds",
                "val_accuracy", "epochs_run"):  # fmt: skip
        values = [r[key] for r in done if r.get(key) is not None]
        row[key] = (
            round(statistics.median(values), 1 if key != "val_accuracy" else 4) if values else None
        )
    speeds = [r["examples_per_second"] for r in done]
    row["examples_per_second_range"] = [min(speeds), max(speeds)]
    row["repeats"] = len(done)
    row["load_average"] = [r["load_average"] for r in done]
    return row


def add_efficiency(rows: list[dict]) -> None:
    base = next((r for r in rows if r["config"] == "one_device" and r["ok"]), None)
    for row in rows:
        if base and row["ok"]:
            efficiency = row["examples_per_second"] / (row["units"] * base["examples_per_second"])
            row["scaling_efficiency"] = round(efficiency, 3)
            row["speedup_vs_one_device"] = round(
                row["examples_per_second"] / base["examples_per_second"], 3
            )
            # Work done per CPU-second relative to one device: what the overhead costs,
            # whatever else the machine is running.
            row["cpu_efficiency"] = round(
                row["examples_per_cpu_second"] / base["examples_per_cpu_second"], 3
            )


def loads(rows: list[dict]) -> str:
    values = [v for r in rows for pair in r.get("load_average", []) for v in pair]
    return f"{min(values):.1f} to {max(values):.1f}" if values else "n/a"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maas.plots import save

    done = [r for r in rows if r["ok"]]
    names = [r["config"] for r in done]
    figure, axes = plt.subplots(1, 4, figsize=(19, 4.5))
    panels = [
        ("examples_per_second", "training examples / s (steady; range of runs)"),
        ("examples_per_cpu_second", "examples per CPU-second (all processes)"),
        ("scaling_efficiency", "scaling efficiency (1.0 = linear)"),
        ("time_to_first_step_s", "seconds to first step (ps, hatched: to training start)"),
    ]
    for axis, (key, title) in zip(axes, panels, strict=True):
        values = [
            r.get(key) if r.get(key) is not None else r.get("time_to_train_start_s", 0)
            for r in done
        ]
        bars = axis.barh(names, values, color="tab:blue")
        for bar, row in zip(bars, done, strict=True):
            if key == "time_to_first_step_s" and row.get(key) is None:
                bar.set_hatch("//")  # parameter_server: time to the training loop's start
        if key == "examples_per_second":
            low = [
                v - r["examples_per_second_range"][0] for v, r in zip(values, done, strict=True)
            ]
            high = [
                r["examples_per_second_range"][1] - v for v, r in zip(values, done, strict=True)
            ]
            axis.errorbar(values, names, xerr=[low, high], fmt="none", ecolor="black")
        axis.set_title(title, fontsize=10)
        axis.invert_yaxis()
        if key == "scaling_efficiency":
            axis.axvline(1.0, color="grey", linestyle="--")
    figure.suptitle(f"tf.distribute strategies on {platform.machine()}, {os.cpu_count()} cores")
    figure.tight_layout()
    save(figure, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs-per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--patience",
        type=int,
        help="early stopping as in the train stage (time to a trained model); default: none",
    )
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="ray: nodes of one CPU each (benchmarks/distributed_ray.py); --only is ignored",
    )
    parser.add_argument(
        "--ray-configs",
        nargs="+",
        metavar="NAME",
        help="--engine ray: only these configurations (ensemble-1-node ensemble-2-nodes "
        "multi_worker-1 multi_worker-2 ensemble2-1-node ensemble2-2-nodes ensemble4-1-node "
        "ensemble4-2-nodes); default: all. The report then holds only these",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="--engine ray: rewrite the report from reports/benchmarks/distributed-ray.json",
    )
    args = parser.parse_args()
    if args.engine == "ray":
        sys.path.insert(0, str(Path(__file__).parent))
        from distributed_ray import benchmark, write_report

        return write_report(args.out) if args.report_only else benchmark(args, args.out)
    with tempfile.TemporaryDirectory(prefix="maas-bench-") as scratch:
        project = make_project(
            Path(scratch) / "project",
            docs_per_class=args.docs_per_class,
            epochs=args.epochs,
            patience=args.patience,
        )
        logs = Path(scratch) / "logs"
        logs.mkdir()
        runs: dict[str, list[dict]] = {name: [] for name in args.only}
        for _ in range(args.repeats):  # round robin: a busy spell hits every configuration
            for name in args.only:
                runs[name].append(run_config(project, name, logs))
                print(runs[name][-1], flush=True)
        rows = [summarize(runs[name]) for name in args.only]
        train_posts = posts(project)
    add_efficiency(rows)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "git_revision": git_revision(ROOT),
        "train_posts": train_posts,
        "epochs": args.epochs,
        "early_stopping_patience": args.patience,
        "categories": CATEGORIES,
        "repeats": args.repeats,
        "configurations": rows,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "distributed.json", result)
    plot(rows, args.out / "distributed.png")
    columns = [
        "config", "examples_per_second", "examples_per_second_range", "scaling_efficiency",
        "examples_per_cpu_second", "cpu_efficiency", "cores_used", "time_to_first_step_s",
        "time_to_train_start_s", "wall_seconds", "cpu_seconds", "val_accuracy", "epochs_run",
    ]  # fmt: skip
    text = (
        f"# Distributed training benchmark ({result['machine']}, {result['git_revision']})\n\n"
        f"{train_posts} training posts of {len(CATEGORIES)} newsgroups, {args.epochs} epochs"
        + (f" at most (early stopping, patience {args.patience})" if args.patience else "")
        + ", "
        f"the default model of params.yaml; medians of {args.repeats} runs per configuration, "
        "run in turn. cpu_seconds: all processes of a run together. Load average (1 min) "
        f"during the runs: {loads(rows)}.\n\n"
        f"{markdown_table(rows, columns)}\n"
    )
    (args.out / "distributed.md").write_text(text.replace("| None |", "| n/a |"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

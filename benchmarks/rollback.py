"""Benchmark rollback: from `maas models rollback` to the server answering with the old version.

Builds (or reuses, with --workdir) a small project with two registered versions of the
classifier: the pipeline's data and train stages on the test suite's small parameters (v1),
then again with train.lstm_units + 4 (v2). `maas serve` serves prod from a model repository,
and prod is rolled back from v2 to v1 --repeats times in each of three situations:

- in-repository: v1's folder is still in the model repository (only config.yaml changes);
- from-cache: v1's folder is gone, its bytes come from the DVC cache;
- from-remote: the DVC cache is empty too, the bytes come from the DVC remote.

Each rollback runs as a user runs it, `maas models rollback ... --server URL` in a new
process, while one client sends inference requests back to back. Measured: the command's
wall time, the time until the client first gets an answer from v1, the command's own
materialize and switch times, the server's own part (from its log: config.yaml seen ->
version served, i.e. load, verify, warm-up), and the requests that failed meanwhile (zero
downtime means none). Writes reports/benchmarks/rollback.json, rollback.md and
reports/figures/rollback_seconds.png.

    .venv/bin/python benchmarks/rollback.py                     # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/rollback.py --workdir /tmp/rb --repeats 5 --poll-interval 0.5
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from maas.provenance import git_revision, write_json
from maas.registry import operations, tags
from maas.reporting import markdown_table
from maas.serving.stage import background_server

ROOT = Path(__file__).resolve().parents[1]

BIN = Path(sys.executable).parent
SCENARIOS = ("in-repository", "from-cache", "from-remote")
V1, V2 = operations.serving_version("v1"), operations.serving_version("v2")
PROBE = {"inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["probe"]}]}


def small_params() -> dict:
    """``params.yaml`` with the tests' small data and model (``tests/small-params.yaml``), so
    that two versions train in about a minute: what is measured is the rollback."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    small = yaml.safe_load((ROOT / "tests" / "small-params.yaml").read_text())
    for section in ("data", "train"):
        params[section].update(small[section])
    return params


def sh(args, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env
    )
    if result.returncode:
        raise RuntimeError(f"{args}: {result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def build_project(workdir: Path) -> Path:
    """A copy of this checkout with v1 and v2 of the classifier registered (reused if there)."""
    project = workdir / "project"
    if (project / ".git").is_dir() and len(tags.list_versions(project, "classifier")) >= 2:
        return project
    shutil.rmtree(workdir, ignore_errors=True)
    for name in filter(None, sh(["git", "ls-files", "-z"], ROOT).split("\0")):
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    params = small_params()
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "bench"],
                 ["config", "user.email", "bench@example.com"], ["add", "-A"],
                 ["commit", "-qm", "copy"]):  # fmt: skip
        sh(["git", *args], project)
    sh([BIN / "dvc", "remote", "modify", "--local", "local", "url", workdir / "remote"], project)
    for version, units in (("v1", params["train"]["lstm_units"]), ("v2", None)):
        if units is None:
            params["train"]["lstm_units"] += 4
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sh([BIN / "dvc", "repro", "train"], project)
        sh(["git", "add", "-A"], project)
        sh(["git", "commit", "-qm", f"train {version}"], project)
        tags.register(project, "classifier", version=version)
    return project


class Watcher(threading.Thread):
    """Sends inference requests back to back; notes when each answer came, and from whom."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.answers, self.failures = url, [], []
        self._halt = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._halt.is_set():
                try:
                    response = client.post("/v2/models/classifier/infer", json=PROBE)
                    if response.status_code == 200:
                        version = int(response.json()["model_version"])
                        self.answers.append((time.perf_counter(), version))
                    else:
                        self.failures.append(f"HTTP {response.status_code}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))

    def first_answer_from(self, version: int, after: float) -> float | None:
        times = [t for t, v in self.answers if v == version and t >= after]
        return min(times) - after if times else None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def prepare(scenario: str, project: Path, repository: Path, stash: Path) -> None:
    """Put the project and the repository in the scenario's starting state (v2 serves)."""
    folder = repository / "classifier" / str(V1)
    if scenario != "in-repository" and folder.exists():
        shutil.rmtree(folder)
    cache = project / ".dvc" / "cache"
    if scenario == "from-remote":
        if cache.exists() and not stash.exists():
            cache.rename(stash)
        shutil.rmtree(cache, ignore_errors=True)
    elif stash.exists():
        shutil.rmtree(cache, ignore_errors=True)
        stash.rename(cache)


def server_load_seconds(log_path: Path, version: int) -> float | None:
    """From the server's log: the last time it saw a config for ``version`` until it served
    it (poll, load, verify, warm-up); ``None`` if the log does not say."""
    config = re.compile(rf"^(\S+ \S+) .*config ModelConfig\(.*versions=\({version},\)")
    ready = re.compile(rf"^(\S+ \S+) .*version {version} available")
    seen = loaded = None
    for line in log_path.read_text().splitlines():
        if match := config.match(line):
            seen, loaded = match.group(1), None
        elif seen and (match := ready.match(line)):
            loaded = match.group(1)
    if not (seen and loaded):
        return None
    stamp = "%Y-%m-%d %H:%M:%S,%f"
    return round((dt.datetime.strptime(loaded, stamp) - dt.datetime.strptime(seen, stamp))
                 .total_seconds(), 3)  # fmt: skip


def time_rollback(project: Path, repository: Path, url: str) -> dict:
    watcher = Watcher(url)
    watcher.start()
    time.sleep(0.5)  # the client is sending before the command starts
    command = [BIN / "maas", "models", "rollback", "classifier", "--stage", "prod"]
    command += ["--project", project, "--model-repository", repository, "--server", url]
    start = time.perf_counter()
    output = sh(command, project)
    command_seconds = time.perf_counter() - start
    time.sleep(0.5)
    watcher.stop()
    numbers = re.search(r"materialized in ([\d.]+) s, switched in ([\d.]+) s", output)
    return {
        "command_seconds": round(command_seconds, 3),
        "first_v1_answer_seconds": round(watcher.first_answer_from(V1, start), 3),
        "materialize_seconds": float(numbers.group(1)),
        "switch_seconds": float(numbers.group(2)),
        "requests": len(watcher.answers) + len(watcher.failures),
        "failed_requests": len(watcher.failures),
    }


def megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def summarize(runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for scenario, results in runs.items():
        row = {"scenario": scenario, "runs": len(results)}
        for key in ("first_v1_answer_seconds", "command_seconds", "materialize_seconds",
                    "switch_seconds", "server_load_seconds"):  # fmt: skip
            values = [r[key] for r in results if r.get(key) is not None] or [float("nan")]
            row[f"{key.removesuffix('_seconds')} median s"] = round(statistics.median(values), 2)
            row[f"{key.removesuffix('_seconds')} max s"] = round(max(values), 2)
        row["failed requests"] = sum(r["failed_requests"] for r in results)
        row["requests"] = sum(r["requests"] for r in results)
        rows.append(row)
    return rows


def figure(rows: list[dict], poll_interval: float):
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    parts = [("materialize", "tab:orange"), ("switch", "tab:green")]
    bottom = np.zeros(len(rows))
    for name, color in parts:
        values = np.array([r[f"{name} median s"] for r in rows])
        ax.bar(x - 0.2, values, 0.4, bottom=bottom, color=color, label=f"{name} (median)")
        bottom += values
    answer = [r["first_v1_answer median s"] for r in rows]
    top = [r["first_v1_answer max s"] - a for r, a in zip(rows, answer, strict=True)]
    ax.bar(x + 0.2, answer, 0.4, yerr=[np.zeros(len(rows)), top], color="tab:blue",
           capsize=4, label="command start -> first answer from v1 (median, max)")  # fmt: skip
    ax.set_xticks(x, [r["scenario"] for r in rows])
    ax.set_ylabel("seconds")
    ax.set_title(f"Rollback v2 -> v1, server poll interval {poll_interval:g} s")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maas-rollback-bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--poll-interval", type=float, default=2.0, help="the server's")
    args = parser.parse_args()

    project = build_project(args.workdir)
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine: noise
    repository = args.workdir / "repository"
    stash = args.workdir / "cache-stash"
    prepare("in-repository", project, repository, stash)  # a rerun may start without cache
    shutil.rmtree(repository, ignore_errors=True)
    serve = operations.Deployment(repository, "classifier")
    for version in ("v1", "v2"):  # prod's history: v1, then v2
        operations.promote(project, "classifier", version, "prod", deployment=serve)
    server_args = ["--poll-interval", str(args.poll_interval)]
    runs: dict[str, list[dict]] = {s: [] for s in SCENARIOS}
    log_path = args.workdir / "server.log"
    with background_server(repository, server_args, log_path, timeout_s=300) as url:
        back = operations.Deployment(repository, "classifier", url)
        for scenario in SCENARIOS:
            for _ in range(args.repeats):
                operations.promote(project, "classifier", "v2", "prod", deployment=back)
                prepare(scenario, project, repository, stash)
                result = time_rollback(project, repository, url)
                time.sleep(0.5)  # the log line of the swap is flushed
                result["server_load_seconds"] = server_load_seconds(log_path, V1)
                runs[scenario].append(result)
                print(scenario, runs[scenario][-1], flush=True)
    prepare("in-repository", project, repository, stash)

    rows = summarize(runs)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared: noisy)",
        "git_revision": git_revision(ROOT),
        "server_poll_interval_s": args.poll_interval,
        "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "model": "the test suite's small classifier (SavedModel folder)",
        "artifact_megabytes": round(megabytes(repository / "classifier" / str(V1)), 2),
        "summary": rows,
        "runs": runs,
    }
    write_json(ROOT / "reports" / "benchmarks" / "rollback.json", result)
    figure_path = ROOT / "reports" / "figures" / "rollback_seconds.png"
    from maas.plots import save

    save(figure(rows, args.poll_interval), figure_path)
    text = (
        f"# Rollback benchmark ({result['machine']}, {result['git_revision']})\n\n"
        f"`maas models rollback classifier --stage prod --server URL`, v2 -> v1, while a "
        f"client sends requests back to back; server poll interval "
        f"{args.poll_interval:g} s; {args.repeats} runs per scenario; artifact "
        f"{result['artifact_megabytes']} MB; 1-minute load average before/after: "
        f"{result['load_average_1min_before_after']}.\n\n"
        f"{markdown_table(rows)}\n\n![rollback](../figures/{figure_path.name})\n"
    )
    (ROOT / "reports" / "benchmarks" / "rollback.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

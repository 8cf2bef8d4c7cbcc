"""Ray engine start-up: ``maas serve --engine ray`` from launch to ready, phase by phase.

On a fresh two-node cluster for every start (a head and a node of 2 CPUs each, as in
``benchmarks/scale.py``), the seconds from launching the server to ``/v2/health/ready``
answering 200, and where they went, read from the server's log: the process's own start
(imports) up to its first line, connecting to Ray, Ray Serve's controller and the front
doors, deploying and warming the model, publishing the routing table until the fronts answer
ready. With ``--baseline-src`` another source tree's engine starts in the same run, the two
taking turns (ABBA), so that the machine's load falls on both alike.

    .venv/bin/python benchmarks/ray_startup.py --artifact models/compressed/dynamic_int8 \\
        --baseline-src /tmp/base/src --repeats 2

The script starts itself again through ``../shared/tools/in-private-network``. Writes
``reports/benchmarks/ray-startup.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serving import Server, rerun_in_private_network  # noqa: E402

from maas.ports import free_port  # noqa: E402
from maas.provenance import git_revision, write_json  # noqa: E402
from maas.reporting import markdown_table  # noqa: E402
from maas.serving.ray.cluster import LocalCluster  # noqa: E402

# phase -> the server log line that ends it (the first match counts)
MARKS = {
    "first log line": r"",
    "connected to Ray": r"start-up: connected to Ray",
    "Serve up": r"start-up: Serve up",
    "model available": r"model \S+ version \d+ available",
    "fronts up": r"front doors on \d+ nodes",
    "serving": r"serving .* on Ray at",
}
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s")


def phases(log: Path, launched: float) -> dict[str, float]:
    """Seconds from launch to each mark found in the server's log."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        stamp = STAMP.match(line)
        if not stamp:
            continue
        at = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - launched
        for name, pattern in MARKS.items():
            if name not in found and re.search(pattern, line):
                found[name] = round(at, 2)
    return found


def cpu_seconds(roots: list[int]) -> dict[int, float]:
    """``{pid: user + system seconds}`` of these processes and all their descendants."""
    import psutil

    found = {}
    for root in roots:
        try:
            parent = psutil.Process(root)
            processes = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:  # exited meanwhile
                continue
            found[process.pid] = times.user + times.system
    return found


def start_once(args, label: str, src: Path | None, work: Path) -> dict:
    """A fresh cluster, then the server: launch to ready, and its phases."""
    work.mkdir(parents=True)
    repo = work / "repo"
    shutil.copytree(args.artifact, repo / "classifier" / "1")
    env = {"PYTHONPATH": str(src)} if src else {}  # the same Ray settings: only the code differs
    cluster = LocalCluster(work / "cluster", object_store_mb=100, env=env)
    server = None
    try:
        cluster.add_node(2, head=True)
        cluster.add_node(2)
        time.sleep(args.settle)  # the nodes' own start-up work done, as a cluster long up
        load = os.getloadavg()[0]
        port = free_port()
        command = [sys.executable, "-m", "maas.cli", "serve", "--model-repository", str(repo)]
        command += ["--engine", "ray", "--address", cluster.address, "--port", str(port)]
        command += ["--poll-interval", "0.5", "--replica-cpus", "1"]
        nodes = [cluster.nodes[i].pid for i in range(len(cluster.nodes))]
        before = cpu_seconds(nodes)
        launched = time.time()
        server = Server(command, port, "/v2/health/ready", work / "server.log", env=env)
        ready = time.time() - launched
        after = cpu_seconds([*nodes, server.process.pid])
        cpu = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
        row = {"engine": label, "ready_s": round(ready, 1), "cpu_s": round(cpu, 1)}
        row["load_before"] = round(load, 2)
        return {**row, **phases(work / "server.log", launched)}
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            logs = Path(cluster.temp_dir) / "session_latest" / "logs"
            shutil.copytree(logs, work / "ray-logs", dirs_exist_ok=True, symlinks=True)
        cluster.stop()


def report(rows: list[dict], summary: list[dict], args) -> str:
    columns = ["engine", "ready_s", "cpu_s", *MARKS, "load_before"]
    return "\n".join([
        "# Ray engine start-up: launch to ready",
        "",
        f"`maas serve --engine ray` with one model (`{args.artifact.name}`, one replica of "
        "1 CPU) on a fresh cluster for every start: a head and a node of 2 CPUs each on this "
        f"machine ({os.cpu_count()} cores, shared with other work), in a private network "
        f"namespace, {args.settle:g} s after the nodes were up. ready_s: launch to "
        "`/v2/health/ready` answering 200 (polled every 0.3 s); cpu_s: the CPU seconds that "
        "the server and every process of the cluster spent meanwhile (processes that ended "
        "before ready not counted), a figure that the machine's other work hardly moves; "
        "the other columns: seconds from launch to the server's log line that ends each "
        "phase (empty: that engine does not log it). Both engines under the same Ray "
        "settings; they took turns (ABBA)."
        + (f" 'before': the engine of `{args.baseline_src}`." if args.baseline_src else ""),
        "",
        markdown_table(rows, columns),
        "",
        markdown_table(summary),
        "",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="an artifact folder")
    parser.add_argument("--baseline-src", type=Path, help="another maas source tree (src/)")
    parser.add_argument("--repeats", type=int, default=2, help="starts of each engine")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after nodes are up")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    parser.add_argument("--keep", action="store_true", help="keep the logs (Ray's too)")
    args = parser.parse_args()
    if (code := rerun_in_private_network(__file__)) is not None:
        return code
    args.artifact = args.artifact.resolve()
    engines = [("this tree", None)]
    if args.baseline_src:
        engines.append(("before", args.baseline_src.resolve()))
    work = Path(tempfile.mkdtemp(prefix="maas-startup-"))  # kept, with the logs, on failure
    rows = []
    for repeat in range(args.repeats):
        for label, src in engines if repeat % 2 == 0 else engines[::-1]:
            rows.append(start_once(args, label, src, work / f"{label}-{repeat}".replace(" ", "-")))
            print(rows[-1], flush=True)
    summary = [
        {"engine": label, "starts": len(times), "median_ready_s": statistics.median(times),
         "median_cpu_s": statistics.median(r["cpu_s"] for r in mine),
         "target": "< 20 s", "met": statistics.median(times) < 20}
        for label, _ in engines
        for mine in [[r for r in rows if r["engine"] == label]]
        for times in [[r["ready_s"] for r in mine]]
    ]  # fmt: skip
    if args.keep:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "rows": rows, "summary": summary, "machine": platform.machine(),
        "cpus": os.cpu_count(), "git_revision": git_revision(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "ray-startup.json", record)
    (args.out / "ray-startup.md").write_text(report(rows, summary, args))
    print((args.out / "ray-startup.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Ray engine's part of ``benchmarks/distributed.py --engine ray``: nodes of one CPU each.

Run it inside the private network namespace (the clusters bind 127.0.0.1 only)::

    ../shared/tools/in-private-network .venv/bin/python benchmarks/distributed.py --engine ray

Every node is a :class:`maas.serving.ray.cluster.LocalCluster` node with one Ray CPU, pinned
to one core of its own (CPU affinity, which the workers it starts inherit), and every member
or worker trains with one TensorFlow thread (``settings.train.ray_cpus_per_worker: 1``). Each
configuration runs the real entry point, ``python -m maas.training.cli --engine ray``, on a
fresh cluster, and is timed from launch to exit (connect, train, assemble, export):

- ``ensemble``: the default three-member ensemble on one node, then on two; the same with
  two and with four members (``ensemble2``, ``ensemble4``), which divide evenly over two
  nodes (bound 2x, where three members are bound to 1.5x);
- ``multi_worker``: one wide model under MultiWorkerMirroredStrategy through Ray Train, one
  worker on one node, then two workers on two nodes.

Then a projection to N nodes, with its assumptions. Writes reports/benchmarks/distributed-ray.*
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from maas.provenance import git_revision, read_json, write_json
from maas.reporting import markdown_table
from maas.serving.ray.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ["rec.autos", "sci.space", "talk.politics.guns", "comp.graphics"]
# name -> (nodes, ensemble members, extra flags of `maas train`)
CONFIGS = {
    "ensemble-1-node": (1, 3, []),
    "ensemble-2-nodes": (2, 3, []),
    "multi_worker-1": (1, 3, ["--strategy", "multi_worker", "--workers", "1"]),
    "multi_worker-2": (2, 3, ["--strategy", "multi_worker", "--workers", "2"]),
    # The engine's scaling where the members divide evenly over the nodes (bound: 2x).
    "ensemble2-1-node": (1, 2, []),
    "ensemble2-2-nodes": (2, 2, []),
    "ensemble4-1-node": (1, 4, []),
    "ensemble4-2-nodes": (2, 4, []),
}
# members -> (the one-node configuration, the two-node one)
PAIRS = {
    3: ("ensemble-1-node", "ensemble-2-nodes"),
    2: ("ensemble2-1-node", "ensemble2-2-nodes"),
    4: ("ensemble4-1-node", "ensemble4-2-nodes"),
}


def make_project(directory: Path, *, docs_per_class: int, epochs: int) -> Path:
    """The default model (the three wide members) on a corpus subset; the data stage done.

    Early stopping off (patience = epochs), so every run trains the same number of epochs."""
    from maas import config, data

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(categories=CATEGORIES, max_documents_per_class=docs_per_class)
    params["train"]["wide"].update(epochs=epochs)
    params["train"].update(early_stopping_patience=epochs)
    params["train"]["optimizer_trials"] = []  # the cluster's training is measured, alone
    params["settings"]["train"].update(ray_cpus_per_worker=1, ray_retries=0)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    loaded = config.load_params(directory / "params.yaml")
    data.run(loaded.data, config.project_paths(directory / "params.yaml"))
    return directory


def pin(cluster: LocalCluster, index: int, core: int) -> None:
    """Every process of a node on one core; the workers it starts later inherit it."""
    for pid in cluster.node_pids(index):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).cpu_affinity([core])


def start_cluster(work: Path, nodes: int) -> LocalCluster:
    cluster = LocalCluster(work, object_store_mb=150)
    cores = os.cpu_count() or 1
    for index in range(nodes):
        cluster.add_node(1, head=index == 0)
        pin(cluster, index, index % cores)
    return cluster


def set_members(project: Path, members: int) -> None:
    """The default model's wide members, ``members`` of them (seeds 1, 2, ...)."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["train"]["ensemble"] = [
        {"architecture": "wide", "seed": seed} for seed in range(1, members + 1)
    ]
    path.write_text(yaml.safe_dump(params))


def run_config(project: Path, name: str, work: Path) -> dict:
    nodes, members, flags = CONFIGS[name]
    set_members(project, members)
    cluster = start_cluster(work / name / "cluster", nodes)
    try:
        argv = [sys.executable, "-m", "maas.training.cli", "--params-file"]
        argv += [str(project / "params.yaml"), "--engine", "ray", "--address", cluster.address]
        load_before = os.getloadavg()[0]
        launched = time.time()
        with (work / f"{name}.log").open("w") as log:
            returncode = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, timeout=3600, check=False
            ).returncode
        wall = time.time() - launched
    finally:
        cluster.stop()
    row = {"config": name, "nodes": nodes, "members": members, "ok": returncode == 0}
    if not row["ok"]:
        return {**row, "error": f"exit status {returncode}, see {work / name}.log"}
    metrics = read_json(project / "models" / "classifier" / "provenance.json")["metrics"]
    timeline = metrics["timeline"]
    members = metrics.get("members") or []
    return {
        **row,
        "wall_seconds": round(wall, 1),
        "train_seconds": round(timeline["train_ended"] - timeline["train_started"], 1),
        "member_seconds": [m["train_seconds"] for m in members],
        "examples_per_second": metrics["steady_examples_per_second"],
        "val_accuracy": round(metrics["val_accuracy"], 4),
        "epochs_run": metrics["epochs_run"],
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def projection(rows: dict[str, dict], members: int = 3) -> list[dict]:
    """Ensemble wall time on N one-CPU nodes, from the one- and two-node runs.

    Assumptions: the members take equal time t, a worker's start (process, TensorFlow, the
    data) included: the one-node run's training span over its M members; each node trains
    one member at a time, so N nodes need ceil(M / N) rounds; everything else (start-up,
    connecting, assembling, exporting) is a fixed cost F = one-node wall time - M t; the
    shared storage, the network and the driver are not bottlenecks.
    """
    one = rows["ensemble-1-node"]
    t = one["train_seconds"] / members
    fixed = one["wall_seconds"] - members * t
    table = []
    for count in (members, 2 * members):
        for nodes in (1, 2, 3, 4, 6):
            if nodes > count:
                continue
            wall = fixed + math.ceil(count / nodes) * t
            one_node = fixed + count * t
            table.append(
                {
                    "members": count,
                    "nodes": nodes,
                    "projected_wall_s": round(wall, 1),
                    "speedup": round(one_node / wall, 2),
                    "bound": round(count / math.ceil(count / nodes), 2),
                }
            )
    return table


def benchmark(args, out: Path) -> int:
    unknown = set(args.ray_configs or []) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"--ray-configs: no configuration {sorted(unknown)}; see --help")
    with tempfile.TemporaryDirectory(prefix="maas-bench-ray-") as scratch:
        project = make_project(
            Path(scratch) / "project", docs_per_class=args.docs_per_class, epochs=args.epochs
        )
        rows = {}
        for name in args.ray_configs or CONFIGS:
            rows[name] = run_config(project, name, Path(scratch))
            print(rows[name], flush=True)
        posts = sum(1 for _ in (project / "data" / "processed" / "train.jsonl").open())
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "git_revision": git_revision(ROOT),
        "train_posts": posts,
        "epochs": args.epochs,
        "configurations": list(rows.values()),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "distributed-ray.json", result)
    return write_report(out)


def contention(done: dict[str, dict]) -> str:
    """How much slower each member's fit ran on two nodes than on one: above 1, the cores
    were not the nodes' own (other work, or the two nodes sharing too few cores)."""
    if not {"ensemble-1-node", "ensemble-2-nodes"} <= set(done):
        return ""
    one, two = (
        sum(done[name]["member_seconds"]) for name in ("ensemble-1-node", "ensemble-2-nodes")
    )
    return (
        f"Each member's model.fit took {two / one:.2f}x as long on two nodes as on one: with "
        "the nodes on this machine's only two cores, which other work shared, a second node "
        "did not add a free core, so the two-node figures measure contention, not Ray."
    )


def write_report(out: Path) -> int:
    """The figures, the projection and the Markdown report from distributed-ray.json."""
    result = read_json(out / "distributed-ray.json")
    rows = {row["config"]: row for row in result["configurations"]}
    posts, epochs = result["train_posts"], result["epochs"]
    done = {name: row for name, row in rows.items() if row["ok"]}
    figures = {}
    for members, (one_node, two_nodes) in PAIRS.items():
        if {one_node, two_nodes} <= set(done):
            one, two = done[one_node], done[two_nodes]
            key = "ensemble" if members == 3 else f"ensemble{members}"
            figures[f"{key}_speedup"] = round(one["wall_seconds"] / two["wall_seconds"], 2)
            figures[f"{key}_train_speedup"] = round(one["train_seconds"] / two["train_seconds"], 2)
            figures[f"{key}_bound"] = round(members / math.ceil(members / 2), 2)
    if {"multi_worker-1", "multi_worker-2"} <= set(done):
        one, two = done["multi_worker-1"], done["multi_worker-2"]
        figures["multi_worker_throughput_ratio"] = round(
            two["examples_per_second"] / one["examples_per_second"], 2
        )
        figures["multi_worker_wall_speedup"] = round(one["wall_seconds"] / two["wall_seconds"], 2)
    projected = projection(done) if "ensemble-1-node" in done else []
    result.update(figures=figures, projection=projected)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "distributed-ray.json", result)
    columns = ["config", "nodes", "members", "wall_seconds", "train_seconds", "member_seconds",
               "examples_per_second", "val_accuracy", "epochs_run", "load_average"]  # fmt: skip
    text = (
        f"# Training on Ray: nodes of one CPU ({result['machine']}, {result['git_revision']})\n\n"
        f"{posts} training posts of {len(CATEGORIES)} newsgroups, {epochs} epochs (no "
        "early stopping), the default three-member wide ensemble (two or four members where the "
        "table says so); each node a local Ray node "
        "with one CPU, pinned to a core of its own, one TensorFlow thread per member or "
        "worker. wall_seconds: `maas train --engine ray` from launch to exit; train_seconds: "
        "first member's start to last member's end. One run each, on a machine shared with "
        "other work (load average in the table): figures are noisy.\n\n"
        f"{markdown_table(list(rows.values()), columns)}\n\n"
        f"Figures: {figures}. Each node trains one member at a time (one CPU, one "
        "TensorFlow thread), so M equal members take ceil(M / N) rounds on N nodes: three "
        "members on two nodes take two rounds where one node takes three, and 1.5x is the "
        "bound for the training part whatever the engine does; two or four members divide "
        "evenly (bound 2x). The fixed costs (connecting, starting workers and TensorFlow, "
        "assembling, exporting) lower every ratio. 1.6x for three members would need a "
        "member split over both nodes for the last round (multi_worker for it alone), which "
        "changes its result (other batches, other steps) and so is not done. "
        f"{contention(done)}\n\n"
        "## Projection to N nodes\n\n"
        f"{' '.join(projection.__doc__.split(chr(10), 2)[2].split())}\n\n"
        f"{markdown_table(projected, list(projected[0]) if projected else [])}\n"
    )
    (out / "distributed-ray.md").write_text(text)
    print(text)
    return 0

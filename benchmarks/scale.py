"""Scale-out benchmark: single-process ``maas serve`` against Ray Serve with 1 and 2 replicas.

Under the same bounded load as ``benchmarks/serving.py`` (N keep-alive clients, ``POST
/predict`` with one text, T seconds after a warm-up), at 16 and 64 clients:

* throughput and p50/p99 latency of ``maas serve`` (one process), ``--engine ray`` with one
  model replica and with two (``scaling: {min_replicas: K, max_replicas: K}``);
* CPU-seconds per request, over every process of the server (and of the Ray cluster), split by
  role (proxy, ingress, model replicas, the rest), and the overhead per request at 1 client;
* memory (RSS) of each model replica, and the seconds from asking for a new replica to its
  answering (min_replicas 1 -> 2);
* an autoscaling timeline: clients stepped up then stopped, replicas and answers per second.

Ray runs on a head and a second node (``maas.serving.ray.cluster``) inside a private network
namespace: the script starts itself again through ``../shared/tools/in-private-network``.
Writes ``reports/benchmarks/scale.{json,md,png}``; the projection to N nodes is computed from
the measured CPU-seconds per request (see the report).

    .venv/bin/python benchmarks/scale.py --artifact models/compressed/int8 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the load generator of benchmarks/serving.py

from serving import (  # noqa: E402
    Server,
    load,
    requests_for,
    rerun_in_private_network,
    sample_texts,
    throughput_and_latency,
)

from maas.ports import free_port  # noqa: E402
from maas.provenance import git_revision, write_json  # noqa: E402
from maas.reporting import markdown_table  # noqa: E402
from maas.serving.ray.cluster import LocalCluster  # noqa: E402


def process_tree(pids: list[int]) -> list:
    import psutil

    found = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        for process in [root, *root.children(recursive=True)]:
            found[process.pid] = process
    return list(found.values())


def role(process) -> str:
    try:
        name = " ".join(process.cmdline())[:200]
    except Exception:
        return "other"
    if "ProxyActor" in name:
        return "proxy"
    if "ServeReplica:maas:Ingress" in name or "HttpFront" in name:
        return "ingress"
    if "ServeReplica:maas." in name:
        return "model replicas"
    if "maas.cli serve" in name:
        return "server / controller"
    return "ray system"


def cpu_seconds(processes: list) -> dict[int, tuple[str, float]]:
    """``{pid: (role, user + system seconds)}`` of the processes still alive."""
    found = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except Exception:  # exited meanwhile
            continue
        found[process.pid] = (role(process), times.user + times.system)
    return found


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds spent between two readings, by role (processes alive at both)."""
    totals: dict[str, float] = {}
    for pid, (key, seconds) in after.items():
        if pid in before:
            totals[key] = totals.get(key, 0.0) + seconds - before[pid][1]
    return totals


def measure(name: str, port: int, roots: list[int], requests, clients: int, args) -> dict:
    asyncio.run(load(port, requests, clients, args.warmup))
    processes = process_tree(roots)
    before = cpu_seconds(processes)
    result = asyncio.run(load(port, requests, clients, args.duration))
    cpu = cpu_by_role(before, cpu_seconds(processes))
    answered = max(result["requests"] - result["errors"], 1)
    row = {
        "server": name,
        "clients": clients,
        **result,
        "cpu_s_per_request_ms": round(1000 * sum(cpu.values()) / answered, 2),
        "cpu_ms_by_role": {k: round(1000 * v / answered, 2) for k, v in sorted(cpu.items())},
    }
    print(f"{name} x{clients}: {row}", flush=True)
    return row


def write_scaling(repo: Path, replicas: int, **extra) -> None:
    text = (
        f"scaling: {{min_replicas: {replicas}, max_replicas: {extra.get('max', replicas)}, "
        f"target_ongoing_requests: {extra.get('target', 4)}, upscale_delay_s: 1, "
        f"downscale_delay_s: {extra.get('down', 5)}}}\n"
    )
    path = repo / "classifier" / "config.yaml"
    path.with_suffix(".tmp").write_text(text)
    path.with_suffix(".tmp").replace(path)


class Replicas:
    """Alive model replicas (pid, node) of the served version, read from Ray's actor table."""

    def __init__(self, address: str) -> None:
        import ray

        ray.init(address=address, logging_level="ERROR", namespace="benchmark")

    @staticmethod
    def disconnect() -> None:
        import ray

        ray.shutdown()  # this driver only: the next cluster gets a fresh connection

    def __call__(self) -> list[dict]:
        from ray._private import state

        return [
            {"pid": a["Pid"], "node": a["Address"]["NodeID"]}
            for a in state.actors(actor_state_name="ALIVE").values()
            if a.get("ActorClassName", "").startswith("ServeReplica:maas.classifier.")
        ]


def wait_replicas(replicas: Replicas, count: int, timeout: float = 300) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if len(replicas()) == count:
            return time.monotonic() - start
        time.sleep(0.2)
    raise TimeoutError(f"{count} replicas not up within {timeout:g} s")


def replica_memory_mb(replicas: Replicas) -> list[float]:
    import psutil

    return [round(psutil.Process(r["pid"]).memory_info().rss / 2**20, 1) for r in replicas()]


def timeline(port: int, requests, replicas: Replicas, steps: list[tuple[int, float]]) -> list:
    """Run ``(clients, seconds)`` steps back to back; sample replicas and answers per second."""
    samples, answered, stop = [], [0], threading.Event()

    def sampler() -> None:
        start, last = time.monotonic(), 0
        while not stop.is_set():
            time.sleep(1.0)
            now = answered[0]
            samples.append((round(time.monotonic() - start, 1), len(replicas()), now - last))
            last = now

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    for clients, seconds in steps:
        if clients == 0:
            time.sleep(seconds)
            continue
        result = asyncio.run(load(port, requests, clients, seconds))
        answered[0] += result["requests"] - result["errors"]
        print(f"timeline step {clients} clients: {result}", flush=True)
    stop.set()
    thread.join(10)
    return samples


def answering(port: int) -> str:
    import httpx

    body = {"inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    response = httpx.post(f"http://127.0.0.1:{port}/v2/models/classifier/infer", json=body)
    return response.json().get("model_version", "") if response.status_code == 200 else ""


def keep_warm_rollback(port: int, repo: Path, artifact: Path, extra_config: str = "") -> dict:
    """Publish version 2 (1 stays warm), then roll back to 1 under load: seconds, failures."""
    (repo / "classifier" / "config.yaml").write_text(f"keep_previous: 1\n{extra_config}")
    shutil.copytree(artifact, repo / "classifier" / ".v2")
    (repo / "classifier" / ".v2").rename(repo / "classifier" / "2")
    deadline = time.monotonic() + 300
    while answering(port) != "2":
        if time.monotonic() > deadline:
            raise TimeoutError("version 2 never answered")
        time.sleep(0.2)
    time.sleep(4)  # the old version leaves the routing, stays loaded
    result: dict = {}
    done = threading.Event()

    def background() -> None:
        result["load"] = asyncio.run(load(port, requests_for(["x"]), 4, 12))
        done.set()

    threading.Thread(target=background, daemon=True).start()
    time.sleep(3)
    text = f"version_policy: specific\nversions: [1]\nkeep_previous: 1\n{extra_config}"
    path = repo / "classifier" / "config.yaml"
    path.with_suffix(".tmp").write_text(text)
    start = time.perf_counter()
    path.with_suffix(".tmp").replace(path)
    while answering(port) != "1":
        time.sleep(0.01)
    result["seconds"] = round(time.perf_counter() - start, 3)
    done.wait(60)
    result["errors"] = result["load"]["errors"]
    print(f"keep-warm rollback: {result}", flush=True)
    return {"seconds": result["seconds"], "errors": result["errors"],
            "requests": result["load"]["requests"]}  # fmt: skip


# The Ray engine as it was before this benchmark's changes: its source folder (--baseline-src)
# on the nodes' and the server's PYTHONPATH, and Ray Serve's default settings.
BASELINE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_SERVE_LOG_TO_STDERR": "1",
}


def ray_rows(
    args, requests, work: Path, *, label: str = "ray", src: Path | None = None
) -> tuple[list[dict], dict]:
    """Rows of the Ray engine (``src``: another source tree of maas, e.g. the baseline)."""
    work = work / label.replace(" ", "-").replace(",", "")
    repo = work / "ray-repo"
    shutil.copytree(args.artifact, repo / "classifier" / "1")
    write_scaling(repo, 1)
    env = {**BASELINE_ENV, "PYTHONPATH": str(src)} if src else {}
    cluster = LocalCluster(work / "cluster", object_store_mb=100, env=env)
    rows, extra = [], {}
    server = None
    try:
        cluster.add_node(2, head=True)
        cluster.add_node(2)
        port = free_port()
        command = [sys.executable, "-m", "maas.cli", "serve", "--model-repository", str(repo)]
        command += ["--engine", "ray", "--address", cluster.address, "--port", str(port)]
        command += ["--poll-interval", "0.5", "--replica-cpus", "1"]
        start = time.monotonic()
        server = Server(command, port, "/v2/health/ready", work / "ray-server.log", env=env)
        extra["ray_startup_s"] = round(time.monotonic() - start, 1)
        replicas = Replicas(cluster.address)
        roots = [server.process.pid, *(p for n in range(2) for p in cluster.node_pids(n)[:1])]
        for clients in args.clients:
            rows.append(measure(f"{label}, 1 replica", port, roots, requests, clients, args))
        rows.append(measure(f"{label}, 1 replica", port, roots, requests, 1, args))
        extra["replica_memory_mb"] = replica_memory_mb(replicas)
        write_scaling(repo, 2)
        extra["new_replica_s"] = round(wait_replicas(replicas, 2), 1)
        extra["replica_nodes"] = len({r["node"] for r in replicas()})
        for clients in args.clients:
            rows.append(measure(f"{label}, 2 replicas", port, roots, requests, clients, args))
        extra["replica_memory_mb"] += replica_memory_mb(replicas)
        if args.quick:
            return rows, extra
        write_scaling(repo, 1, max=2, target=2, down=4)
        wait_replicas(replicas, 1)
        steps = [(4, 8), (32, args.ramp_seconds), (0, 20)]
        extra["timeline"] = timeline(port, requests, replicas, steps)
        scaling = (repo / "classifier" / "config.yaml").read_text()
        extra["rollback_ray"] = keep_warm_rollback(port, repo, args.artifact, scaling)
    finally:
        if server is not None:
            server.stop()
        Replicas.disconnect()
        cluster.stop()
    return rows, extra


def local_rows(args, requests, work: Path) -> list[dict]:
    repo = work / "local-repo"
    shutil.copytree(args.artifact, repo / "classifier" / "1")
    port = free_port()
    command = [sys.executable, "-m", "maas.cli", "serve", "--model-repository", str(repo)]
    command += ["--port", str(port), "--poll-interval", "0.5"]
    server = Server(command, port, "/v2/health/ready", work / "local-server.log")
    try:
        rows = [
            measure("maas serve", port, [server.process.pid], requests, clients, args)
            for clients in [*args.clients, 1]
        ]
        rollback = None if args.quick else keep_warm_rollback(port, repo, args.artifact)
    finally:
        server.stop()
    return rows, rollback


def projection(rows: list[dict], label: str = "ray") -> list[dict]:
    """Answers per second on N nodes of 2 cores, from the measured CPU cost per request.

    Every node runs its front door (HTTP and batching) beside its replicas, so every role's
    cost spreads over the nodes: no head cap. The head's Serve controller, GCS and routing
    table are off the request path.
    """
    ray = [
        r
        for r in rows
        if r["server"] == f"{label}, 2 replicas"
        and r["clients"] == max(x["clients"] for x in rows)
    ]
    if not ray:
        return []
    per_request_ms = ray[0]["cpu_s_per_request_ms"]  # every role, the load generator aside
    return [
        {"nodes": nodes, "cores": 2 * nodes,
         "projected_rps": round(nodes * 2 * 1000 / per_request_ms) if per_request_ms else 0}
        for nodes in (1, 2, 4, 8, 16)
    ]  # fmt: skip


def targets(rows: list[dict], extra: dict, clients: int) -> list[dict]:
    """The issue's targets, each with its measured value (Ray: this tree's engine)."""
    single = next(r for r in rows if r["server"] == "maas serve" and r["clients"] == clients)
    ray = next(r for r in rows if r["server"] == "ray, 1 replica" and r["clients"] == clients)
    cpu = ray["cpu_s_per_request_ms"] / single["cpu_s_per_request_ms"]
    rate = ray["throughput_rps"] / single["throughput_rps"]
    startup = extra.get("ray_startup_s")
    return [
        {"target": f"Ray CPU per request at {clients} clients <= 3x single process",
         "measured": f"{cpu:.2f}x", "met": cpu <= 3},
        {"target": "one Ray replica >= 0.5x single-process throughput",
         "measured": f"{rate:.2f}x", "met": rate >= 0.5},
        {"target": "Ray start-up to ready < 20 s", "measured": f"{startup} s",
         "met": startup is not None and startup < 20},
    ]  # fmt: skip


def figure(rows: list[dict], extra: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.5), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    named = [r for r in rows if r["clients"] > 1]
    labels = [f"{r['server']}\n{r['clients']} clients" for r in named]
    throughput_and_latency(left, middle, named, labels)
    points = extra.get("timeline", [])
    if points:
        t = [p[0] for p in points]
        right.step(t, [p[1] for p in points], where="post", color="tab:red", label="replicas")
        right.set_ylabel("replicas", color="tab:red")
        right.set_ylim(0, max(p[1] for p in points) + 1)
        twin = right.twinx()
        twin.plot(t, [p[2] for p in points], color="tab:blue", label="answers/s")
        twin.set_ylabel("answers per second", color="tab:blue")
        right.set_xlabel("seconds (4 clients, then 32, then none)")
    right.set_title("Autoscaling timeline")
    fig.suptitle("maas serve vs Ray Serve (2 nodes on 2 shared cores, private network)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(rows: list[dict], extra: dict, args) -> str:
    table = [
        {k: r[k] for k in ("server", "clients", "throughput_rps", "p50_ms", "p99_ms", "errors",
                           "cpu_s_per_request_ms")}
        for r in rows
    ]  # fmt: skip
    single = {r["clients"]: r for r in rows if r["server"] == "maas serve"}
    ray1 = {r["clients"]: r for r in rows if r["server"] == "ray, 1 replica"}
    overhead = round(ray1[1]["p50_ms"] - single[1]["p50_ms"], 1) if 1 in ray1 else None
    before = {r["clients"]: r for r in rows if r["server"] == "ray before, 1 replica"}
    if 1 in before:
        overhead = f"{overhead} (before: {round(before[1]['p50_ms'] - single[1]['p50_ms'], 1)})"
    lines = [
        "# Scale-out: maas serve vs Ray Serve",
        "",
        f"Artifact `{args.artifact}`; {args.duration:g} s per run after {args.warmup:g} s of "
        "warm-up; one text per request (`POST /predict`); 2 CPU cores shared with other "
        "work (and with the load generator): compare within this run. Ray on a head and a "
        "second node (both on this machine) in a private network namespace. 'ray': this "
        "tree's engine (a front door on every node, batching before the handle hop, Ray "
        "Serve's throughput-optimized settings); 'ray before': the engine of "
        f"`{args.baseline_src}` with Ray Serve's defaults (its HTTP proxy and ingress on the "
        "head). Roles: 'ingress' is the front doors (or the ingress replica), 'proxy' Ray "
        "Serve's HTTP proxy.",
        "",
        markdown_table(table),
        "",
        f"- Overhead per request (p50 at 1 client, Ray 1 replica - single process): {overhead} ms",
        "- CPU ms per request by role: "
        + "; ".join(f"{r['server']} x{r['clients']}: {r['cpu_ms_by_role']}" for r in rows
                    if r["clients"] == max(args.clients)),
        f"- Memory per model replica (RSS, MB): {extra.get('replica_memory_mb')}",
        f"- A new replica answers {extra.get('new_replica_s')} s after it is asked for "
        f"(min_replicas 1 -> 2); the 2 replicas on {extra.get('replica_nodes')} nodes",
        f"- Ray server start-up (cluster up) to ready: {extra.get('ray_startup_s')} s"
        + (f" (before: {extra['before'].get('ray_startup_s')} s)" if "before" in extra else ""),
        f"- Keep-warm rollback (config.yaml written -> first answer from the old version, "
        f"4 clients meanwhile, servers polling every 0.5 s): single process "
        f"{extra.get('rollback_local')}, Ray {extra.get('rollback_ray')}",
        "",
        "## Targets",
        "",
        markdown_table(extra["targets"]),
        "",
        "## Projection to N nodes (on paper)",
        "",
        "From the CPU cost per request of every process of the server and the cluster, "
        "measured with 2 replicas at the highest load. Assumptions: the work is CPU-bound "
        "(nodes of 2 cores, as here); every node runs its own front door (an `HttpFront`: "
        "HTTP, API keys, batching, the handle calls) beside its replicas, so every role's "
        "cost is spread over the nodes and nothing caps the cluster at the head; "
        "clients are spread over the nodes' proxies by a load balancer or DNS; the head's "
        "Serve controller, GCS and routing table are off the request path (a routing "
        "snapshot is read every 0.2 s per ingress, not per request); replicas prefer the "
        "local node's, so no request crosses nodes. The network and the load balancer are "
        "not counted.",
        "",
        markdown_table(extra.get("projection", [])) if extra.get("projection") else "(none)",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="an artifact folder")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--ramp-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also measure the Ray engine of this maas source tree (its src/ folder), with "
        "Ray Serve's default settings, side by side ('ray before')",
    )
    parser.add_argument(
        "--quick", action="store_true", help="throughput only: no autoscaling timeline, rollback"
    )
    args = parser.parse_args()
    if (code := rerun_in_private_network(__file__)) is not None:
        return code
    args.artifact = args.artifact.resolve()
    requests = requests_for(sample_texts())
    work = Path(tempfile.mkdtemp(prefix="maas-scale-"))  # kept, with the logs, on failure
    rows, rollback = local_rows(args, requests, work)
    ray, extra = ray_rows(args, requests, work)
    if args.baseline_src:
        before, extra_before = ray_rows(
            args, requests, work, label="ray before", src=args.baseline_src.resolve()
        )
        ray += before
    extra["rollback_local"] = rollback
    if args.baseline_src:
        extra["before"] = extra_before
    shutil.rmtree(work, ignore_errors=True)
    rows += ray
    extra["projection"] = projection(rows)
    extra["targets"] = targets(rows, extra, max(args.clients))
    record = {
        "rows": rows, **extra, "machine": platform.machine(), "cpus": os.cpu_count(),
        "git_revision": git_revision(), "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    write_json(args.out / "scale.json", record)
    (args.out / "scale.md").write_text(report(rows, extra, args))
    figure(rows, extra, args.out / "scale.png")
    print((args.out / "scale.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

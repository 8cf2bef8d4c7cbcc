"""Benchmark gRPC against REST on one server: the same model, batchers and load.

One ``maas serve --grpc-port`` process serves a model over both protocols of the Open
Inference Protocol: REST ``POST /v2/models/<m>/infer`` (JSON) and gRPC ``ModelInfer``. For
16 and 64 concurrent clients (each sending its next one-text request as soon as its answer
arrives, REST on keep-alive connections, gRPC one channel per client) it measures
throughput and p50/p99 latency. The protocols take turns within each concurrency level
(REST, gRPC, then gRPC, REST: ``--rounds`` times), so a noisy neighbour on the shared
machine weighs on both alike; each protocol's figures pool its rounds.

Writes ``reports/benchmarks/grpc.{json,md}``.

    .venv/bin/python benchmarks/grpc.py --artifact models/classifier --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# This file is named grpc.py: with its folder on the path, `import grpc` would find it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCHMARKS]
sys.path.insert(0, str(ROOT / "src"))

import maas  # noqa: E402,F401  (Keras 2 before TensorFlow)
from maas.provenance import git_revision, write_json  # noqa: E402
from maas.reporting import markdown_table  # noqa: E402


def _load_serving_benchmark():
    """benchmarks/serving.py (its server runner and HTTP load loop), by file path."""
    spec = importlib.util.spec_from_file_location("serving_benchmark", BENCHMARKS / "serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_serving = _load_serving_benchmark()
Server, client_loop, free_port, sample_texts = (
    _serving.Server,
    _serving.client_loop,
    _serving.free_port,
    _serving.sample_texts,
)

MODEL = "classifier"


def rest_requests(texts: list[str]) -> list[bytes]:
    """Raw HTTP/1.1 requests for the OIP REST infer endpoint, one text each."""
    out = []
    for text in texts:
        tensor = {"name": "texts", "datatype": "BYTES", "shape": [1], "data": [text]}
        body = json.dumps({"inputs": [tensor]}).encode()
        head = (
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


def grpc_requests(texts: list[str]) -> list:
    from maas.serving.grpc import grpc_predict_v2_pb2 as pb

    out = []
    for text in texts:
        request = pb.ModelInferRequest(model_name=MODEL)
        tensor = request.inputs.add(name="texts", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(text.encode("utf-8"))
        out.append(request)
    return out


async def grpc_client_loop(target: str, requests: list, offset: int, deadline: float) -> dict:
    """One gRPC client on its own channel: call after call until the deadline."""
    import grpc

    from maas.serving.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    latencies, errors, i = [], 0, offset
    options = [("grpc.use_local_subchannel_pool", 1)]  # its own connection, like REST's
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        while time.perf_counter() < deadline:
            request = requests[i % len(requests)]
            i += 1
            start = time.perf_counter()
            try:
                await infer(request, timeout=60)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
    return {"latencies": latencies, "errors": errors}


async def run_load(protocol: str, server, requests, clients: int, duration: float) -> dict:
    deadline = time.perf_counter() + duration
    if protocol == "rest":
        loops = [client_loop(server.port, requests, k * 7, deadline) for k in range(clients)]
    else:
        loops = [grpc_client_loop(server.grpc, requests, k * 7, deadline) for k in range(clients)]
    start = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*loops), timeout=duration + 120)
    return {
        "latencies": [s for r in results for s in r["latencies"]],
        "errors": sum(r["errors"] for r in results),
        "seconds": time.perf_counter() - start,
    }


def summary(protocol: str, clients: int, runs: list[dict]) -> dict:
    latencies = np.array([s for run in runs for s in run["latencies"]])
    seconds = sum(run["seconds"] for run in runs)
    return {
        "protocol": protocol,
        "clients": clients,
        "requests": int(latencies.size),
        "errors": int(sum(run["errors"] for run in runs)),
        "seconds": round(seconds, 2),
        "throughput_rps": round(latencies.size / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
    }


def measure(server, texts: list[str], args) -> list[dict]:
    requests = {"rest": rest_requests(texts), "grpc": grpc_requests(texts)}
    rows = []
    for clients in args.clients:
        runs: dict[str, list[dict]] = {"rest": [], "grpc": []}
        for protocol in ("rest", "grpc"):  # warm-up, discarded
            asyncio.run(run_load(protocol, server, requests[protocol], clients, args.warmup))
        for round_ in range(args.rounds):
            order = ("rest", "grpc") if round_ % 2 == 0 else ("grpc", "rest")
            for protocol in order:
                runs[protocol].append(
                    asyncio.run(
                        run_load(protocol, server, requests[protocol], clients, args.duration)
                    )
                )
        for protocol in ("rest", "grpc"):
            rows.append(summary(protocol, clients, runs[protocol]))
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--artifact",
        type=Path,
        default=ROOT / "models" / "classifier",
        help="the artifact folder to serve (SavedModel, TFLite or ONNX variant)",
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per protocol and level")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, per protocol")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args()
    if not args.artifact.is_dir():
        print(f"no artifact at {args.artifact}: run the train stage first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="maas-bench-grpc-"))
    shutil.copytree(args.artifact, work / "repository" / MODEL / "1")
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "maas.cli", "serve", "--port", str(port),
               "--grpc-port", str(grpc_port), "--poll-interval", "0",
               "--model-repository", str(work / "repository")]  # fmt: skip
    try:
        server = Server(command, port, "/v2/health/ready", work / "server.log")
        server.grpc = f"127.0.0.1:{grpc_port}"
        try:
            rows = measure(server, sample_texts(), args)
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from maas.runtime import detect_kind

    report = {
        "artifact": str(args.artifact),
        "runtime": detect_kind(args.artifact),
        "load_average_1min": round(os.getloadavg()[0], 1),  # the other work on the machine
        "duration_s": args.duration,
        "rounds": args.rounds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared, noisy)",
        "git_revision": git_revision(ROOT),
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "grpc.json", report)
    (args.out / "grpc.md").write_text(
        f"# gRPC against REST\n\nOne server, one model (`{args.artifact.name}`, "
        f"{report['runtime']}), the Open Inference Protocol over REST (JSON) and gRPC, "
        "one text per request, "
        f"{args.rounds} alternating runs of {args.duration:g} s per protocol and level, "
        "load generator on the same shared machine (1-minute load average at the end: "
        f"{report['load_average_1min']}).\n\n" + markdown_table(rows) + "\n"
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

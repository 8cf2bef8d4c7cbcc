"""Benchmark the model server against the seed's naive server, under the same load.

A bounded load generator on loopback: N concurrent clients (keep-alive connections, each
sending ``POST /predict {"text": ...}`` as soon as its previous answer arrives) for T
seconds, after a short warm-up. For each server it reports throughput (answers per second)
and latency percentiles. Servers, one at a time, each in its own process:

* naive: Flask, Keras ``model.predict`` per request (``benchmarks/naive_server.py``);
* maas SavedModel, dynamic batching on and off;
* maas TFLite int8, batching on and off (``models/compressed/int8`` when it exists, otherwise
  a dynamic-range int8 conversion of the classifier made here).

Writes ``reports/benchmarks/serving.{json,md,png}``. The load generator shares the machine's
cores with the server, as it would on one small host; other work on the machine adds noise.

    .venv/bin/python benchmarks/serving.py --clients 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import maas  # noqa: F401  (Keras 2 before TensorFlow)
from maas.ports import free_port
from maas.provenance import (
    PROVENANCE_FILE,
    atomic_dir,
    build_provenance,
    file_hashes,
    git_revision,
    write_json,
)
from maas.reporting import markdown_table

ROOT = Path(__file__).resolve().parents[1]
PRIVATE_NETWORK = ROOT.parent / "shared" / "tools" / "in-private-network"
INSIDE = "MAAS_IN_PRIVATE_NETWORK"  # set in the re-run inside the namespace


def rerun_in_private_network(script: str) -> int | None:
    """Run ``script`` again, with this command line, inside a private network namespace
    (Ray binds the machine's address otherwise): its exit code, or None when this process
    already runs there."""
    if os.environ.get(INSIDE) == "1":
        return None
    env = {**os.environ, INSIDE: "1", "PYTHONPATH": str(ROOT / "src")}
    command = [str(PRIVATE_NETWORK), sys.executable, str(Path(script).resolve())]
    return subprocess.call([*command, *sys.argv[1:]], env=env, cwd=ROOT)


FALLBACK_TEXTS = [
    "The shuttle launch was delayed again; NASA says the heat shield needs work.",
    "My car's engine stalls at idle. Should I replace the spark plugs or the fuel filter?",
    "The senate bill would require background checks for every private gun sale.",
]
TARGET_SPEEDUP = 20.0


def sample_texts(limit: int = 200, path: Path | None = None) -> list[str]:
    """Real test posts when the data stage has run (cut to 2,000 characters), else a few;
    ``path``: another split's JSON Lines."""
    path = path or ROOT / "data" / "processed" / "test.jsonl"
    if not path.is_file():
        return FALLBACK_TEXTS
    texts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            text = json.loads(line).get("text", "")
            if text.strip():
                texts.append(text[:2000])
            if len(texts) >= limit:
                break
    return texts or FALLBACK_TEXTS


def int8_artifact(classifier: Path, target: Path, batch: int) -> Path:
    """The classifier as a dynamic-range int8 TFLite artifact (fixed batch ``batch``)."""
    import shutil as _shutil

    import tensorflow as tf

    from maas.export import load_keras_model
    from maas.tokenizer import Tokenizer

    model = load_keras_model(classifier)
    tokenizer = Tokenizer.load(classifier / "tokenizer.json")
    spec = tf.TensorSpec([batch, tokenizer.sequence_length], tf.int32)
    function = tf.function(lambda ids: model(ids, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with atomic_dir(target) as out:
        (out / "model.tflite").write_bytes(converter.convert())
        _shutil.copy(classifier / "tokenizer.json", out / "tokenizer.json")
        extra = {"files": file_hashes(out), "tokenizer_fingerprint": tokenizer.fingerprint()}
        record = build_provenance(stage="benchmark", params={"batch": batch}, extra=extra)
        write_json(out / PROVENANCE_FILE, record)
    return target


def repository_of(artifact: Path, root: Path) -> Path:
    shutil.copytree(artifact, root / "classifier" / "1")
    return root


class Server:
    """A server process on a free loopback port, ready when ``ready_path`` answers 200."""

    def __init__(
        self, command: list[str], port: int, ready_path: str, log: Path, env: dict | None = None
    ) -> None:
        self.port = port
        self._log = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early; see {log}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"server not ready; see {log}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def requests_for(texts: list[str]) -> list[bytes]:
    return raw_posts("/predict", [{"text": text} for text in texts])


def raw_posts(path: str, bodies: list[dict]) -> list[bytes]:
    """Raw HTTP/1.1 requests posting each JSON body to ``path`` (for the load generator)."""
    out = []
    for body in bodies:
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        out.append(head.encode() + data)
    return out


async def client_loop(
    port: int, requests: list[bytes], offset: int, deadline: float, backoff: bool = False
) -> dict:
    """One keep-alive client: request after request until the deadline.

    ``backoff``: after a 503 with ``Retry-After``, wait that long first (a polite client);
    otherwise send again at once.
    """
    latencies, errors, shed, writer, reader, i = [], 0, 0, None, None, offset
    while time.perf_counter() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = requests[i % len(requests)]
        i += 1
        start = time.perf_counter()
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head)[1])
            await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError, TypeError):
            errors += 1
            writer.close()
            writer = None
            continue
        retry_after = re.search(rb"(?i)retry-after:\s*(\d+)", head)
        if head.startswith(b"HTTP/1.1 503") and retry_after:
            shed += 1  # refused at once by a full queue (load shedding): not an answer
            if backoff:
                await asyncio.sleep(min(float(retry_after[1]), deadline - time.perf_counter()))
        else:
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                errors += 1
        if re.search(rb"(?i)connection:\s*close", head) or head.startswith(b"HTTP/1.0"):
            writer.close()
            writer = None
    if writer is not None:
        writer.close()
    return {"latencies": latencies, "errors": errors, "shed": shed}


async def load(
    port: int, requests: list[bytes], clients: int, duration: float, backoff: bool = False
) -> dict:
    deadline = time.perf_counter() + duration
    start = time.perf_counter()
    loops = (client_loop(port, requests, k * 7, deadline, backoff) for k in range(clients))
    results = await asyncio.wait_for(
        asyncio.gather(*loops),
        timeout=duration + 120,  # bounded even if a server hangs
    )
    elapsed = time.perf_counter() - start
    latencies = np.array([s for r in results for s in r["latencies"]])
    return {
        "requests": int(latencies.size),
        "errors": int(sum(r["errors"] for r in results)),
        "shed": int(sum(r["shed"] for r in results)),  # 503 + Retry-After, not in latencies
        "seconds": round(elapsed, 2),
        "throughput_rps": round(latencies.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
    }


def measure(name: str, server: Server, requests: list[bytes], args) -> dict:
    asyncio.run(load(server.port, requests, args.clients, args.warmup))  # warm-up, discarded
    result = asyncio.run(load(server.port, requests, args.clients, args.duration))
    print(f"{name}: {result}", flush=True)
    return {"server": name, **result}


def throughput_and_latency(left, right, rows: list[dict], labels: list[str]) -> None:
    """Two bar panels, one bar (throughput) and two (p50, p99) a row: beside for comparing."""
    from matplotlib.ticker import NullFormatter

    y = np.arange(len(rows))
    left.barh(y, [row["throughput_rps"] for row in rows], color="tab:blue")
    left.set_yticks(y, labels, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("answers per second")
    left.set_title("Throughput")
    right.barh(y - 0.2, [row["p50_ms"] for row in rows], 0.4, label="p50")
    right.barh(y + 0.2, [row["p99_ms"] for row in rows], 0.4, label="p99")
    right.set_yticks(y, [""] * len(rows))
    right.invert_yaxis()
    right.set_xscale("log")
    right.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a log axis
    right.set_xlabel("latency, ms (log scale)")
    right.set_title("Latency")
    right.legend()


def figure(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    throughput_and_latency(left, right, rows, [row["server"] for row in rows])
    fig.suptitle("POST /predict on loopback, one text per request (2 shared CPU cores)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", type=Path, default=ROOT / "models" / "classifier")
    parser.add_argument(
        "--int8",
        type=Path,
        default=ROOT / "models" / "compressed" / "int8",
        help="a TFLite int8 artifact; converted here when it does not exist",
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (N)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (T)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each run")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args()  # fmt: skip
    if not (args.classifier / "saved_model").is_dir():
        print(f"no classifier at {args.classifier}: run the train stage first", file=sys.stderr)
        return 2
    requests = requests_for(sample_texts())
    work = Path(tempfile.mkdtemp(prefix="maas-bench-"))
    int8 = args.int8
    int8_source = "models/compressed/int8"
    if not (int8 / "model.tflite").is_file():
        int8 = int8_artifact(args.classifier, work / "int8", batch=8)
        int8_source = "dynamic-range int8 conversion made by the benchmark (batch 8)"
    python = sys.executable
    maas_options = ["--poll-interval", "0", "--max-batch-size", str(args.max_batch_size),
                    "--batch-timeout-ms", str(args.batch_timeout_ms)]  # fmt: skip
    configs = [("naive (Flask, Keras predict)", None, [])]
    for label, artifact in (("SavedModel", args.classifier), ("TFLite int8", int8)):
        configs += [(f"maas {label}, batching", artifact, []),
                    (f"maas {label}, no batching", artifact, ["--no-batching"])]  # fmt: skip
    rows = []
    try:
        for index, (name, artifact, extra) in enumerate(configs):
            port = free_port()
            log = work / f"server-{index}.log"
            if artifact is None:
                command = [python, str(ROOT / "benchmarks" / "naive_server.py"),
                           "--classifier", str(args.classifier), "--port", str(port)]  # fmt: skip
                server = Server(command, port, "/health", log)
            else:
                repository = repository_of(artifact, work / f"repository-{index}")
                command = [python, "-m", "maas.cli", "serve", "--port", str(port),
                           "--model-repository", str(repository)]  # fmt: skip
                command += [*maas_options, *extra]
                server = Server(command, port, "/v2/health/ready", log)
            try:
                rows.append(measure(name, server, requests, args))
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    naive = rows[0]
    for row in rows:
        row["speedup"] = round(row["throughput_rps"] / naive["throughput_rps"], 1)
        row["p99_not_worse"] = row["p99_ms"] <= naive["p99_ms"]
    best = max(rows[1:], key=lambda row: row["throughput_rps"])
    report = {
        "clients": args.clients,
        "duration_s": args.duration,
        "max_batch_size": args.max_batch_size,
        "batch_timeout_ms": args.batch_timeout_ms,
        "int8_source": int8_source,
        "texts": len(requests),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "git_revision": git_revision(ROOT),
        "results": rows,
        "best": best["server"],
        "target_met": best["speedup"] >= TARGET_SPEEDUP and best["p99_not_worse"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "serving.json", report)
    (args.out / "serving.md").write_text(
        f"# Serving benchmark\n\n{args.clients} concurrent clients, {args.duration:g} s per "
        f"server, POST /predict with one text; int8 model: {int8_source}.\n\n"
        + markdown_table(rows)
        + f"\n\nTarget (>= {TARGET_SPEEDUP:g}x the naive throughput at "
        f"an equal or better p99) met: {report['target_met']} (best: {best['server']}).\n"
    )
    figure(rows, args.out / "serving.png")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

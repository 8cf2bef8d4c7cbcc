"""The serve stage (notebook 05): build the model repository, serve it, call every protocol.

:func:`run` writes ``models/repository/`` from the trained classifier and the compressed
variants that exist, starts ``maas serve`` on a free loopback port in a subprocess, calls
each protocol on each model (checking that they agree), measures sequential latency, stops
the server and writes ``reports/metrics/serve.json``. It takes its parameters from the
notebook; the server it starts never reads ``params.yaml``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from maas.config import Paths, ServeParams, ServeSettings
from maas.ports import free_port
from maas.provenance import PROVENANCE_FILE, write_json
from maas.serving.layout import DEFAULT_MODEL, build_repository

log = logging.getLogger(__name__)

PROBE_TEXTS = (
    "The shuttle launch was delayed again; NASA says the orbiter's heat shield needs work.",
    "My car's engine stalls at idle. Should I replace the spark plugs or the fuel filter?",
    "The senate bill would require background checks for every private gun sale.",
    "Which graphics card works best with X11 on a 486 running Linux?",
)
PROTOCOLS = ("tfserving_v1", "oip_v2", "seed")


def repository_sources(params: ServeParams, paths: Paths) -> dict[str, Path]:
    """``{model name: artifact folder}``: the classifier and its compressed variants."""
    sources = {DEFAULT_MODEL: paths.classifier_dir}
    compressed = paths.compressed_dir
    if params.variants is not None:
        names = list(params.variants)
    elif compressed.is_dir():
        names = sorted(p.name for p in compressed.iterdir() if (p / PROVENANCE_FILE).is_file())
    else:
        names = []
    for name in names:
        sources[f"{DEFAULT_MODEL}-{name}"] = compressed / name  # missing ones are skipped
    return sources


def run(params: ServeParams, paths: Paths, *, settings: ServeSettings) -> dict[str, Any]:
    """Build the repository, serve it, probe every protocol; write the stage's metrics.

    ``settings`` bound the server's start-up and size the latency probe (no result)."""
    models = build_repository(repository_sources(params, paths), paths.repository_dir)
    args = [
        "--max-batch-size", str(params.max_batch_size),
        "--batch-timeout-ms", str(params.batch_timeout_ms),
        "--poll-interval", "0",
    ]  # fmt: skip
    log_path = paths.reports_dir / "serve" / "server.log"
    start = time.perf_counter()
    timeout_s = settings.startup_timeout_s
    with background_server(paths.repository_dir, args, log_path, timeout_s) as url:
        startup_s = time.perf_counter() - start
        rows = [probe_model(url, name, settings.latency_requests) for name in sorted(models)]
    report = {
        "models": sorted(models),
        "startup_s": round(startup_s, 2),
        "latency": rows,
        "all_protocols_agree": all(row["protocols_agree"] for row in rows),
    }
    write_json(paths.metrics_dir / "serve.json", report)
    return report


@contextlib.contextmanager
def background_server(
    repository: Path, args: list[str], log_path: Path, timeout_s: float
) -> Iterator[str]:
    """``maas serve`` on a free loopback port in a subprocess; yields its URL, then stops it."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "maas.cli", "serve", "--model-repository", str(repository)]
    command += ["--host", "127.0.0.1", "--port", str(port), *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited early; see {log_path}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not ready within {timeout_s}s; see {log_path}")
                time.sleep(0.25)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def probe_model(url: str, model: str, requests: int) -> dict[str, Any]:
    """Call each protocol on one model; latency percentiles of single-text requests."""
    import httpx

    texts = list(PROBE_TEXTS)
    tensor = {"name": "texts", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    calls = {
        "tfserving_v1": (f"/v1/models/{model}:predict", {"instances": texts}),
        "oip_v2": (f"/v2/models/{model}/infer", {"id": "probe", "inputs": [tensor]}),
        "seed": ("/predict", {"texts": texts, "model": model}),
    }
    row: dict[str, Any] = {"model": model}
    with httpx.Client(base_url=url, timeout=60) as client:
        for path in (f"/v1/models/{model}", f"/v1/models/{model}/metadata", f"/v2/models/{model}"):
            client.get(path).raise_for_status()
        row["runtime"] = client.get(f"/v1/models/{model}/metadata").json()["metadata"]["maas"][
            "runtime"
        ]
        labels = {}
        for protocol, (path, body) in calls.items():
            response = client.post(path, json=body)
            response.raise_for_status()
            labels[protocol] = _labels(protocol, response.json())
        row["protocols_agree"] = len({tuple(v) for v in labels.values()}) == 1
        for protocol, (path, _) in calls.items():
            single = _single_text_body(protocol, model)
            seconds = []
            for _ in range(requests):
                start = time.perf_counter()
                client.post(path, json=single).raise_for_status()
                seconds.append(time.perf_counter() - start)
            row[f"{protocol}_p50_ms"] = round(float(np.percentile(seconds, 50)) * 1000, 2)
            row[f"{protocol}_p99_ms"] = round(float(np.percentile(seconds, 99)) * 1000, 2)
    return row


def _single_text_body(protocol: str, model: str) -> dict[str, Any]:
    text = PROBE_TEXTS[0]
    if protocol == "tfserving_v1":
        return {"instances": [text]}
    if protocol == "oip_v2":
        return {"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    return {"text": text, "model": model}


def _labels(protocol: str, body: dict[str, Any]) -> list[str]:
    if protocol == "tfserving_v1":
        return [row["labels"] for row in body["predictions"]]
    if protocol == "oip_v2":
        return next(o for o in body["outputs"] if o["name"] == "labels")["data"]
    return [row["label"] for row in body["predictions"]]


def latency_figure(rows: list[dict[str, Any]]) -> Figure:
    """Median and 99th percentile latency per model and protocol (single-text requests)."""
    figure = Figure(figsize=(10, 1.2 + 0.9 * len(rows)), layout="constrained")
    ax = figure.subplots()
    height = 0.8 / len(PROTOCOLS)
    y = np.arange(len(rows))
    for i, protocol in enumerate(PROTOCOLS):
        p50 = [row[f"{protocol}_p50_ms"] for row in rows]
        p99 = [row[f"{protocol}_p99_ms"] for row in rows]
        bars = ax.barh(y + i * height, p50, height=height, label=f"{protocol} p50")
        ax.errorbar(
            p99, y + i * height, fmt="|", color=bars.patches[0].get_facecolor(), markersize=12
        )
    ax.set_yticks(y + height * (len(PROTOCOLS) - 1) / 2, [row["model"] for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel("latency per request, ms (bar: median, tick: 99th percentile)")
    ax.set_title("Sequential single-text requests on loopback")
    figure.legend(loc="outside right upper", fontsize=8)
    return figure

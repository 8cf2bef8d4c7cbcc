"""The tail at 64 clients: ``maas serve`` against KServe's ModelServer on the same SavedModel.

Both serve ``POST /v1/models/classifier:predict`` with ``{"instances": [text]}`` (one text
a request) to the load generator of ``benchmarks/serving.py`` (N keep-alive clients, T
seconds after a warm-up). KServe runs from a throwaway virtual environment with ``kserve``
installed (``--kserve-python``; never the project's), TensorFlow from the project's
(``benchmarks/kserve_server.py``). maas runs under ``benchmarks/tail_probe.py``, which
records the event loop's lag and every garbage collection's pause, in variants that each
change one suspect: the heap frozen after loading (the default) or not, the access log, the
batch window, batching itself. KServe binds every interface: the script starts itself
again in a private network namespace (``../shared/tools/in-private-network``).

Writes ``reports/benchmarks/tail.{json,md}``.

    python3 -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install "kserve==0.21.*"
    .venv/bin/python benchmarks/tail.py --saved-model models/classifier
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serving import Server, load, raw_posts, rerun_in_private_network, sample_texts  # noqa: E402

from maas.ports import free_port  # noqa: E402
from maas.provenance import git_revision, write_json  # noqa: E402
from maas.reporting import markdown_table  # noqa: E402

PATH = "/v1/models/classifier:predict"
# name -> (extra `maas serve` flags, probe environment)
VARIANTS = {
    "maas serve (defaults)": ([], {}),
    "maas, heap not frozen (before)": ([], {"MAAS_PROBE_GC_UNFREEZE": "1"}),
    "maas, no access log": ([], {"MAAS_PROBE_NO_ACCESS_LOG": "1"}),
    "maas, batch window 0": (["--batch-timeout-ms", "0"], {}),
    "maas, no batching": (["--no-batching"], {}),
}  # fmt: skip


def measure(name: str, server: Server, requests, args) -> dict:
    asyncio.run(load(server.port, requests, args.clients, args.warmup))
    result = asyncio.run(load(server.port, requests, args.clients, args.duration))
    row = {"server": name, "clients": args.clients, **result}
    print(row, flush=True)
    return row


def kserve_row(args, requests, work: Path) -> dict:
    port = free_port()
    command = [str(args.kserve_python), "-P", str(ROOT / "benchmarks" / "kserve_server.py")]
    command += ["--model-dir", str(args.saved_model / "saved_model")]
    command += ["--site-packages", sysconfig.get_paths()["purelib"], "--http_port", str(port)]
    command += ["--enable_latency_logging", "false"]
    server = Server(command, port, "/v1/models/classifier", work / "kserve.log")
    try:
        return measure("KServe 0.21 ModelServer", server, requests, args)
    finally:
        server.stop()


def maas_row(name: str, flags: list[str], env: dict, args, requests, work: Path) -> dict:
    repo = work / f"repo-{len(list(work.glob('repo-*')))}"
    shutil.copytree(args.saved_model, repo / "classifier" / "1")
    port = free_port()
    probe = work / f"probe-{port}.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "tail_probe.py"), "serve"]
    command += ["--model-repository", str(repo), "--port", str(port), "--poll-interval", "0"]
    server = Server(
        [*command, *flags],
        port,
        "/v2/health/ready",
        work / f"{port}.log",
        env={**env, "MAAS_PROBE_OUT": str(probe)},
    )
    try:
        row = measure(name, server, requests, args)
    finally:
        server.stop()
    row["probe"] = json.loads(probe.read_text()) if probe.exists() else {}
    return row


def report(rows: list[dict], args) -> str:
    kserve = next(r for r in rows if r["server"].startswith("KServe"))
    maas = next(r for r in rows if r["server"] == "maas serve (defaults)")
    table = []
    for row in rows:
        probe = row.get("probe", {})
        lag = probe.get("loop_lag_ms", {})
        gen2 = probe.get("gc", {}).get("gen2", {})
        table.append({
            "server": row["server"], "throughput_rps": row["throughput_rps"],
            "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"], "errors": row["errors"],
            "loop_lag_p99_ms": lag.get("p99", ""), "loop_lag_max_ms": lag.get("max", ""),
            "lags_over_20ms": lag.get("over_20ms", ""),
            "gc_gen2": f"{gen2.get('count')} x, max {gen2.get('max_ms')} ms" if gen2 else "",
        })  # fmt: skip
    return "\n".join([
        "# The tail at 64 clients: maas serve vs KServe's ModelServer",
        "",
        f"The same SavedModel (`{args.saved_model}`); `POST {PATH}` with one text; "
        f"{args.clients} keep-alive clients, {args.duration:g} s after {args.warmup:g} s of "
        "warm-up, one server at a time. The machine has 2 CPU cores shared with other work "
        "(the load generator too): figures are noisy, compare within one run. Loop lag: how "
        "late a 5 ms sleep on the server's event loop woke up (its p99 and max, and how many "
        "wake-ups were over 20 ms late); GC gen2: full collections during the run.",
        "",
        markdown_table(table),
        "",
        f"- maas defaults / KServe: p99 {maas['p99_ms'] / kserve['p99_ms']:.2f}x, "
        f"throughput {maas['throughput_rps'] / kserve['throughput_rps']:.2f}x "
        "(targets: p99 <= 1x, throughput >= 2x)",
        "",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved-model", type=Path, required=True, help="a SavedModel artifact")
    parser.add_argument("--kserve-python", type=Path, default=Path("/tmp/kserve-venv/bin/python"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args()
    if (code := rerun_in_private_network(__file__)) is not None:
        return code
    args.saved_model = args.saved_model.resolve()
    requests = raw_posts(PATH, [{"instances": [text]} for text in sample_texts()])
    work = Path(tempfile.mkdtemp(prefix="maas-tail-"))
    rows = [kserve_row(args, requests, work)]
    for name in args.variants:
        flags, env = VARIANTS[name]
        rows.append(maas_row(name, flags, env, args, requests, work))
    shutil.rmtree(work, ignore_errors=True)
    record = {
        "rows": rows, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "git_revision": git_revision(), "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    write_json(args.out / "tail.json", record)
    (args.out / "tail.md").write_text(report(rows, args))
    print((args.out / "tail.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load shedding: ``maas serve --max-queue Q`` under 4x overload, against an unbounded queue.

The same bounded load as ``benchmarks/serving.py`` (keep-alive clients, ``POST /predict``
with one text, each client sending again as soon as it has its answer). For one server with
``--max-queue Q`` and one without, at Q clients (the load the queue admits whole: no
shedding) and at 4Q clients (4x overload): throughput of answered requests, their p50/p99,
and the requests refused with 503 + ``Retry-After`` per second. A refused client waits as
``Retry-After`` says (a polite client), and, in a second run at 4x, retries at once (a
hostile one, whose refusals then take the server's CPU: on this machine the load generator
shares the server's two cores, too). Target: at 4x overload the accepted requests' p99
within 2x the p99 at 1x, with every request answered (200 or 503, no error).

Writes ``reports/benchmarks/shed.{json,md}``.

    .venv/bin/python benchmarks/shed.py --artifact /tmp/scale-art/lite --queue 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serving import Server, load, requests_for, sample_texts  # noqa: E402

from maas.ports import free_port  # noqa: E402
from maas.provenance import git_revision, write_json  # noqa: E402
from maas.reporting import markdown_table  # noqa: E402


def run_server(args, requests, work: Path, name: str, extra: list[str]) -> list[dict]:
    repo = work / f"repo-{len(list(work.iterdir()))}"
    shutil.copytree(args.artifact, repo / "classifier" / "1")
    port = free_port()
    command = [sys.executable, "-m", "maas.cli", "serve", "--model-repository", str(repo)]
    command += ["--port", str(port), "--poll-interval", "0", *extra]
    server = Server(command, port, "/v2/health/ready", work / f"{name}.log")
    rows = []
    try:
        runs = ((1, True), (4, True), (4, False)) if extra else ((1, True), (4, True))
        for factor, backoff in runs:  # unbounded refuses nothing: no third run
            clients = factor * args.queue
            asyncio.run(load(port, requests, clients, args.warmup, backoff))
            result = asyncio.run(load(port, requests, clients, args.duration, backoff))
            row = {"server": name, "load": f"{factor}x", "clients": clients, **result}
            row["refused_clients"] = "wait Retry-After" if backoff else "retry at once"
            row["shed_rps"] = round(result["shed"] / result["seconds"], 1)
            print(row, flush=True)
            rows.append(row)
    finally:
        server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="an artifact folder")
    parser.add_argument("--queue", type=int, default=16, help="--max-queue (Q)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args()
    requests = requests_for(sample_texts())
    work = Path(tempfile.mkdtemp(prefix="maas-shed-"))
    rows = run_server(args, requests, work, f"--max-queue {args.queue}",
                      ["--max-queue", str(args.queue)])  # fmt: skip
    rows += run_server(args, requests, work, "unbounded", [])
    shutil.rmtree(work, ignore_errors=True)
    bounded = {
        r["load"]: r for r in rows if r["server"] != "unbounded" and r["refused_clients"][0] == "w"
    }
    ratio = round(bounded["4x"]["p99_ms"] / bounded["1x"]["p99_ms"], 2)
    met = ratio <= 2.0 and all(r["errors"] == 0 for r in rows)
    record = {
        "rows": rows, "p99_ratio_4x_over_1x": ratio, "target_met": met,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "git_revision": git_revision(), "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    write_json(args.out / "shed.json", record)
    columns = ("server", "load", "clients", "refused_clients", "throughput_rps", "p50_ms",
               "p99_ms", "errors", "shed_rps")  # fmt: skip
    (args.out / "shed.md").write_text(
        "# Load shedding: `maas serve --max-queue`\n\n"
        f"Artifact `{args.artifact}`; {args.duration:g} s per run after {args.warmup:g} s of "
        "warm-up; one text per `POST /predict`; a refused client retries at once. The machine "
        "has 2 CPU cores shared with other work (the load generator too): figures are noisy.\n\n"
        + markdown_table([{k: r[k] for k in columns} for r in rows])
        + f"\n\nAccepted requests' p99 at 4x overload / at 1x (bounded queue, refused "
        f"clients waiting as Retry-After says): {ratio} "
        f"(target <= 2; every request answered: "
        f"{all(r['errors'] == 0 for r in rows)}). Target met: {met}.\n"
    )
    print((args.out / "shed.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The traffic log's cost: ``maas serve --payload-log DIR --payload-sample 1`` against no log.

Two servers on the same artifact, started together and loaded in turn (rounds in the order
off, on, on, off, ...: drift in the machine's load hits both alike) by the load generator of
``benchmarks/serving.py`` (N keep-alive clients, ``POST /predict`` with one real post each,
T seconds after a warm-up). Target: at 64 clients, the logging server's throughput (median of
its rounds) within 5 % of the other's. Each run also records the CPU time the server (and
the log's writer process) spent per answered request, which what else runs on the machine
sways less than throughput. After the runs, the log is checked: a record per
answered request, nothing dropped, no unredacted e-mail address in it.

Also measured: redaction alone, microseconds per post (``maas.serving.redact`` and, when it
is installed, scrubadub's default scrubber), and what each misses of the test fixture's
personal data.

Writes ``reports/benchmarks/payload_log.{json,md}``.

    .venv/bin/python benchmarks/payload_log.py --artifact /tmp/scale-art/lite
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
import psutil  # noqa: E402
from serving import Server, load, requests_for, sample_texts  # noqa: E402
from traffic_fixtures import PII, secrets  # noqa: E402  (the redaction fixture)

from maas.ports import free_port  # noqa: E402
from maas.provenance import git_revision, write_json  # noqa: E402
from maas.reporting import markdown_table  # noqa: E402
from maas.serving.redact import Redactor  # noqa: E402
from maas.traffic import read_records  # noqa: E402

TARGET = 0.05  # the logging server's throughput may fall this much at most
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


def start(artifact: Path, work: Path, name: str, extra: list[str]) -> Server:
    repository = work / name / "repo"
    shutil.copytree(artifact, repository / "classifier" / "1")
    port = free_port()
    command = [sys.executable, "-m", "maas.cli", "serve", "--model-repository", str(repository)]
    command += ["--port", str(port), "--poll-interval", "0", *extra]
    return Server(command, port, "/v2/health/ready", work / f"{name}.log")


def redaction_costs(texts: list[str]) -> list[dict]:
    """Microseconds per post (best of 5 passes) and the fixture's secrets each one misses."""
    scrubbers = {"maas.serving.redact": Redactor()}
    try:
        import scrubadub

        scrubber = scrubadub.Scrubber()
        scrubbers[f"scrubadub {scrubadub.__version__} (defaults)"] = scrubber.clean
    except ImportError:
        print("scrubadub is not installed: measured maas.serving.redact only", flush=True)
    rows = []
    for name, clean in scrubbers.items():
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for text in texts:
                clean(text)
            best = min(best, time.perf_counter() - began)
        masked = " ".join(clean(text) for text, _ in PII)
        missed = [secret for secret in secrets() if secret in masked]
        rows.append({
            "redactor": name,
            "us_per_post": round(best / len(texts) * 1e6, 1),
            "fixture_secrets_missed": f"{len(missed)} of {len(secrets())}",
            "missed": ", ".join(missed[:8]) + (" ..." if len(missed) > 8 else ""),
        })  # fmt: skip
    return rows


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) of a process, and of its children (the log's writer)."""
    process = psutil.Process(pid)
    spent = []
    for members in ([process], process.children(recursive=True)):
        total = 0.0
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                total += times.user + times.system
        spent.append(total)
    return spent[0], spent[1]


def metric_sum(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="an artifact folder")
    parser.add_argument("--texts", type=Path, help="a JSON Lines split to send posts from")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server")
    parser.add_argument("--sample", type=float, default=1.0, help="--payload-sample")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    args = parser.parse_args()
    texts = sample_texts(path=args.texts)
    requests = requests_for(texts)
    work = Path(tempfile.mkdtemp(prefix="maas-payload-log-"))
    log_dir = work / "traffic"
    names = {"logging off": [], f"--payload-log, sample {args.sample:g}": []}
    off, on = names
    servers = {
        off: start(args.artifact, work, "off", []),
        on: start(args.artifact, work, "on",
                  ["--payload-log", str(log_dir), "--payload-sample", str(args.sample)]),
    }  # fmt: skip
    rows, cpu = [], {name: [] for name in names}
    try:
        for round_number in range(args.rounds):
            order = (off, on) if round_number % 2 == 0 else (on, off)
            for name in order:
                port = servers[name].port
                asyncio.run(load(port, requests, args.clients, args.warmup))
                before = cpu_seconds(servers[name].process.pid)
                result = asyncio.run(load(port, requests, args.clients, args.duration))
                after = cpu_seconds(servers[name].process.pid)
                row = {"server": name, "round": round_number + 1, **result}
                answers = max(result["requests"], 1)
                row["server_cpu_ms"] = round((after[0] - before[0]) * 1000 / answers, 3)
                row["writer_cpu_ms"] = round((after[1] - before[1]) * 1000 / answers, 3)
                row["cpu_ms_per_request"] = round(row["server_cpu_ms"] + row["writer_cpu_ms"], 3)
                print(row, flush=True)
                rows.append(row)
                names[name].append(result["throughput_rps"])
                cpu[name].append(row["cpu_ms_per_request"])
        metrics = httpx.get(f"http://127.0.0.1:{servers[on].port}/metrics").text
    finally:
        for server in servers.values():
            server.stop()  # the logging server writes what it still holds
    records = read_records(log_dir)
    dropped = metric_sum(metrics, "maas_payload_log_dropped_total")
    answered = metric_sum(metrics, "maas_requests_total", code="200", protocol="seed")
    unredacted = sum(bool(EMAIL.search(text)) for r in records for text in r["inputs"])
    shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in names.items()}
    ratio = round(medians[on] / medians[off], 4)
    means = {name: statistics.fmean(values) for name, values in names.items()}
    mean_ratio = round(means[on] / means[off], 4)
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    cpu_ratio = round(cpu_medians[on] / cpu_medians[off], 4)
    met = ratio >= 1 - TARGET and not any(r["errors"] for r in rows)
    costs = redaction_costs(texts)
    record = {
        "rows": rows, "median_throughput_rps": medians, "throughput_ratio_on_over_off": ratio,
        "target_met": met, "mean_ratio": mean_ratio, "cpu_ms_per_request": cpu_medians,
        "cpu_ratio_on_over_off": cpu_ratio, "answered": answered, "records_written": len(records),
        "dropped": dropped,
        "unredacted_emails_in_log": unredacted, "redaction": costs,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "git_revision": git_revision(), "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    write_json(args.out / "payload_log.json", record)
    columns = ("server", "round", "throughput_rps", "p50_ms", "p99_ms", "errors",
               "server_cpu_ms", "writer_cpu_ms")  # fmt: skip
    (args.out / "payload_log.md").write_text(
        "# The traffic log's cost: `maas serve --payload-log`\n\n"
        f"Artifact `{args.artifact}`; {args.clients} keep-alive clients, one post per "
        f"`POST /predict`, {args.duration:g} s per run after {args.warmup:g} s of warm-up; "
        "both servers up at once, loaded in turn (off, on, on, off, ...). The machine has 2 "
        "CPU cores shared with other work (the load generator too): compare within this run."
        "\n\n"
        + markdown_table([{k: r[k] for k in columns} for r in rows])
        + f"\n\nMedian throughput: logging off {medians[off]:g}, logging on {medians[on]:g} "
        f"answers/s; ratio {ratio} (target >= {1 - TARGET}). Target met: {met}. (Ratio of the "
        f"means, for the spread: {mean_ratio}.)\n\n"
        "CPU time per answered request (`server_cpu_ms`: the server process; `writer_cpu_ms`: "
        "its children, the log's writer process; less sensitive than throughput to what else "
        "the machine runs), both together: "
        f"off {cpu_medians[off]:g} ms, on {cpu_medians[on]:g} ms (median of the rounds), "
        f"ratio {cpu_ratio}.\n\n"
        f"The log: {len(records)} records written for {answered:g} answered requests (warm-ups "
        f"included), {dropped:g} dropped (queue full or write error), {unredacted} texts "
        "with an e-mail address left (0 expected).\n\n"
        "## Redaction alone\n\nMicroseconds per post (the same posts, best of 5 passes) and "
        "the personal data of the test fixture (`tests/traffic_fixtures.py`) each "
        "redactor leaves in the text:\n\n"
        + markdown_table(costs)
        + "\n\nCommand: `.venv/bin/python benchmarks/payload_log.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k != "out" and v is not None
        )  # fmt: skip
        + "`\n"
    )
    print((args.out / "payload_log.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

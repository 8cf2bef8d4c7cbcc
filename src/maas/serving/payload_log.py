"""The traffic log: request and response records as JSON Lines, redacted, rotated, bounded.

``maas serve --payload-log DIR`` writes one JSON object a line for each sampled request that
a model answered::

    {"time": "2026-12-05T17:40:10.123Z", "request_id": "...", "model": "classifier",
     "version": 3, "protocol": "seed", "status": "200", "latency_ms": 12.4,
     "key_id": "ci-bot", "inputs": ["text, [EMAIL] masked"],
     "outputs": [{"label": "sci.space", "class_id": 14, "confidence": 0.91}]}

Nothing of this runs on the request path but a sampling draw and an append to a bounded
queue: every few milliseconds the event loop sends the queued records, pickled, to a writer
process (:class:`WriterProcess`, :func:`main`), which redacts them
(:mod:`maas.serving.redact`), encodes and writes them. When the queue is full, or the
process is behind, records are dropped and counted (``maas_payload_log_dropped_total``),
rather than slowing requests down. Files are ``payloads-<host>-<pid>-<start>-<n>.jsonl``:
each server process (each front of the Ray engine) writes its own, a new one past
``max_file_bytes``, and keeps its newest ``max_files``; so DIR holds at most
``max_files x max_file_bytes`` per process.

The key id is the one :func:`maas.serving.auth.key_id` gives (the key's name in the key
file, else the start of its stored hash): never the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from maas.serving.redact import KINDS, Redactor

log = logging.getLogger(__name__)

NICE = 10  # the writer process's lower priority
# Request ids the server makes up: this process's random prefix and a count (uuid4 for each
# would read the system's random source every time).
_PROCESS, _NUMBERS = uuid.uuid4().hex[:12], itertools.count(1)
FILE_PREFIX = "payloads-"
FILE_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class PayloadLogSettings:
    """``--payload-log`` and its companions."""

    directory: Path
    sample: float = 1.0  # share of requests logged
    redact: tuple[str, ...] = KINDS  # what redaction masks (empty: nothing)
    max_file_bytes: int = 64 * 1024**2
    max_files: int = 10  # per server process
    probabilities: bool = False  # every class's probability, not only the top one's
    queue_size: int = 10_000  # records waiting for the writer at most; more are dropped

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample <= 1.0:
            raise ValueError(f"--payload-sample must be within 0 and 1, got {self.sample}")
        if self.max_file_bytes < 1024:
            raise ValueError(f"--payload-file-mb gives {self.max_file_bytes} bytes, under 1 KiB")
        if self.max_files < 1:
            raise ValueError(f"--payload-files must be >= 1, got {self.max_files}")
        if self.queue_size < 1:
            raise ValueError(f"the payload queue must hold >= 1 record, got {self.queue_size}")
        unknown = set(self.redact) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown redaction kinds {sorted(unknown)}; known: {KINDS}")


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and write a probe file in it.

    Raises:
        ValueError: it cannot be created or written, with the reason.
    """
    probe = Path(directory) / f".maas-probe-{os.getpid()}"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--payload-log {directory}: not writable: {error}") from error


@dataclass
class Record:
    """One answered request, as the request path hands it over (nothing encoded yet)."""

    time: float
    model: str
    version: int
    labels: tuple[str, ...]
    texts: list[str]
    probabilities: Any  # numpy (n, classes)
    class_ids: Any  # numpy (n,)
    request_id: str = ""  # empty: one is made up
    protocol: str = ""
    status: str = ""
    latency_s: float = 0.0
    key_id: str | None = None  # the API key's id (maas.serving.auth.key_id), never the key

    def wire(self, *, probabilities: bool = False) -> tuple:
        """What the writer process gets: plain values, texts not yet redacted, the key's id
        (:func:`to_line` makes the JSON line of it)."""
        class_ids = self.class_ids.tolist()
        return (
            self.time,
            self.request_id or f"{_PROCESS}-{next(_NUMBERS)}",
            self.model,
            self.version,
            self.protocol,
            self.status,
            self.latency_s,
            self.key_id,
            self.texts,
            [self.labels[c] for c in class_ids],
            class_ids,
            self.probabilities.max(axis=1).tolist(),  # the predicted class's: it is the argmax
            self.probabilities.tolist() if probabilities else None,
        )


def to_line(wire: tuple, redact: Callable[[str], str]) -> dict[str, Any]:
    """The JSON object of a record (:meth:`Record.wire`), its texts redacted."""
    (when, request_id, model, version, protocol, status, latency_s, key, texts, labels,
     class_ids, confidences, probabilities) = wire  # fmt: skip
    outputs = [
        {"label": label, "class_id": c, "confidence": round(p, 5)}
        for label, c, p in zip(labels, class_ids, confidences, strict=True)
    ]
    if probabilities is not None:
        for output, row in zip(outputs, probabilities, strict=True):
            output["probabilities"] = [round(p, 5) for p in row]
    return {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "model": model,
        "version": version,
        "protocol": protocol,
        "status": status,
        "latency_ms": round(latency_s * 1000, 3),
        "key_id": key,
        "inputs": [redact(text) for text in texts],
        "outputs": outputs,
    }


def yield_gil() -> None:
    """Let another thread take the GIL now.

    A thread that runs Python code keeps the GIL until it blocks or 5 ms have passed
    (``sys.getswitchinterval()``); the event loop's thread, which gives the GIL up at every
    socket call, would wait that long each time to get it back. Giving the GIL up after
    each item (a record made plain, a text measured) bounds the loop's wait to one item.
    """
    time.sleep(0)


class RotatingFiles:
    """This process's log files in one folder: a new one past ``max_bytes``, the newest
    ``max_files`` kept (only the writer thread uses it)."""

    def __init__(self, directory: Path, max_bytes: int, max_files: int) -> None:
        self.directory, self.max_bytes, self.max_files = Path(directory), max_bytes, max_files
        host = socket.gethostname().split(".")[0][:32] or "host"
        start = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.stem = f"{FILE_PREFIX}{host}-{os.getpid()}-{start}"
        self.number = 0
        self.written: deque[Path] = deque()
        self.handle = None
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.handle is None or (self.size and self.size + len(data) > self.max_bytes):
            self._next_file()
        self.handle.write(data)
        self.handle.flush()  # whole lines reach the file: a reader never sees half of one
        self.size += len(data)

    def _next_file(self) -> None:
        self.close()
        self.number += 1
        path = self.directory / f"{self.stem}-{self.number:04d}{FILE_SUFFIX}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("ab")
        self.size = path.stat().st_size
        self.written.append(path)
        while len(self.written) > self.max_files:
            self.written.popleft().unlink(missing_ok=True)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class PayloadLog:
    """Redacts, encodes and writes records (in the writer process, :func:`main`)."""

    def __init__(self, settings: PayloadLogSettings) -> None:
        self.settings = settings
        self.redactor = Redactor(settings.redact)
        self.files = RotatingFiles(settings.directory, settings.max_file_bytes, settings.max_files)

    def encode(self, wire: tuple) -> bytes:
        """One JSON line for a record (:meth:`Record.wire`), its texts redacted."""
        return orjson.dumps(to_line(wire, self.redactor)) + b"\n"  # json took 30 us a post

    def write(self, wires: list[tuple]) -> int:
        """Encode and write records; the bytes written."""
        data = b"".join(self.encode(wire) for wire in wires)
        self.files.write(data)
        return len(data)

    def close(self) -> None:
        self.files.close()


class WriterProcess:
    """The server's side of the writer process, on the event loop: frames of records down
    the process's standard input (asyncio buffers them: sending never blocks), and per
    frame a line ``written failed`` back on its standard output.

    Redacting and encoding take tens of microseconds a record. In a thread of the server
    that time holds the GIL, and the event loop, the server's bottleneck, waits for it:
    measured, half the throughput at 64 clients with every request logged (a third after
    the thread gave the GIL up after every record); handing records from a thread to this
    process still cost 7 % of the server's CPU, in hand-offs of the GIL. On the loop it
    costs a pickle a record.
    """

    def __init__(self, settings: PayloadLogSettings, on_ack: Callable[[int, int], None]):
        self.settings, self.on_ack = settings, on_ack
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task | None = None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "maas.serving.payload_log", settings_json(self.settings),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the server, which drains it
        )  # fmt: skip
        self.reader = asyncio.create_task(self._read_acks())

    def backlog(self) -> int:
        """Bytes sent but not yet taken by the process."""
        return self.process.stdin.transport.get_write_buffer_size()

    def send(self, wires: list[tuple]) -> None:
        """Hand records over (never blocks).

        Raises:
            OSError: the writer process is gone.
        """
        if self.process.returncode is not None or self.process.stdin.is_closing():
            raise OSError(f"the writer process ended (exit code {self.process.returncode})")
        data = pickle.dumps(wires, protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.write(struct.pack("<I", len(data)) + data)

    async def _read_acks(self) -> None:
        while line := await self.process.stdout.readline():
            written, failed = (int(n) for n in line.split())
            self.on_ack(written, failed)

    async def close(self, timeout: float = 10.0) -> None:
        """Let the process write what it holds and end."""
        with contextlib.suppress(OSError, RuntimeError):
            self.process.stdin.write(struct.pack("<I", 0))
            await asyncio.wait_for(self.process.stdin.drain(), timeout)
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            log.warning("the payload-log writer did not finish within %g s; killed", timeout)
            self.process.kill()
            await self.process.wait()
        if self.reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reader, timeout)


def settings_json(settings: PayloadLogSettings) -> str:
    values = dataclasses.asdict(settings)
    return json.dumps({**values, "directory": str(settings.directory)})


def main(argv: list[str]) -> int:
    """The writer process: ``python -m maas.serving.payload_log SETTINGS_JSON``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server ends it, by closing stdin
    with contextlib.suppress(OSError):
        # Answering comes first: when the CPUs are busy the log falls behind (its queue
        # holds the backlog, and drops are counted) rather than slowing requests down.
        os.nice(NICE)
    values = json.loads(argv[1])
    settings = PayloadLogSettings(
        **{**values, "directory": Path(values["directory"]), "redact": tuple(values["redact"])}
    )
    writer = PayloadLog(settings)
    source, acks = sys.stdin.buffer, sys.stdout
    try:
        while True:
            head = source.read(4)
            if len(head) < 4:
                break
            (size,) = struct.unpack("<I", head)
            if size == 0:
                break
            wires = pickle.loads(source.read(size))
            try:
                writer.write(wires)
                acks.write(f"{len(wires)} 0\n")
            except OSError as error:  # a full disk, a vanished folder: count, keep going
                print(f"maas payload log: writing failed: {error}", file=sys.stderr)
                acks.write(f"0 {len(wires)}\n")
            acks.flush()
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

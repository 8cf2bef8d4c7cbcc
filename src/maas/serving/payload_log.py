"""The traffic log: request and response records as JSON Lines, redacted, rotated, bounded.

``maas serve --payload-log DIR`` writes one JSON object a line for each sampled request that
a model answered::

    {"time": "2026-12-05T17:40:10.123Z", "request_id": "...", "model": "classifier",
     "version": 3, "protocol": "seed", "status": "200", "latency_ms": 12.4,
     "key_id": "k-1f0c9a2b7d", "inputs": ["text, [EMAIL] masked"],
     "outputs": [{"label": "sci.space", "class_id": 14, "confidence": 0.91}]}

Nothing of this runs on the request path but a sampling draw and an append to a bounded
queue: a writer thread redacts (:mod:`maas.serving.redact`), encodes and writes. When the
queue is full, the record is dropped and counted (``maas_payload_log_dropped_total``),
rather than slowing requests down. Files are ``payloads-<host>-<pid>-<start>-<n>.jsonl``:
each server process (each front of the Ray engine) writes its own, a new one past
``max_file_bytes``, and keeps its newest ``max_files``; so DIR holds at most
``max_files x max_file_bytes`` per process.

The key id is a hash of the key's stored hash (``sha256:<hex>`` line of the key file):
:func:`key_id_of_line` gives the same id from the key file, so an operator can tell which
key called without the log ever holding the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from maas.serving.redact import KINDS, Redactor

log = logging.getLogger(__name__)

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


def key_id_of_hash(digest: bytes) -> str:
    """The id of a key whose SHA-256 digest is ``digest`` (a short hash of the digest)."""
    return "k-" + hashlib.sha256(digest).hexdigest()[:10]


def key_id(key: str | None) -> str | None:
    """The id of a presented key (never the key): see :func:`key_id_of_line`."""
    if not key:
        return None
    return key_id_of_hash(hashlib.sha256(key.encode("utf-8", "replace")).digest())


def key_id_of_line(line: str) -> str:
    """The id that records carry for the key of a key-file line ``sha256:<hex>``."""
    return key_id_of_hash(bytes.fromhex(line.strip().removeprefix("sha256:")))


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
    request_id: str = ""
    protocol: str = ""
    status: str = ""
    latency_s: float = 0.0
    key_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def yield_gil() -> None:
    """Let another thread take the GIL now.

    A thread that runs Python code keeps the GIL until it blocks or 5 ms have passed
    (``sys.getswitchinterval()``); the event loop's thread, which gives the GIL up at every
    socket call, would wait that long each time to get it back. Measured: with records
    encoded in batches, a server at 64 clients answered half as many requests. Giving the
    GIL up after each record bounds the loop's wait to one record's work (tens of us).
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
    """Encodes and writes records (the writer thread's side of the traffic log)."""

    def __init__(self, settings: PayloadLogSettings) -> None:
        self.settings = settings
        self.redactor = Redactor(settings.redact)
        self.files = RotatingFiles(settings.directory, settings.max_file_bytes, settings.max_files)

    def encode(self, record: Record) -> str:
        """One JSON line for ``record``: its texts redacted, its outputs summarised."""
        outputs = []
        for i, class_id in enumerate(record.class_ids.tolist()):
            row = record.probabilities[i]
            output: dict[str, Any] = {
                "label": record.labels[class_id],
                "class_id": class_id,
                "confidence": round(float(row[class_id]), 5),
            }
            if self.settings.probabilities:
                output["probabilities"] = [round(p, 5) for p in row.tolist()]
            outputs.append(output)
        line = {
            "time": datetime.fromtimestamp(record.time, UTC).isoformat(timespec="milliseconds"),
            "request_id": record.request_id,
            "model": record.model,
            "version": record.version,
            "protocol": record.protocol,
            "status": record.status,
            "latency_ms": round(record.latency_s * 1000, 3),
            "key_id": record.key_id,
            "inputs": [self.redactor(text) for text in record.texts],
            "outputs": outputs,
            **record.extra,
        }
        return json.dumps(line, ensure_ascii=False)

    def write(self, records: list[Record]) -> int:
        """Encode and write ``records``; the bytes written."""
        lines = []
        for record in records:
            lines.append(self.encode(record))
            yield_gil()
        data = ("\n".join(lines) + "\n").encode("utf-8")
        self.files.write(data)
        return len(data)

    def close(self) -> None:
        self.files.close()

"""The tap on live traffic: the payload log and drift, fed from the request path, worked off it.

:func:`maas.serving.state.predict_texts` (every protocol, both engines) hands each answered
request to :meth:`TrafficTap.observe`, which only draws the payload sample, notes a
:class:`Pending` record in the request's notes, and queues a rate-limited share of the texts
for drift. The request's own middleware (REST) or interceptor (gRPC) then completes the
pending record with what only it knows (latency, status, request id, API key) and queues it.
Every 20 ms the event loop sends the queued records to the writer process, which redacts
and writes them (:mod:`maas.serving.payload_log`); a thread measures the queued texts for
the drift monitors (:mod:`maas.serving.drift`). Full queues drop and count; the request
path never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from maas.serving.metrics import SCOPE_TRAFFIC, Metrics
from maas.serving.payload_log import (
    PayloadLogSettings,
    Record,
    WriterProcess,
    check_writable,
    yield_gil,
)

if TYPE_CHECKING:  # imported when a version is first watched: `maas serve --help` stays quick
    from maas.serving.drift import DriftMonitor

log = logging.getLogger(__name__)

IDLE_S = 0.02  # the drift thread's nap when no text waits
BATCH = 256  # texts measured per turn at most
FLUSH_S = 0.02  # how often the loop sends queued records to the writer process
BACKLOG_BYTES = 64 * 1024**2  # sent but not yet read by the writer process, at most
DRIFT_QUEUE = 1000  # texts waiting to be measured at most
QUEUE_CHARS = 64 * 1024**2  # characters of text waiting to be written at most (about)


@dataclass(frozen=True)
class TrafficSettings:
    """The payload log (off unless a folder is given) and drift (on by default)."""

    payload: PayloadLogSettings | None = None
    drift_window: int = 500  # texts per version in the sliding window; 0: no drift
    drift_threshold: float = 0.3  # total variation distance: see maas.serving.drift
    drift_rate: float = 20.0  # texts measured per second at most (each costs ~0.5 ms)

    def __post_init__(self) -> None:
        if self.drift_window < 0:
            raise ValueError(f"--drift-window must be >= 0, got {self.drift_window}")
        if not 0.0 < self.drift_threshold <= 1.0:
            raise ValueError(
                f"--drift-threshold is a share: within 0 (excluded) and 1, got "
                f"{self.drift_threshold}"
            )
        if self.drift_rate <= 0:
            raise ValueError(f"--drift-rate must be > 0, got {self.drift_rate}")

    @property
    def active(self) -> bool:
        return self.payload is not None or self.drift_window > 0


class Pending:
    """A sampled request's record, waiting for the end of its request."""

    __slots__ = ("tap", "record")

    def __init__(self, tap: TrafficTap, record: Record) -> None:
        self.tap, self.record = tap, record

    def finish(
        self,
        *,
        seconds: float,
        status: str,
        protocol: str,
        headers: dict[bytes, bytes],
        key_id: str | None,
    ) -> None:
        """Complete the record (``headers``: HTTP headers or gRPC metadata; ``key_id``: the
        API key's id that :mod:`maas.serving.auth` noted) and queue it."""
        record = self.record
        record.request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128]
        record.key_id = key_id
        record.latency_s, record.status, record.protocol = seconds, status, protocol
        self.tap.submit(record)


class TrafficTap:
    """Owns the queues, the writer thread, the drift monitors and their metrics."""

    def __init__(self, settings: TrafficSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.payload = settings.payload
        self.records: list[Record] = []
        self.texts: deque[tuple[str, int, Path, str, int]] = deque()
        self.monitors: dict[tuple[str, int], DriftMonitor | None] = {}
        self.reports: dict[tuple[str, int], dict[str, Any]] = {}
        self._allowance, self._last = 0.0, time.monotonic()
        self._queued_chars = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: WriterProcess | None = None
        self._flusher: asyncio.Task | None = None
        registry = metrics.registry
        self.written = Counter(
            "maas_payload_log_records_total", "Records written to the payload log",
            registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "maas_payload_log_dropped_total",
            "Payload-log records dropped: the writer's queue was full, or writing failed",
            ["reason"],
            registry=registry,
        )
        self.drift_score = Gauge(
            "maas_drift_score",
            "Largest total variation distance between the window of live texts and the "
            "model's training statistics (0: same mix, 1: disjoint)",
            ["model", "version"],
            registry=registry,
        )
        self.drift_feature = Gauge(
            "maas_drift_feature",
            "Total variation distance per feature: length, unknown, scripts, languages, classes",
            ["model", "version", "feature"],
            registry=registry,
        )
        self.drift_detected = Gauge(
            "maas_drift_detected",
            "1 when the drift score is over maas_drift_threshold",
            ["model", "version"],
            registry=registry,
        )
        self.drift_texts = Gauge(
            "maas_drift_window_texts",
            "Texts in the drift window",
            ["model", "version"],
            registry=registry,
        )
        threshold = Gauge(
            "maas_drift_threshold", "The drift score over which a version drifts",
            registry=registry,
        )  # fmt: skip
        threshold.set(settings.drift_threshold)

    # The request path (the event loop): appends and counters only.

    def observe(self, notes: MutableMapping, loaded: Any, texts: list[str], result: Any) -> None:
        """An answered request: maybe its record, maybe some of its texts for drift."""
        payload = self.payload
        if payload is not None and (payload.sample >= 1.0 or random.random() < payload.sample):
            record = Record(
                time=time.time(),
                model=loaded.model,
                version=loaded.version,
                labels=loaded.labels,
                texts=texts,
                probabilities=result.probabilities,
                class_ids=result.class_ids,
            )
            notes[SCOPE_TRAFFIC] = Pending(self, record)
        if self.settings.drift_window > 0:
            self._queue_texts(loaded, texts, result.class_ids)

    def _queue_texts(self, loaded: Any, texts: list[str], class_ids: Any) -> None:
        now = time.monotonic()
        rate = self.settings.drift_rate
        self._allowance = min(rate, self._allowance + (now - self._last) * rate)
        self._last = now
        take = min(int(self._allowance), len(texts), DRIFT_QUEUE - len(self.texts))
        if take <= 0:
            return
        self._allowance -= take
        for i in range(take):
            self.texts.append((loaded.model, loaded.version, loaded.path, texts[i], class_ids[i]))

    def submit(self, record: Record) -> None:
        size = sum(map(len, record.texts))
        full = self.payload is None or len(self.records) >= self.payload.queue_size
        if full or self._queued_chars + size > QUEUE_CHARS:
            self.dropped.labels("queue_full").inc()
            return
        self._queued_chars += size
        self.records.append(record)

    def drift_report(self, model: str, version: int) -> dict[str, Any] | None:
        """The latest drift figures of a version (None: no drift for it, or none yet)."""
        return self.reports.get((model, version))

    # The writer process and the drift thread.

    async def start(self) -> None:
        """Start the writer process and the drift thread (``ValueError``: the payload folder
        is not writable)."""
        if self.payload is not None:
            check_writable(self.payload.directory)  # a Ray front's node may lack the folder
            self._writer = WriterProcess(self.payload, self._acknowledged)
            await self._writer.start()
            self._flusher = asyncio.create_task(self._flush_forever())
        if self.settings.drift_window > 0:
            self._thread = threading.Thread(target=self._run, name="maas-drift", daemon=True)
            self._thread.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (within ``timeout``), then stop."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.flush()
        if self._writer is not None:
            await self._writer.close(timeout)
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()

    def flush(self) -> None:
        """Send the queued records to the writer process (on the event loop)."""
        records, self.records = self.records, []
        self._queued_chars = 0
        if not records:
            return
        writer = self._writer
        if writer is None:
            self.dropped.labels("write_error").inc(len(records))
            return
        if writer.backlog() > BACKLOG_BYTES:  # the process is behind: drop, never wait
            self.dropped.labels("queue_full").inc(len(records))
            return
        probabilities = self.payload.probabilities
        try:
            writer.send([record.wire(probabilities=probabilities) for record in records])
        except OSError as error:  # the writer process is gone: count, log once, keep serving
            log.error("the payload-log writer process is gone (%s): records are dropped", error)
            self._writer = None
            self.dropped.labels("write_error").inc(len(records))

    def _acknowledged(self, written: int, failed: int) -> None:
        """The writer process's count of one batch."""
        self.written.inc(written)
        if failed:
            self.dropped.labels("write_error").inc(failed)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._measure_some():
                self._stop.wait(IDLE_S)

    def _measure_some(self) -> int:
        items = _take(self.texts, BATCH)
        touched = set()
        for model, version, path, text, class_id in items:
            monitor = self._monitor(model, version, path)
            if monitor is None:
                continue
            try:
                monitor.add(text, int(class_id))
            except Exception:  # a text the measures cannot read: skip it, keep the rest
                log.exception("drift: measuring a text for %s v%d failed", model, version)
                continue
            finally:
                yield_gil()
            touched.add((model, version))
        for key in touched:
            self._publish(key, self.monitors[key])
        return len(items)

    def _monitor(self, model: str, version: int, path: Path) -> DriftMonitor | None:
        key = (model, version)
        if key not in self.monitors:
            self.monitors[key] = _load_monitor(path, self.settings)
            if self.monitors[key] is None:
                log.info("drift: %s version %d has no %s; not watched", model, version,
                         "reference.json")  # fmt: skip
        return self.monitors[key]

    def _publish(self, key: tuple[str, int], monitor: DriftMonitor) -> None:
        report = monitor.report()
        self.reports[key] = report
        model, version = key[0], str(key[1])
        self.drift_texts.labels(model, version).set(report["texts"])
        if report["score"] is None:
            return
        self.drift_score.labels(model, version).set(report["score"])
        self.drift_detected.labels(model, version).set(1 if report["drifted"] else 0)
        for feature, figure in report["features"].items():
            self.drift_feature.labels(model, version, feature).set(figure)


def _load_monitor(path: Path, settings: TrafficSettings) -> DriftMonitor | None:
    """A monitor for the artifact at ``path``; None without readable statistics."""
    from maas.provenance import read_json
    from maas.serving.drift import DriftMonitor
    from maas.text_stats import REFERENCE_FILE
    from maas.tokenizer import TOKENIZER_FILE, Tokenizer

    try:
        reference = read_json(Path(path) / REFERENCE_FILE)
        tokenizer = Tokenizer.load(Path(path) / TOKENIZER_FILE)
    except (OSError, ValueError):
        return None
    try:
        return DriftMonitor(
            reference, tokenizer, window=settings.drift_window, threshold=settings.drift_threshold
        )
    except (KeyError, TypeError, ValueError) as error:
        log.warning("drift: %s/%s is malformed (%s); not watched", path, REFERENCE_FILE, error)
        return None


def _take(queue: deque, limit: int) -> list:
    taken = []
    while queue and len(taken) < limit:
        taken.append(queue.popleft())
    return taken


def make_tap(settings: TrafficSettings | None, metrics: Metrics) -> TrafficTap | None:
    """The tap for ``settings``, or None when neither payload log nor drift is on."""
    if settings is None or not settings.active:
        return None
    return TrafficTap(settings, metrics)


def drift_of(tap: TrafficTap | None, model: str, version: int) -> dict[str, Any]:
    """What a model's metadata says of its drift (for every protocol)."""
    if tap is None or tap.settings.drift_window <= 0:
        return {"watched": False, "reason": "drift is off (--drift-window 0)"}
    if tap.monitors.get((model, version), 1) is None:
        return {"watched": False, "reason": "the artifact has no reference.json"}
    report = tap.drift_report(model, version)
    if report is None:
        return {"watched": True, "texts": 0, "score": None, "drifted": None}
    return {"watched": True, **report}

"""Prometheus metrics and the structured access log.

:class:`Metrics` owns its own registry (two servers in one process, as in the tests, do not
share counters). :class:`ObservabilityMiddleware` wraps the whole application: per request
it counts, times and logs one JSON line on the ``maas.access`` logger (or one in
``Metrics.access_log_every``, and every error: the Ray engine's fronts sample it). The model
and version that served a request are not known from its URL alone (a label, or the latest
version), so handlers note them in the ASGI scope with :func:`note_model` and the middleware
reads them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("maas.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SCOPE_MODEL, SCOPE_VERSION = "maas.model", "maas.version"
SCOPE_KEY_ID = "maas.key_id"  # the API key's id (never the key), noted by maas.serving.auth
SCOPE_TRAFFIC = "maas.traffic"  # a sampled request's pending payload-log record
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "maas_requests_total",
            "Requests by protocol, model, version and status code (HTTP, or gRPC code name)",
            ["protocol", "model", "version", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "maas_request_duration_seconds",
            "Time from request to response, by protocol, model and version",
            ["protocol", "model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "maas_request_errors_total",
            "Requests answered with an error (HTTP 4xx/5xx, gRPC not OK), by protocol and code",
            ["protocol", "code"],
            registry=self.registry,
        )
        self.shed = Counter(
            "maas_requests_shed_total",
            "Requests refused at once because the model's queue was full (503 / "
            "RESOURCE_EXHAUSTED), by model",
            ["model"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "maas_batch_size",
            "Texts per model invocation (a batch of coalesced requests)",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "maas_inference_duration_seconds",
            "Time the model took for one batch",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.versions = Gauge(
            "maas_model_versions_available",
            "Versions of each model that are loaded and serving",
            ["model"],
            registry=self.registry,
        )
        self.load_failures = Gauge(
            "maas_model_versions_failed",
            "Versions of each model that failed to load (state END with an error)",
            ["model"],
            registry=self.registry,
        )
        self.retries = Counter(
            "maas_backend_retries_total",
            "Model calls retried because a replica or its node was lost (the Ray engine)",
            ["model", "version", "error"],
            registry=self.registry,
        )
        self.replicas = Gauge(
            "maas_replicas",
            "Running replicas of each served version (the Ray engine)",
            ["model", "version"],
            registry=self.registry,
        )
        self._gauge_models: set[str] = set()
        self.access_log_every = 1  # log one access line in this many (errors: all)
        self._unlogged = 0

    def sample_access(self, failed: bool) -> bool:
        """Whether this request's access line is logged: every error, the first and then
        one in ``access_log_every`` of the rest."""
        if failed or self.access_log_every <= 1:
            return True
        self._unlogged = (self._unlogged + 1) % self.access_log_every
        return self._unlogged == 1

    def set_model_gauges(self, counts: dict[str, tuple[int, int]]) -> None:
        """Per model (available versions, failed versions); models gone lose their series."""
        for name, (available, failed) in counts.items():
            self.versions.labels(name).set(available)
            self.load_failures.labels(name).set(failed)
        for name in self._gauge_models - set(counts):
            self.versions.remove(name)
            self.load_failures.remove(name)
        self._gauge_models = set(counts)

    def observe_batch(self, model: str, version: int, size: int, seconds: float) -> None:
        self.batch_size.labels(model, str(version)).observe(size)
        self.inference.labels(model, str(version)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def note_model(scope: Scope, model: str, version: int) -> None:
    """Record which model version served the request (for metrics and the access log)."""
    scope[SCOPE_MODEL] = model
    scope[SCOPE_VERSION] = str(version)


def protocol_of(path: str) -> str:
    """A small, fixed set of values for the ``protocol`` label (never the raw path)."""
    if path.startswith("/v1/"):
        return "tfserving_v1"
    if path == "/v2" or path.startswith("/v2/"):
        return "oip_v2"
    if path == "/predict":
        return "seed"
    if path == "/metrics":
        return "metrics"
    return "other"


class ObservabilityMiddleware:
    """ASGI middleware: request metrics and one structured access-log line per request."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the application dies before it answers
        sent = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, status, sent, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, sent: int, seconds: float) -> None:
        pending = scope.get(SCOPE_TRAFFIC)
        if pending is not None:  # the payload log's record of this request
            pending.finish(
                seconds=seconds,
                status=str(status),
                protocol=protocol_of(scope["path"]),
                headers=dict(scope["headers"]),
                key_id=scope.get(SCOPE_KEY_ID),
            )

        def access() -> dict:
            headers = dict(scope["headers"])
            return {
                "client": (scope.get("client") or ("", 0))[0],
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "bytes_out": sent,
                "request_id": headers.get(b"x-request-id", b"").decode("latin-1")[:128],
                "key": scope.get(SCOPE_KEY_ID),
            }

        record_request(
            self.metrics,
            protocol=protocol_of(scope["path"]),
            model=scope.get(SCOPE_MODEL, ""),
            version=scope.get(SCOPE_VERSION, ""),
            code=str(status),
            failed=status >= 400,
            seconds=seconds,
            access=access,
        )


def record_request(
    metrics: Metrics,
    *,
    protocol: str,
    model: str,
    version: str,
    code: str,
    failed: bool,
    seconds: float,
    access: Callable[[], dict],
) -> None:
    """Count and time one request of any protocol, and log its access line.

    Args:
        code: the HTTP status, or the gRPC status code's name.
        access: the protocol's own fields of the access-log line (client, method, path, ...),
            built only when the access log is on.
    """
    metrics.requests.labels(protocol, model, version, code).inc()
    metrics.latency.labels(protocol, model, version).observe(seconds)
    if failed:
        metrics.errors.labels(protocol, code).inc()
    if access_log.isEnabledFor(logging.INFO) and metrics.sample_access(failed):
        line = {
            "event": "access",
            **access(),
            "duration_ms": round(seconds * 1000, 3),
            "protocol": protocol,
            "model": model,
            "version": version,
        }
        if metrics.access_log_every > 1:  # a sample: one line stands for this many
            line["sampled_one_in"] = metrics.access_log_every
        access_log.info(json.dumps(line))

"""The FastAPI application: routers, middleware, error handlers and the repository's lifespan.

:func:`create_app` builds the app from a :class:`ServerConfig`. Its lifespan loads every
model (before the first request, or in the background while liveness already answers and
readiness says 503), then polls the repository in the background
(loading in a worker thread, so requests keep flowing) and, at shutdown, lets the batchers
finish the requests they hold. Middleware, outermost first: metrics and access log, API
keys, JSON content type, body size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from maas import __version__
from maas.serving import protocol_repository, protocol_v1, protocol_v2, routing, seed_api
from maas.serving.auth import ApiKeyMiddleware, KeyGrant, KeyGuard, following_key_file
from maas.serving.batching import DirectPredictor, DynamicBatcher
from maas.serving.errors import ServingError
from maas.serving.layout import check_max_queue
from maas.serving.limits import DEFAULT_LIMITS, BodySizeLimitMiddleware, Limits, QueueLimit
from maas.serving.metrics import CONTENT_TYPE, Metrics, ObservabilityMiddleware
from maas.serving.repository import END, LoadedVersion, ModelRepository, ServedModels
from maas.serving.routing import CallerMiddleware, Rollouts
from maas.serving.schemas import FastJSONResponse
from maas.serving.state import ServerState
from maas.serving.tap import TrafficSettings, TrafficTap, make_tap

if TYPE_CHECKING:
    from maas.serving.grpc import GrpcSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server is told on its command line (the defaults of ``maas serve``)."""

    model_repository: Path
    poll_interval_s: float = 2.0  # 0: load once, never poll
    default_policy: str = "latest"  # for models without a config.yaml: latest | all
    default_model: str | None = None  # the seed API's model; None: the only model
    batching: bool = True
    max_batch_size: int = 32
    batch_timeout_s: float = 0.005  # the longest a request waits for its batch to fill
    # True: answer /v2/health/live at once and load the models meanwhile (ready once loaded);
    # False: load every model before the server accepts its first request.
    load_in_background: bool = False
    api_key_hashes: tuple[bytes, ...] = ()  # SHA-256 digests of keys for everything
    api_keys: tuple[KeyGrant, ...] = ()  # keys with their scopes (the key file's lines)
    api_key_file: Path | None = None  # re-read when it changes: its keys replace api_keys
    limits: Limits = DEFAULT_LIMITS
    grpc: GrpcSettings | None = None  # also serve gRPC, over the same models and batchers
    # Requests waiting for one model at most (a model's `max_queue:` overrides); more are
    # refused at once with 503 + Retry-After. None: unbounded.
    max_queue: int | None = None
    # The payload log (--payload-log) and drift on live inputs: see maas.serving.tap.
    traffic: TrafficSettings = TrafficSettings()

    def __post_init__(self) -> None:
        if self.poll_interval_s < 0:
            raise ValueError(f"poll_interval_s must be >= 0, got {self.poll_interval_s}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_timeout_s < 0:
            raise ValueError(f"batch_timeout_s must be >= 0, got {self.batch_timeout_s}")
        if self.max_queue is not None:
            check_max_queue(self.max_queue, where="--max-queue")


def create_app(
    config: ServerConfig,
    *,
    data_plane: ServedModels | None = None,
    lifespan: Callable[[ServerState], contextlib.AbstractAsyncContextManager] | None = None,
) -> FastAPI:
    """The server application for ``config`` (models load when its lifespan starts).

    By default the models load in this process. Another engine (:mod:`maas.serving.ray`)
    passes the ``data_plane`` it fills and the ``lifespan`` that keeps it filled.
    """
    if data_plane is not None:
        if lifespan is None:
            raise ValueError("a data_plane needs the lifespan that fills it")
        queue = QueueLimit(config.max_queue)
        state = ServerState(data_plane, config.limits, Metrics(), config.default_model, queue)

        def app_lifespan(app: FastAPI) -> contextlib.AbstractAsyncContextManager:
            return lifespan(state)

    else:
        if not Path(config.model_repository).is_dir():
            raise FileNotFoundError(f"model repository not found: {config.model_repository}")
        state = build_state(config)
        app_lifespan = make_lifespan(config, state)
    # One guard for REST and gRPC: a key's rate is shared by both protocols.
    guard = KeyGuard(
        config.api_keys,
        state.metrics,
        key_file=config.api_key_file,
        extra_hashes=config.api_key_hashes,
    )
    engine_lifespan = app_lifespan

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with following_key_file(guard), engine_lifespan(app):
            yield

    state.tap = make_tap(config.traffic, state.metrics)
    if state.tap is not None:
        app_lifespan = with_tap(app_lifespan, state.tap)
    app = FastAPI(
        title="maas model server",
        version=__version__,
        description=(
            "Text classification over TensorFlow Serving's REST API (v1), the Open Inference "
            "Protocol (v2) and the seed's `POST /predict`."
        ),
        lifespan=app_lifespan,
        strict_content_type=False,
    )
    app.state.maas = state
    app.state.key_guard = guard
    add_routes(app)
    add_middleware(app, config, state.metrics, app.state.key_guard)
    return app


def with_tap(lifespan: Callable, tap: TrafficTap) -> Callable:
    """``lifespan`` with the traffic tap's writer process and drift thread running inside it
    (what they hold is written at shutdown, after the requests in flight)."""

    @contextlib.asynccontextmanager
    async def tapped(app: FastAPI) -> AsyncIterator[None]:
        await tap.start()
        try:
            async with lifespan(app):
                yield
        finally:
            await tap.stop()

    return tapped


def build_state(config: ServerConfig) -> ServerState:
    """The repository (not loaded yet), its predictors (batched or direct) and metrics."""
    metrics = Metrics()

    def make_predictor(loaded: LoadedVersion) -> DirectPredictor | DynamicBatcher:
        def observe(size: int, seconds: float) -> None:
            metrics.observe_batch(loaded.model, loaded.version, size, seconds)

        if not config.batching:
            return DirectPredictor(loaded.runtime.predict, observe=observe)
        return DynamicBatcher(
            loaded.runtime.predict,
            max_batch_size=config.max_batch_size,
            max_wait_s=config.batch_timeout_s,
            observe=observe,
        )

    warmup = (1, config.max_batch_size) if config.batching else (1,)
    repository = ModelRepository(
        config.model_repository,
        default_policy=config.default_policy,
        make_predictor=make_predictor,
        warmup_batch_sizes=tuple(sorted(set(warmup))),
    )
    repository.rollouts = Rollouts(metrics.registry, config.model_repository)
    queue = QueueLimit(config.max_queue)
    state = ServerState(repository, config.limits, metrics, config.default_model, queue)
    lock = asyncio.Lock()

    async def reload() -> None:  # the poller and the load endpoint: one poll at a time
        async with lock:
            await _poll_once(state)

    state.reload = reload
    return state


def make_lifespan(config: ServerConfig, state: ServerState):
    """Load the models (before the first request, or in the background), poll the
    repository, serve gRPC when asked, and close every predictor at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not config.load_in_background:
            await state.reload()
        poller = None
        if config.poll_interval_s > 0 or config.load_in_background:
            poller = asyncio.create_task(
                _poll_forever(state, config.poll_interval_s, first_now=config.load_in_background)
            )
        grpc_server = None
        try:
            if config.grpc is not None:
                grpc_server = await _start_grpc(state, config.grpc, app.state.key_guard)
            yield
        finally:
            if grpc_server is not None:  # drain its calls while the batchers still run
                await grpc_server.stop(config.grpc.grace_s)
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            repository = state.repository
            for name in repository.model_names():
                for loaded in [*repository.served(name).values(), *repository.warm(name).values()]:
                    await loaded.predictor.close()

    return lifespan


def add_routes(app: FastAPI) -> None:
    """The three protocols, the metrics endpoint and the error handlers."""
    app.include_router(protocol_v1.router)
    app.include_router(protocol_v2.router)
    app.include_router(seed_api.router)
    app.include_router(protocol_repository.router)
    app.include_router(routing.router)
    app.add_api_route("/metrics", _metrics_endpoint, methods=["GET"], include_in_schema=False)
    _add_error_handlers(app)


def add_middleware(app: FastAPI, config: ServerConfig, metrics: Metrics, guard: KeyGuard) -> None:
    """Body limit, JSON bodies, API keys, observability (in that order, innermost first)."""
    # add_middleware wraps the app: the last one added is the outermost.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=config.limits.max_body_bytes)
    app.add_middleware(JsonContentTypeMiddleware)
    app.add_middleware(ApiKeyMiddleware, guard=guard)
    app.add_middleware(CallerMiddleware)  # the caller, for sticky rollouts
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)


async def _start_grpc(state: ServerState, settings: GrpcSettings, guard: KeyGuard):
    from maas.serving.grpc.server import start  # gRPC and its stubs load only when asked

    return await start(state, settings, guard)


async def _metrics_endpoint(request: Request) -> Response:
    state: ServerState = request.app.state.maas
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


async def _poll_once(state: ServerState) -> None:
    before = _loaded_versions(state.repository)
    dropped = await asyncio.to_thread(state.repository.poll)
    for loaded in dropped:
        await loaded.predictor.close()  # finishes the requests it holds
    update_model_gauges(state)
    if state.repository.rollouts is not None:
        state.repository.rollouts.tick(state.repository)
    if _loaded_versions(state.repository) != before:
        freeze_heap()


def _loaded_versions(repository: ServedModels) -> set[tuple[str, int]]:
    return {
        (name, version)
        for name in repository.model_names()
        for version in [*repository.served(name), *repository.warm(name)]
    }


def freeze_heap() -> None:
    """Collect once, then keep every object alive now out of later collections.

    A full collection walks every tracked object: with a SavedModel loaded (its graphs are
    hundreds of thousands of Python objects) one took 0.4 to 0.75 s here, under load, every
    few seconds, and stalled every request in flight: the p99 at 64 clients. Frozen objects
    are skipped. Done after each load or unload (unfreezing first, so that a dropped
    version's cycles are still freed), which costs one such collection then.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _poll_forever(state: ServerState, interval: float, *, first_now: bool) -> None:
    """Poll every ``interval`` seconds (0: only the first poll, when ``first_now``)."""
    if not first_now:
        await asyncio.sleep(interval)
    while True:
        try:
            await state.reload()
        except Exception:  # a vanished folder, a full disk: log, keep serving, retry
            log.exception("polling the model repository failed")
        if interval <= 0:
            return
        await asyncio.sleep(interval)


def update_model_gauges(state: ServerState) -> None:
    repository = state.repository
    counts = {}
    for name in repository.model_names():
        failed = sum(s.state == END and bool(s.error) for s in repository.status(name))
        counts[name] = (len(repository.served(name)), failed)
    state.metrics.set_model_gauges(counts)


class JsonContentTypeMiddleware:
    """Reads every request body as JSON, whatever its declared type.

    ``curl -d`` declares ``application/x-www-form-urlencoded``; TensorFlow Serving's
    documented examples rely on the body being read as JSON all the same. A body in the
    OIP binary tensor extension (``Inference-Header-Content-Length``) is refused here with
    a clear message, before it fails to parse as JSON.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            if any(k == b"inference-header-content-length" for k, _ in headers):
                message = "binary tensor data is not supported: send JSON (binary_data=False)"
                await FastJSONResponse({"error": message}, status_code=400)(scope, receive, send)
                return
            # In place: the outer middleware reads what handlers note in this same scope.
            scope["headers"] = [*headers, (b"content-type", b"application/json")]
        await self.app(scope, receive, send)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, error: ServingError) -> Response:
        return FastJSONResponse(
            {"error": error.message}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return FastJSONResponse({"error": describe_validation(error)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        message = str(error.detail)
        if error.status_code == 404:
            message = f"not found: {request.method} {request.url.path[:200]}"
        elif error.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path[:200]}"
        elif isinstance(error.__cause__, UnicodeDecodeError):
            message = "request body is not valid UTF-8"
        return FastJSONResponse(
            {"error": message}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return FastJSONResponse({"error": "internal server error"}, status_code=500)


def describe_validation(error: RequestValidationError) -> str:
    """One line for a request that does not fit the schema (the first problem found)."""
    problems = error.errors()
    if not problems:
        return "invalid request"
    first = problems[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"request body is not valid JSON: {detail}".rstrip(": ")
    where = ".".join(str(part) for part in first.get("loc", ()) if _is_field(part)) or "body"
    if kind == "missing" and where == "body":
        return "request body is missing: send a JSON object"
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"invalid request: {where}: {first.get('msg', 'invalid')}{more}"


def _is_field(part: object) -> bool:
    """Whether a part of an error location names a field or an index, not a union member."""
    if isinstance(part, int):
        return True
    text = str(part)
    return text not in ("body", "str", "int", "float", "bool", "list", "dict") and (
        text.replace("_", "").isalnum() and text.islower()
    )

"""The Ray Serve ingress: the same FastAPI application as ``maas serve``, over Ray replicas.

:class:`Ingress` builds the application with :func:`maas.serving.app.create_app` (every
protocol, API keys, limits, metrics, access log) around a :class:`RayDataPlane`: the
lookups of :class:`maas.serving.repository.ServedModels`, filled from the snapshots that the
controller (:mod:`maas.serving.ray.engine`) publishes on the :class:`RoutingTable` actor.
A served version's predictor coalesces concurrent requests into batches *before* the
handle hop (one call to a replica per batch, not one per request: each call through a Ray
handle costs milliseconds of CPU), calls its deployment through a Ray Serve handle and
retries a call that a lost replica or node failed (counted in ``maas_backend_retries_total``).
The access log of an ingress replica is sampled (one line in ``ACCESS_LOG_EVERY``, every
error): each line goes through Ray's log monitor to the driver, which cost more CPU than
the request itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maas.serving.app import ServerConfig, create_app, update_model_gauges
from maas.serving.batching import AwaitingBatcher
from maas.serving.errors import VersionUnloaded
from maas.serving.layout import ModelConfig
from maas.serving.metrics import Metrics
from maas.serving.repository import LoadedVersion, ServedModels, VersionStatus, _ModelState
from maas.serving.rollout import WindowStats
from maas.serving.routing import Rollouts
from maas.serving.state import ServerState

log = logging.getLogger(__name__)

NAMESPACE = "maas"
ROUTING_ACTOR = "maas-routing"
REFRESH_S = 0.2  # how often an ingress replica looks for a new routing snapshot
RETRIES = 3
BATCHES_IN_FLIGHT = 16  # per version and ingress replica: enough to keep its replicas busy
UNROUTED_CLOSE_S = 5.0  # a version left the routing: its batcher closes after this long
# One access-log line in this many (errors always); MAAS_ACCESS_LOG_EVERY=1 logs every one.
ACCESS_LOG_EVERY = int(os.environ.get("MAAS_ACCESS_LOG_EVERY", "100"))
# Ray's marker resource of the head node (Ray Train pins its state actor the same way). The
# head holds the GCS and the Serve controller, so the routing table placed there is lost
# only with the whole cluster.
ON_HEAD = {"node:__internal_head__": 0.001}


@dataclass(frozen=True)
class ServedVersion:
    """A served version as the ingress needs it: where it runs and what it answers."""

    app: str  # the Ray Serve application holding its deployment
    path: str
    labels: tuple[str, ...]
    kind: str
    provenance: dict[str, Any]
    loaded_at: float


@dataclass(frozen=True)
class ModelSnapshot:
    config: ModelConfig
    config_error: str
    status: tuple[VersionStatus, ...]
    served: dict[int, ServedVersion] = field(default_factory=dict)
    replicas: dict[int, int] = field(default_factory=dict)  # running, per served version
    rollout_winner: int | None = None  # the controller's decision on config.rollout


class RoutingTable:
    """The latest routing snapshot (a Ray actor): the controller writes, ingresses read."""

    def __init__(self) -> None:
        self.generation = 0
        self.snapshot: tuple[dict[str, ModelSnapshot], int] | None = None
        self.reports: dict[str, dict[str, WindowStats]] = {}  # rollout -> ingress -> stats

    def report(self, reporter: str, stats: dict[str, WindowStats]) -> None:
        """An ingress replica's statistics of the rollouts in progress (all it has seen)."""
        for rollout_id, window in stats.items():
            self.reports.setdefault(rollout_id, {})[reporter] = window

    def rollout_stats(self, rollout_ids: list[str]) -> dict[str, WindowStats]:
        """Every ingress's statistics of these rollouts, summed; others are forgotten."""
        self.reports = {k: v for k, v in self.reports.items() if k in rollout_ids}
        return {k: WindowStats.merged(list(v.values())) for k, v in self.reports.items()}

    def publish(self, snapshot: tuple[dict[str, ModelSnapshot], int]) -> int:
        self.generation += 1
        self.snapshot = snapshot
        return self.generation

    def read(self, known: int) -> tuple[int, Any]:
        """``(generation, snapshot)``, or ``(known, None)`` when nothing changed."""
        if known == self.generation:
            return known, None
        return self.generation, self.snapshot


class RemoteRuntime:
    """What the protocols read of a runtime whose model runs in Ray replicas."""

    def __init__(self, labels: Sequence[str], kind: str) -> None:
        self.labels = tuple(labels)
        self.kind = kind


class HandlePredictor:
    """Calls a version's deployment, a batch of requests a call when ``config`` batches;
    retries calls that a lost replica or node failed."""

    def __init__(
        self, app: str, model: str, version: int, metrics: Metrics, config: ServerConfig
    ) -> None:
        from ray import serve

        # One handle object per app in a process: initialised once (a version that comes
        # back, a rollback, finds it so), to prefer a replica on this node: no hop to
        # another machine when one is here.
        self.handle = serve.get_app_handle(app)
        if not self.handle.is_initialized:
            self.handle._init(_prefer_local_routing=True)
        self.app, self.model, self.version, self.metrics = app, model, version, metrics
        self.batcher = None
        if config.batching:

            def observe(size: int, seconds: float) -> None:
                metrics.observe_batch(model, version, size, seconds)

            self.batcher = AwaitingBatcher(
                self._call,
                max_batch_size=config.max_batch_size,
                max_wait_s=config.batch_timeout_s,
                max_in_flight=BATCHES_IN_FLIGHT,
                observe=observe,
            )

    async def predict(self, texts: Sequence[str]) -> np.ndarray:
        if self.batcher is not None:
            return await self.batcher.predict(texts)
        return await self._call(list(texts))

    async def _call(self, texts: list[str]) -> np.ndarray:
        for attempt in range(RETRIES + 1):
            try:
                return await self.handle.predict.remote(list(texts))
            except Exception as error:
                if not _retryable(error) or attempt == RETRIES:
                    if _retryable(error):
                        raise VersionUnloaded(f"no replica answered: {error}") from error
                    raise
                name = type(error).__name__
                self.metrics.retries.labels(self.model, str(self.version), name).inc()
                log.warning(
                    "model %s version %d: replica lost (%s), retrying (%d/%d)",
                    self.model, self.version, name, attempt + 1, RETRIES,
                )  # fmt: skip
                await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()


def _retryable(error: BaseException) -> bool:
    """A replica or node died, or is briefly unavailable: another replica may answer."""
    from ray import exceptions
    from ray.serve import exceptions as serve_exceptions

    lost = (
        exceptions.RayActorError,
        exceptions.WorkerCrashedError,
        exceptions.NodeDiedError,
        exceptions.ObjectLostError,
        serve_exceptions.ReplicaUnavailableError,
        serve_exceptions.DeploymentUnavailableError,
    )
    return isinstance(error, lost)


class RayDataPlane(ServedModels):
    """The lookups of :class:`ServedModels`, filled from the controller's snapshots."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__()
        self.server_config = config  # (``config`` is the lookup of a model's config)
        self.metrics = Metrics()  # replaced by the server's own when its lifespan starts
        self._predictors: dict[str, HandlePredictor] = {}
        # Routes and counts a rollout's requests; the controller sums every ingress's counts
        # and decides (its decision comes back in the snapshot).
        self.rollouts = Rollouts(self.metrics.registry, None, decides=False)
        self.reporter = uuid.uuid4().hex

    def apply(self, snapshot: tuple[dict[str, ModelSnapshot], int]) -> None:
        models, polls = snapshot
        states = {}
        for name, model in models.items():
            served = {v: self._loaded(name, v, info) for v, info in model.served.items()}
            status = {s.version: s for s in model.status}
            states[name] = _ModelState(model.config, model.config_error, served, status)
        apps = {info.app for model in models.values() for info in model.served.values()}
        for app, predictor in self._predictors.items():
            if app not in apps:  # requests that resolved it just before still get answers
                _close_later(predictor)
        self._predictors = {app: p for app, p in self._predictors.items() if app in apps}
        self.install(states, polls)
        self._follow_rollouts(models)
        self.metrics.replicas.clear()
        for name, model in models.items():
            for version, count in model.replicas.items():
                self.metrics.replicas.labels(name, str(version)).set(count)

    def _follow_rollouts(self, models: dict[str, ModelSnapshot]) -> None:
        in_progress = set()
        for name, model in models.items():
            spec = model.config.rollout
            if spec is not None:
                in_progress.add(name)
                if model.rollout_winner is not None:
                    self.rollouts.follow(name, spec, model.rollout_winner)
        self.rollouts.forget_ended(in_progress)

    def _loaded(self, model: str, version: int, info: ServedVersion) -> LoadedVersion:
        predictor = self._predictors.get(info.app)
        if predictor is None:
            predictor = HandlePredictor(info.app, model, version, self.metrics, self.server_config)
            self._predictors[info.app] = predictor
        return LoadedVersion(
            model=model,
            version=version,
            path=Path(info.path),
            runtime=RemoteRuntime(info.labels, info.kind),  # type: ignore[arg-type]
            provenance=info.provenance,
            loaded_at=info.loaded_at,
            predictor=predictor,
        )


def _close_later(predictor: HandlePredictor) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not on the event loop (a test): nothing runs its batcher
        return
    loop.call_later(UNROUTED_CLOSE_S, lambda: loop.create_task(predictor.close()))


def routing_table() -> Any:
    """The routing table actor, created by whichever of controller and ingress comes first."""
    import ray

    return (
        ray.remote(RoutingTable)
        .options(
            name=ROUTING_ACTOR,
            namespace=NAMESPACE,
            num_cpus=0,
            resources=ON_HEAD,
            get_if_exists=True,
        )
        .remote()
    )


def routing_table_lost(error: BaseException) -> bool:
    """The routing table actor is gone for good (``routing_table()`` makes a new, empty one)."""
    from ray import exceptions

    return isinstance(error, exceptions.ActorDiedError)


@contextlib.asynccontextmanager
async def follow_routing(state: ServerState) -> AsyncIterator[None]:
    """The ingress lifespan: keep the data plane in line with the routing table."""

    plane: RayDataPlane = state.repository  # type: ignore[assignment]
    plane.metrics = state.metrics
    plane.rollouts = Rollouts(state.metrics.registry, None, decides=False)
    state.metrics.access_log_every = ACCESS_LOG_EVERY
    table = routing_table()
    task = asyncio.create_task(_refresh_forever(table, plane, state))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _refresh_forever(table: Any, plane: RayDataPlane, state: ServerState) -> None:
    generation = 0
    while True:
        try:
            generation, snapshot = await table.read.remote(generation)
            if snapshot is not None:
                plane.apply(snapshot)
                update_model_gauges(state)
            reports = plane.rollouts.reports()
            if reports:  # a few hundred numbers a rollout, five times a second
                await table.report.remote(plane.reporter, reports)
        except Exception as error:  # the controller is gone or restarting: keep the last snapshot
            log.exception("reading the routing table failed; serving the last snapshot")
            if routing_table_lost(error):  # the controller publishes to the new one
                table, generation = routing_table(), 0
            await asyncio.sleep(2.0)
        await asyncio.sleep(REFRESH_S)


def log_in_replica() -> None:
    """A replica's root logger has no handler: give one to maas's logs (the access log too)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def build_app(config: ServerConfig):  # -> FastAPI
    """The application an ingress replica serves."""
    return create_app(config, data_plane=RayDataPlane(config), lifespan=follow_routing)


class Ingress:
    """The ingress deployment's class (:func:`ray.serve.ingress` defers the app to here)."""

    def __init__(self, config: ServerConfig, controller: Any = None) -> None:
        self.config = config
        self.controller = controller  # the service's controller deployment, if any
        log_in_replica()

    def __serve_build_asgi_app__(self):  # noqa: N807  (Ray Serve's hook name)
        return build_app(self.config)

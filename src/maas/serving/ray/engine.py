"""``maas serve --engine ray``: the controller that keeps Ray Serve in line with the repository.

The process that runs :func:`serve` connects to Ray (a local one it starts, or the cluster at
``--address`` / ``RAY_ADDRESS``), starts Ray Serve (without its HTTP proxies) and a front
door on every node (:mod:`maas.serving.ray.front`: the ingress application of
:mod:`maas.serving.ray.ingress` on ``--host``/``--port``). It then polls the model repository
with the same :class:`maas.serving.repository.ModelRepository` as the single-process server,
whose loader here *deploys* each version as a Ray Serve application (one
:class:`maas.serving.ray.deployments.ModelVersion` deployment, autoscaled by the model's
``scaling``), waits until it answers, and warms it through Ray. After each poll it publishes
what is served on the routing table that the ingress replicas follow. A replaced version's
application is deleted only ``drain_s`` after the ingresses stopped routing to it, so hot
reloads, promotions and rollbacks are rolling updates; ``keep_previous`` keeps it deployed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from prometheus_client import CollectorRegistry

from maas.serving.app import ServerConfig
from maas.serving.errors import ServingError
from maas.serving.layout import ModelConfig, Scaling
from maas.serving.ray.deployments import Ensemble, ModelVersion
from maas.serving.ray.front import FrontError, Fronts, check_port_free
from maas.serving.ray.ingress import (
    NAMESPACE,
    Ingress,
    ModelSnapshot,
    ServedVersion,
    routing_table,
    routing_table_lost,
)
from maas.serving.repository import AVAILABLE, ModelRepository, VersionStatus
from maas.serving.routing import Rollouts

log = logging.getLogger(__name__)

# Ray Serve's own access log (a line per request in the proxy and in every replica) off:
# maas's access log (sampled in the ingress) and metrics say the same for less CPU.
QUIET_LOGS = {"enable_access_log": False}
LOOK_BACK_S = 5.0  # the autoscaler averages ongoing requests over this window
METRICS_INTERVAL_S = 1.0  # how often replicas report them (Ray's default, 10 s, is slow)


class RayEngineError(RuntimeError):
    """Ray cannot serve as asked: no cluster at the address, missing resources, a failed app."""


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray (``maas serve --engine ray`` options)."""

    address: str | None = None  # None: RAY_ADDRESS, else start a local Ray
    num_cpus: int | None = None  # a local Ray's CPUs (None: all)
    object_store_bytes: int | None = 256 * 1024**2  # a local Ray's object store
    replica_cpus: float = 1.0  # CPUs each model replica reserves
    scaling: Scaling = field(default_factory=Scaling)  # models without `scaling:` in config
    ingress_replicas: int | None = None  # None: one per node (at start), beside its proxy
    max_replicas_per_node: int | None = None  # 1: every replica of a version on its own node
    deploy_timeout_s: float = 180.0  # a version not answering by then failed to load
    drain_s: float = 3.0  # unrouted -> deleted: in-flight requests finish meanwhile
    ensembles: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> members

    def __post_init__(self) -> None:
        if self.ingress_replicas is not None and self.ingress_replicas < 1:
            raise ValueError(f"--ingress-replicas must be >= 1, got {self.ingress_replicas}")


def app_name(model: str, version: int) -> str:
    return f"maas.{model}.{version}"


def autoscaling_config(scaling: Scaling) -> dict[str, Any]:
    return {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "initial_replicas": max(1, scaling.min_replicas),
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
        "look_back_period_s": LOOK_BACK_S,
        "metrics_interval_s": METRICS_INTERVAL_S,
    }


def connect(options: RayOptions) -> bool:
    """Connect to the cluster, or start a local Ray; True when this process started it."""
    import ray

    address = options.address or os.environ.get("RAY_ADDRESS") or None
    if address and address not in ("auto", "local"):
        check_reachable(address)
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
        return False
    from maas.serving.ray.cluster import SERVE_ENV, SITE, SLOW_MACHINE_ENV

    # Read by the local Ray's processes, which this process starts: they inherit them.
    for name, value in {**SLOW_MACHINE_ENV, **SERVE_ENV}.items():
        os.environ.setdefault(name, value)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(SITE), os.environ.get("PYTHONPATH")])
    )
    try:
        ray.init(
            num_cpus=options.num_cpus,
            object_store_memory=options.object_store_bytes,
            include_dashboard=False,
            namespace=NAMESPACE,
        )
    except Exception as error:  # the raylet gives its agents ~15 s: a busy machine misses it
        raise RayEngineError(
            f"could not start a local Ray ({error}); on a busy machine start nodes with "
            "maas.serving.ray.cluster.LocalCluster and pass --address"
        ) from error
    return True


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with the address in the message, when nothing listens there."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise RayEngineError(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            pass
    except OSError as error:
        raise RayEngineError(f"no Ray cluster answers at {address}: {error}") from error


def check_resources(options: RayOptions) -> None:
    """A clear error when no node could ever hold a model replica."""
    import ray

    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]), default=0)
    if options.replica_cpus > largest:
        raise RayEngineError(
            f"each model replica needs {options.replica_cpus:g} CPUs but the largest node of "
            f"the cluster has {largest:g}: lower --replica-cpus or add nodes"
        )


def ingress_deployment(options: RayOptions):
    """The ingress as a Serve deployment, behind Ray Serve's proxies (a RayService's front
    door, :mod:`maas.serving.ray.service`): no CPU reserved (it only awaits the models), by
    default one replica on every node, beside that node's proxy (``proxy_location
    EveryNode``), which routes to it first."""
    import ray
    from ray import serve

    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    replicas = options.ingress_replicas or max(1, nodes)
    per_node = {"max_replicas_per_node": 1} if replicas <= nodes else {}
    return serve.deployment(
        serve.ingress()(Ingress),
        name="Ingress",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1024,
        logging_config=QUIET_LOGS,
        **per_node,
    )


class ControllerRuntime:
    """A version deployed on Ray, as the controller's repository sees it (for warm-up)."""

    def __init__(self, app: str, labels: list[str], kind: str) -> None:
        self.app = app
        self.labels = tuple(labels)
        self.kind = kind
        self._handle = sync_handle(app)

    def predict(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._handle.predict.remote(list(texts)).result(), dtype=np.float32)


class RayController:
    """Deploys the ingress and the repository's versions; publishes the routing table."""

    def __init__(self, config: ServerConfig, options: RayOptions) -> None:
        self.config = config
        self.options = options
        self.repository = ModelRepository(
            config.model_repository,
            default_policy=config.default_policy,
            warmup_batch_sizes=(1,),  # a replica warms its own batch size when it starts
            load_version=self._load_version,
        )
        self.applied: dict[str, Scaling] = {}  # app -> the scaling it was deployed with
        self.pending_deletes: list[tuple[float, str]] = []
        self.table: Any = None
        self._published: Any = None
        self._generation = -1  # the routing table's generation after our last publish
        self._ensembles: dict[str, ModelSnapshot] = {}
        # Redeploying an ensemble takes seconds under load: done beside the polling loop, in
        # order, so that a version switch meanwhile still reaches the ingresses at once.
        self._redeploys = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ensemble")
        self.fronts: Fronts | None = None  # the front doors, when this controller runs them
        # Decides the rollouts on the counts every ingress reports (the routing table sums
        # them) and writes the decisions to the repository.
        self.rollouts = Rollouts(CollectorRegistry(), config.model_repository)

    # ---- start and stop ---------------------------------------------------------------

    def start(self, host: str, port: int, ssl_files: tuple[str, str] | None = None) -> None:
        """Ray Serve without its HTTP proxies; a front door asked for on every node.

        Returns once Serve's controller runs; the fronts start meanwhile and go on starting
        (:meth:`wait_fronts`) while the models deploy.

        Raises:
            FrontError: the port is taken.
        """
        from ray import serve

        check_port_free(host, port)  # before anything starts: a clear error, nothing to undo
        # Serve's controller first: every deployment waits for it, and asked for first it
        # takes a worker that Ray started for this job as it connected (Ray imported
        # already) instead of starting one. The routing table and the fronts meanwhile.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-start") as pool:
            serve_started = pool.submit(
                serve.start, proxy_location="Disabled", logging_config=QUIET_LOGS
            )
            wait_controller_asked(serve_started)
            self.table = routing_table()
            self.fronts = Fronts(self.config, host, port, ssl_files)
            self.fronts.launch()
            serve_started.result()

    def wait_fronts(self) -> None:
        """Wait for the fronts that :meth:`start` asked for.

        Raises:
            FrontError: a front could not listen on a node.
        """
        assert self.fronts is not None, "start() first"
        self.fronts.wait()
        scheme = "https" if self.fronts.ssl_files else "http"
        log.info(
            "front doors on %d nodes at %s://%s:%d",
            len(self.fronts.actors),
            scheme,
            self.fronts.host,
            self.fronts.port,
        )

    def shutdown(self) -> None:
        """Stop the fronts and delete the applications this controller deployed (the cluster
        keeps running)."""
        from ray import serve

        if self.fronts is not None:
            self.fronts.stop()
        self._redeploys.shutdown(wait=True, cancel_futures=True)
        apps = {*self.applied, *(app for _, app in self.pending_deletes)}
        for app in sorted(apps):
            try:
                serve.delete(app, _blocking=False)
            except Exception as error:  # shutting down: report, go on with the rest
                log.warning("could not delete %s: %s", app, error)

    # ---- one step -----------------------------------------------------------------------

    def step(self, *, fronts: bool = True) -> None:
        """Poll the repository, rescale served versions, publish, delete drained apps.

        Args:
            fronts: first give every node that has none its front (not while the first
                fronts still start: the models deploy meanwhile).
        """
        if fronts:
            self._ensure_fronts()
        dropped = self.repository.poll()
        for loaded in dropped:
            self._delete_later(loaded.runtime.app)
        self._rescale()
        self._follow_rollouts()
        self.publish()  # first: a version switch reaches the ingresses without waiting
        if self._follow_ensembles():
            self.publish()
        self._delete_due()

    def _follow_rollouts(self) -> None:
        """Sum the ingresses' counts of each rollout in progress, then let it decide."""
        import ray

        undecided = {
            live.spec.id: live for live in self.rollouts.live.values() if live.decision is None
        }
        if undecided and self.table is not None:
            stats = ray.get(self.table.rollout_stats.remote(list(undecided)))
            for rollout_id, window in stats.items():
                undecided[rollout_id].stats = window
        self.rollouts.tick(self.repository)

    def _ensure_fronts(self) -> None:
        """A node that joined gets its front door; one that cannot listen is reported."""
        if self.fronts is None:
            return
        try:
            for node in self.fronts.ensure():
                log.info("front door started on node %s", node[:12])
        except FrontError as error:  # the other fronts keep serving
            log.error("%s", error)

    def attach(self) -> None:
        """Use the routing table without deploying the ingress (it is deployed elsewhere)."""
        self.table = routing_table()

    def publish(self) -> None:
        """Publish what is served when it changed, or when the routing table lost it."""
        models, polls = self.repository.snapshot()
        running = running_replicas()
        snapshot = {
            name: _model_snapshot(state, running, self._winner(name, state.config))
            for name, state in models.items()
        }
        snapshot.update(self._ensembles)
        if snapshot != self._published or not self._table_holds_ours():
            import ray

            try:
                self._generation = ray.get(self.table.publish.remote((snapshot, polls)))
            except Exception as error:
                if not routing_table_lost(error):
                    raise
                self._replace_table(error)
                self._generation = ray.get(self.table.publish.remote((snapshot, polls)))
            self._published = snapshot

    def _winner(self, model: str, config: ModelConfig) -> int | None:
        """The decided winner of the model's rollout in progress (None: undecided)."""
        live = self.rollouts.live.get(model)
        if config.rollout is None or live is None or live.spec.id != config.rollout.id:
            return None
        return live.winner()

    def _table_holds_ours(self) -> bool:
        """One small call per step: a table made anew (its actor died) must be filled again."""
        import ray

        try:
            generation, _ = ray.get(self.table.read.remote(self._generation))
        except Exception as error:
            if not routing_table_lost(error):
                raise
            self._replace_table(error)
            return False
        return generation == self._generation

    def _replace_table(self, error: BaseException) -> None:
        log.warning("the routing table was lost (%s); publishing to a new one", error)
        self.table = routing_table()

    def deploy_ensembles(self) -> None:
        """Deploy each ``--ensemble``: its members' served versions, averaged in parallel."""
        for name, members in self.options.ensembles.items():
            self._ensembles[name] = self._deploy_ensemble(name, members)
        self.publish()

    def _follow_ensembles(self) -> bool:
        """Redeploy an ensemble whose members now serve other versions (a promotion, a
        rollback): Ray Serve rolls its member deployments over, old replicas answering until
        the new ones are ready. Whether any was redeployed."""
        changed = False
        for name, members in self.options.ensembles.items():
            deployed = self._ensembles.get(name)
            current = self._member_versions(members)
            if deployed is None or current is None:
                continue  # not deployed yet, or a member has no served version right now
            served = deployed.served[1]
            if current != served.provenance["members"]:
                log.info("ensemble %s: members now serve %s; redeploying", name, current)
                app, application, versions = self._bind_ensemble(name, members)
                self._redeploys.submit(self._redeploy, app, application)
                served = dataclasses.replace(served, provenance={"members": versions})
                self._ensembles[name] = dataclasses.replace(deployed, served={1: served})
                changed = True
        return changed

    def _member_versions(self, members: tuple[str, ...]) -> dict[str, int] | None:
        try:
            return {member: self.repository.resolve(member).version for member in members}
        except ServingError:  # a member removed, or between versions
            return None

    # ---- deployments ------------------------------------------------------------------

    def _load_version(self, model: str, version: int, folder: Path, config: ModelConfig):
        app = app_name(model, version)
        scaling = config.scaling or self.options.scaling
        try:
            self._deploy(app, folder, scaling, blocking=True)
            info = _info(app)
        except Exception:
            self._delete_now(app)
            raise
        return ControllerRuntime(app, info["labels"], info["kind"])

    @property
    def _batch(self) -> int:
        """Texts per model call in a replica (0: every call on its own)."""
        return self.config.max_batch_size if self.config.batching else 0

    def _bind_version(self, scaling: Scaling, folder: Path, name: str = "ModelVersion"):
        """A :class:`ModelVersion` deployment of ``folder``, bound, not yet deployed."""
        deployment = self._deployment(scaling, name)
        # The ingress forms the batches; a replica only joins the ones that queue while its
        # model is busy, and never waits for more (a second window would add its wait).
        return deployment.bind(str(folder), self._batch, 0.0)

    def _deployment(self, scaling: Scaling, name: str):
        from ray import serve

        batch = self._batch
        per_node = {}
        if self.options.max_replicas_per_node:
            per_node["max_replicas_per_node"] = self.options.max_replicas_per_node
        return serve.deployment(
            ModelVersion,
            name=name,
            ray_actor_options={"num_cpus": self.options.replica_cpus},
            autoscaling_config=autoscaling_config(scaling),
            max_ongoing_requests=max(2 * max(batch, 1), int(4 * scaling.target_ongoing_requests)),
            max_constructor_retry_count=2,  # a corrupt artifact fails fast, not 20 times
            **per_node,
            health_check_period_s=2.0,
            health_check_timeout_s=5.0,  # a replica lost with its node is replaced sooner
            graceful_shutdown_timeout_s=10.0,
            logging_config=QUIET_LOGS,
        )

    def _deploy(self, app: str, folder: Path, scaling: Scaling, *, blocking: bool) -> None:
        from ray import serve

        bound = self._bind_version(scaling, folder)
        serve._run(bound, name=app, route_prefix=None, _blocking=False)
        self.applied[app] = scaling
        if blocking:
            wait_running(app, self.options.deploy_timeout_s)

    def _rescale(self) -> None:
        """Apply a changed ``scaling`` to served and warm versions (replicas are kept)."""
        for name in self.repository.model_names():
            config, _ = self.repository.config(name)
            scaling = config.scaling or self.options.scaling
            versions = {**self.repository.served(name), **self.repository.warm(name)}
            for loaded in versions.values():
                app = loaded.runtime.app
                if self.applied.get(app) not in (None, scaling):
                    log.info("model %s version %d: scaling %s", name, loaded.version, scaling)
                    self._deploy(app, loaded.path, scaling, blocking=False)

    def _deploy_ensemble(self, name: str, members: tuple[str, ...]) -> ModelSnapshot:
        from ray import serve

        app, application, versions = self._bind_ensemble(name, members)
        serve._run(application, name=app, route_prefix=None, _blocking=False)
        self.applied[app] = self.options.scaling  # deleted with the others at shutdown
        wait_running(app, self.options.deploy_timeout_s)
        info = _info(app)
        served = ServedVersion(
            app=app,
            path="",
            labels=tuple(info["labels"]),
            kind="ensemble",
            provenance={"members": versions},
            loaded_at=time.time(),
        )
        return ModelSnapshot(ModelConfig(), "", (VersionStatus(1, AVAILABLE),), {1: served})

    @staticmethod
    def _redeploy(app: str, application: Any) -> None:
        """Roll an ensemble over to new members (in the redeploy thread)."""
        from ray import serve

        try:
            serve._run(application, name=app, route_prefix=None, _blocking=False)
        except Exception:  # the old deployment keeps answering
            log.exception("redeploying %s failed; its previous members keep serving", app)

    def _bind_ensemble(self, name: str, members: tuple[str, ...]) -> tuple[str, Any, dict]:
        """The ensemble application over its members' served versions, not yet deployed."""
        from ray import serve

        served = {member: self.repository.resolve(member) for member in members}
        bound = [
            self._bind_version(self.options.scaling, loaded.path, name=f"member-{member}")
            for member, loaded in served.items()
        ]
        ensemble = serve.deployment(
            Ensemble,
            name="Ensemble",
            ray_actor_options={"num_cpus": 0},
            max_ongoing_requests=256,
            logging_config=QUIET_LOGS,
        )
        versions = {member: loaded.version for member, loaded in served.items()}
        return f"maas.ensemble.{name}", ensemble.bind(*bound), versions

    def _delete_later(self, app: str) -> None:
        self.pending_deletes.append((time.monotonic() + self.options.drain_s, app))

    def _delete_due(self) -> None:
        now = time.monotonic()
        due = [app for deadline, app in self.pending_deletes if deadline <= now]
        self.pending_deletes = [(d, a) for d, a in self.pending_deletes if d > now]
        for app in due:
            self._delete_now(app)

    def _delete_now(self, app: str) -> None:
        from ray import serve

        log.info("deleting Ray Serve application %s", app)
        self.applied.pop(app, None)
        try:
            serve.delete(app, _blocking=False)
        except Exception as error:  # already gone: nothing to do
            log.warning("could not delete %s: %s", app, error)


def _info(app: str) -> dict[str, Any]:
    return sync_handle(app).info.remote().result(timeout_s=60)


def sync_handle(app: str) -> Any:
    """A handle to call from this (synchronous) controller: its router on a loop of its own,
    whatever ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` chose for the replicas' handles."""
    from ray import serve

    handle = serve.get_app_handle(app)  # the same object for the same app, once made
    if not handle.is_initialized:
        handle._init(_run_router_in_separate_loop=True)
    return handle


def running_replicas() -> dict[str, int]:
    """``{application: running replicas}`` (a lost replica or node shows here at once)."""
    from ray import serve

    try:
        applications = serve.status().applications
    except Exception as error:  # the Serve controller restarting: no numbers this time
        log.warning("cannot read replica counts: %s", error)
        return {}
    return {
        name: sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())
        for name, app in applications.items()
    }


def _model_snapshot(state, running: dict[str, int], winner: int | None = None) -> ModelSnapshot:
    served = {
        version: ServedVersion(
            app=loaded.runtime.app,
            path=str(loaded.path),
            labels=tuple(loaded.labels),
            kind=loaded.kind,
            provenance=loaded.provenance,
            loaded_at=loaded.loaded_at,
        )
        for version, loaded in state.served.items()
    }
    status = tuple(sorted(state.status.values(), key=lambda s: -s.version))
    replicas = {v: running.get(info.app, 0) for v, info in served.items()}
    return ModelSnapshot(state.config, state.config_error, status, served, replicas, winner)


def wait_controller_asked(starting: Future, timeout: float = 10.0) -> None:
    """Wait until Ray knows of Serve's controller (its creation asked for, not done), or
    ``serve.start`` ended, or ``timeout``: what is asked for after it comes second."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    deadline = time.monotonic() + timeout
    while not starting.done() and time.monotonic() < deadline:
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            return
        except ValueError:  # not yet
            time.sleep(0.02)


def wait_running(app: str, timeout: float) -> None:
    """Wait until a Serve application runs; a clear error when it fails or cannot schedule."""
    from ray import serve

    deadline = time.monotonic() + timeout
    message = "not deployed yet"
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status is not None:
            details = [d.message for d in status.deployments.values() if d.message]
            message = "; ".join([status.message, *details]).strip("; ") or str(status.status)
            if status.status == "RUNNING":
                return
            if status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RayEngineError(f"{app} failed to deploy: {message[:2000]}")
        # Not faster: each serve.status() has the controller describe every application
        # (at 0.1 s, the faults case of the Ray tests twice saw a deployment not finish in
        # time on the loaded 2-core machine).
        time.sleep(0.5)
    raise RayEngineError(f"{app} did not start within {timeout:g} s: {message[:2000]}")


def serve(
    config: ServerConfig,
    options: RayOptions,
    *,
    host: str,
    port: int,
    ssl_files: tuple[str, str] | None = None,
) -> int:
    """Run the controller until SIGTERM or SIGINT; return the exit status."""
    from maas.serving.ray.site.sitecustomize import defer

    defer()  # before Ray is imported: see maas.serving.ray.site.sitecustomize
    import ray

    begun = time.monotonic()
    try:
        started = connect(options)
    except (RayEngineError, ConnectionError) as error:
        log.error("%s", error)
        return 2
    log.info("start-up: connected to Ray in %.1f s", time.monotonic() - begun)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    controller = RayController(config, options)
    try:
        check_resources(options)
        controller.start(host, port, ssl_files)
        log.info("start-up: Serve up at %.1f s", time.monotonic() - begun)
        controller.step(fronts=False)  # the models deploy while the fronts start
        if options.ensembles:
            controller.deploy_ensembles()
        log.info("start-up: models deployed at %.1f s", time.monotonic() - begun)
        controller.wait_fronts()
        log.info(
            "serving %s on Ray at %s (start-up: %.1f s)",
            config.model_repository,
            ray.get_runtime_context().gcs_address,
            time.monotonic() - begun,
        )
        interval = config.poll_interval_s
        while not stop.wait(interval if interval > 0 else 1.0):
            try:
                if interval > 0:
                    controller.step()
                else:
                    controller._delete_due()
            except Exception:  # a vanished folder, a Ray hiccup: log, keep serving, retry
                log.exception("updating the Ray deployments failed")
        return 0
    except (RayEngineError, FrontError) as error:
        log.error("%s", error)
        return 2
    finally:
        controller.shutdown()
        if started:
            ray.shutdown()

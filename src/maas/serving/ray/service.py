"""The Ray engine as one Serve application, for KubeRay's RayService and ``serve run``.

``maas serve --engine ray`` runs the controller in its own process. A RayService instead
deploys applications from its ``serveConfigV2``; this module's :func:`app` (import path
``maas.serving.ray.service:app``) returns the ingress bound to a one-replica
:class:`RepositoryController` deployment that runs the same controller loop in a thread:
it follows the model repository, deploys each version as its own application and publishes
the routing table. Args (``serveConfigV2 ... args``)::

    model_repository: /models/repository   # the same path on every node (image or volume)
    poll_interval_s: 2.0
    max_batch_size: 32
    batch_timeout_ms: 5.0
    max_queue: 64                          # requests waiting per model (default: unbounded)
    replica_cpus: 1.0
    scaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 8}
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from maas.serving.app import ServerConfig
from maas.serving.layout import Scaling
from maas.serving.ray.engine import RayController, RayOptions, ingress_deployment
from maas.serving.ray.ingress import ON_HEAD, log_in_replica

log = logging.getLogger(__name__)

ARGS = {
    "model_repository",
    "poll_interval_s",
    "max_batch_size",
    "batch_timeout_ms",
    "max_queue",
    "replica_cpus",
    "scaling",
}


class RepositoryController:
    """Runs :class:`RayController` steps in a thread (a one-replica Serve deployment)."""

    def __init__(self, config: ServerConfig, options: RayOptions) -> None:
        log_in_replica()
        self.controller = RayController(config, options)
        self.controller.attach()
        self.interval = config.poll_interval_s or 2.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="maas-controller", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self.controller.step()
            except Exception:  # a vanished folder, a Ray hiccup: log, retry at the next poll
                log.exception("updating the Ray deployments failed")
            if self.stop.wait(self.interval):
                return

    def check_health(self) -> None:
        if not self.thread.is_alive():
            raise RuntimeError("the controller thread stopped")

    def __del__(self) -> None:
        self.stop.set()


def parse_args(args: dict[str, Any]) -> tuple[ServerConfig, RayOptions]:
    unknown = sorted(set(args) - ARGS)
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r}; known: {sorted(ARGS)}")
    if "model_repository" not in args:
        raise ValueError("the argument model_repository is required")
    config = ServerConfig(
        model_repository=Path(args["model_repository"]),
        poll_interval_s=float(args.get("poll_interval_s", 2.0)),
        max_batch_size=int(args.get("max_batch_size", 32)),
        batch_timeout_s=float(args.get("batch_timeout_ms", 5.0)) / 1000,
        max_queue=args.get("max_queue"),
    )
    scaling = Scaling.parse(args.get("scaling", {}), where="args")
    options = RayOptions(replica_cpus=float(args.get("replica_cpus", 1.0)), scaling=scaling)
    return config, options


def app(args: dict[str, Any]):  # -> ray.serve.Application
    """The application a RayService deploys: the ingress and the repository's controller."""
    from ray import serve

    config, options = parse_args(args)
    controller = serve.deployment(
        RepositoryController,
        name="RepositoryController",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0, "resources": ON_HEAD},
    ).bind(config, options)
    return ingress_deployment(options).bind(config, controller)

"""The Ray engine's front door: on every node, the ingress application on its own HTTP server.

Ray Serve's path for one request (its HTTP proxy, then an ingress replica) cost about 7.5 ms
of CPU here, ten times the whole single-process server's cost per request. So
``maas serve --engine ray`` answers HTTP itself instead: on every node an :class:`HttpFront`
actor serves the ingress application of :mod:`maas.serving.ray.ingress` (every protocol,
API keys, limits, load shedding, metrics) with uvicorn, as ``maas serve`` does, TLS
included, and calls the model replicas through Ray Serve handles, one call per batch of
requests. Ray Serve keeps what it is good at: deploying, autoscaling and healing the replicas.

The fronts listen on the same host and port with ``SO_REUSEPORT`` (on one machine, the
kernel spreads connections over them; on several, each machine has its own). The
controller gives every node that joins the cluster its front (:meth:`Fronts.ensure`), so the
front door grows with the nodes; a node's loss takes only its own front.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from typing import Any

from maas.serving.app import ServerConfig, freeze_heap
from maas.serving.ray.ingress import NAMESPACE, build_app, log_in_replica

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0


class FrontError(RuntimeError):
    """A front cannot listen: the port is taken, the address is not this machine's, bad TLS."""


def listening_socket(host: str, port: int, *, share: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``share``: with ``SO_REUSEPORT``, as the fronts)."""
    family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def check_port_free(host: str, port: int) -> None:
    """A clear error when something else (not sharing it) already listens on ``host:port``."""
    try:
        listening_socket(host, port, share=False).close()
    except OSError as error:
        busy = " (another server listens there)" if error.errno == errno.EADDRINUSE else ""
        raise FrontError(f"cannot listen on {host}:{port}{busy}: {error}") from error


class _Uvicorn:
    """uvicorn's server without its signal handlers: the actor's process belongs to Ray."""

    @staticmethod
    def make(config: Any):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        return Server(config)


class HttpFront:
    """One node's front door (an async Ray actor): the ingress application over uvicorn."""

    def __init__(
        self, config: ServerConfig, host: str, port: int, ssl_files: tuple[str, str] | None
    ) -> None:
        log_in_replica()
        self.config, self.host, self.port, self.ssl_files = config, host, port, ssl_files
        self.server: Any = None
        self.task: asyncio.Task | None = None

    async def start(self) -> str:
        """Listen and serve; return this node's id once uvicorn accepts connections."""
        import ray
        import uvicorn

        try:
            sock = listening_socket(self.host, self.port, share=True)
        except OSError as error:
            raise FrontError(f"cannot listen on {self.host}:{self.port}: {error}") from error
        settings = uvicorn.Config(
            build_app(self.config),
            ssl_certfile=self.ssl_files[0] if self.ssl_files else None,
            ssl_keyfile=self.ssl_files[1] if self.ssl_files else None,
            access_log=False,  # maas.access logs (sampled) instead
            log_config=None,
        )
        self.server = _Uvicorn.make(settings)
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self.task.done():
                error = self.task.exception()
                raise FrontError(f"the front on {self.host}:{self.port} stopped: {error}")
            await asyncio.sleep(0.05)
        # As `maas serve` does once its models are loaded: Ray, FastAPI and the rest make
        # ~160,000 objects here, and each full collection would walk them all (0.44 s once
        # on the loaded 2-core machine) while every request on this front waits.
        freeze_heap()
        node = ray.get_runtime_context().get_node_id()
        log.info("front door of node %s on %s:%d", node[:8], self.host, self.port)
        return node

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, run the app's shutdown."""
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task


class Fronts:
    """The :class:`HttpFront` actors, one on every alive node (made by the controller)."""

    def __init__(
        self, config: ServerConfig, host: str, port: int, ssl_files: tuple[str, str] | None
    ) -> None:
        self.config, self.host, self.port, self.ssl_files = config, host, port, ssl_files
        self.actors: dict[str, Any] = {}  # node id -> actor
        self._starting: dict[str, tuple[Any, Any]] = {}  # node id -> (actor, its start call)

    def ensure(self, timeout: float = START_TIMEOUT_S) -> list[str]:
        """Start a front on every alive node that has none; return the nodes just started.

        Raises:
            FrontError: a front could not listen (the port busy, the host not the node's).
        """
        self.launch()
        return self.wait(timeout)

    def launch(self) -> None:
        """Ask for a front on every alive node that has none, without waiting for them."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        self.actors = {node: actor for node, actor in self.actors.items() if node in alive}
        for node in alive:
            if node in self.actors or node in self._starting:
                continue
            actor = (
                ray.remote(HttpFront)
                .options(
                    name=f"maas-front-{node[:12]}",
                    namespace=NAMESPACE,
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                    max_concurrency=1000,
                )
                .remote(self.config, self.host, self.port, self.ssl_files)
            )
            self._starting[node] = (actor, actor.start.remote())

    def wait(self, timeout: float = START_TIMEOUT_S) -> list[str]:
        """Wait for the fronts launched; return their nodes (``FrontError``: one failed)."""
        import ray

        started, self._starting = self._starting, {}
        failures = []
        for node, (actor, ready) in started.items():
            try:
                ray.get(ready, timeout=timeout)
            except Exception as error:  # this node's front only: the others are kept
                ray.kill(actor)
                cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
                failures.append(f"no front door on node {node[:12]}: {cause}")
                continue
            self.actors[node] = actor
        if failures:
            raise FrontError("; ".join(failures))
        return list(started)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every front (in-flight requests finish first, within ``timeout``)."""
        import ray

        stops = [actor.stop.remote() for actor in self.actors.values()]
        with contextlib.suppress(Exception):
            ray.get(stops, timeout=timeout)
        starting = [actor for actor, _ in self._starting.values()]  # never waited for
        for actor in [*self.actors.values(), *starting]:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        self.actors, self._starting = {}, {}

"""The gRPC server beside HTTP: same event loop, repository, batchers, keys, limits, metrics.

:func:`start` is called from the HTTP application's lifespan (see
:func:`maas.serving.app.create_app`), so gRPC calls await the very batchers REST requests
do and concurrent calls of both protocols share batches. It serves KServe's v2 service,
TensorFlow Serving's PredictionService and ModelService, ``grpc.health.v1`` (SERVING once
every model has a version, like ``/v2/health/ready``) and server reflection. Messages over
the body limit are refused by gRPC itself with RESOURCE_EXHAUSTED. :meth:`GrpcServer.stop`
refuses new calls, lets those in flight finish within the grace period, then returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from maas.serving.auth import KeyGuard
from maas.serving.grpc import GrpcSettings, grpc_predict_v2_pb2_grpc, oip, tfserving
from maas.serving.grpc.calls import CallInterceptor
from maas.serving.state import ServerState, is_ready

log = logging.getLogger(__name__)

READINESS_INTERVAL_S = 0.25  # how stale the health status may be


class GrpcServer:
    """A started server; :meth:`stop` drains it."""

    def __init__(self, server: grpc.aio.Server, health_servicer, tracker: asyncio.Task):
        self.server = server
        self.health = health_servicer
        self.tracker = tracker

    async def stop(self, grace_s: float) -> None:
        self.tracker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.tracker
        await self.health.enter_graceful_shutdown()  # watchers hear NOT_SERVING first
        await self.server.stop(grace_s)
        log.info("gRPC server stopped")


def _bind(server: grpc.aio.Server, settings: GrpcSettings) -> int:
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert is None:
        return server.add_insecure_port(address)
    credentials = grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())]
    )
    return server.add_secure_port(address, credentials)


async def start(state: ServerState, settings: GrpcSettings, guard: KeyGuard) -> GrpcServer:
    """Build, bind and start the gRPC server over ``state``."""
    limit = state.limits.max_body_bytes
    server = grpc.aio.server(
        interceptors=[CallInterceptor(guard=guard, metrics=state.metrics)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),  # answers are bounded by the text limits
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
        ],
    )
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        oip.InferenceServicer(state), server
    )
    tfserving.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        tfserving.PredictionServicer(state), server
    )
    tfserving.model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        tfserving.ModelServicer(state), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = (
        oip.SERVICE_NAME,
        tfserving.PREDICTION_SERVICE,
        tfserving.MODEL_SERVICE,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(services, server)
    try:
        port = _bind(server, settings)
    except RuntimeError as error:  # grpc says only "failed to bind"
        raise OSError(f"cannot listen for gRPC on {settings.host}:{settings.port}") from error
    await server.start()
    tracker = asyncio.create_task(_track_readiness(state, health_servicer, services[:3]))
    scheme = "TLS" if settings.tls_cert else "plaintext"
    log.info("serving gRPC (%s) on %s:%d", scheme, settings.host, port)
    return GrpcServer(server, health_servicer, tracker)


async def _track_readiness(state: ServerState, health_servicer, services) -> None:
    """Keep the health status in line with readiness (the overall one and each service)."""
    last = None
    while True:
        ready = is_ready(state.repository)
        if ready != last:
            status = health_pb2.HealthCheckResponse.SERVING
            if not ready:
                status = health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", *services):
                await health_servicer.set(name, status)
            last = ready
        await asyncio.sleep(READINESS_INTERVAL_S)

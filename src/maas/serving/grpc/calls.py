"""What every gRPC call goes through: the API key, the error mapping, metrics and access log.

:class:`CallInterceptor` is the gRPC counterpart of the REST middleware stack. It checks the
key in the call's metadata (``authorization: Bearer KEY`` or ``x-api-key: KEY``; health and
reflection and the v2 liveness and readiness stay open, as ``/v2/health/*`` and ``/docs``
do over HTTP), turns a
:class:`~maas.serving.errors.ServingError` into the gRPC status of the same meaning and any
other exception into ``INTERNAL`` with no detail (the traceback goes to the log, never to
the client), and counts, times and logs every call with the REST server's metrics.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from maas.serving.auth import KeyChecker, presented_key
from maas.serving.errors import Overloaded, ServingError
from maas.serving.metrics import (
    SCOPE_MODEL,
    SCOPE_TRAFFIC,
    SCOPE_VERSION,
    Metrics,
    record_request,
)

log = logging.getLogger(__name__)

# HTTP status of a ServingError -> the gRPC code that means the same.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
PROTOCOLS = {
    "/inference.GRPCInferenceService/": "oip_v2_grpc",
    "/tensorflow.serving.": "tfserving_grpc",
    "/grpc.health.v1.Health/": "grpc_health",
}

_notes: contextvars.ContextVar[dict] = contextvars.ContextVar("maas_grpc_notes")


def call_notes() -> dict:
    """The current call's notes: the model and version that served it, for the metrics."""
    try:
        return _notes.get()
    except LookupError:  # called outside an intercepted call (a servicer used directly)
        notes: dict = {}
        _notes.set(notes)
        return notes


def protocol_of(method: str) -> str:
    return next((name for prefix, name in PROTOCOLS.items() if method.startswith(prefix)), "other")


class CallInterceptor(grpc.aio.ServerInterceptor):
    """API keys, errors, metrics and the access log for every unary call."""

    def __init__(self, *, checker: KeyChecker, metrics: Metrics) -> None:
        self.checker = checker
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        is_open = method.startswith(OPEN_SERVICES)
        if not is_open and self.checker.enabled:
            metadata = {
                key.encode("latin-1"): value.encode("latin-1") if isinstance(value, str) else value
                for key, value in details.invocation_metadata or ()
            }
            if not self.checker.check(presented_key(metadata)):
                return self._wrap(method, _refuse, is_open)
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (health Watch, reflection) or unknown: as it is
        return self._wrap(method, handler.unary_unary, is_open, handler)

    def _wrap(
        self,
        method: str,
        behavior: Callable,
        is_open: bool,
        handler: grpc.RpcMethodHandler | None = None,
    ) -> grpc.RpcMethodHandler:
        async def observed(request, context: grpc.aio.ServicerContext):
            notes: dict = {}
            _notes.set(notes)
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, context)
            except Overloaded as error:  # the queue is full: the client should back off
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                retry = (("retry-after", str(error.retry_after_s)),)
                await context.abort(code, error.message, trailing_metadata=retry)
            except ServingError as error:
                code = STATUS_CODES.get(error.status_code, grpc.StatusCode.UNKNOWN)
                await context.abort(code, error.message)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:  # a bug: log it whole, tell the client nothing of it
                log.exception("unexpected error in %s", method)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, "internal server error")
            finally:
                self._record(method, code, notes, context, time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer if handler else None,
            response_serializer=handler.response_serializer if handler else None,
        )

    def _record(self, method, code, notes, context, seconds: float) -> None:
        pending = notes.get(SCOPE_TRAFFIC)
        if pending is not None:  # the payload log's record of this call
            pending.finish(
                seconds=seconds,
                status=code.name,
                protocol=protocol_of(method),
                headers={
                    key.encode("latin-1"): value if isinstance(value, bytes) else value.encode()
                    for key, value in context.invocation_metadata() or ()
                },
            )

        def access() -> dict:
            metadata = dict(context.invocation_metadata() or ())
            return {
                "client": context.peer(),
                "method": "grpc",
                "path": method,
                "status": code.name,
                "request_id": str(metadata.get("x-request-id", ""))[:128],
            }

        record_request(
            self.metrics,
            protocol=protocol_of(method),
            model=notes.get(SCOPE_MODEL, ""),
            version=notes.get(SCOPE_VERSION, ""),
            code=code.name,
            failed=code != grpc.StatusCode.OK,
            seconds=seconds,
            access=access,
        )


async def _refuse(request, context: grpc.aio.ServicerContext) -> None:
    raise ServingError(401, "missing or invalid API key")

"""What every gRPC call goes through: the API key, the error mapping, metrics and access log.

:class:`CallInterceptor` is the gRPC counterpart of the REST middleware stack. It checks the
key in the call's metadata (``authorization: Bearer KEY`` or ``x-api-key: KEY``; health and
reflection and the v2 liveness and readiness stay open, as ``/v2/health/*`` and ``/docs``
do over HTTP), its rate, and the scopes the call needs (the model its request names; admin
for the repository's load and unload and TF Serving's config reload) with the REST
server's :class:`~maas.serving.auth.KeyGuard`, turns a
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

from maas.serving.auth import KeyGrant, KeyGuard, presented_key
from maas.serving.errors import Overloaded, RateLimited, ServingError
from maas.serving.metrics import (
    SCOPE_KEY_ID,
    SCOPE_MODEL,
    SCOPE_TRAFFIC,
    SCOPE_VERSION,
    Metrics,
    record_request,
)
from maas.serving.routing import set_caller

log = logging.getLogger(__name__)

# HTTP status of a ServingError -> the gRPC code that means the same.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Calls that change what is served: they need a key with the admin scope.
ADMIN_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryModelUnload",
        "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    }
)
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


def requested_model(request) -> str | None:
    """The model a request message names (OIP ``model_name`` or ``name``, TF Serving
    ``model_spec.name``), or None for a call about no model (server metadata)."""
    fields = getattr(getattr(request, "DESCRIPTOR", None), "fields_by_name", {})
    if "model_spec" in fields:
        return request.model_spec.name
    for name in ("model_name", "name"):
        if name in fields:
            return getattr(request, name)
    return None


def _metadata(context: grpc.aio.ServicerContext) -> list[tuple[bytes, bytes]]:
    """The call's metadata as HTTP-style headers (lower-case names, bytes)."""
    return [
        (key.encode("latin-1"), value.encode("latin-1") if isinstance(value, str) else value)
        for key, value in context.invocation_metadata() or ()
    ]


def protocol_of(method: str) -> str:
    return next((name for prefix, name in PROTOCOLS.items() if method.startswith(prefix)), "other")


class CallInterceptor(grpc.aio.ServerInterceptor):
    """API keys, errors, metrics and the access log for every unary call."""

    def __init__(self, *, guard: KeyGuard, metrics: Metrics) -> None:
        self.guard = guard
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        is_open = method.startswith(OPEN_SERVICES)
        key_notes: dict = {}  # the key's grant and id, for the call's notes
        grant = None
        if not is_open and self.guard.enabled:
            metadata = {
                key.encode("latin-1"): value.encode("latin-1") if isinstance(value, str) else value
                for key, value in details.invocation_metadata or ()
            }
            try:
                grant = self.guard.admit(presented_key(metadata), key_notes)
                if method in ADMIN_METHODS:
                    self.guard.require_admin(grant, "load or unload models")
            except ServingError as error:
                return self._wrap(method, _refusal(error), is_open, key_notes=key_notes)
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (health Watch, reflection) or unknown: as it is
        return self._wrap(method, handler.unary_unary, is_open, handler, key_notes, grant)

    def _wrap(
        self,
        method: str,
        behavior: Callable,
        is_open: bool,
        handler: grpc.RpcMethodHandler | None = None,
        key_notes: dict | None = None,
        grant: KeyGrant | None = None,
    ) -> grpc.RpcMethodHandler:
        async def observed(request, context: grpc.aio.ServicerContext):
            notes: dict = dict(key_notes or {})
            _notes.set(notes)
            set_caller(_metadata(context))  # for sticky rollouts
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if grant is not None:  # the model is in the message: known only now
                    model = requested_model(request)
                    if model is not None:
                        self.guard.authorize(grant, model)
                return await behavior(request, context)
            except (Overloaded, RateLimited) as error:  # the client should back off
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
                key_id=notes.get(SCOPE_KEY_ID),
            )

        def access() -> dict:
            metadata = dict(context.invocation_metadata() or ())
            return {
                "client": context.peer(),
                "method": "grpc",
                "path": method,
                "status": code.name,
                "request_id": str(metadata.get("x-request-id", ""))[:128],
                "key": notes.get(SCOPE_KEY_ID),
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


def _refusal(error: ServingError) -> Callable:
    """A call's behaviour that only answers ``error`` (a bad key, over its rate, no admin)."""

    async def refuse(request, context: grpc.aio.ServicerContext) -> None:
        raise error

    return refuse

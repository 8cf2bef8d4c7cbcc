"""Request limits: body size, texts per request, characters per text, requests per model queue.

The body limit is an ASGI middleware that answers 413 before the application reads
anything: when ``Content-Length`` is over the limit, or as soon as a chunked body passes it.
It first reads and discards the rest of the body, up to a bound (as nginx's lingering close
does): a server that closes while the client is still sending resets the connection, and
over TLS the client then sees a connection error instead of the 413. The text limits are
checked by :func:`check_texts`, which every protocol calls on the texts it parsed, so all
protocols refuse the same things with the same words. :class:`QueueLimit` bounds the
requests waiting for each model (``--max-queue``, ``max_queue:`` in its ``config.yaml``) and
refuses the rest at once with :class:`~maas.serving.errors.Overloaded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maas.serving.errors import Overloaded, ServingError


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int  # request bodies larger than this get 413
    max_texts: int  # texts in one request
    max_text_chars: int  # characters in one text

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_texts", "max_text_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


DEFAULT_LIMITS = Limits(max_body_bytes=4 * 1024 * 1024, max_texts=256, max_text_chars=100_000)
# How much of an over-limit body is read and thrown away before the 413, and for how long
# the client may pause between chunks: past either, the connection is simply closed.
DISCARD_MAX_BYTES = 64 * 1024 * 1024
DISCARD_IDLE_S = 5.0


def check_texts(texts: Sequence[object], limits: Limits) -> list[str]:
    """The texts of a request, checked: a non-empty list of strings within the limits.

    Raises:
        ServingError: 400 for an empty list or a non-string, 413 for too many or too long.
    """
    if not texts:
        raise ServingError(400, "no texts to classify: send at least one")
    if len(texts) > limits.max_texts:
        raise ServingError(
            413, f"{len(texts)} texts in one request; the limit is {limits.max_texts}"
        )
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ServingError(400, f"text {index} must be a string, got {type(text).__name__}")
        if len(text) > limits.max_text_chars:
            raise ServingError(
                413,
                f"text {index} has {len(text)} characters; the limit is {limits.max_text_chars}",
            )
    return list(texts)  # type: ignore[arg-type]


class QueueLimit:
    """Requests admitted to each model and not yet answered, bounded per model.

    A request counts from the moment it asks for the model until its answer is computed:
    queued in the batcher, in the batch that runs, or (Ray) on its way to a replica. Only the
    event loop's thread calls :meth:`admit`, so the counts need no lock.

    Args:
        default: the bound of models whose ``config.yaml`` names none (None: unbounded).
        retry_after_s: what ``Retry-After`` tells a refused client.
    """

    def __init__(self, default: int | None = None, *, retry_after_s: int = 1) -> None:
        self.default = default
        self.retry_after_s = retry_after_s
        self.waiting: dict[str, int] = {}

    @contextlib.contextmanager
    def admit(self, model: str, bound: int | None) -> Iterator[None]:
        """Count one request of ``model`` while the block runs, or raise
        :class:`~maas.serving.errors.Overloaded` at once when ``bound`` (else the default)
        requests are already waiting."""
        limit = bound if bound is not None else self.default
        count = self.waiting.get(model, 0)
        if limit is not None and count >= limit:
            raise Overloaded(
                f"model {model!r} is overloaded: {count} requests waiting "
                f"(max_queue {limit}); retry after {self.retry_after_s} s",
                retry_after_s=self.retry_after_s,
            )
        self.waiting[model] = count + 1
        try:
            yield
        finally:
            self.waiting[model] -= 1


class BodySizeLimitMiddleware:
    """ASGI middleware: 413 with a JSON error for a request body over ``max_bytes``."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_error(send, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                if not _expects_continue(scope):  # else the client waits: nothing to discard
                    await _discard_body(receive, 0)
                await _send_error(send, 413, self._message(int(declared)))
                return
            await self.app(scope, receive, send)
            return
        # No length announced (chunked): read the body here, up to the limit, then replay it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _discard_body(receive, size)
                await _send_error(send, 413, self._message(size, at_least=True))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _message(self, size: int, at_least: bool = False) -> str:
        more = "at least " if at_least else ""
        return f"request body of {more}{size} bytes; the limit is {self.max_bytes} bytes"


def _expects_continue(scope: Scope) -> bool:
    return dict(scope["headers"]).get(b"expect", b"").lower() == b"100-continue"


async def _discard_body(receive: Receive, received: int) -> None:
    """Read the rest of a request body and drop it, within the bounds above."""
    while received <= DISCARD_MAX_BYTES:
        try:
            message = await asyncio.wait_for(receive(), timeout=DISCARD_IDLE_S)
        except TimeoutError:
            return
        if message["type"] == "http.disconnect":
            return
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as usual

    return replayed


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

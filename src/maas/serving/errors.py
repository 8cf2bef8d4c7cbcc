"""The exceptions a request handler raises to answer with an error.

Every error response of the server is ``{"error": "<message>"}`` with the right status code,
the convention of both TensorFlow Serving and the Open Inference Protocol.
"""

from __future__ import annotations


class ServingError(Exception):
    """An error to report to the client: an HTTP status code and a one-line message."""

    def __init__(
        self, status_code: int, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers  # extra response headers (REST), e.g. Retry-After


class Overloaded(ServingError):
    """A model's queue is full: 503 with ``Retry-After`` (REST), ``RESOURCE_EXHAUSTED`` (gRPC).

    Answered at once, before the request waits anywhere, so that an overloaded server says so
    instead of answering ever more slowly.
    """

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(503, message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class RateLimited(ServingError):
    """An API key went over its rate: 429 with ``Retry-After`` (REST), ``RESOURCE_EXHAUSTED``
    (gRPC). Refused before the request is read or queued, so a busy key cannot crowd out
    the others."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(429, message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class VersionUnloaded(RuntimeError):
    """A request reached a model version just after it was unloaded (retry finds the next)."""

"""The one exception a request handler raises to answer with an error.

Every error response of the server is ``{"error": "<message>"}`` with the right status code,
the convention of both TensorFlow Serving and the Open Inference Protocol.
"""

from __future__ import annotations


class ServingError(Exception):
    """An error to report to the client: an HTTP status code and a one-line message."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


class VersionUnloaded(RuntimeError):
    """A request reached a model version just after it was unloaded (retry finds the next)."""

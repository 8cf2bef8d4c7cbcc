"""API keys: only their SHA-256 hashes are kept, and they are compared in constant time.

A key file holds one hash per line, ``sha256:<64 hex digits>`` (``#`` starts a comment), so
the server's disk never holds a usable key; ``maas serve --hash-api-key`` prints the line
for a key read from standard input. Keys may also come from an environment variable
(comma-separated, hashed as soon as they are read).

Clients send the key as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``. When keys
are configured every path needs one, except the health checks (a load balancer or
Kubernetes probes them without credentials) and the API documentation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

HASH_LINE = re.compile(r"^sha256:([0-9a-f]{64})$")
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json"})


def hash_key(key: str) -> str:
    """The line to store for ``key``: ``sha256:<hex>``."""
    if not key or key != key.strip():
        raise ValueError("an API key must be non-empty, without surrounding whitespace")
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_key_file(path: str | Path) -> list[bytes]:
    """The key hashes of a key file; ``ValueError`` names a malformed line."""
    hashes = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = HASH_LINE.match(line)
        if match is None:
            raise ValueError(
                f"{path}:{number}: expected 'sha256:<64 hex digits>' (hash keys with "
                "`maas serve --hash-api-key`), never a plain key"
            )
        hashes.append(bytes.fromhex(match.group(1)))
    return hashes


def keys_from_env(variable: str) -> list[bytes]:
    """Hashes of the comma-separated keys in an environment variable (none if unset)."""
    keys = [key.strip() for key in os.environ.get(variable, "").split(",") if key.strip()]
    return [bytes.fromhex(hash_key(key).removeprefix("sha256:")) for key in keys]


class KeyChecker:
    """Checks a presented key against the stored hashes without leaking timing."""

    def __init__(self, hashes: Iterable[bytes]) -> None:
        self.hashes = tuple(hashes)

    @property
    def enabled(self) -> bool:
        return bool(self.hashes)

    def check(self, key: str | None) -> bool:
        if not key:
            return False
        presented = hashlib.sha256(key.encode("utf-8", "replace")).digest()
        # Compare against every stored hash, always: the time does not tell which matched.
        matches = [hmac.compare_digest(presented, stored) for stored in self.hashes]
        return any(matches)


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key in ``Authorization: Bearer`` or ``x-api-key``, if any."""
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


class ApiKeyMiddleware:
    """ASGI middleware: 401 with a JSON error for a request without a valid key."""

    def __init__(self, app: ASGIApp, *, checker: KeyChecker) -> None:
        self.app = app
        self.checker = checker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.checker.enabled
            or scope["path"] in OPEN_PATHS
            or scope["path"].startswith("/docs")
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.checker.check(presented_key(headers)):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "missing or invalid API key"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="maas"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

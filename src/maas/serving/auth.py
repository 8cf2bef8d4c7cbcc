"""API keys and what each may do: only their SHA-256 hashes are kept, compared in constant time.

A key file holds one key a line: its hash, ``sha256:<64 hex digits>`` (``maas serve
--hash-api-key`` prints it for a key read from standard input), then optionally its scopes
as ``field=value`` words (``#`` starts a comment)::

    sha256:9f86d0...  name=ci-bot  models=news,spam  rate=50/s  burst=100
    sha256:60303a...  name=ops  scopes=admin
    sha256:2c26b4...                                   # every model, no rate limit

- ``name``: the key's id in metrics, logs and payload records (else ``sha256:`` and the
  first 12 hex digits of its hash: never the key);
- ``models``: the models it may call, see and get metadata of (default ``*``: all);
- ``rate`` (``N/s``, ``N/min`` or ``N/h``) and ``burst`` (default: one second's worth):
  beyond them, 429 with ``Retry-After`` (gRPC: ``RESOURCE_EXHAUSTED``);
- ``scopes=admin``: may change what is served (the repository's load endpoints); with
  ``models=``, only for those models. ``/metrics`` needs a key for every model, or admin.

The server re-reads the file when it changes (every ``KEY_FILE_POLL_S``): new keys, scopes
and rates apply at once; a malformed or empty file is logged, naming its line, and the keys
in force stay. Keys may also come from an environment variable (comma-separated, hashed as
soon as they are read; every model, no rate limit, not admin). Clients send the key as
``Authorization: Bearer <key>`` or ``x-api-key: <key>``. When keys are configured every
path needs one, except the health checks (a load balancer or Kubernetes probes them without
credentials) and the API documentation. :func:`key_id` gives the id of the key a request came with.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from maas.serving.errors import RateLimited, ServingError
from maas.serving.layout import MODEL_NAME
from maas.serving.metrics import SCOPE_KEY_ID, Metrics
from maas.serving.ratelimit import Rate, TokenBucket, retry_after_seconds
from maas.serving.schemas import FastJSONResponse

log = logging.getLogger(__name__)

KEY_FILE_POLL_S = 2.0  # how often the server looks for a changed key file
HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RATE = re.compile(r"^(\d+(?:\.\d+)?)/(s|sec|min|h)$")
RATE_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
FIELDS = ("name", "models", "rate", "burst", "scopes")
SCOPES = ("admin",)
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json"})
# The model a v1 or v2 path is about: the segment after "models/" (a name has no ':').
MODEL_PATH = re.compile(r"^/(?:v1/models|v2/models|v2/repository/models)/([^/:]+)")
ADMIN_PREFIX = "/v2/repository/models/"  # load and unload: they change what is served
SCOPE_KEY = "maas.key"  # the request's KeyGrant, in the ASGI scope or the gRPC call's notes
SCOPE_GUARD = "maas.key_guard"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="maas"'}


@dataclass(frozen=True)
class KeyGrant:
    """One key (its hash) and what it may do."""

    digest: bytes  # SHA-256 of the key
    name: str | None = None
    models: frozenset[str] | None = None  # None: every model
    rate: Rate | None = None  # None: no limit
    admin: bool = False

    @property
    def id(self) -> str:
        """A stable, non-secret id: the key's name, else the start of its hash."""
        return self.name or "sha256:" + self.digest.hex()[:12]

    def may_call(self, model: str) -> bool:
        return self.models is None or model in self.models


def hash_key(key: str) -> str:
    """The line to store for ``key``: ``sha256:<hex>``."""
    if not key or key != key.strip():
        raise ValueError("an API key must be non-empty, without surrounding whitespace")
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_line(line: str, where: str) -> KeyGrant:
    """A key-file line (its comment removed); ``ValueError`` starts with ``where``."""
    first, *words = line.split()
    match = HASH.match(first)
    if match is None:
        raise ValueError(
            f"{where}: expected 'sha256:<64 hex digits>' first (hash keys with "
            "`maas serve --hash-api-key`), never a plain key"
        )
    fields: dict[str, str] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or name not in FIELDS:
            raise ValueError(
                f"{where}: {word[:40]!r}: expected field=value, the fields being "
                + ", ".join(FIELDS)
            )
        if name in fields:
            raise ValueError(f"{where}: {name}= given twice")
        if not value:
            raise ValueError(f"{where}: {name}= has no value")
        fields[name] = value
    return KeyGrant(
        digest=bytes.fromhex(match.group(1)),
        name=_parse_name(fields.get("name"), where),
        models=_parse_models(fields.get("models"), where),
        rate=_parse_rate(fields.get("rate"), fields.get("burst"), where),
        admin=_parse_scopes(fields.get("scopes"), where),
    )


def _parse_name(value: str | None, where: str) -> str | None:
    if value is not None and not KEY_NAME.match(value):
        raise ValueError(f"{where}: name={value[:40]!r} must match {KEY_NAME.pattern}")
    return value


def _parse_models(value: str | None, where: str) -> frozenset[str] | None:
    if value is None or value == "*":
        return None
    models = value.split(",")
    for model in models:
        if not MODEL_NAME.match(model):
            raise ValueError(
                f"{where}: models=: {model[:40]!r} is not a model name; list names with commas "
                "and no spaces (models=news,spam), or '*' for every model"
            )
    return frozenset(models)


def _parse_rate(rate: str | None, burst: str | None, where: str) -> Rate | None:
    if rate is None:
        if burst is not None:
            raise ValueError(f"{where}: burst= needs a rate= (e.g. rate=50/s burst=100)")
        return None
    match = RATE.match(rate)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(
            f"{where}: rate={rate[:40]!r}: expected a positive number of requests per s, min "
            "or h, e.g. rate=50/s or rate=600/min"
        )
    per_second = float(match.group(1)) / RATE_UNITS[match.group(2)]
    if burst is None:
        return Rate(per_second, max(1, math.ceil(per_second)))  # one second's worth
    if not burst.isdigit() or int(burst) < 1:
        raise ValueError(f"{where}: burst={burst[:40]!r}: expected a whole number >= 1")
    return Rate(per_second, int(burst))


def _parse_scopes(value: str | None, where: str) -> bool:
    scopes = set(value.split(",")) if value else set()
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise ValueError(f"{where}: unknown scope {unknown[0][:40]!r}; the scopes are {SCOPES}")
    return "admin" in scopes


def read_key_file(path: str | Path) -> list[KeyGrant]:
    """The keys of a key file; ``ValueError`` names the file and line of a malformed one."""
    grants: list[KeyGrant] = []
    lines: dict[str, int] = {}  # hash or id -> the line that had it first
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{number}"
        grant = parse_key_line(line, where)
        for seen, what in ((grant.digest.hex(), "key"), (grant.id, "key id")):
            if seen in lines:
                raise ValueError(f"{where}: the same {what} as line {lines[seen]}")
            lines[seen] = number
        grants.append(grant)
    return grants


def keys_from_env(variable: str) -> list[KeyGrant]:
    """The comma-separated keys in an environment variable (none if unset): every model."""
    keys = [key.strip() for key in os.environ.get(variable, "").split(",") if key.strip()]
    return [KeyGrant(bytes.fromhex(hash_key(key).removeprefix("sha256:"))) for key in keys]


class KeyChecker:
    """Finds the grant of a presented key without leaking, by its timing, which matched."""

    def __init__(self, grants: Iterable[KeyGrant | bytes]) -> None:
        self.grants = tuple(g if isinstance(g, KeyGrant) else KeyGrant(g) for g in grants)

    @property
    def enabled(self) -> bool:
        return bool(self.grants)

    def check(self, key: str | None) -> KeyGrant | None:
        if not key:
            return None
        presented = hashlib.sha256(key.encode("utf-8", "replace")).digest()
        found = None
        # Compare against every stored hash, always: the time does not tell which matched.
        for grant in self.grants:
            if hmac.compare_digest(presented, grant.digest) and found is None:
                found = grant
        return found


class KeyGuard:
    """Every check of a request's key, for REST and gRPC alike, counted per key id."""

    def __init__(
        self,
        grants: Iterable[KeyGrant | bytes],
        metrics: Metrics,
        *,
        key_file: Path | None = None,
        extra_hashes: Iterable[bytes] = (),
    ) -> None:
        self.key_file = key_file  # followed by :meth:`follow`: its grants replace ``grants``
        self.extra_hashes = tuple(extra_hashes)  # keys from the environment, kept on reloads
        self._file_signature = _signature(key_file) if key_file is not None else None
        self.checker = KeyChecker((*grants, *self.extra_hashes))
        self.buckets = {g.digest: TokenBucket(g.rate) for g in self.checker.grants if g.rate}
        self.requests = Counter(
            "maas_api_key_requests_total",
            "Requests with a valid API key, by key id (its name, or the start of its hash)",
            ["key"],
            registry=metrics.registry,
        )
        self.refused = Counter(
            "maas_api_key_refusals_total",
            "Requests with a valid API key refused: over its rate (429 / RESOURCE_EXHAUSTED), "
            "a model or an action out of its scope (403 / PERMISSION_DENIED), by key id",
            ["key", "reason"],
            registry=metrics.registry,
        )

    @property
    def enabled(self) -> bool:
        return self.checker.enabled

    def replace(self, grants: Iterable[KeyGrant]) -> None:
        """Put new grants in force at once; a key whose rate is unchanged keeps its bucket."""
        grants = list(grants)
        in_file = {grant.digest for grant in grants}
        extra = [digest for digest in self.extra_hashes if digest not in in_file]
        checker = KeyChecker((*grants, *extra))
        buckets = {}
        for grant in checker.grants:
            old = self.buckets.get(grant.digest)
            if grant.rate is not None:
                same = old is not None and old.rate == grant.rate
                buckets[grant.digest] = old if same else TokenBucket(grant.rate)
        # Between two requests (admit has no await), so none sees half of the change.
        self.checker, self.buckets = checker, buckets

    def reload_if_changed(self) -> bool:
        """Re-read the key file if it changed; a malformed or empty file is logged (with its
        line) and the keys in force stay. True when new keys were put in force."""
        if self.key_file is None:
            return False
        signature = _signature(self.key_file)
        if signature == self._file_signature:
            return False
        self._file_signature = signature
        try:
            grants = read_key_file(self.key_file)
            if not grants:
                raise ValueError(f"{self.key_file}: no key hashes in the file")
        except (OSError, ValueError) as error:
            log.error("API keys not reloaded, the keys in force stay: %s", error)
            return False
        self.replace(grants)
        log.info("API keys reloaded from %s: %d keys", self.key_file, len(grants))
        return True

    async def follow(self, interval_s: float = KEY_FILE_POLL_S) -> None:
        """Re-read the key file whenever it changes (a task of the server's lifespan)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.reload_if_changed()
            except Exception:  # never let a bad read end the task: the keys in force stay
                log.exception("checking the API key file failed")

    def admit(self, key: str | None, notes: MutableMapping) -> KeyGrant:
        """The grant of a valid key within its rate, noted for the handlers and logs.

        Raises:
            ServingError: 401 for a missing or invalid key.
            RateLimited: the key is over its rate (429, with the seconds to wait).
        """
        grant = self.checker.check(key)
        if grant is None:
            raise ServingError(401, "missing or invalid API key", headers=CHALLENGE)
        notes[SCOPE_KEY], notes[SCOPE_KEY_ID], notes[SCOPE_GUARD] = grant, grant.id, self
        self.requests.labels(grant.id).inc()
        bucket = self.buckets.get(grant.digest)
        wait = bucket.take() if bucket is not None else 0.0
        if wait > 0:
            self.refused.labels(grant.id, "rate").inc()
            seconds = retry_after_seconds(wait)
            raise RateLimited(
                f"API key {grant.id!r} is over its rate ({grant.rate.describe()}); "
                f"retry after {seconds} s",
                retry_after_s=seconds,
            )
        return grant

    def authorize(self, grant: KeyGrant, model: str) -> None:
        """403 unless ``grant`` may call, see and get metadata of ``model``."""
        if not grant.may_call(model):
            self.refused.labels(grant.id, "model").inc()
            raise ServingError(403, f"API key {grant.id!r} may not use model {model[:128]!r}")

    def require_admin(self, grant: KeyGrant, action: str) -> None:
        """403 unless ``grant`` has the admin scope (actions that change what is served)."""
        if not grant.admin:
            self.refused.labels(grant.id, "admin").inc()
            raise ServingError(403, f"API key {grant.id!r} needs the admin scope to {action}")

    def check_path(self, grant: KeyGrant, path: str) -> None:
        """The scopes a REST path needs: its model, admin for the repository's load
        endpoints, every model (or admin) for ``/metrics``, which names them all."""
        match = MODEL_PATH.match(path)
        if match is not None:
            self.authorize(grant, match.group(1))
        if path.startswith(ADMIN_PREFIX):
            self.require_admin(grant, "load or unload models")
        if path == "/metrics" and grant.models is not None and not grant.admin:
            self.refused.labels(grant.id, "model").inc()
            raise ServingError(403, f"API key {grant.id!r} is limited to some models: no /metrics")


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is written or replaced (None: it cannot be read)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


@contextlib.asynccontextmanager
async def following_key_file(guard: KeyGuard) -> AsyncIterator[None]:
    """While the server runs, follow its key file (nothing to do without one)."""
    task = asyncio.create_task(guard.follow()) if guard.key_file is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def key_id(notes: MutableMapping) -> str | None:
    """The id of the API key a request came with (never the key); None without keys.

    ``notes`` is the request's ASGI scope (REST) or the gRPC call's notes.
    """
    return notes.get(SCOPE_KEY_ID)


def authorize_model(notes: MutableMapping, model: str) -> None:
    """403 unless the request's key may use ``model`` (nothing to check without keys).

    For the paths that name the model in their body (``POST /predict``); paths that name it
    in the URL are checked before the body is read.
    """
    grant, guard = notes.get(SCOPE_KEY), notes.get(SCOPE_GUARD)
    if grant is not None and guard is not None:
        guard.authorize(grant, model)


def visible_models(notes: MutableMapping, names: Iterable[str]) -> list[str]:
    """The models of ``names`` that the request's key may see."""
    grant = notes.get(SCOPE_KEY)
    return [name for name in names if grant is None or grant.may_call(name)]


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key in ``Authorization: Bearer`` or ``x-api-key``, if any."""
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


class ApiKeyMiddleware:
    """ASGI middleware: the key, its rate and the scopes its path needs, before the body is
    read; a JSON error (401, 429 with ``Retry-After``, 403) otherwise."""

    def __init__(self, app: ASGIApp, *, guard: KeyGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.guard.enabled
            or scope["path"] in OPEN_PATHS
            or scope["path"].startswith("/docs")
        ):
            await self.app(scope, receive, send)
            return
        try:
            grant = self.guard.admit(presented_key(dict(scope["headers"])), scope)
            self.guard.check_path(grant, scope["path"])
        except ServingError as error:
            response = FastJSONResponse(
                {"error": error.message}, status_code=error.status_code, headers=error.headers
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

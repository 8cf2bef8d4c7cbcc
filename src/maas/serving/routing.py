"""Live rollouts: route prod's requests between two versions, measure both, decide.

While a model's ``config.yaml`` holds a ``rollout:`` section (:mod:`maas.serving.rollout`),
a request that names no version nor label is routed by :meth:`Rollouts.route`:

- ``canary``: ``share`` % of them go to the candidate (drawn per request, or per caller
  when ``sticky``), the rest to prod. A candidate call that fails (an exception or a 5xx,
  not a 4xx) is answered by prod, so a bad candidate costs its callers latency, not errors.
- ``shadow``: prod answers every request; a copy goes to the candidate off the response
  path (at most ``MAX_SHADOW_IN_FLIGHT`` at a time, the rest are not mirrored), so its
  failures and slowness never reach the caller.

Both sides are measured (:class:`maas.serving.rollout.WindowStats` and Prometheus:
``maas_rollout_*``). When the window closes, or earlier when the candidate has failed more
than the window allows, :func:`maas.serving.rollout.analyse` decides; the decision applies
at once (in memory: every request goes to the winner) and is then made durable in the model
repository: ``rollouts/<id>.json`` (the decision, its reason and figures) and ``config.yaml``
pinned to the winner (the server's next poll reads it; ``maas models record`` copies the
decision into the registry). It is also logged as one JSON line on ``maas.rollout``. A
server that cannot write the repository keeps the decision in memory and logs the error.

A request pinned to a version or label (``/versions/N``, ``/labels/canary``) is never
re-routed nor counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from maas.serving import layout
from maas.serving.auth import presented_key
from maas.serving.errors import ServingError
from maas.serving.metrics import LATENCY_BUCKETS
from maas.serving.rollout import (
    PROMOTE,
    ROLL_BACK,
    Decision,
    RolloutSpec,
    WindowStats,
    analyse,
    early_failure,
    figures,
    window_closed,
)
from maas.serving.schemas import ERROR_RESPONSES

log = logging.getLogger("maas.rollout")

MAX_SHADOW_IN_FLIGHT = 64  # mirrored calls waiting for the candidate at most
BASELINE, CANARY, SHADOW = "baseline", "canary", "shadow"

# The request headers of the call being served (REST scope headers or gRPC metadata), for
# sticky routing: set by CallerMiddleware and the gRPC interceptor, read by route().
_caller: contextvars.ContextVar[Sequence[tuple[bytes, bytes]] | None] = contextvars.ContextVar(
    "maas_rollout_caller", default=None
)


def set_caller(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Note the current call's headers (lower-case names, as bytes) for sticky routing."""
    _caller.set(headers)


class CallerMiddleware:
    """ASGI middleware: note each HTTP request's headers for sticky routing."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            _caller.set(scope["headers"])
        await self.app(scope, receive, send)


def caller_identity(sticky: str) -> str | None:
    """What sticky routing hashes: the API key or a header's value (None: not sent)."""
    headers = _caller.get()
    if not sticky or headers is None:
        return None
    found = dict(headers)
    if sticky == "key":
        return presented_key(found)
    value = found.get(sticky.removeprefix("header:").lower().encode("latin-1"))
    return value.decode("latin-1") if value else None


def goes_to_candidate(spec: RolloutSpec) -> bool:
    """Whether this request is the candidate's share: a hash of the caller when sticky and
    known (the same caller always lands on the same side), else a random draw."""
    identity = caller_identity(spec.sticky)
    if identity is None:
        return random.random() * 100 < spec.share
    digest = hashlib.blake2b(f"{spec.id}\0{identity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < spec.share * 100


class RolloutMetrics:
    """The rollouts' Prometheus series, in the server's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "maas_rollout_requests_total",
            "Requests of a rollout by model, version, role (baseline, canary, shadow) and "
            "outcome (ok, error; a canary error was answered by the baseline)",
            ["model", "version", "role", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "maas_rollout_latency_seconds",
            "Model-call latency of a rollout's versions, by role",
            ["model", "version", "role"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.classes = Counter(
            "maas_rollout_predicted_class_total",
            "Texts by predicted class, per version and role of a rollout",
            ["model", "version", "role", "label"],
            registry=registry,
        )
        self.agreement = Counter(
            "maas_rollout_shadow_texts_total",
            "Shadowed texts by whether the candidate predicted prod's class (agree: yes/no)",
            ["model", "version", "agree"],
            registry=registry,
        )
        self.decisions = Counter(
            "maas_rollout_decisions_total",
            "Rollout decisions by model and outcome (promoted, rolled_back)",
            ["model", "outcome"],
            registry=registry,
        )
        self.active = Gauge(
            "maas_rollout_active",
            "A rollout in progress: its candidate's share of traffic in percent",
            ["model", "mode", "baseline", "candidate"],
            registry=registry,
        )


class LiveRollout:
    """One rollout in progress: its window's statistics and, once made, its decision."""

    def __init__(self, model: str, spec: RolloutSpec, decision: Decision | None = None):
        self.model = model
        self.spec = spec
        self.started = time.monotonic()
        self.stats = WindowStats()
        self.decision = decision
        self.shadows_in_flight = 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def winner(self) -> int | None:
        if self.decision is None:
            return None
        return self.spec.candidate if self.decision.winner_is_candidate else self.spec.baseline

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.spec.id,
            "mode": self.spec.mode,
            "baseline": self.spec.baseline,
            "candidate": self.spec.candidate,
            "share": self.spec.share,
            "decision": dataclasses.asdict(self.decision) if self.decision else None,
            "figures": figures(self.spec, self.stats, self.elapsed),
        }


@dataclasses.dataclass
class Route:
    """How one routed request is served: by which side, with which fallback or shadow."""

    rollouts: Rollouts
    live: LiveRollout
    role: str  # BASELINE or CANARY: the side answering
    fallback: Any = None  # the baseline's LoadedVersion when a canary call fails
    shadow: Any = None  # the candidate's LoadedVersion to mirror to

    async def run(
        self, call: Callable[[Any, list[str]], Awaitable[Any]], loaded: Any, texts: list[str]
    ) -> Any:
        """``call(loaded, texts)`` measured; on a canary failure, the baseline answers."""
        start = time.perf_counter()
        try:
            result = await call(loaded, texts)
        except Exception as error:
            if isinstance(error, ServingError) and error.status_code < 500:
                raise  # the request's own fault: the same on either side
            self.rollouts.record(self.live, loaded, self.role, time.perf_counter() - start)
            if self.fallback is None:
                raise
            log.debug(
                "canary %s version %d failed (%s); prod answers",
                loaded.model,
                loaded.version,
                error,
            )
            return await call(self.fallback, texts)
        self.rollouts.record(
            self.live, loaded, self.role, time.perf_counter() - start, result.class_ids
        )
        if self.shadow is not None:
            self.rollouts.mirror(self.live, self.shadow, texts, result.class_ids)
        return result


class Rollouts:
    """Every model's rollout in progress, for one server.

    Args:
        registry: the Prometheus registry of the server's metrics.
        root: the model repository, where decisions are written (None: not written).
        decides: False for a process that only routes and counts (a decision made elsewhere
            reaches it through ``config.yaml``).
    """

    def __init__(
        self, registry: CollectorRegistry, root: str | Path | None, *, decides: bool = True
    ):
        self.metrics = RolloutMetrics(registry)
        self.root = Path(root) if root is not None else None
        self.decides = decides
        self.live: dict[str, LiveRollout] = {}
        self._shadow_tasks: set[asyncio.Task] = set()

    # ---- routing (request path) -----------------------------------------------------------

    def route(self, model: str, spec: RolloutSpec, served: dict, status: dict) -> Any:
        """The version that answers a request naming none while ``spec`` is in progress,
        carrying its :class:`Route` (``LoadedVersion.route``)."""
        live = self._live(model, spec)
        baseline, candidate = served.get(spec.baseline), served.get(spec.candidate)
        if live.decision is None and candidate is None and self.decides:
            known = status.get(spec.candidate)
            if known is not None and known.state == "END" and known.error:
                self.decide(
                    live,
                    Decision(
                        ROLL_BACK,
                        f"candidate failed to load: {known.error}",
                        figures(spec, live.stats, live.elapsed),
                    ),
                )
        winner = live.winner()
        if winner is not None or baseline is None or candidate is None:
            # Decided, or one side is not serving: no split, the one that serves answers.
            chosen = served.get(winner) if winner is not None else None
            chosen = chosen or baseline or candidate
            if chosen is None:
                raise ServingError(503, f"model {model!r} has no version available")
            return chosen
        if spec.mode == SHADOW:
            return dataclasses.replace(
                baseline, route=Route(self, live, BASELINE, shadow=candidate)
            )
        if goes_to_candidate(spec):
            return dataclasses.replace(
                candidate, route=Route(self, live, CANARY, fallback=baseline)
            )
        return dataclasses.replace(baseline, route=Route(self, live, BASELINE))

    def _live(self, model: str, spec: RolloutSpec) -> LiveRollout:
        live = self.live.get(model)
        if live is None or live.spec.id != spec.id:
            live = LiveRollout(model, spec, self._recorded_decision(model, spec))
            self.live[model] = live
            self._refresh_active()
            if live.decision is None:
                log.info(
                    json.dumps({"event": "rollout_started", "model": model, **live.summary()})
                )
        return live

    def _refresh_active(self) -> None:
        """``maas_rollout_active``: one series per rollout still undecided."""
        self.metrics.active.clear()
        for live in self.live.values():
            if live.decision is None:
                spec = live.spec
                share = 100.0 if spec.mode == SHADOW else spec.share
                labels = (live.model, spec.mode, spec.baseline, spec.candidate)
                self.metrics.active.labels(*labels).set(share)

    def _recorded_decision(self, model: str, spec: RolloutSpec) -> Decision | None:
        """A decision already written for this rollout (by this server before a restart)."""
        if self.root is None:
            return None
        for record in layout.read_decisions(self.root / model):
            if record.get("id") == spec.id and record.get("outcome") in (PROMOTE, ROLL_BACK):
                return Decision(
                    record["outcome"], record.get("reason", ""), record.get("figures", {})
                )
        return None

    def record(
        self, live: LiveRollout, loaded: Any, role: str, seconds: float, class_ids: Any = None
    ) -> None:
        """Count one call of ``role`` (failed when ``class_ids`` is None)."""
        failed = class_ids is None
        side = live.stats.baseline if role == BASELINE else live.stats.candidate
        side.record(seconds, class_ids, failed=failed)
        version = str(loaded.version)
        self.metrics.calls.labels(live.model, version, role, "error" if failed else "ok").inc()
        if not failed:
            self.metrics.latency.labels(live.model, version, role).observe(seconds)
            ids, counts = np.unique(np.asarray(class_ids), return_counts=True)
            for class_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
                label = loaded.labels[class_id]
                self.metrics.classes.labels(live.model, version, role, label).inc(count)
        self.check(live)  # also prod's calls: a time window closes without canary traffic

    def mirror(self, live: LiveRollout, candidate: Any, texts: list[str], prod_ids: Any) -> None:
        """Send a copy of the request to the candidate, off the response path."""
        if live.shadows_in_flight >= MAX_SHADOW_IN_FLIGHT or live.decision is not None:
            return  # the candidate is behind: skip rather than pile up work
        live.shadows_in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._shadow_call(live, candidate, texts, np.asarray(prod_ids))
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_call(
        self, live: LiveRollout, candidate: Any, texts: list[str], prod_ids: np.ndarray
    ) -> None:
        start = time.perf_counter()
        try:
            probabilities = await candidate.predictor.predict(texts)
            class_ids = np.asarray(probabilities).argmax(axis=1)
        except Exception as error:  # the candidate's failure stays here
            log.debug(
                "shadow call to %s version %d failed: %s", live.model, candidate.version, error
            )
            class_ids = None
        finally:
            live.shadows_in_flight -= 1
        if class_ids is not None and len(class_ids) == len(prod_ids):
            agreed = int(np.sum(class_ids == prod_ids))
            live.stats.compared += len(prod_ids)
            live.stats.agreed += agreed
            version = str(candidate.version)
            self.metrics.agreement.labels(live.model, version, "yes").inc(agreed)
            self.metrics.agreement.labels(live.model, version, "no").inc(len(prod_ids) - agreed)
        self.record(live, candidate, SHADOW, time.perf_counter() - start, class_ids)

    # ---- deciding ---------------------------------------------------------------------------

    def check(self, live: LiveRollout) -> None:
        """Decide when the window has closed, or the candidate has already failed it."""
        if live.decision is not None or not self.decides:
            return
        if early_failure(live.spec, live.stats) or window_closed(
            live.spec, live.stats, live.elapsed
        ):
            self.decide(live, analyse(live.spec, live.stats, live.elapsed))

    def tick(self, repository: Any) -> None:
        """After each poll: close windows by time, notice failed loads, forget ended rollouts."""
        in_progress = {}
        for model in repository.model_names():
            config, _ = repository.config(model)
            if config.rollout is None:
                continue
            in_progress[model] = config.rollout
            served = repository.served(model)
            status = {s.version: s for s in repository.status(model)}
            with contextlib.suppress(ServingError):  # nothing served: the lookups say so
                self.route(model, config.rollout, served, status)
            self.check(self.live[model])
        self.forget_ended(set(in_progress))

    def forget_ended(self, in_progress: set[str]) -> None:
        """Drop the rollouts of models whose ``config.yaml`` no longer holds one."""
        for model in [m for m in self.live if m not in in_progress]:
            del self.live[model]
        self._refresh_active()

    def decide(self, live: LiveRollout, decision: Decision) -> None:
        """Apply ``decision`` now (in memory), then write it to the model repository."""
        if live.decision is not None:
            return
        live.decision = decision
        spec = live.spec
        self.metrics.decisions.labels(live.model, decision.outcome).inc()
        self._refresh_active()
        record = {
            "id": spec.id,
            "model": live.model,
            "mode": spec.mode,
            "baseline": spec.baseline,
            "candidate": spec.candidate,
            "stage": spec.stage,
            "winner": live.winner(),
            "outcome": decision.outcome,
            "reason": decision.reason,
            "figures": decision.figures,
            "registry": spec.registry,
            "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        level = logging.INFO if decision.outcome == PROMOTE else logging.WARNING
        log.log(level, json.dumps({"event": "rollout_decision", **record}))
        if self.root is not None:
            # Off the request path: a slow disk must not hold up the answer.
            threading.Thread(target=self._write, args=(live.model, record), daemon=True).start()

    def _write(self, model: str, record: dict[str, Any]) -> None:
        model_dir = self.root / model
        try:
            layout.write_decision(model_dir, record)
            current = layout.read_config(model_dir)
            rollout = current.rollout if current is not None else None
            if rollout is not None and rollout.id == record["id"]:  # not replaced meanwhile
                layout.pin_version(model_dir, record["winner"], label=record["stage"])
        except (OSError, ValueError) as error:
            log.error(
                "rollout %s of %s decided (%s) but not written to %s: %s; the "
                "decision holds in this server until config.yaml changes",
                record["id"],
                model,
                record["outcome"],
                model_dir,
                error,
            )

    def follow(self, model: str, spec: RolloutSpec, winner: int) -> None:
        """Apply a decision made in another process (the Ray engine's controller)."""
        live = self._live(model, spec)
        if live.decision is None:
            outcome = PROMOTE if winner == spec.candidate else ROLL_BACK
            live.decision = Decision(outcome, "decided by the controller", {})
            self._refresh_active()

    def reports(self) -> dict[str, WindowStats]:
        """``{rollout id: statistics}`` of every rollout in progress (what an ingress sends
        the controller)."""
        return {live.spec.id: live.stats for live in self.live.values() if live.decision is None}

    def status(self, model: str) -> dict[str, Any]:
        live = self.live.get(model)
        decisions = layout.read_decisions(self.root / model) if self.root is not None else []
        return {
            "model": model,
            "rollout": live.summary() if live is not None else None,
            "decisions": decisions[-10:],
        }


router = APIRouter(tags=["Rollouts"])


@router.get(
    "/v1/rollouts/{model}",
    responses=ERROR_RESPONSES,
    summary="A model's rollout: progress, figures, decisions",
)
async def rollout_status(model: str, request: Request) -> dict[str, Any]:
    state = request.app.state.maas
    state.repository.config(model)  # 404 for an unknown model
    rollouts = getattr(state.repository, "rollouts", None)
    if rollouts is None:
        return {"model": model, "rollout": None, "decisions": []}
    return rollouts.status(model)

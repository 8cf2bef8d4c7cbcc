"""A safe rollout's contract and its analysis: the ``rollout:`` section of ``config.yaml``.

A rollout serves a *candidate* version beside the *baseline* (the version holding the stage,
``prod``) and decides, over a window, whether the candidate takes all the traffic::

    version_policy: specific
    versions: [1000000, 1001000]
    labels: {prod: 1000000, canary: 1001000}
    rollout:
      id: classifier-1001000-20261205T174000Z   # names the decision record
      mode: canary          # canary: `share` % of prod's requests answered by the candidate
                            # shadow: every request mirrored to it, answered by prod only
      baseline: 1000000
      candidate: 1001000
      share: 10             # percent, 0 to 100 (canary mode)
      sticky: key           # "" (each request drawn), key (hash of the API key) or
                            # header:NAME (hash of that request header)
      stage: prod           # the label the winner gets
      window: {requests: 200, seconds: 120}   # whichever comes first (candidate requests)
      min_requests: 50      # fewer candidate requests when the window closes: rolled back
      bounds:
        max_error_rate: 0.01      # candidate error rate minus prod's
        max_p99_ratio: 2.0        # candidate p99 latency over prod's ...
        p99_slack_ms: 5.0         # ... or at most this much above it, whichever is more
        max_class_shift: 0.4      # total variation distance of the predicted-class mixes
        min_agreement: 0.9        # shadow: share of texts where both predict the same class
      registry: {artifact: classifier, baseline: v1.0.0, candidate: v1.1.0}  # passed through

This module is pure (no I/O): :class:`RolloutSpec` validates the section,
:class:`WindowStats` counts what each side did, :func:`analyse` compares them. The live
routing and the decisions are :mod:`maas.serving.routing`'s.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("canary", "shadow")
PROMOTE, ROLL_BACK = "promoted", "rolled_back"
STICKY = re.compile(r"^(|key|header:[A-Za-z0-9-]{1,64})$")
ROLLOUT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
LATENCY_SAMPLES = 20_000  # latencies kept per side and window (for the p99), at most


@dataclass(frozen=True)
class Bounds:
    """How far the candidate may fall behind prod and still be promoted."""

    max_error_rate: float = 0.01
    max_p99_ratio: float = 2.0
    p99_slack_ms: float = 5.0
    max_class_shift: float = 0.4
    min_agreement: float = 0.9

    def __post_init__(self) -> None:
        for name in ("max_error_rate", "max_class_shift", "min_agreement"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"bounds.{name} must be between 0 and 1")
        if self.max_p99_ratio < 1 or self.p99_slack_ms < 0:
            raise ValueError("bounds.max_p99_ratio must be >= 1 and p99_slack_ms >= 0")


@dataclass(frozen=True)
class RolloutSpec:
    """The ``rollout:`` section of a model's ``config.yaml`` (see the module's docstring)."""

    id: str
    baseline: int
    candidate: int
    mode: str = "canary"
    share: float = 10.0
    sticky: str = ""
    stage: str = "prod"
    window_requests: int = 200
    window_seconds: float = 120.0
    min_requests: int = 50
    bounds: Bounds = field(default_factory=Bounds)
    registry: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, *, where: str, versions: tuple[int, ...]) -> RolloutSpec:
        """Validate the section; ``ValueError`` names the bad key. ``versions``: the served
        versions of a ``specific`` policy, which must hold both sides."""
        where = f"{where}: rollout"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a mapping")
        known = {f for f in cls.__dataclass_fields__} - {"window_requests", "window_seconds"}
        unknown = sorted(set(raw) - known - {"window"})
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}")
        for key in ("id", "baseline", "candidate"):
            if key not in raw:
                raise ValueError(f"{where}: {key} is required")
        if not isinstance(raw["id"], str) or not ROLLOUT_ID.match(raw["id"]):
            raise ValueError(f"{where}: id must match {ROLLOUT_ID.pattern}")
        baseline, candidate = raw["baseline"], raw["candidate"]
        if not (_is_count(baseline) and _is_count(candidate)) or baseline == candidate:
            raise ValueError(f"{where}: baseline and candidate must be two different versions")
        if baseline not in versions or candidate not in versions:
            raise ValueError(
                f"{where}: versions {baseline} and {candidate} must both be in `versions` "
                "(version_policy: specific)"
            )
        mode = raw.get("mode", "canary")
        if mode not in MODES:
            raise ValueError(f"{where}: mode must be one of {MODES}, got {mode!r}")
        share = raw.get("share", 100.0 if mode == "shadow" else 10.0)
        check_share(share, where=f"{where}: share")
        sticky = raw.get("sticky") or ""
        if not isinstance(sticky, str) or not STICKY.match(sticky):
            raise ValueError(f"{where}: sticky must be '', 'key' or 'header:NAME'")
        stage = raw.get("stage", "prod")
        if not isinstance(stage, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", stage):
            raise ValueError(f"{where}: stage must be a label name")
        window = raw.get("window") or {}
        if not isinstance(window, dict) or set(window) - {"requests", "seconds"}:
            raise ValueError(f"{where}: window must be a mapping of requests and seconds")
        requests, seconds = window.get("requests", 200), window.get("seconds", 120.0)
        min_requests = raw.get("min_requests", min(50, requests) if _is_count(requests) else 0)
        if not (_is_count(requests) and requests >= 1 and _is_number(seconds) and seconds > 0):
            raise ValueError(f"{where}: window.requests must be >= 1 and window.seconds > 0")
        if not _is_count(min_requests) or min_requests > requests:
            raise ValueError(f"{where}: min_requests must be between 0 and window.requests")
        bounds = raw.get("bounds") or {}
        known_bounds = set(Bounds.__dataclass_fields__)
        if not isinstance(bounds, dict) or set(bounds) - known_bounds:
            raise ValueError(f"{where}: bounds must be a mapping of {sorted(known_bounds)}")
        if not all(_is_number(value) for value in bounds.values()):
            raise ValueError(f"{where}: bounds must be numbers")
        registry = raw.get("registry") or {}
        if not isinstance(registry, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in registry.items()
        ):
            raise ValueError(f"{where}: registry must map names to strings")
        try:
            parsed_bounds = Bounds(**{k: float(v) for k, v in bounds.items()})
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        return cls(
            id=raw["id"],
            baseline=baseline,
            candidate=candidate,
            mode=mode,
            share=float(share),
            sticky=sticky,
            stage=stage,
            window_requests=requests,
            window_seconds=float(seconds),
            min_requests=min_requests,
            bounds=parsed_bounds,
            registry=dict(registry),
        )

    def to_yaml(self) -> dict[str, Any]:
        """The section as :meth:`parse` reads it back."""
        raw = asdict(self)
        raw["window"] = {
            "requests": raw.pop("window_requests"),
            "seconds": raw.pop("window_seconds"),
        }
        if not raw["registry"]:
            del raw["registry"]
        return raw


def check_share(share: Any, *, where: str = "--canary") -> float:
    """A canary share: a percentage from 0 to 100, else ``ValueError``."""
    if not _is_number(share) or not 0 <= share <= 100:
        raise ValueError(f"{where} must be a percentage between 0 and 100, got {share!r}")
    return float(share)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SideStats:
    """What one side (prod or the candidate) did during the window."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, successful calls
    classes: Counter = field(default_factory=Counter)  # predicted class -> texts

    def record(self, seconds: float, class_ids: Any = None, *, failed: bool = False) -> None:
        self.requests += 1
        if failed:
            self.errors += 1
            return
        if len(self.latencies) < LATENCY_SAMPLES:
            self.latencies.append(seconds)
        if class_ids is not None:
            self.classes.update(int(c) for c in class_ids)

    def merge(self, other: SideStats) -> None:
        """Add another process's counts (the Ray engine's ingresses report theirs)."""
        self.requests += other.requests
        self.errors += other.errors
        room = LATENCY_SAMPLES - len(self.latencies)
        self.latencies.extend(other.latencies[: max(0, room)])
        self.classes.update(other.classes)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99(self) -> float:
        """The 99th percentile latency in seconds (nearest rank; 0 with no samples)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass
class WindowStats:
    """Both sides of a rollout's window, and, in shadow mode, how often they agreed."""

    baseline: SideStats = field(default_factory=SideStats)
    candidate: SideStats = field(default_factory=SideStats)
    compared: int = 0  # texts answered by both (shadow)
    agreed: int = 0

    @classmethod
    def merged(cls, parts: list[WindowStats]) -> WindowStats:
        """The sum of several processes' statistics of one window."""
        total = cls()
        for part in parts:
            total.baseline.merge(part.baseline)
            total.candidate.merge(part.candidate)
            total.compared += part.compared
            total.agreed += part.agreed
        return total


@dataclass(frozen=True)
class Decision:
    outcome: str  # PROMOTE or ROLL_BACK
    reason: str
    figures: dict[str, Any]

    @property
    def winner_is_candidate(self) -> bool:
        return self.outcome == PROMOTE


def class_shift(a: Counter, b: Counter) -> float:
    """Total variation distance between two class mixes (0: the same, 1: disjoint)."""
    total_a, total_b = sum(a.values()), sum(b.values())
    if not total_a or not total_b:
        return 0.0
    return 0.5 * sum(abs(a[c] / total_a - b[c] / total_b) for c in set(a) | set(b))


def figures(spec: RolloutSpec, stats: WindowStats, elapsed_s: float) -> dict[str, Any]:
    """The numbers a decision rests on (also what the status shows)."""
    base, cand = stats.baseline, stats.candidate
    result = {
        "window_seconds": round(elapsed_s, 3),
        "baseline_requests": base.requests,
        "candidate_requests": cand.requests,
        "baseline_error_rate": round(base.error_rate, 5),
        "candidate_error_rate": round(cand.error_rate, 5),
        "baseline_p99_ms": round(base.p99() * 1000, 3),
        "candidate_p99_ms": round(cand.p99() * 1000, 3),
        "class_shift": round(class_shift(base.classes, cand.classes), 4),
    }
    if spec.mode == "shadow":
        result["agreement"] = round(stats.agreed / stats.compared, 4) if stats.compared else None
    return result


def window_closed(spec: RolloutSpec, stats: WindowStats, elapsed_s: float) -> bool:
    return stats.candidate.requests >= spec.window_requests or elapsed_s >= spec.window_seconds


def early_failure(spec: RolloutSpec, stats: WindowStats) -> str | None:
    """A reason to roll back before the window closes: the candidate has already failed
    more requests than the whole window allows, whatever the rest does."""
    allowed = (spec.bounds.max_error_rate + stats.baseline.error_rate) * spec.window_requests
    if stats.candidate.requests >= spec.min_requests and stats.candidate.errors > allowed:
        return (
            f"candidate failed {stats.candidate.errors} of {stats.candidate.requests} "
            f"requests, more than the window allows ({allowed:.1f})"
        )
    return None


def analyse(spec: RolloutSpec, stats: WindowStats, elapsed_s: float) -> Decision:
    """Promote when the candidate is within every bound, else roll back (with the reason)."""
    numbers = figures(spec, stats, elapsed_s)
    bounds, base, cand = spec.bounds, stats.baseline, stats.candidate
    problems = []
    early = early_failure(spec, stats)
    if early:
        problems.append(early)
    if cand.requests < spec.min_requests:
        problems.append(
            f"only {cand.requests} candidate requests in {elapsed_s:.0f} s "
            f"(at least {spec.min_requests} needed to judge)"
        )
    else:
        if cand.error_rate - base.error_rate > bounds.max_error_rate:
            problems.append(
                f"error rate {cand.error_rate:.2%} vs prod {base.error_rate:.2%} "
                f"(at most +{bounds.max_error_rate:.2%})"
            )
        limit = max(bounds.max_p99_ratio * base.p99(), base.p99() + bounds.p99_slack_ms / 1000)
        if cand.latencies and base.latencies and cand.p99() > limit:
            problems.append(
                f"p99 latency {cand.p99() * 1000:.1f} ms vs prod {base.p99() * 1000:.1f} ms "
                f"(at most {limit * 1000:.1f} ms)"
            )
        shift = class_shift(base.classes, cand.classes)
        if shift > bounds.max_class_shift:
            problems.append(
                f"predicted-class mix shifted by {shift:.2f} (total variation; at most "
                f"{bounds.max_class_shift:.2f})"
            )
        if spec.mode == "shadow" and stats.compared:
            agreement = stats.agreed / stats.compared
            if agreement < bounds.min_agreement:
                problems.append(
                    f"agreement with prod {agreement:.2%} (at least {bounds.min_agreement:.0%})"
                )
    if problems:
        return Decision(ROLL_BACK, "; ".join(problems), numbers)
    return Decision(PROMOTE, "within every bound", numbers)

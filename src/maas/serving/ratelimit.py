"""Per-key request rates: one token bucket per API key that has a ``rate=`` in the key file.

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens a second; each request
takes one. A request that finds the bucket empty is refused at once with the seconds until
the next token (the ``Retry-After`` of the 429), so a key sending steadily at its rate is
never refused and one sending faster gets exactly its rate on average. The buckets live in
the server process: with the Ray engine every node's front door has its own, so a key's rate
holds per node (a client whose connections reach two nodes may get twice the rate).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    """Requests per second on average, and how many may come at once after a pause."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and math.isfinite(self.per_second)):
            raise ValueError(f"a rate must be a positive number per second, got {self.per_second}")
        if self.burst < 1:
            raise ValueError(f"a burst must be at least 1, got {self.burst}")

    def describe(self) -> str:
        return f"{self.per_second:g}/s, burst {self.burst}"


class TokenBucket:
    """One key's bucket; :meth:`take` is safe from several threads."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = float(rate.burst)  # a new key may send its burst at once
        self.updated = clock()
        self.lock = threading.Lock()

    def take(self) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is one."""
        with self.lock:
            now = self.clock()
            elapsed = max(0.0, now - self.updated)
            self.tokens = min(float(self.rate.burst), self.tokens + elapsed * self.rate.per_second)
            self.updated = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate.per_second


def retry_after_seconds(wait: float) -> int:
    """``Retry-After`` is whole seconds: round up, and never 0 (that would invite a spin)."""
    return max(1, math.ceil(wait))

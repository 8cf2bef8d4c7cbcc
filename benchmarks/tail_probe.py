"""``maas serve`` with probes for where a slow request's time goes (for ``benchmarks/tail.py``).

``python benchmarks/tail_probe.py serve ARGS...`` runs ``maas serve`` in this process and
records, until it exits, every garbage collection's pause (by generation) and the event
loop's lag (how late a 5 ms sleep wakes up: the time the loop was busy with something else),
into the JSON file ``$MAAS_PROBE_OUT``. ``MAAS_PROBE_NO_ACCESS_LOG=1`` turns the access log
off; ``MAAS_PROBE_GC_UNFREEZE=1`` unfreezes what the server froze once the models were
loaded (:func:`maas.serving.app.freeze_heap`), so that collections walk it all again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time

import numpy as np

from maas import cli
from maas.serving import app as app_module

PAUSES: list[tuple[int, float]] = []
LAGS: list[float] = []
_started: list[float] = [0.0]


def on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        PAUSES.append((info["generation"], time.perf_counter() - _started[0]))


async def watch_loop(interval: float = 0.005) -> None:
    while True:
        start = time.perf_counter()
        await asyncio.sleep(interval)
        LAGS.append(time.perf_counter() - start - interval)


def probed(make_lifespan):
    def make(config, state, checker):
        inner = make_lifespan(config, state, checker)

        @contextlib.asynccontextmanager
        async def lifespan(app):
            async with inner(app):
                while not state.repository.polls:  # loading in the background
                    await asyncio.sleep(0.1)
                await asyncio.sleep(2.0)  # the server freezes its heap just after loading
                if os.environ.get("MAAS_PROBE_GC_UNFREEZE") == "1":
                    gc.unfreeze()  # as before the server froze its heap after loading
                PAUSES.clear()
                task = asyncio.create_task(watch_loop())
                yield
                task.cancel()

        return lifespan

    return make


def summary() -> dict:
    lags = np.array(LAGS or [0.0]) * 1000
    by_generation = {}
    for generation in (0, 1, 2):
        pauses = np.array([s for g, s in PAUSES if g == generation] or [0.0]) * 1000
        by_generation[f"gen{generation}"] = {
            "count": sum(1 for g, _ in PAUSES if g == generation),
            "max_ms": round(float(pauses.max()), 2),
            "total_ms": round(float(pauses.sum()), 1),
        }
    return {
        "loop_lag_ms": {
            "p50": round(float(np.percentile(lags, 50)), 2),
            "p99": round(float(np.percentile(lags, 99)), 2),
            "max": round(float(lags.max()), 1),
            "over_20ms": int((lags > 20).sum()),
            "samples": int(lags.size),
        },
        "gc": by_generation,
    }


def write_summary() -> None:
    path = os.environ.get("MAAS_PROBE_OUT")
    if path:
        with open(path, "w") as handle:
            json.dump(summary(), handle)


def on_term(signum, frame) -> None:
    # uvicorn shuts down gracefully on SIGTERM, then raises it again with the handler it
    # found (this one): without it the process would end by the signal, skipping atexit.
    sys.exit(0)


if __name__ == "__main__":
    gc.callbacks.append(on_gc)
    atexit.register(write_summary)
    signal.signal(signal.SIGTERM, on_term)
    app_module.make_lifespan = probed(app_module.make_lifespan)
    if os.environ.get("MAAS_PROBE_NO_ACCESS_LOG") == "1":
        logging.getLogger("maas.access").setLevel(logging.WARNING)
    sys.exit(cli.main(sys.argv[1:]))

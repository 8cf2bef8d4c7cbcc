"""Dynamic batching: concurrent requests to one model version run as one batch.

A model runs a batch of 32 texts in little more time than one text, so under load the
server answers many more requests per second when it coalesces them, as TensorFlow
Serving's batching does. :class:`DynamicBatcher` queues each request's texts; one worker
task takes requests from the queue until the batch holds ``max_batch_size`` texts or the
oldest request has waited ``max_wait_s``, runs the model once in its own thread (so the
event loop keeps accepting requests meanwhile) and hands each request its rows.
:class:`AwaitingBatcher` coalesces the same way in front of an ``async`` call (the Ray
ingress: one call to a replica per batch, not one per request), with several batches in
flight at once. :class:`DirectPredictor` is the same interface without batching.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from maas.serving.errors import VersionUnloaded

log = logging.getLogger(__name__)

PredictFn = Callable[[Sequence[str]], np.ndarray]
Observer = Callable[[int, float], None]  # (texts in the batch, seconds the model took)


class DirectPredictor:
    """Runs every request on its own, in a worker thread."""

    def __init__(self, predict: PredictFn, *, observe: Observer | None = None) -> None:
        self._predict = predict
        self._observe = observe

    async def predict(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self._timed, list(texts))

    def _timed(self, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        result = self._predict(texts)
        if self._observe is not None:
            self._observe(len(texts), time.perf_counter() - start)
        return result

    async def close(self) -> None:
        return None


class Batcher:
    """Coalesces concurrent requests into batches of at most ``max_batch_size`` texts.

    A request with more texts than ``max_batch_size`` runs as a batch of its own. Nothing
    here touches the event loop before the first request, so a batcher may be built in a
    worker thread (where the repository loads models). Subclasses say how a batch runs
    (:meth:`_call`) and whether batches overlap (:meth:`_dispatch`).

    Args:
        max_batch_size: texts per batch at most.
        max_wait_s: how long the oldest queued request may wait for the batch to fill.
        observe: called after each batch with its size and the seconds it took.
    """

    def __init__(
        self, *, max_batch_size: int, max_wait_s: float, observe: Observer | None = None
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._observe = observe
        self._queue: collections.deque[tuple[list[str], asyncio.Future, float]] = (
            collections.deque()
        )
        self._queued_texts = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False

    async def predict(self, texts: Sequence[str]) -> np.ndarray:
        """The probabilities for ``texts``, computed in some batch."""
        if self._closed:
            raise VersionUnloaded("this model version has been unloaded")
        loop = asyncio.get_running_loop()
        if self._arrived is None:
            self._arrived = asyncio.Event()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="maas-batcher")
        future = loop.create_future()
        self._queue.append((list(texts), future, time.monotonic()))
        self._queued_texts += len(texts)
        self._arrived.set()
        return await future

    async def close(self) -> None:
        """Finish the queued requests, then stop the worker."""
        self._closed = True
        if self._worker is not None:
            if self._arrived is not None:
                self._arrived.set()
            await self._worker

    async def _run(self) -> None:
        assert self._arrived is not None
        while True:
            if not self._queue:
                if self._closed:
                    await self._drain()
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_batch()
            batch = self._take_batch()
            if batch:
                await self._dispatch(batch)

    async def _dispatch(self, batch: list[tuple[list[str], asyncio.Future]]) -> None:
        """Run one batch (here: to its end, one after the other)."""
        await self._run_batch(batch)

    async def _drain(self) -> None:
        """Wait for the batches still running (none here: each ran to its end)."""

    async def _call(self, texts: list[str]) -> np.ndarray:
        """The model on one batch."""
        raise NotImplementedError

    async def _wait_for_batch(self) -> None:
        """Wait until the batch is full, the oldest request's wait is over, or closing."""
        assert self._arrived is not None
        deadline = self._queue[0][2] + self.max_wait_s
        while self._queued_texts < self.max_batch_size and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[tuple[list[str], asyncio.Future]]:
        batch: list[tuple[list[str], asyncio.Future]] = []
        size = 0
        while self._queue:
            texts, future, _ = self._queue[0]
            if batch and size + len(texts) > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_texts -= len(texts)
            if future.done():  # the client went away: skip its texts
                continue
            batch.append((texts, future))
            size += len(texts)
        return batch

    async def _run_batch(self, batch: list[tuple[list[str], asyncio.Future]]) -> None:
        texts = [text for request_texts, _ in batch for text in request_texts]
        start = time.perf_counter()
        try:
            probabilities = await self._call(texts)
        except Exception as error:  # the model failed: every request of the batch hears it
            log.exception("batch of %d texts failed", len(texts))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        if self._observe is not None:
            self._observe(len(texts), time.perf_counter() - start)
        offset = 0
        for request_texts, future in batch:
            rows = probabilities[offset : offset + len(request_texts)]
            offset += len(request_texts)
            if not future.done():
                future.set_result(rows)


class DynamicBatcher(Batcher):
    """A :class:`Batcher` that runs the model in a thread of its own, one batch at a time.

    Args:
        predict: the model, texts -> probabilities (called in the batcher's own thread).
        max_batch_size: texts per batch at most.
        max_wait_s: how long the oldest queued request may wait for the batch to fill.
        observe: called after each batch with its size and the model's time.
    """

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_wait_s: float,
        observe: Observer | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, max_wait_s=max_wait_s, observe=observe)
        self._predict = predict
        # One thread per model version: batches of one version run one after the other.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="maas-batch"
        )

    async def _call(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._predict, texts)

    async def close(self) -> None:
        """Finish the queued requests, then stop the worker and its thread."""
        await super().close()
        self._executor.shutdown(wait=False)


class AwaitingBatcher(Batcher):
    """A :class:`DynamicBatcher` in front of an ``async`` call, ``max_in_flight`` batches at once.

    The batch forms as in :class:`DynamicBatcher`; the call is awaited on the event loop (no
    thread), and the next batch forms while earlier ones are still out, so that several
    replicas behind one caller work at the same time.

    Args:
        call: the batch's texts -> probabilities (a remote call, say).
        max_in_flight: batches awaiting their answers at most.
    """

    def __init__(
        self,
        call: Callable[[list[str]], Awaitable[np.ndarray]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_in_flight: int = 8,
        observe: Observer | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        super().__init__(max_batch_size=max_batch_size, max_wait_s=max_wait_s, observe=observe)
        self._remote = call
        self.max_in_flight = max_in_flight
        self._running: set[asyncio.Task] = set()
        self._slot_freed: asyncio.Event | None = None

    async def _call(self, texts: list[str]) -> np.ndarray:
        return await self._remote(texts)

    async def _dispatch(self, batch: list[tuple[list[str], asyncio.Future]]) -> None:
        if self._slot_freed is None:
            self._slot_freed = asyncio.Event()
        while len(self._running) >= self.max_in_flight:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def _drain(self) -> None:
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

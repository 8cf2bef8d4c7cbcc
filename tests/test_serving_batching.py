"""Dynamic batching: concurrent requests coalesce, within the size and wait limits."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from maas.serving.batching import AwaitingBatcher, DirectPredictor, DynamicBatcher
from maas.serving.errors import VersionUnloaded


class FakeModel:
    """Texts -> one row per text whose first column is the text's length; records batches."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, texts):
        self.threads.add(threading.current_thread().name)
        if self.fail_on in texts:
            raise ValueError("model failed")
        time.sleep(self.delay)
        self.batches.append(len(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    model = FakeModel(delay=0.02)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.05)
        texts = [["a" * i] for i in range(1, 21)] + [["x", "yy", "zzz"]]
        results = await asyncio.gather(*(batcher.predict(t) for t in texts))
        await batcher.close()
        return texts, results

    texts, results = run(scenario())
    for request, rows in zip(texts, results, strict=True):
        assert rows[:, 0].tolist() == [len(t) for t in request]  # each gets its own rows
    assert sum(model.batches) == 23
    assert max(model.batches) <= 8
    assert len(model.batches) < 21  # requests were coalesced
    assert model.threads and all(name.startswith("maas-batch") for name in model.threads)


def test_a_lone_request_waits_at_most_max_wait():
    model = FakeModel()

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=64, max_wait_s=0.05)
        start = time.perf_counter()
        await batcher.predict(["only one"])
        elapsed = time.perf_counter() - start
        await batcher.close()
        return elapsed

    elapsed = run(scenario())
    assert 0.04 <= elapsed < 1.0
    assert model.batches == [1]


def test_a_request_larger_than_the_batch_runs_alone():
    model = FakeModel()

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=4, max_wait_s=0.01)
        big, small = await asyncio.gather(batcher.predict(["a"] * 10), batcher.predict(["b"]))
        await batcher.close()
        return big, small

    big, small = run(scenario())
    assert big.shape == (10, 2) and small.shape == (1, 2)
    assert sorted(model.batches) == [1, 10]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    model = FakeModel(fail_on="boom")

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.02)
        outcomes = await asyncio.gather(
            batcher.predict(["boom"]), batcher.predict(["fine"]), return_exceptions=True
        )
        after = await batcher.predict(["later"])
        await batcher.close()
        return outcomes, after

    outcomes, after = run(scenario())
    assert all(isinstance(o, ValueError) for o in outcomes)  # same batch, same failure
    assert after.shape == (1, 2)


def test_close_finishes_queued_requests_then_refuses_new_ones():
    model = FakeModel(delay=0.05)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=2, max_wait_s=0.5)
        pending = [asyncio.ensure_future(batcher.predict([str(i)])) for i in range(5)]
        await asyncio.sleep(0)  # let them queue
        await batcher.close()
        done = [task.result() for task in pending]
        with pytest.raises(VersionUnloaded):
            await batcher.predict(["too late"])
        return done

    done = run(scenario())
    assert len(done) == 5 and all(rows.shape == (1, 2) for rows in done)


def test_a_cancelled_request_is_skipped():
    model = FakeModel(delay=0.01)

    async def scenario():
        batcher = DynamicBatcher(model, max_batch_size=8, max_wait_s=0.1)
        gone = asyncio.ensure_future(batcher.predict(["gone"]))
        kept = asyncio.ensure_future(batcher.predict(["kept", "too"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        rows = await kept
        await batcher.close()
        return rows

    rows = run(scenario())
    assert rows.shape == (2, 2)
    assert model.batches == [2]


def test_direct_predictor_and_observer():
    model = FakeModel()
    seen = []

    async def scenario():
        predictor = DirectPredictor(model, observe=lambda n, s: seen.append(n))
        rows = await predictor.predict(["a", "bb"])
        await predictor.close()
        return rows

    assert run(scenario()).shape == (2, 2)
    assert seen == [2]


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0, "max_wait_s": 0.1},
                                    {"max_batch_size": 4, "max_wait_s": -1}])  # fmt: skip
def test_bad_batcher_arguments(kwargs):
    with pytest.raises(ValueError):
        DynamicBatcher(FakeModel(), **kwargs)


def test_an_awaiting_batcher_makes_one_call_per_batch_several_at_once():
    calls: list[int] = []
    in_flight, most = [0], [0]

    async def remote(texts):  # a replica: 50 ms a call, whatever its size
        calls.append(len(texts))
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await asyncio.sleep(0.05)
        in_flight[0] -= 1
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    async def scenario():
        batcher = AwaitingBatcher(remote, max_batch_size=4, max_wait_s=0.01, max_in_flight=3)
        texts = [["a" * i] for i in range(1, 25)]
        results = await asyncio.gather(*(batcher.predict(t) for t in texts))
        await batcher.close()
        return texts, results

    texts, results = run(scenario())
    for request, rows in zip(texts, results, strict=True):
        assert rows[:, 0].tolist() == [len(t) for t in request]
    assert sum(calls) == 24 and max(calls) <= 4 and len(calls) <= 8  # one call per batch
    assert most[0] == 3  # batches overlap, up to the bound

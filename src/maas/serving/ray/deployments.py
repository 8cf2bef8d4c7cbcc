"""The Ray Serve deployments that hold models: one model version, and an ensemble of them.

A :class:`ModelVersion` replica loads one artifact folder with :func:`maas.runtime.load_runtime`
(verified against its provenance), warms it, and answers ``predict(texts)`` through the same
:class:`maas.serving.batching.DynamicBatcher` as the single-process server, so concurrent
calls that reach one replica run as one batch. An :class:`Ensemble` replica sends each call to
its member deployments at once and averages their probabilities. Both are plain classes:
:mod:`maas.serving.ray.engine` turns them into deployments with the options of each model.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from maas.runtime import load_runtime
from maas.serving import faults
from maas.serving.batching import DirectPredictor, DynamicBatcher
from maas.serving.repository import WARMUP_TEXT

log = logging.getLogger(__name__)


def replica_info(labels: Sequence[str], kind: str) -> dict[str, Any]:
    """What the controller and the ingress need to know of a replica, and where it runs."""
    import ray

    context = ray.get_runtime_context()
    return {
        "labels": list(labels),
        "kind": kind,
        "pid": os.getpid(),
        "node_id": context.get_node_id(),
    }


class ModelVersion:
    """One model version's runtime behind a dynamic batcher (a Ray Serve replica).

    Args:
        folder: the artifact folder (the same path on every node).
        max_batch_size: texts per model call at most; 0 runs every call on its own.
        batch_timeout_s: the longest a call waits for its batch to fill.
    """

    def __init__(self, folder: str, max_batch_size: int, batch_timeout_s: float) -> None:
        self.runtime = faults.wrap(load_runtime(folder, verify=True), folder)
        self.runtime.predict([WARMUP_TEXT] * max(1, max_batch_size))
        if max_batch_size > 0:
            self.predictor = DynamicBatcher(
                self.runtime.predict, max_batch_size=max_batch_size, max_wait_s=batch_timeout_s
            )
        else:
            self.predictor = DirectPredictor(self.runtime.predict)
        log.info("replica %d serves %s (%s)", os.getpid(), folder, self.runtime.kind)

    async def predict(self, texts: list[str]) -> np.ndarray:
        return await self.predictor.predict(texts)

    def info(self) -> dict[str, Any]:
        return replica_info(self.runtime.labels, self.runtime.kind)


class Ensemble:
    """Averages the probabilities of member deployments, called in parallel.

    Args:
        members: handles of the members' deployments (bound deployments, resolved by Ray).
    """

    def __init__(self, *members: Any) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = members

    async def predict(self, texts: list[str]) -> np.ndarray:
        results = await asyncio.gather(*(member.predict.remote(texts) for member in self.members))
        return np.mean(np.stack([np.asarray(r, dtype=np.float32) for r in results]), axis=0)

    async def info(self) -> dict[str, Any]:
        """The members' classes (the same for all, or an error) and where this replica runs."""
        infos = await asyncio.gather(*(member.info.remote() for member in self.members))
        labels = {tuple(info["labels"]) for info in infos}
        if len(labels) != 1:
            raise ValueError("ensemble members must have the same classes in the same order")
        return replica_info(infos[0]["labels"], "ensemble")

"""What every request handler shares: the repository, the limits, the metrics, the model call.

:func:`predict_texts` is the one path from texts to predictions for every protocol (REST
through :func:`classify`, gRPC directly): it
notes which version serves the request (metrics, access log), admits it to the model's
bounded queue (or refuses it at once, counted in ``maas_requests_shed_total``), runs the
texts through that version's predictor (a batcher or a direct call) and returns the
probabilities with the argmax class of each text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from starlette.requests import Request

from maas.serving.errors import Overloaded, ServingError, VersionUnloaded
from maas.serving.limits import Limits, QueueLimit
from maas.serving.metrics import Metrics, note_model
from maas.serving.repository import LoadedVersion, ServedModels

if TYPE_CHECKING:
    from maas.serving.tap import TrafficTap

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "texts"
OUTPUT_NAMES = ("probabilities", "class_ids", "labels")  # as the SavedModel's signature
PLATFORMS = {
    "saved_model": "tensorflow_savedmodel",
    "tflite": "tensorflow_lite",
    "onnx": "onnxruntime_onnx",
}


def select_outputs(names: list[str], known: Sequence[str]) -> list[str]:
    """The outputs a request asks for (all of ``known`` when it names none); 400 for an
    unknown name, listing ``known`` in the binding's order."""
    if not names:
        return list(known)
    for name in names:
        if name not in known:
            raise ServingError(400, f"unknown output {name[:64]!r}; the outputs are {list(known)}")
    return names


@dataclass
class ServerState:
    repository: ServedModels  # the data plane: local (ModelRepository) or Ray's
    limits: Limits
    metrics: Metrics
    default_model: str | None  # the seed API's model when a request names none
    queue: QueueLimit = field(default_factory=QueueLimit)  # requests waiting, per model
    # Re-read the repository now (the local engine); None: the engine follows it by itself.
    reload: Callable[[], Awaitable[None]] | None = None
    tap: TrafficTap | None = None  # the payload log and drift (maas.serving.tap), when on


@dataclass(frozen=True)
class Predictions:
    probabilities: np.ndarray  # (n, classes), float32
    class_ids: np.ndarray  # (n,), int
    labels: list[str]  # (n,) the class names
    version: int = -1  # the version that answered (during a rollout: maybe not the resolved)

    def column(self, name: str) -> list:
        if name == "probabilities":
            return self.probabilities.tolist()
        if name == "class_ids":
            return self.class_ids.tolist()
        return list(self.labels)


def server_state(request: Request) -> ServerState:
    return request.app.state.maas


def is_ready(repository: ServedModels) -> bool:
    """Readiness, for every protocol: polled once, and every model has a version serving."""
    names = repository.model_names()
    waiting = [name for name in names if not repository.served(name)]
    return bool(names) and not waiting and repository.polls > 0


async def classify(request: Request, loaded: LoadedVersion, texts: list[str]) -> Predictions:
    """Run ``texts`` through a loaded version (batched with concurrent requests, if enabled)."""
    return await predict_texts(server_state(request), request.scope, loaded, texts)


async def predict_texts(
    state: ServerState, notes: MutableMapping, loaded: LoadedVersion, texts: list[str]
) -> Predictions:
    """:func:`classify` for any protocol: ``notes`` receives the model and version served.

    Raises:
        Overloaded: the model's queue is full (answered at once, counted in the metrics).
    """
    if loaded.route is not None:  # a rollout's request: measured, with a fallback or shadow

        async def call(version: LoadedVersion, texts: list[str]) -> Predictions:
            return await _predict_on(state, notes, version, texts)

        return await loaded.route.run(call, loaded, texts)
    return await _predict_on(state, notes, loaded, texts)


async def _predict_on(
    state: ServerState, notes: MutableMapping, loaded: LoadedVersion, texts: list[str]
) -> Predictions:
    note_model(notes, loaded.model, loaded.version)
    try:
        bound = state.repository.config(loaded.model)[0].max_queue
    except ServingError:  # the model left the repository meanwhile: its predictor says so
        bound = None
    try:
        with state.queue.admit(loaded.model, bound):
            probabilities = await loaded.predictor.predict(texts)
    except Overloaded:
        state.metrics.shed.labels(loaded.model).inc()
        raise
    except VersionUnloaded as error:  # unloaded between lookup and call: rare; retryable
        raise ServingError(503, f"model {loaded.model!r}: {error}; retry") from error
    probabilities = np.asarray(probabilities, dtype=np.float32)
    class_ids = probabilities.argmax(axis=1)
    names = loaded.labels
    predictions = Predictions(
        probabilities, class_ids, [names[i] for i in class_ids], loaded.version
    )
    if state.tap is not None:
        state.tap.observe(notes, loaded, texts, predictions)
    return predictions

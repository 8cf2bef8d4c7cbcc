"""The seed's API, kept for its clients: ``POST /predict`` with one text or a list of texts.

``{"text": "..."}`` gives ``{"label", "probabilities": {class: p}, "model", "version"}``;
``{"texts": [...]}`` gives ``{"predictions": [{"label", "probabilities"}, ...], ...}``.
The model is the one a request names with ``"model"`` (and optionally ``"version"``), else
the server's default model: ``--default-model``, else the only model served, else the
pipeline's ``classifier`` (:data:`maas.serving.layout.DEFAULT_MODEL`) when it is served.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from maas.serving.auth import authorize_model
from maas.serving.errors import ServingError
from maas.serving.layout import DEFAULT_MODEL
from maas.serving.limits import check_texts
from maas.serving.schemas import ERROR_RESPONSES, FastJSONResponse
from maas.serving.state import ServerState, classify, server_state

router = APIRouter(tags=["Seed API"])


class SeedRequest(BaseModel):
    """Exactly one of ``text`` and ``texts``."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    texts: list[str] | None = None
    model: str | None = None
    version: Annotated[int, Field(strict=True, ge=0)] | None = None


def default_model(state: ServerState) -> str:
    """The model of a request that names none (see the module's docstring)."""
    if state.default_model is not None:
        return state.default_model
    names = state.repository.model_names()
    if len(names) == 1:
        return names[0]
    if not names:
        raise ServingError(503, "the model repository holds no model")
    if DEFAULT_MODEL in names:
        return DEFAULT_MODEL
    raise ServingError(
        400,
        f"several models are served ({', '.join(names)}) and none is {DEFAULT_MODEL!r}: "
        "name one in 'model'",
    )


@router.post("/predict", responses=ERROR_RESPONSES, summary="Classify a text or a list of texts")
async def predict(body: SeedRequest, request: Request) -> FastJSONResponse:
    state = server_state(request)
    if (body.text is None) == (body.texts is None):
        raise ServingError(400, "send exactly one of 'text' (a string) or 'texts' (a list)")
    texts = check_texts([body.text] if body.text is not None else body.texts, state.limits)
    model = body.model or default_model(state)
    authorize_model(request.scope, model)  # the model is in the body: the key's scope here
    loaded = state.repository.resolve(model, version=body.version)
    predictions = await classify(request, loaded, texts)
    items = [
        {
            "label": label,
            "probabilities": dict(zip(loaded.labels, row.tolist(), strict=True)),
        }
        for label, row in zip(predictions.labels, predictions.probabilities, strict=True)
    ]
    meta = {"model": loaded.model, "version": predictions.version}
    if body.text is not None:
        return FastJSONResponse({**items[0], **meta})
    return FastJSONResponse({"predictions": items, **meta})

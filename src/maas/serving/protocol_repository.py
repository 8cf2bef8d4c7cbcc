"""The Open Inference Protocol's model repository extension, REST: index, load, unload.

The server follows its repository folder by itself, so these are a view of it and a nudge:

- ``POST /v2/repository/index`` lists every version of the models the caller's key may see
  (``{"ready": true}``: only those serving), as Triton's index does;
- ``POST /v2/repository/models/{model}/load`` re-reads the repository now instead of at the
  next poll (the only way with ``--poll-interval 0``) and answers the model's versions;
- ``POST /v2/repository/models/{model}/unload``: 409, the server unloads what leaves the
  folder (or the versions its ``config.yaml`` no longer asks for).

Where the server cannot do what is asked because it follows its repository, it answers 409
Conflict (gRPC ``FAILED_PRECONDITION``): the request conflicts with how it runs; nothing is
broken on the server's side, which a 5xx would say.

Load and unload change what is served: with API keys they need the ``admin`` scope (checked
by :class:`~maas.serving.auth.ApiKeyMiddleware` before this module runs).
"""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from maas.serving.auth import visible_models
from maas.serving.errors import ServingError
from maas.serving.protocol_v1 import status_body
from maas.serving.repository import AVAILABLE
from maas.serving.schemas import ERROR_RESPONSES, ErrorBody
from maas.serving.state import ServerState, server_state

router = APIRouter(prefix="/v2/repository", tags=["Model repository (OIP extension)"])


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ready: bool = False


async def load_model(state: ServerState, model: str) -> dict[str, Any]:
    """Re-read the repository now; ``model``'s versions after it (404 if not there)."""
    if state.reload is None:
        raise ServingError(
            409, "this engine re-reads the repository by itself every --poll-interval"
        )
    try:
        await state.reload()
    except OSError as error:  # the folder vanished or is unreadable: the server keeps serving
        raise ServingError(503, f"re-reading the model repository failed: {error}") from error
    if model not in state.repository.model_names():
        raise ServingError(404, f"model {model!r} not found in the repository")
    return {"name": model, **status_body(state.repository.status(model))}


@router.post("/index", responses=ERROR_RESPONSES, summary="Models and versions the key may see")
async def index(request: Request, body: IndexRequest | None = None) -> list[dict[str, Any]]:
    repository = server_state(request).repository
    rows = []
    for name in visible_models(request.scope, repository.model_names()):
        for status in repository.status(name):
            if body is not None and body.ready and status.state != AVAILABLE:
                continue
            row = {"name": name, "version": str(status.version), "state": status.state}
            rows.append({**row, "reason": status.error})
    return rows


FOLLOWS_REPOSITORY = {
    409: {"model": ErrorBody, "description": "Not in this mode: the server follows its repository"}
}


@router.post(
    "/models/{model}/load",
    responses={**ERROR_RESPONSES, **FOLLOWS_REPOSITORY},
    summary="Re-read (admin)",
)
async def load(model: str, request: Request) -> dict[str, Any]:
    return await load_model(server_state(request), model)


@router.post(
    "/models/{model}/unload",
    responses={**ERROR_RESPONSES, **FOLLOWS_REPOSITORY},
    summary="Not supported",
)
async def unload(model: str) -> None:
    refuse_unload()


def refuse_unload() -> NoReturn:
    raise ServingError(
        409,
        "the server follows its repository: remove the version folders, or change the "
        "model's config.yaml, and it unloads them",
    )

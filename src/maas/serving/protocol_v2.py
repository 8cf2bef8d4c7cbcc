"""The Open Inference Protocol (KServe v2), REST/JSON: health, metadata and ``infer``.

Follows https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ as
Triton and KServe clients speak it in JSON mode (``binary_data=False``). A model takes one
input, ``texts`` (datatype ``BYTES``, any shape whose size is the number of texts, e.g.
``[n]`` or ``[n, 1]``), and returns ``labels`` (``BYTES [n]``), ``class_ids`` (``INT32
[n]``) and ``probabilities`` (``FP32 [n, classes]``, row-major), or the ones requested in
``outputs``. The request ``id`` is echoed. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from maas import __version__
from maas.serving.errors import ServingError
from maas.serving.limits import check_texts
from maas.serving.repository import LoadedVersion, parse_version
from maas.serving.schemas import ERROR_RESPONSES, FastJSONResponse
from maas.serving.state import (
    INPUT_NAME,
    OUTPUT_NAMES,
    PLATFORMS,
    classify,
    select_outputs,
    server_state,
)
from maas.serving.state import is_ready as state_is_ready
from maas.serving.tap import drift_of

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])

Dim = Annotated[int, Field(strict=True, ge=0)]
OUTPUT_TYPES = {"labels": "BYTES", "class_ids": "INT32", "probabilities": "FP32"}


class InferInput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    shape: list[Dim]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None


def _flatten(data: list[Any], depth: int) -> list[Any]:
    """Row-major elements of a (possibly nested) data list, nested at most ``depth`` deep."""
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            if depth <= 1:
                raise ServingError(400, "input 'texts': data is nested deeper than its shape")
            flat += _flatten(item, depth - 1)
        else:
            flat.append(item)
    return flat


def request_texts(body: InferRequest) -> list[Any]:
    """The texts of an infer request, after checking name, datatype, shape and data."""
    check_inputs([tensor.name for tensor in body.inputs])
    tensor = body.inputs[0]
    check_input_tensor(tensor.name, tensor.datatype, tensor.shape)
    if tensor.parameters and "binary_data_size" in tensor.parameters:
        raise ServingError(400, "binary tensor data is not supported: send the texts as JSON")
    texts = _flatten(tensor.data, len(tensor.shape))
    check_element_count(tensor.shape, len(texts))
    return texts


def check_inputs(names: list[str]) -> None:
    """Exactly one input (any protocol binding): ``texts``."""
    if len(names) != 1:
        raise ServingError(400, f"expected exactly one input, {INPUT_NAME!r}; got {len(names)}")


def check_input_tensor(name: str, datatype: str, shape: list[int]) -> None:
    """The input's name, datatype and shape, as every binding of the protocol checks them."""
    if name != INPUT_NAME:
        raise ServingError(400, f"unknown input {name[:64]!r}; the input is {INPUT_NAME!r}")
    if datatype != "BYTES":
        raise ServingError(400, f"input {INPUT_NAME!r} has datatype BYTES, got {datatype[:32]!r}")
    if not shape or len(shape) > 2 or any(dim < 0 for dim in shape):
        raise ServingError(400, f"input {INPUT_NAME!r} must have shape [n] or [n, 1]")


def check_element_count(shape: list[int], count: int) -> None:
    if count != math.prod(shape):
        raise ServingError(
            400,
            f"input {INPUT_NAME!r}: shape {list(shape)} needs "
            f"{math.prod(shape)} elements, data has {count}",
        )


def requested_outputs(body: InferRequest) -> list[str]:
    return check_outputs([output.name for output in body.outputs or []])


def check_outputs(names: list[str]) -> list[str]:
    """The outputs to return (all when none are named); 400 for an unknown name."""
    return select_outputs(names, list(OUTPUT_TYPES))


def metadata_body(loaded: LoadedVersion, versions: list[int]) -> dict[str, Any]:
    classes = len(loaded.labels)
    shapes = {"labels": [-1], "class_ids": [-1], "probabilities": [-1, classes]}
    return {
        "name": loaded.model,
        "versions": [str(v) for v in sorted(versions)],
        "platform": PLATFORMS.get(loaded.kind, loaded.kind),
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": name, "datatype": OUTPUT_TYPES[name], "shape": shapes[name]}
            for name in OUTPUT_NAMES
        ],
        "parameters": {"version": str(loaded.version), "class_names": list(loaded.labels)},
    }


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "maas", "version": __version__, "extensions": []}


@router.get("/health/live", summary="Liveness (never needs an API key)")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: every model has a version available")
async def ready(request: Request) -> FastJSONResponse:
    is_ready = state_is_ready(server_state(request).repository)
    return FastJSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def _metadata(request: Request, loaded: LoadedVersion) -> dict[str, Any]:
    """:func:`metadata_body`, with the version's drift on live inputs in ``parameters``."""
    state = server_state(request)
    body = metadata_body(loaded, list(state.repository.served(loaded.model)))
    body["parameters"]["drift"] = drift_of(state.tap, loaded.model, loaded.version)
    return body


@router.get("/models/{model}", responses=ERROR_RESPONSES, summary="Model metadata")
async def model_metadata(model: str, request: Request) -> dict[str, Any]:
    return _metadata(request, server_state(request).repository.resolve(model))


@router.get("/models/{model}/versions/{version}", responses=ERROR_RESPONSES)
async def version_metadata(model: str, version: str, request: Request) -> dict[str, Any]:
    return _metadata(request, server_state(request).repository.resolve(model, version=version))


@router.get("/models/{model}/ready", responses=ERROR_RESPONSES, summary="Model readiness")
async def model_ready(model: str, request: Request) -> FastJSONResponse:
    is_ready = bool(server_state(request).repository.served(model))
    return FastJSONResponse(
        {"name": model, "ready": is_ready}, status_code=200 if is_ready else 503
    )


@router.get("/models/{model}/versions/{version}/ready", responses=ERROR_RESPONSES)
async def version_ready(model: str, version: str, request: Request) -> FastJSONResponse:
    number = parse_version(version)
    is_ready = number in server_state(request).repository.served(model)
    return FastJSONResponse(
        {"name": model, "version": str(number), "ready": is_ready},
        status_code=200 if is_ready else 503,
    )


async def _infer(request: Request, loaded: LoadedVersion, body: InferRequest) -> FastJSONResponse:
    texts = check_texts(request_texts(body), server_state(request).limits)
    outputs = requested_outputs(body)
    predictions = await classify(request, loaded, texts)
    shapes = {"probabilities": [len(texts), len(loaded.labels)]}
    response: dict[str, Any] = {
        "model_name": loaded.model,
        "model_version": str(predictions.version),
        "outputs": [
            {
                "name": name,
                "datatype": OUTPUT_TYPES[name],
                "shape": shapes.get(name, [len(texts)]),
                "data": (
                    predictions.probabilities.ravel().tolist()
                    if name == "probabilities"
                    else predictions.column(name)
                ),
            }
            for name in outputs
        ],
    }
    if body.id is not None:
        response["id"] = body.id
    return FastJSONResponse(response)


@router.post("/models/{model}/infer", responses=ERROR_RESPONSES, summary="Inference (newest)")
async def infer(model: str, body: InferRequest, request: Request) -> FastJSONResponse:
    return await _infer(request, server_state(request).repository.resolve(model), body)


@router.post("/models/{model}/versions/{version}/infer", responses=ERROR_RESPONSES)
async def infer_version(
    model: str, version: str, body: InferRequest, request: Request
) -> FastJSONResponse:
    loaded = server_state(request).repository.resolve(model, version=version)
    return await _infer(request, loaded, body)

"""TensorFlow Serving's REST API (v1): model status, metadata and ``:predict``.

Follows https://www.tensorflow.org/tfx/serving/api_rest: the same paths, the same request
formats (row ``{"instances": [...]}`` and columnar ``{"inputs": ...}``), the same response
keys (``predictions`` / ``outputs``) and errors as ``{"error": "..."}``. The one signature,
``serving_default``, takes ``texts`` (strings, or ``{"b64": ...}`` for base64-encoded UTF-8)
and returns ``probabilities``, ``class_ids`` and ``labels``, as the exported SavedModel does.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from maas.serving.errors import ServingError
from maas.serving.limits import check_texts
from maas.serving.repository import LoadedVersion, VersionStatus, parse_version
from maas.serving.schemas import ERROR_RESPONSES, FastJSONResponse
from maas.serving.state import (
    INPUT_NAME,
    OUTPUT_NAMES,
    SIGNATURE_NAME,
    classify,
    server_state,
)
from maas.serving.tap import drift_of

router = APIRouter(prefix="/v1/models", tags=["TensorFlow Serving REST (v1)"])


class B64(BaseModel):
    """A string sent base64-encoded, as TensorFlow Serving accepts for binary strings."""

    model_config = ConfigDict(extra="forbid")
    b64: str


TextValue = str | B64


class NamedInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: TextValue


class NamedInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[TextValue]


class PredictRequest(BaseModel):
    """Row format (``instances``) or columnar format (``inputs``): exactly one of them."""

    model_config = ConfigDict(extra="forbid")
    signature_name: str | None = None
    instances: list[TextValue | NamedInstance] | None = None
    inputs: list[TextValue] | NamedInputs | None = None


def _text(value: TextValue) -> str:
    if isinstance(value, str):
        return value
    try:
        return base64.b64decode(value.b64, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as error:
        raise ServingError(400, f"b64 value is not base64-encoded UTF-8: {error}") from error


def check_signature(name: str | None) -> None:
    """The one signature, ``serving_default``, or none named (the default)."""
    if name not in (None, "", SIGNATURE_NAME):
        raise ServingError(
            400, f"unknown signature {name[:64]!r}; the one signature is {SIGNATURE_NAME!r}"
        )


def request_texts(body: PredictRequest) -> list[str]:
    """The texts of a predict request, in order."""
    if (body.instances is None) == (body.inputs is None):
        raise ServingError(400, "send exactly one of 'instances' (rows) or 'inputs' (columns)")
    check_signature(body.signature_name)
    if body.instances is not None:
        values = [
            item.texts if isinstance(item, NamedInstance) else item for item in body.instances
        ]
    else:
        values = body.inputs.texts if isinstance(body.inputs, NamedInputs) else body.inputs
    return [_text(value) for value in values]


def status_body(statuses: list[VersionStatus]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(status.version),
                "state": status.state,
                "status": {
                    "error_code": "UNKNOWN" if status.error else "OK",
                    "error_message": status.error,
                },
            }
            for status in statuses
        ]
    }


def metadata_body(loaded: LoadedVersion) -> dict[str, Any]:
    """The model's signature in TensorFlow Serving's GetModelMetadata JSON."""

    def tensor(name: str, dtype: str, dims: list[int]) -> dict[str, Any]:
        shape = {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}
        return {"dtype": dtype, "tensor_shape": shape, "name": name}

    classes = len(loaded.labels)
    signature = {
        "inputs": {INPUT_NAME: tensor(INPUT_NAME, "DT_STRING", [-1])},
        "outputs": {
            "probabilities": tensor("probabilities", "DT_FLOAT", [-1, classes]),
            "class_ids": tensor("class_ids", "DT_INT32", [-1]),
            "labels": tensor("labels", "DT_STRING", [-1]),
        },
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": loaded.model, "signature_name": "", "version": str(loaded.version)},
        "metadata": {
            "signature_def": {"signature_def": {SIGNATURE_NAME: signature}},
            "maas": {
                "runtime": loaded.kind,
                "class_names": list(loaded.labels),
                "provenance": loaded.provenance,
            },
        },
    }


def _metadata(request: Request, loaded: LoadedVersion) -> dict[str, Any]:
    """:func:`metadata_body`, with the version's drift on live inputs under ``maas``."""
    body = metadata_body(loaded)
    body["metadata"]["maas"]["drift"] = drift_of(
        server_state(request).tap, loaded.model, loaded.version
    )
    return body


def _status_of(request: Request, model: str, version: int) -> dict[str, Any]:
    statuses = [s for s in server_state(request).repository.status(model) if s.version == version]
    if not statuses:
        raise ServingError(404, f"model {model!r} has no version {version}")
    return status_body(statuses)


async def _predict(
    request: Request, loaded: LoadedVersion, body: PredictRequest
) -> FastJSONResponse:
    texts = check_texts(request_texts(body), server_state(request).limits)
    predictions = await classify(request, loaded, texts)
    columns = {name: predictions.column(name) for name in OUTPUT_NAMES}
    if body.instances is not None:
        values = zip(*columns.values(), strict=True)
        rows = [dict(zip(OUTPUT_NAMES, row, strict=True)) for row in values]
        return FastJSONResponse({"predictions": rows})
    return FastJSONResponse({"outputs": columns})


@router.get("/{model}", responses=ERROR_RESPONSES, summary="Status of a model's versions")
async def model_status(model: str, request: Request) -> dict[str, Any]:
    repository = server_state(request).repository
    body = status_body(repository.status(model))
    _, config_error = repository.config(model)
    if config_error:  # an extra key: TensorFlow Serving clients ignore it
        body["config_error"] = config_error
    return body


@router.get("/{model}/versions/{version}", responses=ERROR_RESPONSES, summary="Version status")
async def version_status(model: str, version: str, request: Request) -> dict[str, Any]:
    return _status_of(request, model, parse_version(version))


@router.get("/{model}/labels/{label}", responses=ERROR_RESPONSES, summary="Labelled version")
async def label_status(model: str, label: str, request: Request) -> dict[str, Any]:
    config, _ = server_state(request).repository.config(model)
    if label not in config.labels:
        raise ServingError(404, f"model {model!r} has no label {label!r}")
    return _status_of(request, model, config.labels[label])


@router.get("/{model}/metadata", responses=ERROR_RESPONSES, summary="Signature (newest)")
async def model_metadata(model: str, request: Request) -> dict[str, Any]:
    return _metadata(request, server_state(request).repository.resolve(model))


@router.get("/{model}/versions/{version}/metadata", responses=ERROR_RESPONSES)
async def version_metadata(model: str, version: str, request: Request) -> dict[str, Any]:
    return _metadata(request, server_state(request).repository.resolve(model, version=version))


@router.get("/{model}/labels/{label}/metadata", responses=ERROR_RESPONSES)
async def label_metadata(model: str, label: str, request: Request) -> dict[str, Any]:
    return _metadata(request, server_state(request).repository.resolve(model, label=label))


@router.post("/{model}:predict", responses=ERROR_RESPONSES, summary="Predict (newest version)")
async def predict(model: str, body: PredictRequest, request: Request) -> FastJSONResponse:
    return await _predict(request, server_state(request).repository.resolve(model), body)


@router.post("/{model}/versions/{version}:predict", responses=ERROR_RESPONSES)
async def predict_version(
    model: str, version: str, body: PredictRequest, request: Request
) -> FastJSONResponse:
    loaded = server_state(request).repository.resolve(model, version=version)
    return await _predict(request, loaded, body)


@router.post("/{model}/labels/{label}:predict", responses=ERROR_RESPONSES)
async def predict_label(
    model: str, label: str, body: PredictRequest, request: Request
) -> FastJSONResponse:
    loaded = server_state(request).repository.resolve(model, label=label)
    return await _predict(request, loaded, body)

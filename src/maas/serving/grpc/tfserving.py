"""TensorFlow Serving over gRPC: ``PredictionService`` (Predict, GetModelMetadata) and
``ModelService.GetModelStatus``, with the stubs of the ``tensorflow-serving-api`` package.

The same signature as :mod:`maas.serving.protocol_v1`: ``serving_default`` takes ``texts``
(``DT_STRING``, shape ``[n]`` or ``[n, 1]``) and returns ``probabilities`` (``DT_FLOAT
[n, classes]``), ``class_ids`` (``DT_INT32 [n]``) and ``labels`` (``DT_STRING [n]``), or the
ones named in ``output_filter``. ``model_spec`` routes as the REST paths do: a ``version``,
a ``version_label``, or neither for the newest version. Metadata and status are the REST
bodies of :mod:`~maas.serving.protocol_v1` read into their protos, so the two bindings
cannot drift apart.
"""

from __future__ import annotations

import math

from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from maas.serving import protocol_v1
from maas.serving.errors import ServingError
from maas.serving.grpc.calls import call_notes
from maas.serving.limits import check_texts
from maas.serving.repository import LoadedVersion
from maas.serving.state import (
    INPUT_NAME,
    OUTPUT_NAMES,
    SIGNATURE_NAME,
    ServerState,
    predict_texts,
    select_outputs,
)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"


def _resolve(state: ServerState, spec) -> LoadedVersion:
    """The version a ``ModelSpec`` names: its version, its label, or the newest."""
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return state.repository.resolve(spec.name, version=spec.version.value)
    if which == "version_label":
        return state.repository.resolve(spec.name, label=spec.version_label)
    return state.repository.resolve(spec.name)


def request_texts(request: predict_pb2.PredictRequest) -> list[str]:
    """The texts of a Predict request: one ``texts`` input of strings, shape [n] or [n, 1]."""
    protocol_v1.check_signature(request.model_spec.signature_name)
    names = list(request.inputs)
    if names != [INPUT_NAME]:
        raise ServingError(400, f"expected exactly one input, {INPUT_NAME!r}; got {names[:4]}")
    tensor = request.inputs[INPUT_NAME]
    if tensor.dtype != types_pb2.DT_STRING:
        dtype = types_pb2.DataType.Name(tensor.dtype)
        raise ServingError(400, f"input {INPUT_NAME!r} has dtype DT_STRING, got {dtype}")
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if not shape or len(shape) > 2 or any(size < 0 for size in shape):
        raise ServingError(400, f"input {INPUT_NAME!r} must have shape [n] or [n, 1]")
    if len(tensor.string_val) != math.prod(shape):
        raise ServingError(
            400,
            f"input {INPUT_NAME!r}: shape {shape} needs {math.prod(shape)} strings, "
            f"string_val has {len(tensor.string_val)}",
        )
    try:
        return [value.decode("utf-8") for value in tensor.string_val]
    except UnicodeDecodeError as error:
        raise ServingError(400, f"input {INPUT_NAME!r} is not UTF-8: {error}") from error


def _tensor(dtype: int, shape: list[int]) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims)
    )


def output_tensors(predictions, names: list[str]) -> dict[str, tensor_pb2.TensorProto]:
    count = len(predictions.labels)
    tensors = {}
    for name in names:
        if name == "probabilities":
            tensor = _tensor(types_pb2.DT_FLOAT, list(predictions.probabilities.shape))
            tensor.float_val.extend(predictions.probabilities.ravel().tolist())
        elif name == "class_ids":
            tensor = _tensor(types_pb2.DT_INT32, [count])
            tensor.int_val.extend(predictions.class_ids.tolist())
        else:
            tensor = _tensor(types_pb2.DT_STRING, [count])
            tensor.string_val.extend(label.encode("utf-8") for label in predictions.labels)
        tensors[name] = tensor
    return tensors


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata (Classify, Regress, MultiInference: UNIMPLEMENTED)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def Predict(self, request, context) -> predict_pb2.PredictResponse:  # noqa: N802
        loaded = _resolve(self.state, request.model_spec)
        texts = check_texts(request_texts(request), self.state.limits)
        names = select_outputs(list(request.output_filter), OUTPUT_NAMES)
        predictions = await predict_texts(self.state, call_notes(), loaded, texts)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.model
        response.model_spec.version.value = predictions.version
        response.model_spec.signature_name = SIGNATURE_NAME
        for name, tensor in output_tensors(predictions, names).items():
            response.outputs[name].CopyFrom(tensor)
        return response

    async def GetModelMetadata(self, request, context):  # noqa: N802
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise ServingError(
                400, f"metadata_field must be ['signature_def'] (the one kind), got {fields[:4]}"
            )
        loaded = _resolve(self.state, request.model_spec)
        body = protocol_v1.metadata_body(loaded)
        signatures = json_format.ParseDict(
            body["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap()
        )
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = loaded.model
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus (HandleReloadConfigRequest: UNIMPLEMENTED; the server follows the disk)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        repository = self.state.repository
        statuses = repository.status(spec.name)
        which = spec.WhichOneof("version_choice")
        if which is not None:
            version = _resolve_number(self.state, spec)
            statuses = [status for status in statuses if status.version == version]
            if not statuses:
                raise ServingError(404, f"model {spec.name!r} has no version {version}")
        body = protocol_v1.status_body(statuses)
        return json_format.ParseDict(body, get_model_status_pb2.GetModelStatusResponse())


def _resolve_number(state: ServerState, spec) -> int:
    if spec.WhichOneof("version_choice") == "version":
        return spec.version.value
    config, _ = state.repository.config(spec.name)
    if spec.version_label not in config.labels:
        raise ServingError(404, f"model {spec.name!r} has no label {spec.version_label!r}")
    return config.labels[spec.version_label]

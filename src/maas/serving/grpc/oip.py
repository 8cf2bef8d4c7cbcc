"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``.

The same model as :mod:`maas.serving.protocol_v2` (one ``texts`` input of datatype BYTES,
outputs ``labels``, ``class_ids`` and ``probabilities``) with the same checks, bound to
KServe's ``grpc_predict_v2.proto``. Texts come in ``contents.bytes_contents`` or in
``raw_input_contents`` (each element a 4-byte little-endian length, then its bytes, as
Triton's clients send them). Outputs come back in ``contents``, or in
``raw_output_contents`` when the client asks: it sent raw inputs, or set the parameter
``binary_data: true`` on the request or on an output.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from maas import __version__
from maas.serving import protocol_repository, protocol_v2
from maas.serving.errors import ServingError
from maas.serving.grpc import grpc_predict_v2_pb2 as pb
from maas.serving.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from maas.serving.grpc.calls import call_notes
from maas.serving.limits import check_texts
from maas.serving.protocol_v2 import OUTPUT_TYPES
from maas.serving.repository import parse_version
from maas.serving.state import ServerState, is_ready, predict_texts

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def decode_raw_bytes(raw: bytes) -> list[bytes]:
    """The elements of a raw BYTES tensor: each a 4-byte little-endian length, then bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ServingError(400, "raw_input_contents: truncated element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ServingError(400, "raw_input_contents: element longer than the data")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def encode_raw_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def request_texts(request: pb.ModelInferRequest) -> list[str]:
    """The texts of a ModelInfer request, checked as the REST binding checks them."""
    protocol_v2.check_inputs([tensor.name for tensor in request.inputs])
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    protocol_v2.check_input_tensor(tensor.name, tensor.datatype, shape)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or tensor.contents.bytes_contents:
            raise ServingError(
                400, "send the texts either in contents or as one raw_input_contents entry"
            )
        elements = decode_raw_bytes(request.raw_input_contents[0])
    else:
        elements = list(tensor.contents.bytes_contents)
    protocol_v2.check_element_count(shape, len(elements))
    try:
        return [element.decode("utf-8") for element in elements]
    except UnicodeDecodeError as error:
        raise ServingError(400, f"input 'texts' is not UTF-8: {error}") from error


def _asks_binary(parameters: Any) -> bool:
    value = parameters.get("binary_data")
    return (
        value is not None
        and value.WhichOneof("parameter_choice") == "bool_param"
        and (value.bool_param)
    )


def wants_raw_outputs(request: pb.ModelInferRequest) -> bool:
    return bool(request.raw_input_contents) or (
        _asks_binary(request.parameters)
        or any(_asks_binary(output.parameters) for output in request.outputs)
    )


def _output_values(name: str, predictions) -> np.ndarray | list[bytes]:
    if name == "probabilities":
        return predictions.probabilities.astype("<f4")
    if name == "class_ids":
        return predictions.class_ids.astype("<i4")
    return [label.encode("utf-8") for label in predictions.labels]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """KServe's v2 gRPC service over the server's repository and batchers."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:  # noqa: N802
        return pb.ServerReadyResponse(ready=is_ready(self.state.repository))

    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:  # noqa: N802
        served = self.state.repository.served(request.name)
        if request.version:
            return pb.ModelReadyResponse(ready=parse_version(request.version) in served)
        return pb.ModelReadyResponse(ready=bool(served))

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:  # noqa: N802
        return pb.ServerMetadataResponse(name="maas", version=__version__, extensions=[])

    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:  # noqa: N802
        repository = self.state.repository
        loaded = repository.resolve(request.name, version=request.version or None)
        body = protocol_v2.metadata_body(loaded, list(repository.served(request.name)))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=body["name"],
            versions=body["versions"],
            platform=body["platform"],
            inputs=[tensor(**spec) for spec in body["inputs"]],
            outputs=[tensor(**spec) for spec in body["outputs"]],
        )

    async def ModelInfer(self, request, context) -> pb.ModelInferResponse:  # noqa: N802
        loaded = self.state.repository.resolve(
            request.model_name, version=request.model_version or None
        )
        texts = check_texts(request_texts(request), self.state.limits)
        names = protocol_v2.check_outputs([output.name for output in request.outputs])
        predictions = await predict_texts(self.state, call_notes(), loaded, texts)
        raw = wants_raw_outputs(request)
        response = pb.ModelInferResponse(
            model_name=loaded.model, model_version=str(predictions.version), id=request.id
        )
        for name in names:
            values = _output_values(name, predictions)
            shape = list(np.shape(values)) if name == "probabilities" else [len(texts)]
            tensor = response.outputs.add(name=name, datatype=OUTPUT_TYPES[name], shape=shape)
            if raw:
                response.raw_output_contents.append(
                    encode_raw_bytes(values) if name == "labels" else values.tobytes()
                )
            elif name == "probabilities":
                tensor.contents.fp32_contents.extend(values.ravel().tolist())
            elif name == "class_ids":
                tensor.contents.int_contents.extend(values.tolist())
            else:
                tensor.contents.bytes_contents.extend(values)
        return response

    async def RepositoryModelLoad(self, request, context):  # noqa: N802
        """Re-read the repository now (admin, as ``POST /v2/repository/models/M/load``)."""
        await protocol_repository.load_model(self.state, request.model_name)
        served = self.state.repository.served(request.model_name)
        return pb.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=bool(served))

    async def RepositoryModelUnload(self, request, context):  # noqa: N802
        protocol_repository.refuse_unload()

"""``maas serve --grpc-port`` for real: Python stubs of both protocols over TLS with API keys.

One server (a subprocess on loopback, HTTPS and gRPC over TLS, keys, small limits) serves
every test but the last, which stops a server of its own while calls are in flight.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serving_support import (
    ServerProcess,
    free_port,
    make_certificates,
    running_server,
    tflite_artifact,
    write_repository,
)

from maas.serving.auth import hash_key
from maas.serving.grpc import grpc_predict_v2_pb2 as oip
from maas.serving.grpc import grpc_predict_v2_pb2_grpc as oip_grpc

pytestmark = pytest.mark.slow
KEY = "grpc-test-key-0123456789"
TEXTS = ["The shuttle reached orbit", "New brakes for my car"]
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def lite(small_project, tmp_path_factory):
    return tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)


@pytest.fixture(scope="module")
def server(lite, tmp_path_factory):
    """HTTPS + gRPC over TLS, one key, versions 1 and 2 (label ``stable`` -> 1)."""
    tmp = tmp_path_factory.mktemp("grpc-server")
    certs = make_certificates(tmp / "tls")
    repository = write_repository(
        tmp / "repo",
        {"classifier": {1: lite, 2: lite}},
        {"classifier": "version_policy: all\nlabels: {stable: 1}\n"},
    )
    (tmp / "keys.txt").write_text(hash_key(KEY) + "\n")
    grpc_port = free_port()
    args = [
        "--model-repository", str(repository), "--poll-interval", "0",
        "--api-key-file", str(tmp / "keys.txt"), "--grpc-port", str(grpc_port),
        "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]),
        "--max-body-bytes", str(MAX_BODY), "--max-texts", "8", "--batch-timeout-ms", "50",
    ]  # fmt: skip
    with running_server(args, tmp / "server.log", tls_ca=certs["ca"]) as process:
        process.grpc_target = f"127.0.0.1:{grpc_port}"
        process.credentials = grpc.ssl_channel_credentials(certs["ca"].read_bytes())
        yield process


@pytest.fixture(scope="module")
def channel(server):
    with grpc.secure_channel(server.grpc_target, server.credentials) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


AUTH = (("authorization", f"Bearer {KEY}"),)


def infer_request(texts, **fields) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="classifier", **fields)
    tensor = request.inputs.add(name="texts", datatype="BYTES", shape=[len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return request


def rest_predictions(server, texts) -> np.ndarray:
    with server.client(headers={"x-api-key": KEY}) as client:
        body = client.post("/v1/models/classifier:predict", json={"instances": texts}).json()
    return np.array([row["probabilities"] for row in body["predictions"]], dtype=np.float32)


def test_oip_grpc_matches_rest_in_contents_and_raw(server, channel):
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(oip.ServerLiveRequest()).live  # open, as /v2/health/live is
    assert stub.ServerReady(oip.ServerReadyRequest()).ready
    assert stub.ModelReady(oip.ModelReadyRequest(name="classifier", version="1"), metadata=AUTH)
    metadata = stub.ModelMetadata(oip.ModelMetadataRequest(name="classifier"), metadata=AUTH)
    assert metadata.versions == ["1", "2"] and metadata.platform == "tensorflow_lite"
    assert [t.name for t in metadata.inputs] == ["texts"]

    expected = rest_predictions(server, TEXTS)
    reply = stub.ModelInfer(infer_request(TEXTS, id="req-1"), metadata=AUTH)
    assert reply.id == "req-1" and reply.model_version == "2"
    outputs = {tensor.name: tensor for tensor in reply.outputs}
    probabilities = np.array(outputs["probabilities"].contents.fp32_contents).reshape(2, -1)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert list(outputs["probabilities"].shape) == [2, expected.shape[1]]
    assert list(outputs["class_ids"].contents.int_contents) == list(expected.argmax(axis=1))

    # Triton's way: raw BYTES in, raw outputs back; a version named.
    raw = oip.ModelInferRequest(model_name="classifier", model_version="1")
    raw.inputs.add(name="texts", datatype="BYTES", shape=[2, 1])
    raw.raw_input_contents.append(b"".join(struct.pack("<I", len(t)) + t.encode() for t in TEXTS))
    raw.outputs.add(name="probabilities")
    raw.outputs.add(name="labels")
    reply = stub.ModelInfer(raw, metadata=(("x-api-key", KEY),))
    assert reply.model_version == "1" and [t.name for t in reply.outputs] == [
        "probabilities", "labels"
    ]  # fmt: skip
    raw_probabilities = np.frombuffer(reply.raw_output_contents[0], dtype="<f4")
    np.testing.assert_allclose(raw_probabilities.reshape(2, -1), expected, atol=1e-6)
    labels, offset = [], 0
    raw_labels = reply.raw_output_contents[1]
    while offset < len(raw_labels):
        (length,) = struct.unpack_from("<I", raw_labels, offset)
        labels.append(raw_labels[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    assert len(labels) == 2 and all(labels)

    # KServe's way: texts in contents, raw outputs asked for with the binary_data parameter.
    asked = infer_request(TEXTS)
    asked.outputs.add(name="class_ids").parameters["binary_data"].bool_param = True
    reply = stub.ModelInfer(asked, metadata=AUTH)
    assert not reply.outputs[0].HasField("contents")
    class_ids = np.frombuffer(reply.raw_output_contents[0], dtype="<i4")
    assert class_ids.tolist() == expected.argmax(axis=1).tolist()


def test_tfserving_predict_metadata_status_with_routing(server, channel):
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "classifier"
    request.model_spec.version_label = "stable"
    request.inputs["texts"].CopyFrom(tf.make_tensor_proto(TEXTS))
    reply = stub.Predict(request, metadata=AUTH)
    assert reply.model_spec.version.value == 1
    probabilities = tf.make_ndarray(reply.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, rest_predictions(server, TEXTS), atol=1e-6)
    labels = [label.decode() for label in tf.make_ndarray(reply.outputs["labels"])]
    assert len(labels) == 2 and all(labels)

    request.model_spec.ClearField("version_label")
    request.model_spec.version.value = 2
    request.output_filter.append("class_ids")
    reply = stub.Predict(request, metadata=AUTH)
    assert list(reply.outputs) == ["class_ids"] and reply.model_spec.version.value == 2

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = "classifier"
    meta = stub.GetModelMetadata(meta_request, metadata=AUTH)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert list(signature.inputs) == ["texts"] and "probabilities" in signature.outputs

    status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "classifier"
    status = status_stub.GetModelStatus(status_request, metadata=AUTH)
    assert [(s.version, s.state) for s in status.model_version_status] == [(2, 30), (1, 30)]


def code_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value.code(), caught.value.details()


def test_every_error_code_with_a_clear_message(server, channel):
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    infer = stub.ModelInfer
    ok = infer_request(TEXTS)
    cases = [
        (dict(metadata=()), grpc.StatusCode.UNAUTHENTICATED, "API key"),
        (dict(metadata=(("authorization", "Bearer wrong"),)), grpc.StatusCode.UNAUTHENTICATED, ""),
    ]
    for kwargs, code, words in cases:
        assert code_of(infer, ok, **kwargs)[0] == code
        assert words in code_of(infer, ok, **kwargs)[1]

    unknown = infer_request(TEXTS)
    unknown.model_name = "nope"
    assert code_of(infer, unknown, metadata=AUTH) == (
        grpc.StatusCode.NOT_FOUND, "model 'nope' not found"
    )  # fmt: skip
    missing_version = infer_request(TEXTS, model_version="7")
    code, details = code_of(infer, missing_version, metadata=AUTH)
    assert code == grpc.StatusCode.NOT_FOUND and "version 7" in details

    bad_type = infer_request(TEXTS)
    bad_type.inputs[0].datatype = "FP32"
    code, details = code_of(infer, bad_type, metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "BYTES" in details
    bad_shape = infer_request(TEXTS)
    bad_shape.inputs[0].shape[:] = [3]
    code, details = code_of(infer, bad_shape, metadata=AUTH)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs 3 elements" in details
    not_utf8 = infer_request([])
    not_utf8.inputs[0].shape[:] = [1]
    not_utf8.inputs[0].contents.bytes_contents.append(b"\xff\xfe")
    assert code_of(infer, not_utf8, metadata=AUTH)[0] == grpc.StatusCode.INVALID_ARGUMENT

    too_many = infer_request(["a"] * 9)
    code, details = code_of(infer, too_many, metadata=AUTH)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit is 8" in details
    huge = infer_request(["x" * (MAX_BODY + 1)])
    assert code_of(infer, huge, metadata=AUTH)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Health and reflection are open (no key), as /v2/health/* is over HTTP.
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    listing = next(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {service.name for service in listing.list_services_response.service}
    assert {"inference.GRPCInferenceService", "tensorflow.serving.PredictionService"} <= names

    # The server kept serving, logged no traceback, and counted the calls by gRPC code.
    assert stub.ModelInfer(ok, metadata=AUTH).outputs
    assert "Traceback" not in server.log()
    with server.client(headers={"x-api-key": KEY}) as client:
        metrics = client.get("/metrics").text
    assert re.search(
        r'maas_requests_total\{code="NOT_FOUND",.*protocol="oip_v2_grpc"', metrics
    ) or ('code="NOT_FOUND"' in metrics and 'protocol="oip_v2_grpc"' in metrics)
    lines = [
        json.loads(line.split("maas.access: ", 1)[1])
        for line in server.log().splitlines()
        if "maas.access: " in line
    ]
    assert any(line["path"] == "/inference.GRPCInferenceService/ModelInfer" for line in lines)


def test_concurrent_grpc_calls_share_batches(server, channel):
    stub = oip_grpc.GRPCInferenceServiceStub(channel)

    def batches() -> tuple[float, float]:
        with server.client(headers={"x-api-key": KEY}) as client:
            text = client.get("/metrics").text
        total = r'maas_batch_size_{}\{{model="classifier",version="2"\}} (\S+)'
        return tuple(float(re.search(total.format(k), text).group(1)) for k in ("count", "sum"))

    count_before, texts_before = batches()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        calls = [pool.submit(stub.ModelInfer, infer_request([TEXTS[i % 2]]), metadata=AUTH)
                 for i in range(32)]  # fmt: skip
        replies = [call.result(timeout=60) for call in calls]
    assert all(len(reply.outputs) == 3 for reply in replies)
    count_after, texts_after = batches()
    assert texts_after - texts_before == 32
    assert count_after - count_before < 32  # some calls were coalesced into one batch


def slow_post(server, *, total: int, chunk: int = 16 * 1024, pause_s: float = 0.02) -> bytes:
    """A client on a slow link: writes the whole body, piece by piece, then reads."""
    context = ssl.create_default_context(cafile=str(server.verify))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {total}\r\n\r\n".encode()
        )
        for offset in range(0, total, chunk):
            tls.sendall(b"x" * min(chunk, total - offset))
            time.sleep(pause_s)
        return tls.recv(65536)


def test_over_limit_body_over_tls_gets_413(server):
    body = b'{"instances": ["' + b"x" * (4 * MAX_BODY) + b'"]}'
    with server.client(headers={"x-api-key": KEY}) as client:
        response = client.post("/v1/models/classifier:predict", content=body)
        assert response.status_code == 413 and "limit is 65536 bytes" in response.json()["error"]
        chunks = iter([body[i : i + 8192] for i in range(0, len(body), 8192)])
        response = client.post("/v1/models/classifier:predict", content=chunks)
        assert response.status_code == 413
    assert slow_post(server, total=16 * MAX_BODY).startswith(b"HTTP/1.1 413")
    with server.client(headers={"x-api-key": KEY}) as client:  # and the server still serves
        assert client.post("/predict", json={"text": TEXTS[0]}).status_code == 200


def test_shutdown_drains_calls_in_flight(lite, tmp_path):
    repository = write_repository(tmp_path / "repo", {"classifier": {1: lite}})
    grpc_port = free_port()
    args = ["--model-repository", str(repository), "--poll-interval", "0",
            "--grpc-port", str(grpc_port), "--batch-timeout-ms", "1500"]  # fmt: skip
    server = ServerProcess(args, tmp_path / "server.log")
    try:
        server.wait_ready()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            futures = [stub.ModelInfer.future(infer_request(TEXTS)) for _ in range(4)]
            time.sleep(0.5)  # the calls reach the server and wait for their batch to fill
            server.process.send_signal(signal.SIGTERM)  # calls wait in the batcher
            replies = [future.result(timeout=60) for future in futures]
            assert all(len(reply.outputs) == 3 for reply in replies)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit -15).
        assert server.process.wait(60) in (0, -signal.SIGTERM)
        assert "gRPC server stopped" in server.log()
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/v2/health/live", timeout=2)


def test_cli_refuses_a_grpc_port_it_cannot_use(tmp_path):
    repository = tmp_path  # refused before any model loads
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for grpc_port, words in ((port, "cannot listen"), (8501, "also the HTTP --port")):
            run = subprocess.run(
                [sys.executable, "-m", "maas.cli", "serve", "--model-repository",
                 str(repository), "--grpc-port", str(grpc_port)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert run.returncode == 2 and words in run.stderr, run.stderr[-2000:]
            assert "Traceback" not in run.stderr

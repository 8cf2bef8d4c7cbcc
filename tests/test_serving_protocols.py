"""The three protocols in process (``with TestClient(app)``): formats, versions, errors, limits."""

from __future__ import annotations

import base64
import json
import logging
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serving_support import tflite_artifact, wait_for, write_repository

from maas.runtime import load_runtime
from maas.serving.app import ServerConfig, create_app
from maas.serving.auth import hash_key
from maas.serving.limits import Limits

TEXTS = [
    "The shuttle launch to orbit was delayed by NASA",
    "My car's engine needs new spark plugs and oil",
    "The senate votes on the gun control bill",
]
LIMITS = Limits(max_body_bytes=64 * 1024, max_texts=8, max_text_chars=2000)


@pytest.fixture(scope="module")
def artifacts(small_project, tmp_path_factory):
    classifier = small_project / "models" / "classifier"
    return {"saved_model": classifier, "tflite": tflite_artifact(classifier, tmp_path_factory)}


@pytest.fixture(scope="module")
def repository(artifacts, tmp_path_factory):
    # classifier: v1 SavedModel, v2 TFLite (so a response tells which version served it).
    return write_repository(
        tmp_path_factory.mktemp("repo"),
        {
            "classifier": {1: artifacts["saved_model"], 2: artifacts["tflite"]},
            "lite": {1: artifacts["tflite"]},
        },
        {"classifier": "version_policy: all\nlabels: {stable: 1, canary: 2}\n"},
    )


@pytest.fixture(scope="module")
def lite_repository(artifacts, tmp_path_factory):
    """TFLite only: loads in milliseconds, for the tests that build an app of their own."""
    return write_repository(
        tmp_path_factory.mktemp("lite-repo"), {"lite": {1: artifacts["tflite"]}}
    )


@pytest.fixture(scope="module")
def client(repository):
    config = ServerConfig(
        model_repository=repository, poll_interval_s=0, default_model="classifier", limits=LIMITS
    )
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def expected(artifacts):
    return load_runtime(artifacts["saved_model"]).predict(TEXTS)


def test_v1_status_lists_versions_and_labels(client):
    body = client.get("/v1/models/classifier").json()
    states = {s["version"]: s["state"] for s in body["model_version_status"]}
    assert states == {"1": "AVAILABLE", "2": "AVAILABLE"}
    assert body["model_version_status"][0]["status"] == {"error_code": "OK", "error_message": ""}
    stable = client.get("/v1/models/classifier/labels/stable").json()
    assert [s["version"] for s in stable["model_version_status"]] == ["1"]
    assert client.get("/v1/models/classifier/versions/2").status_code == 200
    assert client.get("/v1/models/classifier/versions/9").status_code == 404
    assert client.get("/v1/models/classifier/labels/nope").status_code == 404


def test_v1_metadata_describes_the_signature_and_runtime(client):
    body = client.get("/v1/models/classifier/versions/1/metadata").json()
    assert body["model_spec"] == {"name": "classifier", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["texts"]["dtype"] == "DT_STRING"
    assert set(signature["outputs"]) == {"probabilities", "class_ids", "labels"}
    assert body["metadata"]["maas"]["runtime"] == "saved_model"
    canary = client.get("/v1/models/classifier/labels/canary/metadata").json()
    assert canary["metadata"]["maas"]["runtime"] == "tflite"
    latest = client.get("/v1/models/classifier/metadata").json()
    assert latest["model_spec"]["version"] == "2"  # the highest loaded version


@pytest.mark.parametrize(
    "body",
    [
        {"instances": TEXTS},
        {"instances": [{"texts": t} for t in TEXTS]},
        {"instances": [{"b64": base64.b64encode(t.encode()).decode()} for t in TEXTS]},
        {"signature_name": "serving_default", "inputs": TEXTS},
        {"inputs": {"texts": TEXTS}},
    ],
    ids=["rows", "named-rows", "b64", "columns", "named-columns"],
)
def test_v1_predict_formats_agree_with_the_runtime(client, expected, body):
    response = client.post("/v1/models/classifier/versions/1:predict", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    if "instances" in body:
        probabilities = [row["probabilities"] for row in data["predictions"]]
        labels = [row["labels"] for row in data["predictions"]]
    else:
        probabilities = data["outputs"]["probabilities"]
        labels = data["outputs"]["labels"]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    classes = load_labels(client)
    assert labels == [classes[i] for i in expected.argmax(axis=1)]


def load_labels(client) -> list[str]:
    return client.get("/v2/models/classifier").json()["parameters"]["class_names"]


def test_v1_labels_and_default_version_route_to_the_right_runtime(client, expected):
    for path in ("/v1/models/classifier:predict", "/v1/models/classifier/labels/canary:predict"):
        rows = client.post(path, json={"instances": TEXTS}).json()["predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-4)
    metrics = client.get("/metrics").text
    assert (
        'maas_requests_total{code="200",model="classifier",protocol="tfserving_v1",version="2"}'
        in metrics
    )


def test_v2_server_endpoints(client):
    assert client.get("/v2").json()["name"] == "maas"
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert client.get("/v2/models/lite/ready").json() == {"name": "lite", "ready": True}
    assert client.get("/v2/models/classifier/versions/1/ready").status_code == 200
    assert client.get("/v2/models/classifier/versions/5/ready").status_code == 503
    assert client.get("/v2/models/nope/ready").status_code == 404


def test_v2_model_metadata(client):
    body = client.get("/v2/models/classifier").json()
    assert body["name"] == "classifier" and body["versions"] == ["1", "2"]
    assert body["platform"] == "tensorflow_lite"  # version 2, the highest
    assert body["inputs"] == [{"name": "texts", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, len(body["parameters"]["class_names"])]
    v1 = client.get("/v2/models/classifier/versions/1").json()
    assert v1["platform"] == "tensorflow_savedmodel"


def test_v2_infer_returns_labels_and_probabilities_and_echoes_the_id(client, expected):
    texts = {"name": "texts", "datatype": "BYTES", "shape": [3, 1], "data": [[t] for t in TEXTS]}
    request = {"id": "request-42", "inputs": [texts]}
    response = client.post("/v2/models/classifier/versions/1/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "request-42"
    assert (body["model_name"], body["model_version"]) == ("classifier", "1")
    outputs = {o["name"]: o for o in body["outputs"]}
    probabilities = outputs["probabilities"]
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [3, expected.shape[1]]
    np.testing.assert_allclose(
        np.reshape(probabilities["data"], probabilities["shape"]), expected, atol=1e-5
    )
    assert outputs["class_ids"]["data"] == expected.argmax(axis=1).tolist()
    assert outputs["labels"]["datatype"] == "BYTES" and outputs["labels"]["shape"] == [3]


def test_v2_standard_client_json_mode_payloads(client, expected):
    """The bodies Triton's and KServe's HTTP clients send with ``binary_data=False``."""
    tensor = {"name": "texts", "shape": [3], "datatype": "BYTES", "data": TEXTS}
    with_outputs = {
        "id": "7",
        "inputs": [tensor],
        "outputs": [{"name": "labels", "parameters": {"binary_data": False}}],
    }
    body = client.post("/v2/models/lite/infer", json=with_outputs).json()
    assert [o["name"] for o in body["outputs"]] == ["labels"]
    assert body["outputs"][0]["shape"] == [3]
    # No outputs named: tritonclient asks for binary outputs; the server answers in JSON.
    no_outputs = {"inputs": [tensor], "parameters": {"binary_data_output": True}}
    response = client.post("/v2/models/lite/infer", json=no_outputs)
    assert response.headers["content-type"].startswith("application/json")
    assert "inference-header-content-length" not in response.headers
    assert {o["name"] for o in response.json()["outputs"]} == {
        "labels",
        "class_ids",
        "probabilities",
    }
    # The binary extension (tritonclient's default) is refused clearly, not as bad JSON.
    binary = json.dumps(no_outputs).encode() + b"\x00\x00\x00\x05hello"
    header = {"Inference-Header-Content-Length": str(len(binary) - 9)}
    refused = client.post("/v2/models/lite/infer", content=binary, headers=header)
    assert refused.status_code == 400 and "binary_data=False" in refused.json()["error"]


def test_seed_api(client, expected):
    one = client.post("/predict", json={"text": TEXTS[0]}).json()
    assert one["model"] == "classifier" and one["version"] == 2
    assert one["label"] == max(one["probabilities"], key=one["probabilities"].get)
    many = client.post("/predict", json={"texts": TEXTS, "model": "classifier", "version": 1})
    rows = many.json()["predictions"]
    np.testing.assert_allclose(
        [list(r["probabilities"].values()) for r in rows], expected, atol=1e-5
    )
    assert client.get("/docs").status_code == 200
    assert "/v2/models/{model}/infer" in client.get("/openapi.json").json()["paths"]


V2 = "/v2/models/lite/infer"
V1 = "/v1/models/lite:predict"


def tensor(**overrides):
    texts = {"name": "texts", "datatype": "BYTES", "shape": [1], "data": ["hi"]}
    return {"inputs": [{**texts, **overrides}]}


BAD_REQUESTS = [
    # (path, body: bytes are sent as they are, status, words in the error)
    (V1, b'{"instances": ["unterminated', 400, "not valid JSON"),
    (V1, b'{"instances": ["\xff\xfe"]}', 400, "UTF-8"),
    (V1, b"", 400, "missing"),
    (V1, b"[1, 2]", 400, "invalid request"),
    (V1, {"instances": []}, 400, "no texts"),
    (V1, {"instances": [7]}, 400, "instances.0"),
    (V1, {"instances": ["a"], "inputs": ["b"]}, 400, "exactly one"),
    (V1, {"inputs": {"other": ["a"]}}, 400, "invalid request"),
    (V1, {"signature_name": "x", "instances": ["a"]}, 400, "unknown signature"),
    (V1, {"instances": [{"b64": "%%%"}]}, 400, "base64"),
    (V2, {"inputs": []}, 400, "exactly one input"),
    (V2, tensor(name="ids"), 400, "unknown input"),
    (V2, tensor(datatype="FP32", data=[1.0]), 400, "datatype BYTES"),
    (V2, tensor(shape=[2]), 400, "shape [2] needs 2"),
    (V2, tensor(shape=[1, 1, 1]), 400, "shape [n] or [n, 1]"),
    (V2, tensor(shape=[-1]), 400, "shape"),
    (V2, tensor(shape=[0], data=[]), 400, "no texts"),
    (V2, tensor(data=[5]), 400, "must be a string"),
    (V2, tensor(data=[["a"]]), 400, "nested deeper"),
    (V2, tensor(parameters={"binary_data_size": 6}), 400, "binary"),
    (
        V2,
        {
            "inputs": [{"name": "texts", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
            "outputs": [{"name": "logits"}],
        },
        400,
        "unknown output",
    ),  # fmt: skip
    (V2, {"inputs": "texts"}, 400, "inputs"),
    ("/v2/models/nope/infer", tensor(), 404, "not found"),
    ("/v2/models/lite/versions/9/infer", tensor(), 404, "not available"),
    ("/v2/models/lite/versions/x/infer", tensor(), 400, "non-negative integer"),
    ("/v1/models/lite/labels/none:predict", {"instances": ["a"]}, 404, "no label"),
    ("/predict", {"text": "a", "texts": ["b"]}, 400, "exactly one"),
    ("/predict", {"texts": "not a list"}, 400, "texts"),
    ("/predict", {"text": "a", "model": "nope"}, 404, "not found"),
    ("/predict", {"texts": ["a"] * 9}, 413, "limit is 8"),
    ("/predict", {"text": "a" * 2001}, 413, "limit is 2000"),
    ("/predict", b"x" * (10 * 1024 * 1024), 413, "limit is 65536 bytes"),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD_REQUESTS)
def test_bad_input_gets_a_clear_json_error(client, path, body, status, words):
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words.lower() in error.lower()
    assert "Traceback" not in response.text
    assert client.post("/predict", json={"text": "still serving?"}).status_code == 200


def test_chunked_body_over_the_limit_gets_413(client):
    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    response = client.post("/predict", content=chunks())
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_a_body_read_as_json_whatever_its_declared_type(client):
    body = json.dumps({"text": "rocket"}).encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        response = client.post("/predict", content=body, headers={"content-type": content_type})
        assert response.status_code == 200


def test_metrics_count_requests_batches_and_errors(client):
    client.post(V1, json={"instances": ["a", "b"]})
    client.post(V1, json={"instances": []})
    text = client.get("/metrics").text
    assert (
        'maas_requests_total{code="200",model="lite",protocol="tfserving_v1",version="1"}' in text
    )
    assert 'maas_request_errors_total{code="400",protocol="tfserving_v1"}' in text
    assert 'maas_batch_size_count{model="lite",version="1"}' in text
    assert (
        'maas_request_duration_seconds_bucket{le="0.5",model="lite",protocol="tfserving_v1",version="1"}'
        in text
    )  # noqa: E501
    assert 'maas_model_versions_available{model="classifier"} 2.0' in text


def test_one_structured_access_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="maas.access"):
        client.post(V1, json={"instances": ["a"]}, headers={"x-request-id": "abc"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "maas.access"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["method"], line["path"], line["status"]) == ("POST", V1, 200)
    assert (line["model"], line["version"], line["request_id"]) == ("lite", "1", "abc")
    assert line["duration_ms"] > 0


def test_a_model_failure_is_a_json_500_without_traceback(lite_repository, monkeypatch):
    config = ServerConfig(model_repository=lite_repository, poll_interval_s=0, batching=False)
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        loaded = client.app.state.maas.repository.resolve("lite")

        def broken(texts):
            raise RuntimeError("secret internal detail")

        monkeypatch.setattr(loaded.predictor, "_predict", broken)
        response = client.post(V1, json={"instances": ["a"]})
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error"}
        assert "secret" not in response.text
        assert client.get("/v2/health/live").status_code == 200


def test_api_keys_guard_everything_but_health(lite_repository):
    hashes = (bytes.fromhex(hash_key("s3cret-key").removeprefix("sha256:")),)
    config = ServerConfig(
        model_repository=lite_repository, poll_interval_s=0, api_key_hashes=hashes
    )
    with TestClient(create_app(config)) as client:
        body = {"instances": ["a"]}
        denied = client.post(V1, json=body)
        assert denied.status_code == 401
        assert denied.json() == {"error": "missing or invalid API key"}
        assert denied.headers["www-authenticate"].startswith("Bearer")
        assert client.post(V1, json=body, headers={"x-api-key": "wrong"}).status_code == 401
        assert client.get("/metrics").status_code == 401
        bearer = {"Authorization": "Bearer s3cret-key"}
        assert client.post(V1, json=body, headers=bearer).status_code == 200
        assert client.post(V1, json=body, headers={"x-api-key": "s3cret-key"}).status_code == 200
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


def test_background_loading_is_live_at_once_and_ready_once_loaded(lite_repository):
    config = ServerConfig(
        model_repository=lite_repository, poll_interval_s=0, load_in_background=True
    )
    app = create_app(config)
    models = app.state.maas.repository
    release = threading.Event()
    original = models._load
    models._load = lambda *args: release.wait(30) and original(*args)
    with TestClient(app) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        loading = client.post(V1, json={"instances": ["a"]})
        assert loading.status_code == 503 and "loading" in loading.json()["error"]
        release.set()
        wait_for(lambda: client.get("/v2/health/ready").status_code == 200, timeout=60)
        assert client.post(V1, json={"instances": ["a"]}).status_code == 200

"""Load shedding for real: ``maas serve --max-queue`` on a loopback port, overloaded on purpose.

A long batch window (1 s) holds every admitted request in the model's queue, so a burst of
concurrent requests overfills it: the requests past the bound are answered at once with 503
and ``Retry-After`` (gRPC: ``RESOURCE_EXHAUSTED``), counted in ``maas_requests_shed_total``,
and every request gets an answer.
"""

from __future__ import annotations

import concurrent.futures
import re
import subprocess
import sys

import grpc
import httpx
import pytest
from serving_support import running_server, tflite_artifact, write_repository

from maas.ports import free_port
from maas.serving.grpc import grpc_predict_v2_pb2 as oip
from maas.serving.grpc import grpc_predict_v2_pb2_grpc as oip_grpc
from maas.serving.layout import ModelConfig

pytestmark = pytest.mark.slow
BURST = 12
REQUESTS = [  # every REST protocol, one text each
    ("/predict", {"text": "the shuttle reached orbit"}),
    ("/v1/models/classifier:predict", {"instances": ["new brakes for my car"]}),
    (
        "/v2/models/classifier/infer",
        {"inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["a bill"]}]},
    ),
]


@pytest.fixture(scope="module")
def lite(small_project, tmp_path_factory):
    return tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)


def shed_count(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    found = re.search(r'^maas_requests_shed_total\{model="classifier"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_an_overfull_queue_answers_503_with_retry_after_and_counts_it(tmp_path, lite):
    repo = write_repository(tmp_path / "repo", {"classifier": {1: lite}})
    grpc_port = free_port()
    args = ["--model-repository", str(repo), "--max-queue", "3", "--batch-timeout-ms", "1000"]
    args += ["--grpc-port", str(grpc_port), "--poll-interval", "0"]
    with running_server(args, tmp_path / "server.log") as server, server.client() as client:
        before = shed_count(client)

        def post(index: int) -> httpx.Response:
            path, body = REQUESTS[index % len(REQUESTS)]
            with server.client() as own:  # a connection each: all in flight at once
                return own.post(path, json=body)

        with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
            answers = list(pool.map(post, range(BURST)))
        codes = [answer.status_code for answer in answers]
        assert set(codes) <= {200, 503} and len(codes) == BURST, codes
        ok, shed = codes.count(200), [a for a in answers if a.status_code == 503]
        assert 1 <= ok <= BURST - 3 and shed, codes  # the bound held, the rest were served
        for answer in shed:
            assert answer.headers["retry-after"] == "1"
            assert "overloaded" in answer.json()["error"], answer.text
        assert shed_count(client) - before == len(shed)

        # gRPC: the same queue, refused with RESOURCE_EXHAUSTED.
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            request = oip.ModelInferRequest(model_name="classifier")
            request.inputs.add(name="texts", datatype="BYTES", shape=[1])
            request.inputs[0].contents.bytes_contents.append(b"the shuttle")
            calls = [stub.ModelInfer.future(request, timeout=30) for _ in range(BURST)]
            outcomes = []
            for call in calls:
                try:
                    call.result()
                    outcomes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    outcomes.append(error.code())
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert dict(error.trailing_metadata())["retry-after"] == "1"
        assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        exhausted = outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert outcomes.count(grpc.StatusCode.OK) >= 1 and exhausted >= 1, outcomes
        assert shed_count(client) - before == len(shed) + exhausted
        # Once the burst is over, the model serves as before.
        assert client.post(*REQUESTS[0][:1], json=REQUESTS[0][1]).status_code == 200


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_queue_must_be_positive(tmp_path, value):
    (tmp_path / "repo").mkdir()
    command = [sys.executable, "-m", "maas.cli", "serve", "--model-repository"]
    command += [str(tmp_path / "repo"), "--max-queue", value]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "--max-queue must be a positive integer" in run.stderr and value in run.stderr


def test_max_queue_in_config_yaml_is_checked():
    assert ModelConfig.parse({"max_queue": 8}, where="m/config.yaml").max_queue == 8
    assert ModelConfig.parse({}, where="m/config.yaml").max_queue is None
    for bad in (0, -1, "8", True, 2.5):
        with pytest.raises(ValueError, match="m/config.yaml: max_queue must be a positive"):
            ModelConfig.parse({"max_queue": bad}, where="m/config.yaml")

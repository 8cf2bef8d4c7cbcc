"""Keys scoped per model, with rates and an admin scope: the key file, REST and gRPC alike.

One application in process (``with TestClient(app)``, its gRPC server started by the same
lifespan on a loopback port) over two models, ``news`` and ``spam``, and four keys: one per
kind of scope. Every protocol is called for real.
"""

from __future__ import annotations

import json
import logging
import shutil

import grpc
import pytest
from fastapi.testclient import TestClient
from serving_support import free_port, tflite_artifact, wait_for, write_repository
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from maas.serving.app import ServerConfig, create_app
from maas.serving.auth import KeyChecker, hash_key, key_id, parse_key_line, read_key_file
from maas.serving.grpc import GrpcSettings
from maas.serving.grpc import grpc_predict_v2_pb2 as oip
from maas.serving.grpc import grpc_predict_v2_pb2_grpc as oip_grpc
from maas.serving.ratelimit import Rate, TokenBucket

KEYS = {"news": "key-for-news", "limited": "key-limited", "admin": "key-admin", "all": "key-all"}
TEXTS = ["the shuttle launch was delayed", "my car engine stalls"]


def key_file_text() -> str:
    return "\n".join(
        [
            "# one key a line: its hash, then its scopes",
            f"{hash_key(KEYS['news'])}  name=news-client  models=news",
            f"{hash_key(KEYS['limited'])}  name=limited models=news rate=6/min burst=2",
            f"{hash_key(KEYS['admin'])}  name=ops  scopes=admin  # may reload",
            f"{hash_key(KEYS['all'])}",  # today's format: every model, no limit
        ]
    )


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def grpc_auth(name: str) -> tuple:
    return (("x-api-key", KEYS[name]),)


def infer_body(texts=TEXTS) -> dict:
    return {
        "inputs": [{"name": "texts", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    }


@pytest.fixture(scope="module")
def served(small_project, tmp_path_factory):
    lite = tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)
    tmp = tmp_path_factory.mktemp("keys")
    repository = write_repository(tmp / "repo", {"news": {1: lite}, "spam": {1: lite}})
    (tmp / "keys.txt").write_text(key_file_text())
    grpc_port = free_port()
    config = ServerConfig(
        model_repository=repository,
        poll_interval_s=0,  # only the admin's load re-reads the repository
        default_model="spam",
        api_keys=tuple(read_key_file(tmp / "keys.txt")),
        api_key_file=tmp / "keys.txt",  # followed while the server runs
        grpc=GrpcSettings(port=grpc_port, grace_s=1),
    )
    app = create_app(config)
    with (
        TestClient(app, raise_server_exceptions=False) as client,
        grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        grpc.channel_ready_future(channel).result(timeout=30)
        yield client, channel, repository, lite, tmp / "keys.txt"


def test_the_key_file_keeps_its_old_format_and_gains_scopes(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(key_file_text())
    news, limited, admin, everything = read_key_file(path)
    assert (news.id, news.models, news.rate, news.admin) == (
        "news-client", frozenset({"news"}), None, False,
    )  # fmt: skip
    assert limited.rate == Rate(per_second=0.1, burst=2)
    assert admin.admin and admin.models is None
    assert everything.models is None and everything.rate is None and not everything.admin
    # Without a name, the id is the start of the hash: it finds the line, it is not the key.
    assert everything.id == hash_key(KEYS["all"])[:19] and KEYS["all"] not in everything.id
    assert parse_key_line(f"{hash_key('k')} rate=50/s", "x").rate == Rate(50.0, 50)
    checker = KeyChecker(read_key_file(path))
    assert checker.check(KEYS["news"]) == news and checker.check("nope") is None


@pytest.mark.parametrize(
    "scopes, message",
    [
        ("models=news spam", "'spam': expected field=value"),
        ("models=news,", "'' is not a model name"),
        ("rate=fast", "rate='fast': expected a positive number"),
        ("rate=0/s", "expected a positive number"),
        ("burst=10", "burst= needs a rate="),
        ("rate=5/s burst=0", "burst='0': expected a whole number >= 1"),
        ("scopes=root", "unknown scope 'root'"),
        ("colour=blue", "the fields being name, models, rate, burst, scopes"),
        ("name=a name=b", "name= given twice"),
        ("name=", "name= has no value"),
        ("name=has:colon", "name='has:colon' must match"),
    ],
)
def test_a_malformed_scope_names_its_line(tmp_path, scopes, message):
    path = tmp_path / "keys.txt"
    path.write_text(f"# keys\n{hash_key('one')}\n{hash_key('two')} {scopes}\n")
    with pytest.raises(ValueError, match="keys.txt:3: ") as error:
        read_key_file(path)
    assert message in str(error.value)


def test_a_key_or_name_given_twice_is_refused(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"{hash_key('one')} name=a\n{hash_key('one')} name=b\n")
    with pytest.raises(ValueError, match="keys.txt:2: the same key as line 1"):
        read_key_file(path)
    path.write_text(f"{hash_key('one')} name=a\n{hash_key('two')} name=a\n")
    with pytest.raises(ValueError, match="keys.txt:2: the same key id as line 1"):
        read_key_file(path)


def test_a_token_bucket_allows_its_burst_then_its_rate():
    now = [100.0]
    bucket = TokenBucket(Rate(per_second=2.0, burst=3), clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # empty: the next token in 1/2 s
    now[0] += 0.5
    assert bucket.take() == 0.0 and bucket.take() > 0
    now[0] += 60  # a long pause refills the burst, no more
    assert [bucket.take() for _ in range(4)][-1] > 0


def test_a_key_for_one_model_is_refused_the_other_over_every_protocol(served):
    client, channel, *_ = served
    for name, model in (("news", "spam"), ("news", "news"), ("all", "spam")):
        allowed = model == "news" or name == "all"
        headers = auth(name)
        answers = {
            "v1": client.post(
                f"/v1/models/{model}:predict", json={"instances": TEXTS}, headers=headers
            ),
            "v1 version": client.post(
                f"/v1/models/{model}/versions/1:predict",
                json={"instances": TEXTS},
                headers=headers,
            ),
            "v2": client.post(f"/v2/models/{model}/infer", json=infer_body(), headers=headers),
            "/predict": client.post(
                "/predict", json={"texts": TEXTS, "model": model}, headers=headers
            ),
            "v1 status": client.get(f"/v1/models/{model}", headers=headers),
            "v1 metadata": client.get(f"/v1/models/{model}/metadata", headers=headers),
            "v2 metadata": client.get(f"/v2/models/{model}", headers=headers),
            "v2 ready": client.get(f"/v2/models/{model}/ready", headers=headers),
        }
        for what, answer in answers.items():
            if allowed:
                assert answer.status_code == 200, (name, model, what, answer.text)
            else:
                assert answer.status_code == 403, (name, model, what, answer.text)
                assert answer.json() == {
                    "error": f"API key 'news-client' may not use model '{model}'"
                }
    # /predict without a model: the default (spam) is out of the news key's scope.
    assert client.post("/predict", json={"text": "hi"}, headers=auth("news")).status_code == 403
    # A model that does not exist: 403 all the same, so a key cannot probe for names.
    assert client.get("/v2/models/secret", headers=auth("news")).status_code == 403

    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    tf_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for model in ("spam", "news"):
        request = oip.ModelInferRequest(model_name=model)
        tensor = request.inputs.add(name="texts", datatype="BYTES", shape=[len(TEXTS)])
        tensor.contents.bytes_contents.extend(text.encode() for text in TEXTS)
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = model
        predict.inputs["texts"].dtype = 7  # DT_STRING
        predict.inputs["texts"].tensor_shape.dim.add(size=len(TEXTS))
        predict.inputs["texts"].string_val.extend(text.encode() for text in TEXTS)
        calls = [
            ("ModelInfer", stub.ModelInfer, request),
            ("ModelMetadata", stub.ModelMetadata, oip.ModelMetadataRequest(name=model)),
            ("TF Predict", tf_stub.Predict, predict),
        ]
        for what, method, message in calls:
            if model == "news":
                method(message, metadata=grpc_auth("news"))  # answers
                continue
            with pytest.raises(grpc.RpcError) as error:
                method(message, metadata=grpc_auth("news"))
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, what
            assert "may not use model 'spam'" in error.value.details()
    reply = stub.ModelInfer(request, metadata=grpc_auth("news"))  # its own model, still
    assert reply.model_name == "news"
    metrics = client.get("/metrics", headers=auth("all")).text
    assert 'maas_api_key_refusals_total{key="news-client",reason="model"}' in metrics


def test_a_scoped_key_sees_only_its_models(served):
    client, *_ = served
    rows = client.post("/v2/repository/index", headers=auth("news")).json()
    assert {row["name"] for row in rows} == {"news"}
    rows = client.post("/v2/repository/index", json={"ready": True}, headers=auth("all")).json()
    assert {row["name"] for row in rows} == {"news", "spam"}
    assert {row["state"] for row in rows} == {"AVAILABLE"}
    # /metrics names every model: a key limited to some gets 403, one for all (or admin) not.
    assert client.get("/metrics", headers=auth("news")).status_code == 403
    assert client.get("/metrics", headers=auth("all")).status_code == 200
    assert client.get("/metrics", headers=auth("admin")).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200  # open, as before


def test_over_its_rate_a_key_gets_429_with_retry_after_over_rest_and_grpc(served):
    client, channel, *_ = served
    # 6 a minute, burst 2; the bucket is shared by REST and gRPC.
    assert (
        client.post(
            "/v2/models/news/infer", json=infer_body(), headers=auth("limited")
        ).status_code
        == 200
    )
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ModelMetadata(oip.ModelMetadataRequest(name="news"), metadata=grpc_auth("limited"))
    refused = client.post("/v2/models/news/infer", json=infer_body(), headers=auth("limited"))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    assert "'limited' is over its rate (0.1/s, burst 2)" in refused.json()["error"]
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelMetadata(oip.ModelMetadataRequest(name="news"), metadata=grpc_auth("limited"))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.value.trailing_metadata())
    assert 1 <= int(trailers["retry-after"]) <= 10
    # Other keys are not slowed by it, and the refusals are counted by key id.
    assert (
        client.post("/v2/models/news/infer", json=infer_body(), headers=auth("news")).status_code
        == 200
    )
    metrics = client.get("/metrics", headers=auth("all")).text
    assert 'maas_api_key_refusals_total{key="limited",reason="rate"} 2.0' in metrics
    assert 'maas_api_key_requests_total{key="limited"} 4.0' in metrics


def test_only_an_admin_key_changes_what_is_served(served):
    client, channel, repository, lite, _ = served
    for name in ("news", "all"):
        refused = client.post("/v2/repository/models/news/load", headers=auth(name))
        assert refused.status_code == 403 and "admin scope" in refused.json()["error"]
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.RepositoryModelLoad(
            oip.RepositoryModelLoadRequest(model_name="news"), metadata=grpc_auth("all")
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reload = model_management_pb2.ReloadConfigRequest()
    with pytest.raises(grpc.RpcError) as error:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            reload, metadata=grpc_auth("all")
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A new version on disk: the server polls never (interval 0); the admin's load re-reads.
    shutil.copytree(lite, repository / "news" / "2")
    try:
        assert (
            client.get("/v1/models/news", headers=auth("all")).json()["model_version_status"][0][
                "version"
            ]
            == "1"
        )
        loaded = client.post("/v2/repository/models/news/load", headers=auth("admin"))
        assert loaded.status_code == 200, loaded.text
        newest = loaded.json()["model_version_status"][0]
        assert newest["version"] == "2" and newest["state"] == "AVAILABLE"
        answer = client.post("/v2/models/news/infer", json=infer_body(), headers=auth("news"))
        assert answer.json()["model_version"] == "2"
        reply = stub.RepositoryModelLoad(
            oip.RepositoryModelLoadRequest(model_name="news"), metadata=grpc_auth("admin")
        )
        assert reply.isLoaded
        missing = client.post("/v2/repository/models/nope/load", headers=auth("admin"))
        assert missing.status_code == 404
        unload = client.post("/v2/repository/models/news/unload", headers=auth("admin"))
        assert unload.status_code == 409 and "follows its repository" in unload.json()["error"]
    finally:
        shutil.rmtree(repository / "news" / "2")
        client.post("/v2/repository/models/news/load", headers=auth("admin"))
    wait_for(
        lambda: (
            client.post("/v2/models/news/infer", json=infer_body(), headers=auth("news"))
            .json()
            .get("model_version")
            == "1"
        ),
        timeout=10,
    )
    metrics = client.get("/metrics", headers=auth("all")).text
    assert 'maas_api_key_refusals_total{key="sha256:' in metrics  # the unnamed key's id


def test_the_key_id_not_the_key_is_noted_and_logged(served, caplog):
    client, *_ = served
    notes: dict = {}
    grant = client.app.state.key_guard.admit(KEYS["news"], notes)
    assert key_id(notes) == grant.id == "news-client"
    assert key_id({}) is None  # no key: none to note
    with caplog.at_level(logging.INFO, logger="maas.access"):
        client.post("/v2/models/news/infer", json=infer_body(), headers=auth("news"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "maas.access"]
    assert lines[-1]["key"] == "news-client" and lines[-1]["status"] == 200
    assert KEYS["news"] not in caplog.text


def replace_file(path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def test_the_key_file_is_followed_and_a_malformed_edit_keeps_the_keys_in_force(served, caplog):
    client, *_, keys = served
    guard = client.app.state.key_guard
    original = keys.read_text()
    news = {"json": infer_body(), "headers": auth("news")}
    try:
        replace_file(keys, original.replace("models=news\n", "models=news rate=fast\n"))
        with caplog.at_level(logging.ERROR, logger="maas.serving.auth"):
            assert not guard.reload_if_changed()
        assert "keys.txt:2: rate='fast'" in caplog.text and "keys in force stay" in caplog.text
        assert client.post("/v2/models/news/infer", **news).status_code == 200  # still serving
        # A valid edit: the news key moves to spam, a new key appears; the server's own
        # task re-reads the file (every 2 s).
        edited = original.replace("models=news\n", "models=spam\n")
        replace_file(keys, edited + f"\n{hash_key('key-new')} name=new models=news\n")
        new = {"json": infer_body(), "headers": {"x-api-key": "key-new"}}
        wait_for(lambda: client.post("/v2/models/news/infer", **new).status_code == 200, 10)
        assert client.post("/v2/models/news/infer", **news).status_code == 403
        assert client.post("/v2/models/spam/infer", **news).status_code == 200
    finally:
        replace_file(keys, original)
        guard.reload_if_changed()
    assert client.post("/v2/models/news/infer", **new).status_code == 401
    assert client.post("/v2/models/news/infer", **news).status_code == 200

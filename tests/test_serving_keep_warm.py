"""Keep-warm rollback (``keep_previous`` in config.yaml) on the single-process engine."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import yaml
from fastapi.testclient import TestClient
from serving_support import tflite_artifact

from maas.serving.app import ServerConfig, create_app
from maas.serving.layout import ModelConfig, Scaling, pin_version, publish_version
from maas.serving.repository import AVAILABLE, END, ModelRepository


@pytest.fixture(scope="module")
def lite(small_project, tmp_path_factory):
    return tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)


def pin(root, version: int, keep: int = 1) -> None:
    """What ``maas models promote/rollback`` writes, plus keep_previous."""
    (root / "m" / "config.yaml").write_text(
        f"version_policy: specific\nversions: [{version}]\nlabels: {{production: {version}}}\n"
        f"keep_previous: {keep}\n"
    )


def test_config_parses_keep_previous_and_scaling():
    config = ModelConfig.parse(
        {"keep_previous": 2, "scaling": {"min_replicas": 1, "max_replicas": 3}}, where="m"
    )
    assert config.keep_previous == 2 and config.scaling == Scaling(1, 3)
    for raw, words in [
        ({"keep_previous": -1}, "keep_previous"),
        ({"keep_previous": True}, "keep_previous"),
        ({"scaling": {"max_replicas": 0}}, "max_replicas"),
        ({"scaling": {"min_replicas": 3, "max_replicas": 2}}, "min_replicas <= max_replicas"),
        ({"scaling": {"target_ongoing_requests": 0}}, "target_ongoing_requests"),
        ({"scaling": {"replicas": 2}}, "unknown scaling key 'replicas'"),
        ({"scaling": {"max_replicas": "many"}}, "must be a number"),
        ({"scaling": [1, 2]}, "must be a mapping"),
    ]:
        with pytest.raises(ValueError, match=words):
            ModelConfig.parse(raw, where="m/config.yaml")


def test_a_promotion_keeps_keep_previous_and_scaling(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.yaml").write_text(
        "version_policy: specific\nversions: [1]\nkeep_previous: 1\nscaling: {max_replicas: 3}\n"
    )
    pin_version(model_dir, 2, label="prod")
    raw = yaml.safe_load((model_dir / "config.yaml").read_text())
    config = ModelConfig.parse(raw, where="m/config.yaml")
    assert config.versions == (2,) and dict(config.labels) == {"prod": 2}
    assert config.keep_previous == 1 and config.scaling.max_replicas == 3


def test_a_rollback_to_a_warm_version_is_a_swap(tmp_path, lite):
    root = tmp_path / "repo"
    publish_version(lite, root, "m")
    publish_version(lite, root, "m")
    repository = ModelRepository(root)
    repository.poll()
    assert repository.resolve("m").version == 2
    loads = []
    original = repository._load
    repository._load = lambda *args: loads.append(args[1]) or original(*args)

    pin(root, 1)  # promote 1: loaded; 2 stays loaded, not served
    assert repository.poll() == []
    two = repository.warm("m")[2]
    assert loads == [1] and repository.resolve("m").version == 1
    assert {s.version: s.state for s in repository.status("m")} == {1: AVAILABLE, 2: END}

    pin(root, 2)  # roll back: no load, the same runtime, well under a second
    start = time.perf_counter()
    assert repository.poll() == []
    assert time.perf_counter() - start < 1.0
    assert loads == [1] and repository.resolve("m") is two
    assert list(repository.warm("m")) == [1]

    pin(root, 2, keep=0)  # nothing kept warm: version 1 is dropped now
    assert [d.version for d in repository.poll()] == [1]
    assert repository.warm("m") == {}

    pin(root, 1, keep=1)
    repository.poll()
    shutil.rmtree(root / "m" / "2")  # a warm version whose folder is gone goes
    assert [d.version for d in repository.poll()] == [2]


def test_the_server_rolls_back_to_a_warm_version_without_a_failed_request(tmp_path, lite):
    root = tmp_path / "repo"
    publish_version(lite, root, "m")
    publish_version(lite, root, "m")
    pin(root, 2)
    app = create_app(ServerConfig(model_repository=root, poll_interval_s=0.05))
    body = {"inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    with TestClient(app) as client:
        pin(root, 1)  # version 1 loads; 2 stays warm
        deadline = time.monotonic() + 60
        while client.post("/v2/models/m/infer", json=body).json()["model_version"] != "1":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answers, stop = [], threading.Event()

        def load() -> None:
            while not stop.is_set():
                response = client.post("/v2/models/m/infer", json=body)
                answers.append((time.perf_counter(), response.status_code, response.json()))

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(0.3)
        start = time.perf_counter()
        pin(root, 2)  # the rollback
        deadline = time.monotonic() + 10
        while not any(t > start and a.get("model_version") == "2" for t, _, a in answers):
            assert time.monotonic() < deadline, "the warm version never answered"
            time.sleep(0.01)
        switched = min(t for t, _, a in answers if t > start and a.get("model_version") == "2")
        time.sleep(0.3)
        stop.set()
        worker.join(10)
    assert [code for _, code, _ in answers if code != 200] == []
    assert switched - start < 1.0

"""``maas serve`` for real: a subprocess on a loopback port, HTTPS, keys, hot reload, shutdown."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
from serving_support import (
    ServerProcess,
    corrupt,
    make_certificates,
    running_server,
    tflite_artifact,
    wait_for,
)

from maas.serving.auth import hash_key
from maas.serving.layout import publish_version

pytestmark = pytest.mark.slow
KEY = "test-key-0123456789"
TEXTS = ["The shuttle reached orbit", "New brakes for my car"]


@pytest.fixture(scope="module")
def lite(small_project, tmp_path_factory):
    return tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)


def hashed_key_file(tmp_path) -> str:
    """The key file, made the documented way: ``maas serve --hash-api-key``."""
    line = subprocess.run(
        [sys.executable, "-m", "maas.cli", "serve", "--hash-api-key"],
        input=KEY, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", line)
    path = tmp_path / "keys.txt"
    path.write_text(line + "\n")
    return str(path)


def served_version(client, model="classifier") -> str:
    return client.get(f"/v1/models/{model}/metadata").json()["model_spec"]["version"]


def version_state(client, version: int, model="classifier") -> tuple[str, str] | None:
    for status in client.get(f"/v1/models/{model}").json()["model_version_status"]:
        if status["version"] == str(version):
            return status["state"], status["status"]["error_message"]
    return None


def test_https_api_keys_all_protocols_and_hot_reload(tmp_path, small_project, lite):
    certs = make_certificates(tmp_path / "tls")
    root = tmp_path / "repository"
    publish_version(small_project / "models" / "classifier", root, "classifier")
    args = [
        "--model-repository", str(root), "--poll-interval", "0.3",
        "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"]),
        "--api-key-file", hashed_key_file(tmp_path),
    ]  # fmt: skip
    with running_server(args, tmp_path / "server.log", tls_ca=certs["ca"]) as server:
        assert server.url.startswith("https://")
        with server.client() as anonymous:
            assert anonymous.get("/v2/health/live").status_code == 200
            denied = anonymous.post("/v1/models/classifier:predict", json={"instances": TEXTS})
            assert denied.status_code == 401 and denied.json()["error"]
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{server.port}/v2/health/live", timeout=5)
        with pytest.raises(httpx.ConnectError):  # the throwaway CA is not trusted by default
            httpx.get(f"{server.url}/v2/health/live", timeout=5)

        with server.client(headers={"Authorization": f"Bearer {KEY}"}) as client:
            v1 = client.post("/v1/models/classifier:predict", json={"instances": TEXTS})
            assert v1.status_code == 200 and len(v1.json()["predictions"]) == 2
            tensor = {"name": "texts", "datatype": "BYTES", "shape": [2], "data": TEXTS}
            v2 = client.post("/v2/models/classifier/infer", json={"id": "a", "inputs": [tensor]})
            assert v2.status_code == 200 and v2.json()["id"] == "a"
            labels = next(o for o in v2.json()["outputs"] if o["name"] == "labels")["data"]
            assert labels == [row["labels"] for row in v1.json()["predictions"]]
            seed = client.post("/predict", json={"text": TEXTS[0]})
            assert seed.json()["label"] == labels[0]

            # A new version appears: it is loaded, then served.
            assert publish_version(lite, root, "classifier") == 2
            wait_for(lambda: served_version(client) == "2")
            # A corrupt one is refused, and reported; version 2 keeps serving.
            shutil.copytree(lite, root / "classifier" / "3")
            corrupt(root / "classifier" / "3")
            wait_for(lambda: (version_state(client, 3) or ("",))[0] == "END")
            assert "hash" in version_state(client, 3)[1]
            assert served_version(client) == "2"
            assert client.post("/predict", json={"texts": TEXTS}).status_code == 200
            # Rollback (`maas models rollback`): config.yaml pins version 1.
            (root / "classifier" / "config.yaml").write_text(
                "version_policy: specific\nversions: [1]\nlabels: {stable: 1}\n"
            )
            wait_for(lambda: served_version(client) == "1")
            assert version_state(client, 1) == ("AVAILABLE", "")
            stable = client.get("/v1/models/classifier/labels/stable/metadata").json()
            assert stable["model_spec"]["version"] == "1"
            metrics = client.get("/metrics").text
            assert 'maas_model_versions_failed{model="classifier"} 1.0' in metrics
    access = [json.loads(line.split("maas.access: ", 1)[1]) for line in server.log().splitlines()
              if "maas.access: " in line]  # fmt: skip
    assert any(a["status"] == 401 for a in access)
    assert any(a["path"] == "/v2/models/classifier/infer" and a["version"] == "1" for a in access)
    assert "Traceback" not in server.log()


def test_batching_under_load_and_graceful_shutdown(tmp_path, lite):
    root = tmp_path / "repository"
    publish_version(lite, root, "lite")
    args = ["--model-repository", str(root), "--max-batch-size", "16",
            "--batch-timeout-ms", "800", "--graceful-timeout", "20"]  # fmt: skip
    server = ServerProcess(args, tmp_path / "server.log")
    try:
        server.wait_ready()
        body = {"instances": ["some text about space"]}

        def call(_):
            with server.client() as client:
                return client.post("/v1/models/lite:predict", json=body).status_code

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            assert list(pool.map(call, range(12))) == [200] * 12
        with server.client() as client:
            metrics = client.get("/metrics").text
        count = float(
            re.search(r'maas_batch_size_count\{model="lite",version="1"\} (\S+)', metrics)[1]
        )
        total = float(
            re.search(r'maas_batch_size_sum\{model="lite",version="1"\} (\S+)', metrics)[1]
        )
        assert total == 12 and count < 12  # coalesced: fewer model calls than requests

        # SIGTERM while a request waits for its batch: it still gets its answer.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call, None)
            time.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            assert pending.result(timeout=30) == 200
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit -15).
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/v2/health/live", timeout=2)
    finally:
        server.stop()


def test_cli_refuses_bad_options_clearly(tmp_path, lite):
    def serve(*args):
        return subprocess.run(
            [sys.executable, "-m", "maas.cli", "serve", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    missing = serve("--model-repository", str(tmp_path / "none"))
    assert missing.returncode == 2 and "model repository not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    plain = tmp_path / "keys.txt"
    plain.write_text("a-plain-key\n")
    keys = serve("--model-repository", str(tmp_path), "--api-key-file", str(plain))
    assert keys.returncode == 2 and "never a plain key" in keys.stderr
    scoped = tmp_path / "scoped.txt"
    scoped.write_text(f"# ops\n{hash_key('k')} models=news rate=lots\n")
    scope = serve("--model-repository", str(tmp_path), "--api-key-file", str(scoped))
    assert scope.returncode == 2 and "scoped.txt:2: rate='lots'" in scope.stderr
    certs = make_certificates(tmp_path / "tls")
    tls = serve("--model-repository", str(tmp_path), "--tls-cert", str(certs["cert"]))
    assert tls.returncode == 2 and "both --tls-cert and --tls-key" in tls.stderr
    assert "--max-batch-size" in serve("--help").stdout

"""The traffic log and drift: redaction, the writer's bounds, and one real server.

The redaction fixture holds e-mail addresses, phone numbers, IPv4/IPv6 addresses, URLs and
card/account numbers in English, German, Russian, Japanese and Arabic texts; none may reach
the log. One ``maas serve`` (REST and gRPC, an API key, ``--payload-log``) on the small
project's classifier serves the end-to-end tests: every protocol logged and redacted, drift
quiet on the project's test posts and raised by Chinese texts (another corpus and script).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import nbformat
import numpy as np
import pytest
from corpus_fixtures import chinese_texts
from prometheus_client.parser import text_string_to_metric_families
from serving_support import free_port, running_server, tflite_artifact, wait_for, write_repository
from traffic_fixtures import PII, PLAIN, secrets

from maas import cli
from maas.serving.auth import hash_key
from maas.serving.drift import DriftMonitor
from maas.serving.grpc import grpc_predict_v2_pb2 as oip
from maas.serving.grpc import grpc_predict_v2_pb2_grpc as oip_grpc
from maas.serving.metrics import Metrics
from maas.serving.payload_log import PayloadLog, PayloadLogSettings, Record
from maas.serving.redact import KINDS, Redactor, parse_kinds
from maas.serving.tap import TrafficSettings, TrafficTap
from maas.splits import read_split
from maas.text_stats import REFERENCE_FILE
from maas.tokenizer import Tokenizer
from maas.traffic import read_records

ROOT = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("MAAS_CORPORA", "/work/shared/data/corpora"))
KEY = "traffic-test-key-0123456789"
KEY_NAME = "traffic-bot"  # the key's id in records (auth.key_id): never the key


def read_metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# Redaction, on the fixture.


def test_redaction_masks_every_kind_in_every_script_and_keeps_the_rest():
    redact = Redactor()
    for text, found in PII:
        masked = redact(text)
        for secret in found:
            assert secret not in masked, (secret, masked)
        assert re.search(r"\[(EMAIL|PHONE|IP|URL|NUMBER)\]", masked)
    assert redact(PLAIN) == PLAIN
    assert redact(PII[0][0]).startswith("Write to [EMAIL] or call [PHONE] about")
    assert "[IP]" in redact("from 192.168.10.20 and 2001:db8::1")
    assert redact("see https://a.example.com/x@y.org") == "see [URL]"


def test_redaction_kinds_are_configurable():
    assert parse_kinds("default") == KINDS
    assert parse_kinds("none") == ()
    assert parse_kinds("email, ip") == ("email", "ip")
    for bad in ("emails", "", "email,,card"):
        with pytest.raises(ValueError, match="--payload-redact"):
            parse_kinds(bad)
    text = PII[0][0]
    assert Redactor(parse_kinds("none"))(text) == text
    only_email = Redactor(parse_kinds("email"))(text)
    assert "[EMAIL]" in only_email and "555-0132" in only_email


# The writer: rotation, bounds, drops.


def record(texts: list[str], request_id: str = "r") -> Record:
    probabilities = np.full((len(texts), 3), 1 / 3, dtype=np.float32)
    probabilities[:, 1] = 0.5
    return Record(
        time=1.7e9, model="m", version=1, labels=("a", "b", "c"), texts=texts,
        probabilities=probabilities, class_ids=probabilities.argmax(axis=1),
        request_id=request_id, protocol="seed", status="200", latency_s=0.01,
    )  # fmt: skip


def test_log_files_rotate_and_stay_bounded(tmp_path):
    settings = PayloadLogSettings(directory=tmp_path, max_file_bytes=2048, max_files=3)
    writer = PayloadLog(settings)
    for i in range(60):
        writer.write([record([f"text {i} " + "x" * 200], request_id=f"r{i}").wire()])
    writer.close()
    files = sorted(tmp_path.glob("payloads-*.jsonl"))
    assert len(files) == 3
    assert all(path.stat().st_size <= 2048 for path in files)
    ids = [row["request_id"] for row in read_records(tmp_path)]
    assert ids[-1] == "r59" and "r0" not in ids  # the oldest went, the newest stayed
    assert ids == sorted(ids, key=lambda name: int(name[1:]))


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path):
    metrics = Metrics()
    payload = PayloadLogSettings(directory=tmp_path, queue_size=2)
    tap = TrafficTap(TrafficSettings(payload=payload, drift_window=0), metrics)

    async def serve() -> None:
        await tap.start()
        for i in range(5):  # in one go: the loop sends nothing meanwhile
            tap.submit(record(["t"], request_id=str(i)))
        assert len(tap.records) == 2
        await tap.stop()  # writes what is queued

    asyncio.run(serve())
    text = metrics.render().decode()
    assert read_metric(text, "maas_payload_log_dropped_total", reason="queue_full") == 3
    assert read_metric(text, "maas_payload_log_records_total") == 2
    assert [row["request_id"] for row in read_records(tmp_path)] == ["0", "1"]


# One real server.


@pytest.fixture(scope="module")
def classifier(small_project):
    return small_project / "models" / "classifier"


@pytest.fixture(scope="module")
def server(classifier, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("traffic-server")
    lite = tflite_artifact(classifier, tmp_path_factory)
    repository = write_repository(tmp / "repo", {"classifier": {1: lite}})
    # The TFLite conversion keeps only the model: the statistics come from the export.
    (repository / "classifier" / "1" / REFERENCE_FILE).write_bytes(
        (classifier / REFERENCE_FILE).read_bytes()
    )
    (tmp / "keys.txt").write_text(f"{hash_key(KEY)}  name={KEY_NAME}\n")
    grpc_port = free_port()
    args = [
        "--model-repository", str(repository), "--poll-interval", "0",
        "--api-key-file", str(tmp / "keys.txt"), "--grpc-port", str(grpc_port),
        "--payload-log", str(tmp / "log"), "--payload-sample", "1",
        "--drift-window", "150", "--drift-rate", "10000", "--max-texts", "200",
    ]  # fmt: skip
    with running_server(args, tmp / "server.log") as process:
        process.grpc_target = f"127.0.0.1:{grpc_port}"
        process.log_dir = tmp / "log"
        yield process


def post(server, path: str, body: dict, request_id: str) -> httpx.Response:
    with server.client(headers={"x-api-key": KEY, "x-request-id": request_id}) as client:
        response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.slow  # a real server, or a notebook's kernel
def test_every_protocol_is_logged_redacted_with_its_key_id(server):
    texts = [text for text, _ in PII]
    post(server, "/v1/models/classifier:predict", {"instances": texts}, "req-v1")
    v2 = {"inputs": [{"name": "texts", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    post(server, "/v2/models/classifier/infer", v2, "req-v2")
    post(server, "/predict", {"text": PII[1][0]}, "req-seed")
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = oip.ModelInferRequest(model_name="classifier")
        tensor = request.inputs.add(name="texts", datatype="BYTES", shape=[len(texts)])
        tensor.contents.bytes_contents.extend(text.encode() for text in texts)
        metadata = (("x-api-key", KEY), ("x-request-id", "req-grpc"))
        oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata)

    def logged() -> dict[str, dict]:
        return {row["request_id"]: row for row in read_records(server.log_dir)}

    wanted = {"req-v1", "req-v2", "req-seed", "req-grpc"}
    wait_for(lambda: wanted <= set(logged()), timeout=20)
    rows = logged()
    protocols = {rows[name]["protocol"] for name in wanted}
    assert protocols == {"tfserving_v1", "oip_v2", "seed", "oip_v2_grpc"}
    for name in wanted:
        row = rows[name]
        assert row["model"] == "classifier" and row["version"] == 1
        assert row["key_id"] == KEY_NAME
        assert row["latency_ms"] > 0 and row["status"] in ("200", "OK")
        assert len(row["outputs"]) == len(row["inputs"])
        for output in row["outputs"]:
            assert output["label"] in ("rec.autos", "sci.space", "talk.politics.guns")
            assert 0 < output["confidence"] <= 1
    assert len(rows["req-v1"]["inputs"]) == len(PII)
    written = "".join(path.read_text() for path in server.log_dir.glob("*.jsonl"))
    assert KEY not in written and hash_key(KEY) not in written
    for secret in secrets():
        assert secret not in written, secret
    assert "[EMAIL]" in written and "[IP]" in written and "[NUMBER]" in written
    with server.client(headers={"x-api-key": KEY}) as client:
        metrics = client.get("/metrics").text
    assert read_metric(metrics, "maas_payload_log_records_total") >= 4


def drift_of(server) -> dict:
    with server.client(headers={"x-api-key": KEY}) as client:
        return client.get("/v2/models/classifier").json()["parameters"]["drift"]


def send(server, texts: list[str], request_id: str) -> None:
    for start in range(0, len(texts), 50):
        post(server, "/v1/models/classifier:predict",
             {"instances": texts[start : start + 50]}, request_id)  # fmt: skip


@pytest.mark.slow  # a real server, or a notebook's kernel
def test_drift_stays_quiet_in_distribution_and_rises_on_another_corpus(server, small_project):
    test_posts = read_split(small_project / "data" / "processed" / "test.jsonl").texts
    send(server, test_posts[:150], "in-distribution")
    wait_for(lambda: drift_of(server).get("texts") == 150, timeout=30)
    quiet = drift_of(server)
    assert quiet["watched"] and quiet["drifted"] is False, quiet
    assert quiet["score"] <= quiet["threshold"] == 0.3
    send(server, [text for text, _ in chinese_texts(per_class=50)], "another-corpus")
    wait_for(lambda: (drift_of(server).get("score") or 0) > 0.3, timeout=30)
    drifted = drift_of(server)
    assert drifted["drifted"] is True, drifted
    assert drifted["features"]["scripts"] > 0.3 and drifted["features"]["languages"] > 0.3
    with server.client(headers={"x-api-key": KEY}) as client:
        metrics = client.get("/metrics").text
        v1 = client.get("/v1/models/classifier/metadata").json()
    labels = {"model": "classifier", "version": "1"}
    assert read_metric(metrics, "maas_drift_detected", **labels) == 1
    assert read_metric(metrics, "maas_drift_score", **labels) > 0.3
    assert v1["metadata"]["maas"]["drift"]["drifted"] is True


@pytest.mark.parametrize("corpus", ["debian-ru.csv", "debian-ja.csv"])
def test_other_languages_drift_past_the_threshold(classifier, small_project, corpus):
    path = CORPORA / corpus
    if not path.is_file():
        pytest.skip(f"{path} not found (the shared corpora folder)")
    with path.open(encoding="utf-8") as handle:
        texts = [row["text"] for row, _ in zip(csv.DictReader(handle), range(200), strict=False)]
    reference = json.loads((classifier / REFERENCE_FILE).read_text())
    tokenizer = Tokenizer.load(classifier / "tokenizer.json")
    monitor = DriftMonitor(reference, tokenizer, window=200, threshold=0.3)
    for i, text in enumerate(texts):
        monitor.add(text, i % len(tokenizer.labels))
    report = monitor.report()
    assert report["drifted"] is True and report["score"] > 0.3, report
    assert report["features"]["languages"] > 0.9 and report["features"]["unknown"] > 0.5


def test_bad_traffic_options_fail_at_start_with_a_clear_error(tmp_path, caplog):
    (tmp_path / "repo").mkdir()
    (tmp_path / "a-file").write_text("")
    base = ["serve", "--model-repository", str(tmp_path / "repo"), "--port", str(free_port())]
    cases = {
        ("--payload-log", str(tmp_path / "a-file" / "log")): "not writable",
        ("--payload-log", str(tmp_path / "log"), "--payload-sample", "1.5"): "--payload-sample",
        ("--payload-log", str(tmp_path / "log"), "--payload-redact", "cards"): "--payload-redact",
        ("--drift-threshold", "0"): "--drift-threshold",
    }
    for extra, message in cases.items():
        caplog.clear()
        assert cli.main([*base, *extra]) == 2, extra  # before any model loads
        assert message in caplog.text, (extra, caplog.text)


@pytest.mark.slow  # a real server, or a notebook's kernel
def test_the_traffic_notebook_reads_a_log(tmp_path):
    """08-traffic.ipynb on a log written here: volume, latency, class mix, candidates."""
    writer = PayloadLog(PayloadLogSettings(directory=tmp_path / "log"))
    rng = np.random.default_rng(0)
    for i in range(40):
        row = record([f"post {i} about engines", f"post {i} about orbits"], request_id=f"r{i}")
        row.time = 1.7e9 + 20 * i  # over 13 minutes
        row.latency_s = float(rng.uniform(0.005, 0.05))
        row.probabilities = rng.dirichlet([1, 1, 1], size=2).astype(np.float32)
        row.class_ids = row.probabilities.argmax(axis=1)
        writer.write([row.wire()])
    unsure = record(["which newsgroup is this?"], request_id="unsure")
    unsure.probabilities = np.array([[0.34, 0.33, 0.33]], dtype=np.float32)
    unsure.class_ids = np.array([0])
    writer.write([unsure.wire()])
    writer.close()
    executed = tmp_path / "08-traffic.ipynb"
    command = [
        Path(sys.executable).parent / "papermill", ROOT / "notebooks" / "08-traffic.ipynb",
        executed, "--cwd", ROOT / "notebooks", "-p", "log_dir", str(tmp_path / "log"),
        "-p", "every", "5min", "--no-progress-bar", "--log-level", "WARNING",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    shown = [o.get("data", {}) for c in cells for o in c.outputs]
    markdown = [data.get("text/markdown", "") for data in shown]
    assert any(text.startswith("41 requests, 81 texts") for text in markdown), markdown
    assert sum("image/png" in data for data in shown) == 1
    assert any("p99" in text and "seed" in text for text in markdown)
    candidates = next(text for text in markdown if "which newsgroup" in text)
    first_row = candidates.splitlines()[2]
    assert "which newsgroup is this?" in first_row and "0.34" in first_row

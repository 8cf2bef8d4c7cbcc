"""Safe rollouts: canary and shadow beside prod, automatic analysis, rollback under load.

One real server (``maas serve`` in a subprocess on loopback, fault injection switched on)
serves a model whose prod version is the small TFLite classifier; each case writes a rollout
into its ``config.yaml``, as ``maas models promote --canary`` does, and drives load from
client threads until the server has decided by itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import grpc
import httpx
import pytest
import yaml
from serving_support import ServerProcess, faulty_artifact, tflite_artifact, wait_for

from maas.ports import free_port
from maas.registry.status import fetch_status, render_status
from maas.serving import layout
from maas.serving.faults import SWITCH
from maas.serving.rollout import (
    PROMOTE,
    ROLL_BACK,
    RolloutSpec,
    WindowStats,
    analyse,
    class_shift,
)

MODEL = "m"
PROD = 1
RARE_CLASS = 0  # the class the small model predicts least (the constant-class version's)
MARKER = "BOOM"  # texts holding it make the failing version fail
CLIENTS = 6


@pytest.fixture(scope="module")
def texts(small_project) -> list[str]:
    path = small_project / "data" / "processed" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [row["text"][:400] for row in rows]


@pytest.fixture(scope="module")
def server(small_project, tmp_path_factory):
    lite = tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)
    root = tmp_path_factory.mktemp("rollout-repository")
    bad = {
        2: {"fail_on": MARKER},
        3: {"slowdown": 10},
        4: {"constant_class": RARE_CLASS},
        5: None,  # a good candidate: the same model
        6: {"constant_class": RARE_CLASS},  # the shadow case's
        7: None,
        9: None,  # the sticky case's
    }
    faulty_artifact(lite, root / MODEL / str(PROD), None)
    for version, faults in bad.items():
        faulty_artifact(lite, root / MODEL / str(version), faults)
    layout.pin_version(root / MODEL, PROD, label="prod")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SWITCH, "1")
        log_path = tmp_path_factory.mktemp("rollout-log") / "server.log"
        grpc_port = free_port()
        args = ["--model-repository", str(root), "--poll-interval", "0.2"]
        process = ServerProcess([*args, "--grpc-port", str(grpc_port)], log_path)
    try:
        process.wait_ready()
        process.root, process.grpc_port = root, grpc_port
        yield process
    finally:
        process.stop()


def start(
    server, candidate: int, *, mode="canary", share=20.0, sticky="", **window
) -> RolloutSpec:
    """Start a rollout of ``candidate`` beside whichever version holds prod now."""
    model_dir = server.root / MODEL
    baseline = layout.read_config(model_dir).labels["prod"]
    raw = {
        "id": f"{MODEL}-{candidate}-{time.time_ns()}",
        "mode": mode,
        "baseline": baseline,
        "candidate": candidate,
        "share": share,
        "sticky": sticky,
        "window": {"requests": window.get("requests", 60), "seconds": window.get("seconds", 30)},
        "min_requests": window.get("min_requests", 30),
        "bounds": {"max_p99_ratio": 2.0, "p99_slack_ms": 5.0},
    }
    spec = RolloutSpec.parse(raw, where="test", versions=(baseline, candidate))
    layout.start_rollout(model_dir, spec)
    with server.client() as client:
        wait_for(lambda: _available(client) >= {baseline, candidate}, timeout=30, interval=0.1)
    return spec


def _available(client) -> set[int]:
    body = client.get(f"/v1/models/{MODEL}").json()
    return {int(s["version"]) for s in body["model_version_status"] if s["state"] == "AVAILABLE"}


def decision_of(server, spec: RolloutSpec) -> dict | None:
    found = [r for r in layout.read_decisions(server.root / MODEL) if r["id"] == spec.id]
    return found[0] if found else None


class Load:
    """Client threads posting texts (some with the failing marker) until stopped; every
    answer is kept with the time it came and the version that gave it."""

    def __init__(self, server, texts: list[str], *, marked_every: int = 5) -> None:
        self.server, self.texts, self.marked_every = server, texts, marked_every
        self.results: list[tuple[float, int, int | None]] = []  # (time, status, version)
        self.marked: list[int | None] = []  # the versions that answered marked texts
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]

    def _run(self, worker: int) -> None:
        with self.server.client() as client:
            n = worker
            while not self._stop.is_set():
                text = self.texts[n % len(self.texts)]
                marked = n % self.marked_every == 0
                if marked:
                    text = f"{MARKER} {text}"
                n += CLIENTS
                tensor = {"name": "texts", "datatype": "BYTES", "shape": [1], "data": [text]}
                try:
                    response = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]})
                    version = (
                        int(response.json()["model_version"]) if response.is_success else None
                    )
                    self.results.append((time.monotonic(), response.status_code, version))
                    if marked:
                        self.marked.append(version)
                except httpx.HTTPError:
                    self.results.append((time.monotonic(), 0, None))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def failures(self, since: float = 0.0, until: float = float("inf")) -> tuple[int, int]:
        window = [r for r in self.results if since <= r[0] < until]
        return sum(status != 200 for _, status, _ in window), len(window)


@pytest.mark.parametrize(
    ("candidate", "words"),
    [(2, "error rate"), (3, "p99 latency"), (4, "predicted-class mix")],
    ids=["fails-on-some-inputs", "ten-times-slower", "constant-class"],
)
def test_a_bad_canary_is_rolled_back_by_itself_under_load(server, texts, candidate, words):
    spec = start(server, candidate)
    started = time.monotonic()
    with Load(server, texts) as load:
        wait_for(lambda: decision_of(server, spec) is not None, timeout=40, interval=0.1)
        decided = time.monotonic()
        time.sleep(1.5)  # traffic after the decision: every request must succeed
    record = decision_of(server, spec)
    assert record["outcome"] == ROLL_BACK, record
    assert words in record["reason"], record
    assert record["winner"] == spec.baseline
    assert decided - started < spec.window_seconds  # within the window, by itself
    failed, total = load.failures()
    assert total > 200 and failed <= 0.01 * total, (failed, total)
    assert load.failures(since=decided + 0.2)[0] == 0
    late = [v for t, s, v in load.results if t > decided + 0.2]
    assert late and set(late) == {spec.baseline}  # the candidate gets nothing any more
    if candidate == 2:  # its failures were answered by prod, and say so
        assert load.marked and candidate not in load.marked
    config = layout.read_config(server.root / MODEL)  # pinned back to prod
    assert config.rollout is None and config.versions == (spec.baseline,)
    assert "rollout_decision" in server.log() and spec.id in server.log()


def test_a_good_canary_is_promoted_and_metrics_show_both_versions(server, texts):
    spec = start(server, 5, share=30.0)
    with Load(server, texts, marked_every=10**9) as load:
        wait_for(lambda: decision_of(server, spec) is not None, timeout=40, interval=0.1)
    record = decision_of(server, spec)
    assert record["outcome"] == PROMOTE, record
    served = Counter(v for _, s, v in load.results if s == 200)
    assert served[5] > 0 and served[spec.baseline] > served[5]  # a split, mostly prod
    with server.client() as client:
        wait_for(lambda: _available(client) == {5}, timeout=20, interval=0.1)
    status = fetch_status(server.url, MODEL)  # what `maas models status` shows
    canary = status["metrics"]["5"]  # version 5 served in this test only
    counted = canary["rollout"]["canary_ok"]  # the window's calls (later ones: no rollout)
    assert spec.window_requests <= counted <= served[5]
    assert canary["requests"] >= served[5] and canary["latency_count"] >= served[5]
    assert sum(canary["classes"].values()) == counted  # one text per request
    assert status["metrics"][str(spec.baseline)]["rollout"]["baseline_ok"] > 0
    assert any(d["id"] == spec.id and d["outcome"] == PROMOTE for d in status["decisions"])
    assert f"decision {spec.id}: promoted" in render_status(status)


def test_shadow_answers_from_prod_and_rolls_back_a_disagreeing_candidate(server, texts):
    spec = start(server, 6, mode="shadow", requests=80)
    with Load(server, texts, marked_every=10**9) as load:
        wait_for(lambda: decision_of(server, spec) is not None, timeout=40, interval=0.1)
    record = decision_of(server, spec)
    assert record["outcome"] == ROLL_BACK and "agreement with prod" in record["reason"]
    assert record["figures"]["agreement"] < 0.5
    assert load.failures()[0] == 0
    assert {v for _, s, v in load.results if s == 200} == {spec.baseline}  # prod answered all


def test_a_sticky_canary_keeps_each_caller_on_one_side_over_rest_and_grpc(server, texts):
    from maas.serving.grpc import grpc_predict_v2_pb2 as oip
    from maas.serving.grpc import grpc_predict_v2_pb2_grpc as oip_grpc

    spec = start(server, 9, share=50.0, sticky="header:x-user", requests=10**6, seconds=300)
    sides = {}
    with (
        server.client() as client,
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        for user in (f"user-{n}" for n in range(16)):
            seen = set()
            for text in texts[:4]:
                body = {"model": MODEL, "text": text}
                response = client.post("/predict", json=body, headers={"x-user": user})
                seen.add(response.json()["version"])
                request = oip.ModelInferRequest(model_name=MODEL)
                tensor = request.inputs.add(name="texts", datatype="BYTES", shape=[1])
                tensor.contents.bytes_contents.append(text.encode())
                reply = stub.ModelInfer(request, metadata=(("x-user", user),))
                seen.add(int(reply.model_version))
            assert len(seen) == 1, (user, seen)  # the same side, whichever protocol
            sides[user] = seen.pop()
    assert set(sides.values()) == {spec.baseline, spec.candidate}
    layout.pin_version(server.root / MODEL, spec.baseline, label="prod")  # end it by hand
    with server.client() as client:
        wait_for(lambda: _available(client) == {spec.baseline}, timeout=20, interval=0.1)


def test_bad_rollouts_get_a_clear_error_and_prod_keeps_serving(server, texts, tmp_path):
    model_dir = server.root / MODEL
    baseline = layout.read_config(model_dir).labels["prod"]
    raw = {"id": "x", "baseline": baseline, "candidate": 7}
    for bad, words in (
        ({"share": 150}, "between 0 and 100"),
        ({"share": -1}, "between 0 and 100"),
        ({"candidate": 99}, "must both be in"),
        ({"mode": "blue-green"}, "mode"),
        ({"sticky": "cookie"}, "sticky"),
        ({"window": {"requests": 0}}, "window"),
    ):
        with pytest.raises(ValueError, match=words):
            RolloutSpec.parse({**raw, **bad}, where="t", versions=(baseline, 7))
    # Two rollouts at once on one model: the second is refused, nothing written.
    spec = start(server, 7, share=0.0, seconds=30)
    before = (model_dir / layout.CONFIG_FILE).read_bytes()
    other = RolloutSpec.parse({**raw, "id": "other"}, where="t", versions=(baseline, 7))
    with pytest.raises(ValueError, match="already in progress"):
        layout.start_rollout(model_dir, other)
    assert (model_dir / layout.CONFIG_FILE).read_bytes() == before
    # A malformed config.yaml: the server keeps the config in force, reports the error.
    (model_dir / layout.CONFIG_FILE).write_text("rollout: {share: 500}\nversion_policy: all\n")
    with server.client() as client:
        wait_for(lambda: "config_error" in client.get(f"/v1/models/{MODEL}").json(), 10, 0.1)
        assert client.post("/predict", json={"text": texts[0]}).status_code == 200
    # A candidate that does not load: rolled back at once, prod keeps serving.
    (model_dir / "8").mkdir()
    (model_dir / "8" / "model.tflite").write_bytes(b"not a model")
    broken = RolloutSpec.parse(
        {**raw, "id": "broken", "candidate": 8}, where="t", versions=(baseline, 8)
    )
    config = yaml.safe_load(before)
    config.update(versions=[baseline, 8], rollout=broken.to_yaml())
    (model_dir / layout.CONFIG_FILE).write_text(yaml.safe_dump(config))
    wait_for(lambda: decision_of(server, broken) is not None, timeout=20, interval=0.1)
    assert "failed to load" in decision_of(server, broken)["reason"]
    assert decision_of(server, spec) is None  # the replaced rollout never decided
    with server.client() as client:
        for _ in range(20):
            response = client.post("/predict", json={"text": texts[0]})
            assert response.status_code == 200 and response.json()["version"] == baseline


def test_analysis_compares_the_sides_as_documented():
    spec = RolloutSpec.parse(
        {"id": "a", "baseline": 1, "candidate": 2, "window": {"requests": 10}, "min_requests": 5},
        where="t",
        versions=(1, 2),
    )
    stats = WindowStats()
    for _ in range(100):
        stats.baseline.record(0.010, [0, 1, 1, 2])
    for _ in range(10):
        stats.candidate.record(0.011, [0, 1, 1, 2])
    assert analyse(spec, stats, 1.0).outcome == PROMOTE
    stats.candidate.record(0.5, [0])  # one slow call is the candidate's p99 of 11
    assert "p99 latency" in analyse(spec, stats, 1.0).reason
    assert class_shift(Counter({0: 5}), Counter({1: 5})) == 1.0
    assert class_shift(Counter({0: 5, 1: 5}), Counter({0: 1, 1: 1})) == 0.0
    few = WindowStats()
    few.candidate.record(0.01, [0])
    assert "at least 5 needed" in analyse(spec, few, 30.0).reason

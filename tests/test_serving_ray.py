"""``maas serve --engine ray`` on a 2-node Ray cluster in a private network namespace.

One run of ``tests/ray_scenario.py`` per module (a cluster takes a minute to start on two
cores): a head and a second node, the server on them, and under real HTTP load on
127.0.0.1 the phases below, each asserted here from what the scenario recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from serving_support import ROOT, make_tflite_artifact, tflite_artifact

from maas.runtime import load_runtime
from maas.serving.auth import hash_key
from maas.text_stats import REFERENCE_FILE

PRIVATE_NETWORK = ROOT.parent / "shared" / "tools" / "in-private-network"
TEXTS = ["the shuttle launch was delayed", "my car engine stalls", "a bill on gun sales"]
API_KEY = "ray-scenario-key"  # the scenario's (tests/ray_scenario.py)

pytestmark = pytest.mark.slow


def private_network_or_skip() -> Path:
    tool = Path(os.environ.get("MAAS_PRIVATE_NETWORK", PRIVATE_NETWORK))
    if not tool.is_file():
        pytest.skip(f"no private-network tool at {tool}: Ray must not bind the machine's address")
    probe = subprocess.run([str(tool), "true"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private network namespace: {probe.stderr.strip()[:300]}")
    return tool


@pytest.fixture(scope="module")
def lite(small_project, tmp_path_factory):
    return tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)


@pytest.fixture(scope="module")
def scenario(lite, small_project, tmp_path_factory):
    tool = private_network_or_skip()
    work = tmp_path_factory.mktemp("ray")
    repo = work / "repo"
    shutil.copytree(lite, repo / "news" / "1")
    # The training statistics drift compares with (the TFLite conversion keeps only the model).
    shutil.copy(small_project / "models" / "classifier" / REFERENCE_FILE, repo / "news" / "1")
    # The ensemble's second member: another model (its output bias shifted), so that the
    # average differs from either member.
    shifted = work / "shifted"
    make_tflite_artifact(small_project / "models" / "classifier", shifted, bias_shift_seed=1)
    shutil.copytree(shifted, repo / "news2" / "1")
    # The fronts send batches, so a replica sees batches in flight, not requests: 16 clients
    # and batches of 8 keep about 1 to 2 in flight per replica, which a target of 2 did not
    # always pass on a loaded machine (CI saw no upscale in 120 s). A target of 1 is passed.
    (repo / "news" / "config.yaml").write_text(
        "keep_previous: 1\nscaling: {min_replicas: 1, max_replicas: 2, "
        "target_ongoing_requests: 1, upscale_delay_s: 1, downscale_delay_s: 4}\n"
    )
    out = work / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_USAGE_STATS_ENABLED": "0"}
    command = [str(tool), sys.executable, str(ROOT / "tests" / "ray_scenario.py")]
    command += ["--repo", str(repo), "--lite", str(lite), "--work", str(work), "--out", str(out)]
    command += ["--second-artifact", str(shifted)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1500, env=env)
    if not out.exists():
        pytest.fail(f"the scenario recorded nothing:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    results = json.loads(out.read_text())
    results["server_log"] = (work / "server.log").read_text(errors="replace")
    return results


def phase(results: dict, name: str) -> dict:
    record = results.get(name)
    assert record is not None, (
        f"phase {name} did not run: {results.get('phases')} {results.get('startup_error', '')}"
    )
    assert "error" not in record, f"phase {name}: {record['error']}"
    return record


def test_every_protocol_answers_through_the_ray_ingress(scenario, lite):
    record = phase(scenario, "protocols")
    expected = load_runtime(lite).predict(TEXTS)
    rows = np.array([row["probabilities"] for row in record["v1"]["predictions"]])
    np.testing.assert_allclose(rows, expected, atol=1e-5)
    v2 = {o["name"]: o for o in record["v2"]["outputs"]}
    np.testing.assert_allclose(
        np.reshape(v2["probabilities"]["data"], (3, -1)), expected, atol=1e-5
    )
    assert record["v2"]["model_version"] == "1"
    assert [p["label"] for p in record["seed"]["predictions"]] == v2["labels"]["data"]
    assert record["status"]["model_version_status"][0]["state"] == "AVAILABLE"
    assert record["ready"] == 200
    assert record["bad"][0] == 400 and "exactly one input" in record["bad"][1]["error"]
    assert record["missing"][0] == 404 and "not found" in record["missing"][1]["error"]
    # The server was started with RAY_ADDRESS (no --address), TLS and an API key.
    for name in ("none", "wrong"):
        code, body = record["keyless"][name]
        assert code == 401 and "key" in body["error"], record["keyless"]
    assert record["plain_http"] not in (200, 401), "plain HTTP answered on the TLS port"
    assert any('model="news"' in line and 'code="200"' in line for line in record["metrics"])
    assert '"event": "access"' in scenario["server_log"]  # the access log, from the replica


def test_scoped_keys_rates_and_admin_hold_at_the_front_doors(scenario):
    record = phase(scenario, "keys")
    for name in ("news", "seed_news"):  # the key is for news2 only
        code, body = record[name]
        assert code == 403 and "may not use model 'news'" in body["error"], record
    assert record["news2"][0] == 200 and record["news2"][1]["model_name"] == "news2"
    # 30/min, burst 3, the three calls above taken: 8 more at once meet 429 + Retry-After.
    refused = [retry for code, retry in record["burst"] if code == 429]
    assert len(refused) >= 4 and all(int(retry) >= 1 for retry in refused), record["burst"]
    assert {code for code, _ in record["burst"]} <= {200, 429}
    code, body = record["load_not_admin"]
    assert code == 403 and "admin scope" in body["error"]
    code, body = record["load_admin"]  # allowed; the Ray controller follows the repository
    assert code == 409 and "--poll-interval" in body["error"]


def test_each_front_logs_redacted_records_and_watches_drift(scenario):
    record = phase(scenario, "traffic")
    assert set(record["codes"].values()) == {200}, record["codes"]
    records = record["records"]
    assert {name: row["protocol"] for name, row in records.items()} == {
        "ray-v1": "tfserving_v1", "ray-v2": "oip_v2", "ray-seed": "seed"
    }  # fmt: skip
    for row in records.values():
        assert row["model"] == "news" and row["version"] == 1
        # A key from the environment has no name: its id is the start of its hash.
        assert row["key_id"] == hash_key(API_KEY)[: len("sha256:") + 12]
        assert row["latency_ms"] > 0
        assert row["inputs"] == ["write to [EMAIL] or [PHONE]"]
    assert not record["secret_in_log"]
    assert all(name.startswith("payloads-") for name in record["files"])
    drift = record["drift"]
    assert drift["watched"] is True and drift["texts"] >= 50, drift
    assert drift["score"] is not None and 0 <= drift["score"] <= 1
    assert any(line.startswith("maas_payload_log_records_total") for line in record["metrics"])


def test_the_ensemble_averages_its_members(scenario):
    record = phase(scenario, "ensemble")
    probabilities = record["probabilities"]
    news, news2 = np.array(probabilities["news"]), np.array(probabilities["news2"])
    assert np.abs(news - news2).max() > 0.01  # two different models
    mean = (news + news2) / 2
    np.testing.assert_allclose(probabilities["both"], mean, atol=1e-5)
    assert record["metadata"]["platform"] == "ensemble"


def test_replicas_grow_onto_both_nodes_under_load_and_shrink_after(scenario):
    record = phase(scenario, "autoscaling")
    counts = [count for _, count, _ in record["up"]]
    assert counts[0] == 1 and max(counts) >= 2
    assert len(record["up"][-1][2]) == 2, "the replicas never spread over both nodes"
    assert record["down"][-1][1] == 1, "the replicas did not return to the minimum"
    assert record["load"]["requests"] > 50 and record["load"]["failed"] == 0, record["load"]


def test_a_new_version_rolls_out_and_a_warm_rollback_is_a_switch(scenario):
    record = phase(scenario, "rolling_update")
    assert record["versions_answered"] == ["1", "2"]
    assert record["load"]["failed"] == 0, record["load"]
    assert record["warm_replicas_of_v1"] >= 1  # kept deployed: keep_previous 1
    # A switch, not a deployment: the "serves again (kept warm)" line, and faster than this
    # run's own deployment of version 2, measured side by side (the controller polls every
    # 0.5 s and the ingress refreshes every 0.2 s; 0.8-4.2 s here on 2 loaded cores while the
    # ensemble that holds news was redeployed beside it, against 8.6-9.9 s to deploy).
    # Speed is a benchmark's to measure (benchmarks/scale.py).
    assert "model news version 1 serves again (kept warm)" in scenario["server_log"]
    assert record["rollback_seconds"] < record["update_seconds"], record


def test_maas_models_promote_and_rollback_act_on_the_ray_deployment(scenario):
    record = phase(scenario, "registry")
    v1, v2 = "1000000", "2000000"  # v1.0.0 and v2.0.0 (two different models), as served
    assert record["answered"] == {"promote_v1": v1, "promote_v2": v2, "rollback": v1}
    assert {v1, v2} <= set(record["versions_answered"]), record["versions_answered"]
    assert record["load"]["failed"] == 0, record["load"]
    # v1 was kept warm (keep_previous 1): the rollback is a switch, not a deployment.
    assert record["seconds"]["rollback"] < record["seconds"]["promote_v2"]
    # The ensemble of news and news2 was redeployed onto news's new version, and answers.
    assert record["ensemble_members"] == {"news": 1000000, "news2": 1}, record
    assert record["ensemble_followed_seconds"] is not None and record["ensemble_answers"] == "1"
    listing = {v["version"]: v["stages"] for v in json.loads(record["listing"])}
    assert listing == {"v1.0.0": ["prod"], "v2.0.0": []}


def test_a_failing_canary_is_rolled_back_on_ray_and_prod_answers_its_failures(scenario):
    record = phase(scenario, "canary")
    decision = record["decision"]
    assert decision["outcome"] == "rolled_back" and "error rate" in decision["reason"], decision
    assert decision["winner"] == record["baseline"]
    assert decision["figures"]["candidate_requests"] >= 20  # every ingress's counts, summed
    assert record["seconds"] < 25  # within the window
    assert record["failed"] <= 0.01 * record["requests"], record
    assert record["after"] == [[200, str(record["baseline"])]]  # prod only, no failure
    assert "rollout:" not in record["config"]  # pinned back to prod
    assert '"event": "rollout_decision"' in scenario["server_log"]


def test_a_broken_config_is_reported_and_the_model_keeps_serving(scenario):
    record = phase(scenario, "broken_config")
    assert record["status"]["config_error"].startswith("news/config.yaml")
    assert record["answer_code"] == 200


def test_bad_addresses_and_resources_give_clear_errors(scenario):
    record = phase(scenario, "bad_input")
    assert record["unreachable"]["code"] == 2
    assert "no Ray cluster answers at 127.0.0.1:1" in record["unreachable"]["log"]
    assert record["resources"]["code"] == 2
    assert "largest node" in record["resources"]["log"]
    assert record["busy_port"]["code"] == 2
    assert "another server listens there" in record["busy_port"]["log"], record["busy_port"]
    assert record["max_queue"]["code"] == 2
    assert "--max-queue must be a positive integer" in record["max_queue"]["log"]
    assert record["serving_before"] and record["still_serving"] == record["serving_before"]


def test_losing_a_replica_then_a_node_loses_no_request(scenario):
    record = phase(scenario, "faults")
    # The routing table sits on the head: the killed node never holds it. An ingress runs on
    # every node, beside that node's proxy (the front door grows with the nodes).
    placement = record["placement"]
    assert len(placement["head"]) == 1 and placement["routing"]
    assert set(placement["routing"]) == set(placement["head"])
    assert len(placement["ingress"]) == len(set(placement["ingress"])) == 2, placement
    assert len(record["spread"][-1][2]) == 2
    assert record["back"][-1][1] >= 2, "the killed replica was not replaced"
    assert record["after_node"], "no replica left after the node died"
    # Measured: 0 failed in 3 of 4 runs; in one, 4 of 1,162 requests got a 500 from Ray
    # Serve's proxy (not the ingress) 1.8 s after the node was killed. With a front door on
    # every node, the requests in flight on the killed node's front fail with it (4 of
    # 6,745: connections reset). The bound: 1 %.
    load = record["load"]
    assert load["requests"] > 20 and load["failed"] <= 0.01 * load["requests"], load
    assert all(code in (0, 500, 503) for _, code, _ in load["failures"]), load
    # The loss shows in the log (Ray Serve's router and controller name the lost replica).
    # The replicas gauge is on /metrics: in one run it read 1 for the 30 s sampled after the
    # node was killed, in another Ray still counted the lost replica (2) all that time, so
    # only its range is asserted.
    lost = r"app='maas\.news\.1'\)[^\n]*(has died|will be stopped)|terminated unexpectedly"
    assert re.search(lost, scenario["server_log"]), "the lost replica is not in the log"
    gauges = record["replica_gauges"]
    counts = [float(line.split()[-1]) for line in gauges if 'version="1"' in line]
    assert counts and {1.0, 2.0} >= set(counts), gauges


def test_a_lost_routing_table_is_made_again_and_refilled(scenario):
    record = phase(scenario, "routing_lost")
    assert record["refilled_seconds"] < 10, record
    load = record["load"]
    assert load["requests"] > 10 and load["failed"] == 0, load
    assert "the routing table was lost" in scenario["server_log"]

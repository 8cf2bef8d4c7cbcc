"""The Ray engine on a 2-node cluster: run inside ``in-private-network``, observe, write JSON.

``python tests/ray_scenario.py --repo DIR --work DIR --out FILE`` starts a head and a second
node (``maas.serving.ray.cluster``), ``maas serve --engine ray --address`` on them, and goes
through the phases below under real HTTP load on 127.0.0.1, writing what it observed (answers,
status codes, replica counts and nodes over time, seconds) to ``--out`` after every phase.
``tests/test_serving_ray.py`` runs it once per module and asserts on that record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from maas.serving.ray.cluster import LocalCluster  # noqa: E402

PORT = 8600
URL = f"http://127.0.0.1:{PORT}"
APP = "maas.news.{}"
TEXTS = ["the shuttle launch was delayed", "my car engine stalls", "a bill on gun sales"]


def infer_body(texts: list[str]) -> dict:
    return {
        "inputs": [{"name": "texts", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    }


class Load:
    """``clients`` threads posting single-text infer requests; every answer recorded."""

    def __init__(self, clients: int, model: str = "news") -> None:
        self.records: list[tuple[float, int, str]] = []  # (time, status, version)
        self.stop_event = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(model,), daemon=True) for _ in range(clients)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, model: str) -> None:
        with httpx.Client(base_url=URL, timeout=60) as client:
            while not self.stop_event.is_set():
                try:
                    response = client.post(f"/v2/models/{model}/infer", json=infer_body(TEXTS[:1]))
                    version = (
                        response.json().get("model_version", "") if response.is_success else ""
                    )
                    self.records.append((time.time(), response.status_code, version))
                except httpx.HTTPError as error:
                    self.records.append((time.time(), 0, type(error).__name__))

    def stop(self) -> dict:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(120)
        failed = [(t, code, v) for t, code, v in self.records if code != 200]
        return {"requests": len(self.records), "failed": len(failed), "failures": failed[:20]}


class Observer:
    """A second Ray driver that reads the replicas of each application, and their nodes."""

    def __init__(self, address: str) -> None:
        import ray

        ray.init(address=address, logging_level="ERROR", namespace="observer")

    def replicas(self, app: str) -> list[dict]:
        from ray._private import state

        found = []
        for actor in state.actors(actor_state_name="ALIVE").values():
            name = actor.get("ActorClassName", "")
            if name.startswith(f"ServeReplica:{app}:"):
                found.append({"pid": actor["Pid"], "node": actor["Address"]["NodeID"]})
        return found

    def timeline(self, app: str, until, timeout: float, interval: float = 0.5) -> list:
        """``[(time, replicas, nodes)]`` until ``until(replicas)`` or ``timeout``."""
        points = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replicas = self.replicas(app)
            points.append((time.time(), len(replicas), sorted({r["node"] for r in replicas})))
            if until(replicas):
                break
            time.sleep(interval)
        return points


def wait_for(condition, timeout: float, interval: float = 0.2) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if condition():
                return time.monotonic() - start
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout:g} s")


def answering(model: str = "news") -> str:
    response = httpx.post(f"{URL}/v2/models/{model}/infer", json=infer_body(TEXTS[:1]), timeout=30)
    return response.json().get("model_version", "") if response.is_success else ""


def write_config(repo: Path, text: str) -> None:
    path = repo / "news" / "config.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def phase_protocols() -> dict:
    with httpx.Client(base_url=URL, timeout=30) as client:
        v1 = client.post("/v1/models/news:predict", json={"instances": TEXTS}).json()
        v2 = client.post("/v2/models/news/infer", json=infer_body(TEXTS)).json()
        seed = client.post("/predict", json={"texts": TEXTS, "model": "news"}).json()
        status = client.get("/v1/models/news").json()
        bad = client.post("/v2/models/news/infer", json={"inputs": []})
        missing = client.post("/v2/models/nope/infer", json=infer_body(TEXTS))
        metrics = client.get("/metrics").text
        ready = client.get("/v2/health/ready").status_code
    return {
        "v1": v1, "v2": v2, "seed": seed, "status": status, "ready": ready,
        "bad": [bad.status_code, bad.json()], "missing": [missing.status_code, missing.json()],
        "metrics": [line for line in metrics.splitlines() if line.startswith("maas_requests")],
    }  # fmt: skip


def phase_ensemble() -> dict:
    with httpx.Client(base_url=URL, timeout=30) as client:
        outputs = {}
        for model in ("news", "news2", "both"):
            body = client.post(f"/v2/models/{model}/infer", json=infer_body(TEXTS)).json()
            outputs[model] = next(
                o["data"] for o in body["outputs"] if o["name"] == "probabilities"
            )
        metadata = client.get("/v2/models/both").json()
    return {"probabilities": outputs, "metadata": metadata}


def phase_autoscaling(observer: Observer, clients: int) -> dict:
    load = Load(clients)
    start = time.time()
    up = observer.timeline(
        APP.format(1), lambda r: len({x["node"] for x in r}) >= 2 and len(r) >= 2, timeout=120
    )
    time.sleep(2)
    loaded = load.stop()
    down = observer.timeline(APP.format(1), lambda r: len(r) == 1, timeout=120)
    time.sleep(1)
    return {"start": start, "up": up, "down": down, "load": loaded}


def phase_rolling_update(repo: Path, lite: Path, observer: Observer) -> dict:
    load = Load(4)
    time.sleep(2)
    shutil.copytree(lite, repo / "news" / ".incoming")
    (repo / "news" / ".incoming").rename(repo / "news" / "2")
    start = time.monotonic()
    seconds = wait_for(lambda: answering() == "2", timeout=180)
    time.sleep(4)  # the old version drains and is kept warm
    warm = observer.replicas(APP.format(1))
    # The rollback, as `maas models rollback` writes it: version 1 is warm, a label switch.
    rollback_start = time.monotonic()
    write_config(
        repo,
        "version_policy: specific\nversions: [1]\nlabels: {production: 1}\nkeep_previous: 1\n"
        "scaling: {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 2,"
        " upscale_delay_s: 1, downscale_delay_s: 4}\n",
    )
    rollback = wait_for(lambda: answering() == "1", timeout=60, interval=0.02)
    time.sleep(3)
    loaded = load.stop()
    versions = sorted({v for _, code, v in load.records if code == 200})
    return {
        "update_seconds": seconds, "rollback_seconds": rollback, "load": loaded,
        "versions_answered": versions, "warm_replicas_of_v1": len(warm),
        "total_seconds": time.monotonic() - start, "rollback_wall": rollback_start,
    }  # fmt: skip


def phase_broken_config(repo: Path) -> dict:
    path = repo / "news" / "config.yaml"
    good = path.read_text()
    path.write_text("version_policy: [")
    time.sleep(3)
    with httpx.Client(base_url=URL, timeout=30) as client:
        status = client.get("/v1/models/news").json()
        answer = client.post("/v2/models/news/infer", json=infer_body(TEXTS[:1]))
    write_config(repo, good)
    return {"status": status, "answer_code": answer.status_code}


def phase_faults(repo: Path, cluster: LocalCluster, observer: Observer) -> dict:
    write_config(
        repo,
        "version_policy: specific\nversions: [1]\nkeep_previous: 1\n"
        "scaling: {min_replicas: 2, max_replicas: 2}\n",
    )
    app = APP.format(1)
    spread = observer.timeline(app, lambda r: len({x["node"] for x in r}) >= 2, timeout=120)
    load = Load(4)
    time.sleep(2)
    victim = observer.replicas(app)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.time()
    back = observer.timeline(
        app, lambda r: len(r) >= 2 and victim["pid"] not in {x["pid"] for x in r}, timeout=120
    )
    time.sleep(2)
    node_killed_at = time.time()
    cluster.kill_node(1)
    gauges = []
    prefix = 'maas_replicas{model="news"'
    for _ in range(60):  # the replicas gauge on /metrics while Ray notices and reacts
        time.sleep(0.5)
        text = httpx.get(f"{URL}/metrics", timeout=30).text
        gauges += [line for line in text.splitlines() if line.startswith(prefix)]
    after_node = observer.replicas(app)
    loaded = load.stop()
    metrics = httpx.get(f"{URL}/metrics", timeout=30).text
    return {
        "spread": spread, "victim": victim, "killed_at": killed_at, "back": back,
        "node_killed_at": node_killed_at, "after_node": after_node, "load": loaded,
        "retries": [line for line in metrics.splitlines() if line.startswith("maas_backend")],
        "replica_gauges": gauges,
    }  # fmt: skip


def bad_input(cluster: LocalCluster, repo: Path, work: Path) -> dict:
    serve = [sys.executable, "-m", "maas.cli", "serve", "--model-repository", str(repo)]
    serve += ["--engine", "ray", "--port", "8700"]
    results = {}
    for name, extra in {
        "unreachable": ["--address", "127.0.0.1:1"],
        "resources": ["--address", cluster.address, "--replica-cpus", "64"],
    }.items():
        run = subprocess.run([*serve, *extra], capture_output=True, text=True, timeout=300)
        results[name] = {"code": run.returncode, "log": run.stderr[-3000:]}
    results["still_serving"] = answering()
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--lite", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results: dict = {"phases": []}

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1, default=str))

    cluster = LocalCluster(args.work / "cluster")
    server = None
    try:
        cluster.add_node(2, head=True)
        cluster.add_node(2)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "maas.cli", "serve", "--model-repository", str(args.repo)]
        command += ["--engine", "ray", "--address", cluster.address, "--port", str(PORT)]
        command += ["--poll-interval", "0.5", "--replica-cpus", "0.5", "--max-batch-size", "8"]
        command += ["--ensemble", "both=news,news2", "--max-replicas-per-node", "1"]
        server_log = (args.work / "server.log").open("w")
        start = time.monotonic()
        server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for(lambda: httpx.get(f"{URL}/v2/health/ready").status_code == 200, timeout=300)
            wait_for(lambda: answering("both") == "1", timeout=120)
        except TimeoutError as error:
            results["startup_error"] = f"{error}; server exit code {server.poll()}"
            return 1
        results["startup_seconds"] = time.monotonic() - start
        observer = Observer(cluster.address)
        for name, phase in [
            ("protocols", phase_protocols),
            ("ensemble", phase_ensemble),
            ("autoscaling", lambda: phase_autoscaling(observer, clients=16)),
            ("rolling_update", lambda: phase_rolling_update(args.repo, args.lite, observer)),
            ("broken_config", lambda: phase_broken_config(args.repo)),
            ("bad_input", lambda: bad_input(cluster, args.repo, args.work)),
            ("faults", lambda: phase_faults(args.repo, cluster, observer)),
        ]:
            phase_start = time.monotonic()
            try:
                results[name] = phase()
            except Exception as error:  # record it: the test names the phase that failed
                results[name] = {"error": f"{type(error).__name__}: {error}"}
            results["phases"].append((name, round(time.monotonic() - phase_start, 1)))
            save()
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
            results["server_exit"] = server.returncode
        cluster.stop()
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

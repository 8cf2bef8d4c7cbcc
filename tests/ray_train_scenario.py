"""``maas train --engine ray`` on a 2-node cluster: run inside ``in-private-network``, write JSON.

``python tests/ray_train_scenario.py --project DIR --work DIR --out FILE`` trains the small
project's two-member ensemble with the local engine (the reference), then on Ray:

- ``unreachable``: an address nothing listens at; the error and how long it took.
- ``lost_node``: a head and a second node (1 CPU each), the members spread over them; the
  second node is killed once its member has backed up an epoch. The member resumes on the
  head; the run finishes. Records the log, the summary and both engines' member weights.
- ``capacity``: multi_worker with two workers, right after the kill: one more than the
  cluster left can hold (whether or not Ray has declared the node dead yet).
- ``broken_node``: a new node whose workers cannot import the training code, no retries:
  the run stops naming the member and the node; the model stays the one trained before.

``tests/test_train_ray.py`` runs it once and asserts on that record.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from maas import config, export  # noqa: E402
from maas.model.ensemble import ensemble_members  # noqa: E402
from maas.serving.ray.cluster import STARTED, LocalCluster  # noqa: E402
from maas.training import stage  # noqa: E402
from maas.training.callbacks import HISTORY_FILE  # noqa: E402
from maas.training.ray_job import run_storage  # noqa: E402
from maas.training.ray_tasks import ATTEMPTS_FILE  # noqa: E402

# Workers of the broken node fail to import the Ray training module, as in a stale image.
BROKEN_IMPORT = """
import importlib.abc, sys

class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "maas.training.ray_tasks":
            raise ImportError("this node's image has no maas.training.ray_tasks")
        return None

sys.meta_path.insert(0, Broken())
"""


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def load(project: Path, **overrides) -> config.Params:
    return config.load_params(project / "params.yaml", overrides)


def member_weights(project: Path) -> list[list[np.ndarray]]:
    model = export.load_keras_model(project / "models" / "classifier")
    return [member.get_weights() for member in ensemble_members(model)]


def max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def train(project: Path, **overrides) -> dict:
    """The train stage; its summary, or the error it raised, and the seconds it took."""
    params = load(project, **overrides)
    paths = config.project_paths(project / "params.yaml")
    start = time.monotonic()
    try:
        summary = stage.run(params.train, paths, settings=params.settings.train, progress=False)
        return {"summary": summary, "seconds": time.monotonic() - start}
    except Exception as error:
        return {
            "error": f"{type(error).__name__}: {error}",
            "type": type(error).__name__,
            "seconds": time.monotonic() - start,
        }


class Cluster(LocalCluster):
    """A local cluster that can start a node after one was killed on purpose."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.killed: set[int] = set()

    def kill_node(self, index: int) -> None:
        self.killed.add(index)
        super().kill_node(index)

    def wait_nodes(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        living = [i for i in range(count) if i not in self.killed]
        while time.monotonic() < deadline:
            if any(self.nodes[i].poll() is not None for i in living):
                raise RuntimeError(f"a ray node exited; see {self.work}")
            logs = [(self.work / f"node{i}.log").read_text(errors="replace") for i in living]
            if all(STARTED in text for text in logs):
                return
            time.sleep(1.0)
        raise TimeoutError(f"Ray nodes not up within {timeout:g} s; see {self.work}")


class PidWatcher(threading.Thread):
    """Every process one node runs while it runs (a worker that fails lives a few seconds),
    to tell which node the pid in an error belongs to: all nodes share 127.0.0.1 here."""

    def __init__(self, cluster: LocalCluster, node: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.node = cluster, node
        self.pids: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.pids.update(self.cluster.node_pids(self.node))

    def stop(self) -> None:
        self.done.set()
        self.join()


def kill_when_backed_up(cluster: LocalCluster, storage: Path, node: int, record: dict) -> None:
    """Kill ``node`` once a member running there has backed up an epoch (and not all).

    The history of epoch N+1 is written after the checkpoint of epoch N: two rows mean that
    at least one epoch's checkpoint is whole."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        pids = set(cluster.node_pids(node))
        for attempts in storage.glob(f"member-*/{ATTEMPTS_FILE}"):
            history = attempts.parent / "backup" / HISTORY_FILE
            try:
                last = json.loads(attempts.read_text())[-1]
                epochs = len(json.loads(history.read_text())) if history.is_file() else 0
            except (OSError, ValueError):  # being written
                continue
            if last["pid"] in pids and epochs >= 2:
                cluster.kill_node(node)
                record.update(
                    member=attempts.parent.name, epochs_done=epochs - 1, node=last["node"]
                )
                return
        time.sleep(0.05)
    record["error"] = "no member on the node backed up an epoch in time"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    records = Records()
    logging.getLogger("maas.training").addHandler(records)
    results: dict = {}

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1, default=str))

    project = args.project
    results["local"] = train(project)
    local = member_weights(project)
    results["unreachable"] = train(
        project, **{"train.distribute.engine": "ray", "settings.train.ray_address": "127.0.0.1:9"}
    )
    save()
    cluster = Cluster(args.work / "cluster", object_store_mb=80)
    try:
        cluster.add_node(1, head=True)
        cluster.add_node(1)
        os.environ["RAY_ADDRESS"] = cluster.address
        ray_params = load(project, **{"train.distribute.engine": "ray"})
        storage = run_storage(
            ray_params.settings.train,
            config.project_paths(project / "params.yaml"),
            ray_params.train,
        )
        killed: dict = {}
        killer = threading.Thread(target=kill_when_backed_up, args=(cluster, storage, 1, killed))
        killer.start()
        records.lines.clear()
        run = train(project, **{"train.distribute.engine": "ray"})
        killer.join()
        ray_weights = member_weights(project) if "summary" in run else []
        results["lost_node"] = {
            **run,
            "killed": killed,
            "log": list(records.lines),
            "differences": [
                max_difference(a, b) for a, b in zip(local, ray_weights, strict=False)
            ],
            "storage_left": storage.exists(),
        }
        save()
        # Two workers: what the cluster held before the kill, one more than the head alone.
        # Ray may still count the killed node alive for a while; the check must refuse
        # before any training all the same.
        records.lines.clear()
        results["capacity"] = train(
            project,
            **{"train.distribute.engine": "ray", "train.distribute.strategy": "multi_worker",
               "train.distribute.workers": 2},
        )  # fmt: skip
        results["capacity"]["log"] = list(records.lines)
        save()
        broken = args.work / "broken"
        broken.mkdir(exist_ok=True)
        (broken / "sitecustomize.py").write_text(BROKEN_IMPORT)
        # Only this node's processes (its raylet, and the workers it starts) get the hook.
        path = os.pathsep.join(filter(None, [str(broken), os.environ.get("PYTHONPATH")]))
        broken_node = cluster.add_node(1, env={"PYTHONPATH": path})
        models = project / "models"
        # SPREAD is best effort: on a loaded machine both members can land on the healthy head
        # (the run then succeeds and proves nothing). Run again, at most three times, until a
        # member meets the broken node.
        for attempt in range(1, 4):
            before = (models / "classifier" / "provenance.json").read_bytes()
            records.lines.clear()
            watcher = PidWatcher(cluster, broken_node)
            watcher.start()
            run = train(
                project,
                **{"train.distribute.engine": "ray", "settings.train.ray_retries": 0,
                   "train.seed": 6 + attempt},
            )  # fmt: skip
            watcher.stop()
            results["broken_node"] = {
                **run,
                "attempts": attempt,
                "broken_node_pids": sorted(watcher.pids),
                "log": list(records.lines),
                "model_unchanged": before
                == (models / "classifier" / "provenance.json").read_bytes(),
                "leftovers": sorted(p.name for p in models.iterdir() if p.name != "classifier"),
            }
            save()
            if run.get("type"):
                break
    finally:
        cluster.stop()
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

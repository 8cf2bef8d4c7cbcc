"""End to end: two real model versions, a real server, a rollback, byte for byte.

In a temporary copy of the repository: run the pipeline (data, train) with parameters A,
register v1 and promote it to prod (its bytes materialized from the DVC cache into the model
repository of ``maas serve``); change ``train.lstm_units``, run again, register v2 and
promote it (the server switches). Plain ``git checkout <tag> && dvc checkout`` restores v1's
bytes as its ``dvc.lock`` records them. Then the DVC cache and v1's served folder are
deleted, so only the local DVC remote has v1: a truncated copy there is refused while v2
keeps serving; restored, the rollback serves v1's predictions from files whose hashes equal
v1's ``dvc.lock``. Traffic sent all along never fails. (Rollbacks from the cache, and their
bad inputs, are tested without TensorFlow in ``test_registry.py``.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import ROOT, small_params_dict
from serving_support import running_server

from maas.cli import main as maas_main
from maas.provenance import sha256_tree, verify_files
from maas.registry import operations, store, tags
from maas.registry.materialize import IntegrityError, dvc_tree_md5, recorded_hashes

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TEXTS = [
    "The shuttle launch was delayed because of the weather at the space center.",
    "My car needs new brakes and the dealer wants too much for the engine work.",
    "The senate debated the gun control bill and the second amendment again.",
]
V1, V2 = operations.serving_version("v1"), operations.serving_version("v2")


def run(args, cwd: Path, timeout: float = 600) -> str:
    # As after `source .venv/bin/activate`, with the copy's own sources on the path.
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(cwd / "src"),
    }
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    if result.returncode:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def copy_repo(target: Path, remote: Path) -> Path:
    """The tracked files of this checkout, small parameters, a git user and a local remote."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    (target / "params.yaml").write_text(yaml.safe_dump(small_params_dict(), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], target)
    run(["git", "config", "user.name", "Test"], target)
    run(["git", "config", "user.email", "test@example.com"], target)
    run([BIN / "dvc", "remote", "modify", "--local", "local", "url", remote], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "copy"], target)  # DVCLive needs a commit to start from
    return target


def train_and_commit(project: Path, message: str) -> str:
    run([BIN / "dvc", "repro", "train"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message], project)
    return run(["git", "rev-parse", "HEAD"], project).strip()


def maas(*args: str) -> None:
    assert maas_main(list(args)) == 0, args


def predict(client: httpx.Client) -> np.ndarray:
    response = client.post("/v1/models/classifier:predict", json={"instances": TEXTS})
    assert response.status_code == 200, response.text
    return np.array([row["probabilities"] for row in response.json()["predictions"]])


class Traffic(threading.Thread):
    """Requests sent without pause while versions change: every one must succeed."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.sent, self.failures = url, 0, []
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._halt.is_set():
                try:
                    response = client.post("/v1/models/classifier:predict", json={"inputs": TEXTS})
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                self.sent += 1
                time.sleep(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_tree(p) for p in sorted(folder.rglob("*"))}


def test_rollback_serves_the_earlier_model_byte_for_byte(tmp_path: Path, corpus_available):
    project = copy_repo(tmp_path / "project", tmp_path / "remote")
    repository = tmp_path / "repository"
    where = ["--project", str(project)]
    serve_into = [*where, "--model-repository", str(repository)]

    v1_commit = train_and_commit(project, "parameters A")
    maas("models", "register", "classifier", "--version", "v1", *where)
    maas("models", "promote", "classifier", "v1", "--stage", "prod", *serve_into)
    v1_md5 = store.lock_entry(project, v1_commit, "models/classifier")["md5"]
    served = repository / "classifier"
    first_served = snapshot(served / str(V1))  # from the DVC cache

    params = small_params_dict()
    params["train"]["lstm_units"] += 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    v2_commit = train_and_commit(project, "parameters B")
    maas("models", "register", "classifier", "--version", "v2", *where)

    # The server starts only now: training beside it would be slower, and change nothing.
    server_args = ["--model-repository", str(repository), "--poll-interval", "0.5"]
    with running_server(server_args, tmp_path / "server.log") as server:
        url = ["--server", server.url]
        client = server.client()
        v1_predictions = predict(client)
        traffic = Traffic(server.url)
        traffic.start()
        maas("models", "promote", "classifier", "v2", "--stage", "prod", *serve_into, *url)
        assert predict(client).shape == v1_predictions.shape
        assert not np.allclose(predict(client), v1_predictions)  # another model answers

        # Plain DVC: the tag and `dvc checkout` restore the bytes that dvc.lock records.
        run(["git", "checkout", "-q", "classifier@v1.0.0"], project)
        run([BIN / "dvc", "checkout", "models/classifier"], project)  # only train ran here
        assert dvc_tree_md5(project / "models" / "classifier") == v1_md5
        v1_files = snapshot(project / "models" / "classifier")
        assert v1_files == first_served
        run(["git", "checkout", "-q", "main"], project)
        run([BIN / "dvc", "checkout", "models/classifier"], project)

        # Without the DVC cache and v1's served folder, only the remote has v1's bytes.
        shutil.rmtree(project / ".dvc" / "cache")
        shutil.rmtree(served / str(V1))
        recorded = recorded_hashes(project, v1_commit, "models/classifier").files
        weights = recorded["saved_model/variables/variables.data-00000-of-00001"]
        on_remote = tmp_path / "remote" / "files" / "md5" / weights[:2] / weights[2:]
        good = on_remote.read_bytes()
        on_remote.chmod(0o644)
        on_remote.write_bytes(good[: len(good) // 2])  # truncated on the remote
        before = (sorted(served.iterdir()), (served / "config.yaml").read_bytes())
        deployment = operations.Deployment(repository, "classifier", server.url)
        with pytest.raises(IntegrityError, match="corrupt or truncated"):
            operations.rollback(project, "classifier", "prod", deployment=deployment)
        assert (sorted(served.iterdir()), (served / "config.yaml").read_bytes()) == before
        assert operations.answering_version(client, "classifier") == V2  # v2 keeps serving
        assert tags.stage_holders(project, "classifier", "prod") == ["v2.0.0"]

        on_remote.write_bytes(good)
        maas("models", "rollback", "classifier", "--stage", "prod", *serve_into, *url)
        np.testing.assert_allclose(predict(client), v1_predictions, rtol=0, atol=1e-6)
        assert operations.answering_version(client, "classifier") == V1
        assert dvc_tree_md5(served / str(V1)) == v1_md5
        assert snapshot(served / str(V1)) == v1_files
        assert verify_files(served / str(V1)) == []
        assert tags.stage_holders(project, "classifier", "prod") == ["v1.0.0"]
        traffic.stop()
        client.close()

    assert traffic.sent > 20
    assert traffic.failures == []
    versions = tags.list_versions(project, "classifier")
    assert [(v.version, v.commit, v.stages) for v in versions] == [
        ("v2.0.0", v2_commit, ()),
        ("v1.0.0", v1_commit, ("prod",)),
    ]
    assert all("train.val_accuracy" in v.metrics for v in versions)

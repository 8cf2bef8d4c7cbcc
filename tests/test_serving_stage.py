"""The serve stage: notebook 05 really runs (papermill) and serves what the pipeline made."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from serving_support import ROOT, tflite_artifact

from maas.provenance import verify_files

pytestmark = pytest.mark.slow


def test_serve_notebook_builds_the_repository_and_probes_every_protocol(
    small_project, tmp_path, tmp_path_factory
):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    shutil.copytree(small_project / "models" / "classifier", project / "models" / "classifier")
    # A compressed variant as the compress stage writes them, and one listed that does not exist.
    lite = tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)
    shutil.copytree(lite, project / "models" / "compressed" / "float32")
    params = yaml.safe_load((small_project / "params.yaml").read_text())
    params["settings"]["serve"] = {**params["settings"]["serve"], "latency_requests": 5}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "reports" / "notebooks").mkdir(parents=True)

    subprocess.run(
        [sys.executable, "-m", "papermill", "notebooks/05-serve.ipynb",
         "reports/notebooks/05-serve.ipynb", "--cwd", "notebooks",
         "-p", "params_file", "../params.yaml", "--no-progress-bar", "--log-level", "WARNING"],
        cwd=project, check=True, timeout=600,
    )  # fmt: skip

    repository = project / "models" / "repository"
    assert sorted(p.name for p in repository.iterdir()) == ["classifier", "classifier-float32"]
    assert verify_files(repository / "classifier" / "1") == []
    assert verify_files(repository / "classifier-float32" / "1") == []
    report = json.loads((project / "reports" / "metrics" / "serve.json").read_text())
    assert report["all_protocols_agree"] is True
    runtimes = {row["model"]: row["runtime"] for row in report["latency"]}
    assert runtimes == {"classifier": "saved_model", "classifier-float32": "tflite"}
    for row in report["latency"]:
        for protocol in ("tfserving_v1", "oip_v2", "seed"):
            assert 0 < row[f"{protocol}_p50_ms"] <= row[f"{protocol}_p99_ms"]
    assert (project / "reports" / "figures" / "serve_latency.png").stat().st_size > 0
    log = (project / "reports" / "serve" / "server.log").read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log


def test_serving_imports_no_training_code():
    forbidden = ["maas.training", "maas.model", "maas.compress", "maas.data"]
    parser_only = {"maas.training", "maas.training.cli"}  # `maas train`'s flags, for --help
    code = (
        "import sys; from maas import cli; cli.build_parser();"
        "import maas.serving.app, maas.serving.stage, maas.serving.cli;"
        "import json; print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    training = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert sorted(set(training) - parser_only) == []
    assert "maas.serving.app" in loaded


def test_seed_api_answers_with_the_classifier_on_the_pipelines_own_repository(
    small_project, tmp_path, tmp_path_factory
):
    """The seed's body, no model named, no --default-model: the pipeline's classifier
    answers, although the repository serves its variants too."""
    from fastapi.testclient import TestClient

    from maas import config
    from maas.serving import stage
    from maas.serving.app import ServerConfig, create_app
    from maas.serving.layout import build_repository

    paths = config.Paths(tmp_path / "project")
    shutil.copytree(small_project / "models" / "classifier", paths.classifier_dir)
    lite = tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)
    shutil.copytree(lite, paths.compressed_dir / "float32")
    params = config.load_params(small_project / "params.yaml")
    sources = stage.repository_sources(params.serve, paths)
    repository = tmp_path / "repository"
    assert sorted(build_repository(sources, repository)) == ["classifier", "classifier-float32"]
    app = create_app(ServerConfig(repository, poll_interval_s=0, batching=False))
    with TestClient(app) as client:
        answer = client.post("/predict", json={"text": "The shuttle launch was delayed."})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "classifier"
        named = client.post("/predict", json={"text": "x", "model": "classifier-float32"})
        assert named.status_code == 200 and named.json()["model"] == "classifier-float32"

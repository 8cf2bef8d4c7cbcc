"""deploy/ray offline: the RayService and RayJob manifests and the Dockerfile fit the code.

No Kubernetes cluster or Docker daemon here: these checks parse the manifest, resolve its
Serve application and arguments with the code, and check what the Dockerfile copies.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest
import ray
import yaml
from serving_support import ROOT

from maas.serving.ray import service

DEPLOY = ROOT / "deploy" / "ray"


def manifest() -> dict:
    return yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())


def test_the_rayservice_runs_the_maas_application_with_valid_args():
    spec = manifest()
    assert spec["apiVersion"] == "ray.io/v1" and spec["kind"] == "RayService"
    serve_config = yaml.safe_load(spec["spec"]["serveConfigV2"])
    (application,) = serve_config["applications"]
    module, _, name = application["import_path"].partition(":")
    assert getattr(importlib.import_module(module), name) is service.app
    config, options = service.parse_args(application["args"])
    assert str(config.model_repository) == "/models/repository"
    assert options.scaling.max_replicas >= options.scaling.min_replicas >= 1
    assert application["route_prefix"] == "/"
    assert serve_config["http_options"]["port"] == 8000


def test_the_cluster_uses_the_pinned_ray_and_one_image():
    cluster = manifest()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    workers = [
        container
        for group in cluster["workerGroupSpecs"]
        for container in group["template"]["spec"]["containers"]
    ]
    assert {c["image"] for c in head + workers} == {"maas-ray:0.1.0"}
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_dockerfile_copies_what_exists_and_pins_the_lock():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "pip install -r requirements.lock" in text
    sources = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, flags=re.MULTILINE)
    for line in sources:
        for source in line.split():
            if source != "models/repository":  # built by the serve stage, not in git
                assert (ROOT / source).exists(), source
    assert re.search(r"^FROM python:3\.11", text, flags=re.MULTILINE)
    # The nodes' site folder (maas.serving.ray.site) is where the image copies src/ to.
    workdir = re.search(r"^WORKDIR (\S+)$", text, flags=re.MULTILINE)[1]
    path = re.search(r"^ENV PYTHONPATH=(\S+)$", text, flags=re.MULTILINE)[1]
    assert (ROOT / Path(path).relative_to(workdir) / "sitecustomize.py").is_file(), path


def test_bad_service_args_are_refused_with_the_key():
    with pytest.raises(ValueError, match="unknown argument 'replicas'"):
        service.parse_args({"model_repository": "/m", "replicas": 3})
    with pytest.raises(ValueError, match="model_repository is required"):
        service.parse_args({})
    with pytest.raises(ValueError, match="max_replicas"):
        service.parse_args({"model_repository": "/m", "scaling": {"max_replicas": 0}})


def rayjob() -> dict:
    return yaml.safe_load((DEPLOY / "rayjob-train.yaml").read_text())


def test_the_rayjob_runs_maas_train_on_ray_with_valid_flags():
    from maas.training import cli

    spec = rayjob()
    assert spec["apiVersion"] == "ray.io/v1" and spec["kind"] == "RayJob"
    workdir, _, command = spec["spec"]["entrypoint"].partition(" && ")
    assert workdir == "cd /project"
    program, subcommand, *flags = command.split()
    assert (program, subcommand) == ("maas", "train")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(flags)
    assert args.engine == "ray" and args.address is None  # KubeRay sets RAY_ADDRESS
    assert cli.overrides_from(args) == {"train.distribute.engine": "ray"}
    assert spec["spec"]["shutdownAfterJobFinishes"] is True


def test_the_rayjob_cluster_holds_the_default_ensemble_on_shared_storage():
    from maas import config

    params = config.load_params(ROOT / "params.yaml", {"train.distribute.engine": "ray"})
    cluster = rayjob()["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    cpus = int(group["rayStartParams"]["num-cpus"])
    per_member = params.settings.train.ray_cpus_per_worker
    assert group["minReplicas"] * (cpus // per_member) >= len(params.train.ensemble)
    (container,) = group["template"]["spec"]["containers"]
    assert (
        container["image"]
        == manifest()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
            "containers"
        ][0]["image"]
    )
    threads = {e["name"]: e["value"] for e in container["env"]}
    assert threads["TF_NUM_INTRAOP_THREADS"] == str(per_member)
    # Every pod mounts the project volume where the storage of the checkpoints lives.
    assert not Path(params.settings.train.ray_storage).is_absolute()  # inside /project
    for template in [cluster["headGroupSpec"]["template"], group["template"]]:
        (mount,) = template["spec"]["containers"][0]["volumeMounts"]
        assert mount["mountPath"] == "/project"
        (volume,) = template["spec"]["volumes"]
        assert volume["name"] == mount["name"] and volume["persistentVolumeClaim"]["claimName"]

"""The model registry on a small DVC project whose "model" is a few bytes (no TensorFlow).

The project is real: git, DVC (a pipeline stage, ``dvc.lock``, cache, a local remote), GTO
tags. Its one stage writes ``models/classifier`` as an artifact folder with a provenance
record, from a parameter, so each parameter value gives different bytes. The real pipeline,
a real server and real predictions are in ``test_registry_e2e.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from maas.cli import main as maas_main
from maas.provenance import sha256_tree, verify_files
from maas.registry import operations, store, tags
from maas.registry.materialize import (
    IntegrityError,
    dvc_tree_md5,
    integrity_problems,
    materialize,
    recorded_hashes,
)
from maas.registry.store import RegistryError

DVC = str(Path(sys.executable).with_name("dvc"))

MAKE_MODEL = """\
import json, sys
from pathlib import Path
import yaml
from maas.provenance import atomic_dir, build_provenance, file_hashes, write_json

params = yaml.safe_load(Path("params.yaml").read_text())["fake"]
with atomic_dir("models/classifier") as out:
    (out / "weights.bin").write_bytes(bytes(range(256)) * params["repeat"])
    (out / "assets").mkdir()
    (out / "assets" / "vocab.txt").write_text("a\\nb\\n" * params["repeat"])
    record = build_provenance(stage="train", params=params, extra={"files": file_hashes(out)})
    write_json(out / "provenance.json", record)
with atomic_dir("models/compressed") as out:  # variants inside one output, as compress does
    for variant in ("int8", "float16"):
        (out / variant).mkdir()
        (out / variant / "model.bin").write_bytes(variant.encode() * params["repeat"])
        record = build_provenance(stage="", params={}, extra={"files": file_hashes(out / variant)})
        write_json(out / variant / "provenance.json", record)
write_json("reports/metrics/train.json", {"accuracy": params["repeat"] / 10})
"""


def run(cwd: Path, *args: str) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def make_version(project: Path, repeat: int) -> str:
    """Change the parameter, reproduce, commit; return the commit."""
    params = {"fake": {"repeat": repeat}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run(project, DVC, "repro", "--quiet")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", f"repeat {repeat}")
    return run(project, "git", "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def base_project(tmp_path_factory) -> Path:
    """A project with two registered versions, v1.0.0 (repeat 1) and v2.0.0 (repeat 2)."""
    root = tmp_path_factory.mktemp("registry")
    project = root / "project"
    project.mkdir()
    (project / "make_model.py").write_text(MAKE_MODEL)
    (project / "reports" / "metrics").mkdir(parents=True)
    stage = {
        "cmd": f"{sys.executable} make_model.py",
        "deps": ["make_model.py"],
        "params": ["fake"],
        "outs": ["models/classifier", "models/compressed"],
        "metrics": [{"reports/metrics/train.json": {"cache": False}}],
    }
    artifacts = {
        "classifier": {"path": "models/classifier", "type": "model"},
        "classifier-int8": {"path": "models/compressed/int8", "type": "model"},
    }
    dvc_yaml = {"stages": {"train": stage}, "artifacts": artifacts}
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    (project / ".gto").write_text("stages: [dev, staging, prod]\n")
    run(project, "git", "init", "-q", "-b", "main")
    run(project, "git", "config", "user.name", "Test")
    run(project, "git", "config", "user.email", "test@example.com")
    run(project, DVC, "init", "--quiet")
    run(project, DVC, "config", "core.analytics", "false")
    (root / "remote").mkdir()
    run(project, DVC, "remote", "add", "--default", "--local", "local", str(root / "remote"))
    make_version(project, 1)
    tags.register(project, "classifier", version="v1")
    make_version(project, 2)
    tags.register(project, "classifier", version="v2")
    return project


@pytest.fixture
def project(base_project: Path, tmp_path: Path) -> Path:
    """A private copy of the base project (git, cache and remote), so tests may break it."""
    shutil.copytree(base_project.parent / "remote", tmp_path / "remote")
    copy = tmp_path / "project"
    shutil.copytree(base_project, copy, symlinks=True)
    run(copy, DVC, "remote", "modify", "--local", "local", "url", str(tmp_path / "remote"))
    return copy


def serving(repository: Path) -> operations.Deployment:
    """The model repository of a server (none runs here: nothing to wait for)."""
    return operations.Deployment(repository=repository, model="classifier")


def git_tags(project: Path) -> list[str]:
    return run(project, "git", "tag").split()


def lock_md5(project: Path, commit: str) -> str:
    return store.lock_entry(project, commit, "models/classifier")["md5"]


def cache_object(project: Path, md5: str) -> Path:
    return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_tree(p) for p in folder.rglob("*")}


# ---- register, list, show -------------------------------------------------------------


def test_versions_are_listed_with_the_metrics_of_their_own_revision(project: Path):
    versions = tags.list_versions(project, "classifier")
    assert [v.version for v in versions] == ["v2.0.0", "v1.0.0"]
    assert [v.metrics["train.accuracy"] for v in versions] == [0.2, 0.1]
    assert git_tags(project) == ["classifier@v1.0.0", "classifier@v2.0.0"]
    # Registering pushed the bytes: the remote holds every file of both versions.
    remote = Path(project.parent / "remote")
    for v in versions:
        for md5 in recorded_hashes(project, v.commit, "models/classifier").files.values():
            assert (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def test_register_bumps_and_refuses_what_it_cannot_honour(project: Path):
    with pytest.raises(RegistryError, match="already"):
        tags.register(project, "classifier")  # HEAD is v2 already
    with pytest.raises(RegistryError, match="not declared"):
        tags.register(project, "detector")
    with pytest.raises(RegistryError, match="not of the form"):
        tags.register(project, "classifier", version="latest")
    (project / "params.yaml").write_text(yaml.safe_dump({"fake": {"repeat": 3}}))
    with pytest.raises(RegistryError, match="uncommitted changes"):
        tags.register(project, "classifier")
    assert git_tags(project) == ["classifier@v1.0.0", "classifier@v2.0.0"]
    make_version(project, 3)
    assert tags.register(project, "classifier").version == "v2.0.1"  # GTO's patch bump


def test_register_refuses_bytes_missing_from_the_cache(project: Path):
    commit = make_version(project, 4)
    weights = recorded_hashes(project, commit, "models/classifier").files["weights.bin"]
    cache_object(project, weights).unlink()
    with pytest.raises(RegistryError, match="not in the DVC cache"):
        tags.register(project, "classifier", version="v3")
    assert "classifier@v3.0.0" not in git_tags(project)


def test_cli_lists_shows_and_reports_errors(project: Path, capsys):
    assert maas_main(["models", "list", "classifier", "--json", "--project", str(project)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed] == ["v2.0.0", "v1.0.0"]
    assert (
        maas_main(["models", "show", "classifier", "v1", "--json", "--project", str(project)]) == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["dvc_lock_md5"] == lock_md5(project, shown["commit"])
    assert set(shown["files"]) == {"weights.bin", "assets/vocab.txt", "provenance.json"}
    code = maas_main(["models", "promote", "classifier", "v9", "--stage", "prod",
                      "--project", str(project)])  # fmt: skip
    assert code == 1


# ---- stages: promote and roll back ----------------------------------------------------


def test_one_version_holds_a_stage_and_gto_and_dvc_agree(project: Path):
    from dvc.repo import Repo

    def dvc_stage_commit() -> str:  # what `dvc artifacts get --stage prod` would fetch
        with Repo(str(project)) as repo:
            return repo.artifacts.get_rev("classifier", stage="prod")

    commits = {v.version: v.commit for v in tags.list_versions(project, "classifier")}
    operations.promote(project, "classifier", "v1", "prod")
    operations.promote(project, "classifier", "v2", "prod")
    assert tags.stage_holders(project, "classifier", "prod") == ["v2.0.0"]
    assert dvc_stage_commit() == commits["v2.0.0"]

    done = operations.rollback(project, "classifier", "prod")
    assert done.version == "v1.0.0"
    assert tags.stage_holders(project, "classifier", "prod") == ["v1.0.0"]
    assert dvc_stage_commit() == commits["v1.0.0"]
    assert [v.stages for v in tags.list_versions(project, "classifier")] == [(), ("prod",)]
    # Rolling back again returns to the version before the current one: v2.
    assert operations.rollback(project, "classifier", "prod").version == "v2.0.0"


def test_bad_stage_and_version_requests_change_nothing(project: Path, tmp_path: Path):
    repository = tmp_path / "repository"
    deployment = serving(repository)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        operations.rollback(project, "classifier", "prod", deployment=deployment)
    operations.promote(project, "classifier", "v1", "prod", deployment=deployment)
    before_tags, before_files = git_tags(project), snapshot(repository)
    with pytest.raises(RegistryError, match="unknown stage 'production'"):
        operations.promote(project, "classifier", "v2", "production", deployment=deployment)
    with pytest.raises(RegistryError, match="unknown version 'v7.0.0'"):
        operations.rollback(project, "classifier", "prod", to="v7", deployment=deployment)
    with pytest.raises(RegistryError, match="only version that ever held"):
        operations.rollback(project, "classifier", "prod", deployment=deployment)
    with pytest.raises(RegistryError, match="already holds"):
        operations.rollback(project, "classifier", "prod", to="v1", deployment=deployment)
    assert git_tags(project) == before_tags
    assert snapshot(repository) == before_files


def test_serving_version_numbers_keep_the_order_of_versions():
    numbers = [operations.serving_version(v) for v in ("v0.0.3", "v0.2.0", "v1", "v1.0.10", "v2")]
    assert numbers == [3, 2000, 1_000_000, 1_000_010, 2_000_000]
    with pytest.raises(RegistryError):
        operations.serving_version("v1.1000.0")


# ---- exact bytes and integrity ---------------------------------------------------------


def test_materialize_gives_the_recorded_bytes_from_cache_then_remote(project: Path, tmp_path):
    v1 = tags.version_commit(project, "classifier", "v1")
    from_cache = materialize(project, "classifier", "v1", tmp_path / "a")
    assert from_cache.tree_md5 == lock_md5(project, v1) == dvc_tree_md5(tmp_path / "a")
    assert (
        integrity_problems(tmp_path / "a", recorded_hashes(project, v1, "models/classifier")) == []
    )

    shutil.rmtree(project / ".dvc" / "cache")  # only the remote has the bytes now
    from_remote = materialize(project, "classifier", "v1", tmp_path / "b")
    assert from_remote.tree_md5 == lock_md5(project, v1)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


def test_corrupt_bytes_are_refused_and_the_served_version_stays(project: Path, tmp_path: Path):
    repository = tmp_path / "repository"
    deployment = serving(repository)
    operations.promote(project, "classifier", "v2", "prod", deployment=deployment)
    before_tags, before_files = git_tags(project), snapshot(repository)

    v1 = tags.version_commit(project, "classifier", "v1")
    weights = recorded_hashes(project, v1, "models/classifier").files["weights.bin"]
    damaged = cache_object(project, weights)
    damaged.chmod(0o644)
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated in the cache
    with pytest.raises(IntegrityError, match=r"weights.bin: md5 .* \(corrupt or truncated\)"):
        operations.rollback(project, "classifier", "prod", to="v1", deployment=deployment)
    assert git_tags(project) == before_tags
    assert snapshot(repository) == before_files
    assert not any(p.name.startswith(".") for p in (repository / "classifier").iterdir())


def test_bytes_in_neither_cache_nor_remote_are_a_clear_error(project: Path, tmp_path: Path):
    repository = tmp_path / "repository"
    deployment = serving(repository)
    operations.promote(project, "classifier", "v2", "prod", deployment=deployment)
    before_tags, before_files = git_tags(project), snapshot(repository)
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(tmp_path / "remote")
    with pytest.raises(RegistryError, match="neither the DVC cache nor the remote"):
        operations.rollback(project, "classifier", "prod", to="v1", deployment=deployment)
    assert git_tags(project) == before_tags
    assert snapshot(repository) == before_files


def test_a_damaged_version_folder_is_replaced_by_the_recorded_bytes(project: Path, tmp_path):
    repository = tmp_path / "repository"
    deployment = serving(repository)
    done = operations.promote(project, "classifier", "v1", "prod", deployment=deployment)
    (done.folder / "weights.bin").write_bytes(b"tampered")
    operations.promote(project, "classifier", "v2", "prod", deployment=deployment)
    again = operations.rollback(project, "classifier", "prod", deployment=deployment)
    assert again.folder == done.folder
    assert dvc_tree_md5(done.folder) == lock_md5(project, done.commit)
    config = yaml.safe_load((repository / "classifier" / "config.yaml").read_text())
    assert config == {"version_policy": "specific", "versions": [1_000_000],
                      "labels": {"prod": 1_000_000}}  # fmt: skip


def test_a_server_that_does_not_switch_leaves_everything_as_it_was(project: Path, tmp_path):
    repository = tmp_path / "repository"
    operations.promote(project, "classifier", "v2", "prod", deployment=serving(repository))
    before_tags, before_files = git_tags(project), snapshot(repository)
    unreachable = operations.Deployment(
        repository=repository, model="classifier", server="http://127.0.0.1:9", timeout=1.0
    )
    with pytest.raises(RegistryError, match="did not switch"):
        operations.rollback(project, "classifier", "prod", to="v1", deployment=unreachable)
    assert git_tags(project) == before_tags
    assert snapshot(repository) == before_files


def test_a_variant_inside_a_larger_output_is_checked_file_by_file(project: Path, tmp_path):
    tags.register(project, "classifier-int8", version="v1")
    commit = tags.version_commit(project, "classifier-int8", "v1")
    recorded = recorded_hashes(project, commit, "models/compressed/int8")
    assert recorded.tree_md5 is None  # dvc.lock hashes models/compressed as a whole
    assert set(recorded.files) == {"model.bin", "provenance.json"}
    done = materialize(project, "classifier-int8", "v1", tmp_path / "int8")
    assert snapshot(done.path) == snapshot(project / "models" / "compressed" / "int8")

    damaged = cache_object(project, recorded.files["model.bin"])
    damaged.chmod(0o644)
    damaged.write_bytes(b"corrupt")
    with pytest.raises(IntegrityError, match="model.bin"):
        materialize(project, "classifier-int8", "v1", tmp_path / "again")
    assert not (tmp_path / "again").exists()


# ---- plain DVC -------------------------------------------------------------------------


def test_plain_git_checkout_and_dvc_checkout_restore_a_version(project: Path):
    v1 = tags.version_commit(project, "classifier", "v1")
    run(project, "git", "checkout", "-q", "classifier@v1.0.0")
    run(project, DVC, "checkout", "--quiet")
    assert dvc_tree_md5(project / "models" / "classifier") == lock_md5(project, v1)
    shutil.rmtree(project / ".dvc" / "cache")  # and from the remote: dvc pull
    shutil.rmtree(project / "models")
    run(project, DVC, "pull", "--quiet", "models/classifier")  # register pushed only that
    assert dvc_tree_md5(project / "models" / "classifier") == lock_md5(project, v1)
    assert verify_files(project / "models" / "classifier") == []


# ---- canary rollouts: started by the CLI, decided by the server, recorded here ---------


def decide_as_the_server(repository: Path, outcome: str) -> dict:
    """What a server does when a rollout's window closes (maas.serving.routing): the
    decision applied and written to the model repository, by the server's own code."""
    from prometheus_client import CollectorRegistry

    from maas.serving import layout
    from maas.serving.rollout import Decision
    from maas.serving.routing import LiveRollout, Rollouts

    model_dir = repository / "classifier"
    spec = layout.read_config(model_dir).rollout
    rollouts = Rollouts(CollectorRegistry(), repository)
    rollouts.decide(
        LiveRollout("classifier", spec),
        Decision(outcome, "as the test says", {"candidate_requests": 200}),
    )
    deadline = time.monotonic() + 10
    while layout.read_config(model_dir).rollout is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return next(r for r in layout.read_decisions(model_dir) if r["id"] == spec.id)


def test_canary_promotions_are_checked_started_and_recorded(
    project: Path, tmp_path, capsys, caplog
):
    from maas.serving import layout

    repository = tmp_path / "repository"
    model_dir = repository / "classifier"
    where = ["--project", str(project), "--model-repository", str(repository)]

    def promote(version: str, *extra: str) -> int:
        return maas_main(["models", "promote", "classifier", version, "--stage", "prod",
                          *where, *extra])  # fmt: skip

    assert promote("v2", "--canary", "10") == 1  # no version serves prod yet
    assert "promote one without --canary first" in caplog.text
    assert promote("v1") == 0
    before_tags, before_files = git_tags(project), snapshot(repository)
    for bad, words in (
        (["v2", "--canary", "150"], "between 0 and 100"),
        (["v2", "--canary", "-5"], "between 0 and 100"),
        (["v7", "--canary", "10"], "unknown version 'v7.0.0'"),
        (["v1", "--canary", "10"], "already serves stage 'prod'"),
        (["v2", "--canary", "10", "--sticky", "cookie"], "sticky"),
    ):
        caplog.clear()
        assert promote(*bad) == 1, bad
        assert words in caplog.text, bad
    assert git_tags(project) == before_tags and snapshot(repository) == before_files

    assert promote("v2", "--canary", "10", "--sticky", "header:X-User") == 0
    spec = layout.read_config(model_dir).rollout
    assert (spec.baseline, spec.candidate, spec.share) == (1_000_000, 2_000_000, 10.0)
    assert (model_dir / "2000000" / "weights.bin").exists()
    assert tags.stage_holders(project, "classifier", "prod") == ["v1.0.0"]  # not yet decided
    assert promote("v2", "--shadow") == 1  # two rollouts at once on one model
    assert "already in progress" in caplog.text

    record = decide_as_the_server(repository, "promoted")
    assert layout.read_config(model_dir).labels == {"prod": 2_000_000}
    assert maas_main(["models", "record", "classifier", *where]) == 0
    assert record["id"] in capsys.readouterr().out
    assert tags.stage_holders(project, "classifier", "prod") == ["v2.0.0"]
    assert f"id {record['id']}" in run(project, "git", "log", "-1", "classifier@v2.0.0")
    assert maas_main(["models", "record", "classifier", *where]) == 0  # idempotent
    assert "no decision to record" in capsys.readouterr().out

    # A rolled-back canary: prod stays, the decision is noted on the candidate's commit.
    assert promote("v1", "--canary", "50") == 0
    rolled_back = decide_as_the_server(repository, "rolled_back")
    assert layout.read_config(model_dir).labels == {"prod": 2_000_000}
    assert maas_main(["models", "record", "classifier", *where]) == 0
    assert tags.stage_holders(project, "classifier", "prod") == ["v2.0.0"]
    assert maas_main(["models", "list", "classifier", "--project", str(project)]) == 0
    listing = capsys.readouterr().out
    assert "last rollout" in listing and "rolled_back" in listing and "promoted" in listing
    assert rolled_back["id"] in run(project, "git", "log", "--all", "--notes")

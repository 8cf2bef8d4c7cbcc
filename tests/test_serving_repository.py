"""The model repository: layout, config.yaml, building, hot reload, integrity, fallback."""

from __future__ import annotations

import shutil
import threading

import pytest
from serving_support import corrupt, tflite_artifact, wait_for

from maas.provenance import atomic_dir, read_json, verify_files
from maas.serving.auth import KeyChecker, hash_key, read_key_file
from maas.serving.errors import ServingError
from maas.serving.layout import (
    ModelConfig,
    build_repository,
    parse_version,
    publish_version,
    scan,
)
from maas.serving.repository import AVAILABLE, END, ModelRepository


@pytest.fixture(scope="module")
def lite(small_project, tmp_path_factory):
    return tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)


@pytest.fixture(scope="module")
def saved_model(small_project):
    return small_project / "models" / "classifier"


def states(repository, model="m"):
    return {s.version: (s.state, s.error) for s in repository.status(model)}


def test_config_parse_accepts_the_contract_and_names_bad_keys():
    config = ModelConfig.parse(
        {"version_policy": "specific", "versions": [3], "labels": {"stable": 2, "canary": 3}},
        where="m/config.yaml",
    )
    assert config.select([1, 2, 3]) == [3]
    assert config.labels == {"stable": 2, "canary": 3}
    assert ModelConfig.parse(None, where="x").select([1, 3, 2]) == [3, 2, 1]
    bad = [
        ({"policy": "latest"}, "unknown key"),
        ({"version_policy": "newest"}, "version_policy"),
        ({"version_policy": "specific"}, "non-empty"),
        ({"versions": [True]}, "versions"),
        ({"versions": "3"}, "versions"),
        ({"labels": {"stable": "two"}}, "labels"),
        ({"labels": {"bad name!": 1}}, "labels"),
        (["latest"], "mapping"),
    ]
    for raw, words in bad:
        with pytest.raises(ValueError, match=words):
            ModelConfig.parse(raw, where="m/config.yaml")


def test_scan_sees_only_models_and_integer_versions(tmp_path):
    for path in ("m/1", "m/10", "m/.2.tmp-x", "m/03", "m/v4", "m/²", ".hidden/1", "bad name/1"):
        (tmp_path / path).mkdir(parents=True)
    (tmp_path / "m" / "5").write_text("a file, not a version")
    found = scan(tmp_path)
    assert list(found) == ["m"]
    assert sorted(found["m"]) == [1, 10]
    with pytest.raises(FileNotFoundError):
        scan(tmp_path / "missing")


def test_a_version_that_is_not_ascii_digits_is_a_400():
    # "²".isdigit() is True but int("²") fails: found by the OpenAPI fuzz test (a 500).
    for bad in ("²", "١", "-1", "1.0", "9" * 19):
        with pytest.raises(ServingError) as raised:
            parse_version(bad)
        assert raised.value.status_code == 400
    assert parse_version("12") == 12


def test_build_repository_copies_byte_for_byte_and_skips_missing(tmp_path, lite, saved_model):
    target = tmp_path / "repository"
    written = build_repository(
        {"classifier": saved_model, "int8": tmp_path / "not-there", "lite": lite}, target
    )
    assert sorted(written) == ["classifier", "lite"]
    for name, source in (("classifier", saved_model), ("lite", lite)):
        version = target / name / "1"
        assert verify_files(version) == []
        assert read_json(version / "provenance.json") == read_json(source / "provenance.json")
    with pytest.raises(ValueError, match="none of the sources"):
        build_repository({"x": tmp_path / "nothing"}, tmp_path / "other")
    broken = tmp_path / "broken"
    shutil.copytree(lite, broken)
    corrupt(broken)
    with pytest.raises(ValueError, match="refusing"):
        build_repository({"lite": broken}, target)
    assert verify_files(target / "lite" / "1") == []  # the repository is left as it was


def test_publish_version_numbers_versions(tmp_path, lite):
    assert publish_version(lite, tmp_path, "m") == 1
    assert publish_version(lite, tmp_path, "m") == 2
    assert sorted(scan(tmp_path)["m"]) == [1, 2]
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]


def test_hot_reload_follows_the_contract(tmp_path, lite, saved_model):
    root = tmp_path / "repo"
    publish_version(lite, root, "m")
    repository = ModelRepository(root)
    assert repository.poll() == []
    assert repository.resolve("m").version == 1

    # A new version is loaded and swapped in; the old one is dropped (and reported).
    assert publish_version(saved_model, root, "m") == 2
    dropped = repository.poll()
    assert [d.version for d in dropped] == [1]
    assert repository.resolve("m").version == 2 and repository.resolve("m").kind == "saved_model"
    assert states(repository) == {2: (AVAILABLE, ""), 1: (END, "")}

    # A corrupt version is refused and reported; the previous one keeps serving.
    shutil.copytree(lite, root / "m" / "3")
    corrupt(root / "m" / "3")
    repository.poll()
    state, error = states(repository)[3]
    assert state == END and "differs from its recorded hash" in error
    assert repository.resolve("m").version == 2
    with pytest.raises(ServingError, match="not available"):
        repository.resolve("m", version=3)

    # Unchanged files are not retried; repaired files are.
    calls = []
    original = repository._load
    repository._load = lambda *a: calls.append(a) or original(*a)
    repository.poll()
    assert calls == []
    shutil.rmtree(root / "m" / "3")
    with atomic_dir(root / "m" / "3") as out:
        shutil.copytree(lite, out, dirs_exist_ok=True)
    repository.poll()
    assert repository.resolve("m").version == 3 and len(calls) == 1

    # Rollback as `maas models rollback` does it: config.yaml pins a version and names labels.
    (root / "m" / "config.yaml").write_text(
        "version_policy: specific\nversions: [2]\nlabels: {stable: 2}\n"
    )
    repository.poll()
    assert repository.resolve("m").version == 2
    assert repository.resolve("m", label="stable").version == 2
    assert states(repository)[2] == (AVAILABLE, "")
    with pytest.raises(ServingError, match="no label"):
        repository.resolve("m", label="canary")

    # A broken config.yaml is reported, and the config in force stays.
    (root / "m" / "config.yaml").write_text("version_policy: [")
    repository.poll()
    config, error = repository.config("m")
    assert config.versions == (2,) and error.startswith("m/config.yaml")

    # Back to latest; then the newest folder disappears and the one before it serves.
    (root / "m" / "config.yaml").unlink()
    repository.poll()
    assert repository.resolve("m").version == 3
    shutil.rmtree(root / "m" / "3")
    repository.poll()
    assert repository.resolve("m").version == 2
    assert 3 not in states(repository)

    # The whole model goes away.
    shutil.rmtree(root / "m")
    repository.poll()
    with pytest.raises(ServingError, match="not found"):
        repository.resolve("m")


def test_a_corrupt_newest_version_falls_back_at_start(tmp_path, lite):
    root = tmp_path / "repo"
    publish_version(lite, root, "m")
    publish_version(lite, root, "m")
    corrupt(root / "m" / "2")
    repository = ModelRepository(root)
    repository.poll()
    assert repository.resolve("m").version == 1
    assert states(repository)[2][0] == END


def test_specific_version_that_fails_keeps_the_previous_one(tmp_path, lite):
    root = tmp_path / "repo"
    publish_version(lite, root, "m")
    publish_version(lite, root, "m")
    repository = ModelRepository(root)
    repository.poll()
    corrupt(root / "m" / "1")
    (root / "m" / "config.yaml").write_text("version_policy: specific\nversions: [1]\n")
    repository.poll()
    assert repository.resolve("m").version == 2  # still served: 1 cannot load
    assert states(repository)[1][0] == END
    (root / "m" / "config.yaml").write_text("version_policy: specific\nversions: [7]\n")
    repository.poll()
    assert states(repository)[7] == (END, "no version folder on disk")
    assert repository.resolve("m").version == 2


def test_the_old_version_serves_while_the_new_one_loads(tmp_path, lite):
    root = tmp_path / "repo"
    publish_version(lite, root, "m")
    repository = ModelRepository(root)
    repository.poll()
    publish_version(lite, root, "m")
    loading, release = threading.Event(), threading.Event()
    original = repository._load

    def slow_load(*args):
        loading.set()
        release.wait(30)
        return original(*args)

    repository._load = slow_load
    poller = threading.Thread(target=repository.poll)
    poller.start()
    assert loading.wait(30)
    assert repository.resolve("m").version == 1  # still the old one, mid-load
    assert states(repository)[2][0] == "LOADING"
    release.set()
    poller.join(30)
    wait_for(lambda: repository.resolve("m").version == 2, timeout=10)


def test_api_key_hashes_and_key_files(tmp_path):
    line = hash_key("k-123")
    assert line.startswith("sha256:") and "k-123" not in line
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team A\n{line}  # rotated 2026\n\n")
    checker = KeyChecker(read_key_file(keys))
    assert checker.check("k-123") and not checker.check("k-124") and not checker.check(None)
    keys.write_text("k-123\n")
    with pytest.raises(ValueError, match="keys.txt:1"):
        read_key_file(keys)
    with pytest.raises(ValueError):
        hash_key(" padded ")

"""maas.config: params.yaml into typed, frozen objects; every mistake named by its key."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import ROOT

from maas import config


def write(tmp_path, params: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_load_typed_and_frozen():
    params = config.load_params(ROOT / "params.yaml")
    assert isinstance(params.data.remove, tuple)
    assert isinstance(params.train.learning_rate, float)
    assert params.train.model is getattr(params.train, params.train.architecture)
    assert params.train.distribute.strategy in config.STRATEGIES
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.seed = 1  # type: ignore[misc]


def test_overrides_apply_on_top_of_the_file(raw, tmp_path):
    path = write(tmp_path, raw)
    overrides = {
        "train.ensemble": [],  # the default is an ensemble: its members would set the epochs
        "train.architecture": "cnn",
        "train.cnn.epochs": 2,
        "train.distribute.workers": 3,
    }
    params = config.load_params(path, overrides)
    assert params.train.epochs == 2 and params.train.model == params.train.cnn
    assert params.train.distribute.workers == 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda p: p["train"]["wide"].update(batch_size="big"),
            "train.wide.batch_size: expected an integer",
        ),
        (
            lambda p: p["train"]["bilstm"].update(bidirectional=1),
            "train.bilstm.bidirectional: expected true",
        ),
        (lambda p: p["data"].update(seed=True), "data.seed: expected an integer"),
        (lambda p: p["data"].update(colour="red"), "data.colour: unknown key"),
        (lambda p: p["train"]["cnn"].pop("epochs"), "train.cnn.epochs: missing key"),
        (lambda p: p["train"].pop("wide"), "train.wide: missing key"),
        (lambda p: p.update(extra={}), "extra: unknown key"),
        (lambda p: p.pop("evaluate"), "evaluate: missing key"),
        (lambda p: p["data"].update(remove="headers"), "data.remove: expected a list"),
        (lambda p: p["data"].update(remove=["signature"]), "data.remove: must be items in"),
        (lambda p: p["data"].update(validation_fraction=0.9), "data.validation_fraction"),
        (lambda p: p["train"]["cnn"].update(dropout=1.0), "train.cnn.dropout: must be in [0, 1)"),
        (
            lambda p: p["train"].update(architecture="transformer"),
            "train.architecture: expected one of ['bilstm', 'cnn', 'wide'], got 'transformer'",
        ),
        (
            lambda p: p["train"]["wide"].update(lstm_units=8),
            "train.wide.lstm_units: unknown key",
        ),
        (lambda p: p["train"]["wide"].update(lstm_units=8), "a parameter of train.bilstm"),
        (lambda p: p["train"].update(filters=8), "filters is a parameter of train.cnn"),
        (
            lambda p: p["train"].update(ensemble=[{"architecture": "wide", "seed": 1}]),
            "train.ensemble: must be empty or at least two members",
        ),
        (
            lambda p: p["train"].update(
                ensemble=[{"architecture": "wide", "seed": 1}, {"architecture": "gru", "seed": 2}]
            ),
            "train.ensemble[1].architecture: expected one of",
        ),
        (
            lambda p: p["train"].update(
                ensemble=[{"architecture": "cnn", "seed": 1}, {"architecture": "cnn", "seed": 1}]
            ),
            "train.ensemble: must be distinct members",
        ),
        (
            lambda p: p["train"].update(
                architecture="cnn",
                ensemble=[{"architecture": "wide", "seed": s} for s in (1, 2)],
            ),
            "train.architecture: must be one of the ensemble members' architectures ['wide'], "
            "got 'cnn'",
        ),
        (lambda p: p["train"]["cnn"].update(kernel_sizes=[]), "train.cnn.kernel_sizes"),
        (lambda p: p["train"]["wide"].update(optimizer="lbfgs"), "train.wide.optimizer"),
        (lambda p: p["train"]["bilstm"].update(max_tokens=0), "train.bilstm.max_tokens"),
        (
            lambda p: p["train"]["distribute"].update(strategy="ring"),
            "train.distribute.strategy: expected one of",
        ),
        (lambda p: p["train"]["distribute"].update(workers=0), "train.distribute.workers"),
        (
            lambda p: p["train"]["distribute"].update(engine="spark"),
            "train.distribute.engine: expected one of ['local', 'ray'], got 'spark'",
        ),
        (
            lambda p: p["train"]["distribute"].update(engine="ray", strategy="parameter_server"),
            "train.distribute.strategy: must be one of ['one_device', 'multi_worker'] with "
            "engine ray",
        ),
        (lambda p: p["settings"]["train"].update(ray_cpus_per_worker=0), "ray_cpus_per_worker"),
        (lambda p: p.update(train=[1, 2]), "train: expected a mapping"),
    ],
)
def test_bad_parameters_are_named(raw, tmp_path, mutate, message):
    mutate(raw)
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        config.load_params(write(tmp_path, raw))


def test_integers_are_accepted_where_numbers_are_expected(raw, tmp_path):
    raw["train"]["wide"]["learning_rate"] = 1
    assert config.load_params(write(tmp_path, raw)).train.wide.learning_rate == 1.0


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="parameter file not found"):
        config.load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load_params(bad)


def test_unknown_override_is_rejected(raw, tmp_path):
    with pytest.raises(config.ConfigError, match="unknown key"):
        config.load_params(write(tmp_path, raw), {"train.epoch": 3})


def test_paths_are_rooted_at_the_params_file(tmp_path, raw):
    paths = config.project_paths(write(tmp_path, raw))
    assert paths.root == tmp_path.resolve()
    assert paths.split("train") == tmp_path.resolve() / "data" / "processed" / "train.jsonl"


def test_to_dict_round_trips_through_the_loader(raw, tmp_path):
    params = config.load_params(write(tmp_path, raw))
    again = {name: config.to_dict(getattr(params, name)) for name in raw}
    assert config.load_params(write(tmp_path, again)) == params

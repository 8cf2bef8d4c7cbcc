"""Shared fixtures: the offline corpus, a small parameter set, and a small trained project.

Tests use small parameter sets (three newsgroups, a few dozen posts each, a tiny model), never
the full-size run. The expensive fixtures are session-scoped and built once.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "scikit_learn_data"

# Point scikit-learn at the offline copy of the corpus, unless the caller chose a data home.
if "SCIKIT_LEARN_DATA" not in os.environ and SHARED_CORPUS.is_dir():
    os.environ["SCIKIT_LEARN_DATA"] = str(SHARED_CORPUS)

import maas  # noqa: E402,F401  (selects Keras 2 before any test imports TensorFlow)

PROJECT_KERNEL = "maas"  # the notebooks' kernel, "Python (maas)", as `make venv` installs it


def pytest_sessionstart(session) -> None:
    """The notebooks run on the project kernel: install it into this environment if missing."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(PROJECT_KERNEL)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=PROJECT_KERNEL, display_name="Python (maas)", prefix=sys.prefix)


# The small parameter set: tests/small-params.yaml, applied on top of params.yaml (the rollback
# benchmark reads the same file).
SMALL_OVERRIDES = yaml.safe_load((ROOT / "tests" / "small-params.yaml").read_text())


def merge(base: dict, extra: dict) -> dict:
    """Apply nested overrides in place: sub-sections are merged, other values replaced."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def small_params_dict() -> dict:
    """``params.yaml`` with the small overrides applied (a fresh copy every call)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return merge(params, copy.deepcopy(SMALL_OVERRIDES))


def write_project(target: Path, params: dict | None = None) -> Path:
    """A project folder with the notebooks and a (small) ``params.yaml``."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "notebooks", target / "notebooks", dirs_exist_ok=True)
    (target / "reports" / "notebooks").mkdir(parents=True, exist_ok=True)
    (target / "params.yaml").write_text(yaml.safe_dump(params or small_params_dict()))
    return target


@pytest.fixture(scope="session")
def corpus_available() -> None:
    home = Path(os.environ.get("SCIKIT_LEARN_DATA", Path.home() / "scikit_learn_data"))
    if not (home / "20news-bydate_py3.pkz").is_file():
        pytest.skip(
            "20 Newsgroups cache not found: set SCIKIT_LEARN_DATA "
            "(see docs/tutorials/first-run.md)"
        )


@pytest.fixture(scope="session")
def small_project(tmp_path_factory, corpus_available) -> Path:
    """A project that has run the data and train stages on the small parameter set."""
    from maas import config, data
    from maas.training import stage

    root = write_project(tmp_path_factory.mktemp("project"))
    params = config.load_params(root / "params.yaml")
    paths = config.project_paths(root / "params.yaml")
    data.run(params.data, paths)
    stage.run(params.train, paths, settings=params.settings.train, progress=False)
    return root

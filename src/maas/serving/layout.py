"""The model repository on disk: TensorFlow Serving's layout, ``config.yaml``, publishing.

Layout::

    DIR/<model-name>/<integer version>/   an artifact folder (copied byte for byte)
    DIR/<model-name>/config.yaml          optional: version policy and labels

``config.yaml``::

    version_policy: latest     # latest (default) | all | specific
    versions: [3]              # with `specific`: exactly these versions are served
    labels: {stable: 2, canary: 3}
    keep_previous: 1           # versions kept loaded after they stop serving (0: none)
    max_queue: 64              # requests waiting for this model at most; more get 503 at once
                               # (default: the server's --max-queue; none: unbounded)
    rollout: {...}             # a canary or shadow rollout in progress: see maas.serving.rollout
    scaling:                   # replicas of each version (the Ray engine; all optional)
      min_replicas: 1
      max_replicas: 4
      target_ongoing_requests: 8
      upscale_delay_s: 5       # seconds above target before adding replicas
      downscale_delay_s: 30    # seconds below target before removing them

A repository of several models answers the seed's ``POST /predict`` with ``DEFAULT_MODEL``
(``classifier``, the trained model; its variants are ``classifier-<variant>``) when a
request names none. Model names match ``MODEL_NAME``; version folders are canonical
non-negative integers.
This module is the one home of that contract: the server (:mod:`maas.serving.repository`),
the serve stage and the registry's promotions (:mod:`maas.registry.operations`) all read and
write the repository through it.
Anything else in the folder (hidden folders such as the temporary sibling that
:func:`maas.provenance.atomic_dir` writes into) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from maas.provenance import atomic_dir, verify_files, write_bytes, write_json
from maas.serving.errors import ServingError
from maas.serving.rollout import RolloutSpec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
# The pipeline's model: what the seed's `POST /predict` answers with when a request names no
# model, the server was given no --default-model, and the repository serves several models.
DEFAULT_MODEL = "classifier"
VERSION_POLICIES = ("latest", "all", "specific")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Scaling:
    """Replicas of one model version: Ray Serve's autoscaling bounds and target."""

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    upscale_delay_s: float = 5.0  # load above target this long adds replicas
    downscale_delay_s: float = 30.0  # load below target this long removes them

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"replicas must satisfy 0 <= min_replicas <= max_replicas, max_replicas >= 1; "
                f"got min {self.min_replicas}, max {self.max_replicas}"
            )
        if not self.target_ongoing_requests > 0:
            raise ValueError(
                f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests}"
            )
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            raise ValueError("upscale_delay_s and downscale_delay_s must be >= 0")

    @classmethod
    def parse(cls, raw: Any, *, where: str, default: Scaling | None = None) -> Scaling:
        """Keys of ``raw`` over ``default``; ``ValueError`` names the bad key."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: scaling must be a mapping of {SCALING_KEYS}")
        unknown = sorted(set(raw) - set(SCALING_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown scaling key {unknown[0]!r}")
        for key in SCALING_KEYS:
            value = raw.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{where}: scaling.{key} must be a number")
        base = default or cls()
        try:
            return cls(
                **{
                    key: kind(raw.get(key, getattr(base, key)))
                    for key, kind in SCALING_TYPES.items()
                }
            )
        except ValueError as error:
            raise ValueError(f"{where}: scaling: {error}") from error


# Scaling's keys and the type each is read as (its annotation: replica counts int, else float).
SCALING_TYPES = {item.name: {"int": int, "float": float}[item.type] for item in fields(Scaling)}
SCALING_KEYS = tuple(SCALING_TYPES)


@dataclass(frozen=True)
class ModelConfig:
    """A model's ``config.yaml``: which versions to serve and the labels that name them."""

    version_policy: str = "latest"
    versions: tuple[int, ...] = ()
    labels: Mapping[str, int] = field(default_factory=dict)
    keep_previous: int = 0  # versions that stay loaded after they stop serving
    scaling: Scaling | None = None  # None: the engine's defaults
    max_queue: int | None = None  # None: the server's --max-queue
    rollout: RolloutSpec | None = None  # a canary or shadow rollout in progress

    @classmethod
    def parse(cls, raw: Any, *, where: str) -> ModelConfig:
        """Validate the content of a ``config.yaml``; ``ValueError`` names the bad key."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
        known = {"version_policy", "versions", "labels", "keep_previous", "scaling", "max_queue"}
        known.add("rollout")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}")
        policy = raw.get("version_policy", "latest")
        if policy not in VERSION_POLICIES:
            raise ValueError(f"{where}: version_policy must be one of {VERSION_POLICIES}")
        versions = raw.get("versions") or []
        if not isinstance(versions, list) or not all(_is_version(v) for v in versions):
            raise ValueError(f"{where}: versions must be a list of non-negative integers")
        if policy == "specific" and not versions:
            raise ValueError(f"{where}: version_policy specific needs a non-empty versions list")
        labels = raw.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and LABEL_NAME.match(k) and _is_version(v)
            for k, v in labels.items()
        ):
            raise ValueError(f"{where}: labels must map names to integer versions")
        keep_previous = raw.get("keep_previous", 0)
        if not _is_version(keep_previous):
            raise ValueError(f"{where}: keep_previous must be a non-negative integer")
        scaling = raw.get("scaling")
        if scaling is not None:
            scaling = Scaling.parse(scaling, where=where)
        max_queue = raw.get("max_queue")
        if max_queue is not None:
            max_queue = check_max_queue(max_queue, where=f"{where}: max_queue")
        rollout = raw.get("rollout")
        if rollout is not None:
            if policy != "specific":
                raise ValueError(f"{where}: a rollout needs version_policy specific")
            rollout = RolloutSpec.parse(rollout, where=where, versions=tuple(versions))
        return cls(
            policy, tuple(versions), dict(labels), keep_previous, scaling, max_queue, rollout
        )

    def select(self, on_disk: list[int]) -> list[int]:
        """The versions this policy may serve, newest first.

        For ``latest`` that is every version on disk: the newest one that loads is served,
        so a corrupt newest version falls back to the one before it.
        """
        if self.version_policy == "specific":
            return sorted(self.versions, reverse=True)
        return sorted(on_disk, reverse=True)


def check_max_queue(value: Any, *, where: str = "max_queue") -> int:
    """A queue bound (``--max-queue``, ``max_queue:``): a positive integer, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{where} must be a positive integer (requests waiting at most), got {value!r}"
        )
    return value


def check_model_name(name: str) -> None:
    """``ValueError`` unless ``name`` is a valid model name (a repository folder)."""
    if not MODEL_NAME.match(name):
        raise ValueError(f"model name {name!r} must match {MODEL_NAME.pattern}")


def is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts ``²`` and other digits ``int`` refuses."""
    return text.isascii() and text.isdigit()


def parse_version(version: int | str) -> int:
    """A version number from a URL or a config; ``ServingError`` 400 when it is not one."""
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        return version
    if isinstance(version, str) and is_number(version) and len(version) <= 18:
        return int(version)
    raise ServingError(400, f"version must be a non-negative integer, got {str(version)[:40]!r}")


def scan(root: str | Path) -> dict[str, dict[int, Path]]:
    """``{model: {version: folder}}`` of a repository; other entries are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository not found: {root}")
    found: dict[str, dict[int, Path]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if not MODEL_NAME.match(model_dir.name):
            continue
        found[model_dir.name] = {
            int(p.name): p
            for p in model_dir.iterdir()
            if p.is_dir() and is_number(p.name) and str(int(p.name)) == p.name
        }
    return found


def build_repository(
    sources: Mapping[str, str | Path], target: str | Path, *, version: int = 1
) -> dict[str, Path]:
    """Write a model repository from artifact folders, atomically, skipping missing ones.

    Args:
        sources: ``{model name: artifact folder}``; folders that do not exist are skipped.
        target: the repository folder (replaced whole, never left half-written).
        version: the version number every model gets.

    Returns:
        ``{model name: version folder}`` of the models written.

    Raises:
        ValueError: a bad model name, no source exists, or a source fails its hash check.
    """
    present = {}
    for name, source in sources.items():
        check_model_name(name)
        if not Path(source).is_dir():
            log.warning("skipping model %s: %s does not exist", name, source)
            continue
        problems = verify_files(source)
        if problems:
            raise ValueError(f"refusing to publish {name}: {'; '.join(problems)}")
        present[name] = Path(source)
    if not present:
        raise ValueError(f"none of the sources exist: {sorted(map(str, sources.values()))}")
    target = Path(target)
    with atomic_dir(target) as out:
        for name, source in present.items():
            shutil.copytree(source, out / name / str(version))
    return {name: target / name / str(version) for name in present}


def publish_version(source: str | Path, repository: str | Path, model: str) -> int:
    """Copy an artifact folder into a repository as the model's next version; return it.

    The copy is written beside the final folder and renamed into place, so a polling
    server never sees it half-written.
    """
    check_model_name(model)
    problems = verify_files(source)
    if problems:
        raise ValueError(f"refusing to publish: {'; '.join(problems)}")
    model_dir = Path(repository) / model
    model_dir.mkdir(parents=True, exist_ok=True)
    existing = scan(repository).get(model, {})
    version = max(existing, default=0) + 1
    with atomic_dir(model_dir / str(version)) as out:
        shutil.copytree(source, out, dirs_exist_ok=True)
    return version


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_config_bytes(model_dir: str | Path) -> bytes | None:
    """A model's ``config.yaml`` as it is on disk (``None``: the model has none)."""
    path = Path(model_dir) / CONFIG_FILE
    return path.read_bytes() if path.exists() else None


def _write_config(model_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config`` over the settings of the config in force that it does not name."""
    with contextlib.suppress(OSError, UnicodeDecodeError, yaml.YAMLError):
        existing = yaml.safe_load((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
        if isinstance(existing, dict):
            kept = ("keep_previous", "scaling", "max_queue")
            config.update({k: existing[k] for k in kept if k in existing})
    ModelConfig.parse(config, where=CONFIG_FILE)  # what is written must be what the server reads
    text = yaml.safe_dump(config, sort_keys=False).encode()
    return write_bytes(Path(model_dir) / CONFIG_FILE, text)


def read_config(model_dir: str | Path) -> ModelConfig | None:
    """A model's ``config.yaml``, validated (``None``: the model has none).

    Raises:
        ValueError: the file is unreadable or malformed (the message names it).
    """
    path = Path(model_dir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: {error}") from error
    return ModelConfig.parse(raw, where=str(path))


def start_rollout(model_dir: str | Path, spec: RolloutSpec) -> Path:
    """Serve ``spec.baseline`` and ``spec.candidate`` side by side under ``spec``.

    ``keep_previous``, ``scaling`` and ``max_queue`` of the config in force are kept.

    Raises:
        ValueError: a rollout of this model is already in progress, or the config in force
            is malformed (nothing is written then).
    """
    current = read_config(model_dir)
    if current is not None and current.rollout is not None:
        raise ValueError(
            f"a rollout of {Path(model_dir).name} is already in progress "
            f"({current.rollout.id}: version {current.rollout.candidate} "
            f"{current.rollout.mode}); wait for its decision first"
        )
    config = {
        "version_policy": "specific",
        "versions": [spec.baseline, spec.candidate],
        "labels": {spec.stage: spec.baseline, spec.mode: spec.candidate},
        "rollout": spec.to_yaml(),
    }
    return _write_config(model_dir, config)


def pin_version(model_dir: str | Path, version: int, *, label: str) -> Path:
    """Serve exactly ``version``, labelled ``label``: ``config.yaml`` replaced atomically.

    ``keep_previous``, ``scaling`` and ``max_queue`` of the config in force are kept (a
    rollout in progress is ended).
    """
    config = {"version_policy": "specific", "versions": [version], "labels": {label: version}}
    return _write_config(model_dir, config)


def restore_config(model_dir: str | Path, previous: bytes | None) -> None:
    """Put back a ``config.yaml`` read by :func:`read_config_bytes` (``None``: remove it)."""
    path = Path(model_dir) / CONFIG_FILE
    if previous is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        write_bytes(path, previous)


# A rollout's decision, written by the server that made it: DIR/<model>/rollouts/<id>.json.
# Not a version folder (not an integer), so the repository's scan passes over it.
ROLLOUTS_DIR = "rollouts"


def write_decision(model_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a rollout's decision record (``record["id"]`` names it), atomically."""
    return write_json(Path(model_dir) / ROLLOUTS_DIR / f"{record['id']}.json", dict(record))


def read_decisions(model_dir: str | Path) -> list[dict[str, Any]]:
    """The model's decision records, oldest first (unreadable ones are skipped, logged)."""
    records = []
    for path in sorted((Path(model_dir) / ROLLOUTS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            log.warning("skipping the decision record %s: %s", path, error)
            continue
        if isinstance(record, dict) and "id" in record:
            records.append(record)
    return sorted(records, key=lambda r: str(r.get("decided_at", "")))

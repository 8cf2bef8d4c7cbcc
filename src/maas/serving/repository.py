"""The served versions of a model repository, in memory, following the disk as it changes.

The layout on disk and ``config.yaml`` are described in :mod:`maas.serving.layout`.
:class:`ModelRepository` compares the disk with what it serves on every :meth:`poll`: a new
version is loaded through :func:`maas.runtime.load_runtime` (which verifies every file
against its provenance), warmed, and only then swapped in; versions the policy no longer
selects are dropped after that. A version that fails to load is reported (state ``END`` and
its error in the status) and whatever was served before keeps serving. Hidden folders and
non-integer names are ignored, so a version being written with
:func:`maas.provenance.atomic_dir` appears only when it is whole.

With ``keep_previous: N`` in a model's ``config.yaml``, the last N versions that stopped
serving stay loaded (warm, reported as ``END``): selecting one of them again (a rollback) is
a swap, not a load.

:class:`ServedModels` is the data plane the protocols read (lookups only);
:class:`ModelRepository` fills it by loading versions in this process, and the Ray engine
(:mod:`maas.serving.ray`) fills one from its controller's snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from maas.runtime import Runtime, load_runtime, read_provenance
from maas.serving import faults
from maas.serving.errors import ServingError
from maas.serving.layout import (  # noqa: F401  (build_repository, publish_version: re-exported)
    CONFIG_FILE,
    ModelConfig,
    build_repository,
    parse_version,
    publish_version,
    scan,
)

log = logging.getLogger(__name__)

WARMUP_TEXT = "warm-up request: the quick brown fox jumps over the lazy dog"
# TensorFlow Serving's version states, as its status endpoint reports them.
AVAILABLE, LOADING, END = "AVAILABLE", "LOADING", "END"


@dataclass
class VersionStatus:
    """One version's state as TensorFlow Serving reports it (``error`` empty when fine)."""

    version: int
    state: str
    error: str = ""


@dataclass
class LoadedVersion:
    """A loaded, warmed version and what serves its requests."""

    model: str
    version: int
    path: Path
    runtime: Runtime
    provenance: dict[str, Any]
    loaded_at: float
    predictor: Any = None  # set by the server: a batcher or a direct predictor
    route: Any = None  # set per request during a rollout (maas.serving.routing.Route)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.runtime.labels)

    @property
    def kind(self) -> str:
        return self.runtime.kind


@dataclass
class _ModelState:
    config: ModelConfig
    config_error: str = ""
    served: dict[int, LoadedVersion] = field(default_factory=dict)
    status: dict[int, VersionStatus] = field(default_factory=dict)
    failed: dict[int, tuple] = field(default_factory=dict)  # version -> files' signature
    warm: dict[int, LoadedVersion] = field(default_factory=dict)  # loaded, not serving


class ServedModels:
    """The data plane every protocol reads: models, their versions' states, the lookup.

    Only reads dictionaries that a writer replaces whole, so request handlers never wait.
    """

    def __init__(self) -> None:
        self._models: dict[str, _ModelState] = {}
        self.polls = 0  # 0: nothing known yet (the models are still loading)
        self.rollouts: Any = None  # maas.serving.routing.Rollouts: splits prod's traffic

    def snapshot(self) -> tuple[dict[str, _ModelState], int]:
        """What the lookups read, as plain data (to publish to other processes)."""
        models = {
            name: _ModelState(state.config, state.config_error, state.served, state.status)
            for name, state in self._models.items()
        }
        return models, self.polls

    def install(self, models: dict[str, _ModelState], polls: int) -> None:
        """Replace what the lookups read at once, e.g. with another process's snapshot."""
        self._models, self.polls = dict(models), polls

    # ---- lookups (request path) -------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            if self.polls == 0:
                raise ServingError(503, "the models are still loading; retry shortly")
            raise ServingError(404, f"model {model!r} not found")
        return state

    def served(self, model: str) -> dict[int, LoadedVersion]:
        return dict(self._state(model).served)

    def status(self, model: str) -> list[VersionStatus]:
        """Every version the server knows of, newest first."""
        return sorted(self._state(model).status.values(), key=lambda s: -s.version)

    def config(self, model: str) -> tuple[ModelConfig, str]:
        """The model's config in force and the error of its last ``config.yaml`` read, if any."""
        state = self._state(model)
        return state.config, state.config_error

    def resolve(
        self, model: str, version: int | str | None = None, label: str | None = None
    ) -> LoadedVersion:
        """The version that serves a request: the one named, the label's, or the newest.

        Raises:
            ServingError: 404 for an unknown model, version or label, 503 when the model has
                no version ready yet, 400 for a malformed version number.
        """
        state = self._state(model)
        served = state.served
        if label is not None:
            if label not in state.config.labels:
                raise ServingError(404, f"model {model!r} has no label {label!r}")
            version = state.config.labels[label]
        if version is not None:
            number = parse_version(version)
            if number not in served:
                known = state.status.get(number)
                detail = f" ({known.state}: {known.error})" if known and known.error else ""
                raise ServingError(
                    404, f"version {number} of model {model!r} is not available{detail}"
                )
            return served[number]
        rollout = state.config.rollout
        if rollout is not None and served:  # prod's traffic, split or mirrored
            if self.rollouts is not None:
                return self.rollouts.route(model, rollout, served, state.status)
            if rollout.baseline in served:  # no router here (an ensemble's member): prod
                return served[rollout.baseline]
        if not served:
            loading = "; the models are still loading, retry shortly" if self.polls == 0 else ""
            raise ServingError(503, f"model {model!r} has no version available{loading}")
        return served[max(served)]

    def warm(self, model: str) -> dict[int, LoadedVersion]:
        """Versions kept loaded after they stopped serving (``keep_previous``)."""
        return dict(self._state(model).warm)


class ModelRepository(ServedModels):
    """Serves the versions a repository folder holds, and follows it as it changes.

    :meth:`poll` does the (slow) loading and is meant to run in a worker thread; the lookups
    (:meth:`resolve`, :meth:`status`) only read dictionaries that :meth:`poll` replaces
    whole, so request handlers never wait for a load.

    Args:
        root: the repository folder.
        default_policy: the version policy of models without a ``config.yaml``.
        make_predictor: called with each freshly loaded version, before it is swapped in;
            its result is stored as ``LoadedVersion.predictor``.
        warmup_batch_sizes: batch sizes run once through a new version before it serves.
        load_version: ``(model, version, folder, config) -> Runtime``; default: load the
            artifact in this process (the Ray engine deploys it instead).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        default_policy: str = "latest",
        make_predictor: Callable[[LoadedVersion], Any] | None = None,
        warmup_batch_sizes: tuple[int, ...] = (1,),
        load_version: Callable[[str, int, Path, ModelConfig], Runtime] | None = None,
    ) -> None:
        super().__init__()
        if default_policy not in ("latest", "all"):
            raise ValueError(f"default_policy must be 'latest' or 'all', got {default_policy!r}")
        self.root = Path(root)
        self.default_config = ModelConfig(version_policy=default_policy)
        self.make_predictor = make_predictor
        self.warmup_batch_sizes = warmup_batch_sizes
        self.load_version = load_version
        self._poll_lock = threading.Lock()  # one poll at a time

    # ---- polling (worker thread) --------------------------------------------------------

    def poll(self) -> list[LoadedVersion]:
        """Bring the served versions in line with the disk; return the versions dropped."""
        with self._poll_lock:
            on_disk = scan(self.root)
            dropped: list[LoadedVersion] = []
            for name in sorted(set(self._models) - set(on_disk)):
                log.info("model %s removed from the repository", name)
                gone = self._models.pop(name)
                dropped += [*gone.served.values(), *gone.warm.values()]
            for name, versions in on_disk.items():
                dropped += self._poll_model(name, versions)
            self.polls += 1
            return dropped

    def _poll_model(self, name: str, on_disk: dict[int, Path]) -> list[LoadedVersion]:
        state = self._models.setdefault(name, _ModelState(self.default_config))
        self._read_config(name, state)
        wanted = state.config.select(list(on_disk))
        for version in wanted:
            if version not in on_disk:
                _set_status(state, VersionStatus(version, END, "no version folder on disk"))
                continue
            loaded = self._load_if_new(name, version, on_disk[version], state)
            if loaded is not None:
                # Swap in a new dict: a reader sees the old one or the new one, never a mix.
                state.served = {**state.served, version: loaded}
            if state.config.version_policy == "latest" and version in state.served:
                break  # the newest version that loads is the latest; older ones are fallbacks
        return self._drop_unwanted(name, state, wanted, on_disk)

    def _read_config(self, name: str, state: _ModelState) -> None:
        path = self.root / name / CONFIG_FILE
        if not path.exists():
            state.config, state.config_error = self.default_config, ""
            return
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            config = ModelConfig.parse(raw, where=f"{name}/{CONFIG_FILE}")
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as error:
            message = str(error)
            if not message.startswith(f"{name}/{CONFIG_FILE}"):
                message = f"{name}/{CONFIG_FILE}: {message}"
            if state.config_error != message:
                log.error("keeping the config in force for %s: %s", name, message)
            state.config_error = message
            return
        if config != state.config:
            log.info("model %s: config %s", name, config)
        state.config, state.config_error = config, ""

    def _load_if_new(
        self, name: str, version: int, path: Path, state: _ModelState
    ) -> LoadedVersion | None:
        if version in state.served:
            return None
        if version in state.warm:  # kept loaded: serving it again is a swap
            loaded = state.warm[version]
            state.warm = {v: w for v, w in state.warm.items() if v != version}
            _set_status(state, VersionStatus(version, AVAILABLE))
            log.info("model %s version %d serves again (kept warm)", name, version)
            return loaded
        signature = _signature(path)
        if state.failed.get(version) == signature:
            return None  # failed before with exactly these files: wait until they change
        _set_status(state, VersionStatus(version, LOADING))
        try:
            loaded = self._load(name, version, path, state.config)
        except Exception as error:  # any failure: report it, keep serving the others
            log.error("model %s version %d failed to load: %s", name, version, error)
            state.failed[version] = signature
            _set_status(state, VersionStatus(version, END, str(error)))
            return None
        state.failed.pop(version, None)
        _set_status(state, VersionStatus(version, AVAILABLE))
        log.info("model %s version %d available (%s)", name, version, loaded.kind)
        return loaded

    def _load(self, name: str, version: int, path: Path, config: ModelConfig) -> LoadedVersion:
        if self.load_version is not None:
            runtime = self.load_version(name, version, path, config)
        else:
            runtime = faults.wrap(load_runtime(path, verify=True), path)
        labels = len(runtime.labels)
        for size in self.warmup_batch_sizes:
            probabilities = runtime.predict([WARMUP_TEXT] * size)
            if probabilities.shape != (size, labels) or not np.all(np.isfinite(probabilities)):
                raise ValueError(
                    f"warm-up gave probabilities of shape {probabilities.shape}, "
                    f"expected {(size, labels)}"
                )
        loaded = LoadedVersion(
            model=name,
            version=version,
            path=path,
            runtime=runtime,
            provenance=_provenance_summary(path),
            loaded_at=time.time(),
        )
        if self.make_predictor is not None:
            loaded.predictor = self.make_predictor(loaded)
        return loaded

    def _drop_unwanted(
        self, name: str, state: _ModelState, wanted: list[int], on_disk: dict[int, Path]
    ) -> list[LoadedVersion]:
        # Versions whose folder is gone always go. The rest go only once a wanted version
        # serves, so a failed load never leaves a model with nothing to serve.
        any_wanted = any(version in state.served for version in wanted)
        keep = {
            version
            for version in state.served
            if version in on_disk and (version in wanted or not any_wanted)
        }
        if state.config.version_policy == "latest" and any_wanted:
            keep = {max(v for v in wanted if v in state.served)}
        leaving = [loaded for version, loaded in state.served.items() if version not in keep]
        if leaving:
            state.served = {v: loaded for v, loaded in state.served.items() if v in keep}
            for loaded in leaving:
                _set_status(state, VersionStatus(loaded.version, END))
        dropped = self._keep_warm(name, state, leaving, on_disk)
        for loaded in dropped:
            log.info("model %s version %d unloaded", name, loaded.version)
        # Forget versions that are neither on disk, nor wanted, nor served.
        forget = {
            v for v in state.status if v not in on_disk and v not in wanted and v not in keep
        }
        if forget:
            state.status = {v: s for v, s in state.status.items() if v not in forget}
            for version in forget:
                state.failed.pop(version, None)
        return dropped

    def _keep_warm(
        self, name: str, state: _ModelState, leaving: list[LoadedVersion], on_disk: dict
    ) -> list[LoadedVersion]:
        """Keep the last ``keep_previous`` versions that stopped serving; return the rest."""
        warm = {**state.warm, **{loaded.version: loaded for loaded in leaving}}
        # The most recently served stay: a version leaving now beats one kept before.
        order = [loaded.version for loaded in leaving] + sorted(state.warm, reverse=True)
        limit = state.config.keep_previous
        kept = [v for v in order if v in on_disk and v not in state.served][:limit]
        for version in kept:
            if version not in state.warm:
                log.info("model %s version %d kept warm", name, version)
        state.warm = {v: warm[v] for v in kept}
        return [loaded for v, loaded in warm.items() if v not in state.warm]


def _set_status(state: _ModelState, status: VersionStatus) -> None:
    state.status = {**state.status, status.version: status}  # copy on write, as `served`


def _signature(path: Path) -> tuple:
    """Names, sizes and modification times of a folder's files: changes when they do."""
    try:
        return tuple(
            sorted(
                (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in path.rglob("*")
                if p.is_file()
            )
        )
    except OSError:
        return ()


def _provenance_summary(path: Path) -> dict[str, Any]:
    """What a status page should show of a version's provenance (no file list)."""
    try:
        record = read_provenance(path)
    except (OSError, ValueError):
        return {}
    keys = ("stage", "created", "git_revision", "tokenizer_fingerprint", "metrics")
    return {key: record[key] for key in keys if key in record}

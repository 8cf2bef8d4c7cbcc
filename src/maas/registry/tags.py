"""The model registry: versions and stages of DVC artifacts, kept as GTO git tags.

An artifact is a DVC output declared in ``dvc.yaml``'s ``artifacts:`` section (``classifier``
-> ``models/classifier``). Its versions are git tags written by `GTO
<https://dvc.org/doc/gto>`_: ``classifier@v1.0.0`` registers the commit whose ``dvc.lock``
records the model's bytes, and ``classifier#prod#3`` assigns a stage to a version. Nothing
here invents a tag scheme: ``gto show``, ``gto history`` and ``dvc artifacts get --stage prod``
read the same tags.

One version holds a stage at a time: promoting a version unassigns the stage from the
others, so GTO (``gto which``) and DVC (the latest stage tag) agree on who holds it.
GTO orders events by their tags' timestamps, which have whole seconds; two events of an
artifact are therefore never written within the same second.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maas.registry.store import (
    GTO_CONFIG,
    LOCK_FILE,
    PIPELINE_FILES,
    RegistryError,
    artifact_path,
    git,
    lock_entry,
    metrics_at,
    missing_from_cache,
    push_artifact,
    resolve_commit,
)

log = logging.getLogger(__name__)

SHORT_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?$")


@dataclass(frozen=True)
class ModelVersion:
    """A registered version of an artifact."""

    artifact: str
    version: str  # semantic version, "v1.0.0"
    commit: str
    created_at: str
    stages: tuple[str, ...]  # stages this version holds now
    metrics: dict[str, Any] = field(default_factory=dict)  # "train.val_accuracy": 0.9, ...


def normalize_version(version: str) -> str:
    """``"v1"`` -> ``"v1.0.0"``, ``"1.2"`` -> ``"v1.2.0"``: GTO's semantic versions."""
    match = SHORT_VERSION.match(str(version).strip())
    if not match:
        raise RegistryError(f"version {version!r} is not of the form v1.2.3 (or v1, v1.2)")
    return "v" + ".".join(part or "0" for part in match.groups())


def allowed_stages(root: str | Path) -> list[str] | None:
    """The stages listed in ``.gto`` (``None``: GTO accepts any valid name)."""
    config = Path(root) / GTO_CONFIG
    if not config.is_file():
        return None
    return (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("stages")


def check_stage(root: str | Path, stage: str) -> None:
    stages = allowed_stages(root)
    if stages is not None and stage not in stages:
        raise RegistryError(f"unknown stage {stage!r}: {GTO_CONFIG} allows {stages}")


def _gto_artifact(root: str | Path, name: str):
    from gto.exceptions import ArtifactNotFound
    from gto.registry import GitRegistry

    with GitRegistry.from_url(str(root)) as registry:
        try:
            return registry.get_state().find_artifact(name)
        except ArtifactNotFound:
            return None


def _registered(root: str | Path, name: str) -> list:
    artifact = _gto_artifact(root, name)
    return artifact.get_versions(active_only=True) if artifact is not None else []


def version_commit(root: str | Path, name: str, version: str) -> str:
    """The commit a registered version points at; ``RegistryError`` names the known ones."""
    version = normalize_version(version)
    versions = _registered(root, name)
    for found in versions:
        if found.version == version:
            return found.commit_hexsha
    known = ", ".join(v.version for v in versions) or "none"
    raise RegistryError(f"unknown version {version!r} of {name!r} (registered: {known})")


def stage_holders(root: str | Path, name: str, stage: str) -> list[str]:
    """The versions that hold ``stage`` now (one, when stages are managed through maas)."""
    return [
        v.version
        for v in _registered(root, name)
        if any(s.stage == stage for s in v.get_vstages(active_only=True))
    ]


def stage_history(root: str | Path, name: str, stage: str) -> list[str]:
    """The versions ``stage`` was assigned to, oldest first (GTO's event history)."""
    from gto import api

    events = api.history(str(root), artifact=name, ascending=True)
    return [e["version"] for e in events if e["event"] == "assignment" and e["stage"] == stage]


def list_versions(root: str | Path, name: str, *, metrics: bool = True) -> list[ModelVersion]:
    """Registered versions, newest first, with the metrics DVC tracked at each commit."""
    versions = _registered(root, name)
    values = metrics_at(root, [v.commit_hexsha for v in versions]) if metrics else {}
    return [
        ModelVersion(
            artifact=name,
            version=v.version,
            commit=v.commit_hexsha,
            created_at=v.registrations[0].created_at.isoformat(),
            stages=tuple(sorted(s.stage for s in v.get_vstages(active_only=True))),
            metrics=values.get(v.commit_hexsha, {}),
        )
        for v in versions
    ]


def register(
    root: str | Path,
    name: str,
    *,
    version: str | None = None,
    ref: str = "HEAD",
    push: bool = True,
) -> ModelVersion:
    """Register the artifact at ``ref`` as a new version (``gto register``).

    The artifact must be declared in ``dvc.yaml`` and recorded in ``dvc.lock`` at ``ref``,
    its bytes must be in the DVC cache, and, for ``HEAD``, the pipeline files must have no
    uncommitted changes. With ``push`` the bytes go to the default DVC remote first, so the
    version can be materialized after the cache is gone.

    Raises:
        RegistryError: any check fails (no tag is written then).
    """
    from gto import api
    from gto.exceptions import GTOException

    commit = resolve_commit(root, ref)
    path = artifact_path(root, name, commit)
    if lock_entry(root, commit, path) is None:
        raise RegistryError(f"{path} is not a DVC output in {LOCK_FILE} at {commit[:12]}")
    if commit == resolve_commit(root, "HEAD"):
        dirty = git(root, "status", "--porcelain", "--untracked-files=no", "--", *PIPELINE_FILES)
        if dirty:
            raise RegistryError(
                f"uncommitted changes to the pipeline files ({dirty.replace(chr(10), '; ')}): "
                "commit them first, so the version describes the model it names"
            )
    missing = missing_from_cache(root, commit, path)
    if missing:
        raise RegistryError(
            f"{len(missing)} file(s) of {path} at {commit[:12]} are not in the DVC cache "
            f"(e.g. {missing[0]}): run `dvc pull` or `dvc repro` first"
        )
    version = normalize_version(version) if version else None
    if push:
        push_artifact(root, commit, path)
    try:
        _after_last_event(root, name)
        api.register(str(root), name, commit, version=version)
    except GTOException as error:
        raise RegistryError(f"gto register {name}: {error}") from error
    registered = [v for v in list_versions(root, name, metrics=False) if v.commit == commit]
    log.info("registered %s %s at %s", name, registered[0].version, commit[:12])
    return registered[0]


def assign_stage(
    root: str | Path, name: str, version: str, stage: str, *, message: str | None = None
) -> list[str]:
    """Make ``version`` the one holder of ``stage``; return the GTO tags written.

    The stage is unassigned from the versions holding it (``gto unassign``), then assigned
    (``gto assign``, with ``message`` as the annotated tag's message), in distinct seconds
    so GTO's history orders them.
    """
    from gto import api

    check_stage(root, stage)
    version = normalize_version(version)
    version_commit(root, name, version)
    holders = stage_holders(root, name, stage)
    if holders == [version]:
        return []
    tags = []
    for other in holders:
        if other != version:
            _after_last_event(root, name)
            tags.append(api.unassign(str(root), name, stage=stage, version=other).tag)
    _after_last_event(root, name)
    assigned = api.assign(str(root), name, stage, version=version, force=True, message=message)
    tags.append(assigned.tag)
    log.info("%s %s now holds stage %s (%s)", name, version, stage, ", ".join(tags))
    return tags


def previous_version(root: str | Path, name: str, stage: str) -> str:
    """The version that held ``stage`` before the current holder: the rollback target."""
    check_stage(root, stage)
    holders = stage_holders(root, name, stage)
    if not holders:
        raise RegistryError(f"no version of {name!r} holds stage {stage!r}: nothing to roll back")
    registered = {v.version for v in _registered(root, name)}
    earlier = [v for v in stage_history(root, name, stage) if v != holders[0] and v in registered]
    if not earlier:
        raise RegistryError(
            f"{name!r} {holders[0]} is the only version that ever held {stage!r}: "
            "no earlier version to roll back to"
        )
    return earlier[-1]


def _after_last_event(root: str | Path, name: str) -> None:
    """Wait, if need be, until the clock is past the second of the artifact's last tag."""
    from gto import api

    events = api.history(str(root), artifact=name)
    if not events:
        return
    last = max(e["timestamp"] for e in events)
    wait = (last + dt.timedelta(seconds=1)).timestamp() - time.time()
    if wait > 0:
        time.sleep(wait)

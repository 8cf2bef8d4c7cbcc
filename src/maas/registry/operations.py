"""Promote and roll back: move a registry stage and the serving model repository together.

A promotion (or a rollback, which promotes an earlier version) does, in this order:

1. materialize the version's exact bytes as ``DIR/<model>/<N>/`` (:mod:`maas.registry.materialize`:
   from the DVC cache or remote, verified against the hashes recorded at its revision);
2. write ``DIR/<model>/config.yaml`` (``version_policy: specific``, ``versions: [N]``, the
   stage as a label; :func:`maas.serving.layout.pin_version`), which a running server picks
   up on its next poll;
3. with a server URL, wait until the server reports version N as the one it serves and
   answers a request with it; the server loads N beside the old version and swaps, so
   requests never fail in between;
4. only then move the stage in the registry (GTO tags, :func:`maas.registry.tags.assign_stage`).

Any failure before step 4 restores the previous ``config.yaml`` and removes a version folder
it added, so the registry, the repository and the server stay as they were.

``N`` is the semantic version as one integer, ``major * 10**6 + minor * 10**3 + patch``
(``v1.0.0`` -> 1000000, ``v0.0.3`` -> 3): deterministic, and in the same order as the
versions, so the repository's ``latest`` policy also picks the newest version.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from maas.registry.materialize import materialize
from maas.registry.store import RegistryError
from maas.registry.tags import (
    assign_stage,
    check_stage,
    normalize_version,
    previous_version,
    stage_holders,
    version_commit,
)
from maas.serving import layout

log = logging.getLogger(__name__)

PROBE_TEXT = "rollout probe: which version answers?"


@dataclass(frozen=True)
class Deployment:
    """Where a version is served: a model repository, and optionally a running server."""

    repository: Path
    model: str
    server: str | None = None  # base URL, e.g. http://127.0.0.1:8501
    api_key: str | None = None
    timeout: float = 120.0  # seconds to wait for the server to switch


@dataclass(frozen=True)
class Rollout:
    artifact: str
    version: str
    stage: str
    commit: str
    tags: list[str]  # GTO tags written
    serving_version: int | None = None
    folder: Path | None = None
    materialize_seconds: float = 0.0
    switch_seconds: float = 0.0  # config.yaml written -> server answers with the version
    total_seconds: float = 0.0


def serving_version(version: str) -> int:
    """``v1.2.3`` -> 1002003: the repository's integer version of a semantic version."""
    major, minor, patch = (int(p) for p in normalize_version(version)[1:].split("."))
    if minor >= 1000 or patch >= 1000:
        raise RegistryError(f"{version}: minor and patch must be below 1000 to be served")
    return major * 1_000_000 + minor * 1_000 + patch


def promote(
    root: str | Path,
    name: str,
    version: str,
    stage: str,
    *,
    deployment: Deployment | None = None,
) -> Rollout:
    """Give ``version`` the ``stage``, serving it first when a deployment is given.

    Raises:
        RegistryError: unknown version or stage, bytes unavailable or corrupt (then
            :class:`maas.registry.materialize.IntegrityError`), or the server did not switch
            in time; nothing is changed then.
    """
    start = time.perf_counter()
    version = normalize_version(version)
    check_stage(root, stage)
    commit = version_commit(root, name, version)
    number = folder = None
    seconds = (0.0, 0.0)
    if deployment is not None:
        number = serving_version(version)
        folder, seconds = _deploy(root, name, version, stage, number, deployment)
    tags = assign_stage(root, name, version, stage)
    return Rollout(
        artifact=name,
        version=version,
        stage=stage,
        commit=commit,
        tags=tags,
        serving_version=number,
        folder=folder,
        materialize_seconds=seconds[0],
        switch_seconds=seconds[1],
        total_seconds=time.perf_counter() - start,
    )


def rollback(
    root: str | Path,
    name: str,
    stage: str,
    *,
    to: str | None = None,
    deployment: Deployment | None = None,
) -> Rollout:
    """Give ``stage`` back to an earlier version: ``to``, or the one that held it before."""
    check_stage(root, stage)
    holders = stage_holders(root, name, stage)
    if not holders:
        raise RegistryError(f"no version of {name!r} holds stage {stage!r}: nothing to roll back")
    target = normalize_version(to) if to else previous_version(root, name, stage)
    if target in holders:
        raise RegistryError(f"{name} {target} already holds stage {stage!r}")
    log.info("rolling %s %s back: %s -> %s", name, stage, holders[0], target)
    return promote(root, name, target, stage, deployment=deployment)


def _deploy(
    root: str | Path, name: str, version: str, stage: str, number: int, deployment: Deployment
) -> tuple[Path, tuple[float, float]]:
    try:
        layout.check_model_name(deployment.model)
    except ValueError as error:
        raise RegistryError(str(error)) from error
    model_dir = Path(deployment.repository) / deployment.model
    folder = model_dir / str(number)
    added = not folder.exists()
    materialized = materialize(root, name, version, folder)
    previous = layout.read_config_bytes(model_dir)
    switch_start = time.perf_counter()
    try:
        layout.pin_version(model_dir, number, label=stage)
        if deployment.server:
            wait_until_served(
                deployment.server,
                deployment.model,
                number,
                timeout=deployment.timeout,
                api_key=deployment.api_key,
            )
    except BaseException:
        layout.restore_config(model_dir, previous)
        if added:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    switched = time.perf_counter() - switch_start if deployment.server else 0.0
    return folder, (materialized.seconds, switched)


def served_versions(status: dict) -> dict[int, tuple[str, str]]:
    """``{version: (state, error)}`` from a TensorFlow Serving ``GET /v1/models/{m}`` body."""
    return {
        int(entry["version"]): (entry["state"], entry.get("status", {}).get("error_message", ""))
        for entry in status.get("model_version_status", [])
    }


def answering_version(client, model: str) -> int | None:
    """The version that answers a request naming none (Open Inference Protocol ``infer``)."""
    body = {"inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": [PROBE_TEXT]}]}
    response = client.post(f"/v2/models/{model}/infer", json=body)
    if response.status_code != 200:
        return None
    return int(response.json()["model_version"])


def wait_until_served(
    server: str,
    model: str,
    number: int,
    *,
    timeout: float,
    api_key: str | None = None,
    interval: float = 0.05,
    error_grace: float = 10.0,
) -> float:
    """Wait until the server serves only version ``number`` and answers with it.

    Returns the seconds waited.

    Raises:
        RegistryError: not so within ``timeout`` (the message has the server's last status),
            or the server reported a load error for that version for ``error_grace`` seconds.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.perf_counter()
    last = "no answer yet"
    failing_since = None  # a load error can be stale until the server's next poll
    with httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=10.0) as client:
        while time.perf_counter() - start < timeout:
            try:
                response = client.get(f"/v1/models/{model}")
                if response.status_code == 200:
                    states = served_versions(response.json())
                    last = f"versions {states}"
                    available = {v for v, (state, _) in states.items() if state == "AVAILABLE"}
                    if available == {number} and answering_version(client, model) == number:
                        return time.perf_counter() - start
                    state, error = states.get(number, ("", ""))
                    failing_since = (failing_since or time.perf_counter()) if error else None
                    if failing_since and time.perf_counter() - failing_since > error_grace:
                        raise RegistryError(
                            f"server {server} failed to load {model} version {number}: {error}"
                        )
                else:
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            time.sleep(interval)
    raise RegistryError(
        f"server {server} did not switch {model} to version {number} within {timeout:g} s "
        f"(last status: {last}); the previous configuration is restored"
    )

"""Canary and shadow promotions: start a rollout, wait for its decision, record it.

``maas models promote ARTIFACT VERSION --stage prod --canary 10`` (or ``--shadow``) does:

1. materialize VERSION as ``DIR/<model>/<N>/`` (as a plain promotion does);
2. write ``config.yaml`` serving the stage's current version (the baseline) and N side by
   side, with the ``rollout:`` section (:mod:`maas.serving.rollout`); refused while another
   rollout of the model is in progress;
3. with ``--server``, wait until the server serves both (a candidate that fails to load
   restores the previous ``config.yaml``, so prod keeps serving alone).

The server then routes, measures and decides by itself (:mod:`maas.serving.routing`): it
pins the winner in ``config.yaml`` and writes ``DIR/<model>/rollouts/<id>.json``. The
server never writes to the git project: it may run where there is none. The registry learns
of the decision from :func:`record_decisions` (``promote --wait`` runs it once the decision
is in, ``maas models record`` at any time; it is idempotent):

- a promotion moves the stage in GTO (``gto assign``), the decision as the tag's message;
- every decision, either way, is a git note on the candidate's commit
  (``refs/notes/commits``, so ``git log`` shows it), which ``maas models list`` shows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maas.registry.materialize import materialize
from maas.registry.operations import Deployment, served_versions, serving_version
from maas.registry.store import RegistryError, git
from maas.registry.tags import (
    assign_stage,
    check_stage,
    normalize_version,
    stage_holders,
    version_commit,
)
from maas.serving import layout
from maas.serving.rollout import PROMOTE, Bounds, RolloutSpec, check_share

log = logging.getLogger(__name__)

NOTE_PREFIX = "maas rollout"


@dataclass(frozen=True)
class RolloutRequest:
    """What ``promote --canary/--shadow`` asks for."""

    mode: str = "canary"
    share: float = 10.0
    sticky: str = ""
    window_requests: int = 200
    window_seconds: float = 120.0
    min_requests: int | None = None  # None: the spec's default
    bounds: Bounds = Bounds()


def start(
    root: str | Path,
    name: str,
    version: str,
    stage: str,
    deployment: Deployment,
    request: RolloutRequest,
) -> RolloutSpec:
    """Serve ``version`` beside the stage's current version under a rollout; return its spec.

    Raises:
        RegistryError: unknown version or stage, a share outside 0..100, no version serves the
            stage yet, a rollout already in progress, or (with a server) the candidate failed
            to load; nothing is changed then.
    """
    try:
        check_share(request.share)
        layout.check_model_name(deployment.model)
    except ValueError as error:
        raise RegistryError(str(error)) from error
    version = normalize_version(version)
    check_stage(root, stage)
    version_commit(root, name, version)  # an unknown version fails here
    model_dir = Path(deployment.repository) / deployment.model
    baseline = _baseline(model_dir, stage)
    candidate = serving_version(version)
    if candidate == baseline:
        raise RegistryError(f"{name} {version} already serves stage {stage!r}")
    holders = stage_holders(root, name, stage)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = {
        "id": f"{deployment.model}-{candidate}-{stamp}",
        "mode": request.mode,
        "baseline": baseline,
        "candidate": candidate,
        "share": request.share,
        "sticky": request.sticky,
        "stage": stage,
        "window": {"requests": request.window_requests, "seconds": request.window_seconds},
        "bounds": vars(request.bounds),
        "registry": {"artifact": name, "candidate": version, "baseline": ",".join(holders)},
    }
    if request.min_requests is not None:
        raw["min_requests"] = request.min_requests
    try:
        spec = RolloutSpec.parse(raw, where="--canary", versions=(baseline, candidate))
    except ValueError as error:
        raise RegistryError(str(error)) from error
    folder = model_dir / str(candidate)
    added = not folder.exists()
    previous = layout.read_config_bytes(model_dir)
    try:
        # The bytes first: a config naming a version not on disk yet would fail the rollout.
        materialize(root, name, version, folder)
        try:
            layout.start_rollout(model_dir, spec)  # refuses a rollout begun meanwhile
        except ValueError as error:
            previous = layout.read_config_bytes(model_dir)  # not ours to restore
            raise RegistryError(str(error)) from error
        if deployment.server:
            wait_until_both_served(deployment, baseline, candidate)
    except BaseException:
        layout.restore_config(model_dir, previous)
        if added:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info("rollout %s started: %s %s beside version %d", spec.id, spec.mode, version, baseline)
    return spec


def _baseline(model_dir: Path, stage: str) -> int:
    """The version serving ``stage`` now, from the model's ``config.yaml``."""
    try:
        config = layout.read_config(model_dir)
    except ValueError as error:
        raise RegistryError(f"cannot start a rollout: {error}") from error
    if config is not None and config.rollout is not None:
        raise RegistryError(
            f"a rollout of {model_dir.name} is already in progress ({config.rollout.id}); "
            "wait for its decision first"
        )
    if config is None or stage not in config.labels:
        raise RegistryError(
            f"no version of {model_dir.name} serves stage {stage!r} in {model_dir.parent}: "
            "promote one without --canary first"
        )
    return config.labels[stage]


def wait_until_both_served(deployment: Deployment, baseline: int, candidate: int) -> None:
    """Wait until the server serves both versions; ``RegistryError`` if the candidate fails
    to load or the time runs out."""
    import httpx

    headers = {"Authorization": f"Bearer {deployment.api_key}"} if deployment.api_key else {}
    deadline = time.monotonic() + deployment.timeout
    last = "no answer yet"
    with httpx.Client(base_url=deployment.server.rstrip("/"), headers=headers) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(f"/v1/models/{deployment.model}", timeout=10)
                states = served_versions(response.json()) if response.is_success else {}
                last = f"versions {states}" if states else f"HTTP {response.status_code}"
                state, error = states.get(candidate, ("", ""))
                if state == "END" and error:
                    raise RegistryError(
                        f"the server failed to load {deployment.model} version {candidate}: "
                        f"{error}; prod keeps serving version {baseline}"
                    )
                if state == "AVAILABLE" and states.get(baseline, ("",))[0] == "AVAILABLE":
                    return
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            time.sleep(0.1)
    raise RegistryError(
        f"server {deployment.server} did not serve versions {baseline} and {candidate} "
        f"within {deployment.timeout:g} s (last status: {last}); the previous configuration "
        "is restored"
    )


def wait_for_decision(model_dir: Path, rollout_id: str, *, timeout: float) -> dict[str, Any]:
    """The decision record of ``rollout_id``, once the server has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in layout.read_decisions(model_dir):
            if record.get("id") == rollout_id:
                return record
        time.sleep(0.2)
    raise RegistryError(
        f"no decision for rollout {rollout_id} within {timeout:g} s; it is still in progress "
        f"(record it later with `maas models record`)"
    )


def note_text(record: dict[str, Any]) -> str:
    """One line for the registry: who won, why, and the figures."""
    registry = record.get("registry") or {}
    figures = json.dumps(record.get("figures", {}), sort_keys=True)
    return (
        f"{NOTE_PREFIX} {registry.get('artifact', record.get('model'))} "
        f"{registry.get('candidate', record.get('candidate'))} {record.get('stage')}: "
        f"{record['outcome']} ({record['mode']}, id {record['id']}): {record['reason']}; "
        f"figures {figures}"
    )


def notes(root: str | Path, commit: str) -> list[str]:
    """The rollout lines of a commit's git note."""
    result = subprocess.run(
        ["git", "notes", "show", commit], cwd=root, capture_output=True, text=True
    )
    if result.returncode != 0:
        return []
    return [line for line in result.stdout.splitlines() if line.startswith(NOTE_PREFIX)]


def record_decisions(root: str | Path, name: str, deployment: Deployment) -> list[dict]:
    """Record in the registry every decision of the model not recorded yet; return those."""
    model_dir = Path(deployment.repository) / deployment.model
    recorded = []
    for record in layout.read_decisions(model_dir):
        registry = record.get("registry") or {}
        if registry.get("artifact") != name or "candidate" not in registry:
            continue
        commit = version_commit(root, name, registry["candidate"])
        if any(f"id {record['id']})" in line for line in notes(root, commit)):
            continue  # recorded before
        text = note_text(record)
        if record["outcome"] == PROMOTE:
            assign_stage(root, name, registry["candidate"], record["stage"], message=text)
        git(root, "notes", "append", "-m", text, commit)
        log.info("%s", text)
        recorded.append(record)
    return recorded


def latest_note(root: str | Path, name: str, version: str, commit: str) -> str:
    """The last rollout decision noted for ``name`` ``version`` (empty: none)."""
    prefix = f"{NOTE_PREFIX} {name} {version} "
    lines = [line for line in notes(root, commit) if line.startswith(prefix)]
    return lines[-1].removeprefix(prefix) if lines else ""

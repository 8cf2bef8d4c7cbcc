"""Training on a Ray cluster (``train.distribute.engine: ray``): the job layer's other engine.

stage -> job (:mod:`maas.training.job` on this machine, this module on Ray) -> worker -> fit.

- ``one_device``: every ensemble member (or the one model) is a Ray task of its own,
  spread over the nodes (``SPREAD``), with ``settings.train.ray_cpus_per_worker`` CPUs and as
  many TensorFlow threads. Each backs up every epoch under ``settings.train.ray_storage``
  (storage every node reads) and stores its weights there when done; the driver (this
  process) rebuilds the members, assembles the ensemble as the local engine does
  (:func:`maas.training.ensemble.assemble`) and exports the same artifacts.
- ``multi_worker``: MultiWorkerMirroredStrategy over Ray Train's ``TensorflowTrainer``
  workers (one per node where they fit), which sets each worker's ``TF_CONFIG``; worker 0
  stores the outcome for the driver to export.

Faults: a node lost mid-training makes Ray run its members again on the nodes left (up to
``settings.train.ray_retries`` times; Ray Train restarts the whole worker group), and each
resumes from its last epoch backup; the log names the node lost, the members it held, and
where and from which epoch they resumed. A member that fails (an error, a worker that died,
no retries left) stops the run with :class:`RayTrainingError` naming the member and its
node; nothing is exported, so ``models/classifier`` stays as it was. A cluster that cannot
hold the job is refused before anything starts (:class:`RayClusterError`), counting only the
nodes whose raylet answers (Ray's own view lags a node's death).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maas.config import (
    ConfigError,
    EnsembleMember,
    Paths,
    TrainParams,
    TrainSettings,
    to_dict,
)
from maas.training.ray_tasks import ATTEMPTS_FILE, attempts_of, multi_worker_loop, train_member

log = logging.getLogger(__name__)

_SILENT: set[str] = set()  # nodes Ray counts alive whose raylet did not answer
_RAY_WORKER = re.compile(r"\(pid=(?P<pid>\d+), ip=(?P<ip>[^)\s]+)\)")


class RayTrainingError(RuntimeError):
    """A member or worker failed on the cluster; nothing was exported."""


class RayClusterError(ConfigError):
    """The cluster cannot be reached or cannot hold the job; nothing was started."""


def cluster_address(settings: TrainSettings) -> str | None:
    """``settings.train.ray_address``, else ``RAY_ADDRESS``; None: start a local Ray."""
    return settings.ray_address.strip() or os.environ.get("RAY_ADDRESS", "").strip() or None


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast on an address nothing answers at (Ray itself would retry for minutes).

    Raises:
        RayClusterError: not ``host:port``, or no answer within ``timeout_s``.
    """
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"Ray address {address!r}: expected host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise RayClusterError(
            f"cannot reach the Ray cluster at {address} within {timeout_s:g} s ({error}); "
            "check --address / RAY_ADDRESS / settings.train.ray_address and that the head runs"
        ) from error


def connect(address: str | None) -> None:
    """Join the cluster (or start a local Ray when ``address`` is None)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
    log.info("Ray cluster: %s, %s", address or "a local Ray", describe_nodes(alive_nodes()))


def alive_nodes(probe_timeout_s: float = 1.0) -> dict[str, dict[str, Any]]:
    """Node id -> ``{"address": ..., "cpus": ...}`` of the cluster's living nodes.

    Ray declares a node dead only once its health checks have failed for a while (seconds
    to tens of seconds); until then ``ray.nodes()`` still counts it alive and a placement
    may wait on it forever. So a node counts here only if its raylet also accepts a
    connection within ``probe_timeout_s`` (a killed one refuses at once).
    """
    import ray

    alive = {}
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        if not answers(node["NodeManagerAddress"], node["NodeManagerPort"], probe_timeout_s):
            if node["NodeID"] not in _SILENT:  # once, not at every look
                _SILENT.add(node["NodeID"])
                log.info(
                    "Ray still counts node %s (%s) alive, but its raylet does not answer: %s",
                    node["NodeID"][:8],
                    node["NodeManagerAddress"],
                    "left out",
                )
            continue
        alive[node["NodeID"]] = {
            "address": node["NodeManagerAddress"],
            "cpus": int(node["Resources"].get("CPU", 0)),
        }
    return alive


def answers(host: str, port: int, timeout_s: float) -> bool:
    """Whether something accepts a TCP connection at ``host:port`` within ``timeout_s``."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def describe_nodes(nodes: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"node {i[:8]} ({n['cpus']} CPU)" for i, n in sorted(nodes.items()))


def check_capacity(
    nodes: dict[str, dict[str, Any]], *, workers: int, cpus: int, what: str, together: bool
) -> int:
    """How many of ``workers`` the cluster runs at once; refuse what it cannot hold at all.

    Args:
        what: who the workers are, for the message.
        together: all must run at once (a multi-worker group), else they may queue.

    Raises:
        RayClusterError: no node has ``cpus`` CPUs, or, ``together``, fewer slots than
            ``workers``.
    """
    slots = sum(node["cpus"] // cpus for node in nodes.values())
    if slots == 0 or (together and slots < workers):
        raise RayClusterError(
            f"the Ray cluster cannot hold {what}: {workers} worker(s) of {cpus} CPU(s) "
            f"each, {'all at once, ' if together else ''}but its nodes have "
            f"room for {slots} ({describe_nodes(nodes)}). Add nodes, or lower "
            "settings.train.ray_cpus_per_worker or train.distribute.workers"
        )
    return slots


def check_reservable(*, workers: int, cpus: int, what: str, timeout_s: float) -> None:
    """Reserve ``workers`` slots of ``cpus`` CPUs at once, then free them: a group that
    cannot start within ``timeout_s`` is an error now, not a wait without end in Ray Train
    (CPUs held by other jobs, or a node that fails as the group is placed).

    Raises:
        RayClusterError: the reservation was not granted within ``timeout_s``.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": cpus}] * workers, strategy="SPREAD")
    try:
        ready = group.wait(timeout_seconds=timeout_s)
    finally:
        remove_placement_group(group)
    if not ready:
        free = ray.available_resources().get("CPU", 0)
        raise RayClusterError(
            f"the Ray cluster could not make room for {what} within {timeout_s:g} s: "
            f"{workers} worker(s) of {cpus} CPU(s) each, all at once, with {free:g} CPU(s) "
            "free now (other work holds them, or a node failed). Try again when the "
            "cluster is free, or raise settings.train.ray_connect_timeout_s"
        )


def run_storage(settings: TrainSettings, paths: Paths, params: TrainParams) -> Path:
    """This run's folder in the shared storage (one per project and parameters)."""
    from maas.training.callbacks import fingerprint_of

    base = Path(settings.ray_storage)
    base = base if base.is_absolute() else paths.root / base
    key = fingerprint_of({"root": str(paths.root.resolve()), "train": to_dict(params)})
    return base / key[:16]


def member_name(params: TrainParams, index: int | None) -> str:
    from maas.training.ensemble import describe

    if index is None:
        return f"the {params.architecture} model"
    member: EnsembleMember = params.ensemble[index]
    return describe(index, member)


def where(storage: Path, error: BaseException | None = None) -> str:
    """The node a member last ran on: from its attempt record, else from Ray's error."""
    attempts = attempts_of(storage)
    if attempts:
        attempt = attempts[-1]
        return f"on node {attempt['node'][:8]} ({attempt['address']}, pid {attempt['pid']})"
    # Ray's message starts "ray::train_member() (pid=123, ip=10.0.0.7)" when a worker ran it.
    found = _RAY_WORKER.search(str(error)) if error is not None else None
    if found:  # the worker failed before the member started (at import, say)
        return f"on the node at {found['ip']} (pid {found['pid']}), before it started"
    return "before it started (its worker died; no node recorded)"


def error_line(error: BaseException) -> str:
    """The cause of a Ray error in one line (a task's own exception, not Ray's wrapper)."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def watch_nodes(
    known: set[str], folders: dict[int | None, Path], name: Callable[[int | None], str]
) -> set[str]:
    """Log each node lost since the last look, with the members it was training."""
    alive = set(alive_nodes())
    for node in sorted(known - alive):
        # Ray may have run a member again elsewhere before the node is declared dead.
        held = [
            name(index)
            for index, folder in folders.items()
            if any(attempt["node"] == node for attempt in attempts_of(folder))
        ]
        log.warning(
            "Ray node %s was lost while training %s: Ray runs them again on the nodes left, "
            "each from its last epoch checkpoint",
            node[:8],
            ", ".join(held) or "no member",
        )
    return alive


def report_member(name: str, outcome: dict[str, Any]) -> dict[str, Any]:
    """Log where a member trained (and resumed); its line in the summary."""
    attempts = outcome["attempts"]
    final = attempts[-1]
    if len(attempts) > 1:
        lost = ", ".join(f"{a['node'][:8]} ({a['address']})" for a in attempts[:-1])
        log.warning(
            "%s was lost on node %s and resumed from epoch %d on node %s (%s)",
            name,
            lost,
            outcome["resumed_from_epoch"],
            final["node"][:8],
            final["address"],
        )
    else:
        log.info("%s trained on node %s (%s)", name, final["node"][:8], final["address"])
    return {
        "member": name,
        "nodes": [a["node"] for a in attempts],
        "resumed_from_epoch": outcome["resumed_from_epoch"],
    }


def train_members(
    params: TrainParams, paths: Paths, settings: TrainSettings, base: Path
) -> list[dict[str, Any]]:
    """Every member (or the one model) as a Ray task, spread over the nodes; wait for all.

    Raises:
        RayClusterError: no node can hold a member.
        RayTrainingError: a member failed (its retries spent), or the time ran out.
    """
    import ray

    indices: list[int | None] = list(range(len(params.ensemble))) or [None]
    cpus = settings.ray_cpus_per_worker
    nodes = alive_nodes()
    slots = check_capacity(
        nodes, workers=len(indices), cpus=cpus, what="the members", together=False
    )
    if slots < len(indices):
        log.warning("%d members, room for %d at once: the others wait", len(indices), slots)
    folders = {index: base / f"member-{index or 0}" for index in indices}
    for folder in folders.values():  # a new run: earlier runs' attempts are not this one's
        (folder / ATTEMPTS_FILE).unlink(missing_ok=True)  # (their backups are resumed)
    task = ray.remote(
        num_cpus=cpus,
        max_retries=settings.ray_retries,  # a lost worker or node, not an error in the code
        max_calls=1,  # a fresh process per member: its own TensorFlow threads and memory
        scheduling_strategy="SPREAD",
    )(train_member)
    job = {"train": to_dict(params), "root": str(paths.root), "cpus": cpus}
    pending = {task.remote(job, index, str(folders[index])): index for index in indices}
    log.info("training %d member(s) on %s", len(indices), describe_nodes(nodes))
    deadline = time.monotonic() + settings.timeout_s
    known, lines = set(nodes), {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            known = watch_nodes(known, folders, lambda i: member_name(params, i))
            for ref in done:
                index = pending.pop(ref)
                name = member_name(params, index)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as error:
                    raise RayTrainingError(
                        f"{name} failed {where(folders[index], error)}: {error_line(error)}; "
                        "nothing was exported"
                    ) from error
                lines[index] = report_member(name, outcome)
            if pending and time.monotonic() > deadline:
                raise RayTrainingError(
                    f"the members did not finish within {settings.timeout_s} s "
                    "(settings.train.timeout_s); nothing was exported"
                )
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return [lines[index] for index in indices]


def train_multi_worker(
    params: TrainParams, paths: Paths, settings: TrainSettings, base: Path
) -> list[dict[str, Any]]:
    """``multi_worker`` through Ray Train's ``TensorflowTrainer``, one worker per slot.

    Returns no member lines (the summary's ``ray`` entry lists the members of a
    ``one_device`` run): Ray Train places and restarts the worker group itself.

    Raises:
        RayClusterError: the cluster cannot hold every worker at once.
        RayTrainingError: the worker group failed (its restarts spent).
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    workers, cpus = params.distribute.workers, settings.ray_cpus_per_worker
    nodes = alive_nodes()
    check_capacity(nodes, workers=workers, cpus=cpus, what="multi_worker", together=True)
    check_reservable(
        workers=workers, cpus=cpus, what="multi_worker", timeout_s=settings.ray_connect_timeout_s
    )
    log.info("multi_worker: %d Ray Train worker(s) on %s", workers, describe_nodes(nodes))
    trainer = TensorflowTrainer(
        multi_worker_loop,
        train_loop_config={
            "train": to_dict(params),
            "root": str(paths.root),
            "cpus": cpus,
            "storage": str(base / "multi_worker"),
        },
        scaling_config=ScalingConfig(
            num_workers=workers, resources_per_worker={"CPU": cpus}, placement_strategy="SPREAD"
        ),
        run_config=RunConfig(
            name="maas-train",
            storage_path=str(base / "ray-train"),
            failure_config=FailureConfig(max_failures=settings.ray_retries),
        ),
    )
    try:
        trainer.fit()
    except Exception as error:
        raise RayTrainingError(
            f"multi_worker training on Ray failed: {error_line(error)}; nothing was exported"
        ) from error
    return []


def run(params: TrainParams, paths: Paths, *, settings: TrainSettings) -> dict[str, Any]:
    """Train on the Ray cluster, then assemble and export here, as the local engine does.

    Raises:
        FileNotFoundError: the data stage has not run.
        RayClusterError: the cluster cannot be reached or cannot hold the job.
        RayTrainingError: training failed on the cluster; nothing was exported.
    """
    import ray

    from maas.training import ensemble, worker

    address = cluster_address(settings)
    if address is not None:
        check_reachable(address, settings.ray_connect_timeout_s)
    for needed in (paths.tokenizer, paths.split("train"), paths.split("validation")):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: run the data stage first")
    inputs = worker.read_inputs(paths)
    if params.ensemble:
        ensemble.check_members(params, inputs.tokenizer)  # before any node is busy
    base = run_storage(settings, paths, params)
    connect(address)
    started = time.perf_counter()
    try:
        if params.distribute.strategy == "multi_worker":
            lines = train_multi_worker(params, paths, settings, base)
            result = worker.load_result(params, inputs, base / "multi_worker" / "result")
        else:
            lines = train_members(params, paths, settings, base)
            results = [
                worker.load_result(
                    params.member(member), inputs, base / f"member-{index}" / "result"
                )
                for index, member in enumerate(params.ensemble)
            ]
            result = (
                ensemble.assemble(
                    params,
                    results,
                    validation=inputs.validation,
                    seconds=time.perf_counter() - started,
                    examples=len(inputs.train[0]),
                )
                if params.ensemble
                else worker.load_result(params, inputs, base / "member-0" / "result")
            )
    finally:
        ray.shutdown()
    log_curves(paths, result.history)
    replicas = params.distribute.workers if params.distribute.strategy == "multi_worker" else 1
    summary = worker.summarize(result, result.model, params, replicas=replicas)
    summary["ray"] = lines
    worker.export(result, result.model, params, paths, inputs.tokenizer, summary=summary)
    shutil.rmtree(base, ignore_errors=True)
    log.info("train (ray): %s", summary)
    return summary


def log_curves(paths: Paths, history: dict[str, list[float]]) -> None:
    """The training curves through DVCLive, as the local engine logs them."""
    from maas.training.callbacks import LiveLogger
    from maas.training.ensemble import rows_of

    logger = LiveLogger(paths.dvclive_dir)
    for epoch, row in enumerate(rows_of(history)):
        logger.on_epoch_end(epoch, row)
    logger.on_train_end()

"""What runs on the nodes of a Ray cluster: one ensemble member, or one Ray Train worker.

The Ray engine's driver (:mod:`maas.training.ray_job`) submits these; each runs in a fresh
worker process, limits TensorFlow to the CPUs Ray gave it, and trains through
:func:`maas.training.worker.train_to_storage`, which backs up every epoch to the shared
storage and stores the outcome there for the driver.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from maas.config import Paths, TrainParams, parse_section
from maas.provenance import read_json, write_json

ATTEMPTS_FILE = "attempts.json"  # each start of a member: node, address, process


def limit_threads(cpus: int) -> None:
    """As many TensorFlow threads as the CPUs Ray gave this worker (before TF starts)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cpus)
    tf.config.threading.set_inter_op_parallelism_threads(cpus)


def here() -> dict[str, Any]:
    """This worker's node id and address."""
    import ray

    context = ray.get_runtime_context()
    return {"node": context.get_node_id(), "address": ray.util.get_node_ip_address()}


def attempts_of(storage: Path) -> list[dict[str, Any]]:
    """Each start of a member so far (node, address, process), oldest first."""
    path = storage / ATTEMPTS_FILE
    return read_json(path) if path.is_file() else []


def train_member(job: dict[str, Any], index: int | None, storage: str) -> dict[str, Any]:
    """A Ray task: train one member (``index`` in ``train.ensemble``; None: the one model).

    Records this attempt, resumes from the member's backup if an earlier attempt left one,
    and stores the weights; returns where it ran and from which epoch it started.
    """
    limit_threads(job["cpus"])
    import tensorflow as tf

    from maas.training.worker import train_to_storage

    params = parse_section(TrainParams, job["train"], name="train")
    if index is not None:
        params = params.member(params.ensemble[index])
    folder = Path(storage)
    folder.mkdir(parents=True, exist_ok=True)
    attempts = attempts_of(folder)
    attempts.append({**here(), "pid": os.getpid(), "at": time.time()})
    write_json(folder / ATTEMPTS_FILE, attempts)
    result = train_to_storage(
        params,
        Paths(Path(job["root"])),
        strategy=tf.distribute.get_strategy(),
        storage=folder,
        writer=True,
    )
    return {"attempts": attempts, "resumed_from_epoch": result.initial_epoch}


def multi_worker_loop(config: dict[str, Any]) -> None:
    """Each Ray Train worker: MultiWorkerMirroredStrategy from the ``TF_CONFIG`` Ray set."""
    limit_threads(config["cpus"])
    import ray.train
    import tensorflow as tf

    for chatty in ("absl", "tensorflow"):  # a line per all-reduce and checkpoint shard
        logging.getLogger(chatty).setLevel(logging.WARNING)

    from maas.training import distributed
    from maas.training.worker import train_to_storage

    params = parse_section(TrainParams, config["train"], name="train")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rank = ray.train.get_context().get_world_rank()
    train_to_storage(
        params,
        Paths(Path(config["root"])),
        strategy=strategy,
        storage=Path(config["storage"]),
        writer=rank == 0,
    )
    distributed.barrier(strategy)  # leave together, after worker 0 stored the result

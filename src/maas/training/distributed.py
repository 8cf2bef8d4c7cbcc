"""``tf.distribute`` for maas: strategies, cluster descriptions (``TF_CONFIG``) and sharding.

The same training code runs under four strategies (``train.distribute.strategy``):

- ``one_device``: TensorFlow's default strategy, one device (the first GPU, else the CPU).
- ``mirrored``: :class:`tf.distribute.MirroredStrategy`, synchronous data parallelism over
  ``replicas`` GPUs, or over that many *logical* CPU devices when there is no GPU, so the
  path runs (and is tested) on a laptop.
- ``multi_worker``: :class:`tf.distribute.MultiWorkerMirroredStrategy`, the same across
  processes or hosts that all-reduce their gradients; every worker holds all the weights.
- ``parameter_server``: :class:`tf.distribute.ParameterServerStrategy`, asynchronous
  training: workers read and update variables held by parameter-server (ps) tasks, and the
  embedding table, by far the largest variable, is split into one shard per ps task.

The last two need a cluster, described by the ``TF_CONFIG`` environment variable that every
task of the job receives: ``{"cluster": {"worker": ["host:port", ...], ...},
"task": {"type": "worker", "index": 0}}``. :func:`parse_tf_config` checks it before anything
starts; :mod:`maas.training.launcher` generates one per task for a local job.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.config import STRATEGIES, ConfigError

LAUNCHED_STRATEGIES = ("multi_worker", "parameter_server")  # need one process per task
JOB_NAMES = ("chief", "worker", "ps")
# What one local task costs, to refuse a job this machine cannot host before starting it: a
# TensorFlow process training the classifier holds about 0.6-1.3 GB; more than four busy
# processes per core only queue for CPU time.
TASK_MEMORY_BYTES = 1 << 30
TASKS_PER_CORE = 4
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


class DistributeError(ConfigError):
    """A distribution setting or cluster description that cannot work; nothing was started."""


@dataclass(frozen=True)
class ClusterTask:
    """One task of a cluster: the whole cluster, and which task this process is."""

    cluster: Mapping[str, tuple[str, ...]]  # job name -> "host:port" of each task
    task_type: str  # chief | worker | ps
    task_index: int

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}"

    @property
    def is_chief(self) -> bool:
        """The task that writes models and reports: ``chief``, else ``worker`` 0."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    def count(self, job: str) -> int:
        return len(self.cluster.get(job, ()))

    def to_json(self) -> str:
        """The ``TF_CONFIG`` value for this task."""
        cluster = {job: list(addresses) for job, addresses in self.cluster.items()}
        task = {"type": self.task_type, "index": self.task_index}
        return json.dumps({"cluster": cluster, "task": task})


def parse_tf_config(text: str | None) -> ClusterTask:
    """Read and check a ``TF_CONFIG`` value.

    Raises:
        DistributeError: unset, not JSON, or not a valid cluster; the message says what.
    """
    if not text or not text.strip():
        raise DistributeError(
            "TF_CONFIG is not set: a distributed task needs the cluster description, e.g. "
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise DistributeError(f"TF_CONFIG is not valid JSON: {error}") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("cluster"), dict):
        raise DistributeError('TF_CONFIG: expected an object with a "cluster" mapping')
    cluster = {job: _addresses(job, value) for job, value in raw["cluster"].items()}
    if not cluster:
        raise DistributeError("TF_CONFIG: the cluster has no jobs")
    everything = [address for addresses in cluster.values() for address in addresses]
    duplicates = sorted({a for a in everything if everything.count(a) > 1})
    if duplicates:
        raise DistributeError(f"TF_CONFIG: address used by two tasks: {duplicates[0]}")
    if len(cluster.get("chief", ())) > 1:
        raise DistributeError("TF_CONFIG: at most one chief task")
    task = raw.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError('TF_CONFIG: expected "task": {"type": ..., "index": ...}')
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise DistributeError(f"TF_CONFIG: task type {task_type!r} is not a job of the cluster")
    if isinstance(index, bool) or not isinstance(index, int):
        raise DistributeError(f"TF_CONFIG: task index must be an integer, got {index!r}")
    if not 0 <= index < len(cluster[task_type]):
        raise DistributeError(
            f"TF_CONFIG: task index {index} out of range: job {task_type!r} has "
            f"{len(cluster[task_type])} task(s)"
        )
    return ClusterTask(cluster=cluster, task_type=task_type, task_index=index)


def _addresses(job: Any, value: Any) -> tuple[str, ...]:
    if job not in JOB_NAMES:
        raise DistributeError(f"TF_CONFIG: unknown job {job!r} (expected one of {JOB_NAMES})")
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise DistributeError(f"TF_CONFIG: job {job!r} must list one or more 'host:port'")
    for address in value:
        match = _ADDRESS.match(address) if isinstance(address, str) else None
        if match is None or not 1 <= int(match.group(2)) <= 65535:
            raise DistributeError(f"TF_CONFIG: job {job!r}: not a 'host:port': {address!r}")
    return tuple(value)


def check_cluster(task: ClusterTask, strategy: str) -> None:
    """Check that a cluster has the tasks a strategy needs.

    Raises:
        DistributeError: e.g. parameter-server training without ps tasks.
    """
    if strategy == "multi_worker":
        if task.count("ps"):
            raise DistributeError(
                "TF_CONFIG lists ps tasks, but strategy multi_worker has no parameter servers "
                "(use strategy parameter_server)"
            )
        if not task.count("worker") and not task.count("chief"):
            raise DistributeError("TF_CONFIG: multi_worker needs at least one worker")
    elif strategy == "parameter_server":
        for job in ("chief", "worker", "ps"):
            if not task.count(job):
                raise DistributeError(
                    f"TF_CONFIG: parameter_server needs a chief, workers and ps tasks; "
                    f"no {job!r} job"
                )
    else:
        raise DistributeError(f"strategy {strategy!r} does not run on a cluster")


def local_cluster(
    strategy: str, *, workers: int, parameter_servers: int, ports: Sequence[int]
) -> dict[str, tuple[str, ...]]:
    """The cluster of a local job on loopback ports (``ports``: one per task, in order)."""
    jobs = {"worker": workers}
    if strategy == "parameter_server":
        jobs = {"chief": 1, "worker": workers, "ps": parameter_servers}
    elif strategy != "multi_worker":
        raise DistributeError(f"strategy {strategy!r} does not run on a cluster")
    if len(ports) != sum(jobs.values()):
        raise ValueError(f"need {sum(jobs.values())} ports, got {len(ports)}")
    free = iter(ports)
    return {job: tuple(f"localhost:{next(free)}" for _ in range(n)) for job, n in jobs.items()}


def local_capacity() -> int:
    """How many training processes this machine can host at once (CPU cores and memory)."""
    cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not on Linux: trust the core count alone
        memory = cores * TASKS_PER_CORE * TASK_MEMORY_BYTES
    return max(1, min(cores * TASKS_PER_CORE, memory // TASK_MEMORY_BYTES))


def local_tasks(strategy: str, *, workers: int, parameter_servers: int) -> int:
    """Processes a local job of ``strategy`` starts."""
    if strategy == "parameter_server":
        return 1 + workers + parameter_servers
    return workers if strategy == "multi_worker" else 1


def check_local_capacity(strategy: str, *, workers: int, parameter_servers: int) -> None:
    """Refuse a local job this machine cannot host, before anything starts.

    Raises:
        DistributeError: naming the limit and what to do instead.
    """
    tasks = local_tasks(strategy, workers=workers, parameter_servers=parameter_servers)
    capacity = local_capacity()
    if tasks > capacity:
        raise DistributeError(
            f"{strategy} with {workers} worker(s)"
            + (f" and {parameter_servers} ps" if strategy == "parameter_server" else "")
            + f" needs {tasks} processes; this machine can host at most {capacity} "
            f"({os.cpu_count()} CPU cores x {TASKS_PER_CORE}, about "
            f"{TASK_MEMORY_BYTES >> 30} GiB free memory per task). Use fewer workers, or run "
            "the tasks on a cluster with `maas train --task` "
            "(see docs/how-to/distributed-training.md)"
        )


def configure_logical_cpus(count: int) -> None:
    """Split the CPU into ``count`` logical devices, for MirroredStrategy without a GPU.

    TensorFlow fixes its devices when it first runs an op, so this must come first.

    Raises:
        DistributeError: TensorFlow already runs with another number of CPU devices.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing != count:
            raise DistributeError(
                f"mirrored over {count} logical CPU devices: TensorFlow is already running "
                f"with {existing} CPU device(s), and devices are fixed at its first op. Run the "
                "training in a fresh process (`maas train --strategy mirrored`, or restart the "
                "notebook kernel before training)"
            ) from error


def make_strategy(
    strategy: str,
    *,
    replicas: int = 1,
    task: ClusterTask | None = None,
    embedding_shape: tuple[int, int] | None = None,
) -> Any:
    """The ``tf.distribute`` strategy for a ``train.distribute.strategy`` name.

    Args:
        strategy: one of :data:`STRATEGIES`.
        replicas: ``mirrored`` only: GPUs to use, or logical CPU devices without a GPU.
        task: the cluster and this task (``multi_worker`` and ``parameter_server``).
        embedding_shape: ``parameter_server`` only: ``(rows, columns)`` of the embedding
            table, which is split into one shard per ps task.

    Raises:
        DistributeError: an unknown name, or settings this machine or cluster cannot run.
    """
    import tensorflow as tf

    if strategy == "one_device":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            if replicas > len(gpus):
                raise DistributeError(f"mirrored: {replicas} replicas, only {len(gpus)} GPU(s)")
            return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(replicas)])
        if replicas > local_capacity():
            raise DistributeError(
                f"mirrored: {replicas} logical CPU devices is more than this machine can "
                f"usefully run ({local_capacity()})"
            )
        configure_logical_cpus(replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    if strategy not in LAUNCHED_STRATEGIES:
        raise DistributeError(f"unknown strategy {strategy!r} (expected one of {STRATEGIES})")
    if task is None:
        raise DistributeError(f"{strategy} needs a cluster (TF_CONFIG)")
    check_cluster(task, strategy)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({job: list(addresses) for job, addresses in task.cluster.items()}),
        task_type=task.task_type,
        task_id=task.task_index,
        rpc_layer="grpc",
    )
    if strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if embedding_shape is None:
        raise ValueError("parameter_server needs embedding_shape to shard the table")
    return tf.distribute.ParameterServerStrategy(
        resolver,
        variable_partitioner=embedding_partitioner(
            rows=embedding_shape[0], columns=embedding_shape[1], shards=task.count("ps")
        ),
    )


def barrier(strategy: Any) -> None:
    """Wait until every worker of a multi-worker strategy gets here (a one-number all-reduce).

    Workers leave together, so none exits while the chief still writes the model.
    """
    import tensorflow as tf

    @tf.function
    def all_reduce_one() -> tf.Tensor:
        value = strategy.run(lambda: tf.constant(1.0))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    all_reduce_one()


def embedding_partitioner(*, rows: int, columns: int, shards: int) -> Any:
    """A partitioner that splits the embedding table into ``shards`` and leaves the rest whole.

    TensorFlow's :class:`MinSizePartitioner` splits a variable into shards of at least
    ``min_shard_bytes``, at most ``max_shards``. With the threshold at the table's size over
    ``shards``, the table gets exactly ``shards`` shards (its optimizer slots too), and every
    variable smaller than one shard (the LSTM and output weights) stays in one piece, placed
    on the ps tasks in turn.
    """
    import tensorflow as tf

    if shards > rows:
        raise DistributeError(f"cannot split {rows} embedding rows over {shards} ps tasks")
    table_bytes = rows * columns * 4  # float32
    return tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=max(1, table_bytes // shards), max_shards=shards
    )


def is_parameter_server(strategy: Any) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def variable_layout(model: Any) -> list[dict[str, Any]]:
    """Name, shape and device of every stored variable (shards listed one by one)."""
    return [
        {"name": weight.name, "shape": list(weight.shape), "device": weight.device}
        for weight in model.weights
    ]


def full_weights(model: Any, reference: Any) -> list[np.ndarray]:
    """``model``'s weights as ``reference`` (the same architecture, unsharded) holds them.

    A sharded variable appears in ``model.weights`` as consecutive row blocks; they are
    joined back along the first axis.
    """
    parts = iter(model.get_weights())
    weights = []
    for target in reference.weights:
        shape = tuple(target.shape)
        blocks, rows = [], 0
        while rows < (shape[0] if shape else 1):
            block = next(parts)
            if block.shape[1:] != shape[1:]:
                raise ValueError(f"{target.name}: shard {block.shape} does not fit {shape}")
            blocks.append(block)
            rows += block.shape[0] if shape else 1
        weights.append(np.concatenate(blocks) if len(blocks) > 1 else blocks[0])
    if next(parts, None) is not None:
        raise ValueError("the models have different variables")
    return weights


def plain_copy(model: Any) -> Any:
    """The same model with ordinary (not mirrored, not sharded) variables and equal weights.

    Export works on this copy, so a SavedModel never depends on the strategy it was trained
    under and loads on any machine.
    """
    import tf_keras as keras

    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(full_weights(model, copy))
    return copy


def weights_digest(weights: Sequence[np.ndarray]) -> str:
    """A hash of the values, shapes and types of a list of arrays (equal weights, equal hash)."""
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()

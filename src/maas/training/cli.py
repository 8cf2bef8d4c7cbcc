"""Train the classifier, on one device, several, or several processes (tf.distribute).

Without --task this runs the train stage as `train.run` does: `one_device` and `mirrored`
train in this process; `multi_worker` and `parameter_server` start one process per task on
this machine (free loopback ports, a generated TF_CONFIG each), stream their logs, and stop
them all as soon as one fails. The chief alone writes models/classifier.

  maas train                                # strategy and sizes from params.yaml
  maas train --workers 2                    # MultiWorkerMirroredStrategy, 2 local workers
  maas train --strategy parameter_server --workers 2 --parameter-servers 2
  maas train --strategy mirrored --replicas 2
  maas train --engine ray                   # on Ray: RAY_ADDRESS's cluster, else a local Ray
  maas train --engine ray --address 10.0.0.5:6379 --workers 2   # multi_worker via Ray Train

With --engine ray an ensemble's members train in parallel, one Ray task each, spread over
the nodes; each backs up every epoch to settings.train.ray_storage (storage every node
reads) and resumes from there on another node if its node is lost. This process assembles
the ensemble and writes models/classifier as the local engine does.

With --task this process is one task of a job whose cluster TF_CONFIG describes, as on a
cluster (every host runs the same command with its own TF_CONFIG; see
docs/how-to/distributed-training.md).
An interrupted run resumes from its last finished epoch when started again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from maas.config import ENGINES, STRATEGIES, ConfigError, load_params, project_paths

log = logging.getLogger("maas.training.cli")  # also when run as __main__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--params-file", default="params.yaml", type=Path, help="parameters (default: %(default)s)"
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="overrides train.distribute.strategy (--workers alone implies multi_worker)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        help="overrides train.distribute.engine: local (this machine) or ray (a Ray cluster)",
    )
    parser.add_argument(
        "--address",
        help="engine ray: the cluster's head, host:port (overrides settings.train.ray_address; "
        "default: RAY_ADDRESS, else a local Ray)",
    )
    parser.add_argument(
        "--workers", type=int, help="multi_worker / parameter_server: worker processes"
    )
    parser.add_argument(
        "--parameter-servers", type=int, help="parameter_server: ps tasks (embedding shards)"
    )
    parser.add_argument(
        "--replicas", type=int, help="mirrored: GPUs, or logical CPU devices without a GPU"
    )
    parser.add_argument(
        "--backup-dir",
        type=Path,
        help="training backup for resuming (default: .maas/train-backup in the project; "
        "on a cluster: storage every task can read)",
    )
    group = parser.add_argument_group("one task of a distributed job (reads TF_CONFIG)")
    group.add_argument("--task", action="store_true", help="run this process's task only")
    group.add_argument(
        "--job-file", type=Path, help="job description written by the local launcher"
    )
    group.add_argument("--task-dir", type=Path, help="where this task writes its result")


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """Dotted parameter overrides from the command line.

    Raises:
        ConfigError: flags that contradict each other.
    """
    strategy = args.strategy
    if strategy is None and args.parameter_servers is not None:
        strategy = "parameter_server"
    elif strategy is None and args.workers is not None:
        strategy = "multi_worker"
    elif strategy is None and args.replicas is not None:
        strategy = "mirrored"
    if args.workers is not None and strategy not in ("multi_worker", "parameter_server"):
        raise ConfigError(f"--workers applies to multi_worker or parameter_server, not {strategy}")
    if args.parameter_servers is not None and strategy != "parameter_server":
        raise ConfigError(f"--parameter-servers applies to parameter_server, not {strategy}")
    if args.replicas is not None and strategy != "mirrored":
        raise ConfigError(f"--replicas applies to mirrored, not {strategy}")
    if args.address is not None and args.engine == "local":
        raise ConfigError("--address applies to --engine ray, not local")
    overrides: dict[str, object] = {}
    if args.engine is not None:
        overrides["train.distribute.engine"] = args.engine
    if args.address is not None:
        overrides["settings.train.ray_address"] = args.address
    if strategy is not None:
        overrides["train.distribute.strategy"] = strategy
    for flag, key in (
        ("workers", "workers"),
        ("parameter_servers", "parameter_servers"),
        ("replicas", "replicas"),
    ):
        if getattr(args, flag) is not None:
            overrides[f"train.distribute.{key}"] = getattr(args, flag)
    return overrides


def run(args: argparse.Namespace) -> int:
    from maas.training import launcher
    from maas.training.ray_job import RayTrainingError

    # TensorFlow's Python side logs every checkpoint shard and all-reduce at INFO.
    for chatty in ("absl", "tensorflow"):
        logging.getLogger(chatty).setLevel(logging.WARNING)

    try:
        if args.task:
            return run_task(args)
        params = load_params(args.params_file, overrides_from(args))
        if os.environ.get("TF_CONFIG"):
            log.warning("TF_CONFIG is set but not used: add --task to run as a task of it")
        from maas.training import stage

        summary = stage.run(
            params.train,
            project_paths(args.params_file),
            settings=params.settings.train,
            backup_dir=args.backup_dir,
        )
    except (ConfigError, FileNotFoundError) as error:  # DistributeError is a ConfigError
        log.error("%s", error)
        return 2
    except (launcher.JobError, RayTrainingError) as error:
        log.error("%s", error)
        return 1
    log.info("trained: %s", summary)
    return 0


def run_task(args: argparse.Namespace) -> int:
    """One task of a job: the cluster from TF_CONFIG, checked before TensorFlow starts."""
    from maas.training import distributed, job

    task = distributed.parse_tf_config(os.environ.get("TF_CONFIG"))
    if args.job_file is not None:
        params, paths, backup_dir = job.read_job_file(args.job_file)
    else:
        params = load_params(args.params_file, overrides_from(args)).train
        paths, backup_dir = project_paths(args.params_file), args.backup_dir
    log.info("task %s of a %s job", task.name, params.distribute.strategy)
    job.run_task(params, paths, task, backup_dir=backup_dir, task_dir=args.task_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m maas.training.cli``: what local jobs start per task (``maas train`` without
    the other sub-commands, so a task imports only what training needs)."""
    parser = argparse.ArgumentParser(prog="maas train", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""Keras callbacks of the train stage: progress, curves, throughput, and resumable backups.

:class:`TrainingBackup` makes training fault tolerant. Keras' ``BackupAndRestore`` saves the
weights, optimizer state and epoch at the end of every epoch and restores them when a killed
run starts again, so the new run goes on from the last finished epoch, not from epoch 0. It
keeps no history, so :class:`TrainingBackup` also keeps the per-epoch metrics beside the
checkpoint, so that the resumed run's curves, best epoch and DVCLive logs are whole; and it
fingerprints the run, so a backup left by a run with other parameters or data is discarded,
never resumed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tf_keras as keras

from maas.provenance import read_json, write_json

log = logging.getLogger(__name__)

HISTORY_FILE = "maas-history.json"
FINGERPRINT_FILE = "maas-run.json"


class ProgressBar(keras.callbacks.Callback):
    """One tqdm bar over the epochs, with the latest losses and accuracies beside it."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.bar = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.epochs, desc="training", unit="epoch")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.bar.n < epoch:  # resumed from a backup: those epochs are done
            self.bar.update(epoch - self.bar.n)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in (logs or {}).items()})

    def on_train_end(self, logs: dict | None = None) -> None:
        self.bar.close()


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch (for processes whose output is streamed, not drawn)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " ".join(f"{k}={float(v):.4f}" for k, v in (logs or {}).items())
        log.info("epoch %d/%d: %s", epoch + 1, self.epochs, values)


class LiveLogger(keras.callbacks.Callback):
    """Training curves through DVCLive: ``dvc plots show`` renders them.

    Args:
        directory: DVCLive's folder.
        earlier: for a resumed run, gives the metrics of the epochs before a given one, which
            are logged first so the curves are whole.
    """

    def __init__(
        self, directory: Path, earlier: Callable[[int], list[dict]] | None = None
    ) -> None:
        super().__init__()
        from dvclive import Live

        # dvcyaml=None: the curves are declared in the project's dvc.yaml, not appended.
        self.live = Live(str(directory), dvcyaml=None, save_dvc_exp=False, report=None)
        self.earlier = earlier
        self.started = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not self.started and self.earlier is not None:
            for row in self.earlier(epoch):
                self.on_epoch_end(-1, row)
        self.started = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name, value in (logs or {}).items():
            self.live.log_metric(name, float(value))
        self.live.next_step()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.live.end()


class ThroughputMeter(keras.callbacks.Callback):
    """Each epoch's training time, and a timeline of wall-clock stamps (``time.time()``):
    ``train_started`` (the first epoch began), ``first_step`` (the first step ended; not
    under ParameterServerStrategy), ``steady_started`` (the second epoch began) and
    ``train_ended``.

    Args:
        marker: a file written as soon as training is under way (a local launcher watches
            it to know that the job started): after the first step, or, where batch-level
            callbacks are not allowed (ParameterServerStrategy), when the first epoch begins.
        batch_hooks: whether batch-level callbacks are allowed.
    """

    def __init__(self, marker: Path | None = None, *, batch_hooks: bool = True) -> None:
        super().__init__()
        self.marker = marker
        self.batch_hooks = batch_hooks
        # The logs are never read: Keras need not convert them to numpy (a sync) each step.
        self._supports_tf_logs = True
        self.timeline: dict[str, float] = {}
        self.epoch_seconds: list[float] = []
        self._epoch_start = 0.0
        self._epoch_open = False

    def _implements_train_batch_hooks(self) -> bool:
        return self.batch_hooks

    def _stamp(self, event: str) -> None:
        self.timeline.setdefault(event, time.time())

    def _mark(self) -> None:
        if self.marker is not None and not self.marker.exists():
            write_json(self.marker, {"at": time.time()})

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if "first_step" not in self.timeline:
            self._stamp("first_step")
            self._mark()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._stamp("steady_started" if "train_started" in self.timeline else "train_started")
        if not self.batch_hooks:
            self._mark()
        self._epoch_start, self._epoch_open = time.perf_counter(), True

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._close_epoch()  # validation starts: the epoch's training part is over

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._close_epoch()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._stamp("train_ended")

    def _close_epoch(self) -> None:
        if self._epoch_open:
            self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
            self._epoch_open = False

    def steady_seconds_per_epoch(self) -> float | None:
        """Median training time of an epoch, leaving out the first (graph tracing)."""
        times = self.epoch_seconds[1:] or self.epoch_seconds
        return float(np.median(times)) if times else None


class TrainingBackup:
    """The backup of one training run, resumed after an interruption.

    Args:
        directory: where the state is kept; on a cluster, storage every task can read.
        fingerprint: identifies the run (parameters, data, cluster shape); a backup with
            another fingerprint is removed rather than resumed.
        writer: whether this process writes (the chief) or only reads (other workers).
    """

    def __init__(self, directory: str | Path, *, fingerprint: str, writer: bool) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.writer = writer
        self.rows: list[dict[str, float]] = []
        if writer:
            self._claim()
        history = self.directory / HISTORY_FILE
        if history.is_file():
            self.rows = read_json(history)

    def _claim(self) -> None:
        stamp = self.directory / FINGERPRINT_FILE
        if self.directory.exists():
            found = read_json(stamp).get("fingerprint") if stamp.is_file() else None
            if found == self.fingerprint:
                log.info("training backup found in %s: the run resumes from it", self.directory)
                return
            log.warning("discarding a training backup of another run in %s", self.directory)
            shutil.rmtree(self.directory)
        write_json(stamp, {"fingerprint": self.fingerprint})

    def before(self, epoch: int) -> list[dict[str, float]]:
        """Metrics of the epochs before ``epoch`` (0-based), as the backup recorded them."""
        return self.rows[:epoch]

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """The Keras callbacks that keep this backup; the history is written first, so it
        always covers every epoch of the checkpoint (and the extra one is dropped on resume).
        """
        return [
            _HistoryRecorder(self),
            keras.callbacks.BackupAndRestore(str(self.directory), delete_checkpoint=True),
        ]

    def finish(self) -> None:
        """Training completed: remove the backup so a later run starts afresh."""
        if self.writer:
            shutil.rmtree(self.directory, ignore_errors=True)


class _HistoryRecorder(keras.callbacks.Callback):
    def __init__(self, backup: TrainingBackup) -> None:
        super().__init__()
        self.backup = backup
        self.initial_epoch: int | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.initial_epoch is None:
            self.initial_epoch = epoch
            self.backup.rows = self.backup.before(epoch)
            if epoch:
                log.info("resumed from the backup after epoch %d", epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.backup.rows.append({k: float(v) for k, v in (logs or {}).items()})
        if self.backup.writer:
            write_json(self.backup.directory / HISTORY_FILE, self.backup.rows)


def merge_history(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-epoch rows of metrics to Keras' history layout (metric -> values)."""
    names = list(rows[0]) if rows else []
    return {name: [row[name] for row in rows] for name in names}


def fingerprint_of(data: object) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

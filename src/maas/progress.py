"""Progress lines on the console: what a stage is doing, and for how long it has.

The stages run inside notebook kernels under papermill, whose ``--stdout-file -`` and
``--stderr-file -`` (in ``dvc.yaml``) copy the kernel's output to the console of ``dvc repro``
as it comes. So the package only logs, one short line each: :func:`configure` sends progress
(``maas``'s INFO lines, and DEBUG when verbose) to standard output, where a notebook shows it
as plain output, and warnings and errors (every library's) to standard error, where a notebook
shows them in red. ``MAAS_VERBOSE=1`` shows every library's INFO lines as well.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from maas import quiet

FORMAT = "%(asctime)s %(message)s"
DATE_FORMAT = "%H:%M:%S"
log = logging.getLogger("maas.progress")


def configure() -> None:
    """Log maas at INFO (DEBUG when verbose), other libraries at WARNING (INFO when verbose).

    Records below WARNING go to stdout, the rest to stderr: a healthy run's progress must not
    look like a failure in JupyterLab, which shows every stderr line in a red box.
    """
    verbose = quiet.verbose()
    progress_lines = logging.StreamHandler(sys.stdout)
    progress_lines.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=FORMAT,
        datefmt=DATE_FORMAT,
        handlers=[progress_lines, problems],
        force=True,
    )
    logging.getLogger("maas").setLevel(logging.DEBUG if verbose else logging.INFO)
    # TensorFlow's Python loggers note every SavedModel asset and serialisation detail.
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    """Log ``label ...`` now and ``label: done in N s`` (or ``failed after``) at the end."""
    log.info("%s ...", label)
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        log.info("%s: failed after %.1f s", label, time.perf_counter() - started)
        raise
    log.info("%s: done in %.1f s", label, time.perf_counter() - started)


def epoch_logger(label: str, epochs: int) -> Any:
    """A Keras callback that logs one line per epoch: metrics and seconds.

    Args:
        label: what is being trained (``prune``, ``distilled``, ...), at the start of each line.
        epochs: the budget, shown as ``epoch 3/30`` (early stopping may end sooner).
    """
    import tf_keras as keras

    started: list[float] = []

    def begin(epoch: int, logs: dict | None = None) -> None:
        started[:] = [time.perf_counter()]

    def end(epoch: int, logs: dict | None = None) -> None:
        values = " ".join(f"{k}={float(v):.4f}" for k, v in (logs or {}).items())
        seconds = time.perf_counter() - started[0] if started else 0.0
        log.info("%s: epoch %d/%d %s (%.1f s)", label, epoch + 1, epochs, values, seconds)

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)

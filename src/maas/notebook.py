"""The first and last lines of every stage notebook.

A stage notebook opens with ``params, paths = notebook.setup("data", params_file, overrides)``
(logging to the console, TensorFlow's native log lines
hidden, the parameters read and shown) and ends with ``notebook.done("data")``,
so the console of ``dvc repro`` shows when each stage starts and how long it took.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from maas import config, progress, quiet, reporting
from maas.provenance import read_json

log = logging.getLogger("maas.stage")
_started: dict[str, float] = {}


def setup(
    stage: str, params_file: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[config.Params, config.Paths]:
    """Configure logging, read the parameters, show the stage's section; returns both.

    Args:
        stage: the stage's name and ``params.yaml`` section (``data``, ``train``, ...).
        params_file: the notebook's ``params_file`` parameter.
        overrides: the notebook's ``overrides`` parameter (dotted keys).
    """
    from IPython.display import Markdown, display

    progress.configure()
    quiet.filter_native_logs()
    params = config.load_params(params_file, overrides)
    paths = config.project_paths(params_file)
    _started[stage] = time.perf_counter()
    log.info("stage %s: started", stage)
    card = paths.reports_dir / "data" / "card.json"
    if stage != "data" and card.is_file():  # the data stage writes the card
        display(Markdown(f"**Corpus.** {reporting.corpus_summary(read_json(card))}"))
    section = config.to_dict(getattr(params, stage))
    display(Markdown(reporting.key_value_table(section, "parameter")))
    return params, paths


def done(stage: str) -> None:
    """Log the end of the stage and its duration since :func:`setup`."""
    started = _started.pop(stage, None)
    elapsed = f" in {time.perf_counter() - started:.1f} s" if started is not None else ""
    log.info("stage %s: done%s", stage, elapsed)

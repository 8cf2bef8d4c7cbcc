"""Fault injection for rollout tests: a version that fails, slows down or answers one class.

Only when the server's environment sets ``MAAS_FAULT_INJECTION=1`` does an artifact folder's
``faults.json`` take effect (elsewhere the file is ignored), so a test can build a bad
version from a real artifact and serve it through the real path: the repository loads it,
verifies its files (``faults.json`` is one of them, hashed in ``provenance.json``), warms it
up and batches its requests like any other. ``faults.json``::

    {"fail_on": "BOOM"}        # raise on a batch holding a text that contains this
    {"slowdown": 10}           # take this many times as long as the model does
    {"constant_class": 3}      # answer this class for every text
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FAULTS_FILE = "faults.json"
SWITCH = "MAAS_FAULT_INJECTION"


class InjectedFault(RuntimeError):
    """The failure a faulty version raises."""


class FaultyRuntime:
    """A runtime whose ``predict`` misbehaves as ``faults`` says (other attributes: as is)."""

    def __init__(self, runtime: Any, faults: dict[str, Any]) -> None:
        self._runtime = runtime
        self.faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        marker = self.faults.get("fail_on")
        if marker and any(marker in text for text in texts):
            raise InjectedFault(f"injected failure on a text containing {marker!r}")
        start = time.perf_counter()
        probabilities = self._runtime.predict(texts)
        slowdown = float(self.faults.get("slowdown", 1))
        if slowdown > 1:
            time.sleep((time.perf_counter() - start) * (slowdown - 1))
        constant = self.faults.get("constant_class")
        if constant is not None:
            probabilities = np.zeros_like(probabilities)
            probabilities[:, int(constant)] = 1.0
        return probabilities


def wrap(runtime: Any, folder: str | Path) -> Any:
    """``runtime``, made faulty when injection is switched on and the folder asks for it."""
    path = Path(folder) / FAULTS_FILE
    if os.environ.get(SWITCH) != "1" or not path.is_file():
        return runtime
    return FaultyRuntime(runtime, json.loads(path.read_text(encoding="utf-8")))

"""Defer the grammar that ``import ray`` builds and never uses, in every process it runs in.

``import ray`` imports ``jsonschema``, whose format checker imports ``rfc3987_syntax`` when
it is installed (``jsonschema[format-nongpl]``, which Jupyter needs), and that module builds
four Earley parsers when imported: 1.3 s of CPU, three quarters of ``import ray``, paid by
every Ray worker, the Serve controller, each replica and front, and the driver, on the path
from ``maas serve --engine ray`` to ready. This stands a small module in for it until the
first IRI is validated, which then loads the real one: the checks are the same, only later.

Put this folder on the ``PYTHONPATH`` of Ray's nodes (``LocalCluster`` and the Docker image
do) and Python runs this file first in every process they start; the Ray engine's driver
calls :func:`defer` before it imports Ray. Standard library only: it runs before anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

NAME = "rfc3987_syntax"


def defer() -> None:
    """Stand in for ``rfc3987_syntax`` until it is used (nothing when already imported or
    not installed)."""
    if NAME in sys.modules or importlib.util.find_spec(NAME) is None:
        return
    stand_in = types.ModuleType(NAME, "Loads rfc3987_syntax when first used.")

    def real() -> types.ModuleType:
        if sys.modules.get(NAME) is stand_in:
            del sys.modules[NAME]
        module = importlib.import_module(NAME)
        stand_in.__dict__.update(module.__dict__)  # later lookups skip this detour
        return module

    def is_valid_syntax(term: str, value: str) -> Any:  # what jsonschema imports by name
        return real().is_valid_syntax(term, value)

    def __getattr__(name: str) -> Any:  # noqa: N807  (a module's own __getattr__)
        if name.startswith("__"):  # the import system asks for __path__, repr for __file__
            raise AttributeError(name)
        return getattr(real(), name)

    stand_in.is_valid_syntax = is_valid_syntax
    stand_in.__getattr__ = __getattr__
    sys.modules[NAME] = stand_in


defer()

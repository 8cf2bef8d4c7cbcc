"""TensorFlow's C++ start-up lines, hidden unless ``MAAS_VERBOSE=1``.

TensorFlow writes its start-up notes (oneDNN, CUDA probing, ``failed call to cuInit`` on a
machine without a GPU) from C++ before its logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL``
cannot hide them: they reach file descriptor 2 of every process, and of every notebook kernel,
whatever Python does with ``sys.stderr``. :func:`install` arranges for the first
``import tensorflow`` to run with descriptor 2 pointed at ``/dev/null`` (devices included,
which is where the CUDA lines come from); Python exceptions still propagate as usual, and
everything after the import reaches stderr again.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import threading
from collections.abc import Iterator

VERBOSE_VARIABLE = "MAAS_VERBOSE"


def verbose() -> bool:
    """Whether the user asked for everything (``MAAS_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at ``/dev/null`` for the block (C and C++ writes included)."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader of ``tensorflow`` with stderr silenced, then steps aside."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            with stderr_silenced():
                self.loader.exec_module(module)
                module.config.list_physical_devices()  # CUDA is probed here, once
        finally:
            module.__loader__ = module.__spec__.loader = self.loader


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import only; never in the way again
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Hide TensorFlow's start-up lines in this process, unless verbose or already imported."""
    if verbose() or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


# Lines that native code writes straight to descriptor 2 while models are built and run:
# absl-style TensorFlow logs (``E0000 00:00:17... util.cc:131] ...``), the TFLite converter's
# and interpreter's notes.
NATIVE_NOISE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|INFO: Created TensorFlow Lite"
    rb"|fully_quantize: \d+, inference_type"
    rb")"
)
_filter: dict[str, object] = {}


def filter_native_logs() -> None:
    """From now on, drop :data:`NATIVE_NOISE` lines written to descriptor 2 (not verbose only).

    Descriptor 2 becomes a pipe; a thread copies every other line to where descriptor 2 went
    before. Meant for notebook kernels, whose Python output travels apart from descriptor 2;
    descriptor 2 is restored and the pipe drained when the process exits.
    """
    if verbose() or _filter:
        return
    read_end, write_end = os.pipe()
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(
        target=_copy_lines, args=(read_end, original), name="maas-stderr-filter", daemon=True
    )
    thread.start()
    _filter.update(original=original, thread=thread)
    atexit.register(_restore)


def _copy_lines(read_end: int, destination: int) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line + b"\n" for line in lines if not NATIVE_NOISE.match(line)]
            if kept:
                os.write(destination, b"".join(kept))
    if pending and not NATIVE_NOISE.match(pending):
        os.write(destination, pending)


def _restore() -> None:
    """Point descriptor 2 back where it went and let the thread copy what is left."""
    original = _filter.pop("original", None)
    if original is None:
        return
    os.dup2(original, 2)  # closes the pipe's last write end: the thread drains it and ends
    _filter.pop("thread").join(timeout=2)

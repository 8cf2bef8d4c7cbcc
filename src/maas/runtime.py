"""Load any exported artifact folder and run it on raw texts: SavedModel, TFLite or ONNX.

This is loading code, shared by evaluation, compression reports and the server; it never
imports training code. Every runtime tokenizes with the artifact's own ``tokenizer.json``
(the one shared tokenizer), except the SavedModel, whose graph tokenizes the same way.

An artifact folder holds ``provenance.json``, ``tokenizer.json`` and one model:
``saved_model/`` (signature ``serving_default`` on raw strings), ``model.tflite`` (token ids
in, probabilities out) or ``model.onnx`` (the same).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maas.provenance import PROVENANCE_FILE, read_json, verify_files
from maas.tokenizer import TOKENIZER_FILE, Tokenizer

log = logging.getLogger(__name__)

RUNTIME_FILES = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}


class ArtifactError(ValueError):
    """An artifact folder that cannot be served: missing, corrupt or of an unknown kind."""


class Runtime:
    """Common interface: ``predict(texts)`` -> class probabilities ``(n, classes)``."""

    kind = "base"

    def __init__(self, directory: Path, tokenizer: Tokenizer) -> None:
        self.directory = directory
        self.tokenizer = tokenizer
        self.labels = tokenizer.labels
        # Hand back each call's working memory (ONNX only; slower batches): for a one-off
        # pass over a split in a process that holds much else, not for serving.
        self.lean = False

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self._predict(list(texts))

    def _predict(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class SavedModelRuntime(Runtime):
    kind = "saved_model"

    def __init__(self, directory: Path, tokenizer: Tokenizer) -> None:
        super().__init__(directory, tokenizer)
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(directory / RUNTIME_FILES["saved_model"]))
        self._serve = self._loaded.signatures["serving_default"]

    def _predict(self, texts: list[str]) -> np.ndarray:
        outputs = self._serve(texts=self._tf.constant(texts, dtype=self._tf.string))
        return outputs["probabilities"].numpy()


class TFLiteRuntime(Runtime):
    """TFLite through ``ai_edge_litert``; batches the rows through the model's input shape."""

    kind = "tflite"

    def __init__(self, directory: Path, tokenizer: Tokenizer, num_threads: int | None = None):
        super().__init__(directory, tokenizer)
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(
            model_path=str(directory / RUNTIME_FILES["tflite"]), num_threads=num_threads
        )
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        # A model converted with a fixed batch B is fed in chunks of B rows, padded; one whose
        # batch dimension is dynamic (-1 in the shape signature) is resized to each batch.
        signature = self._input.get("shape_signature", self._input["shape"])
        self.dynamic_batch = int(signature[0]) == -1
        self._batch = int(self._input["shape"][0])
        self._lock = threading.Lock()  # an interpreter is not safe to call concurrently

    def _run(self, ids: np.ndarray) -> np.ndarray:
        scale, zero_point = self._input.get("quantization", (0.0, 0))
        if self._input["dtype"] != np.int32 and scale:
            ids = np.round(ids / scale + zero_point)
        # TFLite's fused LSTM keeps its state in variable tensors that outlive an invoke
        # (made for streaming): zero them, or each post would start from the last one's state.
        # A no-op for models without variable tensors.
        self._interpreter.reset_all_variables()
        self._interpreter.set_tensor(self._input["index"], ids.astype(self._input["dtype"]))
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output["index"])
        scale, zero_point = self._output.get("quantization", (0.0, 0))
        if out.dtype != np.float32 and scale:
            out = (out.astype(np.float32) - zero_point) * scale
        return out.astype(np.float32)

    def _resize(self, batch: int) -> None:
        """Give a dynamic-batch interpreter room for ``batch`` rows (only when it changes)."""
        if batch == self._batch:
            return
        length = int(self._input["shape"][1])
        self._interpreter.resize_tensor_input(self._input["index"], [batch, length])
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = batch

    def _predict(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer.encode(texts)
        rows = []
        with self._lock:
            if self.dynamic_batch:
                self._resize(len(ids))
                return self._run(ids)
            for start in range(0, len(ids), self._batch):
                chunk = ids[start : start + self._batch]
                padded = np.zeros((self._batch, ids.shape[1]), dtype=np.int32)
                padded[: len(chunk)] = chunk
                rows.append(self._run(padded)[: len(chunk)])
        return np.concatenate(rows, axis=0)


def onnx_run_options():
    """onnxruntime's options for a lean call: the arena hands back what the call grew it by.

    The CPU arena otherwise keeps its largest allocation for the session's lifetime: one
    batch of long texts through the wide model, whose term counts take batch x length^2,
    held 0.45 GB more (64 texts); handing it back makes such batches 1.6-2x slower.
    """
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class OnnxRuntime(Runtime):
    kind = "onnx"

    def __init__(self, directory: Path, tokenizer: Tokenizer) -> None:
        super().__init__(directory, tokenizer)
        import onnxruntime

        self._session = onnxruntime.InferenceSession(
            str(directory / RUNTIME_FILES["onnx"]), providers=["CPUExecutionProvider"]
        )
        self._input_name = self._session.get_inputs()[0].name
        self._lean_options = onnx_run_options()

    def _predict(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer.encode(texts)
        options = self._lean_options if self.lean else None
        outputs = self._session.run(None, {self._input_name: ids}, options)
        return outputs[0].astype(np.float32)


RUNTIMES: dict[str, type[Runtime]] = {
    "saved_model": SavedModelRuntime,
    "tflite": TFLiteRuntime,
    "onnx": OnnxRuntime,
}


def detect_kind(directory: str | Path) -> str:
    """Which runtime an artifact folder needs."""
    directory = Path(directory)
    kinds = [kind for kind, name in RUNTIME_FILES.items() if (directory / name).exists()]
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        raise ArtifactError(
            f"{directory}: expected exactly one of {sorted(RUNTIME_FILES.values())}, found {found}"
        )
    return kinds[0]


def load_runtime(directory: str | Path, *, verify: bool = True, lean: bool = False) -> Runtime:
    """Load an artifact folder for inference.

    Args:
        directory: the artifact folder.
        verify: check every file against the hashes in ``provenance.json`` first.
        lean: hand back each call's working memory (see :attr:`Runtime.lean`).

    Raises:
        ArtifactError: the folder is missing, incomplete, corrupt or of an unknown kind.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such artifact folder")
    if verify:
        problems = verify_files(directory)
        if problems:
            raise ArtifactError("; ".join(problems))
    kind = detect_kind(directory)
    try:
        tokenizer = Tokenizer.load(directory / TOKENIZER_FILE)
        runtime = RUNTIMES[kind](directory, tokenizer)
        runtime.lean = lean
    except ArtifactError:
        raise
    except Exception as error:  # a corrupt model file fails deep inside the runtime
        raise ArtifactError(f"{directory}: cannot load {kind} model: {error}") from error
    log.info("loaded %s model from %s", kind, directory)
    return runtime


def read_provenance(directory: str | Path) -> dict:
    return read_json(Path(directory) / PROVENANCE_FILE)

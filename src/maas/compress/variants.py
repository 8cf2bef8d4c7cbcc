"""Build each compression variant in memory, then write it as an artifact folder.

:class:`VariantBuilder` makes the variants named in ``compress.variants``; what several share
(the pruned model, the students, the QAT model) is computed once. A :class:`Variant` holds
the in-memory model, a ``reference`` that predicts from token ids without touching disk (the
other side of the round-trip check), and what the conversion did, for the provenance.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tf_keras as keras

from maas.batches import real_lengths
from maas.compress import distill, onnx_export, prune, quantize
from maas.config import CompressParams
from maas.evaluate import predict_in_length_order
from maas.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# The TFLite variants of each Keras model: variant name -> (source, quantization mode).
TFLITE_VARIANTS = {
    "float32": ("teacher", "float32"),
    "dynamic_int8": ("teacher", "dynamic_int8"),
    "float16": ("teacher", "float16"),
    "int8": ("teacher", "int8"),
    "qat_int8": ("qat", "int8"),
    "pruned_float32": ("pruned", "float32"),
    "pruned_int8": ("pruned", "int8"),
    "distilled_float32": ("distilled", "float32"),
    "distilled_int8": ("distilled", "int8"),
}
KERAS_VARIANTS = ("pruned", "distilled", "scratch")


def source_of(name: str) -> str:
    """The model a variant is made from: ``teacher`` or one of :class:`VariantBuilder`'s."""
    if name in TFLITE_VARIANTS:
        return TFLITE_VARIANTS[name][0]
    return name if name in KERAS_VARIANTS else "teacher"


@dataclass
class Inputs:
    """What every variant is made from: the teacher, the tokenizer, the encoded splits."""

    teacher: keras.Model
    tokenizer: Tokenizer
    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]


@dataclass
class Variant:
    name: str
    format: str  # tflite | saved_model | onnx
    source: keras.Model  # the Keras model it was made from (parameters, sparsity)
    reference: Callable[[np.ndarray], np.ndarray]  # in-memory probabilities from token ids
    content: bytes | None = None  # the model file (tflite, onnx); None for Keras variants
    info: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] | None = None


def keras_reference(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    return lambda ids: model.predict(ids, batch_size=256, verbose=0)


class VariantBuilder:
    """Makes variants by name; shared intermediate models are built once."""

    def __init__(self, params: CompressParams, inputs: Inputs) -> None:
        self.params = params
        self.inputs = inputs
        self.histories: dict[str, dict[str, list[float]]] = {}

    @functools.cached_property
    def representative(self) -> np.ndarray:
        ids, _ = self.inputs.train
        return quantize.representative_ids(
            ids, examples=self.params.representative_examples, seed=self.params.seed
        )

    @functools.cached_property
    def qat(self) -> keras.Model:
        model, history = quantize.quantization_aware(
            self.inputs.teacher,
            train=self.inputs.train,
            validation=self.inputs.validation,
            epochs=self.params.qat.epochs,
            learning_rate=self.params.qat.learning_rate,
            batch_size=self.params.batch_size,
            seed=self.params.seed,
        )
        self.histories["qat"] = history
        return model

    @functools.cached_property
    def pruned(self) -> keras.Model:
        settings = self.params.prune
        model, history = prune.prune(
            self.inputs.teacher,
            train=self.inputs.train,
            validation=self.inputs.validation,
            target_sparsity=settings.target_sparsity,
            layers=settings.layers,
            epochs=settings.epochs,
            ramp_epochs=settings.ramp_epochs,
            learning_rate=settings.learning_rate,
            frequency=settings.frequency,
            batch_size=self.params.batch_size,
            seed=self.params.seed,
        )
        self.histories["pruned"] = history
        return model

    @functools.cached_property
    def teacher_train_probabilities(self) -> np.ndarray:
        ids = self.inputs.train[0]
        predict = functools.partial(self.inputs.teacher.predict, verbose=0)
        return predict_in_length_order(predict, ids, real_lengths(ids).numpy())

    def _student(self, name: str, *, distilled: bool) -> keras.Model:
        settings = self.params.distill
        tokenizer = self.inputs.tokenizer
        keras.utils.set_random_seed(self.params.seed)  # both students start from the same weights
        student = distill.build_student(
            architecture=settings.student,
            vocabulary_size=tokenizer.vocabulary_size,
            sequence_length=tokenizer.sequence_length,
            n_classes=len(tokenizer.labels),
            embedding_dim=settings.embedding_dim,
            filters=settings.filters,
            train_ids=self.inputs.train[0],
        )
        self.histories[name] = distill.train_student(
            student,
            train=self.inputs.train,
            validation=self.inputs.validation,
            teacher_probabilities=self.teacher_train_probabilities if distilled else None,
            temperature=settings.temperature,
            alpha=settings.alpha,
            epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            patience=settings.patience,
            batch_size=self.params.batch_size,
            seed=self.params.seed,
        )
        return student

    @functools.cached_property
    def distilled(self) -> keras.Model:
        return self._student("distilled", distilled=True)

    @functools.cached_property
    def scratch(self) -> keras.Model:
        return self._student("scratch", distilled=False)

    def keep_only_for(self, names: Collection[str]) -> None:
        """Drop the fine-tuned models and students that no variant of ``names`` is made from.

        Each pruned or QAT ensemble holds the teacher's weights again with optimizer slots and
        masks; kept to the end, they stood under the ONNX conversion's peak (4.6 GB).
        """
        needed = {source_of(name) for name in names}
        for cached in ("qat", *KERAS_VARIANTS):
            if cached not in needed:
                self.__dict__.pop(cached, None)
        if "distilled" not in needed or "distilled" in self.__dict__:
            self.__dict__.pop("teacher_train_probabilities", None)

    def source(self, name: str) -> keras.Model:
        return self.inputs.teacher if name == "teacher" else getattr(self, name)

    def build(self, name: str) -> Variant:
        """Make one variant, in memory.

        Raises:
            ValueError: an unknown variant name.
        """
        if name in TFLITE_VARIANTS:
            source_name, mode = TFLITE_VARIANTS[name]
            source = self.source(source_name)
            converted = quantize.to_tflite(
                source, mode=mode, representative=self.representative if mode == "int8" else None
            )
            info = {"source": source_name, **converted.info}
            return Variant(name, "tflite", source, converted.predict_ids, converted.content, info)
        if name in KERAS_VARIANTS:
            model = self.source(name)
            return Variant(
                name,
                "saved_model",
                model,
                keras_reference(model),
                info={"source": name},
                history=self.histories.get(name),
            )
        if name == "onnx":
            content = onnx_export.to_onnx(self.inputs.teacher)
            info = {"source": "teacher", "opset": onnx_export.OPSET}
            info["ops"] = onnx_export.onnx_ops(content)
            return Variant(
                name,
                "onnx",
                self.inputs.teacher,
                onnx_export.onnx_predictor(content),
                content,
                info,
            )
        raise ValueError(f"unknown variant {name!r}")


MODEL_FILES = {"tflite": "model.tflite", "onnx": "model.onnx", "saved_model": "saved_model"}


def model_path(directory: Path, fmt: str) -> Path:
    """The model inside an artifact folder (a file, or the SavedModel folder)."""
    return Path(directory) / MODEL_FILES[fmt]

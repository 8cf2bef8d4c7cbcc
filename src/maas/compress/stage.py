"""The compress stage: every variant of the trained classifier, written, reloaded, measured.

For each name in ``compress.variants`` (built in the order of
:data:`maas.config.COMPRESSION_VARIANTS`): make it in memory, write it as an artifact folder
``models/compressed/<name>/`` (model, ``tokenizer.json``, ``provenance.json`` with file
hashes), reload it from disk through :func:`maas.runtime.load_runtime`, check that the
reloaded outputs match the in-memory model's, evaluate it on the test split and time it.

All inputs are checked before anything is written, and ``models/compressed`` is replaced in
one step at the end (:func:`maas.provenance.atomic_dir`): a failed run leaves the previous
folder as it was, never a half-written one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tf_keras as keras

from maas.compress import prune, report
from maas.compress.variants import Inputs, Variant, VariantBuilder, model_path
from maas.config import (
    COMPRESSION_VARIANTS,
    CompressParams,
    CompressSettings,
    Paths,
    TargetParams,
    to_dict,
)
from maas.evaluate import classification_metrics, predict_texts
from maas.provenance import (
    PROVENANCE_FILE,
    atomic_dir,
    build_provenance,
    file_hashes,
    read_json,
    write_json,
)
from maas.splits import read_split
from maas.text_stats import REFERENCE_FILE
from maas.tokenizer import TOKENIZER_FILE, Tokenizer

log = logging.getLogger(__name__)

# Reloaded from disk vs in memory: the same bytes through the same runtime give the same
# numbers; a SavedModel tokenizes in-graph and may differ in the last float bits.
ROUNDTRIP_TOLERANCE = 1e-4
# Formats whose runtimes create no TensorFlow ops: evaluated on a second thread (see run).
OFF_THREAD = ("tflite", "onnx")
# Pruned weights may keep a hair fewer zeros than the target (tfmot rounds per tensor).
SPARSITY_TOLERANCE = 0.01


class RoundTripError(RuntimeError):
    """A variant reloaded from disk does not predict what the in-memory model predicted."""


class SparsityError(RuntimeError):
    """A pruned weight tensor is less sparse than the target."""


def load_inputs(paths: Paths) -> tuple[Inputs, Any]:
    """The teacher, tokenizer and splits, checked before any work starts.

    Raises:
        FileNotFoundError: no trained teacher, or a missing split (the training split is the
            representative dataset of full-integer int8).
        ValueError: an empty training split, or a teacher trained with another tokenizer.
    """
    from maas.export import load_keras_model

    teacher_dir = paths.classifier_dir
    if not (teacher_dir / PROVENANCE_FILE).is_file():
        raise FileNotFoundError(
            f"teacher not found: {teacher_dir} has no {PROVENANCE_FILE}; "
            "run the train stage first (dvc repro train)"
        )
    tokenizer = Tokenizer.load(paths.tokenizer)
    trained_with = read_json(teacher_dir / PROVENANCE_FILE).get("tokenizer_fingerprint")
    if trained_with and trained_with != tokenizer.fingerprint():
        raise ValueError(
            f"the teacher in {teacher_dir} was trained with another tokenizer than "
            f"{paths.tokenizer}: rerun the train stage"
        )
    try:
        train = read_split(paths.split("train"))
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"representative dataset missing: {error} (int8 calibration and fine-tuning "
            "draw from the training split)"
        ) from error
    if len(train) == 0:
        raise ValueError(f"representative dataset: {paths.split('train')} holds no posts")
    validation, test = read_split(paths.split("validation")), read_split(paths.split("test"))
    teacher = load_keras_model(teacher_dir)
    inputs = Inputs(
        teacher=teacher,
        tokenizer=tokenizer,
        train=(tokenizer.encode(train.texts), train.labels),
        validation=(tokenizer.encode(validation.texts), validation.labels),
    )
    return inputs, test


def write_variant(
    variant: Variant,
    directory: Path,
    *,
    tokenizer: Tokenizer,
    params: CompressParams,
    paths: Paths,
) -> Path:
    """Write one variant as an artifact folder, atomically."""
    from maas.export import export_classifier

    record_params = {"variant": variant.name, **to_dict(params)}
    inputs = {"teacher": paths.classifier_dir / PROVENANCE_FILE, "data": paths.processed_dir}
    extra = {"variant": variant.name, "format": variant.format, "conversion": variant.info}
    if variant.format == "saved_model":
        summary = {"parameters": int(variant.source.count_params())}
        if variant.history and "val_accuracy" in variant.history:
            summary["best_val_accuracy"] = max(variant.history["val_accuracy"])
        export_classifier(
            variant.source,
            tokenizer,
            directory,
            params=record_params,
            metrics=summary,
            history=variant.history,
            inputs=inputs,
            stage="compress",
            root=paths.root,
            reference=teacher_reference(paths.classifier_dir),
        )
        update_provenance(directory, extra)
        return directory
    with atomic_dir(directory) as out:
        model_path(out, variant.format).write_bytes(variant.content)
        tokenizer.save(out / TOKENIZER_FILE)
        copy_reference(paths.classifier_dir, out)
        record = build_provenance(
            stage="compress",
            params=record_params,
            inputs=inputs,
            extra={
                **extra,
                "tokenizer_fingerprint": tokenizer.fingerprint(),
                "files": file_hashes(out),
            },
            root=paths.root,
        )
        write_json(out / PROVENANCE_FILE, record)
    return directory


def teacher_reference(teacher_dir: Path) -> dict[str, Any] | None:
    """The teacher's training statistics (a variant serves the same inputs), if it has them."""
    path = teacher_dir / REFERENCE_FILE
    return read_json(path) if path.is_file() else None


def copy_reference(teacher_dir: Path, out: Path) -> None:
    reference = teacher_reference(teacher_dir)
    if reference is not None:
        write_json(out / REFERENCE_FILE, reference)


def update_provenance(directory: Path, fields: dict[str, Any]) -> None:
    """Add fields to a folder's provenance (its file hashes do not cover provenance.json)."""
    record = read_json(directory / PROVENANCE_FILE)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(record.get(key), dict):
            record[key] = {**record[key], **value}
        else:
            record[key] = value
    write_json(directory / PROVENANCE_FILE, record)


ROUNDTRIP_BATCH = 32  # texts per call: the wide model's term counts take batch x length^2


def check_round_trip(runtime, variant: Variant, texts: list[str], tokenizer: Tokenizer) -> float:
    """Max |reloaded - in-memory| over ``texts``; :class:`RoundTripError` above tolerance."""
    reloaded = predict_texts(runtime.predict, texts, batch_size=ROUNDTRIP_BATCH)
    in_memory = predict_texts(
        lambda chunk: variant.reference(tokenizer.encode(chunk)), texts, batch_size=ROUNDTRIP_BATCH
    )
    difference = float(np.max(np.abs(reloaded - in_memory)))
    if not difference <= ROUNDTRIP_TOLERANCE:
        raise RoundTripError(
            f"{variant.name}: reloaded outputs differ from the in-memory model by {difference:.3g}"
            f" (tolerance {ROUNDTRIP_TOLERANCE})"
        )
    return difference


def evaluate(
    name: str,
    fmt: str,
    predict,
    *,
    test,
    labels,
    teacher_classes: np.ndarray | None,
    model_file: Path,
    source,
) -> dict[str, Any]:
    """Accuracy, macro-F1, agreement with the teacher, sizes and sparsity of one predictor."""
    started = time.perf_counter()
    probabilities = predict_texts(predict, test.texts)
    classes = probabilities.argmax(axis=1)
    scores = classification_metrics(test.labels, classes, labels)
    agreement = 1.0 if teacher_classes is None else float(np.mean(classes == teacher_classes))
    row = {
        "variant": name,
        "format": fmt,
        "parameters": int(source.count_params()),
        "file_bytes": report.tree_size(model_file),
        "gzip_bytes": report.gzip_size(model_file),
        "sparsity": prune.overall_sparsity(source),
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_f1"],
        "agreement_with_teacher": agreement,
        "evaluate_seconds": round(time.perf_counter() - started, 1),
        "_classes": classes,
    }
    log.info("compress: %s: accuracy %.4f, %d bytes", name, row["accuracy"], row["file_bytes"])
    return row


def verify_sparsity(model, params: CompressParams) -> dict[str, float]:
    """Per-weight sparsity of the pruned weights; raises :class:`SparsityError` if short."""
    settings = params.prune
    sparsity = prune.weight_sparsity(model)
    pruned = {n: sparsity[n] for n in prune.prunable_weight_names(model, settings.layers)}
    short = {n: s for n, s in pruned.items() if s < settings.target_sparsity - SPARSITY_TOLERANCE}
    if short:
        raise SparsityError(f"pruned weights below {settings.target_sparsity}: {short}")
    return pruned


def run(params: CompressParams, paths: Paths, *, settings: CompressSettings) -> dict[str, Any]:
    """The compress stage. Returns the report (rows, targets, sparsity, conversions).

    ``settings`` say how many posts to check and time each variant on; they change no
    variant, accuracy or size.
    """
    inputs, test = load_inputs(paths)
    builder = VariantBuilder(params, inputs)
    details: dict[str, Any] = {"conversions": {}, "round_trip_max_abs_diff": {}}
    with atomic_dir(paths.compressed_dir) as out:
        rows, predictors = teacher_rows(inputs, test, paths)
        check_texts = test.texts[: settings.check_examples]
        # TFLite and ONNX variants create no TensorFlow ops when they run, so each is evaluated
        # on the other core while the next variant is built: the seeded fine-tuning in this
        # thread stays reproducible, and the test split costs little wall time.
        with ThreadPoolExecutor(max_workers=1) as background:
            names = [n for n in COMPRESSION_VARIANTS if n in params.variants]
            for index, name in enumerate(names):
                row, predictors[name] = build_variant(
                    name, builder, out, params=params, paths=paths, test=test,
                    teacher_classes=rows[0]["_classes"], check_texts=check_texts,
                    details=details, background=background,
                )  # fmt: skip
                rows.append(row)
                builder.keep_only_for(names[index + 1 :])
                release_memory()  # a conversion's garbage, before the next one's peak
            rows = [row.result() if isinstance(row, Future) else row for row in rows]
        details["histories"] = builder.histories
        del builder  # the fine-tuned Keras models: their variants are on disk now
        keras.backend.clear_session()  # the trainings' graphs and cached kernels
        release_memory()  # before every model is loaded at once to be timed
        loaded = {
            name: predict() if isinstance(predict, Reload) else predict
            for name, predict in predictors.items()
        }
        time_rows(rows, loaded, test.texts, settings, out)
    return finish(rows, details, paths, goals=params.targets)


def release_memory() -> None:
    """Collect garbage and hand glibc's free heap pages back to the system: what the builds
    freed would otherwise stay resident under the timing's own peak."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass(frozen=True)
class Reload:
    """A written variant's predictor, loaded again only to be timed: keeping each reloaded
    model from its build to the timing at the end held every one in memory at once."""

    directory: Path

    def __call__(self) -> Any:
        from maas.runtime import load_runtime

        return load_runtime(self.directory).predict


def teacher_rows(inputs: Inputs, test, paths: Paths) -> tuple[list[dict[str, Any]], dict]:
    """The teacher's rows, the reference for accuracy and latency: through Keras
    ``model.predict``, and as the exported SavedModel a server loads."""
    from maas.runtime import load_runtime

    tokenizer, teacher = inputs.tokenizer, inputs.teacher
    keras_predict = lambda texts: teacher.predict(tokenizer.encode(texts), verbose=0)  # noqa: E731
    first = evaluate(
        "teacher_keras", "keras", keras_predict, test=test, labels=tokenizer.labels,
        teacher_classes=None, model_file=paths.classifier_dir / "model.keras", source=teacher,
    )  # fmt: skip
    served = load_runtime(paths.classifier_dir)
    second = evaluate(
        "teacher_saved_model", "saved_model", served.predict, test=test,
        labels=tokenizer.labels, teacher_classes=first["_classes"],
        model_file=paths.classifier_dir / "saved_model", source=teacher,
    )  # fmt: skip
    return [first, second], {
        "teacher_keras": keras_predict,
        "teacher_saved_model": Reload(paths.classifier_dir),
    }


def build_variant(
    name: str,
    builder: VariantBuilder,
    out: Path,
    *,
    params: CompressParams,
    paths: Paths,
    test,
    teacher_classes: np.ndarray,
    check_texts: list[str],
    details: dict[str, Any],
    background: ThreadPoolExecutor | None = None,
) -> tuple[dict[str, Any] | Future, Any]:
    """Build one variant, write it, reload it, check it against memory, evaluate it.

    Returns its row (a future of it when evaluated on ``background``: formats in
    :data:`OFF_THREAD`) and how to reload its predictor for timing; records its conversion in
    ``details``.
    """
    from maas.runtime import load_runtime

    started = time.perf_counter()
    tokenizer = builder.inputs.tokenizer
    variant = builder.build(name)
    directory = write_variant(variant, out / name, tokenizer=tokenizer, params=params, paths=paths)
    if variant.info.get("source") == "pruned":  # verified per layer before it counts
        details["pruned_sparsity"] = verify_sparsity(variant.source, params)
        update_provenance(directory, {"sparsity": details["pruned_sparsity"]})
    runtime = load_runtime(directory, lean=True)  # timed later, reloaded as served
    difference = check_round_trip(runtime, variant, check_texts, tokenizer)
    build_seconds = round(time.perf_counter() - started, 1)
    log.info(
        "compress: %s: built, written, reloaded and checked in %.1f s (max diff %.2g)",
        name, build_seconds, difference,
    )  # fmt: skip
    details["conversions"][name] = variant.info
    details["round_trip_max_abs_diff"][name] = difference

    def evaluated() -> dict[str, Any]:
        row = evaluate(
            name, variant.format, runtime.predict, test=test, labels=tokenizer.labels,
            teacher_classes=teacher_classes, model_file=model_path(directory, variant.format),
            source=variant.source,
        )  # fmt: skip
        row["round_trip_max_abs_diff"] = difference
        row["build_seconds"] = build_seconds
        return row

    if background is not None and variant.format in OFF_THREAD:
        return background.submit(evaluated), Reload(directory)
    return evaluated(), Reload(directory)


def time_rows(
    rows: list[dict[str, Any]],
    predictors: dict,
    texts: list[str],
    settings: CompressSettings,
    out: Path,
) -> None:
    """Time every row after all are built, in turns (see :func:`report.benchmark`), and
    record the headline figures in each variant's provenance."""
    log.info("compress: timing %d models in turns", len(predictors))
    timings = report.benchmark(predictors, texts, settings)
    for row in rows:
        del row["_classes"]
        row.update(timings[row["variant"]])
        log.info(
            "compress: %s: timed, p50 %.2f ms, p99 %.2f ms, %.0f texts/s", row["variant"],
            row["latency_p50_ms"], row["latency_p99_ms"], row["throughput_per_s"],
        )  # fmt: skip
        if (out / row["variant"]).is_dir():
            update_provenance(out / row["variant"], {"metrics": _headline(row)})


def _headline(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "macro_f1", "file_bytes", "gzip_bytes", "sparsity", "parameters")
    return {key: row[key] for key in keys} | {
        key: round(row[key], 4) for key in ("latency_p50_ms", "latency_p99_ms", "throughput_per_s")
    }


def finish(
    rows: list[dict[str, Any]], details: dict[str, Any], paths: Paths, *, goals: TargetParams
) -> dict[str, Any]:
    """Write the metrics and the rows (for ``dvc plots``); return the report (the notebook
    draws the figures)."""
    by_name = {row["variant"]: row for row in rows}
    targets = report.targets(by_name, goals)
    metrics = {
        "teacher": _headline(by_name["teacher_keras"]),
        "variants": {row["variant"]: _headline(row) for row in rows[1:]},
        "targets": targets,
    }
    write_json(paths.metrics_dir / "compress.json", metrics)
    write_json(paths.reports_dir / "compress" / "variants.json", rows)
    return {"rows": rows, "targets": targets, "metrics": metrics, **details}

"""Benchmark the architectures on the full corpus with the default parameters.

For each of ``bilstm``, ``cnn``, ``wide`` and the ensemble it trains the model with the train
stage's own code (``maas.training.stage.run``, ``params.yaml`` as it is but for
``train.architecture`` / ``train.ensemble``) on the full data stage output, then measures on
the test split: accuracy, macro-F1, parameters, training time (the stage's ``train_seconds``,
early stopping included), the TFLite float32 and dynamic-range int8 sizes and single-text
latency (tokenize + one TFLite call, p50 and p99 over ``--latency-texts`` posts). Beside them,
on the same split: TF-IDF + LinearSVC (the evaluate stage's baseline) and TF-IDF +
ComplementNB (its ``alpha`` chosen on the validation split). The validation accuracy is
reported too: it is what chooses the default (the test split never chooses anything).

The ensemble is ``train.ensemble`` of params.yaml, or, when that is empty, ``--ensemble``
(default: the default architecture with three seeds).

Writes reports/benchmarks/architectures.json, .md and two figures (accuracy against training
time and against single-text latency). CPU heavy (~15-30 min on 2 shared cores); the machine's
load average is recorded, since other work on it slows every figure.

    .venv/bin/python benchmarks/architectures.py
    .venv/bin/python benchmarks/architectures.py --only wide ensemble --latency-texts 100
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from maas.provenance import git_revision, write_json  # noqa: E402
from maas.reporting import markdown_table  # noqa: E402

log = logging.getLogger("benchmarks.architectures")
MODELS = ("bilstm", "cnn", "wide", "ensemble")
NB_ALPHAS = (0.03, 0.1, 0.3, 1.0)


def make_project(directory: Path, params: dict) -> Path:
    """A project with ``params`` and its data stage done (full corpus unless params say not)."""
    from maas import config, data

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    loaded = config.load_params(directory / "params.yaml")
    data.run(loaded.data, config.project_paths(directory / "params.yaml"))
    return directory


def percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {
        "latency_p50_ms": round(float(np.percentile(values, 50)), 3),
        "latency_p99_ms": round(float(np.percentile(values, 99)), 3),
    }


def single_text_latency(predict, texts: list[str]) -> dict[str, float]:
    predict(texts[:1])  # warm-up
    times = []
    for text in texts:
        start = time.perf_counter()
        predict([text])
        times.append(time.perf_counter() - start)
    return percentiles(times)


def tflite_row(model, tokenizer, mode: str, representative, texts: list[str]) -> dict:
    from maas.compress.quantize import to_tflite

    converted = to_tflite(model, mode=mode, representative=representative)
    interpreter = converted.interpreter()
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]

    def predict(batch: list[str]) -> np.ndarray:
        interpreter.reset_all_variables()
        interpreter.set_tensor(source, tokenizer.encode(batch)[:1])
        interpreter.invoke()
        return interpreter.get_tensor(target)

    return {f"tflite_{mode}_bytes": len(converted.content), "content": converted.content} | {
        f"tflite_{mode}_{k}": v for k, v in single_text_latency(predict, texts).items()
    }


def tflite_accuracy(content: bytes, ids: np.ndarray, labels: np.ndarray) -> float:
    from maas.compress.quantize import TFLiteModel

    predictions = TFLiteModel(content, "int8").predict_ids(ids).argmax(axis=1)
    return float(np.mean(predictions == labels))


def run_model(name: str, base: dict, project: Path, texts: list[str]) -> dict:
    """Train one architecture (or the ensemble) with the stage's code; measure it."""
    import tf_keras as keras

    from maas import config
    from maas.compress.quantize import representative_ids
    from maas.evaluate import classification_metrics
    from maas.export import load_keras_model
    from maas.splits import read_split
    from maas.tokenizer import Tokenizer
    from maas.training import stage as train

    params = copy.deepcopy(base)
    if name != "ensemble":
        params["train"].update(architecture=name, ensemble=[])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    loaded = config.load_params(project / "params.yaml")
    paths = config.project_paths(project / "params.yaml")
    keras.backend.clear_session()
    shutil.rmtree(paths.classifier_dir, ignore_errors=True)
    load_before = os.getloadavg()[0]
    summary = train.run(loaded.train, paths, settings=loaded.settings.train, progress=False)
    model = load_keras_model(paths.classifier_dir)
    tokenizer = Tokenizer.load(paths.tokenizer)
    test = read_split(paths.split("test"))
    test_ids = tokenizer.encode(test.texts)
    predicted = model.predict(test_ids, batch_size=256, verbose=0).argmax(axis=1)
    scores = classification_metrics(test.labels, predicted, tokenizer.labels)
    row = {
        "model": name,
        "members": [f"{m.architecture}:{m.seed}" for m in loaded.train.ensemble],
        "val_accuracy": round(summary["val_accuracy"], 4),
        "test_accuracy": round(scores["accuracy"], 4),
        "test_macro_f1": round(scores["macro_f1"], 4),
        "parameters": summary["parameters"],
        "train_seconds": summary["train_seconds"],
        "epochs_run": summary["epochs_run"],
        "load_average_at_start": round(load_before, 2),
    }
    train_ids = tokenizer.encode(read_split(paths.split("train")).texts)
    representative = representative_ids(train_ids, examples=300, seed=0)
    for mode in ("float32", "dynamic_int8"):
        measured = tflite_row(model, tokenizer, mode, representative, texts)
        content = measured.pop("content")
        row.update(measured)
        row[f"tflite_{mode}_test_accuracy"] = round(
            tflite_accuracy(content, test_ids, test.labels), 4
        )
    log.info("%s: %s", name, row)
    return row


def baseline_rows(project: Path, texts: list[str]) -> list[dict]:
    """TF-IDF + LinearSVC (the evaluate stage's) and TF-IDF + ComplementNB, same split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.naive_bayes import ComplementNB
    from sklearn.pipeline import make_pipeline

    from maas import config
    from maas.evaluate import classification_metrics, tfidf_baseline
    from maas.splits import read_split
    from maas.tokenizer import Tokenizer

    paths = config.project_paths(project / "params.yaml")
    params = config.load_params(project / "params.yaml").evaluate
    train, validation, test = (read_split(paths.split(n)) for n in ("train", "validation", "test"))
    labels = sorted(set(train.labels.tolist()))
    rows = []
    start = time.perf_counter()
    tokenizer = Tokenizer.load(paths.tokenizer)
    predicted, _ = tfidf_baseline(
        train,
        test,
        c=params.baseline_c,
        max_features=params.baseline_max_features,
        analyzer=tokenizer.tokens,
    )
    svc_seconds = time.perf_counter() - start

    def nb(alpha: float):
        return make_pipeline(TfidfVectorizer(), ComplementNB(alpha=alpha))

    # alpha by validation accuracy only
    scores = {a: nb(a).fit(train.texts, train.labels).score(validation.texts, validation.labels)
              for a in NB_ALPHAS}  # fmt: skip
    alpha = max(scores, key=scores.get)
    start = time.perf_counter()
    fitted = nb(alpha).fit(train.texts, train.labels)
    nb_seconds = time.perf_counter() - start
    from sklearn.svm import LinearSVC

    svc = make_pipeline(
        TfidfVectorizer(sublinear_tf=True, max_features=params.baseline_max_features),
        LinearSVC(C=params.baseline_c),
    ).fit(train.texts, train.labels)
    for name, model, test_pred, seconds, extra in (
        ("tfidf_linearsvc", svc, predicted, svc_seconds, {"C": params.baseline_c}),
        ("tfidf_complementnb", fitted, fitted.predict(test.texts), nb_seconds, {"alpha": alpha}),
    ):
        metrics = classification_metrics(test.labels, test_pred, labels)
        rows.append(
            {
                "model": name,
                "val_accuracy": round(float(model.score(validation.texts, validation.labels)), 4),
                "test_accuracy": round(metrics["accuracy"], 4),
                "test_macro_f1": round(metrics["macro_f1"], 4),
                "train_seconds": round(seconds, 1),
                "settings": extra,
            }
            | {f"sklearn_{k}": v for k, v in single_text_latency(model.predict, texts).items()}
        )
    return rows


def figures(rows: list[dict], out: Path) -> None:
    from matplotlib.figure import Figure

    from maas import plots

    for x_key, x_label, name in (
        ("train_seconds", "training time (s, 2 shared cores)", "accuracy_vs_training_time"),
        ("latency", "single-text latency p50 (ms)", "accuracy_vs_latency"),
    ):
        figure = Figure(figsize=(6.5, 4.2))
        axes = figure.subplots()
        for row in rows:
            x = row.get(x_key)
            if x_key == "latency":
                x = row.get(
                    "tflite_dynamic_int8_latency_p50_ms", row.get("sklearn_latency_p50_ms")
                )
            if x is None:
                continue
            baseline = row["model"].startswith("tfidf")
            axes.scatter(x, row["test_accuracy"], marker="s" if baseline else "o", s=50)
            axes.annotate(row["model"], (x, row["test_accuracy"]), textcoords="offset points",
                          xytext=(5, 4), fontsize=8)  # fmt: skip
        axes.set_xscale("log")
        axes.set_xlabel(x_label)
        axes.set_ylabel("test accuracy")
        axes.grid(alpha=0.3)
        plots.save(figure, out / f"architectures_{name}.png")


COLUMNS = ["model", "val_accuracy", "test_accuracy", "test_macro_f1", "parameters",
           "train_seconds", "tflite_float32_bytes", "tflite_dynamic_int8_bytes",
           "tflite_dynamic_int8_test_accuracy", "tflite_dynamic_int8_latency_p50_ms",
           "sklearn_latency_p50_ms"]  # fmt: skip


def write_results(rows: list[dict], base: dict, out: Path) -> None:
    result = {
        "git_revision": git_revision(ROOT),
        "cpus": os.cpu_count(),
        "data": {k: base["data"][k] for k in ("vocabulary_size", "sequence_length")},
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "architectures.json", result)
    (out / "architectures.md").write_text(markdown_table(rows, COLUMNS) + "\n")
    figures(rows, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--ensemble", nargs="+", default=None,
                        help="members architecture:seed when train.ensemble is empty")  # fmt: skip
    parser.add_argument("--latency-texts", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks")
    parser.add_argument("--docs-per-class", type=int, default=None, help="a quick smaller run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["data"]["max_documents_per_class"] = args.docs_per_class
    base["train"]["distribute"]["strategy"] = "one_device"
    base["train"]["optimizer_trials"] = []  # each architecture with its own section's optimizer
    if not base["train"]["ensemble"]:
        members = args.ensemble or [f"{base['train']['architecture']}:{s}" for s in (1, 2, 3)]
        base["train"]["ensemble"] = [
            {"architecture": m.split(":")[0], "seed": int(m.split(":")[1])} for m in members
        ]
        base["train"]["architecture"] = base["train"]["ensemble"][0]["architecture"]
    from maas.splits import read_split

    with tempfile.TemporaryDirectory(prefix="maas-architectures-") as tmp:
        project = make_project(Path(tmp) / "project", base)
        texts = read_split(project / "data" / "processed" / "test.jsonl").texts
        texts = texts[: args.latency_texts]
        rows = baseline_rows(project, texts)
        for name in args.only:
            rows.append(run_model(name, base, project, texts))
            write_results(rows, base, args.out)  # after each row: a long run keeps its rows
    print((args.out / "architectures.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

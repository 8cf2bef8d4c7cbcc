"""Metrics, the TF-IDF baseline, the evaluate stage and the figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from maas import config, evaluate, plots, reporting
from maas.splits import Split
from maas.tokenizer import split_tokens


def test_metrics_agree_with_their_definitions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, 200))
    metrics = evaluate.classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == 200 and np.trace(matrix) == np.sum(y_true == y_pred)
    assert set(metrics["per_class"]) == {"a", "b", "c"}


def test_a_class_never_predicted_scores_zero_without_warnings():
    metrics = evaluate.classification_metrics(
        np.array([0, 1, 2]), np.array([0, 0, 0]), ["a", "b", "c"]
    )
    assert metrics["per_class"]["b"]["f1-score"] == 0.0


def test_baseline_learns_a_separable_toy_task():
    words = {0: "rocket orbit launch", 1: "engine wheel brake"}
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    texts = [" ".join(rng.permutation(words[y].split())) for y in labels]
    train, test = Split(texts[:40], labels[:40]), Split(texts[40:], labels[40:])
    predictions, seconds = evaluate.tfidf_baseline(
        train, test, c=1.0, max_features=None, analyzer=split_tokens
    )
    assert np.mean(predictions == test.labels) == 1.0 and seconds >= 0


def test_baseline_reads_text_without_spaces_through_the_tokenizer():
    # scikit-learn's default token pattern sees one "word" per Chinese sentence: nothing
    # repeats between texts, so it cannot learn; characters and bigrams can.
    words = {0: ["火箭", "轨道", "发射"], 1: ["引擎", "车轮", "刹车"]}
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    texts = ["".join(rng.permutation(words[y])) + "了" for y in labels]
    train, test = Split(texts[:40], labels[:40]), Split(texts[40:], labels[40:])
    predictions, _ = evaluate.tfidf_baseline(
        train, test, c=1.0, max_features=None, analyzer=split_tokens
    )
    assert np.mean(predictions == test.labels) == 1.0


def test_paired_comparison_counts_the_texts_only_one_gets_right():
    y_true = np.zeros(1000, int)
    model = np.where(np.arange(1000) < 800, 0, 1)  # right on the first 800
    baseline = np.where((np.arange(1000) >= 100) & (np.arange(1000) < 850), 0, 1)  # 100..849
    result = evaluate.paired_comparison(y_true, model, baseline)
    assert (result["model_only_correct"], result["baseline_only_correct"]) == (100, 50)
    assert result["accuracy_difference"] == pytest.approx(0.05)
    assert result["ci95_low"] < 0.05 < result["ci95_high"]
    # 150 discordant texts split 100 / 50: McNemar's exact two-sided p (binomial, 1/2).
    from scipy.stats import binom

    assert result["mcnemar_p"] == pytest.approx(2 * binom.cdf(50, 150, 0.5))
    assert result["ci95_low"] > 0  # 50 texts in 1,000 is beyond noise
    assert "more accurate than the baseline" in reporting.describe_comparison(result)


def test_paired_comparison_of_a_few_texts_says_it_cannot_tell():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 200)
    model = np.where(rng.random(200) < 0.7, y_true, (y_true + 1) % 4)
    baseline = model.copy()
    baseline[np.flatnonzero(model == y_true)[:3]] = 9  # the baseline misses three more
    result = evaluate.paired_comparison(y_true, model, baseline)
    assert result["accuracy_difference"] == pytest.approx(3 / 200)
    assert result["ci95_low"] <= 0 < result["ci95_high"] and result["mcnemar_p"] == 0.25
    assert "cannot tell the two apart" in reporting.describe_comparison(result)
    same = evaluate.paired_comparison(y_true, model, model)
    assert same["mcnemar_p"] == 1.0 and same["ci95_low"] == same["ci95_high"] == 0.0
    with pytest.raises(ValueError, match="same non-zero number"):
        evaluate.paired_comparison(y_true, model, baseline[:-1])


def test_evaluate_stage_writes_dvc_metrics(small_project):
    params = config.load_params(small_project / "params.yaml")
    paths = config.project_paths(small_project / "params.yaml")
    report = evaluate.run(params.evaluate, paths)
    stored = json.loads((paths.metrics_dir / "evaluate.json").read_text())
    assert stored == json.loads(json.dumps(report["summary"]))
    assert stored["test_posts"] == sum(map(sum, report["model"]["confusion_matrix"]))
    paired = stored["model_vs_baseline"]
    assert paired["accuracy_difference"] == pytest.approx(stored["accuracy_gap_vs_baseline"])
    assert paired["ci95_low"] <= paired["accuracy_difference"] <= paired["ci95_high"]
    full = json.loads((paths.reports_dir / "evaluation" / "report.json").read_text())
    assert full["provenance"]["model_provenance"]["stage"] == "train"


def test_figures_render_to_png(tmp_path):
    card = {
        "classes": ["a", "b"],
        "splits": {
            name: {"class_counts": [3, 4], "tokens_median": 5, "tokens_mean": 6, "tokens_p95": 9}
            for name in ("train", "validation", "test")
        },
    }
    history = {"loss": [2, 1], "val_loss": [2.1, 1.5], "accuracy": [0.3, 0.6],
               "val_accuracy": [0.3, 0.5]}  # fmt: skip
    report = {"a": {"f1-score": 0.5}, "b": {"f1-score": 0.9}}
    figures = {
        "card": plots.data_card(card),
        "curves": plots.training_curves(history, best_epoch=2),
        "confusion": plots.confusion_matrix([[3, 1], [0, 4]], ["a", "b"]),
        "f1": plots.per_class_f1({"model": report, "baseline": report}),
    }
    for name, figure in figures.items():
        path = plots.save(figure, tmp_path / f"{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_tables():
    table = reporting.markdown_table([{"a": 1, "b": 0.123456}, {"a": 2}])
    assert table.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 0.1235 |", "| 2 |  |"]
    assert reporting.markdown_table([]) == "_(no rows)_"


def test_every_figure_displays_as_png_in_ipython_without_pyplot():
    from IPython.core.interactiveshell import InteractiveShell

    formatter = InteractiveShell.instance().display_formatter
    rows = [
        {"variant": "teacher_keras", "gzip_bytes": 9e5, "latency_p50_ms": 90.0, "accuracy": 0.6},
        {"variant": "int8", "gzip_bytes": 2e5, "latency_p50_ms": 1.2, "accuracy": 0.59},
    ]
    latency = [{"model": "classifier", "v1_p50_ms": 3.0, "v1_p99_ms": 9.0, "runtime": "tflite"}]
    table = [{"experiment": "a", "m": 0.5}, {"experiment": "b", "m": 0.7}]
    figures = [
        plots.confusion_matrix([[3, 1], [0, 4]], ["a", "b"]),
        plots.accuracy_vs_size(rows),
        plots.accuracy_vs_latency(rows),
        plots.serving_latency(latency),
        plots.experiments(table, ["m"]),
    ]
    for figure in figures:
        data, _ = formatter.format(figure)
        assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_texts_batches_similar_lengths_and_keeps_the_order():
    rng = np.random.default_rng(0)
    texts = ["x" * int(n) for n in rng.integers(0, 500, 1000)]
    batches = []

    def predict(chunk):
        batches.append([len(text) for text in chunk])
        return np.array([[len(text), 1.0] for text in chunk])

    probabilities = evaluate.predict_texts(predict, texts, batch_size=100)
    assert probabilities[:, 0].tolist() == [len(text) for text in texts]
    assert [len(batch) for batch in batches] == [100] * 10
    # Sorted by length: each batch spans a tenth of the range, not all of it.
    assert all(max(batch) - min(batch) < 120 for batch in batches)


def test_prediction_batches_are_bounded_in_items_and_characters():
    bounds = evaluate.batch_bounds(np.array([1, 2, 3, 10, 10, 50]), 2, 15)
    assert bounds == [(0, 2), (2, 4), (4, 5), (5, 6)]  # 3 + 10 fit in 15; 10 + 50 do not
    assert evaluate.batch_bounds(np.array([1, 1, 1]), 2, None) == [(0, 2), (2, 3)]
    texts = ["a" * n for n in (5, 1, 30, 2)]
    seen = []
    probabilities = evaluate.predict_texts(
        lambda batch: seen.append(len(batch)) or np.array([[len(t), 0.0] for t in batch]),
        texts, batch_size=3, max_chars=10,
    )  # fmt: skip
    assert probabilities[:, 0].tolist() == [5, 1, 30, 2] and seen == [3, 1]

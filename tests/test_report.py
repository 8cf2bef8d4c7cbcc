"""The report page, built from whatever stages have run (the full pipeline: test_pipeline_e2e)."""

from __future__ import annotations

import base64
import json
import re
import sys

from maas import plots, report


def write_data_stage(root):
    card = {
        "classes": ["a", "b"],
        "splits": {
            name: {"posts": 7, "class_counts": [3, 4], "tokens_median": 5, "tokens_mean": 6,
                   "tokens_p95": 9}
            for name in ("train", "validation", "test")
        },
    }  # fmt: skip
    (root / "reports" / "data").mkdir(parents=True)
    (root / "reports" / "data" / "card.json").write_text(json.dumps(card))
    return plots.save(plots.data_card(card), root / "reports" / "figures" / "data_card.png")


def test_a_project_with_no_results_gets_a_page_that_says_what_to_run(tmp_path):
    page = report.build(tmp_path).read_text()
    assert "Built from: nothing yet" in page
    for stage in ("data", "train", "evaluate", "compress", "serve"):
        assert f"run `dvc repro {stage}`" in page
    assert "<img" not in page


def test_the_page_holds_what_exists_embedded_and_names_what_is_missing(tmp_path):
    figure = write_data_stage(tmp_path)
    page = report.build(tmp_path).read_text()
    assert "Built from: Data." in page and "Missing: Training, " in page
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert [base64.b64decode(data) for data in embedded] == [figure.read_bytes()]
    assert "<td>train</td>" in page and "run `dvc repro data`" not in page
    twin = (tmp_path / "reports" / "README.md").read_text()
    assert "![data_card](figures/data_card.png)" in twin and "run `dvc repro train`" in twin


def test_the_command_prints_the_path_where_there_is_no_display(tmp_path, monkeypatch, capsys):
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    report.main(["--root", str(tmp_path), "--open"])
    assert capsys.readouterr().out.strip() == str(tmp_path.resolve() / "reports" / "index.html")


def test_the_evaluate_section_says_whether_the_test_split_tells_model_and_baseline_apart(
    tmp_path,
):
    metrics = tmp_path / "reports" / "metrics"
    metrics.mkdir(parents=True)
    paired = {"accuracy_difference": -0.0083, "ci95_low": -0.025, "ci95_high": 0.009,
              "model_only_correct": 40, "baseline_only_correct": 50, "mcnemar_p": 0.3}  # fmt: skip
    (metrics / "evaluate.json").write_text(json.dumps({
        "test_posts": 1205, "model": {"accuracy": 0.73}, "baseline": {"accuracy": 0.74},
        "model_vs_baseline": paired,
    }))  # fmt: skip
    page = report.build(tmp_path).read_text()
    assert "Model minus baseline: -0.83 points" in page
    assert "-2.50 to +0.90" in page and "cannot tell the two apart" in page

"""Your own corpus: table files and class folders through the data stage, and every way bad
data stops it (named file, row and column; nothing written)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import small_params_dict, write_project
from corpus_fixtures import CLASSES, chinese_texts, write_class_folders, write_csv

from maas import config, data, splits
from maas.sources import DataError
from maas.tokenizer import Tokenizer

ROWS = chinese_texts(per_class=30)


def own_project(tmp_path, source="data/raw/corpus.csv", **data_overrides):
    raw = small_params_dict()
    raw["data"].update(
        source=source, categories=None, remove=[], max_documents_per_class=None, **data_overrides
    )
    root = write_project(tmp_path, raw)
    return root, config.project_paths(root / "params.yaml")


def run_stage(root, paths):
    return data.run(config.load_params(root / "params.yaml").data, paths)


def test_csv_in_chinese_is_split_stratified_and_names_its_classes(tmp_path):
    root, paths = own_project(tmp_path)
    write_csv(paths.raw_dir / "corpus.csv", ROWS)
    card = run_stage(root, paths)
    tokenizer = Tokenizer.load(paths.tokenizer)
    assert tokenizer.labels == ("体育", "科技", "财经")  # from the data, sorted
    assert card["title"] == "corpus.csv" and card["classes"] == list(tokenizer.labels)
    parts = splits.read_splits(paths)
    assert len(parts["test"]) == pytest.approx(0.2 * len(ROWS), abs=3)
    assert sum(len(s) for s in parts.values()) == len(ROWS)
    assert set(np.unique(parts["test"].labels)) == {0, 1, 2}
    assert card["scripts"]["Han"] > 0.6 and "Latin" in card["scripts"]
    assert "足球" in tokenizer.vocabulary and card["splits"]["test"]["oov_rate"] < 0.5
    assert json.loads((paths.processed_dir / "provenance.json").read_text())["raw_sha256"]


def test_split_column_and_integer_labels_decide(tmp_path):
    rows = [(text, {"体育": 10, "财经": 2, "科技": 1}[label]) for text, label in ROWS]
    split = ["test" if i % 5 == 0 else "validation" if i % 5 == 1 else "train" for i in range(90)]
    root, paths = own_project(tmp_path, source="data/raw/corpus.tsv")
    path = paths.raw_dir / "corpus.tsv"
    path.parent.mkdir(parents=True)
    lines = [
        "text\tlabel\tsplit",
        *(f"{t}\t{y}\t{s}" for (t, y), s in zip(rows, split, strict=True)),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_stage(root, paths)
    assert Tokenizer.load(paths.tokenizer).labels == ("1", "2", "10")  # numeric order
    parts = splits.read_splits(paths)
    assert [len(parts[name]) for name in ("train", "validation", "test")] == [54, 18, 18]


def test_jsonl_parquet_and_class_folders_load_the_same_corpus(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(ROWS, columns=["body", "topic"])
    cards = {}
    for name in ("corpus.jsonl", "corpus.parquet", "folders"):
        root, paths = own_project(
            tmp_path / name, source=f"data/raw/{name}", text_column="body", label_column="topic"
        )
        target = paths.raw_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("jsonl"):
            frame.to_json(target, orient="records", lines=True, force_ascii=False)
        elif name.endswith("parquet"):
            frame.to_parquet(target)
        else:
            write_class_folders(target, ROWS)
        cards[name] = run_stage(root, paths)
    assert len({json.dumps(card["splits"]) for card in cards.values()}) == 1


BAD_CASES = {
    "missing file": (None, "data/raw/corpus.csv not found"),
    "unknown format": ("corpus.xlsx", "unknown format '.xlsx'"),
    "missing column": ("text,topic\nabc,x\n", "no column 'label'"),
    "empty text": ("text,label\nabc,x\n  ,y\n", "row 2, column 'text': empty text"),
    "missing label": ("text,label\nabc,x\ndef,\n", "row 2, column 'label': missing label"),
    "one class": ("text,label\nabc,x\ndef,x\nghi,x\n", "only one class ('x')"),
    "class too small": (
        "text,label\n" + "".join(f"t{i},big\n" for i in range(9)) + "u,small\nv,small\n",
        "class 'small' has 2 texts",
    ),
    "bad split value": (
        "text,label,split\nabc,x,train\ndef,y,dev\n",
        "row 2, column 'split': 'dev'",
    ),
    "unseen test label": (
        "text,label,split\na b,x,train\nc d,y,train\ne f,x,train\ng h,y,train\ni j,z,test\n",
        "test labels never seen in training: ['z']",
    ),
    "undecodable bytes": (b"text,label\nabc,x\nd\xffe,y\n", "row 2, column 'text': bytes that"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_stops_the_stage_naming_where_and_writes_nothing(tmp_path, case):
    content, message = BAD_CASES[case]
    name = content if case == "unknown format" else "corpus.csv"
    root, paths = own_project(tmp_path, source=f"data/raw/{name}")
    paths.raw_dir.mkdir(parents=True)
    if isinstance(content, bytes):
        (paths.raw_dir / name).write_bytes(content)
    elif content is not None:
        (paths.raw_dir / name).write_text("x" if case == "unknown format" else content)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        run_stage(root, paths)
    if content is not None and case not in ("one class", "class too small", "unseen test label"):
        assert f"data/raw/{name}" in str(err.value)  # the file is named
    assert not paths.processed_dir.exists() and not paths.reports_dir.joinpath("data").exists()


def test_failure_keeps_the_previous_outputs(tmp_path):
    root, paths = own_project(tmp_path)
    write_csv(paths.raw_dir / "corpus.csv", ROWS)
    run_stage(root, paths)
    before = {p: p.read_bytes() for p in paths.processed_dir.iterdir()}
    write_csv(paths.raw_dir / "corpus.csv", [*ROWS, ("", "体育")])
    with pytest.raises(DataError, match=f"row {len(ROWS) + 1}, column 'text': empty text"):
        run_stage(root, paths)
    assert {p: p.read_bytes() for p in paths.processed_dir.iterdir()} == before


def test_undecodable_bytes_can_be_replaced(tmp_path):
    root, paths = own_project(tmp_path, encoding_errors="replace")
    write_csv(paths.raw_dir / "corpus.csv", ROWS)
    path = paths.raw_dir / "corpus.csv"
    path.write_bytes(path.read_bytes().replace("足球".encode(), b"\xff\xfe", 1))
    card = run_stage(root, paths)
    assert card["replaced_undecodable_rows"] == 1


def test_duplicates_shared_by_train_and_test_are_counted(tmp_path, caplog):
    root, paths = own_project(tmp_path)
    write_csv(paths.raw_dir / "corpus.csv", ROWS + ROWS[:30])  # 30 texts twice
    card = run_stage(root, paths)
    shared = card["duplicates"]["test_in_train"]
    assert shared > 0 and "also appear in training" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"categories": ["a", "b"]}, "data.categories: must be null for data.source"),
        ({"remove": ["headers"]}, r"data.remove: must be \[\] for data.source"),
        ({"source": "/tmp/corpus.csv"}, "data.source: must be '20newsgroups' or a path under"),
        ({"source": "data/raw/../../x.csv"}, "data.source: must be"),
        ({"encoding_errors": "ignore"}, "data.encoding_errors: expected one of"),
    ],
)
def test_bad_parameters_are_clear(tmp_path, overrides, message):
    root, _ = own_project(tmp_path)
    with pytest.raises(config.ConfigError, match=message):
        config.load_params(root / "params.yaml", {f"data.{k}": v for k, v in overrides.items()})


def test_a_class_folder_corpus_trains_and_serves_its_own_class_names(tmp_path):
    from fastapi.testclient import TestClient
    from serving_support import write_repository

    from maas.serving.app import ServerConfig, create_app
    from maas.training import stage

    root, paths = own_project(tmp_path / "p", source="data/raw/news")
    write_class_folders(paths.raw_dir / "news", chinese_texts(per_class=40, seed=3))
    params = config.load_params(
        root / "params.yaml",
        {"train.architecture": "wide", "train.ensemble": [], "train.wide.epochs": 6},
    )
    data.run(params.data, paths)
    stage.run(params.train, paths, settings=params.settings.train, progress=False)
    repository = write_repository(tmp_path / "repo", {"news": {1: paths.classifier_dir}})
    app = create_app(ServerConfig(model_repository=repository, poll_interval_s=0))
    with TestClient(app) as client:
        answer = client.post(
            "/predict", json={"text": "央行宣布利率下调，股票市场和银行基金上涨。"}
        )
        assert answer.status_code == 200 and answer.json()["label"] == "财经"
        assert set(answer.json()["probabilities"]) == set(CLASSES)

"""Your own corpus end to end, as the README's "Your own data" goes: a Chinese CSV under
data/raw/, `dvc add`, `dvc repro` through evaluation, a served prediction that names the
corpus's own class; then a second version of the corpus, and `dvc checkout` of the first
commit bringing back the first corpus with the model trained on it.

The corpus is written without spaces between words, so this also shows it is learned: the
ASCII-only tokenizer of earlier versions saw only the Latin words every class shares.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from corpus_fixtures import CLASSES, chinese_texts, write_csv
from serving_support import running_server
from test_pipeline_e2e import BIN, copy_repo, run

from maas.tokenizer import Tokenizer

pytestmark = pytest.mark.slow
CORPUS = "data/raw/news.csv"


def git(repo, *args):
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = copy_repo(tmp_path_factory.mktemp("own"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(source=CORPUS, categories=None, remove=[], max_documents_per_class=None)
    params["train"].update(architecture="wide", ensemble=[])
    params["train"]["optimizer_trials"] = [{"optimizer": "adagrad", "learning_rate": 1.0}]
    params["train"]["wide"].update(bigram_buckets=0, embedding_dim=16, epochs=8, batch_size=16)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_csv(root / CORPUS, chinese_texts(per_class=60, seed=1))
    run([BIN / "dvc", "add", CORPUS], root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "corpus v1")
    run([BIN / "dvc", "repro", "evaluate"], root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "model v1")
    return root


def test_a_corpus_without_spaces_is_learned_far_above_the_majority(repo):
    evaluation = json.loads((repo / "reports" / "metrics" / "evaluate.json").read_text())
    card = json.loads((repo / "reports" / "data" / "card.json").read_text())
    counts = card["splits"]["test"]["class_counts"]
    majority = max(counts) / sum(counts)
    assert evaluation["model"]["accuracy"] >= 0.9 > majority + 0.5
    # The baseline reads the same tokens (characters and bigrams) and learns it too.
    assert evaluation["baseline"]["accuracy"] >= 0.9
    assert card["title"] == "news.csv" and card["scripts"]["Han"] > 0.6
    # The default's optimizer trials ran first (the notebook shows them), and the model was
    # trained with the one the notebook marks as chosen.
    record = json.loads((repo / "models" / "classifier" / "provenance.json").read_text())
    assert record["params"]["optimizer_trials"]
    rows = trial_rows(repo / "reports" / "notebooks" / "02-train.ipynb")
    assert len(rows) == 1 + len(record["params"]["optimizer_trials"])
    chosen = [row for row in rows if row["chosen"] == "True"]
    assert len(chosen) == 1
    assert record["params"]["wide"]["optimizer"] == chosen[0]["optimizer"]


def trial_rows(notebook) -> list[dict]:
    """The rows of the executed train notebook's table of optimizer trials."""
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("data", {}).get("text/markdown", []))
            if text.startswith("**Optimizer trials**"):
                lines = [cells(line) for line in text.splitlines() if line.startswith("|")]
                return [dict(zip(lines[0], line, strict=True)) for line in lines[2:]]
    raise AssertionError(f"{notebook}: no table of optimizer trials")


def cells(line: str) -> list[str]:
    """The cells of one markdown table row."""
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_served_prediction_names_the_corpus_class(repo, tmp_path):
    repository = tmp_path / "repository"
    (repository / "news").mkdir(parents=True)
    subprocess.run(
        ["cp", "-r", str(repo / "models" / "classifier"), str(repository / "news" / "1")],
        check=True,
    )
    args = ["--model-repository", str(repository)]
    with running_server(args, tmp_path / "server.log") as server, server.client() as client:
        text = "今天的足球比赛非常精彩，球队在主场进球，教练表示满意。"
        answer = client.post("/predict", json={"text": text}).json()
        assert answer["label"] == "体育", answer
        assert set(answer["probabilities"]) == set(CLASSES)
        metadata = client.get("/v1/models/news/metadata").json()
        assert "体育" in json.dumps(metadata, ensure_ascii=False)


def test_a_new_corpus_version_reruns_and_checkout_restores_the_old_one(repo):
    v1_corpus = (repo / CORPUS).read_bytes()
    v1_model = Tokenizer.load(repo / "models" / "classifier" / "tokenizer.json")
    rows = chinese_texts(per_class=60, seed=1)
    rows += [(f"新电影明星演唱会音乐专辑票房第{i}名。", "娱乐") for i in range(60)]
    write_csv(repo / CORPUS, rows)
    status = run([BIN / "dvc", "status"], repo).stdout
    assert "modified:" in status and "data/raw" in status  # DVC sees the corpus changed
    run([BIN / "dvc", "add", CORPUS], repo)
    repro = run([BIN / "dvc", "repro", "train"], repo).stdout
    assert "Running stage 'data'" in repro and "Running stage 'train'" in repro
    v2_model = Tokenizer.load(repo / "models" / "classifier" / "tokenizer.json")
    assert set(v2_model.labels) == {*CLASSES, "娱乐"}
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "corpus and model v2")

    # Only the corpus, data and train stages ran here: the later stages have nothing cached.
    checkout = [BIN / "dvc", "checkout", "--force", f"{CORPUS}.dvc", "data", "train"]
    git(repo, "checkout", "-q", "HEAD~1")
    run(checkout, repo)
    assert (repo / CORPUS).read_bytes() == v1_corpus
    restored = Tokenizer.load(repo / "models" / "classifier" / "tokenizer.json")
    assert restored == v1_model and set(restored.labels) == set(CLASSES)
    git(repo, "checkout", "-q", "-")
    run(checkout, repo)
    assert Tokenizer.load(repo / "models" / "classifier" / "tokenizer.json") == v2_model


def test_the_ascii_rule_of_earlier_versions_could_not_learn_it():
    # The same texts through the old rule: only the Latin words shared by every class remain.
    texts = [text for text, _ in chinese_texts(per_class=20, seed=1)]
    ascii_rule = Tokenizer(("", "[UNK]"), 8, ("a", "b"), rule="ascii")
    vocabulary = {token for text in texts for token in ascii_rule.tokens(text)}
    assert vocabulary <= {"news", "2024", "ai", "report", "ok", "v2"}
    assert sys.modules["maas.tokenizer"].split_tokens(texts[0])  # the new rule reads Han


def test_the_your_data_notebook_shows_the_corpus_before_training(repo, tmp_path):
    import nbformat

    executed = tmp_path / "07.ipynb"
    run(
        [BIN / "papermill", "notebooks/07-your-data.ipynb", executed, "--cwd", "notebooks",
         "-p", "source", CORPUS, "--no-progress-bar", "--log-level", "WARNING"],
        repo,
    )  # fmt: skip
    notebook = nbformat.read(executed, as_version=4)
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "\n".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "news.csv: " in shown and "体育" in shown and "Han" in shown
    assert "TF-IDF + LinearSVC" in shown and "majority class" in shown
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the data card figure

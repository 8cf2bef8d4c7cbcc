"""The wide model against linear models on a corpus's **validation** split, in memory.

Where the default model trails the evaluate stage's baseline (``benchmarks/corpora.py``),
this says why, without touching the test split: the corpus is loaded and split as the data
stage does (``maas.data.prepare``, nothing written), then on the same tokens

- TF-IDF + LinearSVC at several ``C`` (the evaluate stage's baseline is ``C=0.5``);
- multinomial logistic regression on the same features (a linear model with the wide
  model's loss, trained to convergence);
- the wide model with ``train.wide`` overrides, one seed each, and its validation accuracy
  after every epoch (early stopping off: ``--epochs`` runs all of them).

    .venv/bin/python benchmarks/small_corpora.py ../shared/data/corpora/debian-ja.csv \\
        --variant '{}' --variant '{"learning_rate": 0.02}' --epochs 16

Writes reports/benchmarks/small-corpora.json and small-corpora.md and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from maas.config import Paths, load_params  # noqa: E402
from maas.data import prepare  # noqa: E402
from maas.provenance import git_revision, write_json  # noqa: E402
from maas.reporting import markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "benchmarks"


def linear_rows(train, validation, analyzer) -> list[dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    vectorizer = TfidfVectorizer(sublinear_tf=True, analyzer=analyzer)
    x_train, x_val = vectorizer.fit_transform(train.texts), vectorizer.transform(validation.texts)
    rows = []
    models = [(f"LinearSVC C={c}", LinearSVC(C=c)) for c in (0.1, 0.5, 2.0)]
    models += [(f"logistic C={c}", LogisticRegression(C=c, max_iter=3000)) for c in (5, 20, 100)]
    for name, model in models:
        start = time.perf_counter()
        predicted = model.fit(x_train, train.labels).predict(x_val)
        seconds = round(time.perf_counter() - start, 1)
        accuracy = round(float((predicted == validation.labels).mean()), 4)
        rows.append({"model": name, "val_accuracy": accuracy, "best_epoch": "", "by_epoch": "",
                     "seconds": seconds})  # fmt: skip
    return rows


def wide_row(params, tokenizer, train, validation, variant: dict, epochs: int) -> dict:
    from maas.training.fit import fit

    wide = dataclasses.replace(params.train.wide, epochs=epochs, **variant)
    single = dataclasses.replace(
        params.train, architecture="wide", ensemble=(), wide=wide, early_stopping_patience=epochs
    )
    data = [(tokenizer.encode(s.texts, trim=True), s.labels) for s in (train, validation)]
    result = fit(single, tokenizer=tokenizer, train=data[0], validation=data[1])
    by_epoch = [round(a, 3) for a in result.history["val_accuracy"]]
    best = int(np.argmax(by_epoch))
    return {"model": f"wide {json.dumps(variant)}", "val_accuracy": by_epoch[best],
            "best_epoch": best + 1, "by_epoch": " ".join(map(str, by_epoch)),
            "seconds": round(result.seconds, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path, help="a corpus file or class folder")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="JSON",
        help="train.wide overrides for one run, e.g. '{\"dropout\": 0.5}'",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=12, help="epochs of each wide run")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    data_params = dataclasses.replace(params.data, categories=None, remove=())
    prepared = prepare(data_params, Paths(ROOT), source=args.corpus.resolve())
    train, validation = prepared.splits["train"], prepared.splits["validation"]
    rows = linear_rows(train, validation, prepared.tokenizer.tokens)
    for variant in [json.loads(v) for v in args.variant] or [{}]:
        rows.append(wide_row(params, prepared.tokenizer, train, validation, variant, args.epochs))
        print(rows[-1], flush=True)
    record = {"corpus": args.corpus.name, "train": len(train), "validation": len(validation),
              "classes": len(prepared.tokenizer.labels), "rows": rows,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "revision": git_revision(ROOT)}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "small-corpora.json", record)
    text = (
        f"# The wide model against linear models on validation ({record['corpus']})\n\n"
        f"{record['train']} training and {record['validation']} validation texts, "
        f"{record['classes']} classes; {record['machine']}, {record['revision']}. "
        "Validation only: the test split chooses nothing. The wide runs have no early "
        "stopping; `best_epoch` is the epoch of the best validation accuracy.\n\n"
        f"{markdown_table(rows)}\n"
    )
    (OUT / "small-corpora.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the default pipeline on your corpora: accuracy beside the baseline, time, memory.

For each corpus file (or class folder), a fresh project (this checkout's tracked files, in a
temporary folder beside it) gets the corpus under data/raw/, ``data.source`` pointing at it,
and runs ``dvc repro evaluate`` (data, train, evaluate) with every other parameter at its
default. Each stage's seconds and peak memory (the resident set of its whole process tree)
are measured. ``--synthetic N`` adds a generated corpus of N short texts (the memory target:
500,000 texts through data, train and evaluate under 4 GB).

    .venv/bin/python benchmarks/corpora.py ../shared/data/corpora/debian-ja.csv
    .venv/bin/python benchmarks/corpora.py --synthetic 500000
    .venv/bin/python benchmarks/corpora.py FILE --set train.ensemble=[]   # any override

Writes reports/benchmarks/corpora.json and corpora.md and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from stage_monitor import run_monitored

from maas.provenance import git_revision, write_json
from maas.reporting import markdown_table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "benchmarks"
TARGET_PEAK_GB = 4.0
BIN = Path(sys.executable).parent


def synthetic_corpus(path: Path, texts: int, *, classes: int = 10, seed: int = 0) -> Path:
    """``texts`` short texts (6 to 24 words) in ``classes`` classes, written in chunks.

    Words follow a Zipf law over a 20,000-word vocabulary; each class draws a third of its
    words from 300 words of its own, so the classes can be told apart, but not trivially.
    """
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(20_000)])
    zipf = 1.0 / np.arange(1, len(vocabulary) + 1)
    zipf /= zipf.sum()
    topics = rng.choice(len(vocabulary), size=(classes, 300), replace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for start in range(0, texts, 50_000):
            count = min(50_000, texts - start)
            labels = rng.integers(0, classes, count)
            lengths = rng.integers(6, 25, count)
            common = rng.choice(len(vocabulary), size=(count, 24), p=zipf)
            own = topics[labels[:, None], rng.integers(0, 300, (count, 24))]
            pick_own = rng.random((count, 24)) < 1 / 3
            words = np.where(pick_own, own, common)
            for row in range(count):
                text = " ".join(vocabulary[words[row, : lengths[row]]])
                writer.writerow([text, f"topic-{labels[row]}"])
    return path


def project_copy(target: Path) -> Path:
    """This checkout's tracked files in a new git repository (as a fresh clone has them)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=target, check=True)
    return target


def run_corpus(corpus: Path, overrides: list[str], workdir: Path) -> dict:
    project = project_copy(workdir / corpus.stem)
    raw = project / "data" / "raw" / corpus.name
    if corpus.is_dir():
        shutil.copytree(corpus, raw)
    else:
        shutil.copy2(corpus, raw)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(source=f"data/raw/{corpus.name}", categories=None, remove=[])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([BIN / "dvc", "add", "-q", raw], cwd=project, env=env, check=True)
    command = [BIN / "dvc", "exp", "run", *(f for o in overrides for f in ("-S", o)), "evaluate"]
    if not overrides:
        command = [BIN / "dvc", "repro", "evaluate"]
    log = workdir / f"{corpus.stem}.log"
    measured = run_monitored(command, cwd=project, env=env, log=log)
    if measured["exit_code"]:
        raise SystemExit(f"{corpus}: the pipeline failed:\n{log.read_text()[-3000:]}")
    evaluation = json.loads((project / "reports" / "metrics" / "evaluate.json").read_text())
    data = json.loads((project / "reports" / "metrics" / "data.json").read_text())
    return {
        "corpus": corpus.name,
        "overrides": list(overrides),
        "texts": sum(data[f"{s}_posts"] for s in ("train", "validation", "test")),
        "classes": data.get("classes"),
        "model": evaluation["model"],
        "baseline": evaluation["baseline"],
        "model_vs_baseline": evaluation.get("model_vs_baseline"),
        **measured,
    }


def run_key(result: dict) -> tuple:
    """A corpus under one set of overrides: a later run of the same replaces it."""
    return result["corpus"], tuple(result.get("overrides", []))


def table_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        stages = r["stages"]
        rows.append({
            "corpus": r["corpus"], "parameters": " ".join(r.get("overrides", [])) or "defaults",
            "texts": r["texts"], "classes": r["classes"],
            "accuracy": round(r["model"]["accuracy"], 4),
            "macro_f1": round(r["model"]["macro_f1"], 4),
            "baseline accuracy": round(r["baseline"]["accuracy"], 4),
            "baseline macro_f1": round(r["baseline"]["macro_f1"], 4),
            "model >= baseline": r["model"]["accuracy"] >= r["baseline"]["accuracy"],
            **paired_columns(r.get("model_vs_baseline")),
            **{f"{s} s": stages.get(s, {}).get("seconds") for s in ("data", "train", "evaluate")},
            "peak GB": r["peak_gb"],
            **{f"{s} GB": stages.get(s, {}).get("peak_gb") for s in ("data", "train", "evaluate")},
        })  # fmt: skip
    return rows


def paired_columns(comparison: dict | None) -> dict:
    """The difference in points with its 95 % interval, and McNemar's p (blank: not run)."""
    if not comparison:
        return {"difference, 95 % interval (points)": "", "McNemar p": ""}
    low, mid, high = (
        100 * comparison[k] for k in ("ci95_low", "accuracy_difference", "ci95_high")
    )
    return {"difference, 95 % interval (points)": f"{mid:+.2f} [{low:+.2f}, {high:+.2f}]",
            "McNemar p": round(comparison["mcnemar_p"], 3)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpora", nargs="*", type=Path, help="corpus files or class folders")
    parser.add_argument("--synthetic", type=int, metavar="N", help="add N generated texts")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter override for every corpus (dvc exp run -S)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the projects afterwards")
    args = parser.parse_args()
    missing = [str(c) for c in args.corpora if not c.exists()]
    if missing or not (args.corpora or args.synthetic):
        parser.error(f"not found: {missing}" if missing else "name a corpus or --synthetic N")
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".bench-corpora-", dir=ROOT.parent))
    try:
        corpora = [c.resolve() for c in args.corpora]
        if args.synthetic:
            name = f"synthetic-{args.synthetic}.csv"
            corpora.append(synthetic_corpus(workdir / "generated" / name, args.synthetic))
        results = [run_corpus(corpus, args.set, workdir) for corpus in corpora]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "git_revision": git_revision(ROOT),
        "overrides": args.set,
        "target_peak_gb": TARGET_PEAK_GB,
        "results": results,
    }
    previous = OUT / "corpora.json"
    if previous.is_file():  # keep the corpora of earlier runs that this one did not repeat
        earlier = json.loads(previous.read_text()).get("results", [])
        runs = {run_key(r) for r in results}
        record["results"] = [r for r in earlier if run_key(r) not in runs] + results
    write_json(previous, record)
    text = (
        f"# The default pipeline on other corpora ({record['machine']}, "
        f"{record['git_revision']})\n\n"
        "`dvc repro evaluate` (data, train, evaluate) on each corpus, every parameter at its "
        "default but the row's `parameters` (`dvc exp run -S`). Accuracy and macro-F1 "
        "on the test split, beside the evaluate stage's TF-IDF + LinearSVC baseline over the "
        "same tokens, with the paired comparison of the two on the same test texts (a "
        "bootstrap interval of the difference, McNemar's exact test). Seconds per stage; "
        "peak memory is the resident set of the stage's whole process tree (target: under "
        f"{TARGET_PEAK_GB} GB). The machine is shared: compare rows of one run.\n\n"
        f"{markdown_table(table_rows(record['results']))}\n"
    )
    (OUT / "corpora.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

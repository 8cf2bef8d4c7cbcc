"""The report page: every stage's results on one self-contained page, and its Markdown twin.

:func:`build` reads what the stages wrote under ``reports/`` (metrics, tables, figures) and the
registry's versions, and writes ``reports/index.html`` (figures embedded as base64: the file
alone is the whole page) and ``reports/README.md`` (figures linked, for a git host). A stage
that has not run yet gets a section that says so and names the command that builds it, so the
page can be built at any point of the pipeline. ``python -m maas.report`` (the DVC stage
``report``, ``make report``) builds both and prints the page's path.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maas import progress, reporting
from maas.config import Paths
from maas.provenance import PROVENANCE_FILE

log = logging.getLogger(__name__)

HTML_FILE = "index.html"
MARKDOWN_FILE = "README.md"


@dataclass
class Section:
    """One stage's part of the page: tables (rows), figures (paths), or what is missing."""

    stage: str
    title: str
    text: str = ""
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    missing: str = ""


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(stage: str, title: str, what: Path, paths: Paths) -> Section:
    return Section(
        stage, title, missing=f"{what.relative_to(paths.root)} not found: run `dvc repro {stage}`."
    )


def data_section(paths: Paths) -> Section:
    card = _json(paths.reports_dir / "data" / "card.json")
    if card is None:
        return _missing("data", "Data", paths.reports_dir / "data" / "card.json", paths)
    rows = [
        {"split": name, **{k: v for k, v in split.items() if k != "class_counts"}}
        for name, split in card["splits"].items()
    ]
    return Section("data", "Data", reporting.corpus_summary(card), [("Texts per split", rows)])


def train_section(paths: Paths) -> Section:
    metrics = _json(paths.dvclive_dir / "metrics.json")
    if metrics is None:
        return _missing("train", "Training", paths.dvclive_dir / "metrics.json", paths)
    rows = [{"metric": k, "last epoch": v} for k, v in metrics.items()]
    tables = [("Last epoch (DVCLive)", rows)]
    model = _json(paths.classifier_dir / PROVENANCE_FILE) or {}
    found = model.get("metrics", {})
    summary = {k: v for k, v in found.items() if not isinstance(v, dict | list)}
    if summary:
        tables.insert(
            0, ("The exported model", [{"result": k, "value": v} for k, v in summary.items()])
        )
    if found.get("members"):
        tables.insert(1, ("Ensemble members", found["members"]))
    return Section("train", "Training", "", tables)


def evaluate_section(paths: Paths) -> Section:
    metrics = _json(paths.metrics_dir / "evaluate.json")
    if metrics is None:
        return _missing("evaluate", "Model against the baseline", paths.metrics_dir, paths)
    rows = [
        {"model": name, **{k: v for k, v in metrics[name].items() if not isinstance(v, dict)}}
        for name in ("model", "baseline")
        if name in metrics
    ]
    text = f"Test split: {metrics.get('test_posts', '?')} posts."
    if "model_vs_baseline" in metrics:
        text += " " + reporting.describe_comparison(metrics["model_vs_baseline"])
    return Section("evaluate", "Model against the baseline", text, [("Test split", rows)])


COMPRESS_COLUMNS = (
    "variant", "format", "parameters", "gzip_bytes", "sparsity", "accuracy", "macro_f1",
    "latency_p50_ms", "latency_p99_ms", "throughput_per_s",
)  # fmt: skip


def compress_section(paths: Paths) -> Section:
    variants = paths.reports_dir / "compress" / "variants.json"
    rows = _json(variants)
    if rows is None:
        return _missing("compress", "Compression", variants, paths)
    table = [{key: row.get(key, "") for key in COMPRESS_COLUMNS} for row in rows]
    metrics = _json(paths.metrics_dir / "compress.json") or {}
    targets = [
        {"target": name, **{k: v for k, v in values.items()}}
        for name, values in metrics.get("targets", {}).items()
    ]
    return Section(
        "compress",
        "Compression",
        "Every timing starts from raw text on this machine's CPU; compare rows of one run.",
        [("Trade-off", table), ("Targets", targets)],
    )


def serve_section(paths: Paths) -> Section:
    metrics = _json(paths.metrics_dir / "serve.json")
    if metrics is None:
        return _missing("serve", "Serving", paths.metrics_dir / "serve.json", paths)
    text = (
        f"Server ready after {metrics.get('startup_s')} s; every protocol gave the same "
        f"labels: {metrics.get('all_protocols_agree')}."
    )
    return Section(
        "serve", "Serving", text, [("Latency per model and protocol", metrics["latency"])]
    )


def registry_section(root: Path) -> Section:
    """Registered versions and stages of every artifact (GTO tags), if any."""
    title = "Registered versions"
    try:
        from maas.registry import store, tags

        rows = [
            {"artifact": name, "version": v.version, "commit": v.commit[:12],
             "created": v.created_at, "stages": ", ".join(v.stages)}
            for name in store.declared_artifacts(root)
            for v in tags.list_versions(root, name, metrics=False)
        ]  # fmt: skip
    except Exception as error:  # no git repository, no GTO tags: the page is still useful
        log.info("report: no registry read (%s)", error)
        return Section("registry", title, missing=f"no registry here ({error}).")
    if not rows:
        return Section("registry", title, missing="no version registered: `maas models register`.")
    return Section("registry", title, "", [("Versions (GTO tags)", rows)])


# Each stage's figures, in the order the page shows them.
FIGURES = {
    "data": ["data_card.png"],
    "train": ["training_curves.png"],
    "evaluate": ["confusion_matrix.png", "per_class_f1.png"],
    "compress": ["compress_accuracy_vs_size.png", "compress_accuracy_vs_latency.png"],
    "serve": ["serve_latency.png"],
}
SECTIONS: list[Callable[[Paths], Section]] = [
    data_section, train_section, evaluate_section, compress_section, serve_section,
]  # fmt: skip


def collect(root: Path) -> list[Section]:
    """Every section of the page, from what exists under ``root / "reports"``."""
    paths = Paths(root)
    sections = []
    for make in SECTIONS:
        section = make(paths)
        if not section.missing:
            figures = [paths.figures_dir / name for name in FIGURES.get(section.stage, [])]
            section.figures = [path for path in figures if path.is_file()]
        sections.append(section)
    sections.append(registry_section(root))
    return sections


def _html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p><em>(no rows)</em></p>"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    cells = (
        "".join(f"<td>{html.escape(reporting.cell(row.get(c, '')))}</td>" for c in columns)
        for row in rows
    )
    body = "".join(f"<tr>{row}</tr>" for row in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
img{max-width:100%;display:block;margin:1em 0}.missing{color:#a33}"""


def render_html(sections: Sequence[Section], subject: str = "") -> str:
    """The page, figures embedded as base64 PNG; ``subject``: the corpus, for the title."""
    built = [s.title for s in sections if not s.missing]
    missing = [s.title for s in sections if s.missing]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>maas: results</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(_heading(subject))}</h1>",
        f"<p>Built from: {html.escape(', '.join(built) or 'nothing yet')}. "
        f"Missing: {html.escape(', '.join(missing) or 'nothing')}.</p>",
    ]
    for section in sections:
        parts.append(f"<h2 id='{section.stage}'>{html.escape(section.title)}</h2>")
        if section.missing:
            parts.append(f"<p class='missing'>Missing: {html.escape(section.missing)}</p>")
            continue
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        for caption, rows in section.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>{_html_table(rows)}")
        for path in section.figures:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f"<img alt='{path.stem}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _heading(subject: str) -> str:
    return f"maas: results of the pipeline on {subject}" if subject else "maas: results"


def render_markdown(sections: Sequence[Section], reports: Path, subject: str = "") -> str:
    """The same page in Markdown, figures linked relative to ``reports/``."""
    lines = [f"# {_heading(subject)}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.missing:
            lines += [f"**Missing:** {section.missing}", ""]
            continue
        if section.text:
            lines += [section.text, ""]
        for caption, rows in section.tables:
            lines += [f"### {caption}", "", reporting.markdown_table(rows), ""]
        for path in section.figures:
            lines += [f"![{path.stem}]({path.relative_to(reports).as_posix()})", ""]
    return "\n".join(lines)


def build(root: str | Path = ".") -> Path:
    """Write ``reports/index.html`` and ``reports/README.md``; returns the page's path."""
    root = Path(root).resolve()
    reports = Paths(root).reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    sections = collect(root)
    subject = (_json(reports / "data" / "card.json") or {}).get("title", "")
    page = reports / HTML_FILE
    page.write_text(render_html(sections, subject))
    (reports / MARKDOWN_FILE).write_text(render_markdown(sections, reports, subject))
    missing = [s.stage for s in sections if s.missing]
    log.info("report: %s written; missing: %s", page, ", ".join(missing) or "nothing")
    return page


def open_page(page: Path) -> bool:
    """Open the page in a browser where there is a display; returns whether it was opened."""
    import os
    import webbrowser

    has_display = sys.platform in ("darwin", "win32") or any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY")
    )
    return has_display and webbrowser.open(page.as_uri())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build reports/index.html from every stage.")
    parser.add_argument("--root", default=".", help="project folder (default: here)")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=progress.FORMAT, datefmt=progress.DATE_FORMAT)
    page = build(args.root)
    if args.open and not open_page(page):
        log.info("report: no display to open a browser on; the page is %s", page)
    sys.stdout.write(f"{page}\n")


if __name__ == "__main__":
    main()

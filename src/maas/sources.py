"""Where a corpus comes from: 20 Newsgroups, one table file, or a folder per class.

Every loader returns a :class:`RawCorpus`: the texts, their labels as the source wrote them
(strings or integers), and, where the source decides it, each text's split. Bad data raises
:class:`DataError` with a message that names the file, the row and the column, before any
text reaches the tokenizer.

* ``20newsgroups``: scikit-learn's :func:`~sklearn.datasets.fetch_20newsgroups`, cached in
  ``$SCIKIT_LEARN_DATA``; the standard "bydate" train and test sets.
* A table: CSV, TSV, JSON Lines (``.jsonl``, ``.ndjson``) or Parquet, read in chunks of
  :data:`CHUNK_ROWS` rows so that a large file is never held twice. Rows are numbered from 1,
  the header not counted.
* A folder: one sub-folder per class holding text files (scikit-learn's ``load_files``
  layout), or ``train/`` and ``test/`` folders of that layout.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maas.config import NEWSGROUPS

NEWSGROUPS_CACHE_FILE = "20news-bydate_py3.pkz"
TABLE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
SPLIT_VALUES = ("train", "validation", "test")
CHUNK_ROWS = 50_000
# Bytes that are not UTF-8 survive reading as lone surrogates (errors="surrogateescape"), so
# that the row holding them can be named; pandas keeps them in object columns only.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class DataError(ValueError):
    """The corpus cannot be used as it is; the message says where and why."""


class CorpusUnavailableError(RuntimeError):
    """The 20 Newsgroups corpus is neither cached nor downloadable."""


@dataclass
class RawCorpus:
    """Texts and labels as loaded, before any split is drawn."""

    texts: list[str] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)  # str or int, as the source wrote them
    splits: list[str] | None = None  # per text, where the source decides the split
    title: str = ""  # what the corpus is called in headings and reports
    names: tuple[str, ...] | None = None  # class names, where the source fixes their order
    location: str = ""  # the file or folder, for messages
    replaced_rows: int = 0  # rows whose undecodable bytes were replaced (encoding_errors)


def describe_source(source: str) -> str:
    """The corpus's title: ``20 Newsgroups`` or the file or folder name."""
    return "20 Newsgroups" if source == NEWSGROUPS else Path(source).name


def newsgroups_help(data_home: str | os.PathLike | None) -> str:
    where = data_home or os.environ.get("SCIKIT_LEARN_DATA") or "~/scikit_learn_data"
    return (
        "The 20 Newsgroups corpus is not available: it is not cached in "
        f"{where} and could not be downloaded. Either connect to the internet once "
        "(scikit-learn downloads 14 MB and caches it), or copy scikit-learn's cache file "
        f"{NEWSGROUPS_CACHE_FILE} into a folder and point SCIKIT_LEARN_DATA at it: "
        "`export SCIKIT_LEARN_DATA=/path/to/that/folder`."
    )


def load_newsgroups(
    *,
    categories: Sequence[str] | None,
    remove: Sequence[str],
    data_home: str | os.PathLike | None = None,
) -> RawCorpus:
    """The standard train and test posts of 20 Newsgroups.

    Raises:
        CorpusUnavailableError: no cache and no network; the message says how to fix it.
        DataError: an unknown category name.
    """
    from sklearn.datasets import fetch_20newsgroups

    corpus = RawCorpus(splits=[], title="20 Newsgroups", location=NEWSGROUPS)
    for subset in ("train", "test"):
        try:
            bunch = fetch_20newsgroups(
                data_home=data_home,
                subset=subset,
                categories=list(categories) if categories else None,
                remove=tuple(remove),
                shuffle=False,
            )
        except (OSError, EOFError) as error:  # URLError is an OSError; a cut download an EOF
            raise CorpusUnavailableError(f"{newsgroups_help(data_home)} ({error})") from error
        names = tuple(bunch.target_names)
        corpus.texts.extend(bunch.data)
        corpus.labels.extend(names[i] for i in bunch.target)
        corpus.splits.extend([subset] * len(bunch.data))
    if categories and len(names) != len(set(categories)):
        unknown = sorted(set(categories) - set(names))
        raise DataError(f"data.categories: unknown newsgroup(s) {unknown}")
    corpus.names = names
    return corpus


def load_table(
    path: Path,
    *,
    text_column: str,
    label_column: str,
    split_column: str,
    encoding_errors: str,
    chunk_rows: int = CHUNK_ROWS,
) -> RawCorpus:
    """Every row of a CSV, TSV, JSON Lines or Parquet file, checked row by row.

    The split column is optional: where the file has it, it decides each row's split.

    Raises:
        DataError: an unknown format, a missing column, an empty or non-string text, a
            missing label, undecodable bytes (with ``encoding_errors="strict"``), or a split
            value other than train, validation or test.
    """
    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown format {path.suffix or '(no extension)'!r}: expected a file "
            f"ending in {', '.join(sorted(TABLE_FORMATS))}, or a folder with one sub-folder "
            "per class"
        )
    corpus = RawCorpus(title=path.name, location=str(path))
    has_split = None
    row = 0
    for columns, chunk in _read_chunks(path, kind, chunk_rows):
        if has_split is None:  # the first chunk: check the columns once
            for role, name in (("text", text_column), ("label", label_column)):
                if name not in columns:
                    raise DataError(
                        f"{path}: no column {name!r} for the {role}s (columns: "
                        f"{', '.join(map(str, columns))}); set data.{role}_column"
                    )
            has_split = split_column in columns
            corpus.splits = [] if has_split else None
        for text, label, split in zip(
            chunk[text_column],
            chunk[label_column],
            chunk[split_column] if has_split else _nones(),
            strict=False,
        ):
            row += 1
            where = f"{path}, row {row}"
            corpus.texts.append(
                _checked_text(text, f"{where}, column {text_column!r}", encoding_errors, corpus)
            )
            corpus.labels.append(_checked_label(label, f"{where}, column {label_column!r}"))
            if has_split:
                corpus.splits.append(_checked_split(split, f"{where}, column {split_column!r}"))
    if row == 0:
        raise DataError(f"{path}: no rows")
    return corpus


def _nones() -> Iterator[None]:
    while True:
        yield None


def _read_chunks(path: Path, kind: str, chunk_rows: int) -> Iterator[tuple[list, dict]]:
    """(column names, {column: values}) per chunk of rows."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            handle = pq.ParquetFile(path)
        except Exception as error:  # pyarrow raises its own types for a corrupt file
            raise DataError(f"{path}: not a readable Parquet file: {error}") from error
        columns = handle.schema_arrow.names
        for batch in handle.iter_batches(batch_size=chunk_rows):
            yield columns, batch.to_pydict()
        return
    if kind == "jsonl":
        with path.open(encoding="utf-8", errors="surrogateescape") as handle:
            yield from _jsonl_chunks(path, handle, chunk_rows)
        return
    import pandas as pd

    reader = pd.read_csv(
        path,
        sep="\t" if kind == "tsv" else ",",
        dtype=object,  # texts and labels as written ("007" stays "007"), as Python strings
        keep_default_na=False,  # an empty cell is "" (reported), never NaN
        encoding="utf-8",
        encoding_errors="surrogateescape",
        chunksize=chunk_rows,
    )
    try:
        for frame in reader:
            yield list(frame.columns), {c: frame[c].tolist() for c in frame.columns}
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: not a readable {kind.upper()} file: {error}") from error


def _jsonl_chunks(path: Path, handle, chunk_rows: int) -> Iterator[tuple[list, dict]]:
    rows: list[dict] = []
    columns: list[str] = []
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: not a JSON object: {error}") from error
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object per line")
        columns.extend(key for key in record if key not in columns)
        rows.append(record)
        if len(rows) >= chunk_rows:
            yield columns, _columns_of(rows, columns)
            rows = []
    if rows:
        yield columns, _columns_of(rows, columns)


def _columns_of(rows: list[dict], columns: list[str]) -> dict[str, list]:
    return {column: [row.get(column) for row in rows] for column in columns}


def _checked_text(value: Any, where: str, encoding_errors: str, corpus: RawCorpus) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a text, got {_describe(value)}")
    if _UNDECODABLE.search(value):
        if encoding_errors == "strict":
            raise DataError(
                f"{where}: bytes that are not UTF-8; fix the file, or set "
                "data.encoding_errors: replace to replace them with U+FFFD"
            )
        value = _UNDECODABLE.sub("\ufffd", value)
        corpus.replaced_rows += 1
    if not value.strip():
        raise DataError(f"{where}: empty text")
    return value


def _checked_label(value: Any, where: str) -> str | int:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if missing or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: missing label")
    if isinstance(value, str):
        if _UNDECODABLE.search(value):
            raise DataError(f"{where}: bytes that are not UTF-8 in the label")
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise DataError(f"{where}: a label must be a string or an integer, got {_describe(value)}")


def _checked_split(value: Any, where: str) -> str:
    if value not in SPLIT_VALUES:
        raise DataError(f"{where}: {value!r} is not one of {', '.join(SPLIT_VALUES)}")
    return value


def load_folder(path: Path, *, encoding_errors: str) -> RawCorpus:
    """Text files in one sub-folder per class, or in ``train/`` and ``test/`` of that layout.

    Raises:
        DataError: no class folders, an empty or undecodable file (``strict``).
    """
    corpus = RawCorpus(title=path.name, location=str(path))
    parts = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if parts == ["test", "train"]:
        corpus.splits = []
        for split in ("train", "test"):
            _read_class_folders(path / split, corpus, encoding_errors, split)
    else:
        _read_class_folders(path, corpus, encoding_errors, None)
    return corpus


def _read_class_folders(
    path: Path, corpus: RawCorpus, encoding_errors: str, split: str | None
) -> None:
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{path}: no class folders (expected one sub-folder per class)")
    for folder in classes:
        files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
        for file in files:
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                if encoding_errors == "strict":
                    raise DataError(
                        f"{file}: bytes that are not UTF-8 ({error.reason} at byte "
                        f"{error.start}); fix the file, or set data.encoding_errors: replace"
                    ) from error
                text = raw.decode("utf-8", errors="replace")
                corpus.replaced_rows += 1
            if not text.strip():
                raise DataError(f"{file}: empty text")
            corpus.texts.append(text)
            corpus.labels.append(folder.name)
            if split is not None:
                corpus.splits.append(split)


def load_source(
    source: str,
    *,
    root: Path,
    text_column: str,
    label_column: str,
    split_column: str,
    encoding_errors: str,
    categories: Sequence[str] | None = None,
    remove: Sequence[str] = (),
    data_home: str | os.PathLike | None = None,
) -> RawCorpus:
    """The corpus named by ``data.source``: ``20newsgroups`` or a path under ``root``.

    Raises:
        DataError: a missing file or folder, or bad data in it.
        CorpusUnavailableError: 20 Newsgroups is neither cached nor downloadable.
    """
    if source == NEWSGROUPS:
        return load_newsgroups(categories=categories, remove=remove, data_home=data_home)
    path = root / source
    if path.is_dir():
        return load_folder(path, encoding_errors=encoding_errors)
    if not path.is_file():
        raise DataError(f"data.source: {source} not found (looked for {path})")
    return load_table(
        path,
        text_column=text_column,
        label_column=label_column,
        split_column=split_column,
        encoding_errors=encoding_errors,
    )


def _describe(value: Any) -> str:
    return "nothing (null)" if value is None else f"{value!r} ({type(value).__name__})"

"""Provenance records and atomic writes: every artifact says where it came from.

A provenance record is a small JSON file beside an artifact with the resolved parameters,
the git revision of the code, hashes of the inputs and the artifact's metrics. Artifacts are
written into a temporary sibling and moved into place in one rename, so an interrupted run
never leaves a half-written artifact where a later stage (or a server) would read it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.json"


def file_digest(path: str | Path, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file's bytes, read in chunks (``algorithm``: a :mod:`hashlib` name;
    provenance uses SHA-256, DVC's records MD5)."""
    digest = hashlib.new(algorithm)
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def sha256_tree(path: str | Path) -> str:
    """One hash for a file or a whole folder (relative names and contents, in sorted order)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode())
        digest.update(sha256_file(item).encode())
    return digest.hexdigest()


def file_hashes(directory: str | Path) -> dict[str, str]:
    """``{name: sha256}`` of every top-level entry of an artifact folder but its provenance.

    Folders (a SavedModel) get one :func:`sha256_tree` hash; hidden entries are skipped.
    """
    return {
        item.name: sha256_tree(item)
        for item in sorted(Path(directory).iterdir())
        if not item.name.startswith(".") and item.name != PROVENANCE_FILE
    }


def verify_files(directory: str | Path) -> list[str]:
    """Check an artifact folder against the file hashes in its ``provenance.json``.

    Returns the problems found (empty when the folder is intact): a missing or unreadable
    provenance record, a missing file, or a file whose hash differs (corrupt or truncated).
    """
    directory = Path(directory)
    try:
        recorded = read_json(directory / PROVENANCE_FILE)["files"]
    except FileNotFoundError:
        return [f"{directory}: no {PROVENANCE_FILE}"]
    except (ValueError, KeyError, TypeError) as error:
        return [f"{directory / PROVENANCE_FILE}: unreadable or without file hashes ({error})"]
    problems = []
    for name, digest in recorded.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif sha256_tree(path) != digest:
            problems.append(f"{path}: content differs from its recorded hash (corrupt?)")
    return problems


def git_revision(cwd: str | Path | None = None) -> str | None:
    """The commit of the code that made an artifact, with ``-dirty`` for local changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def build_provenance(
    *,
    stage: str,
    params: Mapping[str, Any],
    inputs: Mapping[str, str | Path] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
) -> dict[str, Any]:
    """A provenance record: what made an artifact, from what, and how good it is."""
    from maas import __version__

    return {
        "stage": stage,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(root),
        "maas_version": __version__,
        "python": platform.python_version(),
        "params": dict(params),
        "inputs": {name: sha256_tree(path) for name, path in (inputs or {}).items()},
        "metrics": dict(metrics or {}),
        **dict(extra or {}),
    }


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a file atomically (a temporary file, then one rename), readable by everyone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from a server run by another user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (a temporary file, then one rename)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    return write_bytes(path, text.encode("utf-8"))


def replace_dir(source: Path, target: Path) -> None:
    """Move the folder ``source`` to ``target``, replacing a previous ``target``."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        source.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        source.rename(target)


def read_json(path: str | Path) -> Any:
    with Path(path).open(encoding="utf-8") as handle:
        return json.load(handle)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``target`` only when the block succeeds.

    On an error (or an interrupt) the temporary folder is removed and ``target`` is left as
    it was, so readers never see a half-written artifact. Two writers of the same target at
    once are not supported (DVC runs one stage at a time).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A run killed outright (SIGKILL, power loss) cannot clean up after itself: its leftovers
    # are removed by the next run that writes the same artifact.
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

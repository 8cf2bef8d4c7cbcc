"""An earlier model's exact bytes, from the DVC cache or remote, checked before anyone uses them.

:func:`materialize` writes a registered version of an artifact into a folder the way ``dvc
artifacts get`` does (DVC reads the files from the local cache, or from the remote when the
cache lacks them) and then refuses the result unless it matches what was recorded at that
version's revision:

- DVC's hashes: every file's md5 in the ``.dir`` manifest that revision's ``dvc.lock``
  names, and, when the artifact is a whole DVC output, the directory hash in ``dvc.lock``
  itself, recomputed from the bytes on disk with DVC's own tree algorithm;
- the artifact's ``provenance.json`` file hashes (:func:`maas.provenance.verify_files`),
  which the server checks again before loading.

The bytes land in a hidden sibling of the destination and are renamed into place only once
they pass, so a corrupt or truncated copy never appears where a server would load it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from maas.provenance import replace_dir, verify_files
from maas.registry.store import (
    Recorded,
    RegistryError,
    artifact_path,
    dvc_tree_md5,
    file_md5s,
    recorded_hashes,
)
from maas.registry.tags import normalize_version, version_commit

log = logging.getLogger(__name__)


class IntegrityError(RegistryError):
    """Materialized bytes that differ from the hashes recorded at the version's revision."""


@dataclass(frozen=True)
class Materialized:
    artifact: str
    version: str
    commit: str
    path: Path
    tree_md5: str  # DVC's hash of the folder as written
    seconds: float


def integrity_problems(directory: str | Path, recorded: Recorded) -> list[str]:
    """How a folder differs from the recorded hashes (empty when it is byte-identical)."""
    directory = Path(directory)
    if not directory.is_dir():
        return [f"{directory}: missing"]
    actual = file_md5s(directory)
    problems = [f"{name}: missing" for name in sorted(set(recorded.files) - set(actual))]
    problems += [
        f"{name}: not in the recorded version"
        for name in sorted(set(actual) - set(recorded.files))
    ]
    problems += [
        f"{name}: md5 {actual[name]} differs from the recorded {md5} (corrupt or truncated)"
        for name, md5 in sorted(recorded.files.items())
        if name in actual and actual[name] != md5
    ]
    if not problems and recorded.tree_md5 and dvc_tree_md5(directory) != recorded.tree_md5:
        problems.append(f"DVC directory hash differs from dvc.lock's {recorded.tree_md5}")
    if not problems:
        problems += verify_files(directory)  # the artifact's own provenance hashes
    return problems


def materialize(
    root: str | Path, name: str, version: str, destination: str | Path
) -> Materialized:
    """Write a registered version's exact bytes to ``destination``, verified, atomically.

    An existing ``destination`` that already matches the recorded hashes is kept as it is;
    one that does not is replaced.

    Raises:
        RegistryError: unknown version, or bytes in neither the DVC cache nor the remote.
        IntegrityError: the bytes DVC gave do not match the recorded hashes (the
            destination is left as it was).
    """
    start = time.perf_counter()
    version = normalize_version(version)
    commit = version_commit(root, name, version)
    path = artifact_path(root, name, commit)
    recorded = recorded_hashes(root, commit, path)
    destination = Path(destination)
    if destination.exists() and not integrity_problems(destination, recorded):
        log.info("%s already holds %s %s byte for byte", destination, name, version)
        return _result(name, version, commit, destination, start)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.incoming-", dir=destination.parent)
    )
    try:
        incoming = staging / "artifact"
        _download(root, name, version, commit, path, incoming)
        problems = integrity_problems(incoming, recorded)
        if problems:
            raise IntegrityError(
                f"refusing {name} {version} ({commit[:12]}): its bytes do not match the "
                f"hashes recorded at that revision: {'; '.join(problems[:5])}"
            )
        replace_dir(incoming, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("materialized %s %s (%s) into %s", name, version, commit[:12], destination)
    return _result(name, version, commit, destination, start)


def _download(
    root: str | Path, name: str, version: str, commit: str, path: str, out: Path
) -> None:
    """``dvc artifacts get`` on the project itself: the cache first, else the remote."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            repo.artifacts.download(name, version=version, out=str(out))
    except Exception as error:  # DVC's errors for missing data vary by storage
        raise RegistryError(
            f"cannot get the bytes of {name} {version} ({path} at {commit[:12]}) from the "
            f"DVC cache or the remote: {error}"
        ) from error


def _result(name: str, version: str, commit: str, path: Path, start: float) -> Materialized:
    return Materialized(
        artifact=name,
        version=version,
        commit=commit,
        path=path,
        tree_md5=dvc_tree_md5(path),
        seconds=time.perf_counter() - start,
    )

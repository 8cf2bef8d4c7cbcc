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

import hashlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from maas.provenance import replace_dir, verify_files
from maas.registry import (
    RegistryError,
    artifact_path,
    lock_entry,
    normalize_version,
    version_commit,
)

log = logging.getLogger(__name__)


class IntegrityError(RegistryError):
    """Materialized bytes that differ from the hashes recorded at the version's revision."""


@dataclass(frozen=True)
class Recorded:
    """What a revision recorded about an artifact's bytes."""

    path: str  # the artifact's path in the project
    files: dict[str, str]  # relative name -> md5, from the dvc.lock's .dir manifest
    tree_md5: str | None  # dvc.lock's md5 ("<hash>.dir") when the artifact is a whole output


@dataclass(frozen=True)
class Materialized:
    artifact: str
    version: str
    commit: str
    path: Path
    tree_md5: str  # DVC's hash of the folder as written
    seconds: float


def md5_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def file_md5s(directory: str | Path) -> dict[str, str]:
    """``{relative posix name: md5}`` of every file under a folder."""
    directory = Path(directory)
    return {
        p.relative_to(directory).as_posix(): md5_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def dvc_tree_md5(directory: str | Path) -> str:
    """The hash DVC records for a folder (``"<md5>.dir"``), computed with DVC's own code."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for name, md5 in file_md5s(directory).items():
        size = (Path(directory) / name).stat().st_size
        tree.add(tuple(name.split("/")), Meta(size=size), HashInfo("md5", md5))
    tree.digest()
    return tree.hash_info.value


def recorded_hashes(root: str | Path, commit: str, path: str) -> Recorded:
    """The md5 of every file of ``path`` as DVC recorded them at ``commit``.

    Raises:
        RegistryError: ``path`` is not tracked by DVC at that commit, or its ``.dir``
            manifest is in neither the cache nor the remote.
    """
    from dvc.api import DVCFileSystem

    entry = lock_entry(root, commit, path)
    if entry is None:
        raise RegistryError(f"{path} is not a DVC output in dvc.lock at {commit[:12]}")
    try:
        fs = DVCFileSystem(str(root), rev=commit)
        found = fs.find(path, detail=True)
    except Exception as error:  # DVC raises many types; all mean "cannot read the record"
        raise RegistryError(
            f"cannot read DVC's record of {path} at {commit[:12]} (is it in neither the DVC "
            f"cache nor the remote?): {error}"
        ) from error
    files = {
        Path(name).relative_to(path).as_posix(): info["md5"]
        for name, info in found.items()
        if info.get("md5")
    }
    if not files:
        raise RegistryError(f"DVC records no files under {path} at {commit[:12]}")
    tree_md5 = entry.get("md5") if str(entry["path"]).rstrip("/") == path else None
    return Recorded(path=path, files=files, tree_md5=tree_md5)


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


def missing_from_cache(root: str | Path, commit: str, path: str) -> list[str]:
    """Files of ``path`` at ``commit`` whose bytes the local DVC cache does not hold."""
    from dvc.repo import Repo

    recorded = recorded_hashes(root, commit, path)
    with Repo(str(root)) as repo:
        odb = repo.cache.local
        return [name for name, md5 in recorded.files.items() if not odb.exists(md5)]


def push_artifact(root: str | Path, commit: str, path: str) -> int:
    """``dvc push`` the artifact's bytes at ``commit`` to the default remote.

    Returns the number of files sent (0 when there is no remote: a warning says what that
    costs).
    """
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        try:
            sent = repo.push(targets=[path], revs=[commit], workspace=False)
        except NoRemoteError:
            log.warning("no DVC remote: %s stays in the local cache only", path)
            return 0
        except DvcException as error:
            raise RegistryError(f"dvc push {path} at {commit[:12]} failed: {error}") from error
    log.info("pushed %s at %s to the DVC remote (%d file(s) sent)", path, commit[:12], sent)
    return sent


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

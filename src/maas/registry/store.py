"""The registry's store: the project's git history and DVC's records of each revision.

Everything the registry knows about an artifact's bytes comes from git and DVC, read at a
revision: ``dvc.yaml``'s ``artifacts:`` section (which output an artifact is), ``dvc.lock``
(its hashes), DVC's ``.dir`` manifest (every file's md5), the local cache and the remote,
and ``dvc metrics show``. GTO's tags (:mod:`maas.registry.tags`) name the revisions.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maas.provenance import file_digest
from maas.reporting import flatten, metrics_name

log = logging.getLogger(__name__)

DVC_FILE = "dvc.yaml"

LOCK_FILE = "dvc.lock"

GTO_CONFIG = ".gto"

# Files whose uncommitted changes would make a registered commit describe another model.
PIPELINE_FILES = (DVC_FILE, LOCK_FILE, "params.yaml", GTO_CONFIG)


class RegistryError(ValueError):
    """A registry request that cannot be honoured; nothing was changed."""


@dataclass(frozen=True)
class Recorded:
    """What a revision recorded about an artifact's bytes."""

    path: str  # the artifact's path in the project
    files: dict[str, str]  # relative name -> md5, from the dvc.lock's .dir manifest
    tree_md5: str | None  # dvc.lock's md5 ("<hash>.dir") when the artifact is a whole output


def git(root: str | Path, *args: str) -> str:
    """Run git in the project; ``RegistryError`` with git's message when it fails."""
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise RegistryError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def resolve_commit(root: str | Path, ref: str) -> str:
    return git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


def read_yaml_at(root: str | Path, rev: str, path: str) -> Any:
    """A YAML file as committed at ``rev`` (``None`` when the commit has no such file)."""
    result = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True
    )
    return yaml.safe_load(result.stdout) if result.returncode == 0 else None


def declared_artifacts(root: str | Path, rev: str = "HEAD") -> dict[str, dict[str, Any]]:
    """The ``artifacts:`` section of ``dvc.yaml`` at ``rev``."""
    return dict((read_yaml_at(root, rev, DVC_FILE) or {}).get("artifacts") or {})


def artifact_path(root: str | Path, name: str, rev: str) -> str:
    """Where an artifact lives at ``rev``, as declared in that revision's ``dvc.yaml``."""
    declared = declared_artifacts(root, rev)
    if name not in declared:
        known = ", ".join(sorted(declared)) or "none"
        raise RegistryError(
            f"artifact {name!r} is not declared in {DVC_FILE} at {rev[:12]} (declared: {known})"
        )
    return str(declared[name]["path"]).rstrip("/")


def lock_entry(root: str | Path, rev: str, path: str) -> dict[str, Any] | None:
    """The ``dvc.lock`` output at ``rev`` that is ``path`` or contains it."""
    lock = read_yaml_at(root, rev, LOCK_FILE) or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            out_path = str(out["path"]).rstrip("/")
            if path == out_path or path.startswith(out_path + "/"):
                return out
    return None


def file_md5s(directory: str | Path) -> dict[str, str]:
    """``{relative posix name: md5}`` of every file under a folder."""
    directory = Path(directory)
    return {
        p.relative_to(directory).as_posix(): file_digest(p, "md5")
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


def metrics_at(root: str | Path, commits: list[str]) -> dict[str, dict[str, Any]]:
    """``{commit: {"train.val_accuracy": ...}}``: ``dvc metrics show`` at each commit.

    A metrics file a revision lacks (a stage not run) is skipped, not an error.
    """
    if not commits:
        return {}
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        shown = repo.metrics.show(revs=list(dict.fromkeys(commits)), on_error="return")
    flat: dict[str, dict[str, Any]] = {}
    for rev, result in shown.items():
        values: dict[str, Any] = {}
        for path, file_result in (result.get("data") or {}).items():
            prefix = metrics_name(path)
            for key, value in flatten(file_result.get("data") or {}):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    values[f"{prefix}.{key}"] = value
        flat[rev] = values
    return flat

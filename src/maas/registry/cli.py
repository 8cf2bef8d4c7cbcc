"""Model versions and rollback: list, show, register, promote and roll back DVC artifacts.

Versions and stages are GTO git tags (classifier@v1.0.0, classifier#prod#3) on the commits
whose dvc.lock records each model's bytes. With --model-repository, promote and rollback
also materialize the version's exact bytes (DVC cache, else remote; verified against the
hashes recorded at its revision) into the serving model repository and, with --server,
wait until the running server answers with it.

Examples:
  maas models list classifier
  maas models register classifier --version v1          # HEAD; pushes the bytes to the remote
  maas models promote classifier v1 --stage prod --model-repository models/repository
  maas models rollback classifier --stage prod --model-repository models/repository \\
      --server http://127.0.0.1:8501                     # back to the previous prod version
  maas models rollback classifier --stage prod --to v1.0.0 --model-repository models/repository
  maas models promote classifier v1.1.0 --stage prod --canary 10 \\
      --model-repository models/repository --server http://127.0.0.1:8501 --wait
                                        # 10 % of prod's traffic; the server decides
  maas models status classifier --server http://127.0.0.1:8501   # per-version figures
  maas models record classifier --model-repository models/repository  # decisions -> registry
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="registered versions, their stages and metrics")
    listing.add_argument("artifact", nargs="?", help="artifact name (default: all in dvc.yaml)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    show = actions.add_parser("show", help="one version: commit, stages, hashes, metrics")
    show.add_argument("artifact")
    show.add_argument("version", nargs="?", help="e.g. v1.0.0 (or give --stage)")
    show.add_argument("--stage", help="the version that holds this stage")
    show.add_argument("--json", action="store_true", help="machine-readable output")

    register = actions.add_parser("register", help="register a commit's artifact as a version")
    register.add_argument("artifact")
    register.add_argument("--version", help="e.g. v1 or v1.2.0 (default: bump the patch)")
    register.add_argument("--ref", default="HEAD", help="commit to register (default: HEAD)")
    register.add_argument(
        "--no-push", action="store_true", help="do not dvc push the bytes to the default remote"
    )

    promote = actions.add_parser("promote", help="give a version a stage (and serve it)")
    promote.add_argument("artifact")
    promote.add_argument("version", help="e.g. v1.0.0")
    promote.add_argument("--stage", required=True, help="e.g. prod (stages are listed in .gto)")
    _deployment_arguments(promote)
    _rollout_arguments(promote)

    rollback = actions.add_parser("rollback", help="give a stage back to an earlier version")
    rollback.add_argument("artifact")
    rollback.add_argument("--stage", required=True, help="the stage to roll back, e.g. prod")
    rollback.add_argument(
        "--to",
        metavar="VERSION",
        help="target version (default: the one that held the stage before)",
    )
    _deployment_arguments(rollback)

    record = actions.add_parser(
        "record", help="record the server's rollout decisions in the registry (GTO, git notes)"
    )
    record.add_argument("artifact")
    _deployment_arguments(record)

    status = actions.add_parser(
        "status", help="a served model: its versions, rollout and per-version metrics"
    )
    status.add_argument("model", help="the model's name in the server's repository")
    status.add_argument("--server", required=True, metavar="URL", help="the running server")
    status.add_argument(
        "--api-key-env", metavar="VAR", help="environment variable holding the server's API key"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")

    for sub in (listing, show, register, promote, rollback, record):
        sub.add_argument(
            "--project",
            type=Path,
            default=Path("."),
            help="the DVC/git project (default: the current folder)",
        )


def _deployment_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving (optional)")
    group.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help="also materialize the version into DIR/<model>/<N>/ and serve it",
    )
    group.add_argument("--model-name", help="model name in the repository (default: artifact)")
    group.add_argument(
        "--server", metavar="URL", help="running server to wait for, e.g. http://127.0.0.1:8501"
    )
    group.add_argument(
        "--api-key-env", metavar="VAR", help="environment variable holding the server's API key"
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the server to switch (default: %(default)s)",
    )


def _rollout_arguments(parser: argparse.ArgumentParser) -> None:
    from maas.serving.rollout import Bounds

    defaults = Bounds()
    group = parser.add_argument_group(
        "safe rollout (optional; needs --model-repository): the server splits the traffic, "
        "compares the versions over a window and promotes or rolls back by itself"
    )
    how = group.add_mutually_exclusive_group()
    how.add_argument(
        "--canary",
        type=float,
        metavar="PERCENT",
        help="serve VERSION to PERCENT (0-100) of the stage's traffic beside the current version",
    )
    how.add_argument(
        "--shadow",
        action="store_true",
        help="mirror every request to VERSION off the response path; answers come from prod",
    )
    group.add_argument(
        "--sticky",
        default="",
        metavar="key|header:NAME",
        help="keep each caller on one side: a hash of its API key or of a request header",
    )
    group.add_argument(
        "--window-requests",
        type=int,
        default=200,
        metavar="N",
        help="decide after N candidate requests (default: %(default)s) ...",
    )
    group.add_argument(
        "--window-seconds",
        type=float,
        default=120.0,
        metavar="T",
        help="... or after T seconds, whichever comes first (default: %(default)s)",
    )
    group.add_argument(
        "--min-requests",
        type=int,
        metavar="N",
        help="fewer candidate requests in the window: rolled back (default: min(50, window))",
    )
    group.add_argument(
        "--max-error-rate",
        type=float,
        default=defaults.max_error_rate,
        help="candidate error rate above prod's by at most this (default: %(default)s)",
    )
    group.add_argument(
        "--max-p99-ratio",
        type=float,
        default=defaults.max_p99_ratio,
        help="candidate p99 latency at most this times prod's ... (default: %(default)s)",
    )
    group.add_argument(
        "--p99-slack-ms",
        type=float,
        default=defaults.p99_slack_ms,
        help="... or this many ms above it, whichever is more (default: %(default)s)",
    )
    group.add_argument(
        "--max-class-shift",
        type=float,
        default=defaults.max_class_shift,
        help="total variation distance of the predicted-class mixes (default: %(default)s)",
    )
    group.add_argument(
        "--min-agreement",
        type=float,
        default=defaults.min_agreement,
        help="shadow: share of texts where both predict the same class (default: %(default)s)",
    )
    group.add_argument(
        "--wait",
        action="store_true",
        help="wait for the decision (up to the window plus --timeout) and record it",
    )


def run(args: argparse.Namespace) -> int:
    from maas.registry.store import RegistryError

    try:
        return ACTIONS[args.action](args)
    except RegistryError as error:
        log.error("%s", error)
        return 1


def _list(args: argparse.Namespace) -> int:
    from maas.registry.rollouts import latest_note
    from maas.registry.store import declared_artifacts
    from maas.registry.tags import list_versions

    names = [args.artifact] if args.artifact else sorted(declared_artifacts(args.project))
    rows = [v for name in names for v in list_versions(args.project, name)]
    notes = {
        (v.artifact, v.version): latest_note(args.project, v.artifact, v.version, v.commit)
        for v in rows
    }
    if args.json:
        _print_json([{**_as_dict(v), "rollout": notes[(v.artifact, v.version)]} for v in rows])
        return 0
    keys = sorted({k for v in rows for k in v.metrics if not k.startswith("data.")})
    header = ["artifact", "version", "commit", "registered", "stages", *keys]
    table = [
        [v.artifact, v.version, v.commit[:7], v.created_at[:19], ",".join(v.stages) or "-"]
        + [_fmt(v.metrics.get(k)) for k in keys]
        for v in rows
    ]
    if any(notes.values()):  # the last rollout decision of each version, if any
        header.append("last rollout")
        for row, v in zip(table, rows, strict=True):
            row.append(notes[(v.artifact, v.version)].split(":", 2)[1].strip()[:70] or "-")
    _print_table(header, table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from maas.registry.store import RegistryError, artifact_path, lock_entry, recorded_hashes
    from maas.registry.tags import list_versions, normalize_version, stage_holders

    if bool(args.version) == bool(args.stage):
        raise RegistryError("give a version or --stage, not both")
    if args.stage:
        holders = stage_holders(args.project, args.artifact, args.stage)
        if not holders:
            raise RegistryError(f"no version of {args.artifact!r} holds stage {args.stage!r}")
        wanted = holders[0]
    else:
        wanted = normalize_version(args.version)
    versions = {v.version: v for v in list_versions(args.project, args.artifact)}
    if wanted not in versions:
        raise RegistryError(
            f"unknown version {wanted!r} of {args.artifact!r} "
            f"(registered: {', '.join(versions) or 'none'})"
        )
    found = versions[wanted]
    path = artifact_path(args.project, args.artifact, found.commit)
    details = {
        **_as_dict(found),
        "path": path,
        "dvc_lock_md5": (lock_entry(args.project, found.commit, path) or {}).get("md5"),
        "files": recorded_hashes(args.project, found.commit, path).files,
    }
    if args.json:
        _print_json(details)
    else:
        for key, value in details.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for name, item in value.items():
                    print(f"  {name}: {_fmt(item)}")
            else:
                print(f"{key}: {value}")
    return 0


def _register(args: argparse.Namespace) -> int:
    from maas.registry.tags import register

    found = register(
        args.project, args.artifact, version=args.version, ref=args.ref, push=not args.no_push
    )
    print(f"registered {found.artifact} {found.version} at {found.commit[:12]}")
    return 0


def _deployment(args: argparse.Namespace):
    from maas.registry.operations import Deployment
    from maas.registry.store import RegistryError

    if args.model_repository is None:
        if args.server:
            raise RegistryError("--server needs --model-repository (the server's repository)")
        return None
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise RegistryError(f"environment variable {args.api_key_env} is empty or unset")
    return Deployment(
        repository=args.model_repository,
        model=args.model_name or args.artifact,
        server=args.server,
        api_key=api_key,
        timeout=args.timeout,
    )


def _promote(args: argparse.Namespace) -> int:
    from maas.registry.operations import promote

    if args.canary is not None or args.shadow:
        return _start_rollout(args)
    done = promote(
        args.project, args.artifact, args.version, args.stage, deployment=_deployment(args)
    )
    _report(done)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from maas.registry.operations import rollback

    done = rollback(
        args.project, args.artifact, args.stage, to=args.to, deployment=_deployment(args)
    )
    _report(done)
    return 0


def _start_rollout(args: argparse.Namespace) -> int:
    from maas.registry import rollouts
    from maas.registry.store import RegistryError
    from maas.serving.rollout import Bounds

    deployment = _deployment(args)
    if deployment is None:
        raise RegistryError("--canary and --shadow need --model-repository (what is served)")
    try:
        bounds = Bounds(
            max_error_rate=args.max_error_rate,
            max_p99_ratio=args.max_p99_ratio,
            p99_slack_ms=args.p99_slack_ms,
            max_class_shift=args.max_class_shift,
            min_agreement=args.min_agreement,
        )
    except ValueError as error:
        raise RegistryError(str(error)) from error
    request = rollouts.RolloutRequest(
        mode="shadow" if args.shadow else "canary",
        share=100.0 if args.shadow else args.canary,
        sticky=args.sticky,
        window_requests=args.window_requests,
        window_seconds=args.window_seconds,
        min_requests=args.min_requests,
        bounds=bounds,
    )
    spec = rollouts.start(
        args.project, args.artifact, args.version, args.stage, deployment, request
    )
    share = "every request mirrored" if spec.mode == "shadow" else f"{spec.share:g} % of traffic"
    print(
        f"rollout {spec.id}: {spec.mode} of version {spec.candidate} beside {spec.baseline} "
        f"({share}); window {spec.window_requests} requests or {spec.window_seconds:g} s"
    )
    if not args.wait:
        print("the server decides; record its decision with `maas models record`")
        return 0
    model_dir = deployment.repository / deployment.model
    record = rollouts.wait_for_decision(
        model_dir, spec.id, timeout=spec.window_seconds + args.timeout
    )
    rollouts.record_decisions(args.project, args.artifact, deployment)
    print(f"{record['outcome']}: {record['reason']}")
    print(f"figures: {json.dumps(record['figures'], sort_keys=True)}")
    return 0 if record["outcome"] == "promoted" else 2


def _record(args: argparse.Namespace) -> int:
    from maas.registry import rollouts
    from maas.registry.store import RegistryError

    deployment = _deployment(args)
    if deployment is None:
        raise RegistryError("record needs --model-repository (where the decisions are)")
    done = rollouts.record_decisions(args.project, args.artifact, deployment)
    for record in done:
        print(rollouts.note_text(record))
    if not done:
        print("no decision to record")
    return 0


def _status(args: argparse.Namespace) -> int:
    from maas.registry.status import fetch_status, render_status
    from maas.registry.store import RegistryError

    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        raise RegistryError(f"environment variable {args.api_key_env} is empty or unset")
    status = fetch_status(args.server, args.model, api_key=api_key)
    if args.json:
        _print_json(status)
    else:
        print(render_status(status))
    return 0


def _report(done) -> None:
    print(f"{done.artifact} {done.version} ({done.commit[:12]}) holds {done.stage}")
    if done.folder is not None:
        switched = f", switched in {done.switch_seconds:.2f} s" if done.switch_seconds else ""
        print(
            f"serving version {done.serving_version} from {done.folder} "
            f"(materialized in {done.materialize_seconds:.2f} s{switched})"
        )
    print(f"total {done.total_seconds:.2f} s; tags: {', '.join(done.tags) or 'none (unchanged)'}")


def _as_dict(version) -> dict:
    return {
        "artifact": version.artifact,
        "version": version.version,
        "commit": version.commit,
        "created_at": version.created_at,
        "stages": list(version.stages),
        "metrics": version.metrics,
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def _print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    print()


ACTIONS = {
    "list": _list,
    "show": _show,
    "register": _register,
    "promote": _promote,
    "rollback": _rollback,
    "record": _record,
    "status": _status,
}

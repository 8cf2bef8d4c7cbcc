"""``maas models status``: what a running server says of one model, read over HTTP.

Three reads: the versions' states (``GET /v1/models/M``), the rollout in progress and the
last decisions (``GET /v1/rollouts/M``), and each version's own series from ``/metrics``
(requests by outcome, latency, predicted classes; all traffic and the rollout's sides).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from maas.registry.store import RegistryError


def fetch_status(server: str, model: str, *, api_key: str | None = None) -> dict[str, Any]:
    """The model's versions, rollout and per-version metrics; ``RegistryError`` when the
    server cannot be read."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=10) as client:
            versions = _get(client, f"/v1/models/{model}").json()
            rollout = _get(client, f"/v1/rollouts/{model}").json()
            metrics = _get(client, "/metrics").text
    except httpx.HTTPError as error:
        raise RegistryError(f"cannot read {server}: {type(error).__name__}: {error}") from error
    per_version: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "errors": 0, "latency_sum_s": 0.0, "latency_count": 0,
                 "rollout": {}, "classes": {}}
    )  # fmt: skip
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or "version" not in labels:
                continue
            row = per_version[labels["version"]]
            if sample.name == "maas_requests_total":
                row["requests"] += int(sample.value)
                if _is_error(labels["code"]):
                    row["errors"] += int(sample.value)
            elif sample.name == "maas_request_duration_seconds_sum":
                row["latency_sum_s"] += sample.value
            elif sample.name == "maas_request_duration_seconds_count":
                row["latency_count"] += int(sample.value)
            elif sample.name == "maas_rollout_requests_total":
                key = f"{labels['role']}_{labels['outcome']}"
                row["rollout"][key] = row["rollout"].get(key, 0) + int(sample.value)
            elif sample.name == "maas_rollout_predicted_class_total":
                row["classes"][labels["label"]] = row["classes"].get(labels["label"], 0) + int(
                    sample.value
                )
    return {
        "model": model,
        "versions": versions.get("model_version_status", []),
        "rollout": rollout.get("rollout"),
        "decisions": rollout.get("decisions", []),
        "metrics": dict(per_version),
    }


def _is_error(code: str) -> bool:
    """An HTTP status of 400 or more, or a gRPC code other than OK."""
    return int(code) >= 400 if code.isdigit() else code != "OK"


def _get(client, path: str):
    response = client.get(path)
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise RegistryError(f"GET {path}: HTTP {response.status_code}: {message[:200]}")
    return response


def render_status(status: dict[str, Any]) -> str:
    """The status as text: versions, the rollout, a table per version, the last decisions."""
    lines = [f"model {status['model']}"]
    for entry in status["versions"]:
        error = entry.get("status", {}).get("error_message", "")
        detail = f" - {error}" if error else ""
        lines.append(f"  version {entry['version']}: {entry['state']}{detail}")
    rollout = status["rollout"]
    if rollout:
        decision = rollout["decision"]
        state = f"{decision['outcome']}: {decision['reason']}" if decision else "in progress"
        lines.append(
            f"rollout {rollout['id']} ({rollout['mode']}, {rollout['share']:g} %): version "
            f"{rollout['candidate']} beside {rollout['baseline']}: {state}"
        )
        lines.append("  figures: " + ", ".join(f"{k} {v}" for k, v in rollout["figures"].items()))
    lines.append("version  requests  errors  mean ms  rollout                      top classes")
    for version, row in sorted(status["metrics"].items()):
        mean = 1000 * row["latency_sum_s"] / row["latency_count"] if row["latency_count"] else 0
        sides = " ".join(f"{k}={v}" for k, v in sorted(row["rollout"].items())) or "-"
        top = sorted(row["classes"].items(), key=lambda item: -item[1])[:3]
        classes = ", ".join(f"{label} {count}" for label, count in top) or "-"
        lines.append(
            f"{version:<8} {row['requests']:>8} {row['errors']:>7} {mean:>8.2f}  "
            f"{sides:<28} {classes}"
        )
    for record in status["decisions"][-3:]:
        lines.append(
            f"decision {record['id']}: {record['outcome']} (winner {record['winner']}): "
            f"{record['reason']}"
        )
    return "\n".join(lines)

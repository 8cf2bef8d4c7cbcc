"""Schema-driven fuzzing: requests generated from the server's own OpenAPI document.

Schemathesis reads ``/openapi.json`` of a real server (a subprocess on a loopback port, a
TFLite model so it starts fast) and sends valid and invalid requests to every operation. No
request may get a 5xx, every response must match the documented status codes, content types
and schemas, and every 4xx must be a JSON ``{"error": "..."}``. Bounded: a few examples per
operation.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from serving_support import running_server, tflite_artifact

from maas.serving.layout import publish_version

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module")
def server(small_project, tmp_path_factory):
    lite = tflite_artifact(small_project / "models" / "classifier", tmp_path_factory)
    root = tmp_path_factory.mktemp("fuzz") / "repository"
    publish_version(lite, root, "lite")
    log = root.parent / "server.log"
    args = ["--model-repository", str(root), "--max-texts", "16", "--max-body-bytes", "65536"]
    with running_server(args, log) as running:
        yield running
    assert "Traceback" not in running.log()


def error_is_json(ctx, response, case) -> bool | None:
    """Every client error says what was wrong in ``{"error": "<message>"}``."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body
        assert body["error"] and "Traceback" not in body["error"]
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_is_json,
]


def fuzz(operation, mode: GenerationMode) -> None:
    checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        case.call_and_validate(checks=checks, timeout=30)

    check()


# (schemathesis' own pytest plugin does not run on this pytest; its Python API does.)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_operations_never_fail_the_server(server, mode):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 19  # v1, v2 and the seed API are all documented
    for operation in operations:
        # Only request bodies can be made invalid (any string is a valid path segment), so
        # negative cases go to the operations that take one (not load/unload, say).
        if mode == GenerationMode.POSITIVE or len(operation.body):
            fuzz(operation, mode)
    with server.client() as client:  # and the server still serves
        response = client.post("/predict", json={"text": "still there?"})
        assert response.status_code == 200

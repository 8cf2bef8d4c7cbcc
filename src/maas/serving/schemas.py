"""Response shapes shared by the protocols, for the OpenAPI document and fast JSON output."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response


class ErrorBody(BaseModel):
    """Every error: one line that says what was wrong (never a traceback)."""

    error: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": description}
    for code, description in (
        (400, "Malformed request: bad JSON, wrong types, datatypes or shapes, empty input"),
        (401, "Missing or invalid API key (when keys are configured)"),
        (403, "The API key may not use this model, or lacks the admin scope"),
        (404, "Unknown model, version or label"),
        (413, "Request body, number of texts or text length over the limits"),
        (429, "The API key is over its rate: retry after Retry-After seconds"),
        (503, "The model has no version ready"),
    )
}


class FastJSONResponse(Response):
    """JSON without FastAPI's generic encoder: predictions are plain lists already."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

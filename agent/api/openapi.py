"""What `/openapi.json` says, made true: the agent's own error body and every status a route can answer.

FastAPI documents its own validation error (`HTTPValidationError`) and only the statuses a route
declares. The agent answers every 4xx/5xx with `ErrorBody` (agent/api/errors.py), and some statuses
come from layers FastAPI does not see: the gate (401/403 from headers, 413 over a route's body cap,
400 for a body that cannot be parsed) and each subsystem's "not running" (503). `install_openapi`
adds those to every operation they apply to; routes declare their own (404, 409, 410, 415, ...)
with `errors(...)`. tests/agent/test_openapi_contract.py holds the agent to the result.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from agent.schemas import API_PREFIX, ErrorBody, ModelVersionCreate

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}

DESCRIPTIONS = {
    400: "The body could not be parsed (e.g. JSON nested too deep)",
    401: "No token, or an unknown or revoked one",
    403: "The caller's role (or socket uid) may not do this",
    404: "No such resource",
    405: "Method not allowed on this path (see the Allow header)",
    409: "Conflicts with the current state",
    410: "Gone",
    413: "The body is larger than this route's cap (named in `detail`)",
    415: "Unsupported Content-Type",
    422: "Invalid request; `field` names the first field at fault",
    429: "Shed: too many rows in flight",
    502: "The model failed",
    503: "Unavailable: the subsystem is not running, or the audit log cannot be written (nothing was done)",
    504: "The model timed out",
}

# Models that only `openapi_extra` bodies refer to (FastAPI does not see them): the multipart `metadata` part.
EXTRA_MODELS: list[type[BaseModel]] = [ModelVersionCreate]

# Routes under these tags answer 503 when their subsystem is not running on this agent.
_SUBSYSTEM_TAGS = {"serving", "monitoring", "alerts", "rollouts", "models"}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for a route's own error statuses, all with the agent's error body."""
    return {c: {"model": ErrorBody, "description": DESCRIPTIONS[c]} for c in codes}


def multipart_body(parts: dict[str, dict[str, Any]], required: list[str], description: str) -> dict[str, Any]:
    """`openapi_extra` for a streamed multipart upload (FastAPI cannot see the parts: we parse them ourselves)."""
    encoding = {k: {"contentType": "application/json"} for k, v in parts.items() if v.get("type") == "object"}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": parts, "required": required},
                    **({"encoding": encoding} if encoding else {}),
                }
            },
        }
    }


BINARY = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}


def install_openapi(app: FastAPI) -> None:
    """Serve the patched document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
            )
            _patch(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _patch(doc: dict[str, Any]) -> None:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    _, extra = models_json_schema(
        [(m, "validation") for m in [ErrorBody, *EXTRA_MODELS]], ref_template="#/components/schemas/{model}"
    )
    for name, s in extra.get("$defs", {}).items():
        schemas.setdefault(name, s)
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            responses: dict[str, Any] = op.setdefault("responses", {})
            add: set[int] = set()
            if path.startswith(API_PREFIX + "/"):
                add |= {401, 403}
                if method != "get" or _SUBSYSTEM_TAGS & set(op.get("tags", [])):
                    add.add(503)
            if "requestBody" in op:
                add |= {400, 413, 422}
            if any(p.get("in") == "path" for p in op.get("parameters", [])):
                add |= {404, 422}
            if op.get("parameters"):
                add.add(422)
            for code in sorted(add):
                responses.setdefault(str(code), {"description": DESCRIPTIONS[code]})
            for code, r in responses.items():
                if code.isdigit() and int(code) >= 400:
                    if int(code) in DESCRIPTIONS and r.get("description") in (None, "", "Validation Error"):
                        r["description"] = DESCRIPTIONS[int(code)]
                    # Every error is an ErrorBody, whatever FastAPI assumed (HTTPValidationError for 422);
                    # a route that declared its own body for an error (readyz: Health) keeps it.
                    content = r.get("content", {}).get("application/json", {}).get("schema", {})
                    if not content or content.get("$ref", "").endswith("/HTTPValidationError"):
                        r["content"] = {"application/json": {"schema": ERROR_REF}}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)

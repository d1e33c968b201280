"""Endpoints: configure, inspect, switch to fallback, predict (slow path; the fast path is agent/api/fastpath.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from agent.api.deps import ctx, require_operate, require_read
from agent.api.errors import ApiError
from agent.api.openapi import errors
from agent.api.routes.admin import audited
from agent.schemas import (
    NAME_PATTERN,
    EndpointConfig,
    EndpointInfo,
    EndpointVersionStats,
    FallbackToggle,
    PredictionLogRow,
    PredictResponse,
    Principal,
    ServingStatus,
)
from agent.serving.service import EndpointError, ServingService

router = APIRouter(tags=["serving"])

# What the predict path accepts (agent/serving/encode.py): exactly one of `records` (rows as objects) and
# `columns` (one list per feature, equal lengths), neither empty. The rows' fields are the endpoint's
# model signature (GET /api/v1/models/{model}/versions/{version}), which no static schema can name.
PREDICT_BODY = {
    "type": "object",
    "properties": {
        "records": {"type": "array", "minItems": 1, "items": {"type": "object"}},
        "columns": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {"type": "array", "minItems": 1},
        },
    },
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
}
EndpointName = Path(pattern=NAME_PATTERN)


def serving(request: Request) -> ServingService:
    s = ctx(request).serving
    if s is None:
        raise ApiError(503, "serving_unavailable", "serving is not running on this agent")
    return s


def _info(s: ServingService, name: str) -> EndpointInfo:
    ep = s.endpoints.get(name)
    if ep is None:
        raise ApiError(404, "not_found", f"no endpoint {name!r}", field="name")
    return ep.info(s.is_loaded(ep))


def _raise(e: EndpointError) -> None:
    raise ApiError(e.status, e.error, e.detail, field=e.field) from None


@contextmanager
def rollout_checked(request: Request, name: str, new: EndpointConfig | None) -> Iterator[None]:
    """Run a PUT (`new`) or DELETE (None) of endpoint `name` under the rollout engine's change lock: while a
    rollout is active there, changing what it serves is a 409 naming the rollout (the rollout's own verbs
    are the way; agent/rollouts/engine.py refuse_change)."""
    from agent.rollouts.engine import RolloutError, serving_change

    eng = getattr(ctx(request), "rollouts", None)
    with eng.change_lock() if eng is not None else nullcontext():
        if eng is not None:
            old = serving(request).endpoints.get(name)
            field = "name" if new is None else serving_change(old.config if old else None, new)
            if field is not None:
                try:
                    eng.refuse_change(name, field)
                except RolloutError as e:
                    raise ApiError(e.status, e.error, e.detail, field=e.field) from None
        yield


@router.get("/serving", response_model=ServingStatus, dependencies=[Depends(require_read)])
async def serving_status(request: Request) -> ServingStatus:
    """Endpoints, their traffic per model version, loaded models and the prediction log's health."""
    st = serving(request).status()
    a = ctx(request).asyncinf
    if a is not None:
        st.async_queues = a.queue.stats()
    return st


@router.get("/endpoints", response_model=list[EndpointInfo], dependencies=[Depends(require_read)])
async def list_endpoints(request: Request) -> list[EndpointInfo]:
    s = serving(request)
    return [ep.info(s.is_loaded(ep)) for ep in s.endpoints.values()]


@router.get(
    "/endpoints/{name}", response_model=EndpointInfo, dependencies=[Depends(require_read)], responses=errors(404)
)
async def get_endpoint(request: Request, name: str = EndpointName) -> EndpointInfo:
    return _info(serving(request), name)


@router.get(
    "/endpoints/{name}/stats",
    response_model=list[EndpointVersionStats],
    dependencies=[Depends(require_read)],
    responses=errors(404),
)
async def endpoint_stats(request: Request, name: str = EndpointName) -> list[EndpointVersionStats]:
    s = serving(request)
    _info(s, name)
    return s.stats_list(name)


@router.get(
    "/endpoints/{name}/predictions",
    response_model=list[PredictionLogRow],
    dependencies=[Depends(require_read)],
    responses=errors(404),
)
async def endpoint_predictions(
    request: Request,
    name: str = EndpointName,
    limit: int = Query(100, ge=1, le=10_000),
    request_id: str | None = Query(None, max_length=128),
) -> list[PredictionLogRow]:
    """The prediction log, newest first (what was received, what was answered, how)."""
    s = serving(request)
    _info(s, name)
    c = ctx(request)
    if c.writer.buffered_rows:  # include what is still buffered, as /series does
        await run_in_threadpool(c.writer.flush)
    return await run_in_threadpool(s.recent_predictions, c.reader.con, name, limit, request_id)


@router.put("/endpoints/{name}", response_model=EndpointInfo, responses=errors(404, 409))
async def put_endpoint(
    body: EndpointConfig, request: Request, name: str = EndpointName, principal: Principal = Depends(require_operate)
) -> EndpointInfo:
    """Create or replace an endpoint; the model (version or alias) must resolve in the registry."""
    s = serving(request)
    if (body.version is None) == (body.alias is None):
        raise ApiError(422, "invalid_request", "give exactly one of version and alias", field="version")
    if body.drift:
        from agent.monitoring.drift import DriftThresholds  # numpy: only when thresholds are given

        try:
            DriftThresholds.from_dict(body.drift)
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"drift: {e}", field="drift") from None

    def put():
        with rollout_checked(request, name, body):
            audited(request, principal, "endpoint.put", f"endpoint:{name}", body.model_dump())
            return s.put(name, body, principal.name)

    try:
        ep = await run_in_threadpool(put)
    except EndpointError as e:
        _raise(e)
    s.prewarm_soon(ep)
    return ep.info(s.is_loaded(ep))


@router.delete("/endpoints/{name}", status_code=204, responses=errors(404, 409))
async def delete_endpoint(
    request: Request, name: str = EndpointName, principal: Principal = Depends(require_operate)
) -> Response:
    s = serving(request)
    _info(s, name)

    def delete() -> None:
        with rollout_checked(request, name, None):
            audited(request, principal, "endpoint.delete", f"endpoint:{name}", {})
            s.delete(name, principal.name)

    try:
        await run_in_threadpool(delete)
    except EndpointError as e:
        _raise(e)
    return Response(status_code=204)


@router.post("/endpoints/{name}/fallback", response_model=EndpointInfo, responses=errors(404, 409))
async def toggle_fallback(
    body: FallbackToggle, request: Request, name: str = EndpointName, principal: Principal = Depends(require_operate)
) -> EndpointInfo:
    """Switch an endpoint to (or back from) its fallback prediction. Audited: who, when, why, from where."""
    s = serving(request)
    info = _info(s, name)
    if body.enabled and info.config.fallback is None:
        raise ApiError(409, "conflict", "this endpoint has no fallback prediction configured", field="enabled")
    await run_in_threadpool(
        audited, request, principal, "endpoint.fallback", f"endpoint:{name}",
        {"enabled": body.enabled, "reason": body.reason, "version": info.version},
    )  # fmt: skip
    try:
        ep = await run_in_threadpool(s.set_fallback, name, body.enabled, body.reason, principal.name)
    except EndpointError as e:
        _raise(e)
    return ep.info(s.is_loaded(ep))


@router.post(
    "/endpoints/{name}/predict",
    response_model=PredictResponse,
    dependencies=[Depends(require_read)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": PREDICT_BODY,
                }
            },
        }
    },
    responses=errors(404, 413, 415, 422, 429, 502, 503, 504),
)
async def predict(request: Request, name: str = EndpointName, _body: bytes = Body(b"", include_in_schema=False)):
    """Predict rows. Normally answered by the fast path in front of FastAPI; this is the same service."""
    s = serving(request)
    ep = s.endpoints.get(name)
    if ep is None:
        raise ApiError(404, "not_found", f"no endpoint {name!r}", field="endpoint")
    body = await request.body()
    if len(body) > ep.config.max_payload_bytes:
        raise ApiError(413, "payload_too_large", f"body over {ep.config.max_payload_bytes} bytes", field="body")
    rid = request.headers.get("x-request-id") or os.urandom(8).hex()
    ans = await s.predict(name, body, rid, request.scope["headers"])
    headers = {k.decode(): v.decode() for k, v in ans.headers}
    headers["x-request-id"] = rid
    return Response(ans.body, status_code=ans.status, media_type="application/json", headers=headers)

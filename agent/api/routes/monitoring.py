"""Drift, data quality, labels and model quality of an endpoint (agent/monitoring/service.py does the work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from agent.api.deps import ctx, require_operate, require_read
from agent.api.errors import ApiError
from agent.schemas import (
    MAX_UNIX_S,
    NAME_PATTERN,
    DriftBaseline,
    DriftHistory,
    DriftReportOut,
    FeedbackAccepted,
    FeedbackBatch,
    HistogramOut,
    Principal,
    QualityReport,
)

if TYPE_CHECKING:
    from agent.monitoring.service import MonitorService

router = APIRouter(tags=["monitoring"])
EndpointName = Path(pattern=NAME_PATTERN)


def monitor(request: Request) -> MonitorService:
    m = ctx(request).monitor
    if m is None:
        raise ApiError(503, "monitoring_unavailable", "monitoring is not running on this agent")
    return m


async def _run(fn, *args):
    from agent.monitoring.service import MonitorError

    try:
        return await run_in_threadpool(fn, *args)
    except MonitorError as e:
        raise ApiError(e.status, "not_found" if e.status == 404 else "invalid_request", e.detail, e.field) from None


@router.get("/endpoints/{name}/drift", response_model=DriftReportOut, dependencies=[Depends(require_read)])
async def drift(
    request: Request,
    name: str = EndpointName,
    baseline: DriftBaseline = Query("reference"),
    since: float | None = Query(None, ge=0, le=MAX_UNIX_S, description="unix seconds: merge the windows from here"),
    until: float | None = Query(None, ge=0, le=MAX_UNIX_S, description="unix seconds: merge the windows up to here"),
) -> DriftReportOut:
    """The latest closed window against the reference (skew) or the previous window (drift), or a merged range."""
    if since is not None and until is not None and until <= since:
        raise ApiError(422, "invalid_request", "until must be after since", "until")
    return await _run(monitor(request).report, name, baseline, since, until)


@router.get("/endpoints/{name}/drift/history", response_model=DriftHistory, dependencies=[Depends(require_read)])
async def drift_history(
    request: Request,
    name: str = EndpointName,
    baseline: DriftBaseline = Query("reference"),
    since: float | None = Query(None, ge=0, le=MAX_UNIX_S),
) -> DriftHistory:
    """Per feature, the drift score of each window (newest last)."""
    return await _run(monitor(request).history, name, baseline, since)


@router.get("/endpoints/{name}/drift/histogram", response_model=HistogramOut, dependencies=[Depends(require_read)])
async def drift_histogram(
    request: Request,
    name: str = EndpointName,
    feature: str = Query(..., min_length=1, max_length=200),
    since: float | None = Query(None, ge=0, le=MAX_UNIX_S),
    until: float | None = Query(None, ge=0, le=MAX_UNIX_S),
) -> HistogramOut:
    """Reference vs current distribution of one feature over the profile's frozen bins."""
    return await _run(monitor(request).histogram, name, feature, since, until)


@router.post("/endpoints/{name}/feedback", response_model=FeedbackAccepted)
async def feedback(
    body: FeedbackBatch,
    request: Request,
    name: str = EndpointName,
    principal: Principal = Depends(require_operate),
) -> FeedbackAccepted:
    """Labels or outcomes for logged predictions, by request id and row; late and out of order is fine."""
    for i, it in enumerate(body.items):
        if it.label is None and it.value is None:
            raise ApiError(422, "invalid_request", f"items[{i}]: give a label or a value", f"items.{i}.label")
    return await _run(monitor(request).feedback, name, body.items, principal.name)


@router.get("/endpoints/{name}/quality", response_model=QualityReport, dependencies=[Depends(require_read)])
async def quality(
    request: Request,
    name: str = EndpointName,
    window: float | None = Query(None, gt=0, le=30 * 86400, description="window length in seconds"),
    since: float | None = Query(None, ge=0, le=MAX_UNIX_S),
) -> QualityReport:
    """Model quality per version and window, over predictions whose labels have arrived."""
    return await _run(monitor(request).quality, name, window, since)

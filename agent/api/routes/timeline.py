"""One endpoint's incident timeline and "what changed before this?" (agent/timeline/ does the work)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from agent.api.deps import ctx, require_read
from agent.api.errors import ApiError
from agent.schemas import MAX_UNIX_S, NAME_PATTERN, Timeline, TimelineBefore

router = APIRouter(tags=["timeline"])
EndpointName = Path(pattern=NAME_PATTERN)
FINGERPRINT = r"^[A-Za-z0-9._:-]{1,128}$"


async def _run(request: Request, method: str, *args):
    from agent.timeline.service import TimelineError, TimelineService

    c = ctx(request)
    svc = TimelineService(c.reader.con, c.cfg.name)
    try:
        await run_in_threadpool(c.writer.settle)  # job rows and audit entries answered from the jobs journal
        return await run_in_threadpool(getattr(svc, method), *args)
    except TimelineError as e:
        raise ApiError(e.status, "not_found" if e.status == 404 else "invalid_request", e.detail, e.field) from None


@router.get("/endpoints/{name}/timeline", response_model=Timeline, dependencies=[Depends(require_read)])
async def timeline(
    request: Request,
    name: str = EndpointName,
    since: float | None = Query(None, ge=0, le=MAX_UNIX_S, description="unix seconds (default: until - 1 h)"),
    until: float | None = Query(None, ge=0, le=MAX_UNIX_S, description="unix seconds (default: now)"),
    step: float | None = Query(None, ge=1, le=86400, description="bucket width in seconds (default: fits the range)"),
) -> Timeline:
    """Changes (who did what, the agent's automatic actions on whose behalf), signals and aligned series."""
    return await _run(request, "timeline", name, since, until, step)


@router.get("/endpoints/{name}/timeline/before", response_model=TimelineBefore, dependencies=[Depends(require_read)])
async def before(
    request: Request,
    name: str = EndpointName,
    at: float | None = Query(None, ge=0, le=MAX_UNIX_S, description="unix seconds: the moment to explain"),
    alert: str | None = Query(None, pattern=FINGERPRINT, description="or an alert's fingerprint: when it fired"),
    window: float = Query(1800.0, gt=0, le=7 * 86400, description="seconds before the moment (default 30 min)"),
) -> TimelineBefore:
    """What changed in the `window` before `at` (or before the alert fired), newest first, with the series around."""
    if at is None and alert is None:
        raise ApiError(422, "invalid_request", "give at (unix seconds) or alert (a fingerprint)", "at")
    return await _run(request, "before", name, at, window, alert)

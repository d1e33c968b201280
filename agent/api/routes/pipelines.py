"""Pipelines and runs over HTTP (docs/pipelines.md).

- `POST /pipelines` (operator; audited) PipelineRegister -> 201 PipelineSpec; 422 names the step and field.
- `GET /pipelines`, `GET /pipelines/{name}`.
- `POST /pipelines/{name}/runs` (operator; audited) RunRequest -> 202 Run; `POST /pipelines/{name}/trigger`
  (operator; audited) PipelineTrigger -> TriggerResult (deduplicated).
- `GET /pipelines/runs?pipeline=&state=&limit=`, `GET /pipelines/runs/compare?a=&b=`, `GET /pipelines/runs/{id}`.
- `POST /pipelines/runs/{id}/cancel` (operator; audited) RunAction.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from agent.api.deps import ctx, require_operate, require_read
from agent.api.errors import ApiError
from agent.api.openapi import errors
from agent.api.routes.admin import audited
from agent.pipelines.service import PipelineError, PipelineService
from agent.schemas import Principal
from agent.schemas.common import API_PREFIX
from agent.schemas.pipelines import (
    PipelineList,
    PipelineRegister,
    PipelineSpec,
    PipelineTrigger,
    Run,
    RunAction,
    RunCompare,
    RunList,
    RunRequest,
    RunState,
    TriggerResult,
)

router = APIRouter(tags=["pipelines"])
NAME = r"^[A-Za-z0-9_-]{1,64}$"


def _svc(request: Request) -> PipelineService:
    svc = getattr(ctx(request), "pipelines", None)
    if svc is None:
        raise ApiError(503, "unavailable", "pipelines are not running on this agent (they need [jobs] enabled)")
    return svc


async def _call(fn, *args, **kw):
    try:
        return await run_in_threadpool(lambda: fn(*args, **kw))
    except PipelineError as e:
        raise ApiError(e.status, e.error, e.detail, e.field) from None


@router.post("/pipelines", response_model=PipelineSpec, status_code=201, responses=errors(422, 503))
async def register(body: PipelineRegister, request: Request, response: Response,
                   principal: Principal = Depends(require_operate)) -> PipelineSpec:  # fmt: skip
    """Register (a new version of) a pipeline from its file's text; refused naming the step and field."""
    svc = _svc(request)
    spec = await _call(
        svc.register,
        body.content,
        body.path,
        principal.name,
        audit=lambda d: audited(request, principal, "pipeline.register", f"pipeline:{d['pipeline']}", d),
    )
    response.headers["Location"] = f"{API_PREFIX}/pipelines/{spec.name}"
    return spec


@router.get("/pipelines", response_model=PipelineList, dependencies=[Depends(require_read)])
async def list_pipelines(request: Request) -> PipelineList:
    return await _call(_svc(request).list)


# The runs routes come before /pipelines/{name}: "runs" is not a pipeline name (spec.py refuses it).
@router.get("/pipelines/runs", response_model=RunList, dependencies=[Depends(require_read)])
async def list_runs(request: Request, pipeline: str | None = Query(None, pattern=NAME), state: RunState | None = None,
                    limit: int = Query(100, ge=1, le=10_000)) -> RunList:  # fmt: skip
    """Newest first."""
    return await _call(_svc(request).list_runs, pipeline, state, limit)


@router.get("/pipelines/runs/compare", response_model=RunCompare, responses=errors(404),
            dependencies=[Depends(require_read)])  # fmt: skip
async def compare(request: Request, a: str = Query(max_length=64), b: str = Query(max_length=64)) -> RunCompare:
    """Two runs side by side: params, metrics (per step), steps."""
    return await _call(_svc(request).compare, a, b)


@router.get("/pipelines/runs/{run_id}", response_model=Run, responses=errors(404), dependencies=[Depends(require_read)])
async def get_run(run_id: str, request: Request) -> Run:
    return await _call(_svc(request).get_run, run_id)


@router.post("/pipelines/runs/{run_id}/cancel", response_model=Run, responses=errors(404, 409, 503))
async def cancel_run(run_id: str, request: Request, body: RunAction | None = None,
                     principal: Principal = Depends(require_operate)) -> Run:  # fmt: skip
    """Stop a run: its running jobs are cancelled, its pending steps never start."""
    svc = _svc(request)
    note = body.reason if body else ""
    return await _call(
        svc.cancel,
        run_id,
        principal.name,
        note,
        audit=lambda d: audited(request, principal, "pipeline.cancel", f"run:{run_id}", d),
    )


@router.get("/pipelines/{name}", response_model=PipelineSpec, responses=errors(404),
            dependencies=[Depends(require_read)])  # fmt: skip
async def get_pipeline(name: str, request: Request) -> PipelineSpec:
    return await _call(_svc(request).get, name)


@router.post("/pipelines/{name}/runs", response_model=Run, status_code=202, responses=errors(404, 409, 422, 503))
async def start_run(name: str, request: Request, body: RunRequest | None = None,
                    principal: Principal = Depends(require_operate)) -> Run:  # fmt: skip
    """Start a run (answered once it is recorded; it goes on in the agent)."""
    svc = _svc(request)
    return await _call(
        svc.start_run,
        name,
        body or RunRequest(),
        principal.name,
        audit=lambda d: audited(request, principal, "pipeline.run", f"pipeline:{name}", d),
    )


@router.post("/pipelines/{name}/trigger", response_model=TriggerResult, responses=errors(404, 503))
async def trigger(name: str, request: Request, body: PipelineTrigger | None = None,
                  principal: Principal = Depends(require_operate)) -> TriggerResult:  # fmt: skip
    """An outside event: one run per `event` key; none while a run is active or within the min interval."""
    svc = _svc(request)
    b = body or PipelineTrigger()
    await _call(svc.get, name)
    await run_in_threadpool(audited, request, principal, "pipeline.trigger", f"pipeline:{name}",
                            {"event": b.event, "params": b.params})  # fmt: skip
    detail = f"event {b.event} by {principal.name}"
    return await _call(svc.trigger, name, "manual", f"external:{name}:{b.event}", detail, b.params)

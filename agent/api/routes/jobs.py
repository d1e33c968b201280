"""Jobs and quotas over HTTP (docs/jobs.md).

- `POST /jobs` (operator; audited) JobSubmit -> 201 Job; 409 `never_fits` when the pipeline's quota or the
  host can never hold the request; `GET /jobs?state=&pipeline=&limit=&since=`; `GET /jobs/{id}`;
  `GET /jobs/{id}/attempts`; `GET /jobs/{id}/logs?stream=&offset=&max_bytes=`.
- `POST /jobs/{id}/cancel`, `POST /jobs/{id}/requeue` (operator; audited) with a JobAction body.
- `GET /quotas`, `GET /quotas/{pipeline}`; `PUT /quotas/{pipeline}` QuotaSpec, `DELETE /quotas/{pipeline}`
  (admin; audited).

Every mutation: authorize -> checks -> audit (fail closed) -> act -> answer (a submit's audit entry and job
row are kept together: one jobs-journal record, agent/jobs/store.py). Bodies are capped by the gate
(agent/api/gate.py: submit 1 MiB, actions and quotas 64 KiB).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from agent.api.deps import client_of, ctx, require_admin, require_operate, require_read
from agent.api.errors import ApiError
from agent.api.openapi import errors
from agent.api.routes.admin import audited
from agent.audit import AuditLog, AuditUnavailable, PendingEntry
from agent.jobs.service import JobError, JobService
from agent.schemas import Principal
from agent.schemas.jobs import Job, JobAction, JobList, JobLog, JobState, JobSubmit, QuotaList, QuotaSpec, QuotaUsage

router = APIRouter(tags=["jobs"])
PIPELINE = r"^[A-Za-z0-9_.-]{1,64}$"
PipelineName = Path(pattern=PIPELINE, description="a pipeline name (1-64 of A-Z a-z 0-9 _ . -)")


def _svc(request: Request) -> JobService:
    svc = getattr(ctx(request), "jobs", None)
    if svc is None:
        raise ApiError(503, "unavailable", "jobs are not enabled on this agent ([jobs] enabled = false)")
    return svc


async def call_jobs(fn, *args):
    """`fn(*args)` on the thread pool; a JobError becomes its HTTP error (the jobs and batch routes)."""
    try:
        return await run_in_threadpool(fn, *args)
    except JobError as e:
        raise ApiError(e.status, e.error, e.detail, e.field) from None


@router.post("/jobs", response_model=Job, status_code=201, responses=errors(409, 503))
async def submit(body: JobSubmit, request: Request, principal: Principal = Depends(require_operate)) -> Job:
    """Queue a job; answered once it is durable (journaled: it survives a crash of the agent from here on)."""
    svc = _svc(request)
    detail = {"pipeline": body.pipeline, "command": body.command[:16], "cpu": body.cpu, "mem": body.mem,
              "gpus": body.gpus, "time_limit": body.time_limit, "reason": body.reason}  # fmt: skip

    audit = ctx(request).audit

    def entry() -> tuple[AuditLog, PendingEntry]:
        return audit, audit.prepare(principal, "job.submit", f"pipeline:{body.pipeline}", detail, client_of(request))

    def audited_submit() -> Job:  # one hop to the thread pool: a submit's cost is mostly waits
        try:  # checks, then the job row and its audit entry in one transaction (fail closed)
            return svc.submit(body, principal.name, entry)
        except AuditUnavailable as e:
            raise ApiError(503, "audit_unavailable", str(e)) from None

    return await call_jobs(audited_submit)


@router.get("/jobs", response_model=JobList, dependencies=[Depends(require_read)])
async def list_jobs(
    request: Request,
    state: JobState | None = None,
    pipeline: str | None = Query(None, pattern=PIPELINE),
    limit: int = Query(100, ge=1, le=10_000),
    since: float | None = Query(None, ge=0, description="submitted at or after (unix seconds)"),
) -> JobList:
    """Active jobs first, then the newest."""
    return await call_jobs(_svc(request).list, state, pipeline, limit, since)


@router.get("/jobs/{job_id}", response_model=Job, responses=errors(404), dependencies=[Depends(require_read)])
async def get_job(job_id: str, request: Request) -> Job:
    return await call_jobs(_svc(request).get, job_id)


@router.get(
    "/jobs/{job_id}/attempts", response_model=list[Job], responses=errors(404), dependencies=[Depends(require_read)]
)
async def job_attempts(job_id: str, request: Request) -> list[Job]:
    """Every attempt of the job (retries and requeues), oldest first."""
    return await call_jobs(_svc(request).attempts, job_id)


@router.get("/jobs/{job_id}/logs", response_model=JobLog, responses=errors(404), dependencies=[Depends(require_read)])
async def job_logs(
    job_id: str,
    request: Request,
    stream: Literal["stdout", "stderr"] = "stdout",
    offset: int = Query(0, ge=0, le=2**62),
    max_bytes: int = Query(65536, ge=1, le=1 << 20),
    task: int | None = Query(None, ge=0, le=9_999, description="a job array's task: its own output"),
) -> JobLog:
    """Output from `offset`; follow by asking again from `next_offset` until `eof`."""
    return await call_jobs(_svc(request).logs, job_id, stream, offset, max_bytes, task)


@router.post("/jobs/{job_id}/cancel", response_model=Job, responses=errors(404, 409, 503))
async def cancel(
    job_id: str, request: Request, body: JobAction | None = None, principal: Principal = Depends(require_operate)
) -> Job:
    """CANCELLED (by the caller) at once when pending; a running job is stopped (SIGTERM, then SIGKILL after
    the grace) and answered CANCELLED once over, or still RUNNING with reason "cancelling"."""
    svc = _svc(request)
    job = await call_jobs(svc.get, job_id)
    if job.state not in ("PENDING", "RUNNING"):
        raise ApiError(409, "conflict", f"job {job_id} is already {job.state}", "id")
    note = body.reason if body else ""
    await run_in_threadpool(audited, request, principal, "job.cancel", f"job:{job_id}",
                            {"pipeline": job.pipeline, "state": job.state, "reason": note})  # fmt: skip
    return await call_jobs(svc.cancel, job_id, principal.name, note)


@router.post("/jobs/{job_id}/requeue", response_model=Job, responses=errors(404, 409, 503))
async def requeue(
    job_id: str, request: Request, body: JobAction | None = None, principal: Principal = Depends(require_operate)
) -> Job:
    """A finished job again, as its next attempt (same id), PENDING."""
    svc = _svc(request)
    job = await call_jobs(svc.get, job_id)
    if job.state in ("PENDING", "RUNNING"):
        raise ApiError(409, "conflict", f"job {job_id} is {job.state}: only a finished job is requeued", "id")
    note = body.reason if body else ""
    await run_in_threadpool(audited, request, principal, "job.requeue", f"job:{job_id}",
                            {"pipeline": job.pipeline, "attempt": job.attempt + 1, "reason": note})  # fmt: skip
    return await call_jobs(svc.requeue, job_id, principal.name, note)


# --------------------------------------------------------------------------- quotas


@router.get("/quotas", response_model=QuotaList, dependencies=[Depends(require_read)])
async def quotas(request: Request) -> QuotaList:
    """Every configured pipeline and every pipeline with active jobs: usage against its quota."""
    return await call_jobs(_svc(request).quota_list)


@router.get("/quotas/{pipeline}", response_model=QuotaUsage, dependencies=[Depends(require_read)])
async def quota(request: Request, pipeline: str = PipelineName) -> QuotaUsage:
    return await call_jobs(_svc(request).quota_usage, pipeline)


@router.put("/quotas/{pipeline}", response_model=QuotaUsage, responses=errors(503))
async def put_quota(
    body: QuotaSpec, request: Request, pipeline: str = PipelineName, principal: Principal = Depends(require_admin)
) -> QuotaUsage:
    """Set a pipeline's quota (overrides agent.toml until deleted); running jobs keep running."""
    svc = _svc(request)
    await run_in_threadpool(audited, request, principal, "quota.put", f"pipeline:{pipeline}",
                            body.model_dump(mode="json"))  # fmt: skip
    return await call_jobs(svc.put_quota, pipeline, body, principal.name)


@router.delete("/quotas/{pipeline}", status_code=204, responses=errors(404, 503))
async def delete_quota(
    request: Request, pipeline: str = PipelineName, principal: Principal = Depends(require_admin)
) -> Response:
    """Drop a pipeline's quota set here or in agent.toml: the default quota applies to it again."""
    svc = _svc(request)
    if pipeline not in svc.quotas.pipelines():
        raise ApiError(404, "not_found", f"pipeline {pipeline!r} has no quota set", "pipeline")
    await run_in_threadpool(audited, request, principal, "quota.delete", f"pipeline:{pipeline}", {})
    await call_jobs(svc.delete_quota, pipeline, principal.name)
    return Response(status_code=204)

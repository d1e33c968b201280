"""Batch transform over HTTP (docs/batch.md).

- `POST /batch` (operator; audited `batch.submit`) BatchSubmit -> 201 Batch: checked (model, input, columns,
  output), its spec committed to disk, its job submitted to the `batch` pipeline.
- `GET /batch`, `GET /batch/{id}`: state, rows done/total, rows/s, ETA, per-file state, failed files.
- `POST /batch/{id}/resume`, `POST /batch/{id}/cancel` (operator; audited) with a BatchAction body.

Bodies are capped by the gate (agent/api/gate.py: 64 KiB).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool

from agent.api.deps import ctx, require_operate, require_read
from agent.api.errors import ApiError
from agent.api.openapi import errors
from agent.api.routes.admin import audited
from agent.api.routes.jobs import call_jobs
from agent.batch.service import BatchService
from agent.schemas import Principal
from agent.schemas.batch import Batch, BatchAction, BatchList, BatchSubmit

router = APIRouter(tags=["batch"])
BatchId = Path(pattern=r"^b-[0-9a-f]{10}$", description="a batch id (b- and 10 hex digits)")


def _svc(request: Request) -> BatchService:
    svc = getattr(ctx(request), "batch", None)
    if svc is None:
        raise ApiError(503, "unavailable", "batch transform runs as jobs: jobs are not enabled on this agent")
    return svc


@router.post("/batch", response_model=Batch, status_code=201, responses=errors(404, 409, 503))
async def submit(body: BatchSubmit, request: Request, principal: Principal = Depends(require_operate)) -> Batch:
    """Score a dataset; answered once the batch and its job are committed."""
    svc = _svc(request)
    target = f"endpoint:{body.endpoint}" if body.endpoint else f"model:{body.model}:{body.version}"
    detail = {"input": body.input, "output": body.output, "rows_per_batch": body.rows_per_batch,
              "log_sample_rate": body.log_sample_rate, "reason": body.reason}  # fmt: skip

    def audited_submit() -> Batch:
        audited(request, principal, "batch.submit", target, detail)
        return svc.submit(body, principal.name)

    return await call_jobs(audited_submit)


@router.get("/batch", response_model=BatchList, dependencies=[Depends(require_read)])
async def list_batches(request: Request) -> BatchList:
    """Newest first."""
    return await call_jobs(_svc(request).list)


@router.get("/batch/{batch_id}", response_model=Batch, responses=errors(404), dependencies=[Depends(require_read)])
async def get_batch(request: Request, batch_id: str = BatchId) -> Batch:
    return await call_jobs(_svc(request).get, batch_id)


async def _act(request: Request, body: BatchAction | None, batch_id: str, principal: Principal, action: str) -> Batch:
    """resume / cancel: the batch must exist, the action is audited, then done."""
    svc = _svc(request)
    await call_jobs(svc.get, batch_id)
    note = body.reason if body else ""
    await run_in_threadpool(audited, request, principal, f"batch.{action}", f"batch:{batch_id}", {"reason": note})
    return await call_jobs(getattr(svc, action), batch_id, principal.name, note)


@router.post("/batch/{batch_id}/resume", response_model=Batch, responses=errors(404, 409, 503))
async def resume(
    request: Request, body: BatchAction | None = None, batch_id: str = BatchId,
    principal: Principal = Depends(require_operate),
) -> Batch:  # fmt: skip
    """Run a stopped batch again: its next job attempt skips every range already written."""
    return await _act(request, body, batch_id, principal, "resume")


@router.post("/batch/{batch_id}/cancel", response_model=Batch, responses=errors(404, 409, 503))
async def cancel(
    request: Request, body: BatchAction | None = None, batch_id: str = BatchId,
    principal: Principal = Depends(require_operate),
) -> Batch:  # fmt: skip
    """Stop a queued or running batch (its job); written parts stay, `resume` goes on from them."""
    return await _act(request, body, batch_id, principal, "cancel")

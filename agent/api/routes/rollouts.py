"""Rollouts and datasets over HTTP (docs/rollouts.md).

- `POST /endpoints/{name}/rollouts` (operator): start; 201 with the rollout. A failed validation gate is
  a 422 whose `detail` is the GateResult and `field` "gate" (the rollout is recorded as rejected).
- `GET /rollouts[?active=true&endpoint=]`, `GET /rollouts/{id}` (any role).
- `POST /rollouts/{id}/{action}` with a `RolloutAction` body: approve, reject, promote (approver; never the
  rollout's author under the two-person rule; approve/reject name the step, a step that has moved on is 409
  "stale"), pause, resume, abort, rollback (operator; rollback needs no approval).
- `POST /datasets/{name}/versions` (operator, multipart part `data`: a Parquet file), `GET /datasets`,
  `GET /datasets/{name}`.

Every mutation: authorize -> checks -> audit (fail closed) -> act -> answer; the engine calls the audit hook
once its checks passed, under its lock, so what is audited is what happens.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from agent.api.deps import client_of, ctx, require_operate, require_read
from agent.api.errors import ApiError
from agent.api.multipart import Part, receive
from agent.api.openapi import BINARY, errors, multipart_body
from agent.api.routes.admin import audited
from agent.api.routes.models import MAX_DATA_BYTES
from agent.registry.store import RegistryError, check_name
from agent.rollouts.engine import ACTIONS, RolloutEngine, RolloutError
from agent.schemas import API_PREFIX, NAME_PATTERN, DatasetInfo, Principal, RolloutAction, RolloutCreate, RolloutOut

router = APIRouter(tags=["rollouts"])


def _engine(request: Request) -> RolloutEngine:
    eng = getattr(ctx(request), "rollouts", None)
    if eng is None:
        raise ApiError(503, "unavailable", "rollouts are not running on this agent")
    return eng


def _api(e: RolloutError | RegistryError) -> ApiError:
    return ApiError(e.status, e.error, e.detail, e.field)


def _name(value: str) -> str:
    try:
        return check_name(value)
    except RegistryError as e:
        raise _api(e) from None


# --------------------------------------------------------------------------- rollouts


@router.post("/endpoints/{name}/rollouts", response_model=RolloutOut, status_code=201, responses=errors(404, 409))
async def start_rollout(
    body: RolloutCreate,
    request: Request,
    response: Response,
    name: str,
    principal: Principal = Depends(require_operate),
) -> RolloutOut:
    """Start moving an endpoint to `candidate_version`: gate, candidate loaded, then the plan's first step."""
    _name(name)
    eng = _engine(request)
    client = client_of(request)

    def run() -> RolloutOut:
        try:
            return eng.create(
                name, body, principal, client,
                audit=lambda detail: audited(request, principal, "rollout.start", f"endpoint:{name}", detail),
            )  # fmt: skip
        except RolloutError as e:
            raise _api(e) from None

    out = await run_in_threadpool(run)
    response.headers["Location"] = f"{API_PREFIX}/rollouts/{out.id}"
    return out


@router.get("/rollouts", response_model=list[RolloutOut], dependencies=[Depends(require_read)])
async def list_rollouts(
    request: Request,
    active: bool | None = Query(None, description="true: only rollouts still running; false: only ended ones"),
    endpoint: str | None = Query(None, pattern=NAME_PATTERN),
) -> list[RolloutOut]:
    """Rollouts, newest first."""
    return _engine(request).list(active, endpoint)


@router.get(
    "/rollouts/{rollout_id}", response_model=RolloutOut, dependencies=[Depends(require_read)], responses=errors(404)
)
async def get_rollout(rollout_id: str, request: Request) -> RolloutOut:
    try:
        return _engine(request).get(rollout_id)
    except RolloutError as e:
        raise _api(e) from None


@router.post("/rollouts/{rollout_id}/{action}", response_model=RolloutOut, responses=errors(404, 409))
async def rollout_action(
    rollout_id: str,
    action: str,
    request: Request,
    body: RolloutAction | None = None,
    principal: Principal = Depends(require_read),
) -> RolloutOut:
    """approve / reject / promote (approver) or pause / resume / abort / rollback (operator); audited."""
    eng = _engine(request)
    if action not in ACTIONS:
        raise ApiError(404, "not_found", f"no action {action!r}: one of {', '.join(ACTIONS)}", "action")
    body = body or RolloutAction()
    client = client_of(request)

    def run() -> RolloutOut:
        try:
            return eng.act(
                rollout_id, action, body, principal, client,
                audit=lambda detail: audited(request, principal, f"rollout.{action}", f"rollout:{rollout_id}", detail),
            )  # fmt: skip
        except RolloutError as e:
            raise _api(e) from None

    return await run_in_threadpool(run)


# --------------------------------------------------------------------------- datasets


def _datasets(request: Request) -> Any:
    ds = _engine(request).datasets
    if ds is None:
        raise ApiError(503, "unavailable", "datasets are not available on this agent")
    return ds


def dataset_parts() -> list[Part]:
    """The one part of a dataset registration (the gate caps the whole body at it)."""
    return [Part("data", MAX_DATA_BYTES, required=True, what="a Parquet file")]


@router.post(
    "/datasets/{name}/versions",
    response_model=DatasetInfo,
    status_code=201,
    responses=errors(409, 415),
    openapi_extra=multipart_body({"data": BINARY}, ["data"], "`data`: a Parquet file"),
)
async def register_dataset(
    name: str, request: Request, response: Response, principal: Principal = Depends(require_operate)
) -> DatasetInfo:
    """Register a Parquet file (multipart part `data`) as the next immutable version of a dataset."""
    _name(name)
    ds = _datasets(request)
    reg = ctx(request).registry
    tmp = reg.tmp_dir if reg is not None else ds.root
    up = await receive(request, tmp, dataset_parts(), "data")

    def register() -> DatasetInfo:
        try:
            return ds.register(
                name, up.files["data"], principal.name,
                audit=lambda detail: audited(request, principal, "dataset.register", f"dataset:{name}", detail),
            )  # fmt: skip
        except RegistryError as e:
            raise _api(e) from None

    try:
        info = await run_in_threadpool(register)
    finally:
        up.discard()  # moved away on success
    response.headers["Location"] = f"{API_PREFIX}/datasets/{name}"
    return info


@router.get("/datasets", response_model=list[DatasetInfo], dependencies=[Depends(require_read)])
async def list_datasets(request: Request) -> list[DatasetInfo]:
    return _datasets(request).list()


@router.get(
    "/datasets/{name}", response_model=list[DatasetInfo], dependencies=[Depends(require_read)], responses=errors(404)
)
async def dataset_versions(name: str, request: Request) -> list[DatasetInfo]:
    ds = _datasets(request)
    out = [d for d in ds.list() if d.name == name]
    if not out:
        raise ApiError(404, "not_found", f"no dataset named {name!r}", "name")
    return out

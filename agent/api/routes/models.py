"""The model registry over HTTP: register (multipart upload), list, show, profile, artifact, aliases.

Uploads are streamed to `<data_dir>/tmp` as they arrive (hashed on the way, never held in memory)
and moved into the registry on success. Every mutation: authorize -> audit (fail closed) -> act ->
answer; the registry calls the audit hook once the version number is known and before the version
becomes visible.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError

from agent.api.deps import ctx, require_operate, require_read
from agent.api.errors import ApiError
from agent.api.multipart import Part, receive
from agent.api.openapi import BINARY, errors, multipart_body
from agent.api.routes.admin import audited
from agent.registry.store import (
    ARTIFACT_FILES,
    Registry,
    RegistryError,
    check_name,
    max_artifact_bytes,
)
from agent.schemas import (
    AliasEvent,
    AliasMove,
    ModelSummary,
    ModelVersion,
    ModelVersionCreate,
    Principal,
)

router = APIRouter(tags=["models"])

T = TypeVar("T")

MAX_METADATA_BYTES = 16 * 1024 * 1024
# Reference and validation data together (Parquet is compact: 1M rows x 25 columns is ~100 MiB).
MAX_DATA_BYTES = 512 * 1024 * 1024
DATA_PARTS = ("reference", "validation")
DIGEST_HEADER = "X-Watchkeeper-Digest"


def _registry(request: Request) -> Registry:
    reg = getattr(ctx(request), "registry", None)
    if reg is None:
        raise ApiError(503, "unavailable", "the model registry is not running on this agent")
    return reg


def _name(value: str, field: str = "name") -> str:
    try:
        return check_name(value, field)
    except RegistryError as e:
        raise _api(e) from None


def _api(e: RegistryError) -> ApiError:
    return ApiError(e.status, e.error, e.detail, e.field)


def _call(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    try:
        return fn(*args, **kw)
    except RegistryError as e:
        raise _api(e) from None


# --------------------------------------------------------------------------- streaming upload


def upload_parts() -> list[Part]:
    """The parts of a model registration (the gate caps the whole body at their sum)."""
    return [
        Part("metadata", MAX_METADATA_BYTES, required=True, text=True, what="JSON"),
        Part("artifact", max_artifact_bytes(), required=True, sha256=True, what="the model file"),
        *(Part(name, MAX_DATA_BYTES, what=f"the {name} data") for name in DATA_PARTS),
    ]


def _parse_metadata(text: str) -> ModelVersionCreate:
    def no_constants(c: str) -> None:
        raise ValueError(f"{c} is not valid JSON")

    try:
        raw = json.loads(text, parse_constant=no_constants)
    except ValueError as e:
        raise ApiError(422, "invalid_request", f"metadata is not valid JSON: {e}", "metadata") from None
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_request", "metadata must be a JSON object", "metadata")
    try:
        return ModelVersionCreate.model_validate(raw)
    except ValidationError as e:
        errors = [
            {"field": "metadata." + ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in e.errors()
        ]
        raise ApiError(422, "invalid_request", errors, errors[0]["field"] if errors else "metadata") from None


def _with_fitted_profile(meta: ModelVersionCreate, data: dict[str, Path]) -> ModelVersionCreate:
    """Fit the reference profile from the uploaded reference data; check validation data for skew against it."""
    from agent.monitoring.fit import FitError, profile_for_registration

    if "reference" not in data:
        raise ApiError(422, "invalid_request", "validation data needs reference data to compare with", "validation")
    if meta.profile is not None:
        raise ApiError(422, "invalid_request", "give a profile in metadata or reference data, not both", "reference")
    try:
        profile = profile_for_registration(meta.signature, data["reference"], data.get("validation"))
    except FitError as e:
        raise ApiError(422, "invalid_request", str(e), e.field) from None
    return meta.model_copy(update={"profile": profile})


# --------------------------------------------------------------------------- routes


@router.post(
    "/models/{name}/versions",
    response_model=ModelVersion,
    status_code=201,
    responses=errors(409, 415),
    openapi_extra=multipart_body(
        {
            "metadata": {"$ref": "#/components/schemas/ModelVersionCreate"},
            "artifact": BINARY,
            "reference": {**BINARY, "description": "Parquet: the reference data (fits the drift profile)"},
            "validation": {**BINARY, "description": "Parquet: checked for skew against the reference"},
        },
        ["metadata", "artifact"],
        "`metadata` (JSON ModelVersionCreate) and `artifact` (the model file); optional Parquet data.",
    ),
)
async def register_version(
    name: str, request: Request, response: Response, principal: Principal = Depends(require_operate)
) -> ModelVersion:
    """Register a new version: multipart `metadata` (JSON `ModelVersionCreate`) and `artifact` (the file)."""
    _name(name)
    reg = _registry(request)
    up = await receive(request, reg.tmp_dir, upload_parts(), blame="artifact")
    try:

        def register() -> ModelVersion:
            meta = _parse_metadata(up.texts["metadata"])
            data = {k: v for k, v in up.files.items() if k in DATA_PARTS}
            if data:
                meta = _with_fitted_profile(meta, data)
            return _call(
                reg.register,
                name,
                meta,
                up.files["artifact"],
                principal.name,
                digest=up.digests["artifact"],
                audit=lambda detail: audited(request, principal, "model.register", f"model:{name}", detail),
            )

        mv = await run_in_threadpool(register)
    finally:
        up.discard()  # the artifact was moved away on success
    response.headers["Location"] = f"{request.url.path}/{mv.version}"
    return mv


@router.get("/models", response_model=list[ModelSummary], dependencies=[Depends(require_read)])
async def list_models(request: Request) -> list[ModelSummary]:
    return _registry(request).list_models()


@router.get(
    "/models/{name}", response_model=list[ModelVersion], dependencies=[Depends(require_read)], responses=errors(404)
)
async def list_versions(name: str, request: Request) -> list[ModelVersion]:
    return _call(_registry(request).list_versions, name)


@router.get(
    "/models/{name}/versions",
    response_model=list[ModelVersion],
    dependencies=[Depends(require_read)],
    responses=errors(404),
)
async def list_versions_too(name: str, request: Request) -> list[ModelVersion]:
    return _call(_registry(request).list_versions, name)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelVersion,
    dependencies=[Depends(require_read)],
    responses=errors(404),
)
async def get_version(name: str, version: int, request: Request) -> ModelVersion:
    return _call(_registry(request).get, name, version)


@router.get(
    "/models/{name}/versions/{version}/profile",
    response_model=dict,
    dependencies=[Depends(require_read)],
    responses=errors(404),
)
async def get_profile(name: str, version: int, request: Request) -> dict:
    profile = await run_in_threadpool(_call, _registry(request).profile, name, version)
    if profile is None:
        raise ApiError(404, "not_found", f"{name} version {version} was registered without a profile", "profile")
    return profile


@router.get(
    "/models/{name}/versions/{version}/artifact",
    response_class=Response,
    dependencies=[Depends(require_read)],
    responses={
        200: {
            "description": f"The artifact's bytes; their sha256 in {DIGEST_HEADER}",
            "content": {"application/octet-stream": {"schema": BINARY}},
            "headers": {DIGEST_HEADER: {"schema": {"type": "string"}, "description": "sha256 of the bytes"}},
        },
        **errors(404, 410),
    },
)
async def get_artifact(name: str, version: int, request: Request) -> FileResponse:
    reg = _registry(request)
    mv = _call(reg.get, name, version)
    path = reg.artifact_path(name, version)
    if not await run_in_threadpool(os.path.isfile, path):
        raise ApiError(410, "artifact_missing", f"the artifact of {name} version {version} is missing on disk")
    ext = ARTIFACT_FILES[mv.format].rsplit(".", 1)[-1]
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{name}-{version}.{ext}",
        headers={DIGEST_HEADER: mv.digest},
    )


@router.get(
    "/models/{name}/aliases", response_model=dict[str, int], dependencies=[Depends(require_read)], responses=errors(404)
)
async def get_aliases(name: str, request: Request) -> dict[str, int]:
    return _call(_registry(request).aliases, name)


@router.get(
    "/models/{name}/aliases/history",
    response_model=list[AliasEvent],
    dependencies=[Depends(require_read)],
    responses=errors(404),
)
async def alias_history(
    name: str, request: Request, alias: str | None = Query(None, description="only this alias")
) -> list[AliasEvent]:
    return await run_in_threadpool(_call, _registry(request).alias_history, name, alias)


@router.put("/models/{name}/aliases/{alias}", response_model=AliasEvent, responses=errors(404, 409))
async def move_alias(
    name: str, alias: str, body: AliasMove, request: Request, principal: Principal = Depends(require_operate)
) -> AliasEvent:
    """Point an alias at a version (an append-only event; moving it where it points changes nothing)."""
    _name(name)
    reg = _registry(request)
    eng = getattr(ctx(request), "rollouts", None)

    def move() -> AliasEvent:
        # An endpoint that follows this alias under an active rollout: 409 naming the rollout (its verbs are
        # the way), checked and moved under the engine's change lock so no rollout starts in between.
        with eng.change_lock() if eng is not None else nullcontext():
            if eng is not None:
                from agent.rollouts.engine import RolloutError

                try:
                    eng.refuse_alias_move(name, alias)
                except RolloutError as e:
                    raise ApiError(e.status, e.error, e.detail, e.field) from None
            return _call(
                reg.move_alias,
                name,
                alias,
                body,
                principal.name,
                audit=lambda detail: audited(request, principal, "model.alias", f"model:{name}", detail),
            )

    return await run_in_threadpool(move)

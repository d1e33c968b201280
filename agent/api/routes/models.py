"""The model registry over HTTP: register (multipart upload), list, show, profile, artifact, aliases.

Uploads are streamed to `<data_dir>/tmp` as they arrive (hashed on the way, never held in memory)
and moved into the registry on success. Every mutation: authorize -> audit (fail closed) -> act ->
answer; the registry calls the audit hook once the version number is known and before the version
becomes visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from agent.api.deps import ctx, require_operate, require_read
from agent.api.errors import ApiError
from agent.api.routes.admin import audited
from agent.api.schemas import (
    AliasEvent,
    AliasMove,
    ModelSummary,
    ModelVersion,
    ModelVersionCreate,
    Principal,
)
from agent.registry.store import (
    ARTIFACT_FILES,
    Registry,
    RegistryError,
    check_name,
    max_artifact_bytes,
)

router = APIRouter(tags=["models"])

T = TypeVar("T")

MAX_METADATA_BYTES = 16 * 1024 * 1024
# Reference and validation data together (Parquet is compact: 1M rows x 25 columns is ~100 MiB).
MAX_DATA_BYTES = 512 * 1024 * 1024
DATA_PARTS = ("reference", "validation")
# Multipart boundaries and part headers on top of the two parts' contents.
_ENVELOPE_BYTES = 64 * 1024
# Received bytes are handed to the parser (and the disk) in slices of about this size, off the loop.
_FEED_BYTES = 1024 * 1024
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


class _Upload:
    """Receives `multipart/form-data` with parts `metadata` (JSON text) and `artifact` (the file), and
    optionally `reference` and `validation` (Parquet data: the agent fits the version's reference profile
    from the first and checks the second for skew against it).

    The artifact's bytes go straight to a file in the registry's tmp dir and into a sha256; the
    parser is fed from a worker thread in ~1 MiB slices, so neither disk writes nor hashing run on
    the event loop.
    """

    def __init__(self, tmp_dir: Path, boundary: bytes, max_bytes: int) -> None:
        self.path = tmp_dir / f"upload-{uuid.uuid4().hex}.part"
        self.max_bytes = max_bytes
        self.size = 0
        self.digest: str | None = None
        self.metadata: str | None = None
        self._hash = hashlib.sha256()
        self.data: dict[str, Path] = {}  # reference / validation parquet files
        self._data_size = 0
        self._fh: Any = None
        self._part: str | None = None
        self._seen: set[str] = set()
        self._meta = bytearray()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    # -- parser callbacks (worker thread)

    def _on_part_begin(self) -> None:
        self._part, self._disposition = None, b""

    def _on_header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("latin-1")
        if name not in ("artifact", "metadata", *DATA_PARTS):
            raise ApiError(
                422,
                "invalid_request",
                f"unexpected form field {name!r}: send 'metadata' (JSON), 'artifact' (the file) and optionally "
                "'reference' / 'validation' (Parquet)",
                field=name or "body",
            )
        if name in self._seen:
            raise ApiError(422, "invalid_request", f"form field {name!r} given twice", field=name)
        self._seen.add(name)
        self._part = name
        if name == "artifact":
            self._fh = open(self.path, "xb")  # noqa: SIM115 - closed in _on_part_end / close()
        elif name in DATA_PARTS:
            self.data[name] = self.path.with_suffix(f".{name}.parquet")
            self._fh = open(self.data[name], "xb")  # noqa: SIM115 - closed in _on_part_end / close()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part == "artifact":
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise ApiError(
                    413, "too_large", f"the artifact is larger than the limit of {self.max_bytes} bytes", "artifact"
                )
            self._hash.update(chunk)
            self._fh.write(chunk)
        elif self._part in DATA_PARTS:
            self._data_size += len(chunk)
            if self._data_size > MAX_DATA_BYTES:
                raise ApiError(413, "too_large", f"reference/validation data over {MAX_DATA_BYTES} bytes", self._part)
            self._fh.write(chunk)
        else:
            if len(self._meta) + len(chunk) > MAX_METADATA_BYTES:
                raise ApiError(413, "too_large", f"metadata is larger than {MAX_METADATA_BYTES} bytes", "metadata")
            self._meta.extend(chunk)

    def _on_part_end(self) -> None:
        if self._part == "artifact":
            self._fh.close()
            self._fh = None
            self.digest = self._hash.hexdigest()
        elif self._part in DATA_PARTS:
            self._fh.close()
            self._fh = None
        elif self._part == "metadata":
            try:
                self.metadata = self._meta.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(422, "invalid_request", "metadata is not UTF-8 text", "metadata") from None
        self._part = None

    def _on_end(self) -> None:
        self._ended = True

    # -- feeding

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except ApiError:
            raise
        except Exception as e:  # python-multipart's parse errors
            raise ApiError(422, "invalid_request", f"malformed multipart body: {e}", "body") from None

    def finish(self) -> None:
        self._parser.finalize()
        if not self._ended:
            raise ApiError(422, "invalid_request", "the multipart body ended early", "body")
        if self.metadata is None:
            raise ApiError(422, "invalid_request", "form field 'metadata' (JSON) is required", "metadata")
        if self.digest is None:
            raise ApiError(422, "invalid_request", "form field 'artifact' (the model file) is required", "artifact")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        """Remove every temporary file of this upload (the artifact is moved away on success)."""
        for p in (self.path, *self.data.values()):
            p.unlink(missing_ok=True)


async def _receive(request: Request, tmp_dir: Path) -> _Upload:
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with fields 'metadata' (JSON) and 'artifact' (the model file)",
            "content-type",
        )
    cap = max_artifact_bytes()
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap + MAX_METADATA_BYTES + MAX_DATA_BYTES + _ENVELOPE_BYTES:
        raise ApiError(413, "too_large", f"the artifact is larger than the limit of {cap} bytes", "artifact")
    up = _Upload(tmp_dir, params[b"boundary"], cap)
    try:
        pending = bytearray()
        async for chunk in request.stream():
            pending.extend(chunk)
            if len(pending) >= _FEED_BYTES:
                data = bytes(pending)
                pending.clear()
                await run_in_threadpool(up.feed, data)
        if pending:
            await run_in_threadpool(up.feed, bytes(pending))
        up.finish()
    except ClientDisconnect:
        up.close()
        up.discard()
        raise ApiError(400, "client_disconnect", "the client went away during the upload", "artifact") from None
    except BaseException:
        up.close()
        up.discard()
        raise
    return up


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


@router.post("/models/{name}/versions", response_model=ModelVersion, status_code=201)
async def register_version(
    name: str, request: Request, response: Response, principal: Principal = Depends(require_operate)
) -> ModelVersion:
    """Register a new version: multipart `metadata` (JSON `ModelVersionCreate`) and `artifact` (the file)."""
    _name(name)
    reg = _registry(request)
    up = await _receive(request, reg.tmp_dir)
    try:

        def register() -> ModelVersion:
            meta = _parse_metadata(up.metadata or "")
            if up.data:
                meta = _with_fitted_profile(meta, up.data)
            return _call(
                reg.register,
                name,
                meta,
                up.path,
                principal.name,
                digest=up.digest,
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


@router.get("/models/{name}", response_model=list[ModelVersion], dependencies=[Depends(require_read)])
async def list_versions(name: str, request: Request) -> list[ModelVersion]:
    return _call(_registry(request).list_versions, name)


@router.get("/models/{name}/versions", response_model=list[ModelVersion], dependencies=[Depends(require_read)])
async def list_versions_too(name: str, request: Request) -> list[ModelVersion]:
    return _call(_registry(request).list_versions, name)


@router.get("/models/{name}/versions/{version}", response_model=ModelVersion, dependencies=[Depends(require_read)])
async def get_version(name: str, version: int, request: Request) -> ModelVersion:
    return _call(_registry(request).get, name, version)


@router.get("/models/{name}/versions/{version}/profile", dependencies=[Depends(require_read)])
async def get_profile(name: str, version: int, request: Request) -> dict:
    profile = await run_in_threadpool(_call, _registry(request).profile, name, version)
    if profile is None:
        raise ApiError(404, "not_found", f"{name} version {version} was registered without a profile", "profile")
    return profile


@router.get("/models/{name}/versions/{version}/artifact", dependencies=[Depends(require_read)])
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


@router.get("/models/{name}/aliases", response_model=dict[str, int], dependencies=[Depends(require_read)])
async def get_aliases(name: str, request: Request) -> dict[str, int]:
    return _call(_registry(request).aliases, name)


@router.get("/models/{name}/aliases/history", response_model=list[AliasEvent], dependencies=[Depends(require_read)])
async def alias_history(
    name: str, request: Request, alias: str | None = Query(None, description="only this alias")
) -> list[AliasEvent]:
    return await run_in_threadpool(_call, _registry(request).alias_history, name, alias)


@router.put("/models/{name}/aliases/{alias}", response_model=AliasEvent)
async def move_alias(
    name: str, alias: str, body: AliasMove, request: Request, principal: Principal = Depends(require_operate)
) -> AliasEvent:
    """Point an alias at a version (an append-only event; moving it where it points changes nothing)."""
    _name(name)
    reg = _registry(request)
    return await run_in_threadpool(
        _call,
        reg.move_alias,
        name,
        alias,
        body,
        principal.name,
        audit=lambda detail: audited(request, principal, "model.alias", f"model:{name}", detail),
    )

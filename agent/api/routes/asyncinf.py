"""Asynchronous inference: submit (202), status, cancel. The queue itself is agent/asyncinf; docs/async.md.

The gate (agent/api/gate.py) has authenticated the caller and capped the body at the endpoint's
`asynchronous.max_body_bytes` before this runs. The body streams to a file as it arrives; one small
enough to hold (INLINE_CHECK_BYTES) is also validated against the signature here, so a bad row is a 422
naming its field now rather than a failed request later.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Mapping
from os import PathLike
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from agent.api.deps import ctx, require_read
from agent.api.errors import ApiError
from agent.api.openapi import errors
from agent.api.routes.endpoints import PREDICT_BODY, EndpointName
from agent.asyncinf.queue import QueueError
from agent.asyncinf.service import AsyncService
from agent.auth.roles import OPERATE
from agent.context import AgentContext
from agent.schemas import API_PREFIX, PRIORITY_MAX, AsyncAccepted, AsyncStatus, Principal
from agent.serving.codec import TooManyRows, encode_payload, first_field
from agent.serving.errors import ValidationFailed
from agent.serving.overload import BodyBudget

router = APIRouter(tags=["async"])

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_ID = re.compile(ID_PATTERN)
# Bodies up to this size are also kept in memory while they stream to disk, and validated before the 202.
INLINE_CHECK_BYTES = 1024 * 1024
_ON_LOOP_BYTES = 16 * 1024  # validate smaller ones on the loop (~60 rows); larger ones in the thread pool
MAX_CALLBACK_URL = 2048
AsyncId = Path(pattern=ID_PATTERN, max_length=128)


def service(request: Request) -> AsyncService:
    s = getattr(ctx(request), "asyncinf", None)
    if s is None:
        raise ApiError(503, "async_unavailable", "asynchronous inference is not running on this agent")
    return s


def _queue_error(e: QueueError) -> ApiError:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return ApiError(e.status, e.error, e.detail, field=e.field, headers=headers)


def _priority(headers: Mapping[str, str], query: int | None) -> int:
    raw = headers.get("x-priority")
    if raw is None:
        return query or 0
    if not raw.strip().isdigit() or int(raw) > PRIORITY_MAX:
        raise ApiError(422, "invalid_request", f"X-Priority must be an integer 0..{PRIORITY_MAX}", field="x-priority")
    return int(raw)


def _callback(headers: Mapping[str, str], principal: Principal) -> str | None:
    url = headers.get("x-callback-url")
    if url is None:
        return None
    if principal.role not in OPERATE:
        raise ApiError(403, "forbidden", f"role {principal.role!r} may not set a callback (operator or admin may)",
                       field="x-callback-url")  # fmt: skip
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_CALLBACK_URL:
        raise ApiError(422, "invalid_request", "X-Callback-Url must be an http(s) URL with a host "
                       f"(at most {MAX_CALLBACK_URL} characters)", field="x-callback-url")  # fmt: skip
    return url


def _location(rid: str) -> str:
    return f"{API_PREFIX}/async/{rid}"


@router.post(
    "/endpoints/{name}/async",
    status_code=202,
    response_model=AsyncAccepted,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": PREDICT_BODY}}}},
    responses={
        200: {"model": AsyncAccepted, "description": "A request with this X-Request-Id exists: its state"},
        **errors(404, 409, 413, 415, 422, 429, 503),
    },
)
async def submit(
    request: Request,
    name: str = EndpointName,
    priority: int | None = Query(None, ge=0, le=PRIORITY_MAX, description="0..9, higher runs first (X-Priority)"),
    principal: Principal = Depends(require_read),
) -> JSONResponse:
    """Queue a prediction (same body as predict). Committed before the 202: a crash after it loses nothing.

    Normally answered by agent/api/asyncpath.py in front of FastAPI (the same `accept`)."""
    status, body, headers = await accept(ctx(request), name, request.headers, principal, request.stream(), priority)
    return JSONResponse(body, status_code=status, headers=headers)


async def accept(
    c: AgentContext,
    name: str,
    headers: Mapping[str, str],
    principal: Principal,
    chunks: AsyncIterator[bytes],
    priority: int | None = None,
) -> tuple[int, dict, dict[str, str]]:
    """Take one submission: (status, body, headers) of the 202 (or of the 200 of a known id). Raises ApiError.

    `headers` are the request's (lower-case names); `chunks` its body, read only once the request passed
    every check that needs no body."""
    s = c.serving
    svc = c.asyncinf
    if s is None or svc is None:
        raise ApiError(503, "async_unavailable", "asynchronous inference is not running on this agent")
    q = svc.queue
    ep = s.endpoints.get(name)
    if ep is None:
        raise ApiError(404, "not_found", f"no endpoint {name!r}", field="endpoint")
    ctype = headers.get("content-type")
    if ctype is not None and ctype.partition(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send application/json", field="content-type")
    raw_id = headers.get("x-request-id")
    if raw_id is not None and (not _ID.match(raw_id) or not raw_id.strip(".")):
        raise ApiError(422, "invalid_request", "X-Request-Id must be 1-128 of A-Za-z0-9._:-, not only dots",
                       field="x-request-id")  # fmt: skip
    prio = _priority(headers, priority)
    callback = _callback(headers, principal)
    rid = raw_id or os.urandom(12).hex()
    existing = q.table.entries.get(rid)
    if existing is not None:  # idempotent: the same id is the same request (its body is not read again)
        if existing.endpoint != name:
            raise ApiError(409, "conflict", f"request id {rid} belongs to endpoint {existing.endpoint!r}",
                           field="x-request-id")  # fmt: skip
        acc = {"id": rid, "endpoint": name, "state": existing.state, "priority": existing.priority,
               "location": _location(rid)}  # fmt: skip
        return 200, acc, {"Location": acc["location"], "X-Request-Id": rid}
    if rid in q.receiving:
        raise ApiError(409, "conflict", f"a submission with id {rid} is still being received", field="x-request-id")
    cfg = ep.config.asynchronous
    try:
        q.admit(name, cfg)
    except QueueError as e:
        raise _queue_error(e) from None
    q.receiving.add(rid)
    path = q.body_path(rid)
    ref: list[int] | None = None
    committed = False
    try:
        size, held = await _stream_to(path, chunks, q.held)
        if size == 0:
            raise ApiError(422, "invalid_request", "the body is empty", field="body")
        rows = 0
        if held is not None:
            rows = await run_in_threadpool(_check, ep, held) if size > _ON_LOOP_BYTES else _check(ep, held)
        try:
            q.admit(name, cfg)  # again: others may have filled the queue while this body streamed
            if held is not None:
                ref = q.body_blobs.append(held)
                del held
            q.commit(rid, name, prio, principal.name, callback, size, rows, ref)
        except QueueError as e:
            raise _queue_error(e) from None
        except OSError as e:
            raise ApiError(503, "async_unavailable", f"the request could not be recorded: {e}") from None
        committed = True
    finally:
        q.receiving.discard(rid)
        if not committed:
            q.body_blobs.unref(ref)
            path.unlink(missing_ok=True)
    acc = {"id": rid, "endpoint": name, "state": "queued", "priority": prio, "location": _location(rid)}
    return 202, acc, {"Location": acc["location"], "X-Request-Id": rid}


async def _stream_to(path: PathLike, chunks: AsyncIterator[bytes], budget: BodyBudget) -> tuple[int, bytes | None]:
    """Read the body: held in memory up to INLINE_CHECK_BYTES (returned, to be checked and stored as a blob);
    past that, or when submissions in flight already hold `budget`'s bytes, everything is written to `path`
    as it arrives (None returned: the body is that file, checked by the worker)."""
    size = 0
    held: list[bytes] = []
    taken = 0
    fd: int | None = None
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            if fd is None and size <= INLINE_CHECK_BYTES and budget.take(len(chunk)):
                taken += len(chunk)
                held.append(chunk)
                continue
            if fd is None:  # too big to hold: streamed to its own file, checked by the worker
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                held.append(chunk)
                chunk, held = b"".join(held), []
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the client went away before the body was complete", field="body") from None
    finally:
        budget.give(taken)
        if fd is not None:
            os.close(fd)
    return size, (b"".join(held) if fd is None else None)


def _check(ep, body: bytes) -> int:
    """Validate a held body against the endpoint's signature; its row count, or a 4xx naming the field."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(422, "invalid_json", f"body is not valid JSON: {e}", field="body") from None
    if ep.encoder is None:
        return 0  # the model does not resolve now: checked when it runs
    try:
        enc = encode_payload(ep.encoder, payload, ep.config.asynchronous.max_rows)
    except ValidationFailed as e:
        raise ApiError(422, "invalid_request", e.errors, field=first_field(e.errors)) from None
    except TooManyRows as e:
        raise ApiError(413, "too_many_rows", str(e), field="records") from None
    return len(enc.matrix)


@router.get("/async/{id}", response_model=AsyncStatus, dependencies=[Depends(require_read)], responses=errors(404))
async def get_async(request: Request, id: str = AsyncId) -> AsyncStatus:
    """A request's state; `result` is the predict answer once it succeeded."""
    q = service(request).queue
    e = q.table.entries.get(id)
    if e is None:
        raise ApiError(404, "not_found", f"no async request {id!r} (never submitted, or removed after its TTL)",
                       field="id")  # fmt: skip
    if e.state in ("succeeded", "failed"):
        return await run_in_threadpool(q.status, e)
    return q.status(e)


@router.delete("/async/{id}", response_model=AsyncStatus, responses=errors(403, 404, 409))
async def cancel_async(
    request: Request, id: str = AsyncId, principal: Principal = Depends(require_read)
) -> AsyncStatus:
    """Cancel a queued request (its submitter, or an operator). 409 once it runs or finished."""
    q = service(request).queue
    e = q.table.entries.get(id)
    if e is None:
        raise ApiError(404, "not_found", f"no async request {id!r}", field="id")
    if principal.name != e.principal and principal.role not in OPERATE:
        raise ApiError(403, "forbidden", "only its submitter or an operator may cancel a request", field="id")
    try:
        q.cancel(e, f"cancelled by {principal.name}")
    except QueueError as exc:
        raise _queue_error(exc) from None
    except OSError as exc:
        raise ApiError(503, "async_unavailable", f"the cancellation could not be recorded: {exc}") from None
    return q.status(e, with_result=False)

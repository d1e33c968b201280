"""The async submission's fast path: `POST /api/v1/endpoints/{name}/async` answered in front of FastAPI.

What FastAPI adds per request (routing, dependency solving, its request and response objects) cost a
submission more agent CPU than a whole real-time prediction. This layer does the gate's two jobs
itself, from headers and before any body byte is read — authenticate (401/403), cap the body at the
endpoint's `asynchronous.max_body_bytes` (413 from Content-Length, or while a chunked body streams) —
then hands the body's chunks to the same `accept` the FastAPI route uses (agent/api/routes/asyncinf.py),
which stays declared for OpenAPI and for clients that reach it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson

from agent.api.auth import principal_from
from agent.api.deps import PEER_EXTENSION
from agent.api.errors import ApiError
from agent.api.routes.asyncinf import accept
from agent.auth.roles import READ
from agent.context import AgentContext
from agent.schemas import PRIORITY_MAX

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class _Unfinished(Exception):
    """The client went away mid-body."""


async def submit_async(ctx: AgentContext, name: str, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one submission (never raises: every outcome is an answer)."""
    headers: dict[str, str] = {}
    for k, v in scope["headers"]:
        headers[k.decode("latin-1")] = v.decode("latin-1")
    length = headers.get("content-length")
    has_body = "chunked" in headers.get("transfer-encoding", "").lower() or length not in (None, "", "0")
    try:
        principal = principal_from(headers.get("authorization"), scope.get("extensions", {}).get(PEER_EXTENSION),
                                   ctx.cfg, ctx.tokens)  # fmt: skip
        if principal.role not in READ:
            raise ApiError(403, "forbidden", f"role {principal.role!r} may not read")
        s = ctx.serving
        ep = s.endpoints.get(name) if s is not None else None
        if ep is not None:
            cap = ep.config.asynchronous.max_body_bytes
            if length is not None and (not length.isdigit() or int(length) > cap):
                if length.isdigit():
                    raise ApiError(413, "payload_too_large", _too_large(cap), field="body")
                raise ApiError(400, "bad_request", "Content-Length is not a number", field="content-length")
        else:
            cap = 0
        priority = _query_priority(scope.get("query_string", b""))
        status, body, out = await accept(ctx, name, headers, principal, _chunks(receive, cap), priority)
    except ApiError as e:
        # A refusal before the whole body was read closes the connection: the client can't keep streaming.
        close = has_body and e.status_code not in (200, 202)
        err = orjson.dumps({"error": e.error, "detail": e.detail, "field": e.field})
        await _send(send, e.status_code, err, {**(e.headers or {}), **({"Connection": "close"} if close else {})})
        return
    except _Unfinished:
        return
    await _send(send, status, orjson.dumps(body), out)


def _query_priority(qs: bytes) -> int | None:
    vals = parse_qs(qs.decode("latin-1")).get("priority")
    if not vals:
        return None
    v = vals[-1]
    if not v.isdigit() or int(v) > PRIORITY_MAX:
        raise ApiError(422, "invalid_request", f"priority must be an integer 0..{PRIORITY_MAX}", field="priority")
    return int(v)


async def _chunks(receive: Receive, cap: int) -> AsyncIterator[bytes]:
    seen = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise _Unfinished
        chunk = msg.get("body", b"")
        seen += len(chunk)
        if seen > cap:
            raise ApiError(413, "payload_too_large", _too_large(cap), field="body")
        if chunk:
            yield chunk
        if not msg.get("more_body", False):
            return


def _too_large(cap: int) -> str:
    return f"request body is larger than this route's limit of {cap} bytes"


async def _send(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})

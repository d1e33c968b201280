"""The door in front of the FastAPI app: who is calling, and how much they may send, before any body is read.

FastAPI reads and parses a JSON body while it solves a route's parameters, which is before any
dependency (our auth) runs: an anonymous 200 MiB body was read, parsed and held, then refused with a
401. This pure ASGI layer runs first, on headers alone:

1. `/api/...` requests are authenticated from the `Authorization` header or the Unix-socket peer uid
   (401/403 without reading the body; the principal is left in the scope for the route's role check).
2. Every request's body is capped per route (`limit_for`): a `Content-Length` over the cap is a 413 up
   front; a chunked body is counted as it streams and refused (413) when it passes the cap.

Refusals of a request whose body was not read close the connection, so the client cannot keep
streaming into it. The predict fast path (agent/api/fastpath.py) sits in front of this layer, has its
own auth and per-endpoint cap, and pays nothing for it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from agent.api.auth import principal_from
from agent.api.deps import PEER_EXTENSION, PRINCIPAL_EXTENSION
from agent.api.errors import ApiError
from agent.api.multipart import upload_cap
from agent.context import AgentContext
from agent.schemas import API_PREFIX

# JSON bodies of every route without its own cap: token, endpoint config, rollout plan, alias, ack.
DEFAULT_BODY_BYTES = 1024 * 1024
# A job action or a quota is a few fields.
SMALL_BODY_BYTES = 64 * 1024
# Labels arrive in batches (up to 100,000 items of ~100 bytes).
FEEDBACK_BODY_BYTES = 32 * 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class BodyTooLarge(ApiError):
    """Raised from `receive` when a streamed body passes its route's cap; answered as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", _too_large(limit), "body", headers={"Connection": "close"})


def _too_large(limit: int) -> str:
    return f"request body is larger than this route's limit of {limit} bytes"


def _model_upload() -> int:
    from agent.api.routes.models import upload_parts

    return upload_cap(upload_parts())


def _dataset_upload() -> int:
    from agent.api.routes.rollouts import dataset_parts

    return upload_cap(dataset_parts())


def _predict(ctx: AgentContext, match: re.Match) -> int:
    # Only reached when the fast path did not answer (no serving); the route then refuses anyway.
    s = ctx.serving
    ep = s.endpoints.get(match.group(1)) if s is not None else None
    return ep.config.max_payload_bytes if ep is not None else DEFAULT_BODY_BYTES


def _async(ctx: AgentContext, match: re.Match) -> int:
    # Larger than real time's: the route streams it to a file (agent/api/routes/asyncinf.py).
    s = ctx.serving
    ep = s.endpoints.get(match.group(1)) if s is not None else None
    return ep.config.asynchronous.max_body_bytes if ep is not None else DEFAULT_BODY_BYTES


_P = re.escape(API_PREFIX)
# (method, path, cap): the routes whose bodies have a cap other than DEFAULT_BODY_BYTES.
_LIMITS: list[tuple[str, re.Pattern[str], Callable[[AgentContext, re.Match], int]]] = [
    ("POST", re.compile(rf"^{_P}/models/[^/]+/versions$"), lambda _c, _m: _model_upload()),
    ("POST", re.compile(rf"^{_P}/datasets/[^/]+/versions$"), lambda _c, _m: _dataset_upload()),
    ("POST", re.compile(rf"^{_P}/endpoints/[^/]+/feedback$"), lambda _c, _m: FEEDBACK_BODY_BYTES),
    ("POST", re.compile(rf"^{_P}/endpoints/([^/]+)/predict$"), _predict),
    ("POST", re.compile(rf"^{_P}/jobs/[^/]+/(cancel|requeue)$"), lambda _c, _m: SMALL_BODY_BYTES),
    ("PUT", re.compile(rf"^{_P}/quotas/[^/]+$"), lambda _c, _m: SMALL_BODY_BYTES),
    ("POST", re.compile(rf"^{_P}/pipelines/runs/[^/]+/cancel$"), lambda _c, _m: SMALL_BODY_BYTES),
    ("POST", re.compile(rf"^{_P}/pipelines/[^/]+/(runs|trigger)$"), lambda _c, _m: SMALL_BODY_BYTES),
    ("POST", re.compile(rf"^{_P}/endpoints/([^/]+)/async$"), _async),
    ("POST", re.compile(rf"^{_P}/batch(/[^/]+/(resume|cancel))?$"), lambda _c, _m: SMALL_BODY_BYTES),
]


def limit_for(ctx: AgentContext, method: str, path: str) -> int:
    """The most bytes a request body to this route may have."""
    for m, pattern, cap in _LIMITS:
        if m == method:
            match = pattern.match(path)
            if match is not None:
                return cap(ctx, match)
    return DEFAULT_BODY_BYTES


class Gate:
    """Pure ASGI middleware (no BaseHTTPMiddleware: that would buffer and add a task per request)."""

    def __init__(self, app: Callable, ctx: AgentContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = length = None
        chunked = False
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v.decode("latin-1")
            elif k == b"content-length":
                length = v
            elif k == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
        has_body = chunked or (length is not None and length not in (b"0", b""))
        path: str = scope["path"]
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            peer = scope.get("extensions", {}).get(PEER_EXTENSION)
            try:
                p = principal_from(auth, peer, self.ctx.cfg, self.ctx.tokens)
            except ApiError as e:
                await _refuse(send, e, close=has_body)
                return
            scope.setdefault("extensions", {})[PRINCIPAL_EXTENSION] = p
        if not has_body:
            await self.app(scope, receive, send)
            return
        limit = limit_for(self.ctx, scope["method"], path)
        if length is not None and (not length.isdigit() or int(length) > limit):
            if length.isdigit():
                err = ApiError(413, "payload_too_large", _too_large(limit), "body")
            else:
                err = ApiError(400, "bad_request", "Content-Length is not a number", "content-length")
            await _refuse(send, err, close=True)
            return
        await self.app(scope, _counting(receive, limit), send)


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> dict:
        nonlocal seen
        msg = await receive()
        if msg["type"] == "http.request":
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return msg

    return counted


async def _refuse(send: Send, e: ApiError, close: bool) -> None:
    body = orjson.dumps({"error": e.error, "detail": e.detail, "field": e.field})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (e.headers or {}).items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": e.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})

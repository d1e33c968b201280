"""The predict fast path: a thin ASGI layer in front of FastAPI for `POST /api/v1/endpoints/{name}/predict`
(and, through agent/api/asyncpath.py, for `POST …/async`).

FastAPI's routing, dependency injection and pydantic response validation cost more per request
than parsing, validating and running a small model. This path does only what a predict needs —
auth (a dict lookup of the token digest or the socket peer's uid), a bounded body read, the
service — and answers with pre-serialised JSON. The same route is also declared in FastAPI
(agent/api/routes/endpoints.py) for OpenAPI and for clients that bypass this layer.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from agent.api.asyncpath import submit_async
from agent.auth.roles import peer_principal
from agent.context import AgentContext
from agent.schemas import API_PREFIX
from agent.serving.overload import ARRIVAL, ARRIVAL_ESTIMATED, QUEUE_SHARE, BodyBudget

PREFIX = f"{API_PREFIX}/endpoints/"
SUFFIX = "/predict"
ASYNC_SUFFIX = "/async"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class PredictFastPath:
    def __init__(self, app: Callable, ctx: AgentContext) -> None:
        self.app = app
        self.ctx = ctx
        self.budget = BodyBudget()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(PREFIX) and path.endswith(SUFFIX):
                name = path[len(PREFIX) : -len(SUFFIX)]
                if name and "/" not in name and self.ctx.serving is not None:
                    await self._predict(name, scope, receive, send)
                    return
            elif path.startswith(PREFIX) and path.endswith(ASYNC_SUFFIX):
                name = path[len(PREFIX) : -len(ASYNC_SUFFIX)]
                if name and "/" not in name and self.ctx.asyncinf is not None:
                    await submit_async(self.ctx, name, scope, receive, send)  # agent/api/asyncpath.py
                    return
        await self.app(scope, receive, send)

    async def _predict(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        ext = scope.get("extensions")
        # Measured from the request's arrival (stamped by agent/serving/overload.py's protocol), not from here.
        t0 = ext.get(ARRIVAL, start) if ext else start
        auth = length = request_id = ctype = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k == b"content-length":
                length = v
            elif k == b"x-request-id":
                request_id = v
            elif k == b"content-type":
                ctype = v
        status = self._authorized(auth, scope)
        if status is not None:
            await _send(send, status[0], status[1], [(b"www-authenticate", b"Bearer")] if status[0] == 401 else [])
            return
        serving = self.ctx.serving
        ep = serving.endpoints.get(name)
        if ep is None:
            await _send(send, 404, _err("not_found", f"no endpoint {name!r}", "endpoint"))
            return
        if ctype is not None and not _is_json(ctype):
            await _send(send, 415, _err("unsupported_media_type", "send application/json", "content-type"))
            return
        limit = ep.config.max_payload_bytes
        size = int(length) if length is not None and length.isdigit() else 0
        if size > limit:
            await _send(send, 413, _err("payload_too_large", f"body over {limit} bytes", "body"))
            return
        rid = request_id.decode() if request_id and _REQUEST_ID.match(request_id) else os.urandom(8).hex()
        # On a Unix socket the time the request sat in the kernel before it was read is not known: the loop's
        # lag stands in for it (TCP's arrival already counts it), in the wait, the reported latency and the
        # timeout alike, so a request shed for waiting 200 ms is not recorded as a 5 ms answer.
        if ext and ARRIVAL_ESTIMATED in ext:
            t0 -= serving.lag.lag_s
        waited_ms = (start - t0) * 1000
        # Waited too long already: shed before parsing. With a fallback the body is still read (the answer
        # has one prediction per row); without, it is refused unread.
        overloaded = waited_ms > ep.config.timeout_ms * QUEUE_SHARE
        if overloaded and ep.fallback_body is None:
            await _send(send, *serving.overloaded(ep, rid, t0, f"waited {waited_ms:.0f} ms for the agent"))
            return
        budget = self.budget
        if not budget.take(size):  # refused unread, fallback or not: reading it is what would cost the memory
            await _send(send, *serving.overloaded(ep, rid, t0, "too many request bytes in flight"))
            return
        held = size
        try:
            chunks: list[bytes] = []
            got = 0
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                got += len(chunk)
                if got > limit:
                    await _send(send, 413, _err("payload_too_large", f"body over {limit} bytes", "body"))
                    return
                if got > held:  # no (or a short) Content-Length: account as it comes
                    if not budget.take(got - held):
                        await _send(send, *serving.overloaded(ep, rid, t0, "too many request bytes in flight"))
                        return
                    held = got
                chunks.append(chunk)
                more = msg.get("more_body", False)
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            del chunks
            if overloaded:
                ans = serving.overload_fallback(ep, rid, t0, body)
            else:
                ans = await serving.predict(name, body, rid, scope["headers"] if ep.route is not None else None, t0)
        finally:
            budget.give(held)
        await _send(send, ans.status, ans.body, [(b"x-request-id", rid.encode()), *ans.headers])

    def _authorized(self, auth: bytes | None, scope: Scope) -> tuple[int, bytes] | None:
        """None when any known principal calls; else (status, body). Any role may predict."""
        if auth is not None:
            scheme, _, token = auth.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and self.ctx.tokens.authenticate(token.strip()) is not None:
                return None
            return 401, _err("unauthorized", "unknown or revoked token", None)
        peer = scope.get("extensions", {}).get("watchkeeper.peer")
        if peer is not None:
            if peer_principal(peer["uid"], self.ctx.cfg) is not None:
                return None
            return 403, _err("forbidden", f"uid {peer['uid']} is not allowed on this socket", None)
        return 401, _err("unauthorized", "missing bearer token", None)


def _is_json(ctype: bytes) -> bool:
    """`application/json` in any case, parameters (`; charset=utf-8`) allowed; not `application/jsonp`."""
    return ctype.partition(b";")[0].strip().lower() == b"application/json"


def _err(error: str, detail: object, field: str | None) -> bytes:
    return orjson.dumps({"error": error, "detail": detail, "field": field})


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

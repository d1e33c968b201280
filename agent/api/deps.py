"""FastAPI dependencies: the agent context and the caller's principal with a permission check."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from agent.api.auth import principal_from
from agent.api.errors import ApiError
from agent.auth.roles import ADMIN, APPROVE, OPERATE, READ
from agent.context import AgentContext
from agent.schemas import Principal

PEER_EXTENSION = "watchkeeper.peer"
PRINCIPAL_EXTENSION = "watchkeeper.principal"  # set by agent/api/gate.py


def ctx(request: Request) -> AgentContext:
    return request.app.state.ctx


def authenticate(request: Request) -> Principal:
    """Bearer token first; otherwise the Unix-socket peer's uid; otherwise 401.

    The gate (agent/api/gate.py) has already done this for `/api/...` requests, before the body was
    read; its answer is reused.
    """
    ext = request.scope.get("extensions", {})
    p = ext.get(PRINCIPAL_EXTENSION)
    if p is not None:
        return p
    c: AgentContext = request.app.state.ctx
    return principal_from(request.headers.get("authorization"), ext.get(PEER_EXTENSION), c.cfg, c.tokens)


def _require(allowed: frozenset[str], what: str) -> Callable[[Request], Principal]:
    # async so FastAPI runs it on the loop: no thread-pool hop (and thread) per request.
    async def dep(request: Request) -> Principal:
        p = authenticate(request)
        if p.role not in allowed:
            raise ApiError(403, "forbidden", f"role {p.role!r} may not {what}")
        request.state.principal = p
        return p

    return dep


require_read = _require(READ, "read")
require_operate = _require(OPERATE, "operate")
require_approve = _require(APPROVE, "approve")
require_admin = _require(ADMIN, "administer this agent")


def client_of(request: Request) -> str | None:
    """Where a request came from, for the audit log: ip:port, or the socket peer's pid/uid."""
    peer = request.scope.get("extensions", {}).get(PEER_EXTENSION)
    if peer is not None:
        return f"unix:pid={peer['pid']},uid={peer['uid']}"
    if request.client:
        return f"{request.client.host}:{request.client.port}"
    return None

"""FastAPI dependencies: the agent context and the caller's principal with a permission check."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from agent.api.auth import ADMIN, APPROVE, OPERATE, READ, peer_principal
from agent.api.errors import ApiError
from agent.api.schemas import Principal
from agent.context import AgentContext

PEER_EXTENSION = "watchkeeper.peer"


def ctx(request: Request) -> AgentContext:
    return request.app.state.ctx


def authenticate(request: Request) -> Principal:
    """Bearer token first; otherwise the Unix-socket peer's uid; otherwise 401."""
    c: AgentContext = request.app.state.ctx
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "unauthorized",
                "expected 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        p = c.tokens.authenticate(token.strip())
        if p is None:
            raise ApiError(401, "unauthorized", "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return p
    peer = request.scope.get("extensions", {}).get(PEER_EXTENSION)
    if peer is not None:
        p = peer_principal(peer["uid"], c.cfg)
        if p is not None:
            return p
        raise ApiError(403, "forbidden", f"uid {peer['uid']} is not allowed on this socket")
    raise ApiError(401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"})


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

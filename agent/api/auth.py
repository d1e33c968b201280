"""Who is calling, from the request's headers: bearer token first, else the Unix-socket peer (SO_PEERCRED).

The HTTP half only: tokens and roles live in agent/auth/ (below the features, which use them too).
"""

from __future__ import annotations

from agent.api.errors import ApiError
from agent.auth.roles import peer_principal
from agent.auth.tokens import TokenStore
from agent.config import AgentConfig
from agent.schemas import Principal


def principal_from(
    authorization: str | None, peer: dict[str, int] | None, cfg: AgentConfig, tokens: TokenStore
) -> Principal:
    """Who is calling, from headers alone: bearer token first, else the Unix-socket peer's uid; else 401/403.

    Raises ApiError. Used by the gate (agent/api/gate.py) before any body is read.
    """
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "expected 'Authorization: Bearer <token>'", headers=_BEARER)
        p = tokens.authenticate(token.strip())
        if p is None:
            raise ApiError(401, "unauthorized", "unknown or revoked token", headers=_BEARER)
        return p
    if peer is not None:
        p = peer_principal(peer["uid"], cfg)
        if p is not None:
            return p
        raise ApiError(403, "forbidden", f"uid {peer['uid']} is not allowed on this socket")
    raise ApiError(401, "unauthorized", "missing bearer token", headers=_BEARER)


_BEARER = {"WWW-Authenticate": "Bearer"}

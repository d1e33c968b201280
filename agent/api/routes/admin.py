"""Who am I, tokens, and the audit log. Every mutation: authorize -> audit (fail closed) -> act -> answer."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from agent.api.deps import client_of, ctx, require_admin, require_read
from agent.api.errors import ApiError
from agent.api.openapi import errors
from agent.audit import AuditUnavailable, verify_chain
from agent.auth.tokens import LastAdminToken
from agent.schemas import AuditEntry, AuditHead, AuditVerify, Principal, TokenCreate, TokenCreated, TokenInfo

router = APIRouter(tags=["admin"])


@router.get("/whoami", response_model=Principal)
async def whoami(principal: Principal = Depends(require_read)) -> Principal:
    return principal


@router.get("/tokens", response_model=list[TokenInfo], dependencies=[Depends(require_admin)])
async def list_tokens(request: Request) -> list[TokenInfo]:
    return ctx(request).tokens.list()


def audited(request: Request, principal: Principal, action: str, target: str, detail: dict) -> None:
    """Commit the audit entry or refuse the action (503): nothing happens that is not on record."""
    try:
        ctx(request).audit.record(principal, action, target, detail, client_of(request))
    except AuditUnavailable as e:
        raise ApiError(503, "audit_unavailable", str(e)) from None


@router.post("/tokens", response_model=TokenCreated, status_code=201)
async def create_token(
    body: TokenCreate, request: Request, principal: Principal = Depends(require_admin)
) -> TokenCreated:
    """Create a token; the secret is in this answer only."""
    await run_in_threadpool(
        audited,
        request,
        principal,
        "token.create",
        f"token:{body.name}",
        {"name": body.name, "role": body.role},
    )
    token, info = await run_in_threadpool(ctx(request).tokens.create, body.name, body.role)
    return TokenCreated(**info.model_dump(), token=token)


@router.delete("/tokens/{accessor}", response_model=TokenInfo, responses=errors(404, 409))
async def revoke_token(accessor: str, request: Request, principal: Principal = Depends(require_admin)) -> TokenInfo:
    tokens = ctx(request).tokens
    known = {t.accessor: t for t in tokens.list()}
    t = known.get(accessor)
    if t is None or t.revoked_at is not None:
        raise ApiError(404, "not_found", f"no active token with accessor {accessor!r}", field="accessor")
    if t.source == "config":
        raise ApiError(
            409,
            "conflict",
            "config tokens are revoked by removing them from the config file",
            field="accessor",
        )
    if t.role == "admin" and tokens.is_last_admin(accessor):
        raise _last_admin(accessor)
    await run_in_threadpool(audited, request, principal, "token.revoke", f"token:{t.name}", {"accessor": accessor})
    try:
        info = await run_in_threadpool(tokens.revoke, accessor)
    except LastAdminToken:  # another admin token was revoked in between
        raise _last_admin(accessor) from None
    if info is None:  # revoked concurrently
        raise ApiError(404, "not_found", f"no active token with accessor {accessor!r}", field="accessor")
    return info


def _last_admin(accessor: str) -> ApiError:
    return ApiError(
        409,
        "last_admin_token",
        f"token {accessor!r} is the only active admin token: create another admin token before revoking it",
        field="accessor",
    )


@router.get("/audit", response_model=list[AuditEntry], dependencies=[Depends(require_read)])
async def audit(
    request: Request, limit: int = Query(100, ge=1, le=10000), after_seq: int | None = Query(None, ge=0, le=2**63 - 1)
) -> list[AuditEntry]:
    c = ctx(request)

    def read() -> list[AuditEntry]:
        c.writer.settle()  # entries answered from the jobs journal are committed first
        return c.reader.audit(limit, after_seq)

    return await run_in_threadpool(read)


@router.get("/audit/verify", response_model=AuditVerify, dependencies=[Depends(require_read)])
async def audit_verify(
    request: Request,
    since_seq: int | None = Query(None, ge=0, description="with since_hash: check the chain still holds this entry"),
    since_hash: str | None = Query(None, pattern="^[0-9a-f]{64}$"),
) -> AuditVerify:
    """Walk the chain (with the audit key when configured); with since_seq/since_hash also say whether it
    still holds an entry seen before (a console's remembered head): `extends`."""
    if (since_seq is None) != (since_hash is None):
        field = "since_hash" if since_hash is None else "since_seq"
        raise ApiError(422, "invalid_request", "give both since_seq and since_hash, or neither", field=field)
    c = ctx(request)
    since = (since_seq, since_hash) if since_seq is not None and since_hash is not None else None
    await run_in_threadpool(c.writer.settle)  # the chain with every entry already answered for
    return await run_in_threadpool(verify_chain, c.reader.con, c.audit.head_file, c.audit.key, since, c.audit.lock)


@router.get("/audit/head", response_model=AuditHead, dependencies=[Depends(require_read)])
async def audit_head(request: Request) -> AuditHead:
    """The newest entry (seq, hash), from memory: cheap enough to poll."""
    head = ctx(request).audit.current_head()
    if head is None:
        raise ApiError(404, "not_found", "the audit log is empty", field=None)
    return head

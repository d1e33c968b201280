"""Who may call: roles, principals, API tokens, and the audit log's entries and checks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.schemas.common import STRICT_INPUT, _Wire

Role = Literal["viewer", "operator", "approver", "admin"]


class Principal(_Wire):
    name: str
    role: Role
    via: Literal["token", "unix-peer", "anonymous"]


class TokenCreate(_Wire):
    model_config = STRICT_INPUT
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role


class TokenInfo(_Wire):
    accessor: str
    name: str
    role: Role
    source: Literal["config", "generated", "api"]
    created_at: float
    revoked_at: float | None = None


class TokenCreated(TokenInfo):
    token: str  # shown once; only its digest is kept


class AuditEntry(_Wire):
    seq: int
    ts: float
    principal: str
    role: str
    via: str
    action: str
    target: str
    detail: dict = Field(default_factory=dict)
    client: str | None = None
    prev_hash: str
    hash: str


AuditStatus = Literal[
    "ok", "altered", "head_missing", "head_behind", "chain_shorter", "head_altered", "unkeyed", "key_needed",
    "not_extending",
]  # fmt: skip


class AuditVerify(_Wire):
    """`GET /api/v1/audit/verify`: the chain walked from entry 1 (agent/audit.py, docs/operations.md)."""

    ok: bool
    entries: int
    head: str | None  # the hash of the last entry
    first_bad_seq: int | None = None
    problem: str | None = None
    status: AuditStatus = "ok"
    head_seq: int | None = None  # the last entry's seq
    first_bad_action: str | None = None  # the first altered entry's action and target, as stored
    first_bad_target: str | None = None
    exported_head_seq: int | None = None  # what audit.head names (None: missing)
    keyed: bool = False  # verified with the audit key (HMAC-SHA256 links)
    keyed_since: int | None = None  # the first keyed entry
    extends: bool | None = None  # with since_seq/since_hash: the chain still holds that entry
    genesis: str | None = None  # entry 1's hash: a console tells a log that started over from one rewritten
    warnings: list[str] = Field(default_factory=list)


class AuditHead(_Wire):
    """`GET /api/v1/audit/head`: the newest entry, for a console to remember and check later."""

    seq: int
    hash: str
    keyed: bool
    keyed_since: int | None = None

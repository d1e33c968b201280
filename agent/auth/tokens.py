"""Bearer tokens: only digests are kept; config tokens by digest alone, API-made ones in the store.

Tokens look like `wk_<accessor>_<secret>`; the accessor is a public id for listing and revoking,
the agent keeps only `sha256(token)`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from agent.config import AgentConfig
from agent.schemas import Principal, Role, TokenInfo
from agent.store.writer import StoreWriter


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh (token, accessor): 32 random bytes of secret, 8 hex chars of public accessor."""
    accessor = secrets.token_hex(4)
    return f"wk_{accessor}_{secrets.token_urlsafe(32)}", accessor


class LastAdminToken(Exception):
    """Revoking this token would leave no active admin token."""


@dataclass(frozen=True)
class _Entry:
    accessor: str
    name: str
    role: Role
    digest: str
    source: str
    created_at: float
    revoked_at: float | None = None


class TokenStore:
    """Tokens from the config file and from the store; lookups are in memory, writes go via the writer."""

    def __init__(self, writer: StoreWriter, con: duckdb.DuckDBPyConnection, cfg: AgentConfig) -> None:
        self._writer = writer
        self._lock = threading.Lock()
        self._revoke_lock = threading.Lock()
        self._by_digest: dict[str, _Entry] = {}
        self._all: dict[str, _Entry] = {}
        now = time.time()
        for t in cfg.auth.tokens:
            self._add(_Entry(t.sha256[:8], t.name, t.role, t.sha256, "config", now))
        cur = con.cursor()
        try:
            for row in cur.execute("SELECT * FROM tokens").fetchall():
                self._add(_Entry(*row))
        finally:
            cur.close()

    def _add(self, e: _Entry) -> None:
        self._all[e.accessor] = e
        if e.revoked_at is None:
            self._by_digest[e.digest] = e
        else:
            self._by_digest.pop(e.digest, None)

    def active_count(self) -> int:
        return len(self._by_digest)

    def is_last_admin(self, accessor: str) -> bool:
        """True when `accessor` is the only active admin token: revoking it would lock admins out over TCP."""
        admins = [e.accessor for e in self._by_digest.values() if e.role == "admin"]
        return admins == [accessor]

    def authenticate(self, token: str) -> Principal | None:
        d = digest(token)
        e = self._by_digest.get(d)
        if e is None or not hmac.compare_digest(e.digest, d):
            return None
        return Principal(name=e.name, role=e.role, via="token")

    def create(self, name: str, role: Role, source: str = "api") -> tuple[str, TokenInfo]:
        """Make a token, commit its digest, return (token shown once, its info)."""
        token, accessor = new_token()
        e = _Entry(accessor, name, role, digest(token), source, time.time())
        self._writer.call(lambda con: con.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?)", list(_row(e))))
        with self._lock:
            self._add(e)
        return token, _info(e)

    def revoke(self, accessor: str) -> TokenInfo | None:
        e = self._all.get(accessor)
        if e is None or e.revoked_at is not None:
            return None
        if e.source == "config":
            raise PermissionError("config tokens are revoked by removing them from the config file")
        # One revocation at a time, so two concurrent ones cannot each leave the other as "the last admin".
        with self._revoke_lock:
            if self.is_last_admin(accessor):
                raise LastAdminToken(accessor)
            revoked = _Entry(*(_row(e)[:-1]), time.time())
            self._writer.call(
                lambda con: con.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE accessor = ?", [revoked.revoked_at, accessor]
                )
            )
            with self._lock:
                self._add(revoked)
        return _info(revoked)

    def list(self) -> list[TokenInfo]:
        return [_info(e) for e in self._all.values()]


def _row(e: _Entry) -> tuple:
    return (e.accessor, e.name, e.role, e.digest, e.source, e.created_at, e.revoked_at)


def _info(e: _Entry) -> TokenInfo:
    return TokenInfo(
        accessor=e.accessor,
        name=e.name,
        role=e.role,
        source=e.source,  # type: ignore[arg-type]
        created_at=e.created_at,
        revoked_at=e.revoked_at,
    )


def bootstrap_admin_token(tokens: TokenStore, data_dir: Path) -> Path | None:
    """With no tokens at all, create an admin token and write it once to a 0600 file."""
    if tokens.active_count() > 0:
        return None
    token, _ = tokens.create("admin", "admin", source="generated")
    path = data_dir / "admin.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return path
